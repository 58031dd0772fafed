"""The dispatcher's marks, stored in the background and many per transaction: a stop
stores every one, a store that cannot take them stops the sending after at most
``MARKS_AHEAD`` (the bound on what a crash sends twice), and an outage loses none.
Real SQLite store and a real Slack-compatible peer; the store is wrapped only to hold
or refuse the marks' writes."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.config import DeliveryConfig, SlackChannel
from monitor.core.model import Alert, Delivery, FeedState, Match, Story
from monitor.errors import StoreError, StoreUnavailable
from monitor.metrics import Metrics
from monitor.notify.slack import SlackNotifier
from monitor.shell.dispatch import MARKS_AHEAD, Dispatcher
from monitor.store.sqlite import SQLiteStore
from tests.clock import T0, Clock
from tests.peers.slackserver import SlackServer


class Marks:
    """A store whose ``mark_sent_each`` can be held (until ``let_go``), slowed, or made
    to fail as an unreachable server does; everything else is the real store's."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self.held = asyncio.Event()  # a write is being held
        self._let_go = asyncio.Event()
        self.hold = False
        self.delay = 0.0
        self.fail = 0  # the next n writes fail
        self.writes: list[int] = []  # the size of each write that went through

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def let_go(self) -> None:
        self._let_go.set()

    async def mark_sent_each(self, marks: Sequence[tuple[int, datetime, str | None]]) -> None:
        if self.hold:
            self.held.set()
            await self._let_go.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("the database server cannot be reached")
        await self._store.mark_sent_each(marks)
        self.writes.append(len(marks))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "s.db") as s:
        yield s


def _delivery(i: int) -> Delivery:
    story = Story(id=f"s{i}", feed="wire", title=f"story-{i:03d} misses the sanctions deadline",
                  link=f"https://example.org/{i}", published=T0, first_seen=T0)
    match = Match(rule="sanctions", severity="high", channels=("slack",), terms=("sanctions",))
    return Delivery(key=f"a:c{i}:sanctions:slack", channel="slack", created=T0,
                    alert=Alert(story=story, match=match, cluster=f"c{i}", sources=1,
                                source_names=("wire",)))


async def _queue(store: SQLiteStore, n: int) -> None:
    await store.save_poll(FeedState(name="wire", url="http://w", configured_url="http://w"),
                          [], [_delivery(i) for i in range(n)])


def _dispatcher(store: Any, server: SlackServer, clock: Clock) -> Dispatcher:
    n = SlackNotifier("slack", SlackChannel(type="slack", webhook_url=server.webhook_url,
                                            rate=1000))
    # one message per alert: no roll-up, no holding back
    return Dispatcher(store, {"slack": n}, DeliveryConfig(rollup_after=0, max_age=0),
                      Metrics(), clock, rates={"slack": 1000.0})


def _received(server: SlackServer) -> Counter[str]:
    """How many times the peer accepted each story's alert."""
    found = (re.search(r"story-\d{3}", str(m["payload"])) for m in server.messages)
    return Counter(m.group(0) for m in found if m is not None)


async def _sent_in_store(store: SQLiteStore) -> set[str]:
    return {f"story-{int(d.key.split(':')[1][1:]):03d}"
            for d in await store.deliveries(state="sent", limit=1000)}


async def test_a_stop_stores_the_mark_of_every_accepted_delivery(
    store: SQLiteStore, slack_server: SlackServer
) -> None:
    marks = Marks(store)
    marks.delay = 0.05  # writes are slow: marks are still waiting when the stop comes
    clock = Clock()
    dsp = _dispatcher(marks, slack_server, clock)
    await _queue(store, 40)
    accepted = 0

    def sent(_: Delivery) -> None:
        nonlocal accepted
        accepted += 1
        if accepted == 15:
            dsp.stopping = True  # SIGTERM: the delivery in hand is finished, the rest given back

    dsp.on_sent = sent
    wake = asyncio.Event()
    await asyncio.wait_for(dsp.serve(wake, tick=0.05), 30)
    got = _received(slack_server)
    assert len(got) == 15 and set(got.values()) == {1}
    # serve has returned: every accepted delivery is marked, before close
    assert await _sent_in_store(store) == set(got)
    assert len(await store.deliveries(state="pending", limit=1000)) == 25
    assert max(marks.writes) > 1  # marks went together
    await dsp.close()

    # the next start sends the rest, each once
    clock.now = T0 + timedelta(seconds=1)
    again = _dispatcher(store, slack_server, clock)
    assert (await again.run_once()).sent == 25
    await again.close()
    got = _received(slack_server)
    assert len(got) == 40 and set(got.values()) == {1}


