"""The outbox worker against real peers: 429 + Retry-After, permanent failures, threading
of updates, a channel removed from the config. Real SQLite store, fixed clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.config import DeliveryConfig, EmailChannel, FileChannel, SlackChannel
from monitor.core.model import Alert, ClusterInfo, Delivery, FeedState, Match, Story
from monitor.metrics import Metrics
from monitor.notify.email import EmailNotifier
from monitor.notify.file import FileNotifier
from monitor.notify.slack import SlackNotifier
from monitor.shell.dispatch import Dispatcher, DispatchResult
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


def dispatcher(store: SQLiteStore, notifiers: dict[str, Any], clock: Clock,
               **settings: Any) -> Dispatcher:
    settings = {"retry_min": 10, "retry_max": 60, **settings}
    return Dispatcher(store, notifiers, DeliveryConfig(**settings),
                      Metrics(), clock, rates={ch: 100.0 for ch in notifiers})


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
    # a 429 is the channel's pause, not the alert's failure: one attempt counted
    assert row.state == "sent" and row.attempts == 1
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
    dsp = dispatcher(store, {"slack": n}, clock, max_age=0)  # (not held back as stale)
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

    # the channel rests after its failures, requeued or not: retry_min (10 s) doubling
    # with each failure in a row, so 40 s after the third
    assert (await dsp.run_once()).retrying == 0
    clock.now += timedelta(seconds=39)
    assert (await dsp.run_once()).retrying == 0
    clock.now += timedelta(seconds=2)
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


# -- channels that never wait on each other, roll-ups, 429 pauses, stale alerts ------------

FEED_OUTBOX = FeedState(name="bbc", url="http://x", configured_url="http://x")


def story_delivery(i: int, channel: str, *, rule: str = "sanctions",
                   created: Any = T0) -> Delivery:
    s = Story(id=f"s{i}", feed="bbc", title=f"Story number {i} about sanctions",
              link=f"https://example.org/s{i}", published=T0, first_seen=T0)
    m = Match(rule=rule, severity="high", channels=(channel,), terms=("sanctions",))
    return Delivery(key=f"a:s{i}:{rule}:{channel}", channel=channel, created=created,
                    alert=Alert(story=s, match=m, cluster=f"s{i}", sources=1,
                                source_names=("bbc",)))


async def wait_for(cond: Any, what: str, limit: float = 30.0) -> None:
    """Poll ``cond`` until true; ``limit`` only keeps a broken build from hanging."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not cond():
        assert loop.time() < end, f"gave up waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_stalled_smtp_server_delays_no_other_channel(
    store: SQLiteStore, slack_server: SlackServer, tmp_path: Path
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts, then never says a word (no 220 greeting)

    smtp = await asyncio.start_server(stall, "127.0.0.1", 0)
    port = smtp.sockets[0].getsockname()[1]
    mail = EmailNotifier("mail", EmailChannel.model_validate({
        "type": "email", "host": "127.0.0.1", "port": port, "security": "none",
        "from": "monitor@example.org", "to": ["ops@example.org"], "timeout": 120}))
    slack = SlackNotifier("slack", SlackChannel(type="slack", webhook_url=slack_server.webhook_url,
                                                rate=1000))
    out = tmp_path / "alerts.jsonl"
    audit = FileNotifier("audit", FileChannel(type="file", path=str(out)), tmp_path)
    dsp = Dispatcher(store, {"mail": mail, "slack": slack, "audit": audit},
                     DeliveryConfig(rollup_after=0), Metrics(), Clock())
    await queue(store, *(story_delivery(i, ch) for ch in ("mail", "slack", "audit")
                         for i in range(20)))
    wake = asyncio.Event()
    serving = asyncio.create_task(dsp.serve(wake, tick=0.05))
    try:
        await wait_for(lambda: len(slack_server.messages) == 20, "20 Slack messages")
        await wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 20,
                       "20 lines in the file channel")
        await wait_for(lambda: bool(held), "the email channel to reach its stalled server")
        loop = asyncio.get_running_loop()
        end = loop.time() + 30
        while True:  # (the peers saw them; their marks follow the peers' answers)
            rows = await store.deliveries(limit=100)
            if {r.state for r in rows if r.channel != "mail"} == {"sent"}:
                break
            assert loop.time() < end, [(r.channel, r.state) for r in rows]
            await asyncio.sleep(0.02)
        assert {r.state for r in rows if r.channel == "mail"} == {"pending"}  # none lost
    finally:
        dsp.stopping = True
        wake.set()
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await dsp.close()
        for w in held:
            w.close()
        smtp.close()


