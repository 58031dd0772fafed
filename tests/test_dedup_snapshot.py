"""The dedup index's snapshot: taken, loaded and caught up, it decides as a rebuild does.

Core (``StoryIndex.snapshot`` / ``load_snapshot``) on real headlines from the shared
corpora; then ``DedupState`` (the runtime's index: loaded when a poll first brings a new
story, from the store's snapshot plus the stories saved since) against SQLite and
PostgreSQL through the store suite's fixture; then a whole ``Runtime``.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import marshal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.core.dedup.features import DedupSettings
from monitor.core.dedup.index import StoryIndex, snapshot_key
from monitor.core.model import FeedState, Story
from monitor.shell import dedupstate
from monitor.shell.dedupstate import DedupState
from monitor.store.base import StoredStory
from tests import test_store
from tests.conftest import shared_path
from tests.test_store import StoreFactory

make_store = test_store.make_store  # the store suite's fixture: SQLite and PostgreSQL

T0 = datetime(2026, 3, 10, 6, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


def headlines() -> list[tuple[str, str]]:
    """(title, publisher) of the UCI sample, in file order (labelled story clusters)."""
    path = shared_path("corpora", "uci-news-aggregator", "headlines.csv")
    with path.open(encoding="utf-8") as f:
        return [(r["TITLE"], r["PUBLISHER"]) for r in csv.DictReader(f)]


def stories(n: int, *, start: int = 0, every: float = 40.0) -> list[Story]:
    """``n`` corpus headlines as stories first seen ``every`` seconds apart, with the
    feed each came from, some with a summary lead (another headline) and repeated links."""
    rows = headlines()
    out = []
    for i in range(start, start + n):
        title, publisher = rows[(i * 37) % len(rows)]
        at = T0 + timedelta(seconds=i * every)
        out.append(Story(
            id=f"urn:s:{i}", feed=publisher[:20], title=title,
            link=f"https://{i % 97}.example/{i // 3}",  # every third link repeats
            summary=rows[(i * 11) % len(rows)][0] if i % 4 == 0 else "",
            published=at - timedelta(minutes=i % 50), first_seen=at))
    return out


def state(index: StoryIndex) -> Any:
    return marshal.loads(index.snapshot())


def probes() -> list[Story]:
    """Headlines the index has not seen, late enough to evict some of its clusters."""
    return [replace(s, id=f"urn:probe:{k}", first_seen=s.first_seen + timedelta(hours=30))
            for k, s in enumerate(stories(150, start=900, every=60.0))]


def same_decisions(a: StoryIndex, b: StoryIndex) -> None:
    """``a`` and ``b`` answer alike: decide and explain on every probe, then add them all
    (near misses, merges)."""
    for p in probes():
        assert a.decide(p, now=p.first_seen) == b.decide(p, now=p.first_seen)
        for cid in {a.decide(p, now=p.first_seen).cluster, "urn:s:5", "urn:s:700"}:
            assert a.explain(cid, p) == b.explain(cid, p)
    for p in probes():
        assert a.add(p, now=p.first_seen) == b.add(p, now=p.first_seen)
    assert state(a) == state(b)


# -- core -------------------------------------------------------------------------------


def test_a_snapshot_plus_the_later_stories_decides_as_a_rebuild() -> None:
    sample = stories(800)
    rebuilt = StoryIndex()
    assert rebuilt.restore((s, s.id) for s in sample) == 800
    part = StoryIndex()
    part.restore((s, s.id) for s in sample[:500])
    loaded = StoryIndex.from_snapshot(part.snapshot())
    assert len(loaded) == 500
    assert loaded.restore((s, s.id) for s in sample) == 300  # the first 500 are held
    assert state(loaded) == state(rebuilt)
    same_decisions(loaded, rebuilt)


def test_a_live_index_goes_on_after_a_snapshot_exactly_as_without() -> None:
    """Built by ``add`` (near misses, merges, respellings): the copy is the index."""
    live = StoryIndex()
    decisions = [live.add(s, now=s.first_seen).cluster for s in stories(700)]
    assert len(set(decisions)) < 700  # some stories joined others
    copy = StoryIndex.from_snapshot(live.snapshot())
    assert (len(copy), copy.clusters) == (len(live), live.clusters)
    same_decisions(copy, live)


def test_a_snapshot_holds_in_a_process_with_another_hash_seed(tmp_path: Path) -> None:
    """The exact keys are stable hashes: str hashes are salted per process."""
    live = StoryIndex()
    for s in stories(300):
        live.add(s, now=s.first_seen)
    (tmp_path / "snap").write_bytes(live.snapshot())
    repeat = stories(300)[123]
    code = (
        "import sys; from pathlib import Path; from datetime import datetime\n"
        "from monitor.core.dedup.index import StoryIndex\n"
        "from monitor.core.model import Story\n"
        "ix = StoryIndex.from_snapshot(Path(sys.argv[1]).read_bytes())\n"
        "now = datetime.fromisoformat(sys.argv[4])\n"
        "s = Story(id='urn:new', feed='x', title=sys.argv[2], link=sys.argv[3],"
        " published=now, first_seen=now)\n"
        "print(ix.decide(s, now=now))\n"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "snap"), repeat.title, repeat.link,
             repeat.first_seen.isoformat()],
            capture_output=True, text=True, check=True, cwd=ROOT,
            env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout
        assert "Seen(" in out and "reason='same link'" in out, out


def test_a_snapshot_is_checked_and_keyed_by_the_settings() -> None:
    with pytest.raises(ValueError, match="not a dedup snapshot"):
        StoryIndex.from_snapshot(b"not marshal at all")
    with pytest.raises(ValueError, match="not a dedup snapshot"):
        StoryIndex.from_snapshot(marshal.dumps((99, "a future format")))
    index = StoryIndex()
    index.restore((s, s.id) for s in stories(5))
    with pytest.raises(ValueError, match="not empty"):
        index.load_snapshot(StoryIndex().snapshot())
    base = snapshot_key(DedupSettings())
    assert base == snapshot_key(DedupSettings())
    assert base != snapshot_key(DedupSettings(threshold=0.3))
    assert base != snapshot_key(DedupSettings(window=24 * 3600.0))


# -- DedupState over both stores --------------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _feed() -> FeedState:
    return FeedState(name="f", url="https://f.example/", configured_url="https://f.example/")


async def save(store: Any, batch: list[Story]) -> None:
    """Saved as the pipeline does: each story in the cluster of its own id."""
    await store.save_poll(_feed(), [StoredStory(story=s, cluster=s.id) for s in batch], [])


def chunks(items: list[Story], size: int) -> Iterator[list[Story]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@pytest.fixture(autouse=True)
def save_small_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedupstate, "STALE_MIN", 1)


async def test_a_start_loads_the_snapshot_and_catches_up(make_store: StoreFactory) -> None:
    sample = stories(400)  # 400 × 40 s: 4.4 h
    clock = Clock(sample[249].first_seen + timedelta(seconds=1))
    async with make_store() as store:
        for batch in chunks(sample[:250], 50):
            await save(store, batch)
        first = DedupState(store, DedupSettings(), window=48 * 3600.0, clock=clock)
        assert not first.loaded and len(first.index) == 0  # nothing read before asked
        await first.ready()
        assert (first.from_snapshot, first.caught_up) == (None, 250)  # a rebuild
        assert await first.save()
        assert not await first.save()  # nothing new since: nothing to write
        # then more stories are saved, and the process dies before its next snapshot
        for batch in chunks(sample[250:], 50):
            await save(store, batch)
    clock.now = sample[-1].first_seen + timedelta(minutes=5)
    async with make_store() as store:
        again = DedupState(store, DedupSettings(), window=48 * 3600.0, clock=clock)
        gc.disable()  # as a one-shot command's start leaves it: the load must not turn it on
        try:
            await again.ready()
            assert not gc.isenabled()
        finally:
            gc.enable()
            gc.unfreeze()
        assert (again.from_snapshot, again.caught_up) == (250, 150)
        rebuilt = StoryIndex()
        rebuilt.restore((s.story, s.cluster) for s in await store.recent_stories(T0))
        assert state(again.index) == state(rebuilt)
        same_decisions(again.index, rebuilt)


async def test_changed_settings_ignore_the_snapshot(make_store: StoreFactory) -> None:
    sample = stories(120)
    clock = Clock(sample[-1].first_seen + timedelta(seconds=1))
    async with make_store() as store:
        await save(store, sample)
        first = DedupState(store, DedupSettings(), window=48 * 3600.0, clock=clock)
        await first.ready()
        assert await first.save()
        stricter = DedupState(store, DedupSettings(threshold=0.5), window=48 * 3600.0,
                              clock=clock)
        await stricter.ready()
        assert (stricter.from_snapshot, stricter.caught_up) == (None, 120)
        rebuilt = StoryIndex(DedupSettings(threshold=0.5))
        rebuilt.restore((s, s.id) for s in sample)
        assert state(stricter.index) == state(rebuilt)
        assert await stricter.save()  # and its own snapshot replaces the other
        assert await store.load_dedup_snapshot(first.key) is None
        same = DedupState(store, DedupSettings(), window=48 * 3600.0, clock=clock)
        await same.ready()
        assert same.from_snapshot is None


async def test_a_broken_snapshot_is_rebuilt_and_peers_heard_meanwhile_count(
        make_store: StoreFactory) -> None:
    from monitor.store.base import DedupSnapshot

    sample = stories(60)
    clock = Clock(sample[-1].first_seen + timedelta(seconds=1))
    async with make_store() as store:
        await save(store, sample[:50])
        key = snapshot_key(DedupSettings())
        await store.save_dedup_snapshot(DedupSnapshot(key=key, taken=clock.now, stories=1,
                                                      data=b"garbage"))
        st = DedupState(store, DedupSettings(), window=48 * 3600.0, clock=clock)
        # heard before loading: the load's own read will have it (here it is not stored)
        assert st.from_peers([StoredStory(story=sample[59], cluster="x")]) == 0
        loading = asyncio.ensure_future(st.ready())
        for _ in range(1000):  # until the load is under way: what is heard now waits
            if st._heard is not None:
                break
            await asyncio.sleep(0)
        assert st.from_peers([StoredStory(story=sample[50], cluster=sample[50].id)]) == 0
        await loading
        assert (st.from_snapshot, st.caught_up) == (None, 51)  # broken: rebuilt, + the heard
        more = [StoredStory(story=s, cluster=s.id) for s in sample[50:59]]
        assert st.from_peers(more) == 8  # loaded: at once (the one already held skipped)
        assert len(st.index) == 59


async def test_a_store_failure_while_loading_leaves_nothing_half_loaded(
        make_store: StoreFactory) -> None:
    from monitor.errors import StoreError

    sample = stories(80)
    clock = Clock(sample[-1].first_seen + timedelta(seconds=1))
    async with make_store() as store:
        await save(store, sample)
        first = DedupState(store, DedupSettings(), window=48 * 3600.0, clock=clock)
        await first.ready()
        assert await first.save()
        read = store.recent_stories
        calls = 0

        async def failing_once(since: datetime, *, limit: int | None = None
                               ) -> list[StoredStory]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise StoreError("recent_stories: the database is gone for a moment")
            return await read(since, limit=limit)

        store.recent_stories = failing_once  # type: ignore[method-assign]
        st = DedupState(store, DedupSettings(), window=48 * 3600.0, clock=clock)
        with pytest.raises(StoreError):
            await st.ready()
        assert not st.loaded and len(st.index) == 0  # the snapshot it had read: dropped
        await st.ready()  # the next one that needs it tries again
        assert (st.from_snapshot, st.caught_up, calls) == (80, 0, 2)
        assert state(st.index) == state(first.index)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
async def test_a_big_index_is_snapshotted_in_a_forked_child_and_loads_the_same(
        make_store: StoreFactory, caplog: pytest.LogCaptureFixture) -> None:
    """``fork_above``: the pass over the index runs in a forked copy while the loop goes
    on; what it saves is byte for byte what the loop would have taken, and loads so."""
    sample = stories(300)
    clock = Clock(sample[-1].first_seen + timedelta(seconds=1))
    async with make_store() as store:
        await save(store, sample)
        st = DedupState(store, DedupSettings(), window=48 * 3600.0, clock=clock, fork_above=1)
        await st.ready()
        with caplog.at_level("INFO"):
            assert await st.save(force=True)
        [saved] = [r.fields for r in caplog.records  # type: ignore[attr-defined]
                   if r.getMessage() == "dedup.snapshot_saved"]
        assert saved["forked"] is True and saved["stories"] == 300
        stored = await store.load_dedup_snapshot(st.key)
        assert stored is not None and stored.data == st.index.snapshot()
        assert stored.stories == 300
        again = DedupState(store, DedupSettings(), window=48 * 3600.0, clock=clock)
        await again.ready()
        assert (again.from_snapshot, again.caught_up) == (300, 0)
        assert state(again.index) == state(st.index)
        same_decisions(again.index, st.index)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
async def test_a_forked_child_that_fails_or_is_cancelled_leaves_nothing_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import tempfile
    import time

    from monitor.shell.forked import ForkFailed, forked_bytes

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def boom() -> bytes:
        raise RuntimeError("the child's bug")

    with pytest.raises(ForkFailed, match="exited with 1"):
        await forked_bytes(boom)
    assert _files(tmp_path) == []

    def forever() -> bytes:
        time.sleep(60)
        return b""

    before = _procs()
    task = asyncio.ensure_future(forked_bytes(forever))
    mine: list[str] = []
    for _ in range(500):  # until the child exists
        await asyncio.sleep(0.01)
        mine = [p for p in _procs() - before if _ppid(p) == os.getpid()]
        if mine or not before:
            break
    assert mine or not before, "no child was forked"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _files(tmp_path) == []  # the file was unlinked before the fork
    if before:  # the child was killed and reaped at once: no process of ours is left
        assert [p for p in mine if _ppid(p) is not None] == []
    assert await forked_bytes(lambda: b"x" * 100_000) == b"x" * 100_000


def _files(d: Path) -> list[Path]:
    return list(d.iterdir())


def _procs() -> set[str]:
    """The pids in /proc (empty where there is none)."""
    import os

    return {p for p in os.listdir("/proc") if p.isdigit()} if os.path.isdir("/proc") else set()


def _ppid(pid: str) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


async def test_a_save_that_would_outlast_the_stop_is_skipped(
        make_store: StoreFactory, caplog: pytest.LogCaptureFixture) -> None:
    """At a stop (``deadline``: when the exit watchdog ends the process) a snapshot that
    would not be done in time is skipped; the stored one and the stories since load."""
    import time

    sample = stories(120)
    clock = Clock(sample[-1].first_seen + timedelta(seconds=1))
    async with make_store() as store:
        await save(store, sample[:100])
        st = DedupState(store, DedupSettings(), window=48 * 3600.0, clock=clock)
        await st.ready()
        st.deadline = time.monotonic() + 3600  # plenty of time: saved
        assert await st.save()
        took = st._save_s
        assert took is not None and took > 0  # the last save's time is the estimate
        st.deadline = time.monotonic() + 1000 * took  # ample: saved
        st.index.restore((s, s.id) for s in sample[100:110])
        await save(store, sample[100:110])
        assert await st.save(force=True)
        st._save_s = took = 60.0  # as a 570,000-story save takes
        st.deadline = time.monotonic() + 0.9 * 1.5 * took  # short of 1.5 x: skipped
        with caplog.at_level("INFO"):
            assert not await st.save(force=True)
        [skipped] = [r.fields for r in caplog.records  # type: ignore[attr-defined]
                     if r.getMessage() == "dedup.snapshot_skipped"]
        assert skipped["stories"] == 110 and skipped["need_s"] == 90.0
        assert 0 < skipped["left_s"] <= 81.0
        st.index.restore((s, s.id) for s in sample[110:])
        await save(store, sample[110:])
        again = DedupState(store, DedupSettings(), window=48 * 3600.0, clock=clock)
        await again.ready()
        assert (again.from_snapshot, again.caught_up) == (110, 10)
        assert state(again.index) == state(st.index)
