"""The Store protocol: everything the daemon keeps between polls and restarts.

Implementations: ``sqlite.SQLiteStore`` (default, embedded) and ``postgres.PostgresStore``
(several instances sharing the work). Both pass the one shared suite in
``tests/test_store.py``.

Every method raises ``StoreError`` (wrapping the driver's exception with ``from``) when
the database fails. Times are timezone-aware UTC datetimes and are always passed in:
a store never reads the clock.

Durability contract (the outbox): ``save_poll`` records the feed state, the new
stories, their cluster membership and the deliveries in ONE transaction. A delivery's
``key`` is unique: saving a delivery whose key exists is a no-op, so a replay after a
crash sends nothing twice. A delivery is marked sent only after the peer accepted it.
"""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Sequence,
)
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from monitor.core.model import Alert, ClusterInfo, Delivery, FeedState, GroupState, Story
from monitor.errors import StoreError
from monitor.store.migrations import Plan


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredStory:
    """A story with the cluster it was assigned to."""

    story: Story
    cluster: str


@dataclass(frozen=True, kw_only=True, slots=True)
class PollSave:
    """What one poll writes: the arguments of ``Store.save_poll``, for ``save_polls``."""

    state: FeedState
    stories: Sequence[StoredStory] = ()
    deliveries: Sequence[Delivery] = ()
    clusters: Sequence[ClusterInfo] = ()
    merges: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class DeliveryStatus:
    """An outbox row as seen by an operator (``monitor status``, health)."""

    id: int
    key: str
    channel: str
    state: str  # "pending" | "sent" | "failed" (permanently)
    attempts: int
    created: datetime
    next_attempt: datetime | None
    sent_at: datetime | None
    last_error: str | None
    ref: str | None
    rule: str = ""
    cluster: str = ""
    parent_key: str | None = None  # an update: its first alert's key
    title: str | None = None  # the headline of the story cluster the alert is about


@dataclass(frozen=True, kw_only=True, slots=True)
class Table:
    """A table of the schema as ``monitor store copy`` moves it (``Store.tables``)."""

    name: str
    columns: tuple[str, ...]
    # per column, how this store holds its values: "text", "int", "real", "bool" or
    # "time" (SQLite keeps times as fixed-width text and booleans as integers: "text"
    # and "int" there)
    kinds: tuple[str, ...]


#: A batch of rows of one table, values in the columns' order (``Store.export_rows``).
Rows = tuple[Table, Sequence[tuple[object, ...]]]


@dataclass(frozen=True, kw_only=True, slots=True)
class DedupSnapshot:
    """The dedup index's state as one process left it (``StoryIndex.snapshot``), so
    that the next start loads it and adds only the stories saved since, instead of
    rebuilding the index from every story of the window."""

    key: str  # ``index.snapshot_key`` of the settings it holds for
    taken: datetime  # the clock when it was taken: stories first seen later are not in it
    stories: int  # the stories it holds (for logs)
    data: bytes


#: The ``state`` filter of ``Store.delivery_log``: a stored state, or ``held``.
LOG_STATES: tuple[str, ...] = ("pending", "sent", "failed", "held")


@dataclass(frozen=True, kw_only=True, slots=True)
class DeliveryRecord:
    """An outbox row with the alert it carries (``monitor alerts``)."""

    status: DeliveryStatus
    rule: str
    alert: Alert | None  # None when the stored payload cannot be read any more


@dataclass(frozen=True, kw_only=True, slots=True)
class Backlog:
    """One channel's pending deliveries: how many, and when the oldest was queued."""

    pending: int
    oldest: datetime  # the ``created`` of the oldest pending delivery


@dataclass(frozen=True, kw_only=True, slots=True)
class Instance:
    """A daemon sharing the store, as its heartbeats record it (``Store.heartbeat``)."""

    id: str  # unique per process start
    host: str
    pid: int
    version: str  # monitor's version
    started: datetime
    heartbeat: datetime  # the last one recorded
    # when another instance found it silent past the grace period and retook its claims
    # (None: alive, as far as the store knows)
    dead_since: datetime | None = None
    feeds_retaken: int = 0  # its claimed feeds made due again then
    deliveries_retaken: int = 0  # its claimed deliveries made due again then


