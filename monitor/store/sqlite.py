"""The default store: one SQLite file (stdlib ``sqlite3``), WAL mode.

All database work runs on ONE connection owned by ONE worker thread
(``ThreadPoolExecutor(max_workers=1)``): calls are serialised, the event loop never
blocks on disk, and ``sqlite3``'s same-thread check stays on. Writes use
``BEGIN IMMEDIATE`` so that another process sharing the file waits (``busy_timeout``)
instead of failing half-way through a transaction.

Durability: in WAL mode a committed transaction is in the WAL file (in the OS page
cache) before ``COMMIT`` returns, so it survives the process being killed (``kill -9``)
with ``synchronous=NORMAL``; ``synchronous=FULL`` also makes it survive power loss or an
OS crash, at the price of one fsync per commit.

Times are stored as fixed-width UTC ISO text (see ``codec``), which SQLite compares
chronologically.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from monitor.core.model import ClusterInfo, Delivery, FeedState, GroupState
from monitor.errors import CodecError, StoreError
from monitor.log import get_logger
from monitor.store import migrations
from monitor.store.base import (
    LOG_STATES,
    Backlog,
    DedupSnapshot,
    DeliveryRecord,
    DeliveryStatus,
    Instance,
    PollSave,
    Rows,
    StoredStory,
    Table,
    not_empty,
    parents_first,
    referenced_first,
)
from monitor.store.codec import (
    FEED_COLUMNS,
    SourcesJson,
    alert_title,
    alert_to_json,
    column_text,
    delivery_from_row,
    dt_from_text,
    dt_to_text,
    feed_from_values,
    feed_to_row,
    one_source_json,
    opt_dt_from_text,
    opt_dt_to_text,
    readable_alert,
    story_from_json,
    story_to_json,
    strs_from_json,
    strs_to_json,
)
from monitor.store.diagnose import sqlite_error

log = get_logger(__name__)

T = TypeVar("T")

#: Host parameters per statement: far below SQLite's limit (32766 since 3.32, 999 before).
CHUNK = 400

_SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

_FEED_UPSERT = (
    f"INSERT INTO feeds ({', '.join(FEED_COLUMNS)}) VALUES ({', '.join('?' for _ in FEED_COLUMNS)}) "
    "ON CONFLICT (name) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in FEED_COLUMNS if c != "name")
    # a saved feed is nobody's claim any more
    + ", claimed_by = NULL"
)
_CLUSTER_UPSERT = (
    "INSERT INTO clusters (id, first_story, title, first_seen, last_seen, sources) "
    "VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, sources = excluded.sources"
)
_STORY_INSERT = (
    "INSERT INTO stories (id, feed, link, title, cluster, first_seen, published, payload) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)
#: Rows per statement of ``_in_statements`` at most (feeds: 64 × 27 host parameters).
ROWS_PER_STATEMENT = 64


def _in_statements(con: sqlite3.Connection, statement: Callable[[int], str],
                   rows: Sequence[tuple[object, ...]]) -> None:
    """``rows`` written by ``statement(k)`` (the SQL for ``k`` rows, cached), up to
    ``ROWS_PER_STATEMENT`` rows a statement and as many as the host parameter limit
    allows, ``k`` a power of two (seven statements at most, each prepared once).

    Not ``executemany``: it steps once per row and gives the interpreter's lock back at
    each step, and while the event loop is busy, taking it back waits up to a switch
    interval. 1,000 feed rows took 0.16-0.21 s and 35-41 ms of this thread's CPU that
    way, against 0.06 s and 27 ms in 64-row statements (a busy thread beside it in both)."""
    if not rows:
        return
    width = len(rows[0])
    most = max(1, min(ROWS_PER_STATEMENT,
                      con.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    i = 0
    while i < len(rows):
        k = 1 << (min(most, len(rows) - i).bit_length() - 1)
        con.execute(statement(k), [v for row in rows[i:i + k] for v in row])
        i += k


def _values(rows: int, width: int) -> str:
    one = f"({', '.join('?' * width)})"
    return ", ".join([one] * rows)


@functools.cache
def _feed_upsert(rows: int) -> str:
    """``_FEED_UPSERT`` for ``rows`` rows in one statement."""
    head, tail = _FEED_UPSERT.split(f" VALUES {_values(1, len(FEED_COLUMNS))} ")
    return f"{head} VALUES {_values(rows, len(FEED_COLUMNS))} {tail}"


@functools.cache
def _cluster_upsert(rows: int) -> str:
    """``_CLUSTER_UPSERT`` for ``rows`` rows in one statement."""
    head, tail = _CLUSTER_UPSERT.split(f" VALUES {_values(1, 6)} ")
    return f"{head} VALUES {_values(rows, 6)} {tail}"


@functools.cache
def _clusters_for_stories(rows: int) -> str:
    """A story whose cluster was not passed in ``clusters`` still gets a cluster row
    (the stories → clusters foreign key holds), unless the story itself is already
    stored (then its cluster is the one it was filed in): ``rows`` stories in one
    statement, each ``(cluster, first_story, title, first_seen, last_seen, sources,
    story id)``."""
    return ("INSERT INTO clusters (id, first_story, title, first_seen, last_seen, sources) "
            "SELECT column1, column2, column3, column4, column5, column6 FROM "
            f"(VALUES {_values(rows, 7)}) WHERE NOT EXISTS "
            "(SELECT 1 FROM stories WHERE id = column7) ON CONFLICT (id) DO NOTHING")


@functools.cache
def _story_insert(rows: int) -> str:
    """``_STORY_INSERT`` for ``rows`` rows in one statement."""
    head, tail = _STORY_INSERT.split(f" VALUES {_values(1, 8)} ")
    return f"{head} VALUES {_values(rows, 8)} {tail}"


_DELIVERY_INSERT = (
    "INSERT INTO deliveries (key, channel, parent_key, cluster, rule, payload, state, attempts, "
    "created, next_attempt, grp) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?) "
    "ON CONFLICT (key) DO NOTHING RETURNING id"
)
# the dedup snapshot: a cache outside the versioned schema (see Store.save_dedup_snapshot)
_SNAPSHOT_TABLE = (
    "CREATE TABLE IF NOT EXISTS dedup_snapshot (key TEXT PRIMARY KEY, taken TEXT NOT NULL, "
    "stories INTEGER NOT NULL, data BLOB NOT NULL)"
)
# ... and a big one in parts, a write transaction each (``save_dedup_snapshot``)
_SNAPSHOT_PARTS_TABLE = (
    "CREATE TABLE IF NOT EXISTS dedup_snapshot_parts (gen TEXT NOT NULL, part INTEGER NOT NULL, "
    "data BLOB NOT NULL, PRIMARY KEY (gen, part))"
)
#: A snapshot bigger than this is written in parts of this size, one short transaction
#: each: the store's one thread goes on with the polls' work between them. In one
#: transaction, 280 MB (570,000 stories) held it for 2 to 11 s, and every poll waited.
SNAPSHOT_PART = 4 * 2**20
#: ``data`` of a snapshot row whose bytes are in parts: this, then ``gen:parts:bytes``.
_PARTS_MARK = b"monitor-dedup-parts\x00"
_DELIVERY_COLUMNS = (
    "id, key, channel, state, attempts, created, next_attempt, sent_at, last_error, ref, "
    "rule, cluster, parent_key, payload"
)


def _k(s: str) -> str:
    """The stored form of a text value (see ``codec.column_text``)."""
    return column_text(s)


_FEED_SELECT = f"SELECT {', '.join(FEED_COLUMNS)} FROM feeds"


def _feed_row(state: FeedState) -> tuple[object, ...]:
    return tuple([column_text(v) if type(v) is str else v
                  for v in feed_to_row(state, dt_to_text)])


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


@contextlib.contextmanager
def _write(con: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: ``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any error."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def _read(con: sqlite3.Connection) -> Iterator[None]:
    """A read transaction: several SELECTs see one snapshot."""
    con.execute("BEGIN")
    try:
        yield
    finally:
        if con.in_transaction:
            con.execute("COMMIT")


def _instance(row: sqlite3.Row) -> Instance:
    dead = row["dead_since"]
    return Instance(
        id=row["id"], host=row["host"], pid=row["pid"], version=row["version"],
        started=dt_from_text(row["started"]), heartbeat=dt_from_text(row["heartbeat"]),
        dead_since=None if dead is None else dt_from_text(dead),
        feeds_retaken=row["feeds_retaken"], deliveries_retaken=row["deliveries_retaken"],
    )


def _status(row: sqlite3.Row) -> DeliveryStatus:
    return DeliveryStatus(
        id=row["id"],
        key=row["key"],
        channel=row["channel"],
        state=row["state"],
        attempts=row["attempts"],
        created=dt_from_text(row["created"]),
        next_attempt=opt_dt_from_text(row["next_attempt"]),
        sent_at=opt_dt_from_text(row["sent_at"]),
        last_error=row["last_error"],
        ref=row["ref"],
        rule=row["rule"],
        cluster=row["cluster"],
        parent_key=row["parent_key"],
        title=alert_title(row["payload"]),
    )


def _cluster(row: sqlite3.Row, members: tuple[str, ...]) -> ClusterInfo:
    return ClusterInfo(
        id=row["id"],
        first_story=row["first_story"],
        title=row["title"],
        first_seen=dt_from_text(row["first_seen"]),
        last_seen=dt_from_text(row["last_seen"]),
        sources=strs_from_json(row["sources"]),
        members=members,
    )


class SQLiteStore:
    """A ``Store`` in one SQLite file (or ``":memory:"``).

    ``synchronous`` is SQLite's ``PRAGMA synchronous`` (``NORMAL`` survives kill -9 in WAL
    mode; ``FULL`` also survives power loss). ``busy_timeout`` (seconds) is how long a
    statement waits for another process's write lock before failing with
    "database is locked".

    ``migrate=False`` opens without migrating (``monitor migrate`` then calls
    ``migrate``); a schema newer than the code is refused either way.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 10.0,
        migrate: bool = True,
    ) -> None:
        sync = synchronous.upper()
        if sync not in _SYNC_MODES:
            raise StoreError(f"synchronous must be one of {', '.join(_SYNC_MODES)}, not {synchronous!r}")
        self._path = os.fspath(path)
        self._sync = sync
        self._busy_ms = int(busy_timeout * 1000)
        self._auto_migrate = migrate
        self._executor: ThreadPoolExecutor | None = None
        self._con: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._sources_json = SourcesJson()  # clusters' sources, encoded incrementally

    @property
    def path(self) -> str:
        return self._path

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r})"

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        async with self._lock:
            if self._executor is not None:
                return
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
            loop = asyncio.get_running_loop()
            try:
                self._con = await loop.run_in_executor(executor, self._connect)
            except BaseException:
                executor.shutdown(wait=False)
                raise
            self._executor = executor

    async def close(self) -> None:
        async with self._lock:
            executor, con = self._executor, self._con
            if executor is None:
                return
            self._executor = self._con = None
            loop = asyncio.get_running_loop()
            try:
                if con is not None:
                    await loop.run_in_executor(executor, con.close)
            finally:
                executor.shutdown(wait=True)

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _connect(self) -> sqlite3.Connection:
        memory = self._path == ":memory:" or self._path.startswith("file:")
        if not memory:
            p = Path(self._path)
            try:
                try:
                    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                except FileExistsError:
                    raise StoreError(f"cannot open {self._path}: {p.parent} is not a directory") from None
                # Create the file owner-only before SQLite does; SQLite gives the -wal and
                # -shm files the same permissions as the database file.
                os.close(os.open(p, os.O_RDWR | os.O_CREAT, 0o600))
            except OSError as e:
                raise sqlite_error(e, path=self._path, what=f"cannot open {self._path}") from e
        try:
            con = sqlite3.connect(
                self._path,
                timeout=self._busy_ms / 1000,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                cached_statements=256,
                uri=self._path.startswith("file:"),
            )
        except sqlite3.Error as e:
            raise sqlite_error(e, path=self._path, what=f"cannot open {self._path}") from e
        try:
            con.row_factory = sqlite3.Row
            con.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            con.execute("PRAGMA foreign_keys = ON")
            if not memory:
                mode = self._wal(con)
                if str(mode).lower() != "wal":
                    raise StoreError(f"cannot open {self._path}: journal_mode is {mode}, not WAL")
            con.execute(f"PRAGMA synchronous = {self._sync}")
            if self._auto_migrate:
                self._migrate(con, dry_run=False)
            else:
                self._version(con, migrations.latest("sqlite"))
        except sqlite3.Error as e:
            con.close()
            raise sqlite_error(e, path=self._path, what=f"cannot open {self._path}") from e
        except BaseException:
            con.close()
            raise
        return con

    def _wal(self, con: sqlite3.Connection) -> str:
        """Switch to WAL. Changing the journal mode does not wait on the busy handler, so
        when several processes open a new file at once, retry until ``busy_timeout``."""
        deadline = time.monotonic() + self._busy_ms / 1000
        delay = 0.005
        while True:
            try:
                return str(con.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _version(self, con: sqlite3.Connection, known: int) -> int:
        """The schema version (``PRAGMA user_version``); one newer than ``known`` is refused."""
        current = int(con.execute("PRAGMA user_version").fetchone()[0])
        if current > known:
            raise migrations.too_new(self._path, current, known)
        return current

    def _migrate(self, con: sqlite3.Connection, *, dry_run: bool) -> migrations.Plan:
        """Check and migrate in one ``BEGIN IMMEDIATE`` transaction: the version is
        re-read under the write lock, so processes opening a new file together migrate
        it once (the others find it current). ``dry_run`` rolls the transaction back."""
        wanted = migrations.load("sqlite")
        current = self._version(con, len(wanted))

        def plan(current: int, applied: bool) -> migrations.Plan:
            return migrations.Plan(dialect="sqlite", where=self._path, current=current,
                                   target=len(wanted), steps=tuple(wanted[current:]),
                                   applied=applied, dry_run=dry_run)

        if current == len(wanted):
            return plan(current, False)
        con.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            current = self._version(con, len(wanted))
            for m in wanted[current:]:
                for stmt in _statements(m.sql):
                    con.execute(stmt)
                con.execute(f"PRAGMA user_version = {m.version}")
                if not dry_run:
                    log.info("store.migrated", path=self._path, version=m.version, file=m.name)
            con.execute("ROLLBACK" if dry_run else "COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return plan(current, not dry_run and current < len(wanted))

    async def migrate(self, *, dry_run: bool = False) -> migrations.Plan:
        return await self._run("migrate", lambda con: self._migrate(con, dry_run=dry_run))

    # -- plumbing -------------------------------------------------------------------------

    async def _run(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        executor, con = self._executor, self._con
        if executor is None or con is None:
            raise StoreError(f"{what}: the store is not open")

        def call() -> T:
            try:
                return fn(con)
            except sqlite3.Error as e:
                raise sqlite_error(e, path=self._path, what=what) from e
            except CodecError as e:
                raise StoreError(f"{what}: {e}") from e

        return await asyncio.get_running_loop().run_in_executor(executor, call)

    # -- feeds ----------------------------------------------------------------------------

    async def get_feeds(self) -> list[FeedState]:
        def work(con: sqlite3.Connection) -> list[FeedState]:
            rows = con.execute(f"{_FEED_SELECT} ORDER BY name").fetchall()
            return [feed_from_values(r, dt_from_text) for r in rows]

        return await self._run("get_feeds", work)

    async def get_feed(self, name: str) -> FeedState | None:
        def work(con: sqlite3.Connection) -> FeedState | None:
            row = con.execute(f"{_FEED_SELECT} WHERE name = ?", (name,)).fetchone()
            return None if row is None else feed_from_values(row, dt_from_text)

        return await self._run("get_feed", work)

    async def save_feed(self, state: FeedState) -> None:
        def work(con: sqlite3.Connection) -> None:
            row = _feed_row(state)
            with _write(con):
                con.execute(_FEED_UPSERT, row)

        await self._run(f"save_feed {state.name!r}", work)

    async def save_feeds(self, states: Sequence[FeedState]) -> None:
        if not states:
            return

        def work(con: sqlite3.Connection) -> None:
            rows = [_feed_row(s) for s in states]
            with _write(con):
                _in_statements(con, _feed_upsert, rows)

        await self._run(f"save_feeds ({len(states)})", work)

    async def add_feeds(self, states: Sequence[FeedState]) -> int:
        insert = (f"INSERT INTO feeds ({', '.join(FEED_COLUMNS)}) VALUES "
                  f"({', '.join('?' for _ in FEED_COLUMNS)}) ON CONFLICT (name) DO NOTHING")

        def work(con: sqlite3.Connection) -> int:
            n = 0
            with _write(con):
                for st in states:
                    n += con.execute(insert, _feed_row(st)).rowcount
            return n

        return await self._run(f"add_feeds ({len(states)})", work) if states else 0

    async def reschedule_feeds(
        self, moves: Sequence[tuple[str, datetime | None, datetime]]
    ) -> int:
        def work(con: sqlite3.Connection) -> int:
            n = 0
            with _write(con):
                for name, was, new in moves:
                    n += con.execute(
                        "UPDATE feeds SET next_poll = ? WHERE name = ? AND claimed_by IS NULL "
                        "AND next_poll IS ?", (dt_to_text(new), name, opt_dt_to_text(was)),
                    ).rowcount
            return n

        return await self._run(f"reschedule_feeds ({len(moves)})", work) if moves else 0

    async def delete_feed(self, name: str) -> None:
        def work(con: sqlite3.Connection) -> None:
            with _write(con):
                con.execute("DELETE FROM feeds WHERE name = ?", (name,))

        await self._run(f"delete_feed {name!r}", work)

    async def claim_due_feeds(
        self, now: datetime, *, limit: int, lease_until: datetime, by: str | None = None
    ) -> list[FeedState]:
        def work(con: sqlite3.Connection) -> list[FeedState]:
            if limit <= 0:
                return []
            now_t, lease_t = dt_to_text(now), dt_to_text(lease_until)
            with _write(con):
                # two searches of the ``feeds_next_poll`` index, each bounded by the
                # LIMIT (``x IS NULL OR x <= ?`` in one query scans the whole index when
                # fewer than LIMIT are due): the never-polled first, then the due ones
                due: list[tuple[str, str | None]] = list(con.execute(
                    "SELECT name, next_poll FROM feeds WHERE next_poll IS NULL AND gone = 0 "
                    "ORDER BY name LIMIT ?", (limit,)))
                if len(due) < limit:
                    due += con.execute(
                        "SELECT name, next_poll FROM feeds WHERE next_poll <= ? AND gone = 0 "
                        "ORDER BY next_poll, name LIMIT ?", (now_t, limit - len(due)))
                if not due:
                    return []
                names = [name for name, _ in due]
                con.execute(
                    f"UPDATE feeds SET next_poll = ?, claimed_by = ? "
                    f"WHERE name IN ({_marks(len(names))})",
                    (lease_t, by, *names),
                )
                rows = con.execute(
                    f"{_FEED_SELECT} WHERE name IN ({_marks(len(names))})", names
                ).fetchall()
            by_name = {r[0]: r for r in rows}  # name is the first column
            return [feed_from_values(by_name[n], dt_from_text,
                                     due=None if was is None else dt_from_text(was))
                    for n, was in due]

        return await self._run("claim_due_feeds", work)

    async def release_feeds(self, names: Sequence[str], *, by: str, now: datetime) -> int:
        def work(con: sqlite3.Connection) -> int:
            n = 0
            with _write(con):
                for chunk in _chunks(list(names)):
                    n += con.execute(
                        "UPDATE feeds SET next_poll = ?, claimed_by = NULL "
                        f"WHERE name IN ({_marks(len(chunk))}) AND claimed_by = ?",
                        (dt_to_text(now), *chunk, by)).rowcount
            return n

        return await self._run("release_feeds", work)

    # -- stories --------------------------------------------------------------------------

    async def known(self, ids: Iterable[str], links: Iterable[str]) -> set[str]:
        found_ids, found_links = await self.known_apart(ids, links)
        return found_ids | found_links

    async def known_apart(
        self, ids: Iterable[str], links: Iterable[str]
    ) -> tuple[set[str], set[str]]:
        # lookups use the stored form of each value; answers are the values given
        id_map = {_k(i): i for i in ids}
        link_map = {_k(x): x for x in links}
        id_list, link_list = list(id_map), list(link_map)

        def work(con: sqlite3.Connection) -> tuple[set[str], set[str]]:
            found: tuple[set[str], set[str]] = (set(), set())
            half = CHUNK // 2
            n = max(len(id_list), len(link_list))
            for i in range(0, n, half):
                a, b = id_list[i : i + half], link_list[i : i + half]
                parts, params = [], []
                if a:
                    parts.append(f"SELECT 0, id FROM stories WHERE id IN ({_marks(len(a))})")
                    params += a
                if b:
                    parts.append(f"SELECT 1, link FROM stories WHERE link IN ({_marks(len(b))})")
                    params += b
                for kind, v in con.execute(" UNION ALL ".join(parts), params):
                    found[kind].add(v)
            return ({id_map[v] for v in found[0] if v in id_map},
                    {link_map[v] for v in found[1] if v in link_map})

        if not id_list and not link_list:
            return set(), set()
        return await self._run("known", work)

    async def save_poll(
        self,
        state: FeedState,
        stories: Sequence[StoredStory],
        deliveries: Sequence[Delivery],
        clusters: Sequence[ClusterInfo] = (),
        merges: Sequence[tuple[str, str]] = (),
    ) -> list[Delivery]:
        def work(con: sqlite3.Connection) -> list[Delivery]:
            with _write(con):
                return _save_poll(con, self._sources_json, state, stories, deliveries, clusters,
                                  merges)

        return await self._run(f"save_poll {state.name!r}", work)

    async def save_polls(self, polls: Sequence[PollSave]) -> list[list[Delivery]]:
        def work(con: sqlite3.Connection) -> list[list[Delivery]]:
            with _write(con):
                return [_save_poll(con, self._sources_json, p.state, p.stories, p.deliveries,
                                   p.clusters, p.merges)
                        for p in polls]

        return await self._run(f"save_polls ({len(polls)} polls)", work)

    async def queue(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        def work(con: sqlite3.Connection) -> list[Delivery]:
            inserted: list[Delivery] = []
            with _write(con):
                for d in deliveries:
                    row = con.execute(
                        _DELIVERY_INSERT,
                        (_k(d.key), _k(d.channel),
                         None if d.parent_key is None else _k(d.parent_key),
                         _k(d.alert.cluster), _k(d.alert.match.rule), alert_to_json(d.alert),
                         d.attempts, dt_to_text(d.created),
                         dt_to_text(d.next_attempt or d.created),
                         None if d.group is None else _k(d.group)),
                    ).fetchone()
                    if row is not None:
                        inserted.append(replace(d, id=row[0]))
            return inserted

        return await self._run("queue", work)

    async def recent_stories(self, since: datetime, *, limit: int | None = None) -> list[StoredStory]:
        def work(con: sqlite3.Connection) -> list[StoredStory]:
            rows = con.execute(
                "SELECT payload, cluster FROM stories WHERE first_seen >= ? "
                "ORDER BY first_seen, id LIMIT ?",
                (dt_to_text(since), -1 if limit is None else limit),
            ).fetchall()
            return [StoredStory(story=story_from_json(r[0]), cluster=r[1]) for r in rows]

        return await self._run("recent_stories", work)

    async def watch_stories(
        self,
        on_stories: Callable[[list[StoredStory]], None],
        on_gap: Callable[[], Awaitable[None]],
    ) -> bool:
        return False  # one instance per SQLite file: nobody else saves stories

    @property
    def listening(self) -> bool | None:
        return None

    async def get_story(self, story_id: str) -> StoredStory | None:
        def work(con: sqlite3.Connection) -> StoredStory | None:
            r = con.execute("SELECT payload, cluster FROM stories WHERE id = ?", (_k(story_id),)).fetchone()
            return None if r is None else StoredStory(story=story_from_json(r[0]), cluster=r[1])

        return await self._run("get_story", work)

    async def save_dedup_snapshot(self, snapshot: DedupSnapshot) -> None:
        data = snapshot.data
        if len(data) <= SNAPSHOT_PART:
            old = await self._run("save_dedup_snapshot", functools.partial(
                _switch_snapshot, snapshot=snapshot, data=data, gen=None))
            await self._drop_snapshot_parts(old)
            return
        # in parts under a new generation, each its own transaction (the polls' store
        # calls run between them); then one small transaction points the row at them;
        # then the parts of other generations (the previous snapshot's, or those of a
        # save a crash cut short) go, a part per transaction
        gen = os.urandom(8).hex()
        view = memoryview(data)
        parts = range(0, len(data), SNAPSHOT_PART)
        for n, at in enumerate(parts):
            await self._run("save_dedup_snapshot", functools.partial(
                _snapshot_part, gen=gen, part=n, data=view[at:at + SNAPSHOT_PART]))
        mark = _PARTS_MARK + f"{gen}:{len(parts)}:{len(data)}".encode()
        old = await self._run("save_dedup_snapshot", functools.partial(
            _switch_snapshot, snapshot=snapshot, data=mark, gen=gen))
        await self._drop_snapshot_parts(old)

    async def _drop_snapshot_parts(self, parts: list[tuple[str, int]]) -> None:
        for g, part in parts:
            await self._run("save_dedup_snapshot", functools.partial(
                _drop_snapshot_part, gen=g, part=part))

    async def load_dedup_snapshot(self, key: str) -> DedupSnapshot | None:
        def work(con: sqlite3.Connection) -> DedupSnapshot | None:
            with _read(con):  # the row and its parts as one transaction saw them
                try:
                    r = con.execute("SELECT taken, stories, data FROM dedup_snapshot "
                                    "WHERE key = ?", (key,)).fetchone()
                except sqlite3.OperationalError as e:
                    if "no such table" in str(e):  # never saved one
                        return None
                    raise
                if r is None:
                    return None
                raw = bytes(r[2])
                data = _snapshot_parts(con, raw[len(_PARTS_MARK):]) \
                    if raw.startswith(_PARTS_MARK) else raw
            if data is None:
                return None
            return DedupSnapshot(key=key, taken=dt_from_text(r[0]), stories=r[1], data=data)

        return await self._run("load_dedup_snapshot", work)

    async def prune(self, before: datetime) -> int:
        def work(con: sqlite3.Connection) -> int:
            cut = dt_to_text(before)
            with _write(con):
                n = con.execute("DELETE FROM stories WHERE first_seen < ?", (cut,)).rowcount
                c = con.execute(
                    "DELETE FROM clusters WHERE NOT EXISTS "
                    "(SELECT 1 FROM stories WHERE stories.cluster = clusters.id)"
                ).rowcount
                d = con.execute(
                    "DELETE FROM deliveries WHERE state IN ('sent', 'failed') AND created < ?", (cut,)
                ).rowcount
                con.execute("DELETE FROM cluster_merges WHERE NOT EXISTS "
                            "(SELECT 1 FROM clusters WHERE clusters.id = cluster_merges.into_id)")
            log.debug("store.pruned", stories=n, clusters=c, deliveries=d)
            return int(n)

        return await self._run("prune", work)

    # -- clusters -------------------------------------------------------------------------

    def _members(self, con: sqlite3.Connection, ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {i: [] for i in ids}
        for chunk in _chunks(ids):
            for cluster, sid in con.execute(
                f"SELECT cluster, id FROM stories WHERE cluster IN ({_marks(len(chunk))}) "
                "ORDER BY first_seen, id",
                tuple(chunk),
            ):
                out[cluster].append(sid)
        return {k: tuple(v) for k, v in out.items()}

    async def get_cluster(self, cluster_id: str) -> ClusterInfo | None:
        def work(con: sqlite3.Connection) -> ClusterInfo | None:
            with _read(con):
                key = _k(cluster_id)
                row = con.execute("SELECT * FROM clusters WHERE id = ?", (key,)).fetchone()
                if row is None:
                    return None
                return _cluster(row, self._members(con, [key])[key])

        return await self._run("get_cluster", work)

    async def list_clusters(self, *, since: datetime | None = None, limit: int = 50) -> list[ClusterInfo]:
        def work(con: sqlite3.Connection) -> list[ClusterInfo]:
            with _read(con):
                if since is None:
                    rows = con.execute(
                        "SELECT * FROM clusters ORDER BY last_seen DESC, id LIMIT ?", (limit,)
                    ).fetchall()
                else:
                    rows = con.execute(
                        "SELECT * FROM clusters WHERE last_seen >= ? ORDER BY last_seen DESC, id LIMIT ?",
                        (dt_to_text(since), limit),
                    ).fetchall()
                members = self._members(con, [r["id"] for r in rows])
            return [_cluster(r, members[r["id"]]) for r in rows]

        return await self._run("list_clusters", work)

    # -- outbox ---------------------------------------------------------------------------

    async def claim_deliveries(
        self, now: datetime, *, limit: int, lease_until: datetime,
        channel: str | None = None, exclude: Sequence[str] = (), by: str | None = None,
    ) -> list[Delivery]:
        which, args = "", []
        if channel is not None:
            which, args = "AND d.channel = ? ", [channel]
        if exclude:
            which += f"AND d.channel NOT IN ({_marks(len(exclude))}) "
            args += list(exclude)

        def work(con: sqlite3.Connection) -> list[Delivery]:
            if limit <= 0:
                return []
            select = (
                "SELECT d.id, d.key, d.channel, d.parent_key, d.payload, d.attempts, d.created, "
                "d.requeued, d.grp, d.next_attempt, "
                "CASE WHEN p.state = 'sent' THEN p.ref END AS parent_ref, "
                "p.state = 'pending' AS parent_pending "
                "FROM deliveries d LEFT JOIN deliveries p ON p.key = d.parent_key "
                "WHERE d.state = 'pending' AND d.next_attempt <= ? " + which)
            with _write(con):
                rows = con.execute(
                    select +
                    # an update waits for an alert that is waiting to be retried, so that it
                    # can be threaded under it (a due alert comes first in the same batch)
                    "AND (p.state IS NULL OR p.state <> 'pending' OR p.next_attempt <= ?) "
                    # in the order they came due: one channel's read from the index
                    # deliveries_claim in order (no sort), stopping at the limit
                    "ORDER BY d.next_attempt, d.id LIMIT ?",
                    (dt_to_text(now), *args, dt_to_text(now), limit),
                ).fetchall()
                keys = {r["key"] for r in rows}
                parents = {r["parent_key"] for r in rows
                           if r["parent_pending"] and r["parent_key"] not in keys}
                if parents:  # due, but after the limit (a retry that came due later)
                    rows += con.execute(
                        select + f"AND d.key IN ({_marks(len(parents))})",
                        (dt_to_text(now), *args, *parents),
                    ).fetchall()
                    rows = behind_parents(rows, limit)
                keys = {r["key"] for r in rows}
                rows = [r for r in rows if not r["parent_pending"] or r["parent_key"] in keys]
                if not rows:
                    return []
                con.execute(
                    f"UPDATE deliveries SET next_attempt = ?, claimed_by = ? "
                    f"WHERE id IN ({_marks(len(rows))})",
                    (dt_to_text(lease_until), by, *(r["id"] for r in rows)),
                )
            return parents_first([
                delivery_from_row(r, created=dt_from_text(r["created"]), next_attempt=lease_until,
                                  thread_ref=r["parent_ref"],
                                  requeued=dt_from_text(r["requeued"]) if r["requeued"] else None,
                                  group=r["grp"])
                for r in rows
            ])

        return await self._run("claim_deliveries", work)

    async def mark_sent(self, delivery_id: int, now: datetime, ref: str | None) -> None:
        def work(con: sqlite3.Connection) -> None:
            t = dt_to_text(now)
            with _write(con):
                n = con.execute(
                    "UPDATE deliveries SET state = 'sent', sent_at = ?, last_attempt = ?, ref = ?, "
                    "attempts = attempts + 1, next_attempt = NULL "
                    "WHERE id = ? AND state <> 'sent'",
                    (t, t, None if ref is None else _k(ref), delivery_id),
                ).rowcount
                if n == 0:
                    _exists(con, delivery_id)

        await self._run(f"mark_sent {delivery_id}", work)

    async def mark_sent_many(
        self, delivery_ids: Sequence[int], now: datetime, ref: str | None
    ) -> None:
        ids = list(dict.fromkeys(delivery_ids))
        if not ids:
            return

        def work(con: sqlite3.Connection) -> None:
            t = dt_to_text(now)
            r = None if ref is None else _k(ref)
            with _write(con):
                for chunk in _chunks(ids):
                    con.execute(
                        "UPDATE deliveries SET state = 'sent', sent_at = ?, last_attempt = ?, "
                        "ref = ?, attempts = attempts + 1, next_attempt = NULL "
                        f"WHERE state <> 'sent' AND id IN ({_marks(len(chunk))})",
                        (t, t, r, *chunk),
                    )
                    found = {row[0] for row in con.execute(
                        f"SELECT id FROM deliveries WHERE id IN ({_marks(len(chunk))})",
                        chunk,
                    )}
                    missing = [i for i in chunk if i not in found]
                    if missing:
                        raise StoreError(f"no delivery with id {missing[0]}")

        await self._run(f"mark_sent {len(ids)} deliveries", work)

    async def mark_sent_each(self, marks: Sequence[tuple[int, datetime, str | None]]) -> None:
        if not marks:
            return
        rows = [(dt_to_text(at), dt_to_text(at), None if ref is None else _k(ref), i)
                for i, at, ref in marks]
        ids = list(dict.fromkeys(i for i, _, _ in marks))

        def work(con: sqlite3.Connection) -> None:
            with _write(con):
                con.executemany(
                    "UPDATE deliveries SET state = 'sent', sent_at = ?, last_attempt = ?, "
                    "ref = ?, attempts = attempts + 1, next_attempt = NULL "
                    "WHERE id = ? AND state <> 'sent'", rows)
                for chunk in _chunks(ids):
                    found = {row[0] for row in con.execute(
                        f"SELECT id FROM deliveries WHERE id IN ({_marks(len(chunk))})", chunk)}
                    missing = [i for i in chunk if i not in found]
                    if missing:
                        raise StoreError(f"no delivery with id {missing[0]}")

        await self._run(f"mark_sent {len(ids)} deliveries", work)

    async def mark_failed(
        self, delivery_id: int, now: datetime, error: str, next_attempt: datetime | None
    ) -> None:
        def work(con: sqlite3.Connection) -> None:
            with _write(con):
                n = con.execute(
                    "UPDATE deliveries SET attempts = attempts + 1, last_error = ?, last_attempt = ?, "
                    "state = CASE WHEN ? IS NULL THEN 'failed' ELSE 'pending' END, next_attempt = ?, "
                    "claimed_by = NULL WHERE id = ? AND state = 'pending'",
                    (_k(error), dt_to_text(now), *(2 * (opt_dt_to_text(next_attempt),)), delivery_id),
                ).rowcount
                if n == 0:
                    _exists(con, delivery_id)

        await self._run(f"mark_failed {delivery_id}", work)

    async def requeue_failed(
        self, now: datetime, *, channel: str | None = None, ids: Sequence[int] = ()
    ) -> list[int]:
        def work(con: sqlite3.Connection) -> list[int]:
            where, args = "state = 'failed'", list[object]()
            if channel is not None:
                where += " AND channel = ?"
                args.append(_k(channel))
            if ids:
                where += f" AND id IN ({_marks(len(ids))})"
                args += list(ids)
            with _write(con):
                found = [r[0] for r in con.execute(
                    f"SELECT id FROM deliveries WHERE {where} ORDER BY created, id", args)]
                for chunk in _chunks(found):
                    con.execute(
                        "UPDATE deliveries SET state = 'pending', next_attempt = ?, requeued = ?, "
                        f"claimed_by = NULL WHERE id IN ({_marks(len(chunk))})",
                        (dt_to_text(now), dt_to_text(now), *chunk),
                    )
            return found

        return await self._run("requeue_failed", work)

    async def release(self, delivery_id: int, next_attempt: datetime) -> None:
        def work(con: sqlite3.Connection) -> None:
            with _write(con):
                n = con.execute(
                    "UPDATE deliveries SET next_attempt = ?, claimed_by = NULL "
                    "WHERE id = ? AND state = 'pending'",
                    (dt_to_text(next_attempt), delivery_id),
                ).rowcount
                if n == 0:
                    _exists(con, delivery_id)

        await self._run(f"release {delivery_id}", work)

    async def release_many(self, delivery_ids: Sequence[int], next_attempt: datetime) -> None:
        await self._update_many(
            "release", delivery_ids,
            "UPDATE deliveries SET next_attempt = ?, claimed_by = NULL WHERE state = 'pending' "
            "AND id IN ({})", (dt_to_text(next_attempt),))

    async def mark_failed_many(
        self, delivery_ids: Sequence[int], now: datetime, error: str,
        next_attempt: datetime | None,
    ) -> None:
        nxt = opt_dt_to_text(next_attempt)
        await self._update_many(
            "mark_failed", delivery_ids,
            "UPDATE deliveries SET attempts = attempts + 1, last_error = ?, last_attempt = ?, "
            "state = CASE WHEN ? IS NULL THEN 'failed' ELSE 'pending' END, next_attempt = ?, "
            "claimed_by = NULL WHERE state = 'pending' AND id IN ({})",
            (_k(error), dt_to_text(now), nxt, nxt))

    async def _update_many(self, what: str, delivery_ids: Sequence[int], sql: str,
                           args: tuple[object, ...]) -> None:
        """One UPDATE of the given deliveries (``{}``: their ids' placeholders), in one
        transaction; an unknown id raises ``StoreError`` and changes none."""
        ids = list(dict.fromkeys(delivery_ids))
        if not ids:
            return

        def work(con: sqlite3.Connection) -> None:
            with _write(con):
                for chunk in _chunks(ids):
                    con.execute(sql.format(_marks(len(chunk))), (*args, *chunk))
                    found = {row[0] for row in con.execute(
                        f"SELECT id FROM deliveries WHERE id IN ({_marks(len(chunk))})", chunk)}
                    missing = [i for i in chunk if i not in found]
                    if missing:
                        raise StoreError(f"no delivery with id {missing[0]}")

        await self._run(f"{what} {len(ids)} deliveries", work)

    async def cluster_alerts(self, cluster: str) -> list[Delivery]:
        def work(con: sqlite3.Connection) -> list[Delivery]:
            key = _k(cluster)
            key = _merged_ids(con, {key}).get(key, key)
            rows = con.execute(
                "SELECT id, key, channel, parent_key, payload, attempts, created, next_attempt "
                "FROM deliveries WHERE cluster = ? AND parent_key IS NULL ORDER BY created, id",
                (key,),
            ).fetchall()
            return [
                delivery_from_row(r, created=dt_from_text(r["created"]),
                                  next_attempt=opt_dt_from_text(r["next_attempt"]))
                for r in rows
            ]

        return await self._run("cluster_alerts", work)

    async def group_states(self, groups: Collection[str]) -> dict[str, GroupState]:
        keys = sorted({_k(g) for g in groups})

        def work(con: sqlite3.Connection) -> dict[str, GroupState]:
            out: dict[str, GroupState] = {}
            for g in keys:
                pending = con.execute(
                    "SELECT MIN(created) FROM deliveries WHERE grp = ? AND state = 'pending'",
                    (g,),
                ).fetchone()[0]
                sent = con.execute(
                    "SELECT sent_at, ref FROM deliveries WHERE grp = ? AND state = 'sent' "
                    "ORDER BY sent_at DESC, id DESC LIMIT 1",
                    (g,),
                ).fetchone()
                if pending is None and sent is None:
                    continue
                out[g] = GroupState(
                    group=g,
                    last_sent=None if sent is None else dt_from_text(sent["sent_at"]),
                    ref=None if sent is None else sent["ref"],
                    pending_since=opt_dt_from_text(pending),
                )
            return out

        if not keys:
            return {}
        return await self._run("group_states", work)

    async def merge_clusters(self, merges: Sequence[tuple[str, str]]) -> None:
        def work(con: sqlite3.Connection) -> None:
            with _write(con):
                _merge(con, merges)

        if merges:
            await self._run("merge_clusters", work)

    async def deliveries(self, *, state: str | None = None, limit: int = 100) -> list[DeliveryStatus]:
        def work(con: sqlite3.Connection) -> list[DeliveryStatus]:
            if state is None:
                rows = con.execute(
                    f"SELECT {_DELIVERY_COLUMNS} FROM deliveries ORDER BY created DESC, id DESC LIMIT ?",
                    (limit,),
                ).fetchall()
            else:
                rows = con.execute(
                    f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE state = ? "
                    "ORDER BY created DESC, id DESC LIMIT ?",
                    (state, limit),
                ).fetchall()
            return [_status(r) for r in rows]

        return await self._run("deliveries", work)

    async def delivery_log(
        self, *, since: datetime, now: datetime, rule: str | None = None,
        channel: str | None = None, state: str | None = None, limit: int = 1000,
    ) -> list[DeliveryRecord]:
        if state is not None and state not in LOG_STATES:
            raise ValueError(f"state must be one of {', '.join(LOG_STATES)}, not {state!r}")

        def work(con: sqlite3.Connection) -> list[DeliveryRecord]:
            s = dt_to_text(since)
            where = ["(created >= ? OR last_attempt >= ? OR sent_at >= ?)"]
            args: list[object] = [s, s, s]
            if rule is not None:
                where.append("rule = ?")
                args.append(_k(rule))
            if channel is not None:
                where.append("channel = ?")
                args.append(_k(channel))
            if state == "held":
                where.append("state = 'pending' AND next_attempt > ?")
                args.append(dt_to_text(now))
            elif state is not None:
                where.append("state = ?")
                args.append(state)
            rows = con.execute(
                f"SELECT {_DELIVERY_COLUMNS}, rule, payload FROM deliveries "
                f"WHERE {' AND '.join(where)} ORDER BY created DESC, id DESC LIMIT ?",
                (*args, max(0, limit)),
            ).fetchall()
            return [DeliveryRecord(status=_status(r), rule=r["rule"],
                                   alert=readable_alert(r["payload"])) for r in rows]

        return await self._run("delivery_log", work)

    async def last_alert(self, cluster: str, rule: str, channel: str) -> datetime | None:
        def work(con: sqlite3.Connection) -> datetime | None:
            row = con.execute(
                "SELECT MAX(created) FROM deliveries WHERE cluster = ? AND rule = ? AND channel = ?",
                (_k(cluster), _k(rule), _k(channel)),
            ).fetchone()
            return opt_dt_from_text(row[0])

        return await self._run("last_alert", work)

    async def count_pending(self) -> int:
        def work(con: sqlite3.Connection) -> int:
            return int(con.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'").fetchone()[0])

        return await self._run("count_pending", work)

    async def rule_hits(self, since: datetime) -> dict[str, int]:
        def work(con: sqlite3.Connection) -> dict[str, int]:
            rows = con.execute(
                "SELECT rule, COUNT(DISTINCT cluster) FROM deliveries "
                "WHERE parent_key IS NULL AND created >= ? GROUP BY rule",
                (dt_to_text(since),),
            ).fetchall()
            return {str(r[0]): int(r[1]) for r in rows}

        return await self._run("rule_hits", work)

    async def backlog(self) -> dict[str, Backlog]:
        def work(con: sqlite3.Connection) -> dict[str, Backlog]:
            rows = con.execute(
                "SELECT channel, COUNT(*), MIN(created) FROM deliveries "
                "WHERE state = 'pending' GROUP BY channel").fetchall()
            return {r[0]: Backlog(pending=int(r[1]), oldest=dt_from_text(r[2])) for r in rows}

        return await self._run("backlog", work)


    # -- instances ------------------------------------------------------------------------

    def outage(self) -> dict[str, Any] | None:
        return None  # a file: there is no server to lose

    async def heartbeat(
        self, me: Instance, now: datetime, *, dead_after: float | None
    ) -> list[Instance]:
        def work(con: sqlite3.Connection) -> list[Instance]:
            t = dt_to_text(now)
            with _write(con):
                was = con.execute("SELECT dead_since FROM instances WHERE id = ?",
                                  (me.id,)).fetchone()
                if was is not None and was[0] is not None:
                    log.warning("instance.revived", instance=me.id, declared_dead=was[0],
                                note="another instance took this one for dead and retook "
                                "its claims; polls in flight here may be repeated there")
                con.execute(
                    "INSERT INTO instances (id, host, pid, version, started, heartbeat) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                    "heartbeat = excluded.heartbeat, dead_since = NULL, feeds_retaken = 0, "
                    "deliveries_retaken = 0",
                    (me.id, _k(me.host), me.pid, _k(me.version), dt_to_text(me.started), t))
                if dead_after is None:
                    return []
                cut = dt_to_text(now - timedelta(seconds=dead_after))
                dead = con.execute(
                    "SELECT * FROM instances WHERE dead_since IS NULL AND heartbeat < ? "
                    "AND id <> ?", (cut, me.id)).fetchall()
                out: list[Instance] = []
                for r in dead:
                    feeds = con.execute(
                        "UPDATE feeds SET next_poll = ?, claimed_by = NULL WHERE claimed_by = ?",
                        (t, r["id"])).rowcount
                    deliveries = con.execute(
                        "UPDATE deliveries SET next_attempt = MIN(next_attempt, ?), "
                        "claimed_by = NULL WHERE claimed_by = ? AND state = 'pending'",
                        (t, r["id"])).rowcount
                    con.execute(
                        "UPDATE instances SET dead_since = ?, feeds_retaken = ?, "
                        "deliveries_retaken = ? WHERE id = ?", (t, feeds, deliveries, r["id"]))
                    out.append(replace(_instance(r), dead_since=now, feeds_retaken=feeds,
                                       deliveries_retaken=deliveries))
                con.execute("DELETE FROM instances WHERE dead_since < ?",
                            (dt_to_text(now - timedelta(days=1)),))
            return out

        return await self._run("heartbeat", work)

    async def instances(self, *, since: datetime) -> list[Instance]:
        def work(con: sqlite3.Connection) -> list[Instance]:
            rows = con.execute(
                "SELECT * FROM instances WHERE dead_since IS NULL OR dead_since >= ? "
                "ORDER BY started, id", (dt_to_text(since),)).fetchall()
            return [_instance(r) for r in rows]

        return await self._run("instances", work)

    async def leave(self, instance_id: str) -> None:
        def work(con: sqlite3.Connection) -> None:
            with _write(con):
                con.execute("DELETE FROM instances WHERE id = ?", (instance_id,))

        await self._run("leave", work)

    # -- copy -----------------------------------------------------------------------------

    async def tables(self) -> list[Table]:
        return await self._run("tables", _tables)

    async def export_rows(self, tables: Sequence[Table], *, batch: int) -> AsyncGenerator[Rows, None]:
        # BEGIN (deferred): the snapshot is taken at the first SELECT and held to COMMIT
        await self._run("store copy: read", lambda con: con.execute("BEGIN"))
        try:
            for t in tables:
                cur = await self._run(f"store copy: read {t.name}", _select(t))
                while rows := await self._run(f"store copy: read {t.name}", _fetch(cur, batch)):
                    yield t, [tuple(r) for r in rows]
        finally:
            await self._run("store copy: read", _end_read)

    async def import_rows(self, rows: AsyncIterable[Rows], *, replace: bool = False) -> dict[str, int]:
        def begin(con: sqlite3.Connection) -> list[Table]:
            con.execute("BEGIN IMMEDIATE")
            try:
                tables = _tables(con)
                full = {t.name: n for t in tables
                        if (n := con.execute(f'SELECT count(*) FROM "{t.name}"').fetchone()[0])}
                if full and not replace:
                    raise not_empty(self._path, full)
                for t in reversed(tables):
                    con.execute(f'DELETE FROM "{t.name}"')
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return tables

        def insert(con: sqlite3.Connection, *, t: Table, batch: Sequence[tuple[object, ...]]) -> None:
            cols = ", ".join(f'"{c}"' for c in t.columns)
            con.executemany(f'INSERT INTO "{t.name}" ({cols}) VALUES ({_marks(len(t.columns))})',
                            [tuple(_to_sqlite(v) for v in row) for row in batch])

        tables = {t.name: t for t in await self._run("store copy: write", begin)}
        counts = dict.fromkeys(tables, 0)
        try:
            async for t, batch in rows:
                mine = tables.get(t.name)
                if mine is None or set(mine.columns) != set(t.columns):
                    raise StoreError(f"store copy: table {t.name} ({', '.join(t.columns)}) does "
                                     f"not match {self._path}'s schema")
                await self._run(f"store copy: write {t.name}", functools.partial(insert, t=t, batch=batch))
                counts[t.name] += len(batch)
            await self._run("store copy: commit", lambda con: con.execute("COMMIT"))
        except BaseException:
            await asyncio.shield(self._run("store copy: rollback", _end_write))
            raise
        return counts


def _save_poll(
    con: sqlite3.Connection,
    sources_json: SourcesJson,
    state: FeedState,
    stories: Sequence[StoredStory],
    deliveries: Sequence[Delivery],
    clusters: Sequence[ClusterInfo],
    merges: Sequence[tuple[str, str]],
) -> list[Delivery]:
    """``Store.save_poll`` inside the caller's transaction."""
    inserted: list[Delivery] = []
    _merge(con, merges)
    con.execute(_FEED_UPSERT, _feed_row(state))
    moved = _merged_ids(con, {*(st.cluster for st in stories), *(c.id for c in clusters),
                              *(d.alert.cluster for d in deliveries)})
    if moved:  # filed by an instance that has not heard of a merge yet
        stories_ = [replace(st, cluster=moved.get(st.cluster, st.cluster))
                    for st in stories]
        clusters_ = [replace(c, id=moved.get(c.id, c.id)) for c in clusters]
    else:
        stories_, clusters_ = list(stories), list(clusters)
    if clusters_:
        _in_statements(
            con, _cluster_upsert,
            [
                (
                    _k(c.id),
                    _k(c.first_story),
                    _k(c.title),
                    dt_to_text(c.first_seen),
                    dt_to_text(c.last_seen),
                    sources_json(c.id, c.sources),
                )
                for c in clusters_
            ],
        )
    if stories_:
        rows = []
        auto = []
        for st in stories_:
            s = st.story
            seen = dt_to_text(s.first_seen)
            sid, cluster, title = _k(s.id), _k(st.cluster), _k(s.title)
            rows.append(
                (sid, _k(s.feed), _k(s.link), title, cluster, seen,
                 dt_to_text(s.published), story_to_json(s))
            )
            auto.append((cluster, sid, title, seen, seen, one_source_json(s.feed), sid))
        _in_statements(con, _clusters_for_stories, auto)
        _in_statements(con, _story_insert, rows)
    for d in deliveries:
        row = con.execute(
            _DELIVERY_INSERT,
            (
                _k(d.key),
                _k(d.channel),
                None if d.parent_key is None else _k(d.parent_key),
                _k(moved.get(d.alert.cluster, d.alert.cluster)),
                _k(d.alert.match.rule),
                alert_to_json(d.alert),
                d.attempts,
                dt_to_text(d.created),
                dt_to_text(d.next_attempt or d.created),
                None if d.group is None else _k(d.group),
            ),
        ).fetchone()
        if row is not None:
            inserted.append(replace(d, id=row[0]))
    return inserted


def _snapshot_part(con: sqlite3.Connection, *, gen: str, part: int, data: memoryview) -> None:
    with _write(con):
        con.execute(_SNAPSHOT_PARTS_TABLE)
        con.execute("INSERT OR REPLACE INTO dedup_snapshot_parts (gen, part, data) "
                    "VALUES (?, ?, ?)", (gen, part, data))


def _switch_snapshot(con: sqlite3.Connection, *, snapshot: DedupSnapshot, data: bytes,
                     gen: str | None) -> list[tuple[str, int]]:
    """The row of the one snapshot, now ``snapshot`` (its bytes, or the mark of its
    parts under ``gen``); returns the parts of other generations, to be dropped. (Saves
    are one at a time: one instance per SQLite file, and ``DedupState`` saves under a
    lock; so no other generation is still being written.)"""
    with _write(con):
        con.execute(_SNAPSHOT_TABLE)
        con.execute("DELETE FROM dedup_snapshot")
        con.execute("INSERT INTO dedup_snapshot (key, taken, stories, data) VALUES (?, ?, ?, ?)",
                    (snapshot.key, dt_to_text(snapshot.taken), snapshot.stories, data))
        exists = con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                             "AND name = 'dedup_snapshot_parts'").fetchone()
        if not exists:
            return []
        return [(g, p) for g, p in con.execute(
            "SELECT gen, part FROM dedup_snapshot_parts WHERE gen IS NOT ? ORDER BY gen, part",
            (gen,))]


def _drop_snapshot_part(con: sqlite3.Connection, *, gen: str, part: int) -> None:
    with _write(con):
        con.execute("DELETE FROM dedup_snapshot_parts WHERE gen = ? AND part = ?", (gen, part))


def _snapshot_parts(con: sqlite3.Connection, mark: bytes) -> bytes | None:
    """The bytes of a snapshot saved in parts (``gen:parts:bytes``); None when they are
    not all there (a cache: the index is rebuilt instead)."""
    try:
        gen, count, size = mark.decode().split(":")
        n, total = int(count), int(size)
    except ValueError:
        return None
    rows = con.execute("SELECT part, data FROM dedup_snapshot_parts WHERE gen = ? ORDER BY part",
                       (gen,)).fetchall()
    if [r[0] for r in rows] != list(range(n)):
        return None
    data = b"".join(bytes(r[1]) for r in rows)
    return data if len(data) == total else None


def _merge(con: sqlite3.Connection, merges: Sequence[tuple[str, str]]) -> None:
    """``Store.merge_clusters`` inside the caller's transaction."""
    for gone, into in merges:
        g, i = _k(gone), _k(into)
        i = _merged_ids(con, {i}).get(i, i)  # the survivor may itself have gone since
        if g == i:
            continue
        con.execute("UPDATE cluster_merges SET into_id = ? WHERE into_id = ?", (i, g))
        con.execute("INSERT INTO cluster_merges (gone, into_id) VALUES (?, ?) "
                    "ON CONFLICT (gone) DO UPDATE SET into_id = excluded.into_id",
                    (g, i))
        old = con.execute("SELECT * FROM clusters WHERE id = ?", (g,)).fetchone()
        if old is None:
            continue
        new = con.execute("SELECT * FROM clusters WHERE id = ?", (i,)).fetchone()
        if new is None:
            con.execute(
                "INSERT INTO clusters (id, first_story, title, first_seen, last_seen,"
                " sources) VALUES (?, ?, ?, ?, ?, ?)",
                (i, old["first_story"], old["title"], old["first_seen"],
                 old["last_seen"], old["sources"]))
        else:
            first = old if old["first_seen"] < new["first_seen"] else new
            sources = dict.fromkeys(
                (*strs_from_json(new["sources"]), *strs_from_json(old["sources"])))
            con.execute(
                "UPDATE clusters SET first_story = ?, title = ?, first_seen = ?,"
                " last_seen = MAX(last_seen, ?), sources = ? WHERE id = ?",
                (first["first_story"], first["title"], first["first_seen"],
                 old["last_seen"], strs_to_json(tuple(sources)), i))
        con.execute("UPDATE stories SET cluster = ? WHERE cluster = ?", (i, g))
        con.execute("UPDATE deliveries SET cluster = ? WHERE cluster = ?", (i, g))
        con.execute("DELETE FROM clusters WHERE id = ?", (g,))


def _merged_ids(con: sqlite3.Connection, ids: set[str]) -> dict[str, str]:
    """The ids among ``ids`` that were merged into another cluster -> that cluster."""
    out: dict[str, str] = {}
    todo = [_k(i) for i in ids]
    for chunk in _chunks(todo):
        out.update(con.execute(
            f"SELECT gone, into_id FROM cluster_merges WHERE gone IN ({_marks(len(chunk))})",
            tuple(chunk)).fetchall())
    return out


def behind_parents(rows: list[sqlite3.Row], limit: int) -> list[sqlite3.Row]:
    """The first ``limit`` of a claim's candidates (in the order they came due, and the
    pending alerts of their updates) once each update is moved right behind its alert:
    a claim that holds an update holds its alert too, and one too small for both takes
    the alert (the update waits until the alert is sent)."""
    place = {r["key"]: (r["next_attempt"], r["id"]) for r in rows}

    def key(r: sqlite3.Row) -> tuple[tuple[str, int], bool, int]:
        parent = place.get(r["parent_key"]) if r["parent_pending"] else None
        return (parent or place[r["key"]], parent is not None, r["id"])

    return sorted(rows, key=key)[:limit]


def _exists(con: sqlite3.Connection, delivery_id: int) -> None:
    """Raise StoreError when no delivery has this id (a finished one is left as it is)."""
    if con.execute("SELECT 1 FROM deliveries WHERE id = ?", (delivery_id,)).fetchone() is None:
        raise StoreError(f"no delivery with id {delivery_id}")


def _statements(script: str) -> Iterator[str]:
    """Split an SQL script into complete statements (``executescript`` would COMMIT)."""
    buf: list[str] = []
    for line in script.splitlines(keepends=True):
        if not buf and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buf.append(line)
        text = "".join(buf)
        if sqlite3.complete_statement(text):
            yield text.strip()
            buf = []
    if "".join(buf).strip():
        raise StoreError(f"incomplete SQL statement in migration: {''.join(buf)[:80]!r}")



def _tables(con: sqlite3.Connection) -> list[Table]:
    names = [r[0] for r in con.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    tables, refs = [], {}
    for name in names:
        info = con.execute(f'PRAGMA table_info("{name}")').fetchall()
        tables.append(Table(name=name, columns=tuple(r["name"] for r in info),
                            kinds=tuple(_sqlite_kind(r["type"]) for r in info)))
        refs[name] = {r["table"] for r in con.execute(f'PRAGMA foreign_key_list("{name}")')}
    return referenced_first(tables, refs)


def _select(t: Table) -> Callable[[sqlite3.Connection], sqlite3.Cursor]:
    cols = ", ".join(f'"{c}"' for c in t.columns)
    return lambda con: con.execute(f'SELECT {cols} FROM "{t.name}" ORDER BY rowid')


def _fetch(cur: sqlite3.Cursor, n: int) -> Callable[[sqlite3.Connection], list[sqlite3.Row]]:
    return lambda con: cur.fetchmany(n)


def _sqlite_kind(declared: str) -> str:
    t = declared.upper()
    return "int" if "INT" in t else "real" if any(x in t for x in ("REAL", "FLOA", "DOUB")) else "text"


def _to_sqlite(v: object) -> object:
    """A value exported by either store, as SQLite holds it."""
    if isinstance(v, datetime):
        return dt_to_text(v)
    if isinstance(v, bool):
        return int(v)
    return v


def _end_read(con: sqlite3.Connection) -> None:
    if con.in_transaction:
        con.execute("COMMIT")


def _end_write(con: sqlite3.Connection) -> None:
    if con.in_transaction:
        con.execute("ROLLBACK")

