"""Feed health in-process (#13): real feed server, real SQLite, the file channel, the test
clock. A failing feed gives one notice then one recovery; a silent feed one notice; stale
items are counted; parse problems (entity declarations, GUID churn) are the feed's."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest

from monitor.cli.feeds import feed_rows
from monitor.config import load_config
from monitor.shell.daemon import Runtime
from tests.clock import T0, Clock
from tests.feeds import BACKLOG, UNRELATED, Item, rss, seed_item
from tests.peers.feedserver import FeedServer
from tests.peers.slackserver import SlackServer
from tests.test_hostile_feeds import _billion_laughs
from tests.test_pipeline import MakeConfig, alerts, clock, make_config, poll

__all__ = ["clock", "make_config"]  # the fixtures, shared with test_pipeline

HEALTH = "health: {channel: audit-file, feed_failing_after: 10m}"


def notices(tmp: Path) -> list[str]:
    return [a["rule"] for a in alerts(tmp, "audit.jsonl") if a["rule"].startswith("monitor:")]


async def test_a_feed_failing_past_the_threshold_gives_one_notice_then_one_recovery(
    make_config: MakeConfig, feed_server: FeedServer, clock: Clock, tmp_path: Path
) -> None:
    feed_server.serve("/a.rss", rss(BACKLOG, now=T0))
    config = make_config({"a": "/a.rss"}, HEALTH)
    async with Runtime(config, clock=clock) as rt:
        await poll(rt)  # the baseline
        feed_server.status("/a.rss", 404)
        for _ in range(3):  # failing since +5m; at +10m for 5 minutes, at +15m for 10
            clock.advance(minutes=5)
            out = await poll(rt)
            assert out["a"].result == "failed"
        assert notices(tmp_path) == ["monitor:feed-failing"]
        [row] = feed_rows(config, await rt.store.get_feeds(), clock.now)
        assert row["state"] == "failing" and "404" in row["problem"]
        for _ in range(3):  # still failing: nothing more
            clock.advance(minutes=30)
            await poll(rt)
        assert notices(tmp_path) == ["monitor:feed-failing"]
        feed_server.serve("/a.rss", rss(BACKLOG, now=T0))  # back, with the same stories
        clock.advance(minutes=5)
        assert (await poll(rt))["a"].result in ("unchanged", "not-modified")
        clock.advance(minutes=5)
        await poll(rt)
        assert rt.metrics.registry.get_sample_value(
            "monitor_ops_notices_total", {"kind": "feed-failing"}) == 1
        [st] = await rt.store.get_feeds()
    got = [a for a in alerts(tmp_path, "audit.jsonl") if a["rule"].startswith("monitor:")]
    assert [a["rule"] for a in got] == ["monitor:feed-failing", "monitor:feed-recovered"]
    failing, recovered = got
    assert failing["severity"] == "warning" and failing["feed"] == "a"
    assert "feed 'a' is failing" in failing["title"] and "404" in failing["title"]
    assert "recovered" in recovered["title"] and recovered["severity"] == "info"
    assert st.notice is None and st.failing_since is None and st.failures == 0


async def test_without_a_health_channel_nothing_is_sent_but_the_feed_is_tracked(
    make_config: MakeConfig, feed_server: FeedServer, clock: Clock, tmp_path: Path
) -> None:
    feed_server.status("/a.rss", 404)
    config = make_config({"a": "/a.rss"})
    async with Runtime(config, clock=clock) as rt:
        for _ in range(4):
            await poll(rt)
            clock.advance(hours=1)
        [st] = await rt.store.get_feeds()
        assert st.failing_since == T0 and st.failures == 4 and st.notice is None
    assert notices(tmp_path) == []


async def test_a_silent_feed_gives_one_notice_and_a_recovery_with_its_next_story(
    make_config: MakeConfig, feed_server: FeedServer, clock: Clock, tmp_path: Path
) -> None:
    hourly = [Item(title=f"Hourly bulletin number {i}", link=f"https://h.example/{i}",
                   guid=f"h{i}", published=T0 - timedelta(hours=i)) for i in range(8)]
    feed_server.serve("/a.rss", rss(hourly, now=T0))
    config = make_config({"a": "/a.rss"}, "health: {channel: audit-file, "
                         "silent_after_factor: 2, silent_after_min: 1m}")
    async with Runtime(config, clock=clock) as rt:
        await poll(rt)  # the baseline: it publishes every hour
        [row] = feed_rows(config, await rt.store.get_feeds(), clock.now)
        assert row["state"] == "ok" and row["cadence_s"] == 3600 and row["silent_after_s"] == 7200
        for _ in range(6):  # nothing new for 3 hours: silent after 2
            clock.advance(minutes=30)
            await poll(rt)
        assert notices(tmp_path) == ["monitor:feed-silent"]
        [row] = feed_rows(config, await rt.store.get_feeds(), clock.now)
        assert row["state"] == "silent"
        health = await rt.health()
        assert health["feeds"]["silent"] == ["a"] and "1 feed(s) silent" in health["reasons"]
        new = Item(title="Hourly bulletin, at last", link="https://h.example/new", guid="hn",
                   published=clock.now)
        feed_server.set("/a.rss", rss([new, *hourly], now=clock.now))
        clock.advance(minutes=1)
        await poll(rt)
        clock.advance(minutes=30)
        await poll(rt)
    assert notices(tmp_path) == ["monitor:feed-silent", "monitor:feed-recovered"]
    silent = alerts(tmp_path, "audit.jsonl")[0]
    assert "no new story for 2h 30m" in silent["title"]


async def test_stale_items_are_counted_in_the_log_line_the_outcome_and_the_metric(
    make_config: MakeConfig, feed_server: FeedServer, clock: Clock, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    feed_server.serve("/a.rss", rss(BACKLOG, now=T0))
    feed_server.serve("/b.rss", rss(BACKLOG, now=T0))
    config = make_config({"a": "/a.rss", "b": "/b.rss"})
    seed = seed_item()
    old = [Item(title=seed.title, link=seed.link, guid=seed.guid, description=seed.description,
                published=T0 - timedelta(days=10)),
           Item(title=UNRELATED.title, link=UNRELATED.link, guid=UNRELATED.guid,
                description=UNRELATED.description, published=T0 - timedelta(days=4))]
    async with Runtime(config, clock=clock) as rt:
        await poll(rt)
        feed_server.set("/a.rss", rss([*old, *BACKLOG], now=clock.now))
        clock.advance(minutes=5)
        with caplog.at_level(logging.INFO, logger="monitor.shell.pipeline"):
            out = await poll(rt)
        assert out["a"].new == 2 and out["a"].stale == 2 and out["a"].alerts == 0
        assert out["a"].to_dict()["stale"] == 2 and out["b"].stale == 0
        assert rt.metrics.registry.get_sample_value(
            "monitor_stale_items_skipped_total", {"feed": "a"}) == 2
    [line] = [r for r in caplog.records
              if r.getMessage() == "feed.polled" and r.fields["feed"] == "a"]  # type: ignore[attr-defined]
    assert line.fields["stale"] == 2 and line.fields["new"] == 2  # type: ignore[attr-defined]
    assert alerts(tmp_path) == []


async def test_max_age_decides_what_is_stale(
    make_config: MakeConfig, feed_server: FeedServer, clock: Clock, tmp_path: Path
) -> None:
    feed_server.serve("/a.rss", rss(BACKLOG, now=T0))
    config = make_config({"a": "/a.rss"}, "defaults: {max_age: 30d}")
    seed = seed_item()
    old = Item(title=seed.title, link=seed.link, guid=seed.guid, description=seed.description,
               published=T0 - timedelta(days=10))
    async with Runtime(config, clock=clock) as rt:
        await poll(rt)
        feed_server.set("/a.rss", rss([old, *BACKLOG], now=clock.now))
        clock.advance(minutes=5)
        out = await poll(rt)
    assert out["a"].stale == 0 and out["a"].alerts >= 1
    assert [a["rule"] for a in alerts(tmp_path)] == ["sanctions-deadline"]


async def test_the_entity_bomb_is_the_feeds_problem(
    make_config: MakeConfig, feed_server: FeedServer, clock: Clock
) -> None:
    feed_server.serve("/a.rss", _billion_laughs())
    config = make_config({"a": "/a.rss"})
    async with Runtime(config, clock=clock) as rt:
        out = await poll(rt)
        assert out["a"].result == "baseline" and out["a"].problem
        [row] = feed_rows(config, await rt.store.get_feeds(), clock.now)
        health = await rt.health()
    assert row["state"] == "ok"
    assert "declares XML entities" in row["problem"] and "billion laughs" in row["problem"]
    assert health["feeds"]["problems"][0]["feed"] == "a"
    assert "declares XML entities" in health["feeds"]["problems"][0]["problem"]


async def test_guid_churn_is_the_feeds_problem(
    make_config: MakeConfig, feed_server: FeedServer, clock: Clock
) -> None:
    items = [Item(title=f"Story number {i} about trade talks and tariffs, day {i}",
                  link=f"https://x.example/s{i}", guid=f"g{i}") for i in range(6)]
    feed_server.serve("/a.rss", rss(items, now=T0))
    config = make_config({"a": "/a.rss"})
    async with Runtime(config, clock=clock) as rt:
        await poll(rt)
        for n in range(2):  # new GUIDs for the same links, poll after poll
            clock.advance(minutes=5)
            feed_server.set("/a.rss", rss([Item(title=i.title, link=i.link, guid=f"v{n}-{i.guid}")
                                           for i in items], now=clock.now))
            out = await poll(rt)
            assert out["a"].alerts == 0 and out["a"].problem and "GUID churn" in out["a"].problem
        [row] = feed_rows(config, await rt.store.get_feeds(), clock.now)
        [st] = await rt.store.get_feeds()
    assert row["state"] == "ok" and "GUID churn" in row["problem"]
    assert st.last_new_story == T0  # churned items are not news: the silence clock runs on


async def test_the_recovery_is_threaded_under_the_notice_in_slack(
    make_config: MakeConfig, feed_server: FeedServer, clock: Clock, slack_server: SlackServer,
    tmp_path: Path,
) -> None:
    feed_server.status("/a.rss", 503)
    make_config({"a": "/a.rss"})
    path = tmp_path / "config.yaml"
    path.write_text("health: {channel: ops, feed_failing_after: 10m}\n" + path.read_text().replace("channels:\n", (
        f"channels:\n  ops: {{type: slack, token: '{slack_server.token}', channel: '#alerts', "
        f"base_url: '{slack_server.api_base_url}'}}\n"), 1))
    config = load_config(path)
    async with Runtime(config, clock=clock) as rt:
        for _ in range(3):
            await poll(rt)
            clock.advance(minutes=6)
        feed_server.serve("/a.rss", rss(BACKLOG, now=T0))
        await poll(rt)
    first, second = slack_server.messages
    assert first["thread_ts"] is None and ":warning:" in str(first["payload"])
    assert "feed 'a' is failing" in str(first["payload"]) and "503" in str(first["payload"])
    assert second["thread_ts"] == first["ts"] and "recovered" in str(second["payload"])
