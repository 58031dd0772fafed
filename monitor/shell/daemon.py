"""Lifecycle: build the runtime, run the ticks, reload rules, stop gracefully.

``Runtime`` owns every resource (store, HTTP session, parse pool, notifiers, server) in
one ``AsyncExitStack``. ``Daemon.run()`` is ``monitor run``; ``Runtime.poll_all()`` +
``Runtime.drain()`` is ``monitor once``.

Stopping (SIGTERM/SIGINT): stop claiming feeds, let in-flight polls finish and the
delivery in hand be done within ``shutdown_timeout`` (an abandoned poll committed
nothing: its feed is polled again on restart), kill the parse workers, close. ``monitor
run`` also arms a watchdog: if anything still holds the process ``EXIT_MARGIN`` seconds
after that deadline (a thread stuck in C, a hung close), it exits all the same. SIGHUP and any change in the rules directory reload
the rules: validated as a whole and swapped atomically, or rejected with the old set
kept running.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from monitor.config import Config, QuietHours, secrets_of
from monitor.core.dedup.features import DedupSettings
from monitor.core.model import Delivery, FeedSpec, FeedState
from monitor.core.rules.match import compile_rules
from monitor.core.rules.model import RuleSet
from monitor.core.schedule import initial_poll
from monitor.errors import MonitorError, RulesError, StoreError
from monitor.log import get_logger, redact, redact_url, scrub
from monitor.metrics import Metrics
from monitor.notify.base import Notifier
from monitor.notify.registry import build_notifiers
from monitor.shell.dedupstate import SAVE_EVERY, DedupState
from monitor.shell.dispatch import Dispatcher, DispatchResult
from monitor.shell.fetch import Fetcher
from monitor.shell.parsepool import ParsePool, Processes, Threads
from monitor.shell.pipeline import ActiveRules, Pipeline, PollOutcome
from monitor.shell.rulefiles import load_rules
from monitor.shell.trouble import Trouble
from monitor.store.base import Store, StoredStory
from monitor.store.open import open_store

log = get_logger(__name__)

FEED_LEASE = timedelta(minutes=10)
STOP_FLOOR = 1.0  # seconds the delivery in hand gets at least, even past shutdown_timeout
EXIT_MARGIN = 10.0  # seconds past shutdown_timeout after which `monitor run` exits regardless
SUMMARY_EVERY = 300.0  # seconds between "daemon.summary" lines (polls are logged at debug)


def utc_now() -> datetime:
    return datetime.now(UTC)


def load_active_rules(config: Config, now: datetime) -> ActiveRules:
    """Load, validate and compile the rules of ``config`` (raises RulesError)."""
    ruleset = load_rules(
        config.rules_path,
        channels=list(config.channels),
        feeds=[f.name for f in config.feeds],
        default_channels=config.defaults.channels,
        default_digest_tz=config.digest.tz,
    )
    return ActiveRules(ruleset=ruleset, matcher=compile_rules(ruleset), loaded_at=now)


def dedup_settings(config: Config) -> DedupSettings:
    kw: dict[str, Any] = {"window": config.dedup.window}
    if config.dedup.threshold is not None:
        kw["threshold"] = config.dedup.threshold
    return DedupSettings(**kw)


RELOAD_NAMES = 10  # rule names a reload log line lists per kind of change, at most


def reload_summary(old: RuleSet, new: RuleSet) -> dict[str, Any]:
    """What a rules reload changed, for its log line: counts of added, removed and
    changed rules, and their names (at most ``RELOAD_NAMES`` each, then "+N more")."""
    before = {r.name: r for r in old.rules}
    after = {r.name: r for r in new.rules}
    changes = {
        "added": sorted(after.keys() - before.keys()),
        "removed": sorted(before.keys() - after.keys()),
        "changed": sorted(n for n in after.keys() & before.keys() if after[n] != before[n]),
    }
    out: dict[str, Any] = {"rules": len(new.rules)}
    for kind, names in changes.items():
        if names:
            shown = names[:RELOAD_NAMES]
            more = len(names) - len(shown)
            out[kind] = len(names)
            out[f"{kind}_names"] = ", ".join(shown) + (f" (+{more} more)" if more else "")
    if len(out) == 1:
        out["unchanged"] = True
    return out


def make_pool(config: Config, metrics: Metrics | None = None) -> ParsePool:
    """The parse pool, each job within ``fetch.parse_timeout``. Processes (even one: only
    a process can be killed when its job runs past the deadline) are spawned, not forked:
    a worker is a fresh interpreter that inherits no listening socket, database or file
    watch and keeps the default SIGTERM; and it exits when the daemon dies, however it
    dies (``parsepool.worker_init``), so a kill -9 leaves nothing holding the port."""
    fc = config.fetch
    workers = fc.parse_workers or max(1, os.cpu_count() or 1)
    if fc.parse_in == "process":
        return ParsePool(Processes(workers), timeout=fc.parse_timeout, metrics=metrics)
    return ParsePool(Threads(lambda: ThreadPoolExecutor(max_workers=workers,
                                                        thread_name_prefix="parse")),
                     timeout=fc.parse_timeout, metrics=metrics)


async def sync_feeds(store: Store, specs: list[FeedSpec], now: datetime) -> list[FeedState]:
    """Make the stored feeds match the config: add new feeds (first poll spread over the
    next seconds), reset a feed whose configured URL changed, keep the schedule of the
    others (a restart resumes it instead of stampeding), forget removed feeds."""
    stored = {f.name: f for f in await store.get_feeds()}
    out: list[FeedState] = []
    changed: list[FeedState] = []
    for spec in specs:
        st = stored.get(spec.name)
        if st is None:
            st = FeedState(
                name=spec.name,
                url=spec.url,
                configured_url=spec.url,
                next_poll=initial_poll(now=now, interval=spec.interval, key=spec.name,
                                       last_polled=None, next_poll=None),
            )
        elif st.configured_url != spec.url:
            # a new URL is a new feed: its backlog is a silent baseline again
            st = replace(st, url=spec.url, configured_url=spec.url, etag=None,
                         last_modified=None, body_hash=None, gone=False, failures=0,
                         last_error=None, next_poll=now, baselined=False, ttl=None,
                         update_period=None, update_base=None, cadence=None,
                         poll_interval=None, poll_reason=None)
        else:
            st = replace(st, next_poll=initial_poll(
                now=now, interval=spec.interval, key=spec.name,
                last_polled=st.last_polled, next_poll=st.next_poll))
            if st.gone:
                log.warning("feed.gone", feed=spec.name, url=scrub(st.url),
                            hint="the server answered 410 Gone; change its url or remove it")
        if st != stored.get(spec.name):
            changed.append(st)
        out.append(st)
    # one transaction, and only for what changed: a restart with 50,000 feeds whose
    # schedule resumes writes nothing
    await store.save_feeds(changed)
    for name in set(stored) - {s.name for s in specs}:
        await store.delete_feed(name)
        log.info("feed.removed", feed=name)
    return out


class Runtime:
    """Every resource the pipeline needs, opened together and closed together."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], datetime] = utc_now,
        notifiers: dict[str, Notifier] | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.metrics = Metrics()
        self.trouble = Trouble(clock)  # store errors and failing feeds, said once
        self._stack = AsyncExitStack()
        self._notifiers = notifiers
        self._executor = executor
        self.store: Store
        self.pipeline: Pipeline
        self.dispatcher: Dispatcher
        self.pool: ParsePool
        self.dedup: DedupState
        self.on_sent: list[Callable[[Delivery], None]] = []

    async def __aenter__(self) -> Runtime:
        cfg = self.config
        redact(*secrets_of(cfg))
        now = self.clock()
        rules = load_active_rules(cfg, now)  # invalid rules: refuse to start
        self.metrics.rules_loaded.set(len(rules.ruleset.rules))
        try:
            self.store = open_store(cfg.store_url)
            await self._stack.enter_async_context(self.store)
            fc = cfg.fetch
            fetcher = Fetcher(
                user_agent=fc.user_agent,
                connect_timeout=fc.connect_timeout,
                timeout=fc.timeout,
                max_bytes=fc.max_bytes,
                max_redirects=fc.max_redirects,
                concurrency=fc.concurrency,
                per_host=fc.per_host,
            )
            await self._stack.enter_async_context(fetcher)
            given = self._executor
            if given is not None:  # the caller's, and the caller shuts it down
                pool = ParsePool(Threads(lambda: given), timeout=fc.parse_timeout,
                                 metrics=self.metrics)
            else:
                pool = make_pool(cfg, self.metrics)
                self._stack.callback(pool.shutdown)
            self.pool = pool
            # the index is loaded when a poll first brings a new story, from the store's
            # snapshot plus the stories saved since (dedupstate.py)
            self.dedup = DedupState(self.store, dedup_settings(cfg), window=cfg.dedup.window,
                                    clock=self.clock, metrics=self.metrics)
            index = self.dedup.index

            def from_peers(stored: list[StoredStory]) -> None:
                # the stories other instances sharing the store saved: near-duplicates
                # of them found here join their clusters instead of alerting again
                log.debug("dedup.from_peers", stories=self.dedup.from_peers(stored))
                if hasattr(self, "pipeline"):  # heard while starting: nothing cached yet
                    self.pipeline.forget_alerts({s.cluster for s in stored})

            # listening first, then loading: nothing saved in between is missed
            await self.store.watch_stories(from_peers, self.dedup.after_gap)
            self._stack.push_async_callback(self.dedup.save)  # at the end, before the store
            self.pipeline = Pipeline(
                config=cfg,
                store=self.store,
                fetcher=fetcher,
                index=index,
                index_ready=self.dedup.ready,
                rules=rules,
                prepare=pool,
                metrics=self.metrics,
                clock=self.clock,
                settle=cfg.dedup.settle,
            )
            self._stack.push_async_callback(self.pipeline.states.close)  # before the store
            notifiers = self._notifiers if self._notifiers is not None else build_notifiers(cfg)
            self.dispatcher = Dispatcher(
                self.store, notifiers, cfg.delivery, self.metrics, self.clock,
                on_sent=self._sent,
                rates={name: ch.rate for name, ch in cfg.channels.items()},
                quiet={name: q for name, ch in cfg.channels.items()
                       if isinstance(q := getattr(ch, "quiet", None), QuietHours)},
            )
            self.dispatcher.on_store_error = self.trouble.store_failed
            self._stack.push_async_callback(self.dispatcher.close)
            await sync_feeds(self.store, cfg.feed_specs(), now)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def _sent(self, d: Delivery) -> None:
        for cb in self.on_sent:
            cb(d)

    def reload_rules(self) -> bool:
        """Validate the rules on disk and swap them in; keep the old ones on error."""
        now = self.clock()
        try:
            new = load_active_rules(self.config, now)
        except RulesError as e:
            self.pipeline.rules.error = str(e)
            self.pipeline.rules.error_at = now
            self.metrics.rules_reloads.labels("invalid").inc()
            log.error("rules.invalid", problems=len(e.problems), error=str(e),
                      kept=len(self.pipeline.rules.ruleset.rules))
            return False
        old = self.pipeline.rules.ruleset
        self.pipeline.rules = new  # atomic: the next story sees the whole new set
        self.metrics.rules_loaded.set(len(new.ruleset.rules))
        self.metrics.rules_reloads.labels("ok").inc()
        log.info("rules.reloaded", **reload_summary(old, new.ruleset))
        if not new.ruleset.enabled:
            log.warning("rules.none_enabled", path=str(self.config.rules_path),
                        hint="no rule is enabled: nothing can alert; /healthz is degraded")
        return True

    async def poll_all(self) -> list[PollOutcome]:
        """Poll every configured feed now (``monitor once``), concurrently."""
        specs = {s.name: s for s in self.config.feed_specs()}
        states = [f for f in await self.store.get_feeds() if f.name in specs and not f.gone]
        return list(await asyncio.gather(
            *(self.poll_one(st, specs[st.name]) for st in states)
        ))

    async def poll_and_deliver(self) -> tuple[list[PollOutcome], DispatchResult]:
        """``poll_all`` with delivery alongside, as the daemon runs them: a delivery round
        starts as soon as a poll has queued alerts (one round at a time), so sending
        overlaps the polls still in flight; what is left is delivered at the end."""
        wake = asyncio.Event()
        previous = self.pipeline.on_queued

        def queued() -> None:
            wake.set()
            previous()

        self.pipeline.on_queued = queued
        total = DispatchResult()
        polling = asyncio.ensure_future(self.poll_all())
        waiting: set[asyncio.Future[Any]] = set()  # the wake-up wait in progress
        try:
            while not polling.done():
                woken = asyncio.ensure_future(wake.wait())
                waiting.add(woken)
                await asyncio.wait({polling, woken}, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                waiting.clear()
                if wake.is_set():
                    wake.clear()
                    try:
                        total = total + await self.drain()
                    except MonitorError as e:  # the store hiccuped: the final round retries
                        log.error("dispatch.error", error=scrub(str(e)))
            outcomes = polling.result()
        finally:
            self.pipeline.on_queued = previous
            for w in waiting:
                w.cancel()
            if not polling.done():  # cancelled from outside, or a bug: the polls stop too,
                polling.cancel()  # and are over before the caller closes what they use
                await asyncio.gather(polling, return_exceptions=True)
        return outcomes, total + await self.drain()

    async def poll_one(self, state: FeedState, spec: FeedSpec) -> PollOutcome:
        try:
            outcome = await self.pipeline.poll_feed(state, spec)
            self.metrics.fetch_seconds.observe(outcome.ms / 1000)
            self.trouble.store_ok()
            self.trouble.feed_polled(spec.name, failed=outcome.result in ("failed", "gone"),
                                     problem=outcome.error)
            return outcome
        except StoreError as e:
            if e.kind == "error":
                # unclassified: most likely this feed's data (a value the database
                # refuses, a bad stored payload): the feed's failure, said on the feed
                now = self.clock()
                error = self.config.redact(f"store refused this poll: {e}")
                log.warning("feed.failed", feed=spec.name, error=error)
                with contextlib.suppress(Exception):
                    await self.store.save_feed(replace(
                        state, last_polled=now, failures=state.failures + 1,
                        last_error=error, next_poll=now + timedelta(seconds=spec.interval)))
                return PollOutcome(feed=spec.name, result="failed", error=error)
            # the store itself (full, read-only, unreachable…): not the feed's fault:
            # one line, and no failure on the feed
            self.trouble.store_failed(e, f"poll:{spec.name}")
            with contextlib.suppress(Exception):
                await self.store.save_feed(replace(
                    state, next_poll=self.clock() + timedelta(seconds=spec.interval)))
            return PollOutcome(feed=spec.name, result="failed", error=str(e))
        except Exception as e:  # a bug must not kill the daemon or stop the feed for good
            now = self.clock()
            log.error("feed.poll_crashed", feed=spec.name, error=repr(e), exc_info=True)
            error = self.config.redact(f"internal error: {e!r}")
            with contextlib.suppress(Exception):
                await self.store.save_feed(replace(
                    state, last_polled=now, failures=state.failures + 1,
                    last_error=error, next_poll=now + timedelta(seconds=spec.interval)))
            return PollOutcome(feed=spec.name, result="failed", error=error)

    async def drain(self) -> DispatchResult:
        """Deliver everything due now."""
        return await self.dispatcher.run_once()

    async def health(self) -> dict[str, Any]:
        now = self.clock()
        feeds = await self.store.get_feeds()
        failing = [
            {"feed": f.name, "failures": f.failures,
             "error": self.config.redact(scrub(f.last_error or "")),
             "next_poll": f.next_poll.isoformat() if f.next_poll else None}
            for f in feeds if f.failures and not f.gone
        ]
        gone = [f.name for f in feeds if f.gone]
        rules = self.pipeline.rules
        pending = await self.store.count_pending()
        listening = self.store.listening
        enabled = len(rules.ruleset.enabled)
        parse, parse_reasons = self.pool.health()
        for incident in parse["recent"]:  # (the stuck story's title and link: may carry
            incident["detail"] = self.config.redact(scrub(incident["detail"]))  # a key)
        reasons = [why for why, bad in (
            (f"{len(failing)} feed(s) failing", failing),
            (f"{len(gone)} feed(s) gone", gone),
            ("the last rules reload failed", rules.error),
            ("no rule is enabled: nothing can alert", not enabled),
            ("not hearing the other instances", listening is False),
        ) if bad] + parse_reasons
        status = "degraded" if reasons else "ok"
        peers = {} if listening is None else {"peers": {"listening": listening}}
        return {
            "status": status,
            **({"reasons": reasons} if reasons else {}),
            "time": now.isoformat(),
            "feeds": {"total": len(feeds), "failing": failing, "gone": gone},
            "rules": {
                "count": len(rules.ruleset.rules),
                "enabled": enabled,
                "loaded_at": rules.loaded_at.isoformat(),
                "error": rules.error,
                "error_at": rules.error_at.isoformat() if rules.error_at else None,
            },
            "outbox": {"pending": pending},
            "parse": parse,  # the parse pool: jobs past their deadline, workers replaced
            # the index is loaded when a poll first brings a new story (dedupstate.py)
            "dedup": {"stories": len(self.pipeline.index), "loaded": self.dedup.loaded},
            **peers,  # instances sharing a PostgreSQL store: is this one hearing the others?
        }


def arm_exit_watchdog(seconds: float) -> None:
    """End the process ``seconds`` from now if it has not ended by itself: the last word
    of a SIGTERM, whatever still holds the process then (a thread stuck in a C call that
    the interpreter would wait for at exit, a close that hangs)."""

    def watch() -> None:
        time.sleep(seconds)
        names = sorted(t.name for t in threading.enumerate()
                       if t is not threading.current_thread())
        log.error("daemon.exit_forced", after=seconds, threads=", ".join(names))
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=watch, name="exit-watchdog", daemon=True).start()


