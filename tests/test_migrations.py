"""Schema migrations, for SQLite and PostgreSQL alike: upgrades from every earlier
version with the data of that version intact, concurrent opens that migrate once, a
newer schema refused by every command, and ``monitor migrate`` (``--dry-run``).

The tests iterate over whatever migrations exist (``migrations.load``): a new one is
covered by adding it. The rows written at version k are built from the columns that
exist at version k (read from the database), so they are valid for that version.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from monitor.core.model import Alert, Delivery, FeedState, Match, Story
from monitor.errors import SchemaTooNew, StoreError
from monitor.store import migrations
from monitor.store.base import Store, StoredStory
from monitor.store.codec import alert_to_json, dt_to_text, story_to_json, strs_to_json
from monitor.store.postgres import PostgresStore
from monitor.store.sqlite import SQLiteStore, _statements
from tests.test_cli import monitor
from tests.test_store import PG_URL, T0, _pg_unavailable, alert, story

DIALECTS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
LATEST = migrations.latest("sqlite")
assert migrations.latest("postgres") == LATEST, "both dialects have the same versions"


def t(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# -- databases at a given version ---------------------------------------------------------


class Db:
    """One fresh database (a SQLite file, or a PostgreSQL schema) that tests bring to a
    version with the raw migration files, fill with raw SQL, and open with the code."""

    def __init__(self, dialect: str, tmp: Path) -> None:
        self.dialect = dialect
        self.path = tmp / "m.db"
        self.schema = f"t_{uuid.uuid4().hex[:12]}"
        self.url = (f"sqlite:///{self.path}" if dialect == "sqlite"
                    else f"{PG_URL}?schema={self.schema}")

    def store(self, **kw: Any) -> Store:
        if self.dialect == "sqlite":
            return SQLiteStore(self.path, **kw)
        return PostgresStore(PG_URL, schema=self.schema, max_size=3, **kw)

    async def sql(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run ``fn(con)`` on a raw connection: an ``SqliteCon`` or an asyncpg one."""
        if self.dialect == "sqlite":
            con = sqlite3.connect(self.path, isolation_level=None)
            con.row_factory = sqlite3.Row
            try:
                return await fn(SqliteCon(con))
            finally:
                con.close()
        pg = await asyncpg.connect(PG_URL, timeout=5)
        try:
            await pg.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await pg.execute(f'SET search_path = "{self.schema}"')
            return await fn(pg)
        finally:
            await pg.close()

    async def apply(self, upto: int) -> None:
        """Migrations 1..upto from their files, as the release of version ``upto`` did."""
        wanted = migrations.load(self.dialect)[:upto]

        async def go(con: Any) -> None:
            if self.dialect == "sqlite":
                for m in wanted:
                    for stmt in _statements(m.sql):
                        await con.execute(stmt)
                await con.execute(f"PRAGMA user_version = {upto}")
                return
            async with con.transaction():
                await con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                for m in wanted:
                    await con.execute(m.sql)
                    await con.execute("INSERT INTO schema_version VALUES ($1)", m.version)

        await self.sql(go)

    async def version(self) -> int:
        async def go(con: Any) -> int:
            if self.dialect == "sqlite":
                return int((await con.fetchval("PRAGMA user_version")) or 0)
            if await con.fetchval("SELECT to_regclass('schema_version')") is None:
                return 0
            return int(await con.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))

        return int(await self.sql(go))

    async def set_version(self, v: int) -> None:
        async def go(con: Any) -> None:
            if self.dialect == "sqlite":
                await con.execute(f"PRAGMA user_version = {v}")
            else:
                await con.execute("INSERT INTO schema_version VALUES ($1)", v)

        await self.sql(go)

    async def columns(self, con: Any) -> dict[str, set[str]]:
        if self.dialect == "sqlite":
            names = [r[0] for r in await con.fetch(
                "SELECT name FROM sqlite_master WHERE type = 'table'")]
            return {n: {r[1] for r in await con.fetch(f'PRAGMA table_info("{n}")')}
                    for n in names}
        out: dict[str, set[str]] = {}
        for r in await con.fetch("SELECT table_name, column_name FROM information_schema.columns "
                                 "WHERE table_schema = current_schema()"):
            out.setdefault(r[0], set()).add(r[1])
        return out

    async def insert(self, rows: dict[str, list[dict[str, Any]]]) -> dict[str, set[str]]:
        """Insert ``rows`` (table -> rows as column -> value), keeping the columns that
        exist at this database's version; returns the columns that exist."""
        async def go(con: Any) -> dict[str, set[str]]:
            have = await self.columns(con)
            for table, items in rows.items():
                if table not in have:
                    continue
                for row in items:
                    cols = [c for c in row if c in have[table]]
                    values = [self._value(row[c]) for c in cols]
                    marks = ", ".join("?" if self.dialect == "sqlite" else f"${i}"
                                      for i in range(1, len(cols) + 1))
                    await con.execute(f'INSERT INTO "{table}" ({", ".join(cols)}) '
                                      f"VALUES ({marks})", *values)
            return have

        result: dict[str, set[str]] = await self.sql(go)
        return result

    def _value(self, v: Any) -> Any:
        if self.dialect == "sqlite":
            if isinstance(v, datetime):
                return dt_to_text(v)
            if isinstance(v, bool):
                return int(v)
        return v

    async def drop(self) -> None:
        if self.dialect == "postgres":
            con = await asyncpg.connect(PG_URL, timeout=5)
            try:
                await con.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            finally:
                await con.close()


