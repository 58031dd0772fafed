"""Group commit of feed states against a real SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.core.model import Alert, Delivery, FeedState, Match, Story
from monitor.errors import StoreError
from monitor.store.base import PollSave, StoredStory
from monitor.store.groupcommit import FeedStateWriter, PollWriter
from monitor.store.sqlite import SQLiteStore


class CountingStore(SQLiteStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[list[str]] = []

    async def save_feeds(self, states: Sequence[FeedState]) -> None:
        self.batches.append([s.name for s in states])
        await super().save_feeds(states)

    async def save_polls(self, polls: Sequence[PollSave]) -> list[list[Delivery]]:
        self.batches.append([p.state.name for p in polls])
        return await super().save_polls(polls)


def feed(name: str, polls: int = 1) -> FeedState:
    return FeedState(name=name, url=f"http://x/{name}", configured_url=f"http://x/{name}",
                     polls=polls)


async def test_writes_that_arrive_together_share_one_transaction(tmp_path: Path) -> None:
    async with CountingStore(tmp_path / "s.db") as store:
        writer = FeedStateWriter(store, window=0.05)
        await asyncio.gather(*(writer.save(feed(f"f{i}")) for i in range(20)),
                             writer.save(feed("f3", polls=2)))  # the later state wins
        assert len(store.batches) == 1 and len(store.batches[0]) == 20
        got = {f.name: f.polls for f in await store.get_feeds()}
        assert len(got) == 20 and got["f3"] == 2
        # every caller returned only once its state was stored: a later write is a new batch
        await writer.save(feed("late"))
        assert store.batches[-1] == ["late"]
        await writer.close()


async def test_a_store_error_reaches_every_caller_of_the_batch(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "s.db")
    writer = FeedStateWriter(store, window=0.01)  # the store is not open: writes fail
    results = await asyncio.gather(writer.save(feed("a")), writer.save(feed("b")),
                                   return_exceptions=True)
    assert all(isinstance(r, StoreError) and "not open" in str(r) for r in results)
    async with store:  # and the writer recovers for the next batch
        await writer.save(feed("a"))
        assert [f.name for f in await store.get_feeds()] == ["a"]


async def test_close_writes_what_is_pending_at_once(tmp_path: Path) -> None:
    async with CountingStore(tmp_path / "s.db") as store:
        writer = FeedStateWriter(store, window=60)  # would wait a minute
        saving = asyncio.ensure_future(writer.save(feed("a")))
        await asyncio.sleep(0)
        await writer.close()
        await asyncio.wait_for(saving, 5)
        assert [f.name for f in await store.get_feeds()] == ["a"]


async def test_a_cancelled_caller_does_not_cancel_the_write(tmp_path: Path) -> None:
    async with CountingStore(tmp_path / "s.db") as store:
        writer = FeedStateWriter(store, window=0.01)
        saving = asyncio.ensure_future(writer.save(feed("a")))
        other = asyncio.ensure_future(writer.save(feed("b")))  # in the same batch
        await asyncio.sleep(0)
        saving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await saving
        assert await asyncio.wait_for(other, 5) is None  # the other caller is not cancelled
        await writer.close()
        assert [f.name for f in await store.get_feeds()] == ["a", "b"]


T0 = datetime(2026, 2, 17, 8, 0, tzinfo=UTC)


def poll(name: str, *, alert: str | None = None) -> PollSave:
    """A poll of feed ``name`` storing one story, and a delivery keyed ``alert``."""
    s = Story(id=f"{name}-1", feed=name, title=f"Story of {name}", link=f"https://x/{name}/1",
              published=T0, first_seen=T0)
    ds = [] if alert is None else [Delivery(
        key=alert, channel="slack", created=T0, alert=Alert(
            story=s, cluster=s.id, match=Match(rule="r", severity="high", channels=("slack",))))]
    return PollSave(state=feed(name), stories=[StoredStory(story=s, cluster=s.id)], deliveries=ds)


async def test_polls_that_arrive_together_share_one_transaction(tmp_path: Path) -> None:
    async with CountingStore(tmp_path / "s.db") as store:
        writer = PollWriter(store, window=0.05, max_polls=4)
        got = await asyncio.gather(*(writer.save(poll(f"f{i}", alert="k" if i == 2 else None))
                                     for i in range(6)))
        # a full batch goes at once; the rest waits for the window
        assert store.batches == [["f0", "f1", "f2", "f3"], ["f4", "f5"]]
        assert [[d.key for d in ds] for ds in got] == [[], [], ["k"], [], [], []]
        assert await store.known([f"f{i}-1" for i in range(6)], []) == {
            f"f{i}-1" for i in range(6)}
        await writer.close()


async def test_a_failed_batch_reaches_every_caller_and_the_next_batch_works(
        tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "s.db")
    writer = PollWriter(store, window=0.01)  # the store is not open: writes fail
    results = await asyncio.gather(writer.save(poll("a")), writer.save(poll("b")),
                                   return_exceptions=True)
    assert all(isinstance(r, StoreError) and "not open" in str(r) for r in results)
    async with store:
        assert await writer.save(poll("a", alert="k1")) != []
        assert await store.known(["a-1", "b-1"], []) == {"a-1"}
        await writer.close()
