"""Pure routing: idempotency keys, cooldown, "carried by N" updates, retry timing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from monitor.core.model import Alert, Match, Story
from monitor.core.route import ClusterFacts, alert_key, route, updates
from monitor.core.schedule import retry_at

NOW = datetime(2026, 2, 17, 12, 0, tzinfo=UTC)
STORY = Story(id="s1", feed="bbc", title="Sanctions deadline", link="https://x/1",
              published=NOW, first_seen=NOW)
M = Match(rule="r", severity="high", channels=("slack", "mail"), terms=("sanctions",))


def facts(*sources: str) -> ClusterFacts:
    return ClusterFacts(cluster="c1", sources=sources)


def test_first_alert_per_channel_with_stable_keys() -> None:
    ds = route(STORY, [M], facts("bbc"), now=NOW)
    assert [(d.channel, d.key) for d in ds] == [
        ("slack", "a:c1:r:slack"), ("mail", "a:c1:r:mail")]
    assert all(d.alert.sources == 1 and not d.alert.update for d in ds)
    # the same decision later gives the same keys: the store ignores the replay
    assert [d.key for d in route(STORY, [M], facts("bbc"), now=NOW + timedelta(hours=1))] == [
        d.key for d in ds]


def test_already_alerted_cluster_is_silent_without_cooldown() -> None:
    last = {("r", "slack"): NOW - timedelta(days=2), ("r", "mail"): NOW}
    assert route(STORY, [M], facts("bbc", "ap"), now=NOW, last_alerts=last) == []


def test_cooldown_realerts_after_the_period_only() -> None:
    m = Match(rule="r", severity="high", channels=("slack",), cooldown=3600)
    recent = {("r", "slack"): NOW - timedelta(minutes=30)}
    assert route(STORY, [m], facts("bbc"), now=NOW, last_alerts=recent) == []
    old = {("r", "slack"): NOW - timedelta(hours=2)}
    (d,) = route(STORY, [m], facts("bbc"), now=NOW, last_alerts=old)
    # the key follows the previous alert: two polls that saw it make the same key
    assert d.key == f"a:c1:r:slack:{int((NOW - timedelta(hours=2)).timestamp())}"
    (again,) = route(STORY, [m], facts("bbc"), now=NOW + timedelta(seconds=7), last_alerts=old)
    assert again.key == d.key


def test_updates_only_at_milestones_above_what_the_alert_said() -> None:
    first = Alert(story=STORY, match=M, cluster="c1", sources=1)
    u1, u2 = updates(STORY, [first], facts("bbc", "ap"), now=NOW)
    assert u1.alert.update and u1.alert.sources == 2 and u1.alert.source_names == ("bbc", "ap")
    assert u1.parent_key == alert_key("c1", "r", "slack") and u1.key == "u:c1:r:slack:2"
    assert u2.channel == "mail" and u2.parent_key == alert_key("c1", "r", "mail")
    assert u1.alert.first_title == STORY.title  # the first alert's headline, for threading
    later = replace(STORY, id="s9", title="Another outlet's headline")
    [u3, _] = updates(later, [first], facts("bbc", "ap", "afp"), now=NOW)
    assert u3.alert.story.title == later.title and u3.alert.first_title == STORY.title
    # 4 sources is not a milestone; 3 is
    assert updates(STORY, [first], facts("bbc", "ap", "afp", "dw"), now=NOW) == []
    assert len(updates(STORY, [first], facts("bbc", "ap", "afp"), now=NOW)) == 2
    # an alert that already said "2 sources" gets no "2 sources" update
    said_two = Alert(story=STORY, match=M, cluster="c1", sources=2)
    assert updates(STORY, [said_two], facts("bbc", "ap"), now=NOW) == []


def test_retry_backoff_honours_retry_after_and_gives_up() -> None:
    kw = {"retry_min": 30.0, "retry_max": 3600.0, "give_up_after": 86400.0}
    assert retry_at(now=NOW, created=NOW, attempts=1, retry_after=None, **kw) == NOW + timedelta(
        seconds=30)
    assert retry_at(now=NOW, created=NOW, attempts=4, retry_after=None, **kw) == NOW + timedelta(
        seconds=240)
    assert retry_at(now=NOW, created=NOW, attempts=20, retry_after=None, **kw) == NOW + timedelta(
        hours=1)
    assert retry_at(now=NOW, created=NOW, attempts=1, retry_after=120, **kw) == NOW + timedelta(
        seconds=120)
    assert retry_at(now=NOW, created=NOW - timedelta(days=2), attempts=3, retry_after=None,
                    **kw) is None
    # thousands of attempts (a long give_up_after) do not overflow
    assert retry_at(now=NOW, created=NOW, attempts=5000, retry_after=None, **kw) == (
        NOW + timedelta(hours=1))
