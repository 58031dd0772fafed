"""SQLite keeps a big dedup snapshot in parts, each written in its own short transaction,
so the store's one thread serves the polls between them (a 280 MB snapshot in one
transaction held it for seconds). What is loaded is what was saved, whole or not at all."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.store import sqlite as sqlite_store
from monitor.store.base import DedupSnapshot
from monitor.store.sqlite import SQLiteStore

T = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
PART = 1000


@pytest.fixture(autouse=True)
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "SNAPSHOT_PART", PART)


def _parts(path: Path) -> list[tuple[str, int, int]]:
    con = sqlite3.connect(path)
    try:
        return [(g, p, n) for g, p, n in con.execute(
            "SELECT gen, part, length(data) FROM dedup_snapshot_parts ORDER BY gen, part")]
    finally:
        con.close()


async def test_a_big_snapshot_round_trips_in_parts_and_replaces_the_last(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    big = bytes(range(256)) * 100 + b"\x00tail"  # 25,605 bytes: 26 parts
    async with SQLiteStore(path) as s:
        await s.save_dedup_snapshot(DedupSnapshot(key="k", taken=T, stories=9, data=big))
        assert await s.load_dedup_snapshot("k") == DedupSnapshot(key="k", taken=T, stories=9,
                                                                 data=big)
        first = _parts(path)
        assert len(first) == 26 and len({g for g, _, _ in first}) == 1
        assert sum(n for _, _, n in first) == len(big)
        other = b"\x01" * 5 * PART
        await s.save_dedup_snapshot(DedupSnapshot(key="k", taken=T, stories=10, data=other))
        second = _parts(path)
        assert len(second) == 5 and {g for g, _, _ in second}.isdisjoint({g for g, _, _ in first})
    async with SQLiteStore(path) as s:  # kept across restarts
        got = await s.load_dedup_snapshot("k")
        assert got is not None and got.data == other and got.stories == 10
        # a small one is one row: the parts of the big one go
        await s.save_dedup_snapshot(DedupSnapshot(key="k", taken=T, stories=1, data=b"small"))
        assert _parts(path) == []
        got = await s.load_dedup_snapshot("k")
        assert got is not None and got.data == b"small"


async def test_parts_of_a_save_cut_short_are_never_loaded_and_go_at_the_next(
        tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    data = b"\x02" * 3 * PART
    async with SQLiteStore(path) as s:
        await s.save_dedup_snapshot(DedupSnapshot(key="k", taken=T, stories=3, data=data))
    # a save killed after writing two of its parts: they are there, the row is not theirs
    con = sqlite3.connect(path)
    con.executemany("INSERT INTO dedup_snapshot_parts (gen, part, data) VALUES (?, ?, ?)",
                    [("cut-short", 0, b"\x03" * PART), ("cut-short", 1, b"\x03" * PART)])
    con.commit()
    con.close()
    async with SQLiteStore(path) as s:
        got = await s.load_dedup_snapshot("k")
        assert got is not None and got.data == data
        await s.save_dedup_snapshot(DedupSnapshot(key="k", taken=T, stories=4,
                                                  data=b"\x04" * 2 * PART))
        gens = {g for g, _, _ in _parts(path)}
        assert len(gens) == 1 and "cut-short" not in gens


async def test_a_missing_part_loads_nothing_and_an_old_single_row_still_loads(
        tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    async with SQLiteStore(path) as s:
        await s.save_dedup_snapshot(DedupSnapshot(key="k", taken=T, stories=3,
                                                  data=b"\x05" * 3 * PART))
    con = sqlite3.connect(path)
    con.execute("DELETE FROM dedup_snapshot_parts WHERE part = 1")
    con.commit()
    async with SQLiteStore(path) as s:
        assert await s.load_dedup_snapshot("k") is None  # a cache: rebuilt instead
    # a snapshot saved by an earlier version: its bytes in the row itself, however big
    con.execute("UPDATE dedup_snapshot SET data = ?", (b"\x06" * 5 * PART,))
    con.commit()
    con.close()
    async with SQLiteStore(path) as s:
        got = await s.load_dedup_snapshot("k")
        assert got is not None and got.data == b"\x06" * 5 * PART
