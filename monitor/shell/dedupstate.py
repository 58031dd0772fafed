"""The dedup index of a runtime: loaded when a poll first needs it, kept as a snapshot.

Rebuilding the index means reading every story of the window (``dedup.window``, 48 h)
and computing its features again: about 0.2 ms a story, 20 s at 100,000. So the index
is persisted instead: ``StoryIndex.snapshot`` is saved in the store
(``Store.save_dedup_snapshot``, keyed by ``snapshot_key``: settings, background table,
format) with the time it was taken; a start loads it (a few ms per thousand stories)
and adds only the stories first seen since it was taken, less ``LAG``. A story saved
after the snapshot (a crash in between, another instance's) is among them; one the
snapshot already holds is skipped by id. Settings that changed give another key: the
old snapshot is ignored and the index rebuilt from the window.

And nothing is loaded before a poll brings a new story (``ready``): a ``monitor once``
in which every feed answers 304, or repeats a body it sent before, never needs the
index. (``monitor run`` asks for it at start, beside its first polls.) A load that
the store fails leaves the index empty, and the next poll that needs it tries again.

Saving costs one pass over the index (``marshal``) and one write. The index must not
move during the pass: a small one (under ``FORK_ABOVE`` stories) is taken on the event
loop; a big one in a forked copy of the process (``forked.py``), so a 50,000-feed
daemon does not stop polling for the 10 s a pass takes at 570,000 stories. It is done
when the stored snapshot lacks enough
stories that adding them at the next start would cost about as much
(``stale``): at the end of ``monitor once`` and of ``monitor run``, and every
``SAVE_EVERY`` seconds while the daemon runs.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from monitor.core.dedup.features import DedupSettings
from monitor.core.dedup.index import StoryIndex, snapshot_key
from monitor.errors import StoreError
from monitor.log import get_logger
from monitor.metrics import Metrics
from monitor.shell.forked import CAN_FORK, ForkFailed, forked_bytes
from monitor.store.base import DedupSnapshot, Store, StoredStory

log = get_logger(__name__)

#: How long after its ``first_seen`` a story may be committed at most: a poll's fetch,
#: parse and dedup round (their deadlines), and the clocks of instances sharing a
#: PostgreSQL store apart. The catch-up after a snapshot starts this much earlier.
LAG = timedelta(minutes=15)
#: Seconds between snapshot saves while ``monitor run`` runs (when ``stale``).
SAVE_EVERY = 600.0
#: A snapshot is saved when it lacks at least this many stories, and at least one
#: in ``STALE_SHARE`` of the index's.
STALE_MIN = 100
STALE_SHARE = 50
#: From this many stories a snapshot is taken in a forked child (where fork exists):
#: the pass would hold the loop for more than about 0.1 s.
FORK_ABOVE = 30_000
#: Seconds a save is expected to take per story before one has been timed (a pass and
#: a write: about 25 µs a story at 570,000), with a margin.
SAVE_PER_STORY = 40e-6


class DedupState:
    """The runtime's ``StoryIndex`` (one object, filled in place when loaded)."""

    def __init__(self, store: Store, settings: DedupSettings, *, window: float,
                 clock: Callable[[], datetime], metrics: Metrics | None = None,
                 fork_above: int | None = FORK_ABOVE) -> None:
        self.store = store
        #: stories from which a snapshot is taken in a forked child (None: never)
        self.fork_above = fork_above if CAN_FORK else None
        self.index = StoryIndex(settings)
        self.settings = settings
        self.window = timedelta(seconds=window)
        self.clock = clock
        self.metrics = metrics
        self._loading: asyncio.Future[None] | None = None
        self._heard: list[StoredStory] | None = None  # peers' stories heard while loading
        self._gap = False  # a gap was reported while loading: resync once loaded
        self._saved_at = 0  # index.inserted when the stored snapshot was taken or loaded
        self._saving = asyncio.Lock()
        # how the load went: stories taken from the snapshot (None: rebuilt without
        # one), and those added after it from the store
        self.from_snapshot: int | None = None
        self.caught_up = 0
        #: ``time.monotonic()`` by which the process must be gone (a stop's budget): a
        #: save that would not end by then is skipped, not cut off by the exit watchdog
        self.deadline: float | None = None
        self._save_s: float | None = None  # how long the last save took

    @functools.cached_property
    def key(self) -> str:
        """The snapshot key of these settings (``snapshot_key``), computed when a snapshot
        is first loaded or saved: it reads the background table, which a start that
        never needs the index is spared."""
        return snapshot_key(self.settings)

    @property
    def loaded(self) -> bool:
        return self._loading is not None and self._loading.done()

    async def ready(self) -> StoryIndex:
        """The index, loaded first if it is not yet (once, whoever asks first)."""
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load())
            self._loading.add_done_callback(self._load_ended)
        await asyncio.shield(self._loading)
        return self.index

    def _load_ended(self, loading: asyncio.Future[None]) -> None:
        if loading.cancelled() or loading.exception() is not None:
            # the store failed (said by whoever awaited it): nothing is half-loaded, and
            # the next poll that needs the index tries again
            self._loading = None
            self._heard = None

    async def _load(self) -> None:
        self._heard = []
        t0 = time.perf_counter()
        now = self.clock()
        index = self.index
        snap: DedupSnapshot | None = None
        try:
            snap = await self.store.load_dedup_snapshot(self.key)
        except StoreError as e:  # a rebuild still works: say so and go on
            log.warning("dedup.snapshot_unreadable", error=str(e))
        held = 0
        if snap is not None:
            collecting = gc.isenabled()
            gc.disable()  # a million small objects: no collection passes over them meanwhile
            try:
                held = index.load_snapshot(snap.data)
            except ValueError as e:
                log.warning("dedup.snapshot_invalid", error=str(e))
                snap = None
            finally:
                if collecting:
                    gc.enable()
            index.evict(now)
        since = now - self.window if snap is None else max(now - self.window, snap.taken - LAG)
        try:
            stored = await self.store.recent_stories(since)
        except BaseException:
            index.clear()
            raise
        before = index.inserted
        added = index.restore((s.story, s.cluster) for s in stored)
        if snap is not None:
            self._saved_at = before  # what the snapshot holds needs no saving again
        heard, self._heard = self._heard, None
        if heard:
            added += index.restore((s.story, s.cluster) for s in heard)
        self.from_snapshot = None if snap is None else held
        self.caught_up = added
        # it lives as long as the process: out of the collector's way (as ``monitor run``
        # freezes what its start built)
        gc.freeze()
        log.info("dedup.restored", stories=len(index), clusters=index.clusters,
                 snapshot=snap is not None, from_snapshot=held, added=added,
                 read=len(stored), ms=round((time.perf_counter() - t0) * 1000, 1))
        if self._gap:
            self._gap = False
            await self.after_gap()

    def from_peers(self, stored: list[StoredStory]) -> int:
        """Stories another instance saved: into the index if it is loaded (held back
        while it loads; left to the load's own read before)."""
        if self._heard is not None:
            self._heard.extend(stored)
            return 0
        if not self.loaded:
            return 0
        added = self.index.restore((s.story, s.cluster) for s in stored)
        if self.metrics is not None:
            self.metrics.peer_stories.inc(added)
        return added

    async def after_gap(self) -> None:
        """The store may have missed telling us about some stories: read the window."""
        if self._heard is not None:
            self._gap = True
            return
        if not self.loaded:
            return
        stored = await self.store.recent_stories(self.clock() - self.window)
        log.info("dedup.resynced", stories=self.index.restore(
            (s.story, s.cluster) for s in stored))

    @property
    def stale(self) -> int:
        """Stories the stored snapshot lacks, when that is worth a save (else 0)."""
        if not self.loaded:
            return 0
        lacking = self.index.inserted - self._saved_at
        return lacking if lacking >= max(STALE_MIN, len(self.index) // STALE_SHARE) else 0

    async def save(self, *, force: bool = False) -> bool:
        """Save a snapshot when ``stale`` (or ``force`` and loaded). True when saved."""
        async with self._saving:
            if not self.loaded or not (force or self.stale):
                return False
            if self.deadline is not None:
                need = 1.5 * (self._save_s if self._save_s is not None
                              else SAVE_PER_STORY * len(self.index))
                left = self.deadline - time.monotonic()
                if need > left:  # the stored snapshot and the stories since still load
                    log.info("dedup.snapshot_skipped", stories=len(self.index),
                             need_s=round(need, 1), left_s=round(left, 1),
                             note="the stop's time is short: the next start loads the last "
                             "snapshot and adds the stories saved since")
                    return False
            t0 = time.perf_counter()
            index = self.index
            taken = self.clock()
            inserted, stories = index.inserted, len(index)  # as the snapshot will hold them
            forked = self.fork_above is not None and stories >= self.fork_above
            try:
                # the index as it is now: in a forked copy, or on the loop (standing still)
                data = await forked_bytes(index.snapshot, what="dedup") if forked \
                    else index.snapshot()
            except (ForkFailed, OSError) as e:  # the next save tries again
                log.warning("dedup.snapshot_not_saved", error=str(e), forked=forked)
                return False
            ms = (time.perf_counter() - t0) * 1000
            try:
                await self.store.save_dedup_snapshot(DedupSnapshot(
                    key=self.key, taken=taken, stories=stories, data=data))
            except StoreError as e:  # the next start adds more stories, that is all
                log.warning("dedup.snapshot_not_saved", error=str(e))
                return False
            self._saved_at = inserted
            self._save_s = time.perf_counter() - t0
            log.info("dedup.snapshot_saved", stories=stories, bytes=len(data),
                     ms=round(ms, 1), forked=forked, total_ms=round((time.perf_counter() - t0) * 1000, 1))
            return True