class SqliteCon:
    """The few asyncpg-like calls the tests make, on a sqlite3 connection."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    async def execute(self, sql: str, *args: Any) -> None:
        self.con.execute(sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return self.con.execute(sql, args).fetchall()

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = self.con.execute(sql, args).fetchone()
        return None if row is None else row[0]


@pytest.fixture(params=DIALECTS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    if request.param == "postgres" and (reason := await _pg_unavailable()):
        pytest.skip(reason)
    d = Db(request.param, tmp_path)
    try:
        yield d
    finally:
        await d.drop()


# -- representative rows --------------------------------------------------------------------


def _story(sid: str, feed: str, minutes: float) -> Story:
    return story(sid, feed=feed, seen=t(minutes))


def _payload(s: Story, cluster: str, *, update: bool = False) -> str:
    return alert_to_json(alert(s, cluster=cluster, update=update))


def rows_of_a_store_in_use() -> dict[str, list[dict[str, Any]]]:
    """A store mid-life: two feeds (one baselined and adaptive, one failing), three
    stories in two clusters, a merged-away cluster, and an outbox with a sent alert, its
    pending update, a pending alert due now, a failed one and a held digest."""
    s1, s2, s3 = _story("s1", "a", 0), _story("s2", "b", 1), _story("s3", "a", 2)
    feeds = [
        {"name": "a", "url": "https://a.example/feed", "configured_url": "http://a.example/feed",
         "etag": '"e1"', "last_modified": "Thu, 01 Jan 2026 00:00:00 GMT", "body_hash": "h1",
         "last_polled": t(5), "next_poll": t(20), "last_success": t(5), "failures": 0,
         "last_status": 200, "gone": False, "baselined": True, "polls": 7, "stories_seen": 2,
         "ttl": 3600.0, "update_period": 900.0, "update_base": T0, "cadence": 420.0,
         "poll_interval": 900.0, "poll_reason": "ttl 60m"},
        {"name": "b", "url": "https://b.example/rss", "configured_url": "https://b.example/rss",
         "last_polled": t(5), "next_poll": t(6), "failures": 3, "last_status": 503,
         "last_error": "HTTP 503", "gone": False, "baselined": True, "polls": 9,
         "stories_seen": 1, "problem": "failing"},
    ]
    clusters = [
        {"id": "c1", "first_story": "s1", "title": s1.title, "first_seen": t(0),
         "last_seen": t(1), "sources": strs_to_json(("a", "b"))},
        {"id": "c3", "first_story": "s3", "title": s3.title, "first_seen": t(2),
         "last_seen": t(2), "sources": strs_to_json(("a",))},
    ]
    stories = [
        {"id": s.id, "feed": s.feed, "link": s.link, "title": s.title, "cluster": c,
         "first_seen": s.first_seen, "published": s.published, "payload": story_to_json(s)}
        for s, c in ((s1, "c1"), (s2, "c1"), (s3, "c3"))
    ]

    def d(key: str, cluster: str, s: Story, **kw: Any) -> dict[str, Any]:
        return {"key": key, "channel": "slack", "parent_key": None,
                "cluster": cluster, "rule": "r1", "state": "pending", "attempts": 0,
                "created": s.first_seen, "next_attempt": s.first_seen,
                "payload": _payload(s, cluster, update=kw.get("parent_key") is not None),
                **kw}

    deliveries = [  # ids 1 to 5, in this order
        d("c1:r1:slack", "c1", s1, state="sent", attempts=1, sent_at=t(0.5),
          last_attempt=t(0.5), next_attempt=None, ref="C1/1700000000.000100"),
        d("c1:r1:slack:u1", "c1", s2, parent_key="c1:r1:slack"),
        d("c3:r1:slack", "c3", s3),
        d("c3:r1:email", "c3", s3, channel="email", state="failed", attempts=3,
          last_attempt=t(4), last_error="550 no such user", next_attempt=None),
        d("c3:r2:slack", "c3", s3, rule="r2", next_attempt=t(60 * 24), grp="r2/slack"),
    ]
    return {"feeds": feeds, "clusters": clusters, "stories": stories,
            "deliveries": deliveries,
            "cluster_merges": [{"gone": "c-old", "into_id": "c1"}]}


async def check_the_store_in_use(store: Store, have: dict[str, set[str]]) -> None:
    """What ``rows_of_a_store_in_use`` wrote reads back through the current code, and
    the store carries on: claims, sends, retries, new polls."""
    a = await store.get_feed("a")
    assert a is not None and a.baselined and (a.etag, a.body_hash, a.polls) == ('"e1"', "h1", 7)
    assert (a.next_poll, a.last_success, a.url) == (t(20), t(5), "https://a.example/feed")
    adaptive = "ttl" in have["feeds"]
    assert (a.ttl, a.poll_interval, a.update_base) == (
        (3600.0, 900.0, T0) if adaptive else (None, None, None))
    b = await store.get_feed("b")
    assert b is not None and (b.failures, b.last_error, b.problem) == (3, "HTTP 503", "failing")
    s2 = await store.get_story("s2")
    assert s2 is not None and s2.cluster == "c1" and s2.story == _story("s2", "b", 1)
    c1 = await store.get_cluster("c1")
    assert c1 is not None and set(c1.members) == {"s1", "s2"} and c1.sources == ("a", "b")
    assert await store.known(["s1", "nope"], ["https://news.example/s3"]) == {
        "s1", "https://news.example/s3"}
    states = {d.key: (d.state, d.attempts, d.ref) for d in await store.deliveries()}
    assert states == {
        "c1:r1:slack": ("sent", 1, "C1/1700000000.000100"),
        "c1:r1:slack:u1": ("pending", 0, None),
        "c3:r1:slack": ("pending", 0, None),
        "c3:r1:email": ("failed", 3, None),
        "c3:r2:slack": ("pending", 0, None),
    }
    # nothing due is sent again, the due ones go out, the update threads under its alert
    due = await store.claim_deliveries(t(10), limit=10, lease_until=t(15))
    assert {d.key for d in due} == {"c1:r1:slack:u1", "c3:r1:slack"}
    update = next(d for d in due if d.parent_key)
    assert update.thread_ref == "C1/1700000000.000100"
    for d in due:
        assert d.id is not None
        await store.mark_sent(d.id, t(11), f"ref-{d.key}")
    assert await store.claim_deliveries(t(12), limit=10, lease_until=t(15)) == []
    if "grp" in have["deliveries"]:
        held = await store.group_states(["r2/slack"])
        assert held["r2/slack"].pending_since == t(2)
    assert await store.requeue_failed(t(13)) == [4]
    # a new poll lands next to the old rows, with a new delivery id
    s4 = _story("s4", "a", 14)
    [new] = await store.save_poll(
        FeedState(name="a", url=a.url, configured_url=a.configured_url, baselined=True,
                  polls=8, next_poll=t(30)),
        [StoredStory(story=s4, cluster="c1")],
        [Delivery(key="c1:r1:slack:u2", channel="slack", created=t(14), parent_key="c1:r1:slack",
                  alert=Alert(story=s4, match=Match(rule="r1", severity="high",
                                                    channels=("slack",)),
                              cluster="c1", update=True))])
    assert new.id is not None and new.id > 5
    if "cluster_merges" in have:
        # a story another instance still files under the merged-away id joins the survivor
        assert [d.key for d in await store.cluster_alerts("c-old")] == ["c1:r1:slack"]


@pytest.mark.parametrize("k", range(1, LATEST + 1))
async def test_a_database_of_every_earlier_version_is_upgraded_with_its_data(
    db: Db, k: int
) -> None:
    await db.apply(k)
    have = await db.insert(rows_of_a_store_in_use())
    assert await db.version() == k
    async with db.store() as store:  # this release: migrated on open
        assert await db.version() == LATEST
        await check_the_store_in_use(store, have)
    async with db.store() as store:  # and once migrated, opening again changes nothing
        assert await db.version() == LATEST
        assert len(await store.deliveries()) == 6


# -- concurrent opens -----------------------------------------------------------------------


@pytest.fixture
async def fresh_pg_database() -> AsyncIterator[str]:
    """The URL of a new, empty PostgreSQL database (dropped afterwards)."""
    if reason := await _pg_unavailable():
        pytest.skip(reason)
    name = f"monitor_mig_{uuid.uuid4().hex[:10]}"
    con = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await con.execute(f'CREATE DATABASE "{name}"')
    finally:
        await con.close()
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        con = await asyncpg.connect(PG_URL, timeout=5)
        try:
            await con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await con.close()


def _counting_migration(dialect: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Append a migration that counts how often it runs (in a table it creates)."""
    real = migrations.load(dialect)
    extra = migrations.Migration(
        version=len(real) + 1, name=f"9999_counted.{dialect}.sql",
        sql="CREATE TABLE counted (n INTEGER);\nINSERT INTO counted VALUES (1);\n")
    monkeypatch.setattr(migrations, "load", lambda d: [*real, extra])