async def test_a_burst_is_rolled_up_per_rule_and_updates_thread_under_it(
    store: SQLiteStore, slack_server: SlackServer
) -> None:
    n = SlackNotifier("slack", SlackChannel(type="slack", token=slack_server.token,
                                            channel=next(iter(slack_server.channels)),
                                            base_url=slack_server.api_base_url, rate=2))
    # rate 2/s, rollup_after 5 s: a queue of more than 10 is rolled up
    dsp = Dispatcher(store, {"slack": n}, DeliveryConfig(rollup_after=5), Metrics(), Clock())
    burst = ([story_delivery(i, "slack", rule="sanctions") for i in range(14)]
             + [story_delivery(100 + i, "slack", rule="ceasefire") for i in range(3)]
             + [story_delivery(200, "slack", rule="lonely")])
    await queue(store, *burst)
    r = await dsp.run_once()
    assert (r.sent, r.rolled_up, r.retrying, r.failed) == (18, 17, 0, 0)
    texts = [m["text"] for m in slack_server.messages]
    assert len(texts) == 3, texts  # two roll-ups and the rule with one story, as itself
    assert any("sanctions: 14 new stories" in t for t in texts)
    assert any("ceasefire: 3 new stories" in t for t in texts)
    rolled = next(m for m in slack_server.messages if "sanctions: 14" in m["text"])
    blocks = json.dumps(rolled["payload"]["blocks"])
    assert "Story number 0 about sanctions" in blocks and "https://example.org/s0" in blocks
    rows = await store.deliveries(limit=100)
    assert len(rows) == 18 and {r.state for r in rows} == {"sent"}  # nothing dropped
    # a later update of a rolled-up story threads under the roll-up
    first = burst[3]
    await queue(store, Delivery(key=f"u:{first.key}:2", channel="slack", created=T0,
                                parent_key=first.key,
                                alert=replace(first.alert, update=True, sources=2,
                                              source_names=("bbc", "ap"))))
    assert (await dsp.run_once()).sent == 1
    assert slack_server.messages[-1]["thread_ts"] == rolled["ts"]
    # …as a reply: the roll-up itself is never rewritten into that one story
    assert slack_server.updates == [] and rolled["edits"] == 0
    # an edit-only update (no milestone) of a rolled-up story sends nothing at all
    await queue(store, Delivery(key=f"u:{first.key}:3", channel="slack", created=T0,
                                parent_key=first.key,
                                alert=replace(first.alert, update=True, sources=3, reply=False,
                                              source_names=("bbc", "ap", "dw"))))
    before = len(slack_server.messages)
    assert (await dsp.run_once()).sent == 1
    assert len(slack_server.messages) == before and slack_server.updates == []
    await dsp.close()


async def test_a_short_queue_is_not_rolled_up(store: SQLiteStore,
                                              slack_server: SlackServer) -> None:
    n = SlackNotifier("slack", SlackChannel(type="slack", webhook_url=slack_server.webhook_url,
                                            rate=1000))
    dsp = Dispatcher(store, {"slack": n}, DeliveryConfig(rollup_after=5), Metrics(), Clock(),
                     rates={"slack": 1.0})  # 5 fit in 5 s at 1/s
    await queue(store, *(story_delivery(i, "slack") for i in range(5)))
    r = await dsp.run_once()
    assert (r.sent, r.rolled_up) == (5, 0)
    assert len(slack_server.messages) == 5
    await dsp.close()


async def test_a_429_storm_pauses_the_channel_for_exactly_retry_after(
    store: SQLiteStore, slack_server: SlackServer
) -> None:
    """30 answers of 429 with Retry-After: 2 (about a minute of storm): every request
    comes exactly 2 s after the last, no attempt is counted against the alerts, and
    everything is delivered once afterwards."""
    clock = Clock()
    n = SlackNotifier("slack", SlackChannel(type="slack", webhook_url=slack_server.webhook_url,
                                            rate=1000))
    dsp = dispatcher(store, {"slack": n}, clock, rollup_after=0)
    await queue(store, *(story_delivery(i, "slack") for i in range(5)))
    slack_server.fail_next(30, status=429, retry_after=2)
    rounds = 0
    while len(slack_server.messages) < 5:
        r = await dsp.run_once()
        assert r.failed == 0
        rounds += 1
        assert rounds < 100
        until = dsp.paused_until("slack")
        if until is not None:
            assert until == clock.now + timedelta(seconds=2)
            clock.now = until
    assert clock.now - T0 == timedelta(seconds=60)  # 30 pauses of exactly 2 s
    assert slack_server.requests == 35
    rows = await store.deliveries()
    assert {(r.state, r.attempts) for r in rows} == {("sent", 1)}
    assert len({m["text"] for m in slack_server.messages}) == 5  # each story once
    await dsp.close()


