"""Group commit for feed-state writes, and for whole polls that arrive together.

Most polls find nothing new (a 304, or the same body again) and only write the feed's
state back: its next poll time, ETag, counters. One transaction each would cost more
than the poll itself; ``FeedStateWriter`` gathers the writes that arrive within a few
milliseconds of each other and stores them in one ``Store.save_feeds`` transaction.
Every caller still waits until its own state is stored (or gets the store's error), so
nothing is acknowledged before it is durable.

``PollWriter`` does the same for whole polls (``Store.save_polls``): a fresh instance's
first pass baselines every feed, thousands of small writes of 10 stories each, and one
commit per poll would be a large part of their cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from monitor.core.model import Delivery, FeedState
from monitor.log import get_logger, scrub
from monitor.store.base import PollSave, Store

log = get_logger(__name__)

T = TypeVar("T")

WINDOW = 0.005  # seconds a first write waits for others to join it
MAX_POLLS = 100  # polls per ``save_polls`` transaction at most (a batch this big goes at once)


class FeedStateWriter:
    def __init__(self, store: Store, window: float = WINDOW) -> None:
        self.store = store
        self.window = window
        self._pending: dict[str, FeedState] = {}
        self._done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def save(self, state: FeedState) -> None:
        """Store ``state`` together with the other writes of the next few milliseconds."""
        if self._done is None:
            loop = asyncio.get_running_loop()
            self._done = loop.create_future()
            # nobody may be left to look at a failure (every caller was cancelled)
            self._done.add_done_callback(_retrieve)
            self._timer = loop.call_later(self.window, self._start_flush)
        self._pending[state.name] = state  # a later state of the same feed wins
        await asyncio.shield(self._done)

    def _start_flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = asyncio.ensure_future(self._flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self) -> None:
        states, done = list(self._pending.values()), self._done
        if done is None:
            return  # an earlier flush took this batch
        self._pending, self._done = {}, None
        await _settle(done, self.store.save_feeds(states))

    async def close(self) -> None:
        """Wait for writes in flight (before the store closes)."""
        if self._done is not None:
            self._start_flush()  # now rather than after the window
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)


class PollWriter:
    """Gathers the polls saved within ``window`` of the first one (at most ``max_polls``)
    and stores them in one ``Store.save_polls`` transaction. Each caller gets its own
    poll's inserted deliveries, or the store's error for the whole batch, once the
    batch is committed."""

    def __init__(self, store: Store, window: float = WINDOW, max_polls: int = MAX_POLLS) -> None:
        self.store = store
        self.window = window
        self.max_polls = max_polls
        self._pending: list[PollSave] = []
        self._done: asyncio.Future[list[list[Delivery]]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def save(self, poll: PollSave) -> list[Delivery]:
        """Store ``poll`` with the others of the next few milliseconds; returns the
        deliveries of this poll the store did not have (as ``Store.save_poll``)."""
        if self._done is None:
            loop = asyncio.get_running_loop()
            self._done = loop.create_future()
            self._done.add_done_callback(_retrieve)
            self._timer = loop.call_later(self.window, self._start_flush)
        done = self._done
        at = len(self._pending)
        self._pending.append(poll)
        if len(self._pending) >= self.max_polls:
            self._start_flush()
        return (await asyncio.shield(done))[at]

    def _start_flush(self) -> None:
        """The batch is taken now: a poll saved from here on starts the next one."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        polls, done = self._pending, self._done
        if done is None:
            return
        self._pending, self._done = [], None
        task = asyncio.ensure_future(self._flush(polls, done))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, polls: list[PollSave],
                     done: asyncio.Future[list[list[Delivery]]]) -> None:
        await _settle(done, self.store.save_polls(polls))

    async def close(self) -> None:
        """Wait for writes in flight (before the store closes)."""
        if self._done is not None:
            self._start_flush()
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)


async def _settle(done: asyncio.Future[T], write: Awaitable[T]) -> None:
    """Run a batch's ``write`` and give its callers (waiting on ``done``) the result, or
    every one of them the store's error."""
    try:
        result = await write
    except asyncio.CancelledError:
        done.cancel()
        raise
    except Exception as e:
        done.set_exception(e)
    else:
        done.set_result(result)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        # its callers report it (the daemon: one store.failed line per problem); if they
        # were all cancelled (a shutdown), the feeds are polled again and the write lost
        # costs nothing else: a debug line, not one more line per batch on a full disk
        log.debug("store.batch_failed", error=scrub(str(fut.exception())))
