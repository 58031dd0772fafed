"""What the daemon says about failures that repeat: the store's, and failing feeds'.

A full disk fails every poll, every claim and every delivery round; a dead feed fails on
each of its polls. Each problem is one line when it starts or changes, at debug while it
repeats, one line when it ends, and one summary line per summary period while it lasts
(the decisions are ``monitor.core.streaks``'; this module has the clock and the logger):

    error   store.failed kind=full path=/var/lib/monitor/state.db during=poll:bbc
            error="database or disk is full" fix="free space on the disk holding …"
    info    store.recovered kind=full failures=120 since=…
    error   store.failing kind=full failures=120 since=… path=… fix=…     (each summary)
    warning feeds.failing count=2 feeds="a (12x, HTTP 503 Service Unavailable, since 10:02), …"
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from monitor.core.streaks import Streaks
from monitor.errors import StoreError
from monitor.log import get_logger, scrub

log = get_logger("monitor.shell.daemon")

STORE = "store"


def store_fields(e: StoreError) -> dict[str, object]:
    """The fields of a store failure's log line: what kind, where, and what to do."""
    fields: dict[str, object] = {"kind": e.kind}
    if e.where:
        fields["path"] = e.where
    fields["error"] = scrub(e.detail or str(e))
    if e.fix:
        fields["fix"] = e.fix
    return fields


class Trouble:
    def __init__(self, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self.feeds = Streaks()
        self._store = Streaks()
        self._store_error: StoreError | None = None  # the latest, for the summary

    # -- the store ------------------------------------------------------------------------
    def store_failed(self, e: StoreError, during: str) -> None:
        """One error line when a store problem starts or changes; debug while it repeats
        (with the traceback, for a developer)."""
        self._store_error = e
        verdict = self._store.failed(STORE, f"{e.kind}: {e.detail or e}", self.clock())
        if verdict == "repeat":
            streak = self._store.get(STORE)
            log.debug("store.failed", during=during, failures=streak.count if streak else 0,
                      **store_fields(e), exc_info=e)
        else:
            log.error("store.failed", during=during, **store_fields(e))

    def store_ok(self) -> None:
        """A write went through: a store problem, if there was one, is over."""
        streak = self._store.succeeded(STORE)
        if streak is not None:
            e = self._store_error
            log.info("store.recovered", failures=streak.count, since=streak.since.isoformat(),
                     **({"kind": e.kind} if e else {}))
            self._store_error = None

    @property
    def store_failing(self) -> bool:
        return STORE in self._store

    # -- feeds ----------------------------------------------------------------------------
    def feed_polled(self, feed: str, *, failed: bool, problem: str | None) -> None:
        if failed:
            self.feeds.failed(feed, problem or "failed", self.clock())
        else:
            self.feeds.succeeded(feed)

    # -- the summary ------------------------------------------------------------------------
    def summarize(self) -> None:
        """The problems that go on: one line each (called on the summary cadence)."""
        streak = self._store.get(STORE)
        if streak is not None and self._store_error is not None:
            log.error("store.failing", failures=streak.count, since=streak.since.isoformat(),
                      **store_fields(self._store_error))
        if self.feeds:
            log.warning("feeds.failing", count=len(self.feeds), feeds=scrub(self.feeds.summary()))