@runtime_checkable
class Store(Protocol):
    """Persistent state. Use as ``async with store:`` (``open`` creates/migrates the schema;
    a schema newer than the code raises ``SchemaTooNew``)."""

    async def open(self) -> None:
        """Connect and create or migrate the schema. Idempotent."""

    async def close(self) -> None:
        """Release connections."""

    async def migrate(self, *, dry_run: bool = False) -> Plan:
        """Bring the schema to the latest version (what ``open`` does unless the store
        was made with ``migrate=False``), one migrator at a time across processes.
        ``dry_run`` runs every step in a transaction and rolls it back. Raises
        ``SchemaTooNew`` when the database is newer than the code."""

    def outage(self) -> dict[str, Any] | None:
        """While a server store has lost its server (restarted, cut off) and reconnects
        with backoff: ``down_for`` and ``retry_in`` (seconds) and the last ``error``;
        None when it answers (and always for SQLite)."""

    async def __aenter__(self) -> Store: ...

    async def __aexit__(self, *exc: object) -> None: ...

    # -- feeds --------------------------------------------------------------------------
    async def get_feeds(self) -> list[FeedState]:
        """All stored feeds, ordered by name."""

    async def get_feed(self, name: str) -> FeedState | None:
        """One feed by name, or None."""

    async def save_feed(self, state: FeedState) -> None:
        """Insert or replace a feed's state (by name)."""

    async def save_feeds(self, states: Sequence[FeedState]) -> None:
        """``save_feed`` for several feeds in one transaction (polls that found nothing
        new, written together)."""

    async def add_feeds(self, states: Sequence[FeedState]) -> int:
        """Insert the feeds that are not stored yet, in one transaction; a stored feed
        is left as it is (another instance starting at the same time added it, and may
        be polling it). Returns how many were inserted."""

    async def reschedule_feeds(
        self, moves: Sequence[tuple[str, datetime | None, datetime]]
    ) -> int:
        """For each (name, expected next_poll, new next_poll): move the feed's next poll,
        only if its ``next_poll`` is still the expected one and nobody claims it (a
        compare-and-set: an instance starting while others poll must not move a feed
        another one has claimed or saved since it looked). Returns how many moved."""

    async def delete_feed(self, name: str) -> None:
        """Forget a feed removed from the config (its stories stay until pruned)."""

    async def claim_due_feeds(
        self, now: datetime, *, limit: int, lease_until: datetime, by: str | None = None
    ) -> list[FeedState]:
        """Feeds with ``next_poll <= now`` (or never polled), not gone, oldest first.

        The claim sets ``next_poll`` to ``lease_until`` so that another worker (or another
        instance sharing a PostgreSQL store) does not poll the same feed concurrently;
        ``save_poll``/``save_feed`` then sets the real next poll time. ``by`` (an
        ``Instance.id``) is recorded as the claimer until the feed is saved: when that
        instance is declared dead (``heartbeat``), the feed is due again at once.
        """

    async def release_feeds(self, names: Sequence[str], *, by: str, now: datetime) -> int:
        """Give back feeds that ``by`` claimed and could not save (the store was
        unreachable then): those still claimed by ``by`` are due at ``now``; a feed
        saved or claimed since by another is left alone. Returns how many."""

    # -- stories ------------------------------------------------------------------------
    async def known(self, ids: Iterable[str], links: Iterable[str]) -> set[str]:
        """The subset of the given story ids and canonical links already stored."""

    async def known_apart(
        self, ids: Iterable[str], links: Iterable[str]
    ) -> tuple[set[str], set[str]]:
        """``known`` in one round trip, kept apart: the given ids that are stored story
        ids, and the given links that are stored canonical links (an id that equals a
        stored link is not a known id)."""

    async def save_poll(
        self,
        state: FeedState,
        stories: Sequence[StoredStory],
        deliveries: Sequence[Delivery],
        clusters: Sequence[ClusterInfo] = (),
        merges: Sequence[tuple[str, str]] = (),
    ) -> list[Delivery]:
        """One transaction: cluster merges (as ``merge_clusters``, first), feed state, new
        stories, cluster upserts and outbox rows.

        Stories whose id exists are ignored. ``clusters`` are upserted by id (sources and
        last_seen replaced, first_seen kept). Returns the deliveries actually inserted
        (with ``id`` set); those whose key already existed are skipped.
        """

    async def save_polls(self, polls: Sequence[PollSave]) -> list[list[Delivery]]:
        """Several polls' ``save_poll`` in one transaction, in order: all are stored or
        none is (the store's error is raised). Returns each poll's inserted deliveries.
        For many small writes that arrive together (a fresh instance's first pass
        baselines every feed): one commit instead of one per poll."""

    async def queue(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """Add deliveries to the outbox outside a poll (operational notices about a
        channel); those whose key is already there are left out. Returns the inserted
        ones, with their ids."""

    async def recent_stories(self, since: datetime, *, limit: int | None = None) -> list[StoredStory]:
        """Stories first seen at or after ``since``, oldest first (dedup rebuild, backtest)."""

    async def watch_stories(
        self,
        on_stories: Callable[[list[StoredStory]], None],
        on_gap: Callable[[], Awaitable[None]],
    ) -> bool:
        """Tell this process about the stories other processes sharing the store save.

        From now until ``close``, ``on_stories`` is called with the stories another
        instance saved (``save_poll``), soon after its transaction commits, oldest first;
        a process's own stories are not passed back. When the store may have missed some
        (its connection dropped), ``on_gap`` is awaited once it is watching again: the
        caller reloads what it needs. Returns False when the store is not shared between
        processes (SQLite: one instance), and then never calls either."""

    @property
    def listening(self) -> bool | None:
        """Whether ``watch_stories`` hears the other instances right now; None when
        there is nobody to hear (SQLite) or nobody asked."""

    async def get_story(self, story_id: str) -> StoredStory | None:
        """One story by id."""

    async def save_dedup_snapshot(self, snapshot: DedupSnapshot) -> None:
        """Keep ``snapshot`` as the one dedup snapshot (any other, of another key, is
        dropped). A cache, not state: it lives outside the versioned schema, in a table
        created the first time one is saved, and losing it only costs a rebuild."""

    async def load_dedup_snapshot(self, key: str) -> DedupSnapshot | None:
        """The dedup snapshot saved under ``key``, or None (none saved, or only one of
        other settings)."""

    async def prune(self, before: datetime) -> int:
        """Delete stories first seen before ``before`` (and clusters left empty, and sent
        or failed deliveries created before it). Returns the number of stories deleted."""

    # -- clusters -----------------------------------------------------------------------
    async def get_cluster(self, cluster_id: str) -> ClusterInfo | None:
        """A cluster with its member story ids and distinct sources."""

    async def list_clusters(self, *, since: datetime | None = None, limit: int = 50) -> list[ClusterInfo]:
        """Clusters, most recently seen first."""

    # -- outbox -------------------------------------------------------------------------
    async def claim_deliveries(
        self, now: datetime, *, limit: int, lease_until: datetime,
        channel: str | None = None, exclude: Sequence[str] = (), by: str | None = None,
    ) -> list[Delivery]:
        """Pending deliveries due at ``now`` (``next_attempt <= now``), at most ``limit``,
        in the order they came due (``next_attempt``, then id: a fresh alert is due when
        it is queued, so oldest first; a retry takes its place when its time comes), and
        returned in sending order (``parents_first``); only ``channel``'s when it is
        given, and none of the channels in ``exclude`` (each channel is dispatched on
        its own; ``exclude`` finds the deliveries of channels that are no longer
        configured). One channel's claim reads the partial index ``deliveries_claim``
        (channel, next_attempt, id WHERE pending) in order and stops at the limit: its
        cost follows the limit, not the number of due deliveries.

        Claimed rows get ``next_attempt = lease_until`` so a crash mid-send retries them
        after the lease (at-least-once towards the peer, exactly-once when it answered),
        or sooner when their claimer ``by`` is declared dead (``heartbeat``); marking
        or releasing a delivery clears its claimer.
        ``Delivery.thread_ref`` is filled from the parent delivery's ``ref`` when sent.

        An update is never claimed before its first alert: only when that alert is no
        longer pending (sent, failed, or never stored), or in the same claim, and then
        after it (``parents_first``). An alert that came due after its update (a retry)
        is claimed with it, or, when the claim cannot hold both, instead of it. Across
        instances too: an alert claimed by another instance keeps its updates back until
        it is sent.
        """

    async def mark_sent(self, delivery_id: int, now: datetime, ref: str | None) -> None:
        """The peer accepted it: state ``sent``, ``ref`` kept for threading updates."""

    async def mark_sent_many(
        self, delivery_ids: Sequence[int], now: datetime, ref: str | None
    ) -> None:
        """``mark_sent`` for several deliveries in one transaction (a batch written in
        one go, a digest); an unknown id raises ``StoreError`` and marks none."""

    async def mark_sent_each(self, marks: Sequence[tuple[int, datetime, str | None]]) -> None:
        """``mark_sent`` for several deliveries, each (id, sent at, ref) with its own time
        and ref, in ONE transaction (the dispatcher's marks of one-by-one sends, written
        together: ``shell.dispatch``). A delivery already sent is left as it is; an
        unknown id raises ``StoreError`` and marks none."""

    async def mark_failed(
        self, delivery_id: int, now: datetime, error: str, next_attempt: datetime | None
    ) -> None:
        """A failed attempt: ``attempts += 1``; retry at ``next_attempt``, or give up
        (state ``failed``) when it is None."""

    async def mark_failed_many(
        self, delivery_ids: Sequence[int], now: datetime, error: str,
        next_attempt: datetime | None,
    ) -> None:
        """``mark_failed`` for several deliveries in one transaction (one message of many
        that failed: a digest, a group's message); an unknown id raises ``StoreError``
        and marks none."""

    async def deliveries(self, *, state: str | None = None, limit: int = 100) -> list[DeliveryStatus]:
        """Outbox rows for operators, newest first, optionally filtered by state."""

    async def delivery_log(
        self, *, since: datetime, now: datetime, rule: str | None = None,
        channel: str | None = None, state: str | None = None, limit: int = 1000,
    ) -> list[DeliveryRecord]:
        """What the outbox did since ``since``, for ``monitor alerts``: deliveries created,
        last tried or sent at or after ``since``, newest first (by ``created``, then id),
        at most ``limit``; only those of ``rule`` and/or ``channel`` when given.

        ``state`` is a stored state (``pending``, ``sent``, ``failed``) or ``held``: pending
        and not due at ``now`` (``next_attempt > now``: a digest waiting for its time, a
        retry waiting out its backoff, a claim in flight). ``pending`` includes the held."""

    async def last_alert(self, cluster: str, rule: str, channel: str) -> datetime | None:
        """When an alert for this cluster × rule × channel was last created (cooldown)."""

    async def count_pending(self) -> int:
        """Deliveries not yet sent and not given up."""

    async def rule_hits(self, since: datetime) -> dict[str, int]:
        """How often each rule fired since ``since``: the number of distinct story
        clusters it created a first alert (not an update) for at or after ``since``,
        whatever the channels and the state of their deliveries. Rules without an alert
        in that time are absent (the status page shows them as 0)."""

    async def backlog(self) -> dict[str, Backlog]:
        """Per channel with pending deliveries (not yet sent, not given up, whether due
        now or later): how many, and the ``created`` of the oldest. One cheap grouped
        query (metrics: outbox depth and oldest pending age per channel)."""

    async def requeue_failed(
        self, now: datetime, *, channel: str | None = None, ids: Sequence[int] = ()
    ) -> list[int]:
        """Give failed deliveries another go (the cause was fixed: a token, a recipient,
        the SMTP settings): ``failed`` → ``pending``, due at ``now``, with their attempts
        and last error kept. Only those of ``channel`` and/or with the given ``ids`` when
        set. Returns their ids, oldest first."""

    async def release(self, delivery_id: int, next_attempt: datetime) -> None:
        """Give a claimed delivery back without counting an attempt (its channel is
        failing; it was not tried)."""

    async def release_many(self, delivery_ids: Sequence[int], next_attempt: datetime) -> None:
        """``release`` for several deliveries in one transaction (the rest of a claim
        given back at a stop, a pause, quiet hours); an unknown id raises ``StoreError``
        and releases none."""

    async def cluster_alerts(self, cluster: str) -> list[Delivery]:
        """The first alerts (not updates) created for a cluster, any state, oldest first:
        routing uses them for cooldowns and "carried by N sources" updates."""

    async def group_states(self, groups: Collection[str]) -> dict[str, GroupState]:
        """The state of each of ``groups`` (``Delivery.group`` keys) that has deliveries:
        when its latest sent delivery was sent and its ``ref`` (the group's thread
        root), and the ``created`` of its oldest pending one. A group with no delivery
        is left out. Routing places a grouped delivery with it (``route.group_slot``),
        and dispatch decides with it whether a group's message is a threaded follow-up
        (``route.group_thread``)."""

    async def merge_clusters(self, merges: Sequence[tuple[str, str]]) -> None:
        """One transaction: for each (absorbed, survivor) pair, in order, move the absorbed
        cluster's stories and deliveries to the survivor and fold its row into the
        survivor's (sources united, the earlier first story and first_seen, the later
        last_seen), then delete it. A survivor without a row takes over the absorbed
        row; an absorbed cluster without a row (its stories not saved yet) is skipped.
        The survivor's oldest first alert stays the thread its updates follow. The merge
        is remembered: ``save_poll`` files stories, clusters and deliveries that another
        instance still gives the absorbed id under the survivor, and ``cluster_alerts``
        of the absorbed id answers the survivor's (until ``prune`` drops the survivor)."""

    # -- instances ----------------------------------------------------------------------
    async def heartbeat(
        self, me: Instance, now: datetime, *, dead_after: float | None
    ) -> list[Instance]:
        """One transaction: record that ``me`` is alive at ``now`` (its row inserted the
        first time; revived if another instance had declared it dead), then, unless
        ``dead_after`` is None, declare dead every other instance whose last heartbeat is
        more than ``dead_after`` seconds before ``now`` and that is not declared yet: the
        feeds and pending deliveries it still claims become due at ``now`` (claimer
        cleared). Returns the instances this call declared dead, with what was retaken.
        Two instances judging at once declare each dead instance once. Rows of
        instances dead for a day are deleted."""

    async def instances(self, *, since: datetime) -> list[Instance]:
        """The instances not declared dead, and those declared dead at or after
        ``since``; by start time."""

    async def leave(self, instance_id: str) -> None:
        """A clean stop: forget the instance (its claims were given back or finished)."""

    # -- copying a whole store (``monitor store copy``) ---------------------------------
    async def tables(self) -> list[Table]:
        """Every table of the schema but its version record, each after the tables it
        references (the order in which rows can be inserted)."""

    def export_rows(self, tables: Sequence[Table], *, batch: int) -> AsyncGenerator[Rows, None]:
        """The rows of ``tables`` (columns by name, in each Table's order), in batches of
        at most ``batch`` rows, all read from ONE consistent snapshot (a read transaction
        held until the iterator ends: close it, e.g. with ``contextlib.aclosing``).
        Values are this store's (a time is text in SQLite, a datetime in PostgreSQL);
        ``import_rows`` of either store takes both."""

    async def import_rows(self, rows: AsyncIterable[Rows], *, replace: bool = False) -> dict[str, int]:
        """Insert batches of rows (from ``export_rows`` of a store at the same schema
        version) in ONE transaction, keeping every value, ids included (id sequences
        move past them); returns the rows inserted per table. Raises ``StoreError``
        without writing anything when a table already has rows, unless ``replace``:
        then every table is emptied first, in the same transaction."""


def parents_first(batch: Sequence[Delivery]) -> list[Delivery]:
    """A claim in sending order: oldest first, and an update after its first alert when
    both are in the claim (an update's poll may have read the clock before its alert's
    poll did, so ``created`` alone can put it first)."""
    created = {d.key: d.created for d in batch}

    def key(d: Delivery) -> tuple[datetime, bool, datetime, int]:
        parent = created.get(d.parent_key) if d.parent_key else None
        return (parent or d.created, parent is not None, d.created, d.id or 0)

    return sorted(batch, key=key)


def referenced_first(tables: Sequence[Table], refs: dict[str, set[str]]) -> list[Table]:
    """``tables`` ordered so that each comes after the tables it references (``refs``:
    table -> the tables its foreign keys point to), otherwise by name."""
    by_name = {t.name: t for t in tables}
    out: list[Table] = []
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done or name not in by_name or name in path:
            return
        for ref in sorted(refs.get(name, ())):
            visit(ref, (*path, name))
        done.add(name)
        out.append(by_name[name])

    for name in sorted(by_name):
        visit(name, ())
    return out


def not_empty(where: str, full: dict[str, int]) -> StoreError:
    """``import_rows``'s refusal of a target that holds rows (``full``: table -> rows)."""
    rows = ", ".join(f"{n} in {t}" for t, n in full.items())
    return StoreError(
        f"the target {where} is not empty ({rows}): copying into it would mix two stores' "
        "feeds, stories and outboxes, and clash on their keys. Copy into a new database, "
        "or pass --force to replace what it holds",
        where=where, fix="copy into a new database, or pass --force to replace its contents")
