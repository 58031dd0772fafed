"""Instances sharing one PostgreSQL store hear each other's stories: LISTEN/NOTIFY.

``PostgresStore.save_poll`` sends the new story ids with ``pg_notify`` in its
transaction (delivered when it commits, in payloads built by ``notify_payloads``); a
``StoryListener`` LISTENs on a connection of its own, loads the stories it hears about
and hands them to the caller. When that connection drops, or goes silent without notice
(probed every ``heartbeat`` seconds), it reconnects with backoff and asks the caller to
reload (``on_gap``), since notifications sent meanwhile are lost.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from monitor.errors import StoreError
from monitor.log import get_logger
from monitor.store.base import StoredStory

log = get_logger(__name__)

NOTIFY_BYTES = 7900  # PostgreSQL refuses a notification payload of 8000 bytes or more
WATCH_BACKOFF_MAX = 60.0  # seconds between attempts to listen again


def notify_payloads(sender: str, ids: Sequence[str]) -> list[str]:
    """``{"from": sender, "ids": [...]}`` JSON payloads of at most ``NOTIFY_BYTES`` bytes
    each, covering ``ids`` in order. An id too long to fit in a payload on its own (a
    multi-kilobyte link used as id) is left out: peers do not hear of that one story."""
    head = len(json.dumps({"from": sender, "ids": []}).encode())
    out: list[str] = []
    chunk: list[str] = []
    size = head
    for sid in ids:
        n = len(json.dumps(sid).encode()) + 2  # the id and ", "
        if head + n > NOTIFY_BYTES:
            continue
        if size + n > NOTIFY_BYTES:
            out.append(json.dumps({"from": sender, "ids": chunk}))
            chunk, size = [], head
        chunk.append(sid)
        size += n
    if chunk:
        out.append(json.dumps({"from": sender, "ids": chunk}))
    return out


def _heard_ids(sender: str, payload: str) -> list[str] | None:
    """The story ids of a notification from another instance; None for our own, or for
    a payload that is not ours to read."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("from") == sender:
        return None
    ids = data.get("ids")
    if not isinstance(ids, list):
        return None
    return [i for i in ids if isinstance(i, str)]


Connect = Callable[[], Awaitable[Any]]  # a new asyncpg connection, for listening only
LoadStories = Callable[[list[str]], Awaitable[list[StoredStory]]]


class StoryListener:
    """One store's listening side: ``start`` returns once it listens, ``close`` stops it.

    ``connect`` opens the listening connection (the store knows the DSN, schema and
    timeouts), ``load`` reads the stories heard of, ``where`` names the store in logs and
    errors (without its password)."""

    def __init__(
        self,
        *,
        token: str,
        channel: str,
        connect: Connect,
        load: LoadStories,
        where: Callable[[], str],
    ) -> None:
        self._token = token
        self._channel = channel
        self._connect = connect
        self._load = load
        self._where = where
        self._watcher: asyncio.Task[None] | None = None
        self._listening: bool | None = None  # None: not watching
        self.backoff = 1.0  # seconds before listening again; doubles up to a minute
        self.heartbeat = 30.0  # a listening connection quiet this long is probed
        self.probe_timeout = 10.0

    @property
    def listening(self) -> bool | None:
        return self._listening

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        self._listening = None
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def start(
        self,
        on_stories: Callable[[list[StoredStory]], None],
        on_gap: Callable[[], Awaitable[None]],
    ) -> None:
        """Listen (once; later calls change nothing). Returns when it listens: a story
        saved after this call is heard. Raises StoreError when the first attempt fails."""
        if self._watcher is None:
            # returns once it listens: a story saved after this call is heard
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            task = asyncio.ensure_future(self._watch(on_stories, on_gap, ready))
            self._watcher = task
            try:
                await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
                if not ready.done():  # closed meanwhile
                    raise StoreError("watch_stories: the store was closed")
                ready.result()  # the first attempt's error, if it failed
            except BaseException:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                if self._watcher is task:
                    self._watcher = None
                raise

    async def _watch(
        self,
        on_stories: Callable[[list[StoredStory]], None],
        on_gap: Callable[[], Awaitable[None]],
        ready: asyncio.Future[None],
    ) -> None:
        """LISTEN on a connection of its own until cancelled, reconnecting when it drops.
        ``ready`` gets the outcome of the first attempt (an error ends the watch)."""
        backoff, gap = self.backoff, False
        while True:
            connected = False
            try:
                async for _ in self._listen(on_stories, on_gap if gap else None):
                    connected = self._listening = True
                    if not ready.done():
                        ready.set_result(None)
                self._listening = False
                log.warning("store.watch_lost", store=self._where())
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the server, the network, or a callback that failed
                self._listening = False
                error = "timed out" if isinstance(e, TimeoutError) else str(e) or type(e).__name__
                if not ready.done():
                    ready.set_exception(StoreError(
                        f"cannot listen on {self._where()}: {error}"))
                    return
                log.warning("store.watch_failed", store=self._where(), error=error)
            if connected:
                backoff = self.backoff
            gap = True  # whatever ended it, the next connection starts after a gap
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, WATCH_BACKOFF_MAX)

    async def _listen(
        self,
        on_stories: Callable[[list[StoredStory]], None],
        on_gap: Callable[[], Awaitable[None]] | None,
    ) -> AsyncIterator[None]:
        """One listening connection: yields once it listens (and ``on_gap`` ran), returns
        when the server closes it, raises on errors."""
        heard: asyncio.Queue[list[str] | None] = asyncio.Queue()

        def listener(_con: Any, _pid: int, _channel: str, payload: str) -> None:
            ids = _heard_ids(self._token, payload)
            if ids:
                heard.put_nowait(ids)

        con = await self._connect()
        try:
            con.add_termination_listener(lambda _con: heard.put_nowait(None))
            await con.add_listener(self._channel, listener)
            if on_gap is not None:
                log.info("store.watch_resumed", store=self._where())
                await on_gap()  # what was said while nobody listened is lost
            yield
            while (ids := await self._next_heard(con, heard)) is not None:
                while not heard.empty():  # what else arrived meanwhile, in one query
                    more = heard.get_nowait()
                    if more is None:
                        return
                    ids += more
                stories = await self._load(ids)
                if stories:
                    on_stories(stories)
        finally:
            # at once: a graceful close would wait on a connection that may be dead, and
            # the server ends the session (and its LISTEN) when the socket closes
            con.terminate()

    async def _next_heard(
        self, con: Any, heard: asyncio.Queue[list[str] | None]
    ) -> list[str] | None:
        """The next ids heard; None when the connection is gone. A connection quiet for
        ``heartbeat`` seconds is probed: one that went half-open (a network cut
        nobody told either side about) raises, and the watcher reconnects."""
        while True:
            try:
                return await asyncio.wait_for(heard.get(), self.heartbeat)
            except TimeoutError:
                await con.fetchval("SELECT 1", timeout=self.probe_timeout)
