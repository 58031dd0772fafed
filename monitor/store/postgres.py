"""The shared store: PostgreSQL through an asyncpg pool.

Several daemon instances may share one database: ``claim_due_feeds`` and
``claim_deliveries`` lock their rows with ``SELECT … FOR UPDATE SKIP LOCKED`` inside the
``UPDATE … RETURNING`` that sets the lease, so two instances never claim the same row and
never wait for each other.

``schema`` (a store option, ``?schema=`` in the URL) puts every table in that schema
(created when missing) by setting ``search_path`` on each pooled connection.

Instances tell each other about the stories they save, so that each one's dedup index
also holds the others' stories: ``save_poll`` sends the new story ids with
``pg_notify`` in its transaction, and ``watch_stories`` listens for the others'
(``monitor.store.listen``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import re
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Sequence,
)
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from monitor.core.model import ClusterInfo, Delivery, FeedState, GroupState
from monitor.errors import CodecError, StoreError, StoreUnavailable
from monitor.log import get_logger, redact_url
from monitor.metrics import STORE_QUERIES
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
    feed_from_row,
    feed_to_row,
    one_source_json,
    readable_alert,
    story_from_json,
    story_to_json,
    strs_from_json,
    strs_to_json,
    utc,
)
from monitor.store.diagnose import postgres_error
from monitor.store.listen import StoryListener, notify_payloads

log = get_logger(__name__)

# the store operation (``_con``'s ``what``, first word) the current task is in: each
# statement a pooled connection sends is counted under it (``STORE_QUERIES``)
_OP: contextvars.ContextVar[str] = contextvars.ContextVar("monitor_store_op", default="other")


def _count_query(_record: Any) -> None:
    """asyncpg's query logger: runs soon after each statement, in a copy of the context
    the statement was sent from, so ``_OP`` names its operation."""
    STORE_QUERIES[_OP.get()] += 1


async def _init_connection(con: Any) -> None:
    con.add_query_logger(_count_query)


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

RECONNECT_MIN = 0.5  # seconds before the second attempt after losing the server
RECONNECT_MAX = 10.0  # the backoff between attempts doubles up to this
CLOSE_TIMEOUT = 10.0
IDLE_IN_TRANSACTION = 60.0  # seconds (at least the command timeout): see _open_pool  # seconds a pool has to close gracefully before it is terminated

#: The driver's errors that mean the server or the connection to it is gone (restarted,
#: cut, refusing connections, silent): the store reconnects with backoff
_LOST = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError, asyncpg.CannotConnectNowError,
)


def _lost(e: BaseException) -> bool:
    return isinstance(e, _LOST) or (
        isinstance(e, asyncpg.InterfaceError) and "connection" in str(e).lower()
        and "closed" in str(e).lower())

_FEED_UPSERT = (
    f"INSERT INTO feeds ({', '.join(FEED_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(FEED_COLUMNS) + 1))}) "
    "ON CONFLICT (name) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in FEED_COLUMNS if c != "name")
    # a saved feed is nobody's claim any more
    + ", claimed_by = NULL"
)
_CLUSTER_UPSERT = (
    "INSERT INTO clusters (id, first_story, title, first_seen, last_seen, sources) "
    "VALUES ($1, $2, $3, $4, $5, $6) "
    "ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, sources = excluded.sources"
)
_CLUSTER_FOR_STORY = (
    "INSERT INTO clusters (id, first_story, title, first_seen, last_seen, sources) "
    "SELECT $1::text, $2::text, $3::text, $4::timestamptz, $4::timestamptz, $5::text "
    "WHERE NOT EXISTS (SELECT 1 FROM stories WHERE id = $2::text) "
    "ON CONFLICT (id) DO NOTHING"
)
_STORY_INSERT = (
    "INSERT INTO stories (id, feed, link, title, cluster, first_seen, published, payload) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING"
)
_DELIVERY_INSERT = (
    "INSERT INTO deliveries (key, channel, parent_key, cluster, rule, payload, state, attempts, "
    "created, next_attempt, grp) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9, $10) "
    "ON CONFLICT (key) DO NOTHING RETURNING id"
)
_DELIVERY_COLUMNS = (
    "id, key, channel, state, attempts, created, next_attempt, sent_at, last_error, ref, "
    "rule, cluster, parent_key, payload"
)


def _text(s: str) -> str:
    """The stored form of a text value: no NUL (PostgreSQL text refuses it), no lone
    surrogates (see ``codec.column_text``); the JSON payloads keep the exact text."""
    return column_text(s, nul=True)


async def _merge(con: Any, merges: Sequence[tuple[str, str]]) -> None:
    """``Store.merge_clusters`` inside the caller's transaction."""
    for gone, into in merges:
        g, i = _text(gone), _text(into)
        i = (await _merged_ids(con, [i])).get(i, i)  # the survivor may have gone since
        if g == i:
            continue
        await con.execute("UPDATE cluster_merges SET into_id = $1 WHERE into_id = $2", i, g)
        await con.execute("INSERT INTO cluster_merges (gone, into_id) VALUES ($1, $2) "
                          "ON CONFLICT (gone) DO UPDATE SET into_id = excluded.into_id",
                          g, i)
        old = await con.fetchrow("SELECT * FROM clusters WHERE id = $1 FOR UPDATE", g)
        if old is None:
            continue
        new = await con.fetchrow("SELECT * FROM clusters WHERE id = $1 FOR UPDATE", i)
        if new is None:
            await con.execute(
                "INSERT INTO clusters (id, first_story, title, first_seen, last_seen,"
                " sources) VALUES ($1, $2, $3, $4, $5, $6)",
                i, old["first_story"], old["title"], old["first_seen"],
                old["last_seen"], old["sources"])
        else:
            first = old if old["first_seen"] < new["first_seen"] else new
            sources = dict.fromkeys(
                (*strs_from_json(new["sources"]), *strs_from_json(old["sources"])))
            await con.execute(
                "UPDATE clusters SET first_story = $1, title = $2, first_seen = $3,"
                " last_seen = GREATEST(last_seen, $4), sources = $5 WHERE id = $6",
                first["first_story"], first["title"], first["first_seen"],
                old["last_seen"], strs_to_json(tuple(sources)), i)
        await con.execute("UPDATE stories SET cluster = $1 WHERE cluster = $2", i, g)
        await con.execute("UPDATE deliveries SET cluster = $1 WHERE cluster = $2", i, g)
        await con.execute("DELETE FROM clusters WHERE id = $1", g)


async def _merged_ids(con: Any, ids: list[str]) -> dict[str, str]:
    """The ids among ``ids`` (stored form) merged into another cluster -> that cluster."""
    if not ids:
        return {}
    rows = await con.fetch(
        "SELECT gone, into_id FROM cluster_merges WHERE gone = ANY($1::text[])", ids)
    return {r[0]: r[1] for r in rows}


