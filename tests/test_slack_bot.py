"""Slack delivery that respects attention (#12), against the local Slack-compatible peer:

* a slow answer (the peer takes the message, then answers after the client's timeout)
  repeats nothing in bot mode (the retry finds the delivery key in the channel's
  history) and at most ``MAX_AMBIGUOUS + 1`` times in webhook mode;
* a growing cluster edits its first bot message in place and replies in its thread only
  at milestones (route.plan → real SQLite outbox → dispatcher → peer).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.config import DeliveryConfig, SlackChannel
from monitor.core.model import (
    Alert,
    ClusterInfo,
    Delivery,
    FeedState,
    Match,
    SendFailed,
    Sent,
    Story,
)
from monitor.core.route import Candidate, ClusterFacts, plan
from monitor.metrics import Metrics
from monitor.notify.slack import (
    EVENT_TYPE,
    HISTORY_MARGIN,
    MAX_AMBIGUOUS,
    SlackNotifier,
    split_ref,
)
from monitor.shell.dispatch import Dispatcher
from monitor.store.base import StoredStory
from monitor.store.sqlite import SQLiteStore
from tests.clock import T0, Clock
from tests.peers.slackserver import SlackServer

RULE = "sanctions"
FEEDS = ("bbc", "ap", "afp", "dw", "rt")


def story(i: int) -> Story:
    return Story(id=f"s{i}", feed=FEEDS[i - 1], title=f"Sanctions deadline missed, says {FEEDS[i - 1]}",
                 link=f"https://example.org/{i}", published=T0, first_seen=T0)


def bot(server: SlackServer, channel: str = "#news", **kw: Any) -> SlackNotifier:
    cfg = SlackChannel(type="slack", token=server.token, channel=channel,
                       base_url=server.api_base_url, rate=1000)
    # below the validated minimum of 1 s, so that a late answer costs the test little
    return SlackNotifier("slack", cfg.model_copy(update=kw))


def hook(server: SlackServer, **kw: Any) -> SlackNotifier:
    cfg = SlackChannel(type="slack", webhook_url=server.webhook_url, rate=1000)
    return SlackNotifier("hook", cfg.model_copy(update=kw))


def first_alert(channels: tuple[str, ...] = ("slack",)) -> Delivery:
    m = Match(rule=RULE, severity="high", channels=channels, terms=("sanctions",))
    return Delivery(key=f"a:c1:{RULE}:{channels[0]}", channel=channels[0], created=T0,
                    alert=Alert(story=story(1), match=m, cluster="c1", source_names=("bbc",)))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "s.db") as s:
        yield s


async def save(store: SQLiteStore, clock: Clock, n: int, deliveries: list[Delivery]) -> None:
    """Store story ``n`` (cluster c1, now carried by the first ``n`` feeds) with the
    deliveries its poll queued."""
    s = story(n)
    await store.save_poll(
        FeedState(name=s.feed, url="http://x", configured_url="http://x"),
        [StoredStory(story=s, cluster="c1")], deliveries,
        [ClusterInfo(id="c1", first_story="s1", title=story(1).title, first_seen=T0,
                     last_seen=clock(), sources=FEEDS[:n])],
    )


def dispatcher(store: SQLiteStore, notifiers: dict[str, Any], clock: Clock) -> Dispatcher:
    return Dispatcher(store, notifiers, DeliveryConfig(retry_min=10, retry_max=60),
                      Metrics(), clock)


def blocks_text(m: dict[str, Any]) -> str:
    return m["text"] + json.dumps(m["blocks"], ensure_ascii=False)


# --------------------------------------------------------------------------- edits


async def test_growing_cluster_edits_the_first_message_and_replies_at_milestones(
    store: SQLiteStore, slack_server: SlackServer
) -> None:
    """1 → 2 → 3 → 5 sources: one top-level bot message, edited to "carried by 5" with
    the latest outlets, and thread replies at 2 and 5 only. A webhook channel on the
    same rule (it cannot edit) gets its milestone updates as before."""
    clock = Clock()
    m = Match(rule=RULE, severity="high", channels=("slack", "hook"), terms=("sanctions",))
    n_bot, n_hook = bot(slack_server), hook(slack_server)
    d = dispatcher(store, {"slack": n_bot, "hook": n_hook}, clock)
    editable = {"slack"}
    try:
        for n in (1, 2, 3, 5):
            new = n == 1
            c = Candidate(story=story(n), matches=(m,) if new else (),
                          facts=ClusterFacts(cluster="c1", sources=FEEDS[:n], new=new))
            earlier = {} if new else {"c1": await store.cluster_alerts("c1")}
            ds = plan(candidates=[c], earlier=earlier, enabled={RULE}, now=clock(),
                      editable=editable)
            await save(store, clock, n, ds)
            result = await d.run_once()
            assert (result.sent, result.retrying, result.failed) == (len(ds), 0, 0)
            clock.advance(minutes=5)
    finally:
        await d.close()

    assert slack_server.rejected == []
    (top,) = slack_server.in_channel("#news")
    assert top["metadata"] == {"event_type": EVENT_TYPE,
                               "event_payload": {"key": f"a:c1:{RULE}:slack"}}
    # edited at every growth, and it now says what the cluster is
    assert [u["ts"] for u in slack_server.updates] == [top["ts"]] * 3
    assert [json.dumps(u["blocks"]).count("carried by") for u in slack_server.updates] == [1] * 3
    carried = [next(el["text"].split(" ·")[0] for b in u["blocks"] if b["type"] == "context"
                    for el in b["elements"] if "carried by" in el["text"])
               for u in slack_server.updates]
    assert carried == ["carried by 2 sources", "carried by 3 sources", "carried by 5 sources"]
    assert top["edits"] == 3
    shown = blocks_text(top)
    assert "carried by 5 sources · latest: rt, dw, afp, ap, bbc" in shown
    assert story(1).title in shown and story(5).title not in shown  # still the first story
    # thread replies only at the milestones 2 and 5
    replies = slack_server.thread(top["ts"])
    assert [r["text"].split(":")[0] for r in replies] == [
        "Now carried by 2 sources (+ ap)", "Now carried by 5 sources (+ rt)"]
    assert [r["metadata"]["event_payload"]["key"] for r in replies] == [
        f"u:c1:{RULE}:slack:2", f"u:c1:{RULE}:slack:5"]
    # the webhook channel: first alert and milestone updates 2, 3, 5, each a short message
    webhook = [mm for mm in slack_server.messages if mm["kind"] == "webhook"]
    assert len(webhook) == 4
    assert [len(mm["blocks"]) for mm in webhook[1:]] == [1, 1, 1]
    # every delivery is accounted for: sent, the first message's ref for each bot update
    rows = await store.deliveries(limit=50)
    assert {r.state for r in rows} == {"sent"}
    assert len(rows) == 2 + 3 + 3
    top_ref = f"C0NEWS/{top['ts']}"
    by_key = {r.key: r.ref for r in rows}
    assert by_key[f"a:c1:{RULE}:slack"] == top_ref
    assert by_key[f"u:c1:{RULE}:slack:3"] == top_ref  # an edit only: the message it edited
    assert split_ref(by_key[f"u:c1:{RULE}:slack:5"]) == ("C0NEWS", replies[1]["ts"])


async def test_old_bare_ts_refs_still_thread_and_edit(slack_server: SlackServer) -> None:
    """A first message sent before refs carried the channel ID (its ref a bare ts):
    updates use the configured channel."""
    n = bot(slack_server, channel="C0NEWS")
    try:
        first = await n.send(first_alert().alert, key="a")
        assert isinstance(first, Sent) and first.ref
        _, ts = split_ref(first.ref)
        upd = Alert(story=story(2), match=first_alert().alert.match,
                    cluster="c1", sources=2, source_names=FEEDS[:2], update=True,
                    first_story=story(1))
        r = await n.send(upd, thread_ref=ts, key="u")
    finally:
        await n.close()
    assert isinstance(r, Sent), r
    assert slack_server.updates[0]["ts"] == ts
    assert [m["thread_ts"] for m in slack_server.messages] == [None, ts]


async def test_edit_only_update_posts_nothing_where_editing_is_impossible(
    slack_server: SlackServer
) -> None:
    upd = Alert(story=story(3), match=first_alert().alert.match, cluster="c1", sources=3,
                source_names=FEEDS[:3], update=True, reply=False)
    for n in (hook(slack_server), bot(slack_server)):
        try:
            r = await n.send(upd, thread_ref=None, key="u")  # bot: no first message known
        finally:
            await n.close()
        assert r == Sent(ref=None)
    assert slack_server.messages == [] and slack_server.requests == 0


# --------------------------------------------------------------------------- slow answers


@pytest.mark.parametrize("channel", ["C0NEWS", "#news"])
async def test_bot_slow_answer_is_not_repeated(
    store: SQLiteStore, slack_server: SlackServer, channel: str
) -> None:
    """Slack takes the message and answers after the timeout: the retry finds the key in
    the channel's history and records the delivery sent with that message's ts."""
    clock = Clock()
    n = bot(slack_server, channel=channel, timeout=0.3)
    d = dispatcher(store, {"slack": n}, clock)
    try:
        if channel.startswith("#"):
            # a channel configured by name: its ID comes with the first answer of the run
            assert isinstance(await n.send(first_alert().alert, key="warm-up"), Sent)
        await save(store, clock, 1, [first_alert()])
        slack_server.answer_late(3, 1.0)
        r1 = await d.run_once()
        assert (r1.sent, r1.retrying) == (0, 1)
        clock.advance(hours=1)
        r2 = await d.run_once()
        assert (r2.sent, r2.retrying, r2.failed) == (1, 0, 0)
        clock.advance(hours=1)
        assert (await d.run_once()).sent == 0
    finally:
        await d.close()
    mine = [m for m in slack_server.in_channel("#news")
            if m["metadata"]["event_payload"]["key"] == first_alert().key]
    assert len(mine) == 1  # exactly one message, though the first answer never came
    (row,) = await store.deliveries()
    assert row.state == "sent" and row.ref == f"C0NEWS/{mine[0]['ts']}"
    assert slack_server.history_calls >= 1


async def test_bot_connection_dropped_mid_request_is_looked_up_not_repeated(
    slack_server: SlackServer
) -> None:
    """The connection drops after Slack took the message: the one immediate retry looks
    at the history first, finds it, and posts nothing more."""
    n = bot(slack_server, channel="C0NEWS")
    try:
        slack_server.drop_after_accept(1)
        r = await n.send(first_alert().alert, key="k")
        slack_server.drop_after_accept(1)
        slack_server.scopes = set()  # now the lookup cannot be made: resent once
        again = await n.send(first_alert().alert, key="k2")
    finally:
        await n.close()
    (m, m2, m3) = slack_server.in_channel("C0NEWS")
    assert r == Sent(ref=f"C0NEWS/{m['ts']}")
    assert again == Sent(ref=f"C0NEWS/{m3['ts']}")
    assert [x["metadata"]["event_payload"]["key"] for x in (m, m2, m3)] == ["k", "k2", "k2"]


async def test_bot_slow_thread_reply_is_found_in_the_thread(slack_server: SlackServer) -> None:
    n = bot(slack_server, timeout=0.3)
    upd = Alert(story=story(2), match=first_alert().alert.match, cluster="c1", sources=2,
                source_names=FEEDS[:2], update=True, first_story=story(1))
    try:
        first = await n.send(first_alert().alert, key="a")
        assert isinstance(first, Sent) and first.ref
        slack_server.answer_late(1, 1.0)
        r1 = await n.send(upd, thread_ref=first.ref, key="u", attempt=1)
        assert isinstance(r1, SendFailed) and r1.retry and "history" in r1.reason
        r2 = await n.send(upd, thread_ref=first.ref, key="u", attempt=2)
    finally:
        await n.close()
    (reply,) = slack_server.thread(split_ref(first.ref)[1])
    assert r2 == Sent(ref=f"C0NEWS/{reply['ts']}")


async def test_bot_lookup_that_fails_transiently_retries_later_without_posting(
    slack_server: SlackServer
) -> None:
    n = bot(slack_server, timeout=0.3)
    try:
        assert isinstance(await n.send(first_alert().alert, key="warm-up"), Sent)
        slack_server.answer_late(1, 1.0)
        assert isinstance(await n.send(first_alert().alert, key="k"), SendFailed)
        slack_server.fail_next(1, status=500)  # the history lookup fails
        r2 = await n.send(first_alert().alert, key="k", attempt=2)
        assert isinstance(r2, SendFailed) and r2.retry and "earlier attempt" in r2.reason
        slack_server.fail_next(1, status=429, retry_after=3)
        r3 = await n.send(first_alert().alert, key="k", attempt=3)
        assert isinstance(r3, SendFailed) and r3.retry_after == 3  # a 429 stays a pause
        r4 = await n.send(first_alert().alert, key="k", attempt=4)
    finally:
        await n.close()
    assert isinstance(r4, Sent)
    assert len(slack_server.in_channel("#news")) == 2  # the warm-up and one "k"


async def test_bot_without_history_scope_warns_once_and_resends(
    slack_server: SlackServer, caplog: pytest.LogCaptureFixture
) -> None:
    slack_server.scopes = {"chat:write"}
    n = bot(slack_server, timeout=0.3)
    try:
        assert isinstance(await n.send(first_alert().alert, key="warm-up"), Sent)
        with caplog.at_level(logging.WARNING, logger="monitor.notify.slack"):
            for key in ("k1", "k2"):
                slack_server.answer_late(1, 1.0)
                assert isinstance(await n.send(first_alert().alert, key=key), SendFailed)
                assert isinstance(await n.send(first_alert().alert, key=key, attempt=2), Sent)
    finally:
        await n.close()
    warned = [r for r in caplog.records if r.getMessage() == "slack.history_scope_missing"]
    assert len(warned) == 1
    assert "channels:history" in warned[0].fields["needed"]  # type: ignore[attr-defined]
    # the documented fallback: without the scope, a slow answer can repeat
    assert len(slack_server.in_channel("#news")) == 1 + 2 * 2


async def test_bot_lookup_pages_through_history_from_the_creation_time(
    slack_server: SlackServer
) -> None:
    """The key is found beyond the first page; messages older than the delivery are
    not read at all (``oldest``)."""
    n = bot(slack_server, channel="C0NEWS", timeout=0.3)
    try:
        assert isinstance(await n.send(first_alert().alert, key="old"), Sent)
        created = datetime.now(UTC)
        slack_server.answer_late(1, 1.0)
        assert isinstance(await n.send(first_alert().alert, key="k"), SendFailed)
        for i in range(450):  # other messages after it: the key is on the third page
            assert isinstance(await n.send(first_alert().alert, key=f"other-{i}"), Sent)
        before = slack_server.history_calls
        r = await n.send(first_alert().alert, key="k", attempt=2, created=created)
        assert slack_server.history_calls - before == 3
        # a delivery created long after "old" was posted does not read back that far
        later = created + timedelta(seconds=HISTORY_MARGIN + 60)
        missing = await n.send(first_alert().alert, key="old", attempt=2, created=later)
    finally:
        await n.close()
    assert isinstance(r, Sent) and r.ref == f"C0NEWS/{slack_server.messages[1]['ts']}"
    # "old" lies before the later delivery's window: not found, so posted again
    assert isinstance(missing, Sent) and missing.ref == f"C0NEWS/{slack_server.messages[-1]['ts']}"


async def test_webhook_slow_answers_are_repeated_a_bounded_number_of_times(
    store: SQLiteStore, slack_server: SlackServer
) -> None:
    """A webhook cannot look: each ambiguous timeout doubles the next timeout, and after
    MAX_AMBIGUOUS of them the next attempt is final. Here every answer is too late."""
    clock = Clock()
    n = hook(slack_server, timeout=0.3)
    d = dispatcher(store, {"hook": n}, clock)
    slack_server.answer_late(10, 2.0)  # later than 0.3, 0.6 and 1.2 s
    try:
        await save(store, clock, 1, [first_alert(("hook",))])
        results = []
        for _ in range(5):
            results.append(await d.run_once())
            clock.advance(hours=1)
    finally:
        await d.close()
    assert [(r.sent, r.retrying, r.failed) for r in results] == [
        (0, 1, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0), (0, 0, 0)]
    assert len(slack_server.messages) == MAX_AMBIGUOUS + 1  # the documented bound
    (row,) = await store.deliveries()
    assert row.state == "failed" and "not retried, to bound repeats" in (row.last_error or "")


async def test_webhook_longer_timeout_lets_a_slow_answer_through(
    slack_server: SlackServer
) -> None:
    n = hook(slack_server, timeout=0.3)
    slack_server.answer_late(3, 0.45)  # later than 0.3 s, sooner than 0.6 s
    try:
        r1 = await n.send(first_alert(("hook",)).alert, key="k")
        assert isinstance(r1, SendFailed) and r1.retry and "0.6 s" in r1.reason
        r2 = await n.send(first_alert(("hook",)).alert, key="k", attempt=2)
        # a new delivery starts with the configured timeout again
        r3 = await n.send(first_alert(("hook",)).alert, key="k2")
    finally:
        await n.close()
    assert r2 == Sent(ref=None)
    assert isinstance(r3, SendFailed)
    assert len(slack_server.messages) == 3


# --------------------------------------------------------------------------- the peer


async def test_peer_checks_metadata_and_update_payloads(slack_server: SlackServer) -> None:
    import aiohttp

    headers = {"Authorization": f"Bearer {slack_server.token}"}
    url = slack_server.api_base_url
    async with aiohttp.ClientSession(headers=headers) as s:
        async def call(method: str, body: dict[str, Any]) -> dict[str, Any]:
            async with s.post(url + method, json=body) as r:
                return await r.json()  # type: ignore[no-any-return]

        bad_meta = [{"event_type": "has space", "event_payload": {}},
                    {"event_type": "ok"}, {"event_type": "ok", "event_payload": []}, "nope"]
        for meta in bad_meta:
            r = await call("chat.postMessage", {"channel": "#news", "text": "x", "metadata": meta})
            assert r == {"ok": False, "error": "invalid_metadata_format"}, meta
        ok = await call("chat.postMessage", {"channel": "#news", "text": "x", "metadata": {
            "event_type": "monitor_alert", "event_payload": {"key": "k"}}})
        assert ok["ok"] and ok["channel"] == "C0NEWS"
        assert (await call("chat.update", {"channel": "#news", "ts": ok["ts"], "text": "y"})
                )["error"] == "channel_not_found"  # chat.update wants the ID
        assert (await call("chat.update", {"channel": "C0NEWS", "ts": "1.2", "text": "y"})
                )["error"] == "message_not_found"
        assert (await call("chat.update", {"channel": "C0NEWS", "ts": ok["ts"],
                                           "blocks": [{"type": "nope"}]}))["error"] == "invalid_blocks"
        assert (await call("chat.update", {"channel": "C0NEWS", "ts": ok["ts"], "text": "y"}))["ok"]
        async with s.get(url + "conversations.history",
                         params={"channel": "C0NEWS", "limit": "1"}) as resp:
            hist = await resp.json()
    assert [m["text"] for m in hist["messages"]] == ["y"] and "metadata" not in hist["messages"][0]
    assert len(slack_server.rejected) == len(bad_meta) + 1