async def test_a_crash_sends_again_at_most_marks_ahead_plus_the_one_in_hand(
    store: SQLiteStore, slack_server: SlackServer
) -> None:
    marks = Marks(store)
    marks.hold = True  # the store never takes a mark: as if the process died now
    clock = Clock()
    dsp = _dispatcher(marks, slack_server, clock)
    await _queue(store, 30)
    rnd = asyncio.create_task(dsp.run_once())
    await asyncio.wait_for(marks.held.wait(), 10)

    async def stalled() -> None:  # the sender goes on until more than MARKS_AHEAD wait
        while len(dsp._unmarked) <= MARKS_AHEAD:  # noqa: ASYNC110 (no event to wait on)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(stalled(), 30)
    await asyncio.sleep(0.2)  # (room for a send too many, were there one)
    assert not rnd.done()
    assert len(slack_server.messages) == MARKS_AHEAD + 1
    # kill -9: nothing more is written
    rnd.cancel()
    writing = dsp._writing
    assert writing is not None
    writing.cancel()
    await asyncio.gather(rnd, writing, return_exceptions=True)
    assert dsp._writing is writing  # (a cancelled write starts no other)
    for n in dsp.notifiers.values():
        await n.close()
    assert await _sent_in_store(store) == set()

    # restarted after the lease: what was accepted and not marked is sent again, no more
    clock.now = T0 + timedelta(hours=1)
    again = _dispatcher(store, slack_server, clock)
    assert (await again.run_once()).sent == 30
    await again.close()
    got = _received(slack_server)
    assert len(got) == 30
    twice = [k for k, n in got.items() if n > 1]
    assert 1 <= len(twice) <= MARKS_AHEAD + 1 and set(got.values()) <= {1, 2}
    assert await _sent_in_store(store) == set(got)


async def test_marks_the_store_refused_are_stored_first_and_never_sent_again(
    store: SQLiteStore, slack_server: SlackServer
) -> None:
    marks = Marks(store)
    marks.fail = 1  # a database restart: the first write fails
    clock = Clock()
    dsp = _dispatcher(marks, slack_server, clock)
    await _queue(store, 20)
    first = await dsp.run_once()  # the store's error ends the round (logged, not raised)
    accepted = len(slack_server.messages)
    assert 1 <= accepted <= MARKS_AHEAD + 1 and first.sent == 0  # (the round failed)
    # the next round stores the kept marks before it claims: nothing is sent twice, even
    # with the claim's lease over
    clock.now = T0 + timedelta(hours=1)
    second = await dsp.run_once()
    await dsp.close()
    got = _received(slack_server)
    assert len(got) == 20 and set(got.values()) == {1}
    assert await _sent_in_store(store) == set(got)
    assert second.sent == 20 - accepted


async def test_a_batch_with_a_vanished_delivery_stores_the_other_marks(
    store: SQLiteStore, slack_server: SlackServer
) -> None:
    clock = Clock()
    dsp = _dispatcher(store, slack_server, clock)
    await _queue(store, 3)
    ids = [d.id for d in await store.claim_deliveries(T0, limit=3, lease_until=T0)]
    assert all(i is not None for i in ids)
    # two accepted, and one whose row is gone (an id the store does not know)
    dsp._unmarked.update({ids[0]: (T0, "r0"), 999999: (T0, None), ids[1]: (T0, "r1")})  # type: ignore[dict-item]
    await dsp._flush_marks()
    assert dsp._unmarked == {}
    sent = {d.id: d.ref for d in await store.deliveries(state="sent")}
    assert sent == {ids[0]: "r0", ids[1]: "r1"}
    with pytest.raises(StoreError):  # (the store's own answer, for comparison)
        await store.mark_sent_each([(999999, T0, None)])
    await dsp.close()
