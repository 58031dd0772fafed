"""SQLite-specific behaviour: crash safety (kill -9), WAL, file permissions, concurrent
opens, locking and schema versions. The protocol itself is covered by test_store.py."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.core.model import Alert, Delivery, FeedState, Match, Story
from monitor.errors import SchemaTooNew, StoreError
from monitor.store import migrations
from monitor.store import sqlite as sqlite_store
from monitor.store.base import StoredStory
from monitor.store.codec import FEED_COLUMNS, dt_to_text
from monitor.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 1, 1, tzinfo=UTC)

# A child process: save_poll(poll n) in a loop, print n after each commit; with "once" it
# SIGKILLs itself right after the first commit returns (no close, no checkpoint).
CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from datetime import UTC, datetime, timedelta
    from monitor.core.model import Alert, Delivery, FeedState, Match, Story
    from monitor.store.base import StoredStory
    from monitor.store.sqlite import SQLiteStore

    T0 = datetime(2026, 1, 1, tzinfo=UTC)

    def poll(n):
        t = T0 + timedelta(minutes=n)
        stories = [
            Story(id=f"p{n}-s{i}", feed="a", title=f"Poll {n} story {i} — é", link=f"https://x/{n}/{i}",
                  published=t, first_seen=t)
            for i in range(10)
        ]
        m = Match(rule="r", severity="high", channels=("slack",))
        ds = [Delivery(key=f"p{n}", channel="slack", alert=Alert(story=stories[0], match=m, cluster=f"p{n}"),
                       created=t)]
        state = FeedState(name="a", url="u", configured_url="u", polls=n + 1, next_poll=t)
        return state, [StoredStory(story=s, cluster=f"p{n}") for s in stories], ds

    async def main(path, mode):
        store = SQLiteStore(path)
        await store.open()
        n = 0
        while True:
            await store.save_poll(*poll(n))
            print(n, flush=True)
            if mode == "once":
                os.kill(os.getpid(), signal.SIGKILL)
            n += 1

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def _child(path: Path, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), mode],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _size(p: Path) -> int:
    """File size, or -1 when absent (sync: pathlib calls are blocking)."""
    return p.stat().st_size if p.exists() else -1


def _listdir(p: Path) -> list[Path]:
    return list(p.iterdir())


def _feed(name: str = "a", **kw: object) -> FeedState:
    return FeedState(name=name, url="u", configured_url="u", **kw)  # type: ignore[arg-type]


def _story(sid: str) -> StoredStory:
    return StoredStory(story=Story(id=sid, feed="a", title=sid, link=f"https://x/{sid}",
                                   published=T0, first_seen=T0), cluster=f"c-{sid}")


async def test_committed_save_poll_survives_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    proc = _child(db, "once")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    assert out.split() == ["0"]
    # the data is only in the WAL: nobody checkpointed or closed the database
    assert _size(Path(f"{db}-wal")) > 0

    async with SQLiteStore(db) as store:
        feed = await store.get_feed("a")
        assert feed is not None and feed.polls == 1
        assert len(await store.recent_stories(T0)) == 10
        [d] = await store.claim_deliveries(T0, limit=5, lease_until=T0 + timedelta(minutes=1))
        assert d.key == "p0" and d.alert.story.title == "Poll 0 story 0 — é"


async def test_kill_9_mid_stream_keeps_every_committed_poll_and_no_partial_one(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    proc = _child(db, "loop")
    assert proc.stdout is not None
    committed = [int(proc.stdout.readline()) for _ in range(20)]
    proc.send_signal(signal.SIGKILL)  # most likely in the middle of poll 20's transaction
    proc.communicate(timeout=60)
    assert committed == list(range(20))

    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    async with SQLiteStore(db) as store:
        feed = await store.get_feed("a")
        assert feed is not None
        polls = feed.polls  # every committed poll, perhaps a few more committed after the 20th print
        assert polls >= 20
        stories = await store.recent_stories(T0)
        assert len(stories) == 10 * polls  # whole polls only
        assert {s.cluster for s in stories} == {f"p{n}" for n in range(polls)}
        assert await store.count_pending() == polls


async def test_wal_mode_and_pragmas(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    async with SQLiteStore(db, synchronous="full", busy_timeout=3) as store:
        await store.save_feed(_feed())
        pragmas = await store._run(
            "pragmas",
            lambda con: tuple(
                con.execute(f"PRAGMA {p}").fetchone()[0]
                for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            ),
        )
        assert pragmas == ("wal", 2, 1, 3000)  # synchronous FULL = 2
        assert _size(Path(f"{db}-wal")) > 0
        # foreign keys are enforced: a story must belong to a stored cluster
        with pytest.raises(StoreError, match="FOREIGN KEY constraint failed"):
            await store._run(
                "orphan",
                lambda con: con.execute(
                    "INSERT INTO stories VALUES ('s', 'a', 'l', 't', 'no-cluster', 'x', 'x', '{}')"
                ),
            )
    async with SQLiteStore(db) as store:
        assert await store._run("sync", lambda con: con.execute("PRAGMA synchronous").fetchone()[0]) == 1
    # WAL is a property of the file: a plain connection sees it too
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


async def test_files_are_private_to_the_owner(tmp_path: Path, umask_zero: None) -> None:
    db = tmp_path / "new" / "dir" / "m.db"
    async with SQLiteStore(db) as store:
        await store.save_feed(_feed())
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert p.exists(), p
            assert p.stat().st_mode & 0o777 == 0o600, (p, oct(p.stat().st_mode))
    assert (tmp_path / "new" / "dir").stat().st_mode & 0o777 == 0o700


async def test_an_existing_file_keeps_its_permissions(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    db.touch(mode=0o640)
    db.chmod(0o640)
    async with SQLiteStore(db) as store:
        await store.save_feed(_feed())
    assert db.stat().st_mode & 0o777 == 0o640


async def test_unopenable_paths_raise_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("I am a file, not a directory")
    with pytest.raises(StoreError, match=rf"cannot open {blocker}/m.db: {blocker} is not a directory"):
        await SQLiteStore(blocker / "m.db").open()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"definitely not SQLite " * 100)
    with pytest.raises(StoreError, match=rf"cannot open {garbage}: file is not a database") as info:
        await SQLiteStore(garbage).open()
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


async def test_concurrent_opens_migrate_once_and_share_the_file(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    stores = [SQLiteStore(db) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        await asyncio.gather(*(
            s.save_poll(_feed(f"f{i}"), [_story(f"s{i}-{j}") for j in range(20)], [])
            for i, s in enumerate(stores)
        ))
        for s in stores:
            assert [f.name for f in await s.get_feeds()] == ["f0", "f1", "f2", "f3"]
            assert len(await s.recent_stories(T0)) == 80
        assert await stores[0]._run("v", lambda con: con.execute("PRAGMA user_version").fetchone()[0]) == (
            migrations.latest("sqlite")
        )
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_held_write_lock_gives_database_is_locked(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    async with SQLiteStore(db, busy_timeout=0.05) as store:
        other = sqlite3.connect(db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="save_feed 'a': database is locked"):
                await store.save_feed(_feed())
            other.execute("ROLLBACK")
        finally:
            other.close()
        await store.save_feed(_feed())  # and it recovers once the lock is gone
        assert [f.name for f in await store.get_feeds()] == ["a"]


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    async with SQLiteStore(db):
        pass
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(SchemaTooNew, match=rf"the database at {db} is at schema version 99, this "
                       rf"monitor knows up to {migrations.latest('sqlite')}: upgrade monitor"):
        await SQLiteStore(db).open()


async def test_memory_store(tmp_path: Path) -> None:
    async with SQLiteStore(":memory:") as store:
        out = await store.save_poll(
            _feed(), [_story("s1")],
            [Delivery(key="k", channel="c", created=T0,
                      alert=Alert(story=_story("s1").story, match=Match(rule="r", severity="low", channels=("c",)),
                                  cluster="c-s1"))],
        )
        assert [d.key for d in out] == ["k"]
        assert await store.known(["s1"], []) == {"s1"}
    assert _listdir(tmp_path) == []


async def test_a_cancelled_call_leaves_the_store_usable(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "m.db") as store:
        task = asyncio.create_task(store.save_poll(_feed(), [_story(f"s{i}") for i in range(200)], []))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the worker thread finished (or never started) the transaction as a whole
        n = len(await store.recent_stories(T0))
        assert n in (0, 200)
        await store.save_feed(_feed("b"))
        assert "b" in {f.name for f in await store.get_feeds()}


async def test_forward_migrations_apply_once_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "m.db"
    async with SQLiteStore(db) as store:
        await store.save_feed(_feed())
    real = migrations.load("sqlite")
    v2 = migrations.Migration(
        version=len(real) + 1,
        name="9999_test.sqlite.sql",
        sql="-- a later version\nCREATE TABLE extra (x INTEGER);\nINSERT INTO extra VALUES (1);\n",
    )
    monkeypatch.setattr(migrations, "load", lambda dialect: [*real, v2])
    for _ in range(2):  # the second open finds the schema current and applies nothing
        async with SQLiteStore(db) as store:
            assert [f.name for f in await store.get_feeds()] == ["a"]
            got = await store._run("extra", lambda con: con.execute("SELECT count(*) FROM extra").fetchone()[0])
            assert got == 1
            assert await store._run("v", lambda con: con.execute("PRAGMA user_version").fetchone()[0]) == v2.version


async def test_a_version_1_database_is_upgraded_with_its_failed_deliveries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a database made by the first release (schema 1): a delivery that failed for good
    db = tmp_path / "m.db"
    real = migrations.load("sqlite")
    with monkeypatch.context() as m:
        m.setattr(migrations, "load", lambda dialect: real[:1])
        # that release's code knew no cluster merges (schema 3) either, nor the feeds'
        # adaptive-polling columns (the adaptive polling migration)
        m.setattr(sqlite_store, "_merged_ids", lambda con, ids: {})
        # nor groups (schema 4): its insert wrote no group key (the 10th value, unused)
        m.setattr(sqlite_store, "_DELIVERY_INSERT", (
            "INSERT INTO deliveries (key, channel, parent_key, cluster, rule, payload, state, "
            "attempts, created, next_attempt) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, "
            "?8, COALESCE(?9, ?10)) ON CONFLICT (key) DO NOTHING RETURNING id"))
        v1 = FEED_COLUMNS[:FEED_COLUMNS.index("stories_seen") + 1]
        m.setattr(sqlite_store, "_FEED_UPSERT", (
            f"INSERT INTO feeds ({', '.join(v1)}) VALUES ({', '.join('?' for _ in v1)}) "
            "ON CONFLICT (name) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in v1 if c != "name")))
        new_row = sqlite_store._feed_row
        m.setattr(sqlite_store, "_feed_row", lambda state: new_row(state)[:len(v1)])
        async with SQLiteStore(db) as old:
            s = _story("s1")
            match = Match(rule="r", severity="high", channels=("slack",))
            [d] = await old.save_poll(_feed(), [s], [Delivery(
                key="k", channel="slack", created=T0,
                alert=Alert(story=s.story, match=match, cluster=s.cluster))])
            assert d.id is not None
            # (that release's mark_failed: it knew no claimers, schema 7)
            def fail(con: sqlite3.Connection) -> None:
                with con:
                    con.execute(
                        "UPDATE deliveries SET attempts = attempts + 1, last_error = ?, "
                        "last_attempt = ?, state = 'failed', next_attempt = NULL WHERE id = ?",
                        ("invalid_auth", dt_to_text(T0), d.id))

            await old._run("mark_failed", fail)
    async with SQLiteStore(db) as store:  # this release: migrated on open
        version = await store._run("v", lambda con: con.execute("PRAGMA user_version").fetchone()[0])
        assert version == len(real) >= 2
        assert await store.requeue_failed(T0 + timedelta(days=9)) == [d.id]
        [again] = await store.claim_deliveries(T0 + timedelta(days=9), limit=5,
                                               lease_until=T0 + timedelta(days=10))
        assert (again.key, again.attempts, again.requeued) == ("k", 1, T0 + timedelta(days=9))
        # the feed's row came through, with nothing known about its schedule yet
        feed = await store.get_feed("a")
        assert feed is not None and feed.stories_seen == 0
        assert (feed.ttl, feed.update_period, feed.update_base, feed.cadence,
                feed.poll_interval, feed.poll_reason) == (None,) * 6
        hinted = replace(feed, ttl=3600.0, update_period=900.0, update_base=T0,
                         cadence=420.0, poll_interval=3600.0, poll_reason="ttl 60m")
        await store.save_feed(hinted)
        assert await store.get_feed("a") == hinted


async def test_a_failing_migration_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "m.db"
    async with SQLiteStore(db):
        pass
    real = migrations.load("sqlite")
    bad = migrations.Migration(version=len(real) + 1, name="9999_bad.sqlite.sql",
                               sql="CREATE TABLE extra (x INTEGER);\nTHIS IS NOT SQL;\n")
    monkeypatch.setattr(migrations, "load", lambda dialect: [*real, bad])
    with pytest.raises(StoreError, match=r"cannot open .*syntax error"):
        await SQLiteStore(db).open()
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA user_version").fetchone()[0] == len(real)
        assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'extra'").fetchone()[0] == 0
    finally:
        con.close()


async def test_feed_rows_are_written_whatever_the_host_parameter_limit(
        tmp_path: Path) -> None:
    """``save_feeds`` puts up to ``ROWS_PER_STATEMENT`` rows in a statement, fewer when the
    SQLite build allows fewer host parameters (here three rows' worth)."""
    async with SQLiteStore(tmp_path / "m.db") as store:
        await store._run("limit", lambda con: con.setlimit(
            sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, len(FEED_COLUMNS) * 3))
        batch = [FeedState(name=f"f{i}", url=f"https://f{i}.example/", configured_url=
                           f"https://f{i}.example/", polls=i) for i in range(10)]
        await store.save_feeds(batch)
        assert await store.get_feeds() == batch
        assert sqlite_store.ROWS_PER_STATEMENT > 3  # (so the limit is what split them here)
