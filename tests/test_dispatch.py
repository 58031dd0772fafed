"""The outbox worker against real peers: 429 + Retry-After, permanent failures, threading
of updates, a channel removed from the config. Real SQLite store, fixed clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.config import DeliveryConfig, FileChannel, SlackChannel
from monitor.core.model import Alert, ClusterInfo, Delivery, FeedState, Match, Story
from monitor.metrics import Metrics
from monitor.notify.file import FileNotifier
from monitor.notify.slack import SlackNotifier
from monitor.shell.dispatch import Dispatcher
from monitor.store.base import StoredStory
from monitor.store.sqlite import SQLiteStore
from tests.clock import T0, Clock
from tests.peers.slackserver import SlackServer

STORY = Story(id="s1", feed="bbc", title="Putin misses Trump's sanctions deadline",
              link="https://example.org/s1", published=T0, first_seen=T0)


def delivery(key: str, channel: str, *, update: bool = False, parent: str | None = None
             ) -> Delivery:
    m = Match(rule="sanctions", severity="high", channels=(channel,), terms=("sanctions",))
    return Delivery(key=key, channel=channel, created=T0, parent_key=parent,
                    alert=Alert(story=STORY, match=m, cluster="s1", update=update,
                                sources=2 if update else 1, source_names=("bbc", "ap")))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "s.db") as s:
        yield s


async def queue(store: SQLiteStore, *ds: Delivery) -> None:
    await store.save_poll(
        FeedState(name="bbc", url="http://x", configured_url="http://x"),
        [StoredStory(story=STORY, cluster="s1")], list(ds),
        [ClusterInfo(id="s1", first_story="s1", title=STORY.title, first_seen=T0,
                     last_seen=T0, sources=("bbc",))],
    )


def dispatcher(store: SQLiteStore, notifiers: dict[str, Any], clock: Clock) -> Dispatcher:
    return Dispatcher(store, notifiers, DeliveryConfig(retry_min=10, retry_max=60),
                      Metrics(), clock)


async def test_429_retry_after_is_honoured(store: SQLiteStore, slack_server: SlackServer) -> None:
    clock = Clock()
    n = SlackNotifier("slack", SlackChannel(type="slack", webhook_url=slack_server.webhook_url,
                                            rate=100))
    dsp = dispatcher(store, {"slack": n}, clock)
    await queue(store, delivery("a:s1:sanctions:slack", "slack"))
    slack_server.fail_next(1, status=429, retry_after=120)
    r = await dsp.run_once()
    assert (r.sent, r.retrying, r.failed) == (0, 1, 0)
    clock.now = T0 + timedelta(seconds=60)  # backoff alone would allow it; Retry-After not
    assert (await dsp.run_once()).sent == 0
    clock.now = T0 + timedelta(seconds=121)
    assert (await dsp.run_once()).sent == 1
    assert len(slack_server.messages) == 1
    (row,) = await store.deliveries()
    assert row.state == "sent" and row.attempts == 2
    await dsp.close()


async def test_permanent_failure_is_not_retried(store: SQLiteStore, slack_server: SlackServer) -> None:
    clock = Clock()
    n = SlackNotifier("slack", SlackChannel(type="slack", token="xoxb-wrong", channel="#news",
                                            base_url=slack_server.api_base_url, rate=100))
    dsp = dispatcher(store, {"slack": n}, clock)
    await queue(store, delivery("a:s1:sanctions:slack", "slack"))
    r = await dsp.run_once()
    assert (r.sent, r.retrying, r.failed) == (0, 0, 1)
    (row,) = await store.deliveries()
    assert row.state == "failed" and "invalid_auth" in (row.last_error or "")
    clock.now = T0 + timedelta(days=1)
    assert await dsp.run_once() == type(r)()
    await dsp.close()


async def test_requeued_deliveries_are_retried_from_the_requeue_not_given_up(
    store: SQLiteStore, slack_server: SlackServer
) -> None:
    # given up days ago (the relay was down for a week); `monitor outbox retry` on day 8;
    # Slack answers 429 at first: they are retried, not given up on their age again, and
    # the rest of the channel waits instead of hammering a peer that asked for a pause
    clock = Clock()
    n = SlackNotifier("slack", SlackChannel(type="slack", webhook_url=slack_server.webhook_url,
                                            rate=100))
    dsp = dispatcher(store, {"slack": n}, clock)
    keys = [f"a:s{i}:sanctions:slack" for i in range(3)]
    await queue(store, *(delivery(k, "slack") for k in keys))
    clock.now = T0 + timedelta(days=8)
    slack_server.fail_next(3, status=503)
    r = await dsp.run_once()  # too old: given up at its first failed attempt
    assert (r.failed, r.retrying) == (1, 2)
    assert slack_server.requests == 1  # the other two waited: the channel was blocked
    clock.now += timedelta(minutes=5)
    assert (await dsp.run_once()).failed == 1
    clock.now += timedelta(minutes=5)
    assert (await dsp.run_once()).failed == 1
    assert {d.state for d in await store.deliveries()} == {"failed"}

    slack_server.fail_next(1, status=429, retry_after=30)
    requeued = await store.requeue_failed(clock.now)
    assert len(requeued) == 3
    r = await dsp.run_once()
    assert (r.sent, r.retrying, r.failed) == (0, 3, 0)  # retried: counted from the requeue
    assert slack_server.requests == 4
    clock.now += timedelta(seconds=31)
    assert (await dsp.run_once()).sent == 3
    assert len(slack_server.messages) == 3
    await dsp.close()


async def test_update_is_threaded_under_its_alert(store: SQLiteStore, slack_server: SlackServer) -> None:
    n = SlackNotifier("slack", SlackChannel(type="slack", token=slack_server.token,
                                            channel=next(iter(slack_server.channels)),
                                            base_url=slack_server.api_base_url, rate=100))
    dsp = dispatcher(store, {"slack": n}, Clock())
    first = delivery("a:s1:sanctions:slack", "slack")
    await queue(store, first, delivery("u:s1:sanctions:slack:2", "slack", update=True,
                                       parent=first.key))
    assert (await dsp.run_once()).sent == 2
    alert_msg, update_msg = slack_server.messages
    assert alert_msg["thread_ts"] is None and update_msg["thread_ts"] == alert_msg["ts"]
    assert "2 sources" in update_msg["text"]
    await dsp.close()


async def test_a_channel_removed_from_the_config_fails_visibly(store: SQLiteStore) -> None:
    dsp = dispatcher(store, {}, Clock())
    await queue(store, delivery("a:s1:sanctions:gone", "gone"))
    assert (await dsp.run_once()).failed == 1
    (row,) = await store.deliveries(state="failed")
    assert "not configured" in (row.last_error or "")


async def test_a_failing_channel_is_tried_once_per_round(store: SQLiteStore,
                                                         slack_server: SlackServer) -> None:
    """Five deliveries in batches of two to a channel answering 500: one attempt, the rest
    given back untried (no attempt counted) until the retry time."""
    clock = Clock()
    n = SlackNotifier("slack", SlackChannel(type="slack", webhook_url=slack_server.webhook_url,
                                            rate=100))
    dsp = Dispatcher(store, {"slack": n}, DeliveryConfig(retry_min=10, retry_max=60, batch=2),
                     Metrics(), clock)
    await queue(store, *(delivery(f"a:s1:r{i}:slack", "slack") for i in range(5)))
    slack_server.fail_next(1, status=500)  # a second request would succeed: none is made
    r = await dsp.run_once()
    assert slack_server.requests == 1
    assert (r.sent, r.retrying, r.failed) == (0, 5, 0)
    assert sorted(d.attempts for d in await store.deliveries()) == [0, 0, 0, 0, 1]
    clock.now = T0 + timedelta(seconds=11)
    assert (await dsp.run_once()).sent == 5
    await dsp.close()


async def test_a_file_channel_takes_a_batch_in_one_write(store: SQLiteStore,
                                                         tmp_path: Path) -> None:
    """Seven deliveries in batches of three: three writes (3 + 3 + 1 lines), every alert
    once, in order, all marked sent."""
    out = tmp_path / "alerts.jsonl"
    n = FileNotifier("audit", FileChannel(type="file", path=str(out)), tmp_path)
    writes: list[int] = []
    real = n.send_batch

    async def counting(alerts: Any) -> Any:
        writes.append(len(alerts))
        return await real(alerts)

    n.send_batch = counting  # type: ignore[method-assign]
    sent: list[str] = []
    dsp = Dispatcher(store, {"audit": n}, DeliveryConfig(batch=3), Metrics(), Clock(),
                     on_sent=lambda d: sent.append(d.key))
    keys = [f"a:s1:r{i}:audit" for i in range(7)]
    await queue(store, *(delivery(k, "audit") for k in keys))
    r = await dsp.run_once()
    assert (r.sent, r.retrying, r.failed) == (7, 0, 0)
    assert writes == [3, 3]  # the last, single delivery goes the one-by-one way
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(x["rule"], x["story"]) for x in lines] == [("sanctions", "s1")] * 7
    assert sent == keys
    assert {(d.state, d.attempts) for d in await store.deliveries()} == {("sent", 1)}
    assert await store.count_pending() == 0
    await dsp.close()


async def test_a_failed_batch_write_is_retried_whole(store: SQLiteStore,
                                                     tmp_path: Path) -> None:
    """The file cannot be written (its directory is a file): every delivery of the batch
    is retried later, none is lost, and once the path heals each is written once."""
    blocker = tmp_path / "dir"
    blocker.write_text("not a directory", encoding="utf-8")
    n = FileNotifier("audit", FileChannel(type="file", path="dir/alerts.jsonl"), tmp_path)
    clock = Clock()
    dsp = Dispatcher(store, {"audit": n}, DeliveryConfig(batch=10, retry_min=10, retry_max=60),
                     Metrics(), clock)
    await queue(store, *(delivery(f"a:s1:r{i}:audit", "audit") for i in range(4)))
    r = await dsp.run_once()
    assert (r.sent, r.retrying, r.failed) == (0, 4, 0)
    rows = await store.deliveries()
    assert {(d.state, d.attempts) for d in rows} == {("pending", 1)}
    assert all("alerts.jsonl" in (d.last_error or "") for d in rows)
    assert (await dsp.run_once()).sent == 0  # not due yet
    blocker.unlink()
    clock.now = T0 + timedelta(seconds=61)
    assert (await dsp.run_once()).sent == 4
    assert len((tmp_path / "dir" / "alerts.jsonl").read_text().splitlines()) == 4
    await dsp.close()
