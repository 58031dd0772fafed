"""Prometheus metrics, in a registry of their own (one per daemon, so tests don't collide).

``Metrics(collect=False)`` is for a process that never exposes them (``monitor once``:
no server, nothing reads them): every metric is ``OFF``, whose updates do nothing, and
prometheus_client is not even imported. Creating a labelled child costs about 30 µs, and
``monitor once`` would create three per feed only to throw them away at exit.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class _Off:
    """A metric that nobody collects: every update does nothing."""

    __slots__ = ()

    def labels(self, *values: Any, **named: Any) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass

    def remove(self, *values: Any) -> None:
        pass


OFF: Any = _Off()

#: PostgreSQL statements sent by this process, by store operation (``PostgresStore``
#: counts them; each daemon's ``Metrics`` shows them as ``monitor_store_queries_total``).
#: Process-wide, as the store is: it may be opened before, or without, a ``Metrics``.
STORE_QUERIES: Tally[str] = Tally()


class _StoreQueries:
    """``monitor_store_queries_total{op}``, read from ``STORE_QUERIES`` at each scrape
    (a prometheus_client collector)."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "monitor_store_queries",
            "PostgreSQL statements sent, by store operation (transaction control and the "
            "pool's reset of a released connection included)", labels=["op"])
        for op, n in sorted(STORE_QUERIES.items()):
            family.add_metric([op], n)
        yield family


class Metrics:
    def __init__(self, *, collect: bool = True) -> None:
        """The daemon's metrics; with ``collect=False`` none (module docstring)."""
        self.collect = collect
        if not collect:
            self.registry: CollectorRegistry | None = None
            self._off()
            return
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.polls = Counter(
            "monitor_polls_total", "Feed polls by result", ["feed", "result"], registry=r
        )
        self.fetch_seconds = Histogram(
            "monitor_fetch_seconds",
            "Time to poll one feed: fetch, and parse and store when it changed",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.stories = Counter(
            "monitor_stories_total", "Stories seen by outcome", ["feed", "outcome"], registry=r
        )
        self.matches = Counter("monitor_rule_matches_total", "Rule matches", ["rule"], registry=r)
        self.deliveries = Counter(
            "monitor_deliveries_total", "Delivery attempts by result", ["channel", "result"], registry=r
        )
        self.outbox_pending = Gauge(
            "monitor_outbox_pending", "Deliveries waiting to be sent, per channel", ["channel"],
            registry=r,
        )
        self.outbox_oldest_age = Gauge(
            "monitor_outbox_oldest_pending_age_seconds",
            "Age of the oldest delivery waiting to be sent, per channel (0: none waiting)",
            ["channel"], registry=r,
        )
        self.feed_failures = Gauge(
            "monitor_feed_consecutive_failures",
            "Consecutive failed polls (0 after any success, a 304 included)", ["feed"], registry=r
        )
        self.poll_errors = Counter(
            "monitor_poll_errors_total",
            "Failed polls by kind: timeout, connection, tls, http, too_large, redirect, "
            "invalid_url, parse, parse_timeout, internal", ["feed", "kind"], registry=r,
        )
        self.fetched_bytes = Counter(
            "monitor_fetched_bytes_total", "Body bytes of the feeds' 200 responses (decoded)",
            ["feed"], registry=r,
        )
        self.feed_last_success = Gauge(
            "monitor_feed_last_success_timestamp_seconds",
            "When the feed was last polled successfully (a 304 included), Unix time",
            ["feed"], registry=r,
        )
        self.channel_failures = Gauge(
            "monitor_channel_consecutive_failures",
            "Failed sends of a channel since its last successful one", ["channel"], registry=r,
        )
        self.config_reloads = Counter(
            "monitor_config_reloads_total", "Whole-config reloads by result (ok, invalid)",
            ["result"], registry=r,
        )
        self.stale_items = Counter(
            "monitor_stale_items_skipped_total",
            "New items not alerted on because they were published more than max_age ago",
            ["feed"], registry=r,
        )
        self.ops_notices = Counter(
            "monitor_ops_notices_total",
            "Operational notices queued (feed failing, silent, recovered)", ["kind"], registry=r,
        )
        self.rules_loaded = Gauge("monitor_rules_loaded", "Rules in the active set", registry=r)
        self.rules_reloads = Counter(
            "monitor_rules_reloads_total", "Rule reloads by result", ["result"], registry=r
        )
        self.clusters = Gauge(
            "monitor_dedup_index_stories", "Stories in the dedup window index", registry=r
        )
        self.parse_timeouts = Counter(
            "monitor_parse_timeouts_total",
            "Parse jobs abandoned at their deadline (fetch.parse_timeout)", ["feed"], registry=r,
        )
        self.parse_workers_replaced = Counter(
            "monitor_parse_workers_replaced_total",
            "Parse worker processes killed and replaced, by why: timeout (a job exceeded its "
            "deadline) or died", ["reason"], registry=r,
        )

        self.peer_stories = Counter(
            "monitor_peer_stories_total",
            "Stories other instances sharing the store saved, added to this one's dedup index",
            registry=r,
        )
        # the poll scheduler (shell.daemon): slots, claims, lag behind the due times
        self.poll_lag = Histogram(
            "monitor_poll_lag_seconds",
            "How late a poll started: its claim's time minus the feed's due time",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.polls_in_flight = Gauge(
            "monitor_polls_in_flight",
            "Polls started and not finished (at most the resolved fetch.concurrency)",
            registry=r,
        )
        self.poll_slots = Gauge(
            "monitor_poll_slots",
            "Polls this instance runs at once at most: fetch.concurrency as resolved at start",
            registry=r,
        )
        self.feed_claims = Counter(
            "monitor_feed_claims_total",
            "Claim queries for due feeds, by what started them: the scheduler's tick, or "
            "polls that finished and freed slots (refill)", ["trigger"], registry=r,
        )
        self.feeds_claimed = Counter(
            "monitor_feeds_claimed_total",
            "Feeds claimed for polling, by what started their claim (tick, refill)",
            ["trigger"], registry=r,
        )
        self.scheduler_ticks = Counter(
            "monitor_scheduler_ticks_total",
            "Periodic jobs' ticks by result: ran, or skipped because the job's previous "
            "run was still going", ["job", "result"], registry=r,
        )
        self.gc_seconds = Counter(
            "monitor_gc_seconds",
            "Seconds the garbage collector held the process, by generation (2: full)",
            ["generation"], registry=r,
        )
        self.gc_collections = Counter(
            "monitor_gc_collections_total", "Garbage collections, by generation",
            ["generation"], registry=r,
        )
        r.register(_StoreQueries())

    def _off(self) -> None:
        names = ("polls fetch_seconds stories matches deliveries outbox_pending "
                 "outbox_oldest_age feed_failures poll_errors fetched_bytes feed_last_success "
                 "channel_failures config_reloads stale_items ops_notices rules_loaded "
                 "rules_reloads clusters parse_timeouts parse_workers_replaced peer_stories "
                 "poll_lag polls_in_flight poll_slots feed_claims feeds_claimed scheduler_ticks "
                 "gc_seconds gc_collections")
        for name in names.split():
            setattr(self, name, OFF)


    def render(self) -> bytes:
        if self.registry is None:
            raise RuntimeError("these metrics are not collected (Metrics(collect=False))")
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