async def test_alerts_older_than_max_age_go_as_one_summary(store: SQLiteStore,
                                                           slack_server: SlackServer) -> None:
    clock = Clock()
    n = SlackNotifier("slack", SlackChannel(type="slack", webhook_url=slack_server.webhook_url,
                                            rate=1000))
    dsp = dispatcher(store, {"slack": n}, clock, max_age="6h")
    await queue(store, *(story_delivery(i, "slack", rule=f"r{i % 2}") for i in range(4)))
    clock.now = T0 + timedelta(hours=7)  # the channel was down for seven hours
    await queue(store, story_delivery(9, "slack", created=clock.now))
    r = await dsp.run_once()
    assert (r.sent, r.stale, r.failed) == (5, 4, 0)
    texts = [m["text"] for m in slack_server.messages]
    assert len(texts) == 2
    assert any("could not deliver: 4 alerts" in t for t in texts)
    assert any("Story number 9" in json.dumps(m["payload"]) and "could not" not in m["text"]
               for m in slack_server.messages)
    await dsp.close()


async def test_one_old_alerts_long_backoff_does_not_hold_its_channel(
    store: SQLiteStore, slack_server: SlackServer
) -> None:
    """An alert at its 9th attempt fails once more (a 503 blip): its own retry is an hour
    away, but the channel rests only retry_min before sending the others."""
    clock = Clock()
    n = SlackNotifier("slack", SlackChannel(type="slack", webhook_url=slack_server.webhook_url,
                                            rate=1000))
    dsp = dispatcher(store, {"slack": n}, clock, retry_max=3600, rollup_after=0)
    [old] = await store.save_poll(FEED_OUTBOX, [], [story_delivery(0, "slack")])
    assert old.id is not None
    for _ in range(8):
        await store.mark_failed(old.id, clock.now, "HTTP 503", clock.now)
    await queue(store, story_delivery(1, "slack"))
    slack_server.fail_next(1, status=503)
    r = await dsp.run_once()
    assert (r.sent, r.retrying) == (0, 2)  # the old one failed, the other was held back
    rows = {row.key: row for row in await store.deliveries()}
    old_row = rows[old.key]
    assert old_row.next_attempt is not None
    assert old_row.next_attempt - clock.now > timedelta(minutes=30)  # its own backoff
    clock.now += timedelta(seconds=11)  # retry_min (10 s) later
    r = await dsp.run_once()
    assert r.sent == 1 and len(slack_server.messages) == 1
    assert "Story number 1" in json.dumps(slack_server.messages[0]["payload"])
    await dsp.close()


async def test_a_round_claims_each_delivery_at_most_once(store: SQLiteStore,
                                                         slack_server: SlackServer) -> None:
    """Slack down and a clock that runs fast (each retry comes due while the round goes
    on): the round still ends, having tried each delivery once."""
    class Racing:
        def __init__(self) -> None:
            self.now = T0

        def __call__(self) -> Any:
            self.now += timedelta(seconds=5)  # longer than retry_min at every look
            return self.now

    n = SlackNotifier("slack", SlackChannel(type="slack", webhook_url=slack_server.webhook_url,
                                            rate=1000))
    dsp = Dispatcher(store, {"slack": n},
                     DeliveryConfig(retry_min=1, retry_max=2, batch=2, rollup_after=0,
                                    max_age=0), Metrics(), Racing())
    await queue(store, *(story_delivery(i, "slack") for i in range(6)))
    slack_server.fail_next(1000, status=503)
    r = await asyncio.wait_for(dsp.run_once(), 60)
    assert slack_server.requests <= 6  # each delivery tried at most once in the round
    assert r.retrying >= 1 and r.sent == 0
    await dsp.close()