def claim_sql(*, by_channel: bool) -> str:
    """``claim_deliveries``' statement. $1 now, $2 limit, $3 lease, $4 claimer, $5 the
    channels left out, $6 (``by_channel``) the one channel.

    One channel's due deliveries are read from the index ``deliveries_claim`` in the
    order they came due (``next_attempt``, id), locked as they are read and no further
    than the limit: nothing sorts every due delivery. An update's pending alert that
    came due after it and past the limit (a retry) is locked too; then the claim's rows
    are put in order with each update right behind its alert, a few rows sorted, and cut
    to the limit again: a claim that holds an update holds its alert, and one too small
    for both takes the alert."""
    which = " AND NOT (channel = ANY($5::text[]))" + (" AND channel = $6" if by_channel else "")
    return (
        "WITH due AS ("
        " SELECT id, key, parent_key, next_attempt FROM deliveries c"
        " WHERE state = 'pending' AND next_attempt <= $1" + which +
        # an update waits for an alert that is waiting to be retried, so that it can be
        # threaded under it (a due alert comes first in the same batch); looked up for
        # each update read (a scalar subquery: never a join, or a hash, of every pending
        # row, which would end the reading in order)
        " AND (c.parent_key IS NULL OR (SELECT p.state = 'pending' AND p.next_attempt > $1"
        "  FROM deliveries p WHERE p.key = c.parent_key) IS NOT TRUE)"
        " ORDER BY next_attempt, id LIMIT $2 FOR UPDATE OF c SKIP LOCKED), "
        "parents AS ("
        " SELECT id, key, parent_key, next_attempt FROM deliveries c"
        " WHERE key IN (SELECT parent_key FROM due) AND id NOT IN (SELECT id FROM due)"
        " AND state = 'pending' AND next_attempt <= $1" + which +
        " FOR UPDATE OF c SKIP LOCKED), "
        "pool AS (SELECT * FROM due UNION ALL SELECT * FROM parents), "
        "pick AS (SELECT u.id, u.key, u.parent_key FROM pool u"
        " LEFT JOIN pool a ON a.key = u.parent_key"
        " ORDER BY COALESCE(a.next_attempt, u.next_attempt), COALESCE(a.id, u.id),"
        " a.id IS NOT NULL, u.id LIMIT $2), "
        # an update goes only with its alert, or once the alert is no longer pending: an
        # alert that another instance has locked (and is about to send) keeps its updates
        # back, whatever this snapshot says of its lease
        "ok AS (SELECT id FROM pick WHERE parent_key IS NULL"
        " OR parent_key IN (SELECT key FROM pick)"
        " OR (SELECT p.state FROM deliveries p WHERE p.key = pick.parent_key)"
        "  IS DISTINCT FROM 'pending') "
        "UPDATE deliveries d SET next_attempt = $3, claimed_by = $4 FROM ok"
        " WHERE d.id = ok.id "
        "RETURNING d.id, d.key, d.channel, d.parent_key, d.payload, d.attempts, d.created, "
        "d.requeued, d.grp, "
        "(SELECT p.ref FROM deliveries p WHERE p.key = d.parent_key AND p.state = 'sent') "
        "AS parent_ref"
    )


def _opt_text(s: str | None) -> str | None:
    return None if s is None else column_text(s, nul=True)


