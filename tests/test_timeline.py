"""The timeline bench's machinery on a small slice: 2 stories, 4 polls, ``monitor once``.

``bench/bench_timeline.py`` replays real headlines (UCI news aggregator, gold STORY
labels) through ``monitor once`` subprocesses against a local feed server and counts the
first alerts per story. How many first alerts today's clustering sends is a figure, not
a truth, so these tests assert only what holds for any correct engine: no story is
missed, no first alert is about another story than its rule's, every update follows its
own first alert, and ideal (one alert per story) ≤ first alerts ≤ naive (one per
matching headline).
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.bench_timeline import Scenario, measure
from tests.conftest import shared_path

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    path = shared_path("corpora", "uci-news-aggregator", "headlines.csv")
    return measure(Scenario(n_stories=2, n_polls=4, path=path), modes=("once",))


def test_the_slice_is_what_the_assertions_assume(result: dict[str, Any]) -> None:
    sel = result["selection"]
    assert len(sel["stories"]) == 2 and sel["polls"] == 4
    assert sum(sel["headlines_new_per_poll"]) == sel["headlines"]
    once = result["once"]
    assert [p["new"] for p in once["polls"]] == sel["headlines_new_per_poll"]
    for name, p in once["per_story"].items():
        assert p["own_story_headlines_matched"] > 0, f"{name} ({result['rules'][name]}) matches nothing"
        # the rules match only their own story's headlines, so any off-topic first alert
        # below would be the engine's doing
        assert p["off_topic_headlines_matched"] == 0, f"{name} ({result['rules'][name]})"


def test_no_story_missed(result: dict[str, Any]) -> None:
    assert result["once"]["stories_missed"] == []


def test_no_off_topic_first_alert(result: dict[str, Any]) -> None:
    once = result["once"]
    assert once["off_topic"]["first_alerts"] == 0
    assert all(p["off_topic_first_alerts"] == 0 for p in once["per_story"].values())


def test_every_update_follows_its_own_first_alert(result: dict[str, Any]) -> None:
    assert result["once"]["updates_before_their_first_alert"] == 0


def test_first_alerts_between_ideal_and_naive(result: dict[str, Any]) -> None:
    once = result["once"]
    assert once["ideal"] <= once["first_alerts"] <= once["naive"]
    for name, p in once["per_story"].items():
        assert p["ideal"] <= p["first_alerts"] <= p["naive"], name