async def test_channels_come_and_go_while_serving(store: SQLiteStore, tmp_path: Path) -> None:
    # a reload: a channel added gets its loop and delivers; a removed one's loop ends;
    # a replaced notifier is closed; the health of each channel is kept
    clock = Clock()

    def file(name: str) -> FileNotifier:
        return FileNotifier(name, FileChannel(type="file", path=f"{name}.jsonl"),
                            base_dir=tmp_path)

    a = file("a")
    dsp = dispatcher(store, {"a": a}, clock)
    wake = asyncio.Event()
    serving = asyncio.create_task(dsp.serve(wake, tick=0.05))
    try:
        await queue(store, delivery("k-a", "a"))
        wake.set()
        for _ in range(200):
            if (tmp_path / "a.jsonl").exists():
                break
            await asyncio.sleep(0.02)
        assert dsp.health["a"].last_success is not None and dsp.health["a"].failures == 0

        b = file("b")
        dsp.update_channels({"a": a, "b": b}, settings=dsp.settings, rates={}, quiet={})
        await queue(store, delivery("k-b", "b"))
        wake.set()
        for _ in range(200):
            if (tmp_path / "b.jsonl").exists():
                break
            await asyncio.sleep(0.02)
        assert (tmp_path / "b.jsonl").exists()
        assert set(dsp._loops) == {"a", "b"} and set(dsp.health) == {"a", "b"}

        closed: list[str] = []
        b2 = file("b")

        async def close() -> None:
            closed.append("b")

        b.close = close  # type: ignore[method-assign]
        dsp.update_channels({"b": b2}, settings=dsp.settings, rates={}, quiet={})
        for _ in range(200):
            if not dsp._loops.get("a") or dsp._loops["a"].done():
                break
            await asyncio.sleep(0.02)
        await asyncio.gather(*dsp._closing)
        assert closed == ["b"] and set(dsp.health) == {"b"}
        assert "a" not in dsp._loops or dsp._loops["a"].done()
        assert dsp.failing_channels() == []
    finally:
        dsp.stopping = True
        wake.set()
        await asyncio.wait_for(serving, 10)
        await dsp.close()


async def test_channel_health_counts_sends_not_rate_limits(store: SQLiteStore,
                                                           tmp_path: Path) -> None:
    from monitor.core.model import SendFailed, Sent

    clock = Clock()
    dsp = dispatcher(store, {"c": FileNotifier("c", FileChannel(type="file", path="c.jsonl"),
                                               base_dir=tmp_path)}, clock)
    dsp._record("c", SendFailed(reason="HTTP 500", retry=True))
    dsp._record("c", SendFailed(reason="slow down", retry=True, rate_limited=True))
    dsp._record("c", SendFailed(reason="HTTP 502", retry=True))
    h = dsp.health["c"]
    assert (h.failures, h.last_error, h.failing_since) == (2, "HTTP 502", T0)
    assert dsp.failing_channels() == []  # two in a row: not yet
    clock.now = T0 + timedelta(minutes=15)  # but failing for 15 minutes: failing
    assert dsp.failing_channels() == ["c"]
    dsp._record("c", Sent(ref=None))
    assert (h.failures, h.failing_since, h.last_success) == (0, None, clock.now)
    for _ in range(3):
        dsp._record("c", SendFailed(reason="token revoked", retry=False))
    assert dsp.failing_channels() == ["c"]  # three in a row
    assert h.to_dict(clock.now)["consecutive_failures"] == 3
    await dsp.close()


async def test_a_revoked_slack_token_is_reported_through_the_fallback_then_recovers(
    store: SQLiteStore, slack_server: SlackServer, tmp_path: Path
) -> None:
    """Slack is the health channel and its token is revoked: after three failed sends the
    channel is failing, and one notice goes to the fallback (a file); once the token is
    fixed, `monitor outbox retry` sends the failed alerts and one recovery notice follows."""
    clock = Clock()
    slack = SlackNotifier("slack", SlackChannel(type="slack", token="xoxb-revoked",
                                                channel="#news",
                                                base_url=slack_server.api_base_url, rate=1000))
    out = tmp_path / "ops.jsonl"
    ops = FileNotifier("ops", FileChannel(type="file", path=str(out)), tmp_path)
    dsp = dispatcher(store, {"slack": slack, "ops": ops}, clock, rollup_after=0)
    dsp.ops = ("slack", "ops")
    await queue(store, *(story_delivery(i, "slack") for i in range(4)))
    r = await dsp.run_once()
    assert r.failed == 4  # invalid_auth: not retried
    assert dsp.failing_channels() == ["slack"]
    r = await dsp.run_once()  # the notice, queued for the fallback, goes out
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["rule"] for x in lines] == ["monitor:channel-failing"]
    assert "channel 'slack' is failing" in lines[0]["title"]
    assert "invalid_auth" in lines[0]["title"] and "xoxb" not in out.read_text()
    assert "monitor outbox retry --channel slack" in lines[0]["details"]
    assert (await dsp.run_once()) == DispatchResult()  # one notice per streak
    # the token is fixed; `monitor outbox retry` puts the failed alerts back
    slack.cfg = slack.cfg.model_copy(update={"token": slack_server.token})
    await slack.close()
    assert len(await store.requeue_failed(clock.now)) == 4
    r = await dsp.run_once()
    assert r.sent >= 4 and len(slack_server.messages) == 4
    assert dsp.failing_channels() == []
    await dsp.run_once()
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["rule"] for x in lines] == ["monitor:channel-failing",
                                          "monitor:channel-recovered"]
    await dsp.close()