def _count(status: str) -> int:
    """Rows affected from a command status such as ``UPDATE 3``."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


def _status(r: Any) -> DeliveryStatus:
    return DeliveryStatus(
        id=r["id"],
        key=r["key"],
        channel=r["channel"],
        state=r["state"],
        attempts=r["attempts"],
        created=r["created"],
        next_attempt=r["next_attempt"],
        sent_at=r["sent_at"],
        last_error=r["last_error"],
        ref=r["ref"],
        rule=r["rule"],
        cluster=r["cluster"],
        parent_key=r["parent_key"],
        title=alert_title(r["payload"]),
    )


def _cluster(r: Any, members: tuple[str, ...]) -> ClusterInfo:
    return ClusterInfo(
        id=r["id"],
        first_story=r["first_story"],
        title=r["title"],
        first_seen=r["first_seen"],
        last_seen=r["last_seen"],
        sources=strs_from_json(r["sources"]),
        members=members,
    )


def _instance(r: Any, *, feeds: int | None = None, deliveries: int | None = None,
              dead_since: datetime | None = None) -> Instance:
    return Instance(
        id=r["id"], host=r["host"], pid=r["pid"], version=r["version"], started=r["started"],
        heartbeat=r["heartbeat"], dead_since=dead_since or r["dead_since"],
        feeds_retaken=r["feeds_retaken"] if feeds is None else feeds,
        deliveries_retaken=r["deliveries_retaken"] if deliveries is None else deliveries,
    )


def _same(dt: datetime) -> datetime:
    return dt


class PostgresStore:
    """A ``Store`` in PostgreSQL, safe to share between several daemon instances.

    ``migrate=False`` opens without migrating (``monitor migrate`` then calls
    ``migrate``); a schema newer than the code is refused either way.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 5,
        connect_timeout: float = 10.0,
        command_timeout: float = 60.0,
        migrate: bool = True,
    ) -> None:
        if schema is not None and not _IDENT.match(schema):
            raise StoreError(f"invalid PostgreSQL schema name {schema!r} (letters, digits, _)")
        self._dsn = dsn
        self._schema = schema
        self._min = min_size
        self._max = max_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._auto_migrate = migrate
        self._pool: Any = None
        self._opening = asyncio.Lock()
        self._sources_json = SourcesJson()  # clusters' sources, encoded incrementally
        # the server lost (``_con``): since when (loop time), the wait before the next
        # attempt, and the time before which calls fail at once instead of trying
        self._down_since: float | None = None
        self._down_error = ""
        self._backoff = 0.0
        self._retry_at = 0.0
        # this process's name in the notifications (its own are not handed back to it)
        self._token = uuid.uuid4().hex
        # notifications are per database already; the schema tells tenants apart
        scope = schema or "public"
        self._channel = "monitor_stories_" + hashlib.sha1(scope.encode()).hexdigest()[:16]
        # LISTEN/NOTIFY between instances; its pacing (backoff, heartbeat, probe_timeout)
        # may be tuned on it
        self.listener = StoryListener(
            token=self._token, channel=self._channel, connect=self._listen_connection,
            load=self._stories_by_id, where=lambda: redact_url(self._dsn),
        )

    @property
    def schema(self) -> str | None:
        return self._schema

    def __repr__(self) -> str:
        return f"PostgresStore({redact_url(self._dsn)!r}, schema={self._schema!r})"

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        async with self._opening:
            if self._pool is None:
                self._pool = await self._open_pool()

    async def _open_pool(self) -> Any:
        settings = {"search_path": self._schema} if self._schema else {}
        # a transaction left open by a client that died without closing its socket (a
        # host gone) would hold its rows' locks until TCP gives up (hours): the server
        # ends it after this (ours never wait between statements that long)
        settings["idle_in_transaction_session_timeout"] = str(
            int(max(IDLE_IN_TRANSACTION, self._command_timeout) * 1000))
        where = redact_url(self._dsn)
        try:
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min,
                max_size=self._max,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                server_settings=settings,
                init=_init_connection,
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError, ValueError) as e:
            raise postgres_error(e, where=where, what=f"cannot connect to {where}") from e
        try:
            if self._auto_migrate:
                await self._migrate_on(pool, dry_run=False)
            else:
                async with pool.acquire() as con:
                    await self._version(con, migrations.latest("postgres"))
        except BaseException as e:
            await pool.close()
            if isinstance(e, asyncpg.PostgresError | asyncpg.InterfaceError | OSError | TimeoutError):
                raise postgres_error(e, where=where, what=f"cannot open {where}") from e
            raise
        return pool

    @property
    def _where(self) -> str:
        return redact_url(self._dsn) + (f" (schema {self._schema})" if self._schema else "")

    async def _version(self, con: Any, known: int) -> int:
        """The schema version (0 before the first migration); one newer than ``known``
        is refused."""
        if await con.fetchval("SELECT to_regclass('schema_version')") is None:
            return 0
        current = int(await con.fetchval("SELECT max(version) FROM schema_version") or 0)
        if current > known:
            raise migrations.too_new(self._where, current, known)
        return current

    async def _migrate_on(self, pool: Any, *, dry_run: bool) -> migrations.Plan:
        """Check and migrate in one transaction, holding the advisory lock
        ``monitor.migrate:<schema>`` (a fixed key per schema) from before the version is
        read until the commit: instances starting together migrate once, the others wait
        and find the schema current. ``dry_run`` applies every step, then rolls back."""
        schema = self._schema or "public"
        wanted = migrations.load("postgres")
        async with pool.acquire() as con:
            tx = con.transaction()
            await tx.start()
            try:
                await con.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                                  f"monitor.migrate:{schema}")
                if self._schema:
                    await con.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
                await con.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                current = await self._version(con, len(wanted))
                for m in wanted[current:]:
                    await con.execute(m.sql)
                    await con.execute("INSERT INTO schema_version (version) VALUES ($1)", m.version)
                    if not dry_run:
                        log.info("store.migrated", schema=schema, version=m.version, file=m.name)
            except BaseException:
                await tx.rollback()
                raise
            if dry_run:
                await tx.rollback()
            else:
                await tx.commit()
        return migrations.Plan(dialect="postgres", where=self._where, current=current,
                               target=len(wanted), steps=tuple(wanted[current:]),
                               applied=not dry_run and current < len(wanted), dry_run=dry_run)

    async def migrate(self, *, dry_run: bool = False) -> migrations.Plan:
        pool = self._pool
        if pool is None:
            raise StoreError("migrate: the store is not open")
        try:
            return await self._migrate_on(pool, dry_run=dry_run)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as e:
            raise postgres_error(e, where=redact_url(self._dsn), what="migrate") from e

    async def close(self) -> None:
        await self.listener.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:  # a graceful close waits for connections that may be dead
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
            except (TimeoutError, *_LOST):
                pool.terminate()

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing -------------------------------------------------------------------------

    def outage(self) -> dict[str, Any] | None:
        """While the server is unreachable: for how long, the last error and when the
        next attempt is (seconds); None when it answers."""
        if self._down_since is None:
            return None
        now = asyncio.get_running_loop().time()
        return {"down_for": round(now - self._down_since, 1), "error": self._down_error,
                "retry_in": round(max(0.0, self._retry_at - now), 1)}

    async def _went_down(self, e: BaseException) -> None:
        """A call lost the server: the next attempt comes at once the first time (a
        dropped connection is replaced by the pool), then after a backoff doubling from
        ``RECONNECT_MIN`` to ``RECONNECT_MAX``; calls before it fail at once. The
        pool's idle connections are expired: after a restart they are all dead."""
        now = asyncio.get_running_loop().time()
        self._down_error = str(e) or type(e).__name__
        if self._down_since is None:
            self._down_since, self._backoff, self._retry_at = now, 0.0, now
            log.warning("store.disconnected", store=self._where, error=self._down_error,
                        note="reconnecting with backoff")
        elif now >= self._retry_at:  # a new attempt failed (not one of the same moment)
            self._backoff = min(RECONNECT_MAX, max(RECONNECT_MIN, self._backoff * 2))
            self._retry_at = now + self._backoff
        pool = self._pool
        if pool is not None:
            await pool.expire_connections()

    def _came_back(self) -> None:
        if self._down_since is not None:
            down = asyncio.get_running_loop().time() - self._down_since
            self._down_since = None
            log.info("store.reconnected", store=self._where, down_s=round(down, 1))

    @contextlib.asynccontextmanager
    async def _con(self, what: str, *, tx: bool = False) -> AsyncIterator[Any]:
        """A pooled connection (in a transaction when ``tx``), driver errors → StoreError.
        While the server is lost, calls before the next attempt's time fail at once
        (``StoreUnavailable``) rather than each waiting on a dead server."""
        pool = self._pool
        if pool is None:
            raise StoreError(f"{what}: the store is not open")
        if self._down_since is not None:
            wait = self._retry_at - asyncio.get_running_loop().time()
            if wait > 0:
                detail = (f"unreachable ({self._down_error}); reconnecting, next attempt "
                          f"in {wait:.1f} s")
                raise StoreUnavailable(f"{what}: {detail}", where=redact_url(self._dsn),
                                       detail=detail)
        op = _OP.set(what.split(" ", 1)[0])
        try:
            async with pool.acquire() as con:
                if tx:
                    async with con.transaction():
                        yield con
                else:
                    yield con
        except CodecError as e:
            raise StoreError(f"{what}: {e}") from e
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as e:
            if _lost(e):
                await self._went_down(e)
                error = postgres_error(e, where=redact_url(self._dsn), what=what)
                if not isinstance(error, StoreUnavailable):
                    detail = f"connection lost ({error.detail or e})"
                    error = StoreUnavailable(f"{what}: {detail}", where=error.where,
                                             detail=detail)
                raise error from e
            raise postgres_error(e, where=redact_url(self._dsn), what=what) from e
        finally:
            with contextlib.suppress(ValueError):  # closed from another context
                _OP.reset(op)
        self._came_back()

    # -- feeds ----------------------------------------------------------------------------

    async def get_feeds(self) -> list[FeedState]:
        async with self._con("get_feeds") as con:
            rows = await con.fetch("SELECT * FROM feeds ORDER BY name")
        return [feed_from_row(r, _same) for r in rows]

    async def get_feed(self, name: str) -> FeedState | None:
        async with self._con("get_feed") as con:
            r = await con.fetchrow("SELECT * FROM feeds WHERE name = $1", name)
        return None if r is None else feed_from_row(r, _same)

    async def save_feed(self, state: FeedState) -> None:
        async with self._con(f"save_feed {state.name!r}") as con:
            await con.execute(_FEED_UPSERT, *self._feed_row(state))

    async def save_feeds(self, states: Sequence[FeedState]) -> None:
        if not states:
            return
        async with self._con(f"save_feeds ({len(states)})", tx=True) as con:
            await con.executemany(_FEED_UPSERT, [self._feed_row(s) for s in states])

    @staticmethod
    def _feed_row(state: FeedState) -> tuple[Any, ...]:
        return tuple(_text(v) if isinstance(v, str) else v for v in feed_to_row(state, utc))

    async def add_feeds(self, states: Sequence[FeedState]) -> int:
        if not states:
            return 0
        insert = (f"INSERT INTO feeds ({', '.join(FEED_COLUMNS)}) VALUES "
                  f"({', '.join(f'${i}' for i in range(1, len(FEED_COLUMNS) + 1))}) "
                  "ON CONFLICT (name) DO NOTHING")
        n = 0
        async with self._con(f"add_feeds ({len(states)})", tx=True) as con:
            for st in states:
                n += _count(await con.execute(insert, *self._feed_row(st)))
        return n

    async def reschedule_feeds(
        self, moves: Sequence[tuple[str, datetime | None, datetime]]
    ) -> int:
        if not moves:
            return 0
        n = 0
        async with self._con(f"reschedule_feeds ({len(moves)})", tx=True) as con:
            for name, was, new in moves:
                n += _count(await con.execute(
                    "UPDATE feeds SET next_poll = $1 WHERE name = $2 AND claimed_by IS NULL "
                    "AND next_poll IS NOT DISTINCT FROM $3",
                    utc(new), name, None if was is None else utc(was)))
        return n

    async def delete_feed(self, name: str) -> None:
        async with self._con(f"delete_feed {name!r}") as con:
            await con.execute("DELETE FROM feeds WHERE name = $1", name)

    async def claim_due_feeds(
        self, now: datetime, *, limit: int, lease_until: datetime, by: str | None = None
    ) -> list[FeedState]:
        if limit <= 0:
            return []
        # two scans of the ``feeds_next_poll`` index, each bounded by the LIMIT: the
        # never-polled, then the due ones in order (``x IS NULL OR x <= $1`` in one
        # query is a bitmap scan of every due feed and a sort of them all)
        async with self._con("claim_due_feeds") as con:
            rows = await con.fetch(
                "WITH fresh AS ("
                " SELECT name, next_poll FROM feeds WHERE next_poll IS NULL AND NOT gone"
                " ORDER BY name LIMIT $2 FOR UPDATE SKIP LOCKED), "
                "dated AS ("
                " SELECT name, next_poll FROM feeds WHERE next_poll <= $1 AND NOT gone"
                " ORDER BY next_poll, name LIMIT $2 FOR UPDATE SKIP LOCKED), "
                "due AS ("
                " SELECT name, next_poll AS old_next_poll FROM ("
                "  SELECT 0 AS k, * FROM fresh UNION ALL SELECT 1, * FROM dated) u"
                " ORDER BY k, next_poll, name LIMIT $2) "
                "UPDATE feeds f SET next_poll = $3, claimed_by = $4 FROM due"
                " WHERE f.name = due.name "
                "RETURNING f.*, due.old_next_poll",
                utc(now),
                limit,
                utc(lease_until),
                by,
            )
        rows = sorted(
            rows,
            key=lambda r: (r["old_next_poll"] is not None, r["old_next_poll"] or now, r["name"]),
        )
        return [feed_from_row(r, _same, due=r["old_next_poll"]) for r in rows]

    async def release_feeds(self, names: Sequence[str], *, by: str, now: datetime) -> int:
        if not names:
            return 0
        async with self._con("release_feeds") as con:
            return _count(await con.execute(
                "UPDATE feeds SET next_poll = $1, claimed_by = NULL "
                "WHERE name = ANY($2::text[]) AND claimed_by = $3",
                utc(now), list(names), by))

    # -- stories --------------------------------------------------------------------------

    async def known(self, ids: Iterable[str], links: Iterable[str]) -> set[str]:
        found_ids, found_links = await self.known_apart(ids, links)
        return found_ids | found_links

    async def known_apart(
        self, ids: Iterable[str], links: Iterable[str]
    ) -> tuple[set[str], set[str]]:
        # lookups use the stored form of each value; answers are the values given
        id_map = {_text(i): i for i in ids}
        link_map = {_text(x): x for x in links}
        if not id_map and not link_map:
            return set(), set()
        async with self._con("known") as con:
            rows = await con.fetch(
                "SELECT 0, id FROM stories WHERE id = ANY($1::text[]) "
                "UNION ALL SELECT 1, link FROM stories WHERE link = ANY($2::text[])",
                list(id_map),
                list(link_map),
            )
        found: tuple[set[str], set[str]] = (set(), set())
        for kind, v in rows:
            found[kind].add(v)
        return ({id_map[v] for v in found[0] if v in id_map},
                {link_map[v] for v in found[1] if v in link_map})

    async def save_poll(
        self,
        state: FeedState,
        stories: Sequence[StoredStory],
        deliveries: Sequence[Delivery],
        clusters: Sequence[ClusterInfo] = (),
        merges: Sequence[tuple[str, str]] = (),
    ) -> list[Delivery]:
        async with self._con(f"save_poll {state.name!r}", tx=True) as con:
            return await self._save_poll(con, state, stories, deliveries, clusters, merges)

    async def save_polls(self, polls: Sequence[PollSave]) -> list[list[Delivery]]:
        async with self._con(f"save_polls ({len(polls)} polls)", tx=True) as con:
            return [await self._save_poll(con, p.state, p.stories, p.deliveries, p.clusters,
                                          p.merges) for p in polls]

    async def _save_poll(
        self,
        con: Any,
        state: FeedState,
        stories: Sequence[StoredStory],
        deliveries: Sequence[Delivery],
        clusters: Sequence[ClusterInfo],
        merges: Sequence[tuple[str, str]],
    ) -> list[Delivery]:
        """``save_poll`` inside the caller's transaction."""
        inserted: list[Delivery] = []
        await _merge(con, merges)
        await con.execute(_FEED_UPSERT, *self._feed_row(state))
        moved = await _merged_ids(con, list({
            *(_text(st.cluster) for st in stories), *(_text(c.id) for c in clusters),
            *(_text(d.alert.cluster) for d in deliveries)}))
        if moved:  # filed by an instance that has not heard of a merge yet
            stories = [replace(st, cluster=moved.get(_text(st.cluster), st.cluster))
                       for st in stories]
            clusters = [replace(c, id=moved.get(_text(c.id), c.id)) for c in clusters]
        if clusters:
            await con.executemany(
                _CLUSTER_UPSERT,
                [
                    (_text(c.id), _text(c.first_story), _text(c.title), utc(c.first_seen), utc(c.last_seen),
                     self._sources_json(c.id, c.sources))
                    for c in clusters
                ],
            )
        if stories:
            rows = []
            auto = []
            for st in stories:
                s = st.story
                seen = utc(s.first_seen)
                sid, cluster, title = _text(s.id), _text(st.cluster), _text(s.title)
                rows.append(
                    (sid, _text(s.feed), _text(s.link), title, cluster, seen,
                     utc(s.published), story_to_json(s))
                )
                auto.append((cluster, sid, title, seen, one_source_json(s.feed)))
            await con.executemany(_CLUSTER_FOR_STORY, auto)
            await con.executemany(_STORY_INSERT, rows)
            # the other instances hear of them when (if) this transaction commits
            for payload in notify_payloads(self._token, [r[0] for r in rows]):
                await con.execute("SELECT pg_notify($1, $2)", self._channel, payload)
        for d in deliveries:
            new_id = await con.fetchval(
                _DELIVERY_INSERT,
                _text(d.key),
                _text(d.channel),
                _opt_text(d.parent_key),
                moved.get(_text(d.alert.cluster), _text(d.alert.cluster)),
                _text(d.alert.match.rule),
                alert_to_json(d.alert),
                d.attempts,
                utc(d.created),
                utc(d.next_attempt or d.created),
                _opt_text(d.group),
            )
            if new_id is not None:
                inserted.append(replace(d, id=new_id))
        return inserted

    async def queue(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        inserted: list[Delivery] = []
        async with self._con("queue", tx=True) as con:
            for d in deliveries:
                new_id = await con.fetchval(
                    _DELIVERY_INSERT, _text(d.key), _text(d.channel), _opt_text(d.parent_key),
                    _text(d.alert.cluster), _text(d.alert.match.rule), alert_to_json(d.alert),
                    d.attempts, utc(d.created), utc(d.next_attempt or d.created),
                    _opt_text(d.group),
                )
                if new_id is not None:
                    inserted.append(replace(d, id=new_id))
        return inserted

    async def recent_stories(self, since: datetime, *, limit: int | None = None) -> list[StoredStory]:
        async with self._con("recent_stories") as con:
            rows = await con.fetch(
                "SELECT payload, cluster FROM stories WHERE first_seen >= $1 "
                "ORDER BY first_seen, id LIMIT $2",
                utc(since),
                limit,
            )
            return [StoredStory(story=story_from_json(r[0]), cluster=r[1]) for r in rows]

    async def save_dedup_snapshot(self, snapshot: DedupSnapshot) -> None:
        async with self._con("save_dedup_snapshot", tx=True) as con:
            # one creator at a time (a concurrent CREATE … IF NOT EXISTS can still clash)
            await con.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                              f"monitor.dedup_snapshot:{self._schema or 'public'}")
            await con.execute(
                "CREATE TABLE IF NOT EXISTS dedup_snapshot (key TEXT PRIMARY KEY, "
                "taken TIMESTAMPTZ NOT NULL, stories INTEGER NOT NULL, data BYTEA NOT NULL)")
            await con.execute("DELETE FROM dedup_snapshot")
            await con.execute(
                "INSERT INTO dedup_snapshot (key, taken, stories, data) VALUES ($1, $2, $3, $4)",
                snapshot.key, utc(snapshot.taken), snapshot.stories, snapshot.data)

    async def load_dedup_snapshot(self, key: str) -> DedupSnapshot | None:
        async with self._con("load_dedup_snapshot") as con:
            try:
                r = await con.fetchrow(
                    "SELECT taken, stories, data FROM dedup_snapshot WHERE key = $1", key)
            except asyncpg.UndefinedTableError:  # never saved one
                return None
        return None if r is None else DedupSnapshot(
            key=key, taken=r["taken"], stories=r["stories"], data=bytes(r["data"]))

    async def watch_stories(
        self,
        on_stories: Callable[[list[StoredStory]], None],
        on_gap: Callable[[], Awaitable[None]],
    ) -> bool:
        if self._pool is None:
            raise StoreError("watch_stories: the store is not open")
        await self.listener.start(on_stories, on_gap)
        return True

    @property
    def listening(self) -> bool | None:
        return self.listener.listening

    async def _listen_connection(self) -> Any:
        """A connection of its own for LISTEN, outside the pool."""
        settings = {"application_name": f"monitor-watch-{self._token}"}
        if self._schema:
            settings["search_path"] = self._schema
        return await asyncpg.connect(self._dsn, timeout=self._connect_timeout,
                                     command_timeout=self._command_timeout,
                                     server_settings=settings)

    async def _stories_by_id(self, ids: list[str]) -> list[StoredStory]:
        async with self._con("watch_stories") as con:
            rows = await con.fetch(
                "SELECT payload, cluster FROM stories WHERE id = ANY($1::text[]) "
                "ORDER BY first_seen, id",
                ids,
            )
            return [StoredStory(story=story_from_json(r[0]), cluster=r[1]) for r in rows]

    async def get_story(self, story_id: str) -> StoredStory | None:
        async with self._con("get_story") as con:
            r = await con.fetchrow("SELECT payload, cluster FROM stories WHERE id = $1", _text(story_id))
            return None if r is None else StoredStory(story=story_from_json(r[0]), cluster=r[1])

    async def prune(self, before: datetime) -> int:
        cut = utc(before)
        async with self._con("prune", tx=True) as con:
            n = _count(await con.execute("DELETE FROM stories WHERE first_seen < $1", cut))
            c = _count(
                await con.execute(
                    "DELETE FROM clusters WHERE NOT EXISTS "
                    "(SELECT 1 FROM stories WHERE stories.cluster = clusters.id)"
                )
            )
            d = _count(
                await con.execute(
                    "DELETE FROM deliveries WHERE state IN ('sent', 'failed') AND created < $1", cut
                )
            )
            await con.execute("DELETE FROM cluster_merges WHERE NOT EXISTS "
                              "(SELECT 1 FROM clusters WHERE clusters.id = cluster_merges.into_id)")
        log.debug("store.pruned", stories=n, clusters=c, deliveries=d)
        return n

    # -- clusters -------------------------------------------------------------------------

    @staticmethod
    async def _members(con: Any, ids: list[str]) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {i: [] for i in ids}
        if ids:
            for r in await con.fetch(
                "SELECT cluster, id FROM stories WHERE cluster = ANY($1::text[]) ORDER BY first_seen, id",
                ids,
            ):
                out[r[0]].append(r[1])
        return {k: tuple(v) for k, v in out.items()}

    async def get_cluster(self, cluster_id: str) -> ClusterInfo | None:
        async with self._con("get_cluster", tx=True) as con:
            key = _text(cluster_id)
            r = await con.fetchrow("SELECT * FROM clusters WHERE id = $1", key)
            if r is None:
                return None
            members = await self._members(con, [key])
            return _cluster(r, members[key])

    async def list_clusters(self, *, since: datetime | None = None, limit: int = 50) -> list[ClusterInfo]:
        async with self._con("list_clusters", tx=True) as con:
            rows = await con.fetch(
                "SELECT * FROM clusters WHERE ($1::timestamptz IS NULL OR last_seen >= $1) "
                "ORDER BY last_seen DESC, id LIMIT $2",
                None if since is None else utc(since),
                limit,
            )
            members = await self._members(con, [r["id"] for r in rows])
            return [_cluster(r, members[r["id"]]) for r in rows]

    # -- outbox ---------------------------------------------------------------------------

    async def claim_deliveries(
        self, now: datetime, *, limit: int, lease_until: datetime,
        channel: str | None = None, exclude: Sequence[str] = (), by: str | None = None,
    ) -> list[Delivery]:
        if limit <= 0:
            return []
        lease = utc(lease_until)
        args: list[object] = [utc(now), limit, lease, by, list(exclude)]
        if channel is not None:
            args.append(channel)
        async with self._con("claim_deliveries") as con:
            rows = await con.fetch(claim_sql(by_channel=channel is not None), *args)
            return parents_first([
                delivery_from_row(r, created=r["created"], next_attempt=lease,
                                  thread_ref=r["parent_ref"], requeued=r["requeued"],
                                  group=r["grp"])
                for r in rows
            ])

    async def mark_sent(self, delivery_id: int, now: datetime, ref: str | None) -> None:
        async with self._con(f"mark_sent {delivery_id}", tx=True) as con:
            status = await con.execute(
                "UPDATE deliveries SET state = 'sent', sent_at = $1, last_attempt = $1, ref = $2, "
                "attempts = attempts + 1, next_attempt = NULL WHERE id = $3 AND state <> 'sent'",
                utc(now),
                _opt_text(ref),
                delivery_id,
            )
            if _count(status) == 0:
                await self._exists(con, delivery_id)

    async def mark_sent_many(
        self, delivery_ids: Sequence[int], now: datetime, ref: str | None
    ) -> None:
        ids = list(dict.fromkeys(delivery_ids))
        if not ids:
            return
        async with self._con(f"mark_sent {len(ids)} deliveries", tx=True) as con:
            await con.execute(
                "UPDATE deliveries SET state = 'sent', sent_at = $1, last_attempt = $1, ref = $2, "
                "attempts = attempts + 1, next_attempt = NULL "
                "WHERE id = ANY($3::bigint[]) AND state <> 'sent'",
                utc(now),
                _opt_text(ref),
                ids,
            )
            found = {r[0] for r in await con.fetch(
                "SELECT id FROM deliveries WHERE id = ANY($1::bigint[])", ids)}
            missing = [i for i in ids if i not in found]
            if missing:
                raise StoreError(f"no delivery with id {missing[0]}")

    async def mark_sent_each(self, marks: Sequence[tuple[int, datetime, str | None]]) -> None:
        if not marks:
            return
        first: dict[int, tuple[datetime, str | None]] = {}
        for i, at, ref in marks:  # an id given twice: its first mark wins, as one by one
            first.setdefault(i, (at, ref))
        ids = list(first)
        async with self._con(f"mark_sent {len(ids)} deliveries", tx=True) as con:
            # one statement for the batch: the marks as three arrays, unnested together
            await con.execute(
                "UPDATE deliveries d SET state = 'sent', sent_at = m.at, last_attempt = m.at, "
                "ref = m.ref, attempts = d.attempts + 1, next_attempt = NULL "
                "FROM unnest($1::bigint[], $2::timestamptz[], $3::text[]) AS m(id, at, ref) "
                "WHERE d.id = m.id AND d.state <> 'sent'",
                ids, [utc(at) for at, _ in first.values()],
                [_opt_text(ref) for _, ref in first.values()],
            )
            found = {r[0] for r in await con.fetch(
                "SELECT id FROM deliveries WHERE id = ANY($1::bigint[])", ids)}
            missing = [i for i in ids if i not in found]
            if missing:
                raise StoreError(f"no delivery with id {missing[0]}")

    async def mark_failed(
        self, delivery_id: int, now: datetime, error: str, next_attempt: datetime | None
    ) -> None:
        async with self._con(f"mark_failed {delivery_id}", tx=True) as con:
            status = await con.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_error = $1, last_attempt = $2, "
                "state = CASE WHEN $3::timestamptz IS NULL THEN 'failed' ELSE 'pending' END, "
                "next_attempt = $3, claimed_by = NULL WHERE id = $4 AND state = 'pending'",
                _text(error),
                utc(now),
                None if next_attempt is None else utc(next_attempt),
                delivery_id,
            )
            if _count(status) == 0:
                await self._exists(con, delivery_id)

    @staticmethod
    async def _exists(con: Any, delivery_id: int) -> None:
        if await con.fetchval("SELECT 1 FROM deliveries WHERE id = $1", delivery_id) is None:
            raise StoreError(f"no delivery with id {delivery_id}")

    async def requeue_failed(
        self, now: datetime, *, channel: str | None = None, ids: Sequence[int] = ()
    ) -> list[int]:
        async with self._con("requeue_failed", tx=True) as con:
            rows = await con.fetch(
                "UPDATE deliveries SET state = 'pending', next_attempt = $1, requeued = $1, "
                "claimed_by = NULL "
                "WHERE state = 'failed' AND ($2::text IS NULL OR channel = $2) "
                "AND (cardinality($3::bigint[]) = 0 OR id = ANY($3::bigint[])) "
                "RETURNING id, created",
                utc(now),
                None if channel is None else _text(channel),
                list(ids),
            )
        return [r["id"] for r in sorted(rows, key=lambda r: (r["created"], r["id"]))]

    async def release(self, delivery_id: int, next_attempt: datetime) -> None:
        async with self._con(f"release {delivery_id}", tx=True) as con:
            status = await con.execute(
                "UPDATE deliveries SET next_attempt = $1, claimed_by = NULL "
                "WHERE id = $2 AND state = 'pending'",
                utc(next_attempt),
                delivery_id,
            )
            if _count(status) == 0:
                await self._exists(con, delivery_id)

    async def release_many(self, delivery_ids: Sequence[int], next_attempt: datetime) -> None:
        await self._update_many(
            "release", delivery_ids,
            "UPDATE deliveries SET next_attempt = $2, claimed_by = NULL "
            "WHERE id = ANY($1::bigint[]) AND state = 'pending'", utc(next_attempt))

    async def mark_failed_many(
        self, delivery_ids: Sequence[int], now: datetime, error: str,
        next_attempt: datetime | None,
    ) -> None:
        await self._update_many(
            "mark_failed", delivery_ids,
            "UPDATE deliveries SET attempts = attempts + 1, last_error = $2, last_attempt = $3, "
            "state = CASE WHEN $4::timestamptz IS NULL THEN 'failed' ELSE 'pending' END, "
            "next_attempt = $4, claimed_by = NULL WHERE id = ANY($1::bigint[]) "
            "AND state = 'pending'",
            _text(error), utc(now), None if next_attempt is None else utc(next_attempt))

    async def _update_many(self, what: str, delivery_ids: Sequence[int], sql: str,
                           *args: object) -> None:
        """One UPDATE of the given deliveries ($1: their ids), in one transaction; an
        unknown id raises ``StoreError`` and changes none."""
        ids = list(dict.fromkeys(delivery_ids))
        if not ids:
            return
        async with self._con(f"{what} {len(ids)} deliveries", tx=True) as con:
            await con.execute(sql, ids, *args)
            found = {r[0] for r in await con.fetch(
                "SELECT id FROM deliveries WHERE id = ANY($1::bigint[])", ids)}
            missing = [i for i in ids if i not in found]
            if missing:
                raise StoreError(f"no delivery with id {missing[0]}")

    async def cluster_alerts(self, cluster: str) -> list[Delivery]:
        async with self._con("cluster_alerts") as con:
            key = _text(cluster)
            key = (await _merged_ids(con, [key])).get(key, key)
            rows = await con.fetch(
                "SELECT id, key, channel, parent_key, payload, attempts, created, next_attempt "
                "FROM deliveries WHERE cluster = $1 AND parent_key IS NULL ORDER BY created, id",
                key,
            )
            return [
                delivery_from_row(r, created=r["created"], next_attempt=r["next_attempt"])
                for r in rows
            ]

    async def group_states(self, groups: Collection[str]) -> dict[str, GroupState]:
        keys = sorted({_text(g) for g in groups})
        if not keys:
            return {}
        async with self._con("group_states") as con:
            rows = await con.fetch(
                "SELECT g.grp, "
                " (SELECT MIN(created) FROM deliveries p WHERE p.grp = g.grp"
                "  AND p.state = 'pending') AS pending_since, "
                " s.sent_at, s.ref "
                "FROM unnest($1::text[]) AS g(grp) "
                "LEFT JOIN LATERAL (SELECT sent_at, ref FROM deliveries x WHERE x.grp = g.grp"
                " AND x.state = 'sent' ORDER BY sent_at DESC, id DESC LIMIT 1) s ON TRUE",
                keys,
            )
            return {
                r["grp"]: GroupState(group=r["grp"], last_sent=r["sent_at"], ref=r["ref"],
                                     pending_since=r["pending_since"])
                for r in rows
                if r["sent_at"] is not None or r["pending_since"] is not None
            }

    async def merge_clusters(self, merges: Sequence[tuple[str, str]]) -> None:
        if not merges:
            return
        async with self._con("merge_clusters", tx=True) as con:
            await _merge(con, merges)

    async def deliveries(self, *, state: str | None = None, limit: int = 100) -> list[DeliveryStatus]:
        async with self._con("deliveries") as con:
            rows = await con.fetch(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE ($1::text IS NULL OR state = $1) "
                "ORDER BY created DESC, id DESC LIMIT $2",
                state,
                limit,
            )
        return [_status(r) for r in rows]

    async def delivery_log(
        self, *, since: datetime, now: datetime, rule: str | None = None,
        channel: str | None = None, state: str | None = None, limit: int = 1000,
    ) -> list[DeliveryRecord]:
        if state is not None and state not in LOG_STATES:
            raise ValueError(f"state must be one of {', '.join(LOG_STATES)}, not {state!r}")
        async with self._con("delivery_log") as con:
            rows = await con.fetch(
                f"SELECT {_DELIVERY_COLUMNS}, rule, payload FROM deliveries "
                "WHERE (created >= $1 OR last_attempt >= $1 OR sent_at >= $1) "
                "AND ($2::text IS NULL OR rule = $2) AND ($3::text IS NULL OR channel = $3) "
                "AND ($4::text IS NULL OR state = $4 "
                "     OR ($4 = 'held' AND state = 'pending' AND next_attempt > $5)) "
                "ORDER BY created DESC, id DESC LIMIT $6",
                utc(since),
                None if rule is None else _text(rule),
                None if channel is None else _text(channel),
                state,
                utc(now),
                max(0, limit),
            )
        return [DeliveryRecord(status=_status(r), rule=r["rule"],
                               alert=readable_alert(r["payload"])) for r in rows]

    async def last_alert(self, cluster: str, rule: str, channel: str) -> datetime | None:
        async with self._con("last_alert") as con:
            value: datetime | None = await con.fetchval(
                "SELECT max(created) FROM deliveries WHERE cluster = $1 AND rule = $2 AND channel = $3",
                _text(cluster),
                _text(rule),
                _text(channel),
            )
        return value

    async def count_pending(self) -> int:
        async with self._con("count_pending") as con:
            return int(await con.fetchval("SELECT count(*) FROM deliveries WHERE state = 'pending'"))

    async def rule_hits(self, since: datetime) -> dict[str, int]:
        async with self._con("rule_hits") as con:
            rows = await con.fetch(
                "SELECT rule, count(DISTINCT cluster) AS n FROM deliveries "
                "WHERE parent_key IS NULL AND created >= $1 GROUP BY rule",
                since,
            )
        return {str(r["rule"]): int(r["n"]) for r in rows}

    async def backlog(self) -> dict[str, Backlog]:
        async with self._con("backlog") as con:
            rows = await con.fetch(
                "SELECT channel, count(*) AS n, min(created) AS oldest FROM deliveries "
                "WHERE state = 'pending' GROUP BY channel")
        return {r["channel"]: Backlog(pending=int(r["n"]), oldest=r["oldest"]) for r in rows}

    # -- instances ------------------------------------------------------------------------

    async def heartbeat(
        self, me: Instance, now: datetime, *, dead_after: float | None
    ) -> list[Instance]:
        t = utc(now)
        async with self._con("heartbeat", tx=True) as con:
            was = await con.fetchval("SELECT dead_since FROM instances WHERE id = $1", me.id)
            if was is not None:
                log.warning("instance.revived", instance=me.id, declared_dead=was.isoformat(),
                            note="another instance took this one for dead and retook its "
                            "claims; polls in flight here may be repeated there")
            await con.execute(
                "INSERT INTO instances (id, host, pid, version, started, heartbeat) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET "
                "heartbeat = excluded.heartbeat, dead_since = NULL, feeds_retaken = 0, "
                "deliveries_retaken = 0",
                me.id, _text(me.host), me.pid, _text(me.version), utc(me.started), t)
            if dead_after is None:
                return []
            cut = t - timedelta(seconds=dead_after)
            # one judge per dead instance (the first to lock its row), and nobody waits
            # on a lock: a row held by a transaction of the dead instance that its
            # server has not ended yet (a host gone without closing its sockets) is
            # skipped here; its lease, and the server's idle-in-transaction timeout,
            # bring it back
            dead = await con.fetch(
                "SELECT * FROM instances WHERE dead_since IS NULL AND heartbeat < $1 "
                "AND id <> $2 FOR UPDATE SKIP LOCKED", cut, me.id)
            out: list[Instance] = []
            for r in dead:
                feeds = _count(await con.execute(
                    "UPDATE feeds SET next_poll = $1, claimed_by = NULL WHERE name IN ("
                    " SELECT name FROM feeds WHERE claimed_by = $2 FOR UPDATE SKIP LOCKED)",
                    t, r["id"]))
                deliveries = _count(await con.execute(
                    "UPDATE deliveries SET next_attempt = LEAST(next_attempt, $1), "
                    "claimed_by = NULL WHERE id IN (SELECT id FROM deliveries"
                    " WHERE claimed_by = $2 AND state = 'pending' FOR UPDATE SKIP LOCKED)",
                    t, r["id"]))
                await con.execute(
                    "UPDATE instances SET dead_since = $1, feeds_retaken = $2, "
                    "deliveries_retaken = $3 WHERE id = $4", t, feeds, deliveries, r["id"])
                out.append(_instance(r, feeds=feeds, deliveries=deliveries, dead_since=t))
            await con.execute("DELETE FROM instances WHERE dead_since < $1",
                              t - timedelta(days=1))
            return out

    async def instances(self, *, since: datetime) -> list[Instance]:
        async with self._con("instances") as con:
            rows = await con.fetch(
                "SELECT * FROM instances WHERE dead_since IS NULL OR dead_since >= $1 "
                "ORDER BY started, id", utc(since))
        return [_instance(r) for r in rows]

    async def leave(self, instance_id: str) -> None:
        async with self._con("leave") as con:
            await con.execute("DELETE FROM instances WHERE id = $1", instance_id)

    # -- copy -----------------------------------------------------------------------------

    async def tables(self) -> list[Table]:
        async with self._con("tables") as con:
            return await _tables(con)

    async def export_rows(self, tables: Sequence[Table], *, batch: int) -> AsyncGenerator[Rows, None]:
        async with self._con("store copy: read") as con, con.transaction(
                isolation="repeatable_read", readonly=True):
            for t in tables:
                cols = ", ".join(f'"{c}"' for c in t.columns)
                cur = await con.cursor(f'SELECT {cols} FROM "{t.name}"')
                while rows := await cur.fetch(batch):
                    yield t, [tuple(r) for r in rows]

    async def import_rows(self, rows: AsyncIterable[Rows], *, replace: bool = False) -> dict[str, int]:
        async with self._con("store copy: write", tx=True) as con:
            tables = {t.name: t for t in await _tables(con)}
            full = {name: n for name in tables
                    if (n := await con.fetchval(f'SELECT count(*) FROM "{name}"'))}
            if full and not replace:
                raise not_empty(self._where, full)
            if full:
                await con.execute("TRUNCATE " + ", ".join(f'"{n}"' for n in tables))
            counts = dict.fromkeys(tables, 0)
            async for t, batch in rows:
                mine = tables.get(t.name)
                if mine is None or set(mine.columns) != set(t.columns):
                    raise StoreError(f"store copy: table {t.name} ({', '.join(t.columns)}) does "
                                     f"not match {self._where}'s schema")
                kinds = dict(zip(mine.columns, mine.kinds, strict=True))
                convert = [_FROM_ANY[kinds[c]] for c in t.columns]
                records = [tuple(None if v is None else f(v) for f, v in zip(convert, row, strict=True))
                           for row in batch]
                await con.copy_records_to_table(t.name, records=records, columns=list(t.columns),
                                                schema_name=self._schema)
                counts[t.name] += len(batch)
            # serial columns (deliveries.id) continue after the ids copied
            for name, col in await con.fetch(
                    "SELECT table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND column_default LIKE 'nextval(%'"):
                if name in tables:
                    await con.execute(
                        f"SELECT setval(pg_get_serial_sequence($1, $2), "
                        f'COALESCE((SELECT max("{col}") FROM "{name}"), 0) + 1, false)',
                        f'"{name}"', col)
        return counts