class Daemon:
    """``monitor run``: poll on schedule, deliver, reload rules, stop on a signal."""

    def __init__(self, config: Config, *, clock: Callable[[], datetime] = utc_now,
                 tick: float = 1.0, exit_watchdog: bool = False) -> None:
        self.config = config
        self.clock = clock
        self.tick = tick
        # `monitor run`: the process exits at the latest EXIT_MARGIN s past the deadline
        self.exit_watchdog = exit_watchdog
        self._stop = asyncio.Event()
        self._wake_dispatch = asyncio.Event()
        self._inflight: set[asyncio.Task[PollOutcome]] = set()
        self._claimed: dict[asyncio.Task[PollOutcome], FeedState] = {}
        self._ticking: asyncio.Task[Any] | None = None
        self.rt: Runtime | None = None
        self._polled: Counter[str] = Counter()  # since the last summary line

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        # here, not at the top: `monitor once` needs neither APScheduler nor aiohttp.web
        # nor jinja2
        from monitor.shell.scheduler import Scheduler
        from monitor.shell.server import Server
        from monitor.shell.status import StatusPage

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        try:
            async with Runtime(self.config, clock=self.clock) as rt:
                self.rt = rt
                rt.pipeline.on_queued = self._wake_dispatch.set
                # what start-up built (the restored index, compiled rules, imports) lives as
                # long as the daemon: keep it out of the collector's way
                gc.freeze()
                server: Server | None = None
                if self.config.server.enabled:
                    server = Server(self.config.server.listen, rt.metrics, rt.health,
                                    page=StatusPage(rt).render, auth=self.config.server.auth)
                    await server.start()
                sched = Scheduler()
                sched.every("poll", self.tick, self._poll_tick)
                sched.every("prune", 3600.0, self._prune)
                sched.every("dedup-snapshot", SAVE_EVERY, self._save_dedup, start_now=False)
                sched.every("summary", SUMMARY_EVERY, self._summarize, start_now=False)
                sched.start()
                dispatcher = asyncio.create_task(self._dispatch_loop(), name="dispatch")
                # the daemon loads its dedup index now, beside its first polls: the first
                # new story need not wait for it, and it hears the other instances at once
                loading = asyncio.create_task(self._load_dedup(), name="dedup-load")
                watcher = asyncio.create_task(self._watch_rules(), name="watch-rules")
                if server:
                    server.ready = True
                log.info("daemon.started", feeds=len(self.config.feeds),
                         rules=len(rt.pipeline.rules.ruleset.rules), store=redact_url(
                             self.config.store_url),
                         loop=type(asyncio.get_running_loop()).__module__.split(".")[0])
                await self._stop.wait()
                budget = self.config.shutdown_timeout
                deadline = loop.time() + budget
                log.info("daemon.stopping", inflight=len(self._inflight), deadline=budget)
                if self.exit_watchdog:
                    arm_exit_watchdog(budget + EXIT_MARGIN)
                sched.stop()
                watcher.cancel()
                if self._ticking is not None:  # a tick in the middle of its claim
                    await asyncio.gather(self._ticking, return_exceptions=True)
                if self._inflight:
                    _, pending = await asyncio.wait(
                        self._inflight, timeout=max(0.0, deadline - loop.time()))
                    # (read before cancelling: a finished task forgets its claim)
                    abandoned = [self._claimed[t] for t in pending if t in self._claimed]
                    for t in pending:
                        t.cancel()
                    if pending:
                        log.warning("daemon.abandoned", polls=len(pending),
                                    note="their stories were not committed; due again at once")
                        await asyncio.gather(*pending, return_exceptions=True)
                        # their claim would hold them back for the lease: make them due now
                        now = self.clock()
                        for st in abandoned:
                            with contextlib.suppress(Exception):
                                await rt.store.save_feed(replace(st, next_poll=now))
                # the delivery in hand is finished (so it is marked sent and never repeated);
                # the rest of the claimed batch is given back for the next start
                rt.dispatcher.stopping = True
                self._wake_dispatch.set()
                try:
                    await asyncio.wait_for(asyncio.shield(dispatcher),
                                           max(STOP_FLOOR, deadline - loop.time()))
                except TimeoutError:
                    dispatcher.cancel()
                    log.warning("daemon.abandoned", deliveries="in flight",
                                note="retried after their lease on restart")
                with contextlib.suppress(asyncio.CancelledError):
                    await dispatcher
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                await loading
                if server:
                    await server.stop()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("daemon.stopped")
        return 0

    def _sighup(self) -> None:
        if self.rt is not None:
            log.info("rules.reload_requested", by="SIGHUP")
            self.rt.reload_rules()

    async def _poll_tick(self) -> None:
        rt = self.rt
        if rt is None or self._stop.is_set():
            return
        free = self.config.fetch.concurrency - len(self._inflight)
        if free <= 0:
            return
        self._ticking = asyncio.current_task()
        try:
            now = self.clock()
            specs = {s.name: s for s in self.config.feed_specs()}
            try:
                due = await rt.store.claim_due_feeds(now, limit=free,
                                                     lease_until=now + FEED_LEASE)
            except StoreError as e:
                rt.trouble.store_failed(e, "claim")
                return
            for st in due:
                spec = specs.get(st.name)
                if spec is None:
                    continue
                if self._stop.is_set():  # stopping while we claimed: give it back
                    await rt.store.save_feed(replace(st, next_poll=now))
                    continue
                task = asyncio.create_task(rt.poll_one(st, spec), name=f"poll:{st.name}")
                self._inflight.add(task)
                self._claimed[task] = st
                task.add_done_callback(self._forget)
        finally:
            self._ticking = None

    def _forget(self, task: asyncio.Task[PollOutcome]) -> None:
        self._inflight.discard(task)
        self._claimed.pop(task, None)
        if not task.cancelled() and task.exception() is None:
            outcome = task.result()
            self._polled[outcome.result] += 1
            self._polled[" new"] += outcome.new
            self._polled[" alerts"] += outcome.alerts

    async def _summarize(self) -> None:
        """One info line every few minutes: the daemon is alive, and what its polls found
        (each poll is logged at debug; a feed that fails, a story that alerts at info)."""
        counts, self._polled = self._polled, Counter()
        results = {k.replace("-", "_"): v for k, v in sorted(counts.items())
                   if not k.startswith(" ")}
        pending: int | str = 0
        if self.rt is not None:
            self.rt.trouble.summarize()
            try:
                pending = await self.rt.store.count_pending()
            except StoreError:  # store.failing said it
                pending = "?"
        log.info("daemon.summary", minutes=round(SUMMARY_EVERY / 60),
                 polls=sum(results.values()), new_stories=counts[" new"], alerts=counts[" alerts"],
                 outbox_pending=pending, **results)

    async def _dispatch_loop(self) -> None:
        """One loop per channel (``Dispatcher.serve``), woken when a poll queues."""
        assert self.rt is not None
        await self.rt.dispatcher.serve(self._wake_dispatch, self.tick)

    async def _load_dedup(self) -> None:
        assert self.rt is not None
        try:
            await self.rt.dedup.ready()
        except StoreError as e:  # the first poll that brings a new story tries again
            self.rt.trouble.store_failed(e, "dedup")

    async def _save_dedup(self) -> None:
        if self.rt is not None:
            await self.rt.dedup.save()

    async def _prune(self) -> None:
        assert self.rt is not None
        before = self.clock() - timedelta(seconds=self.config.retention)
        try:
            n = await self.rt.store.prune(before)
        except StoreError as e:
            self.rt.trouble.store_failed(e, "prune")
            return
        if n:
            log.info("store.pruned", stories=n, before=before.isoformat())

    async def _watch_rules(self) -> None:
        import watchfiles

        path = self.config.rules_path
        if not path.exists():
            return
        async for changes in watchfiles.awatch(path, debounce=200, step=50,
                                               stop_event=self._stop):
            names = sorted({Path(p).name for _, p in changes})
            if not any(n.endswith((".yaml", ".yml")) for n in names):
                continue
            log.info("rules.changed", files=",".join(names))
            if self.rt is not None:
                try:
                    self.rt.reload_rules()
                except Exception as e:  # keep watching: the old rules stay in force
                    log.error("rules.reload_crashed", error=repr(e), exc_info=True)
