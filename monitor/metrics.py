"""Prometheus metrics, in a registry of their own (one per daemon, so tests don't collide)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

#: PostgreSQL statements sent by this process, by store operation (``PostgresStore``
#: counts them; each daemon's ``Metrics`` shows them as ``monitor_store_queries_total``).
#: Process-wide, as the store is: it may be opened before, or without, a ``Metrics``.
STORE_QUERIES: Tally[str] = Tally()


class _StoreQueries(Collector):
    """``monitor_store_queries_total{op}``, read from ``STORE_QUERIES`` at each scrape."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "monitor_store_queries",
            "PostgreSQL statements sent, by store operation (transaction control and the "
            "pool's reset of a released connection included)", labels=["op"])
        for op, n in sorted(STORE_QUERIES.items()):
            family.add_metric([op], n)
        yield family


class Metrics:
    def __init__(self) -> None:
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

        r.register(_StoreQueries())

    def render(self) -> bytes:
        return generate_latest(self.registry)