@pytest.mark.postgres
async def test_instances_starting_together_on_a_new_postgres_database_migrate_once(
    fresh_pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _counting_migration("postgres", monkeypatch)
    stores = [PostgresStore(fresh_pg_database, max_size=2) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await asyncio.gather(*(s.save_feed(FeedState(name=f"f{i}", url="u", configured_url="u"))
                               for i, s in enumerate(stores)))
        for s in stores:
            assert [f.name for f in await s.get_feeds()] == ["f0", "f1", "f2", "f3"]
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    con = await asyncpg.connect(fresh_pg_database, timeout=5)
    try:
        assert await con.fetchval("SELECT count(*) FROM counted") == 1
        versions = [r[0] for r in await con.fetch("SELECT version FROM schema_version ORDER BY 1")]
        assert versions == list(range(1, LATEST + 2))  # each applied exactly once
    finally:
        await con.close()


async def test_instances_starting_together_on_a_new_sqlite_file_migrate_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _counting_migration("sqlite", monkeypatch)
    stores = [SQLiteStore(tmp_path / "m.db") for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await asyncio.gather(*(s.save_feed(FeedState(name=f"f{i}", url="u", configured_url="u"))
                               for i, s in enumerate(stores)))
        for s in stores:
            assert len(await s.get_feeds()) == 4
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    con = sqlite3.connect(tmp_path / "m.db")
    try:
        assert con.execute("SELECT count(*) FROM counted").fetchone()[0] == 1
        assert con.execute("PRAGMA user_version").fetchone()[0] == LATEST + 1
    finally:
        con.close()


# -- a newer schema -------------------------------------------------------------------------


async def test_a_schema_newer_than_the_code_is_refused_at_open(db: Db) -> None:
    async with db.store():
        pass
    await db.set_version(LATEST + 2)
    where = str(db.path) if db.dialect == "sqlite" else f"schema {db.schema}"
    for kw in ({}, {"migrate": False}):
        with pytest.raises(SchemaTooNew) as info:
            await db.store(**kw).open()
        msg = str(info.value)
        assert where in msg and (
            f"is at schema version {LATEST + 2}, this monitor knows up to {LATEST}: upgrade "
            "monitor (or restore a backup made before the upgrade)") in msg
    assert await db.version() == LATEST + 2  # and nothing was written


@pytest.fixture
def newer_workdir(tmp_path: Path) -> Path:
    (tmp_path / "rules").mkdir()
    (tmp_path / "config.yaml").write_text(
        "feeds:\n  - {name: a, url: 'http://127.0.0.1:9/a.rss'}\n"
        "channels:\n  out: {type: file, path: out.jsonl}\n", encoding="utf-8")
    (tmp_path / "rules" / "r.yaml").write_text(
        "rules:\n  - name: r\n    any: [robot]\n    channels: [out]\n", encoding="utf-8")
    con = sqlite3.connect(tmp_path / "monitor.db")
    con.execute(f"PRAGMA user_version = {LATEST + 2}")
    con.close()
    return tmp_path


@pytest.mark.parametrize("command", [["run"], ["once"], ["status"], ["migrate"],
                                     ["migrate", "--dry-run"]])
async def test_every_command_refuses_a_newer_schema_and_says_what_to_do(
    newer_workdir: Path, command: list[str]
) -> None:
    rc, out, err = await monitor(*command, cwd=newer_workdir)
    assert rc == 1, (out, err)
    assert (f"the database at {newer_workdir / 'monitor.db'} is at schema version "
            f"{LATEST + 2}, this monitor knows up to {LATEST}: upgrade monitor (or restore a "
            "backup made before the upgrade)") in err, err
    assert not (newer_workdir / "out.jsonl").exists()


@pytest.mark.postgres
async def test_migrate_refuses_a_newer_postgres_schema(tmp_path: Path) -> None:
    if reason := await _pg_unavailable():
        pytest.skip(reason)
    d = Db("postgres", tmp_path)
    try:
        await d.apply(LATEST)
        await d.set_version(LATEST + 1)
        rc, _, err = await monitor("migrate", "--store", d.url, cwd=tmp_path)
        assert rc == 1 and f"schema version {LATEST + 1}, this monitor knows up to {LATEST}" in err
    finally:
        await d.drop()


# -- monitor migrate ------------------------------------------------------------------------


@pytest.mark.parametrize("k", sorted({0, 1, LATEST - 1}))
async def test_dry_run_proves_the_migrations_apply_and_changes_nothing(db: Db, k: int) -> None:
    if k:
        await db.apply(k)
        await db.insert(rows_of_a_store_in_use())
    async with db.store(migrate=False) as store:
        plan = await store.migrate(dry_run=True)
        assert (plan.current, plan.target, plan.version, plan.applied) == (k, LATEST, k, False)
        assert [m.version for m in plan.steps] == list(range(k + 1, LATEST + 1))
        assert await db.version() == k
        plan = await store.migrate()
        assert (plan.current, plan.version, plan.applied) == (k, LATEST, True)
        assert await db.version() == LATEST
        again = await store.migrate()
        assert (again.current, again.steps, again.applied) == (LATEST, (), False)


async def test_a_failing_migration_in_a_dry_run_is_reported_and_changes_nothing(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with db.store():
        pass
    real = migrations.load(db.dialect)
    bad = migrations.Migration(version=len(real) + 1, name=f"9999_bad.{db.dialect}.sql",
                               sql="CREATE TABLE extra (x INTEGER);\nTHIS IS NOT SQL;\n")
    monkeypatch.setattr(migrations, "load", lambda d: [*real, bad])
    async with db.store(migrate=False) as store:
        with pytest.raises(StoreError, match=r"(?i)syntax"):
            await store.migrate(dry_run=True)
    assert await db.version() == LATEST


async def test_monitor_migrate_prints_the_versions_and_each_migration(tmp_path: Path) -> None:
    d = Db("sqlite", tmp_path)
    await d.apply(1)
    url = f"sqlite:///{d.path}"
    rc, out, err = await monitor("migrate", "--store", url, "--dry-run", cwd=tmp_path)
    assert rc == 0, err
    assert f"schema version: 1; this monitor's: {LATEST}" in out
    assert f"would apply {LATEST - 1} migration(s) (dry run" in out
    for m in migrations.load("sqlite")[1:]:
        assert m.name in out
    assert await d.version() == 1
    rc, out, err = await monitor("migrate", "--store", url, "--json", cwd=tmp_path)
    assert rc == 0, err
    data = json.loads(out)
    assert (data["current"], data["version"], data["applied"], data["dry_run"]) == (
        1, LATEST, True, False)
    assert [m["version"] for m in data["migrations"]] == list(range(2, LATEST + 1))
    rc, out, _ = await monitor("migrate", "--store", url, cwd=tmp_path)
    assert rc == 0 and "up to date: nothing to apply" in out
    # without --store: the config's store
    (tmp_path / "config.yaml").write_text(
        f"store: '{url}'\nfeeds:\n  - {{name: a, url: 'http://127.0.0.1:9/a'}}\n"
        "channels:\n  out: {type: file, path: out.jsonl}\n", encoding="utf-8")
    (tmp_path / "rules").mkdir()
    rc, out, err = await monitor("migrate", "--json", cwd=tmp_path)
    assert rc == 0, err
    assert json.loads(out)["current"] == LATEST
