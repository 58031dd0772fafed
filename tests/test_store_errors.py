"""Store failures are one line that names the database and what to do, from real SQLite
errors (a full database, a read-only one, a file that is not a database, a held lock)."""

from __future__ import annotations

import errno
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.core.model import FeedState, Story
from monitor.errors import (
    StoreBusy,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreReadOnly,
    StoreUnavailable,
)
from monitor.store.base import StoredStory
from monitor.store.diagnose import sqlite_error
from monitor.store.sqlite import SQLiteStore

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _feed(name: str = "a") -> FeedState:
    return FeedState(name=name, url="u", configured_url="u")


def _stories(n: int, prefix: str = "s") -> list[StoredStory]:
    return [StoredStory(story=Story(id=f"{prefix}{i}", feed="a", title="t" * 500,
                                    link=f"https://x/{prefix}{i}", summary="x" * 2000,
                                    published=T0, first_seen=T0), cluster=f"c-{prefix}{i}")
            for i in range(n)]


def _one_line(e: StoreError) -> str:
    text = str(e)
    assert "\n" not in text and "Traceback" not in text
    return text


async def test_a_full_database_says_free_space_on_its_disk(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    async with SQLiteStore(db) as store:
        await store.save_feed(_feed())
        # SQLite's own size cap: the next pages cannot be had, as on a full disk (SQLITE_FULL)
        pages = await store._run("pages", lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await store._run("cap", lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))
        with pytest.raises(StoreFull) as info:
            await store.save_poll(_feed(), _stories(200), [])
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    e = info.value
    text = _one_line(e)
    assert e.kind == "full" and e.where == str(db)
    assert "database or disk is full" in text
    assert f"free space on the disk holding {tmp_path}" in text and str(db) in text


async def test_a_read_only_database_says_make_it_writable(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    async with SQLiteStore(db) as store:
        await store.save_feed(_feed())
    # read-only for real, even as root: SQLite opened with mode=ro refuses every write
    async with SQLiteStore(f"file:{db}?mode=ro") as store:
        assert [f.name for f in await store.get_feeds()] == ["a"]
        with pytest.raises(StoreReadOnly) as info:
            await store.save_feed(_feed("b"))
    e = info.value
    text = _one_line(e)
    assert e.kind == "readonly" and e.where == str(db)
    assert "readonly database" in text and f"make {db} and its directory {tmp_path} writable" in text


async def test_a_file_that_is_not_a_database_says_restore_or_move_it_aside(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(b"\x00garbage, not SQLite\xff" * 400)
    with pytest.raises(StoreCorrupt) as info:
        await SQLiteStore(db).open()
    text = _one_line(info.value)
    assert text.startswith(f"cannot open {db}: file is not a database — restore {db} from a backup")
    assert "move it aside" in text and info.value.kind == "corrupt"


async def test_a_held_lock_is_busy_and_says_so(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    async with SQLiteStore(db, busy_timeout=0.05) as store:
        other = sqlite3.connect(db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreBusy) as info:
                await store.save_feed(_feed())
            other.execute("ROLLBACK")
        finally:
            other.close()
    assert "database is locked" in _one_line(info.value) and "busy_timeout" in str(info.value)


def test_os_errors_creating_the_file_are_classified(tmp_path: Path) -> None:
    path = str(tmp_path / "m.db")
    full = sqlite_error(OSError(errno.ENOSPC, "No space left on device"), path=path, what="open")
    assert isinstance(full, StoreFull) and "No space left" in str(full)
    ro = sqlite_error(OSError(errno.EROFS, "Read-only file system"), path=path, what="open")
    assert isinstance(ro, StoreReadOnly)
    other = sqlite_error(OSError(errno.ENOENT, "No such file"), path=path, what="open")
    assert isinstance(other, StoreUnavailable) and f"check that {tmp_path} exists" in str(other)


async def test_unreachable_postgres_names_the_server_and_what_to_check() -> None:
    from monitor.store.postgres import PostgresStore

    s = PostgresStore("postgresql://u:topsecret@127.0.0.1:1/db", connect_timeout=2)
    with pytest.raises(StoreUnavailable) as info:
        await s.open()
    text = _one_line(info.value)
    assert "topsecret" not in text
    assert "check that PostgreSQL runs on 127.0.0.1:1" in text