async def _tables(con: Any) -> list[Table]:
    rows = await con.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name <> 'schema_version' "
        "ORDER BY table_name, ordinal_position")
    columns: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        columns.setdefault(r["table_name"], []).append((r["column_name"], _kind(r["data_type"])))
    refs: dict[str, set[str]] = {}
    for r in await con.fetch(
            "SELECT c.conrelid::regclass::text AS t, c.confrelid::regclass::text AS ref "
            "FROM pg_constraint c WHERE c.contype = 'f' "
            "AND c.connamespace = current_schema()::regnamespace"):
        refs.setdefault(r["t"].split(".")[-1].strip('"'), set()).add(r["ref"].split(".")[-1].strip('"'))
    return referenced_first(
        [Table(name=n, columns=tuple(c for c, _ in cols), kinds=tuple(k for _, k in cols))
         for n, cols in columns.items()], refs)


def _kind(data_type: str) -> str:
    if data_type.startswith("timestamp"):
        return "time"
    if data_type == "boolean":
        return "bool"
    if data_type in ("integer", "bigint", "smallint"):
        return "int"
    if data_type in ("double precision", "real", "numeric"):
        return "real"
    return "text"


def _to_time(v: object) -> datetime:
    return dt_from_text(v) if isinstance(v, str) else utc(v)  # type: ignore[arg-type]


def _to_text(v: object) -> str:
    return _text(v if isinstance(v, str) else str(v))


#: A value exported by either store (SQLite: times as text, booleans as integers), as
#: PostgreSQL holds it in a column of that kind.
_FROM_ANY: dict[str, Callable[[Any], object]] = {
    "time": _to_time, "bool": bool, "int": int, "real": float, "text": _to_text,
}
