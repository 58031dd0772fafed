"""Lifecycle: build the runtime, run the ticks, reload rules, stop gracefully.

``Runtime`` owns every resource (store, HTTP session, parse pool, notifiers, server) in
one ``AsyncExitStack``. ``Daemon.run()`` is ``monitor run``; ``Runtime.poll_all()`` +
``Runtime.drain()`` is ``monitor once``.

Stopping (SIGTERM/SIGINT): stop claiming feeds, let in-flight polls finish and the
delivery in hand be done within ``shutdown_timeout`` (an abandoned poll committed
nothing: its feed is polled again on restart), kill the parse workers, close. ``monitor
run`` also arms a watchdog: if anything still holds the process ``EXIT_MARGIN`` seconds
after that deadline (a thread stuck in C, a hung close), it exits all the same.

Reload: SIGHUP, a change to the config file or in the rules directory reload the WHOLE
configuration (``Runtime.reload``): config and rules validated together and swapped
atomically (feeds synced, channels' notifiers and loops added, replaced or ended, rules
swapped), or rejected with the old ones kept running and the located problems in
``/healthz`` (``reload``). What only a restart can change is said (``shell.reload``).
``${VAR}`` are resolved with the environment captured at start.

Polling (``Daemon._refill``): at most ``Runtime.concurrency`` polls run at once (the
slots: ``fetch.concurrency``, or ``auto`` sized by ``schedule.auto_concurrency``). Polls
that end free slots, and once a sixteenth of them are free one claim fills them; the
scheduler's tick claims too, for feeds that came due meanwhile. One claim runs at a time;
a claim that finds fewer due feeds than free slots leaves the rest to the next tick.

Readiness (``/readyz``, ``Daemon.readiness``): the store answers, the scheduler ticks,
some rule is enabled, and not every channel is failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from monitor.config import Config, QuietHours, load_config, secrets_of
from monitor.core.dedup.features import DedupSettings
from monitor.core.feedhealth import condition
from monitor.core.model import Delivery, FeedSpec, FeedState
from monitor.core.rules.match import compile_rules
from monitor.core.rules.model import RuleSet
from monitor.core.schedule import POLL_SECONDS, auto_concurrency, initial_poll
from monitor.errors import ConfigError, MonitorError, Problem, RulesError, StoreError
from monitor.log import get_logger, redact, redact_url, scrub
from monitor.metrics import Metrics
from monitor.notify.base import Notifier
from monitor.notify.registry import build_notifiers
from monitor.shell import ops
from monitor.shell.dedupstate import SAVE_EVERY, DedupState
from monitor.shell.dispatch import Dispatcher, DispatchResult
from monitor.shell.fetch import Fetcher
from monitor.shell.gcpolicy import SWEEP_EVERY as GC_SWEEP_EVERY
from monitor.shell.gcpolicy import GcPolicy
from monitor.shell.liveness import Liveness
from monitor.shell.parsepool import ParsePool, Processes, Threads
from monitor.shell.pipeline import ActiveRules, Pipeline, PollOutcome
from monitor.shell.reload import diff_configs, live_config
from monitor.shell.rulefiles import load_rules
from monitor.shell.trouble import Trouble
from monitor.store.base import Store, StoredStory
from monitor.store.open import open_store

log = get_logger(__name__)

#: a claimed feed's lease beyond its poll's own deadlines (``feed_lease``)
LEASE_MARGIN = 30.0
STOP_FLOOR = 1.0  # seconds the delivery in hand gets at least, even past shutdown_timeout
EXIT_MARGIN = 10.0  # seconds past shutdown_timeout after which `monitor run` exits regardless
SUMMARY_EVERY = 300.0  # seconds between "daemon.summary" lines (polls are logged at debug)
READY_STORE_TIMEOUT = 2.0  # seconds the store has to answer /readyz's query
#: /readyz: the poll tick must have run within this many ticks (and at least 30 s)
READY_TICKS = 10
RELOAD_ERRORS_SHOWN = 50  # located problems /healthz lists for a failed reload, at most


def feed_lease(config: Config) -> timedelta:
    """How long a claimed feed is held: its poll's deadline (the fetch's ``timeout``
    and the parse job's ``parse_timeout``) plus ``LEASE_MARGIN`` for the store's
    writes. A poll that runs past it may be polled again by another instance; a
    claim of an instance that dies is retaken sooner, when it is declared dead
    (``shell.liveness``)."""
    fc = config.fetch
    return timedelta(seconds=fc.timeout + fc.parse_timeout + LEASE_MARGIN)


def poll_slots(config: Config) -> int:
    """The polls one instance runs at once: ``fetch.concurrency``, or with ``auto`` (the
    default) the configured poll rate's need (``schedule.auto_concurrency``). Resolved
    at start: the fetcher's limits are built from it, and a reload keeps it."""
    fc = config.fetch.concurrency
    if fc == "auto":
        d = config.defaults.interval
        return auto_concurrency(f.interval or d for f in config.feeds)
    return fc


def utc_now() -> datetime:
    return datetime.now(UTC)


def read_config(path: Path, env: Mapping[str, str]) -> Config:
    """``load_config`` for a reload: a file that is empty (caught between an editor's
    truncate and its write) is a problem, not a configuration without feeds."""
    with contextlib.suppress(OSError):  # (load_config reports an unreadable file)
        if not path.read_text(encoding="utf-8", errors="replace").strip():
            raise ConfigError([Problem(str(path), None, None,
                                       "the file is empty; the running configuration is kept")],
                              "invalid configuration")
    return load_config(path, dict(env))


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


#: The interpreter's switch interval while a Runtime is open (CPython's default: 5 ms).
#: The store's thread gives the interpreter lock up at every SQLite step (each row read
#: or written) and must wait for it back; with the event loop busy, each wait lasted up
#: to the whole interval. At 10,000 feeds a minute that made a claim of due feeds wait
#: 300 ms and more behind the store's queue, and the polls short of slots; at 0.5 ms the
#: store's queue stays under 30 ms (10,000 feeds every minute, first pass 90.8 s → 72.5 s
#: in one pair of runs).
SWITCH_INTERVAL = 0.0005


def default_parse_workers() -> int:
    """``fetch.parse_workers: 0``: one more worker than the cores. A worker runs one job
    at a time and waits for the event loop between two (the result read, the next job
    sent: about 15 ms a job under load, three times the job itself), so one worker a
    core leaves the cores idle in a first pass (10,000 feeds every minute: 72.5 s with 2
    workers on 2 cores, 62.8 s with 3, 72.9 s with 4)."""
    return (os.cpu_count() or 1) + 1


def make_pool(config: Config, metrics: Metrics | None = None) -> ParsePool:
    """The parse pool, each job within ``fetch.parse_timeout``. Processes (even one: only
    a process can be killed when its job runs past the deadline) are spawned, not forked:
    a worker is a fresh interpreter that inherits no listening socket, database or file
    watch and keeps the default SIGTERM; and it exits when the daemon dies, however it
    dies (``parsepool.worker_init``), so a kill -9 leaves nothing holding the port."""
    fc = config.fetch
    workers = fc.parse_workers or default_parse_workers()
    if fc.parse_in == "process":
        return ParsePool(Processes(workers), timeout=fc.parse_timeout, metrics=metrics)
    return ParsePool(Threads(lambda: ThreadPoolExecutor(max_workers=workers,
                                                        thread_name_prefix="parse")),
                     timeout=fc.parse_timeout, metrics=metrics)


def moved(st: FeedState, spec: FeedSpec, now: datetime) -> FeedState:
    """The state of a feed whose configured URL changed: a new URL is a new feed, its
    backlog a silent baseline again."""
    return replace(st, url=spec.url, configured_url=spec.url, etag=None,
                   last_modified=None, body_hash=None, gone=False, failures=0,
                   last_error=None, next_poll=now, baselined=False, ttl=None,
                   update_period=None, update_base=None, cadence=None,
                   poll_interval=None, poll_reason=None)


async def sync_feeds(store: Store, specs: list[FeedSpec], now: datetime,
                     only: set[str] | None = None, *, live: bool = False,
                     rate: float = math.inf) -> list[FeedState]:
    """Make the stored feeds match the config: add new feeds (first poll spread over the
    next seconds, or over up to their interval when there are many:
    ``schedule.spread_window`` with the number of new and overdue feeds and ``rate``,
    the polls a second the instance is sized for), reset a feed whose configured URL
    changed, keep the schedule of the others (a restart resumes it instead of
    stampeding, its overdue feeds spread the same way), forget removed feeds. Other
    instances may be polling meanwhile: a stored feed is never overwritten with what
    was read (only its overdue next poll spread, if nobody claimed or saved it since).

    ``only`` (a reload): touch only these feeds (added or changed) besides removing the
    feeds no longer configured; the others may be polling, and their rows are theirs."""
    stored = {f.name: f for f in await store.get_feeds()}

    def placed(spec: FeedSpec) -> bool:  # new, or overdue: spread by initial_poll
        st = stored.get(spec.name)
        if st is None:
            return True
        due = st.next_poll
        if due is None and st.last_polled is not None:
            due = st.last_polled + timedelta(seconds=spec.interval)
        return due is None or due < now

    backlog = sum(1 for spec in specs if (only is None or spec.name in only) and placed(spec))
    out: list[FeedState] = []
    added: list[FeedState] = []
    # (name, next_poll as read, new next_poll): moved only if still so (another instance
    # sharing the store may have claimed or saved the feed since it was read)
    moves: list[tuple[str, datetime | None, datetime]] = []
    for spec in specs:
        if only is not None and spec.name not in only:
            continue
        st = stored.get(spec.name)
        if st is None:
            st = FeedState(
                name=spec.name,
                url=spec.url,
                configured_url=spec.url,
                next_poll=initial_poll(now=now, interval=spec.interval, key=spec.name,
                                       last_polled=None, next_poll=None, backlog=backlog,
                                       rate=rate),
            )
            added.append(st)
        elif st.configured_url != spec.url:
            st = moved(st, spec, now)
            await store.save_feed(st)
        else:
            due = initial_poll(now=now, interval=spec.interval, key=spec.name,
                               last_polled=st.last_polled, next_poll=st.next_poll,
                               backlog=backlog, rate=rate)
            if due != st.next_poll:
                if not live:
                    moves.append((st.name, st.next_poll, due))
                st = replace(st, next_poll=due)
            if st.gone:
                log.warning("feed.gone", feed=spec.name, url=scrub(st.url),
                            hint="the server answered 410 Gone; change its url or remove it")
        out.append(st)
    # only what changed, each in one statement batch: a restart with 50,000 feeds whose
    # schedule resumes writes nothing
    await store.add_feeds(added)  # (a feed another instance added meanwhile stays its)
    await store.reschedule_feeds(moves)
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
        config_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        # where a reload reads the config from (None: the rules only are re-read), and
        # the environment its ${VAR} are resolved with: as it was at start
        self.config_path = config_path
        self.env = dict(os.environ if env is None else env)
        self.clock = clock
        self.reload_state: dict[str, Any] = {}  # the last reload, for /healthz
        self._reloading = asyncio.Lock()
        # feeds a reload added or changed, not synced with the store yet (removals too);
        # None: nothing to sync
        self._unsynced: set[str] | None = None
        # the configured feeds as the start's sync read and left them, for the first
        # ``poll_all`` (then None; the daemon drops them at once)
        self.synced: list[FeedState] | None = None
        self.fetcher: Fetcher
        # (``monitor once`` gives ``Metrics(collect=False)``: it has no server to show them)
        self.metrics = Metrics() if metrics is None else metrics
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
        # the instance's heartbeats (``monitor run``; None for ``monitor once``)
        self.liveness: Liveness | None = None
        self._unsaved: set[str] = set()  # claimed feeds whose poll could not be saved
        # polls at once (``poll_slots``), resolved at start: the fetcher is built for it
        self.concurrency = poll_slots(config)
        # the feed specs of ``_specs_of`` (the config object they were built from): built
        # once per configuration, not per claim (50,000 specs are a third of a core/s)
        self._specs: dict[str, FeedSpec] = {}
        self._specs_of: Config | None = None

    async def __aenter__(self) -> Runtime:
        cfg = self.config
        redact(*secrets_of(cfg))
        now = self.clock()
        rules = load_active_rules(cfg, now)  # invalid rules: refuse to start
        self.metrics.rules_loaded.set(len(rules.ruleset.rules))
        try:
            self._stack.callback(sys.setswitchinterval, sys.getswitchinterval())
            sys.setswitchinterval(SWITCH_INTERVAL)
            sc = cfg.store
            self.store = open_store(cfg.store_url, pool=(sc.pool.min, sc.pool.max),
                                    timeout=sc.timeout)
            await self._stack.enter_async_context(self.store)
            fc = cfg.fetch
            fetcher = Fetcher(
                user_agent=fc.user_agent,
                connect_timeout=fc.connect_timeout,
                timeout=fc.timeout,
                max_bytes=fc.max_bytes,
                max_redirects=fc.max_redirects,
                concurrency=self.concurrency,
                per_host=fc.per_host,
            )
            await self._stack.enter_async_context(fetcher)
            self.fetcher = fetcher
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
            self._stack.push_async_callback(self.pipeline.baselines.close)
            notifiers = self._notifiers if self._notifiers is not None else build_notifiers(cfg)
            self.dispatcher = Dispatcher(
                self.store, notifiers, cfg.delivery, self.metrics, self.clock,
                on_sent=self._sent,
                rates={name: ch.rate for name, ch in cfg.channels.items()},
                quiet={name: q for name, ch in cfg.channels.items()
                       if isinstance(q := getattr(ch, "quiet", None), QuietHours)},
            )
            self.dispatcher.on_store_error = self.trouble.store_failed
            self.dispatcher.ops = (cfg.health.channel, cfg.health.fallback)
            self._stack.push_async_callback(self.dispatcher.close)
            self.metrics.poll_slots.set(self.concurrency)
            self.synced = await sync_feeds(self.store, list(self.specs().values()), now,
                                           live=await self._peers_alive(now), rate=self.rate)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def rate(self) -> float:
        """Polls a second this instance is sized for: its slots, each busy for
        ``POLL_SECONDS`` a poll (first polls are spread by it: ``sync_feeds``)."""
        return self.concurrency / POLL_SECONDS

    def specs(self) -> dict[str, FeedSpec]:
        """The configured feeds' specs by name, rebuilt only when the configuration
        object changes (a reload swaps it)."""
        if self._specs_of is not self.config:
            cfg = self.config
            self._specs = {s.name: s for s in cfg.feed_specs()}
            self._specs_of = cfg
        return self._specs

    async def _peers_alive(self, now: datetime) -> bool:
        """Whether other instances heartbeat in the store now (``shell.liveness``)."""
        grace = timedelta(seconds=self.config.store.dead_after)
        return any(i.dead_since is None and now - i.heartbeat < grace
                   for i in await self.store.instances(since=now))

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

    async def reload(self, by: str) -> bool:
        """Re-read the config file (``config_path``; without one, the rules only) and the
        rules, validate them together and swap them in at once: feeds synced, channels'
        notifiers built, replaced or closed, rules swapped, live settings applied. On
        any error everything keeps running as it was, and ``reload_state`` (``/healthz``)
        and the log say why, file:line:column. One reload at a time."""
        async with self._reloading:
            return await self._reload(by)

    async def _reload(self, by: str) -> bool:
        now = self.clock()
        old = self.config
        try:
            new = old if self.config_path is None else read_config(self.config_path, self.env)
            redact(*secrets_of(new))
            diff = diff_configs(old, new)
            cfg = live_config(old, new)
            rules = load_active_rules(cfg, now)
            built = build_notifiers(cfg, diff.channels_new) if self._notifiers is None else {}
        except (ConfigError, RulesError) as e:
            what = "rules" if isinstance(e, RulesError) else "config"
            self.reload_state = {
                "ok": False, "by": by, "at": now.isoformat(), "what": what,
                "errors": [str(p) for p in e.problems[:RELOAD_ERRORS_SHOWN]],
                "problems": len(e.problems),
                "last_ok": self.reload_state.get("last_ok"),
            }
            self.metrics.config_reloads.labels("invalid").inc()
            if isinstance(e, RulesError):
                self.pipeline.rules.error = str(e)
                self.pipeline.rules.error_at = now
                self.metrics.rules_reloads.labels("invalid").inc()
                log.error("rules.invalid", problems=len(e.problems), error=str(e),
                          kept=len(self.pipeline.rules.ruleset.rules), by=by)
            else:
                log.error("config.invalid", problems=len(e.problems), error=str(e), by=by,
                          kept="the running configuration")
            return False
        except MonitorError as e:  # a channel that cannot be built
            self.reload_state = {
                "ok": False, "by": by, "at": now.isoformat(), "what": "channels",
                "errors": [scrub(str(e))], "problems": 1,
                "last_ok": self.reload_state.get("last_ok"),
            }
            self.metrics.config_reloads.labels("invalid").inc()
            log.error("config.invalid", problems=1, error=scrub(str(e)), by=by,
                      kept="the running configuration")
            return False
        old_rules = self.pipeline.rules.ruleset
        # the swap: no await until the feeds' sync, so a poll sees all of it or none
        self.config = cfg
        self.pipeline.config = cfg
        self.pipeline.settle = cfg.dedup.settle
        self.pipeline.rules = rules
        fc = cfg.fetch
        self.fetcher.timeout = fc.timeout
        self.fetcher.connect_timeout = fc.connect_timeout
        self.fetcher.max_bytes = fc.max_bytes
        self.fetcher.max_redirects = fc.max_redirects
        running = self.dispatcher.notifiers
        self.dispatcher.ops = (cfg.health.channel, cfg.health.fallback)
        self.dispatcher.update_channels(
            {ch: built[ch] if ch in built else running[ch]
             for ch in cfg.channels if ch in built or ch in running},
            settings=cfg.delivery,
            rates={name: ch.rate for name, ch in cfg.channels.items()},
            quiet={name: q for name, ch in cfg.channels.items()
                   if isinstance(q := getattr(ch, "quiet", None), QuietHours)},
        )
        for feed in diff.feeds_removed:
            for gauge in (self.metrics.feed_failures, self.metrics.feed_last_success):
                with contextlib.suppress(KeyError):
                    gauge.remove(feed)
        self.metrics.rules_loaded.set(len(rules.ruleset.rules))
        self.metrics.rules_reloads.labels("ok").inc()
        self.metrics.config_reloads.labels("ok").inc()
        self.reload_state = {"ok": True, "by": by, "at": now.isoformat(),
                             "last_ok": now.isoformat()}
        log.info("config.reloaded", by=by, feeds=len(cfg.feeds), channels=len(cfg.channels),
                 **diff.summary(), **({} if diff.summary() else {"unchanged": True}),
                 # ${VAR} are not re-read: a changed secret needs a restart
                 env="as at start")
        if diff.restart:
            log.warning("config.needs_restart", settings=", ".join(diff.restart),
                        note="changed in the file, but these apply only when the daemon "
                        "restarts; the running values are kept until then")
        log.info("rules.reloaded", **reload_summary(old_rules, rules.ruleset))
        if not rules.ruleset.enabled:
            log.warning("rules.none_enabled", path=str(cfg.rules_path),
                        hint="no rule is enabled: nothing can alert; /healthz is degraded")
        touched = set(diff.feeds_added) | set(diff.feeds_changed)
        if touched or diff.feeds_removed:
            self._unsynced = (self._unsynced or set()) | touched
            await self.sync_pending()
        return True

    async def sync_pending(self) -> None:
        """Sync the feeds a reload added, changed or removed with the store; a store
        error leaves them for the next call (the daemon's poll tick retries). And give
        back the claims of polls whose save failed (``release_unsaved``)."""
        await self.release_unsaved()
        only = self._unsynced
        if only is None:
            return
        self._unsynced = None
        try:
            await sync_feeds(self.store, list(self.specs().values()), self.clock(), only=only,
                             rate=self.rate)
        except StoreError as e:
            self._unsynced = (self._unsynced or set()) | only
            self.trouble.store_failed(e, "reload:feeds")

    async def release_unsaved(self) -> None:
        """The feeds whose poll's save failed (the store was unreachable) are due again
        at once, unless another instance took them meanwhile: the poll is retried, and
        what it found is neither lost nor alerted twice (its stories were not saved)."""
        names, liveness = sorted(self._unsaved), self.liveness
        if not names or liveness is None:
            return
        try:
            n = await self.store.release_feeds(names, by=liveness.id, now=self.clock())
        except StoreError:
            return  # still unreachable: the next tick tries again
        self._unsaved.difference_update(names)
        log.info("feeds.released", feeds=n, unsaved=len(names),
                 note="polls whose save failed are due again")

    async def poll_all(self) -> list[PollOutcome]:
        """Poll every configured feed now (``monitor once``), concurrently."""
        specs = self.specs()
        # the first round polls the feeds as the start's sync just read and left them
        # (``monitor once`` reads each feed's row once, not twice); later rounds read them
        synced, self.synced = self.synced, None
        stored = synced if synced is not None else await self.store.get_feeds()
        states = [f for f in stored if f.name in specs and not f.gone]
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
                        failing_since=state.failing_since or now,
                        last_error=error, next_poll=now + timedelta(seconds=spec.interval)))
                return PollOutcome(feed=spec.name, result="failed", error=error)
            # the store itself (full, read-only, unreachable…): not the feed's fault:
            # one line, and no failure on the feed
            self.trouble.store_failed(e, f"poll:{spec.name}")
            try:
                await self.store.save_feed(replace(
                    state, next_poll=self.clock() + timedelta(seconds=spec.interval)))
            except Exception:
                # its claim holds it until the lease ends: given back (due at once) as
                # soon as the store answers again (``release_unsaved``)
                if self.liveness is not None:
                    self._unsaved.add(spec.name)
            return PollOutcome(feed=spec.name, result="failed", error=str(e))
        except Exception as e:  # a bug must not kill the daemon or stop the feed for good
            now = self.clock()
            self.metrics.poll_errors.labels(spec.name, "internal").inc()
            log.error("feed.poll_crashed", feed=spec.name, error=repr(e), exc_info=True)
            error = self.config.redact(f"internal error: {e!r}")
            with contextlib.suppress(Exception):
                await self.store.save_feed(replace(
                    state, last_polled=now, failures=state.failures + 1,
                    failing_since=state.failing_since or now,
                    last_error=error, next_poll=now + timedelta(seconds=spec.interval)))
            return PollOutcome(feed=spec.name, result="failed", error=error)

    async def drain(self) -> DispatchResult:
        """Deliver everything due now."""
        return await self.dispatcher.run_once()

    async def health(self) -> dict[str, Any]:
        """/healthz. While the store cannot answer, what is known without it (503)."""
        try:
            return await self._health()
        except StoreError as e:
            return {
                "status": "failing",
                "reasons": [self.config.redact(scrub(f"the store cannot answer: {e}"))[:300]],
                "time": self.clock().isoformat(),
                "store": {"outage": self.store.outage(), "error": self.config.redact(
                    scrub(str(e)))[:300]},
                **({"instances": self.liveness.health()} if self.liveness else {}),
            }

    async def _health(self) -> dict[str, Any]:
        now = self.clock()
        feeds = await self.store.get_feeds()
        failing = [
            {"feed": f.name, "failures": f.failures,
             "error": self.config.redact(scrub(f.last_error or "")),
             "next_poll": f.next_poll.isoformat() if f.next_poll else None}
            for f in feeds if f.failures and not f.gone
        ]
        gone = [f.name for f in feeds if f.gone]
        # feed health (#13): silent feeds, and the parse problems of working ones
        settings = ops.health_settings(self.config)
        silent = [f.name for f in feeds if condition(f, settings, now=now) == "silent"]
        problems = [{"feed": f.name, "problem": self.config.redact(scrub(f.problem))}
                    for f in feeds if f.problem and not f.failures]
        rules = self.pipeline.rules
        pending = await self.store.count_pending()
        listening = self.store.listening
        enabled = len(rules.ruleset.enabled)
        parse, parse_reasons = self.pool.health()
        for incident in parse["recent"]:  # (the stuck story's title and link: may carry
            incident["detail"] = self.config.redact(scrub(incident["detail"]))  # a key)
        reload = self.reload_state
        reload_failed = reload.get("ok") is False
        config_failed = reload_failed and reload.get("what") != "rules"
        channels = {ch: h.to_dict(now) for ch, h in sorted(self.dispatcher.health.items())}
        channel_reasons = [
            f"channel {ch} failing: {h['consecutive_failures']} failed send(s) in a row "
            f"({h['last_error']})" for ch, h in channels.items() if h["failing"]]
        reasons = [why for why, bad in (
            (f"{len(failing)} feed(s) failing", failing),
            (f"{len(gone)} feed(s) gone", gone),
            (f"{len(silent)} feed(s) silent", silent),
            ("the last rules reload failed", rules.error),
            (f"the last {reload.get('what', 'config')} reload failed "
             f"({reload.get('problems', 0)} problem(s)): the previous configuration runs",
             config_failed),
            ("no rule is enabled: nothing can alert", not enabled),
            ("not hearing the other instances", listening is False),
            ("the store is unreachable (reconnecting)", self.store.outage() is not None),
        ) if bad] + channel_reasons + parse_reasons
        status = "degraded" if reasons else "ok"
        peers = {} if listening is None else {"peers": {"listening": listening}}
        return {
            "status": status,
            **({"reasons": reasons} if reasons else {}),
            "time": now.isoformat(),
            "feeds": {"total": len(feeds), "failing": failing, "gone": gone, "silent": silent,
                      "problems": problems},
            "rules": {
                "count": len(rules.ruleset.rules),
                "enabled": enabled,
                "loaded_at": rules.loaded_at.isoformat(),
                "error": rules.error,
                "error_at": rules.error_at.isoformat() if rules.error_at else None,
            },
            "outbox": {"pending": pending},
            "channels": channels,  # per channel: its recent sends (dispatch.ChannelHealth)
            # the last reload (SIGHUP, config or rules edited): when, and its located errors
            "reload": {"config": str(self.config_path) if self.config_path else None,
                       **reload} if reload or self.config_path else None,
            # the config file's last rejected reload, shaped as ``rules`` (a rejected rule
            # set is there): the status page shows both
            "config": {
                "error": "\n".join(reload.get("errors", ())) if config_failed else None,
                "error_at": reload.get("at") if config_failed else None,
            },
            "parse": parse,  # the parse pool: jobs past their deadline, workers replaced
            # the index is loaded when a poll first brings a new story (dedupstate.py)
            "dedup": {"stories": len(self.pipeline.index), "loaded": self.dedup.loaded},
            **peers,  # instances sharing a PostgreSQL store: is this one hearing the others?
            # the instances sharing the store: alive, and dead lately (what was retaken)
            **({"instances": self.liveness.health()} if self.liveness else {}),
            **({"store": {"outage": outage}} if (outage := self.store.outage()) else {}),
        }


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """A background probe's outcome is read (so that its error is not "never retrieved")."""
    if not fut.cancelled():
        fut.exception()


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
                 tick: float = 1.0, exit_watchdog: bool = False,
                 config_path: Path | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.config = config
        # the file a reload re-reads (None: a reload re-reads the rules only), and the
        # environment its ${VAR} resolve with: captured now, at start
        self.config_path = config_path
        self.env = dict(os.environ if env is None else env)
        self.clock = clock
        self._last_tick: float | None = None  # loop time the poll tick last ran
        self._store_probe: asyncio.Future[int] | None = None  # /readyz's store query
        self._reloads: set[asyncio.Task[Any]] = set()
        self._rules_watcher: asyncio.Task[None] | None = None
        # each watcher's own stop event: watchfiles sets it when its task is cancelled,
        # so it must not be the daemon's ``_stop``
        self._rules_watch_stop = asyncio.Event()
        self.tick = tick
        # `monitor run`: the process exits at the latest EXIT_MARGIN s past the deadline
        self.exit_watchdog = exit_watchdog
        self.gc = GcPolicy()
        self._stop = asyncio.Event()
        self._wake_dispatch = asyncio.Event()
        self._inflight: set[asyncio.Task[PollOutcome]] = set()
        self._claimed: dict[asyncio.Task[PollOutcome], FeedState] = {}
        # the poll slots (``Runtime.concurrency``, set at start): at most this many polls
        # run at once; freed slots are refilled by one task at a time (``_refill``)
        self.slots = 1
        self._refilling: asyncio.Task[None] | None = None
        self._again = False  # a refill was asked for while one ran: one more round
        self._drained = False  # the last claim found fewer due feeds than free slots
        self.rt: Runtime | None = None
        self._polled: Counter[str] = Counter()  # since the last summary line

    def stop(self) -> None:
        self._stop.set()
        self._rules_watch_stop.set()

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
            async with Runtime(self.config, clock=self.clock, config_path=self.config_path,
                               env=self.env) as rt:
                self.rt = rt
                rt.synced = None  # the daemon claims its feeds: not kept for its lifetime
                self.slots = rt.concurrency
                rt.pipeline.on_queued = self._wake_dispatch.set
                # what start-up built (the restored index, compiled rules, imports) lives as
                # long as the daemon: keep it out of the collector's way, and so what
                # survives each full collection from now on (``gcpolicy``)
                gc.freeze()
                self.gc.metrics = rt.metrics
                self.gc.install()
                server: Server | None = None
                if self.config.server.enabled:
                    server = Server(self.config.server.listen, rt.metrics, rt.health,
                                    page=StatusPage(rt).render, auth=self.config.server.auth,
                                    ready=self.readiness)
                    await server.start()
                sc = self.config.store
                rt.liveness = Liveness(rt.store, every=sc.heartbeat, dead_after=sc.dead_after,
                                       clock=self.clock, on_error=rt.trouble.store_failed)
                rt.dispatcher.claimer = rt.liveness.id
                await rt.liveness.beat()  # known to the others before claiming anything
                log.info("instance.started", instance=rt.liveness.id,
                         heartbeat=sc.heartbeat, dead_after=sc.dead_after,
                         concurrency=rt.concurrency, per_host=self.config.fetch.per_host)
                ticks = rt.metrics.scheduler_ticks
                sched = Scheduler(on_tick=lambda job, result: ticks.labels(job, result).inc())
                sched.every("heartbeat", sc.heartbeat, rt.liveness.tick)
                sched.every("poll", self.tick, self._poll_tick)
                sched.every("prune", 3600.0, self._prune)
                sched.every("dedup-snapshot", SAVE_EVERY, self._save_dedup, start_now=False)
                sched.every("summary", SUMMARY_EVERY, self._summarize, start_now=False)
                sched.every("gc-sweep", GC_SWEEP_EVERY, self._sweep_gc, start_now=False)
                sched.start()
                dispatcher = asyncio.create_task(self._dispatch_loop(), name="dispatch")
                # the daemon loads its dedup index now, beside its first polls: the first
                # new story need not wait for it, and it hears the other instances at once
                loading = asyncio.create_task(self._load_dedup(), name="dedup-load")
                self._rules_watcher = asyncio.create_task(self._watch_rules(),
                                                          name="watch-rules")
                watcher = asyncio.create_task(self._watch_config(), name="watch-config")
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
                    # the last snapshot is skipped rather than cut off by the watchdog
                    rt.dedup.deadline = time.monotonic() + budget + EXIT_MARGIN / 2
                sched.stop()
                watcher.cancel()
                self._rules_watch_stop.set()
                self._rules_watcher.cancel()
                for t in self._reloads:
                    t.cancel()
                if self._refilling is not None:  # a claim in the middle of its query
                    await asyncio.gather(self._refilling, return_exceptions=True)
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
                if not loading.done():  # still loading at a stop: not worth the wait
                    loading.cancel()
                await asyncio.gather(self._rules_watcher, *self._reloads, loading,
                                     return_exceptions=True)
                await rt.liveness.leave()  # its claims were given back or finished
                if server:
                    await server.stop()
                if self._store_probe is not None and not self._store_probe.done():
                    self._store_probe.cancel()  # a /readyz query the store never answered
        finally:
            self.gc.uninstall()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("daemon.stopped")
        return 0

    def _sighup(self) -> None:
        if self.rt is not None and not self._stop.is_set():
            log.info("config.reload_requested", by="SIGHUP")
            task = asyncio.create_task(self.reload("SIGHUP"), name="reload")
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)

    async def reload(self, by: str) -> bool:
        """Reload the whole configuration (``Runtime.reload``); a bug in it is logged and
        leaves the old configuration running."""
        rt = self.rt
        if rt is None:
            return False
        old_rules = rt.config.rules_path
        try:
            ok = await rt.reload(by)
        except Exception as e:  # keep running: the old configuration stays in force
            log.error("config.reload_crashed", by=by, error=repr(e), exc_info=True)
            return False
        self.config = rt.config
        if ok and rt.config.rules_path != old_rules and not self._stop.is_set():
            # the rules moved: watch their new place (the old watch ends by its event:
            # this may run inside it)
            self._rules_watch_stop.set()
            self._rules_watch_stop = asyncio.Event()
            self._rules_watcher = asyncio.create_task(self._watch_rules(), name="watch-rules")
        return ok

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """``/readyz``: whether this instance can do its job now, check by check: the
        store answers (a cheap query within ``READY_STORE_TIMEOUT``), the scheduler's poll
        tick ran recently, some rule is enabled, and at least one channel is healthy
        (``dispatch.ChannelHealth``: a channel that has sent nothing yet is)."""
        rt = self.rt
        if rt is None:
            return False, {"started": {"ok": False, "detail": "starting"}}
        checks: dict[str, dict[str, Any]] = {}
        # a query that outlives its timeout is left to finish in the background (a
        # cancelled database call can itself hang on a dead network), and no second one
        # is started while it hangs
        outage = rt.store.outage()
        probe = self._store_probe
        if outage is not None:  # reconnecting with backoff: no query until it answers
            checks["store"] = {"ok": False, "detail": rt.config.redact(scrub(
                f"unreachable for {outage['down_for']:g} s ({outage['error']}); "
                f"reconnecting, next attempt in {outage['retry_in']:g} s"))[:300]}
            probe = None
        elif probe is None or probe.done():
            probe = self._store_probe = asyncio.ensure_future(rt.store.count_pending())
            probe.add_done_callback(_retrieve)
        done, _ = (set(), set()) if probe is None else await asyncio.wait(
            {probe}, timeout=READY_STORE_TIMEOUT)
        if probe is None:
            pass
        elif not done:
            checks["store"] = {"ok": False,
                               "detail": f"no answer within {READY_STORE_TIMEOUT:g} s"}
        elif probe.cancelled() or probe.exception() is not None:
            error = str(probe.exception()) if not probe.cancelled() else "cancelled"
            checks["store"] = {"ok": False, "detail": rt.config.redact(scrub(error))[:300]}
        else:
            checks["store"] = {"ok": True, "detail": f"answered ({probe.result()} pending)"}
        loop = asyncio.get_running_loop()
        limit = max(30.0, READY_TICKS * self.tick)
        ago = None if self._last_tick is None else loop.time() - self._last_tick
        checks["scheduler"] = {
            "ok": ago is not None and ago <= limit,
            "detail": "no tick yet" if ago is None else f"last tick {ago:.1f} s ago",
        }
        if rt.liveness is not None:
            ok, detail = rt.liveness.ready()
            checks["instance"] = {"ok": ok, "detail": rt.config.redact(scrub(detail))[:300]}
        enabled = len(rt.pipeline.rules.ruleset.enabled)
        checks["rules"] = {"ok": enabled > 0, "detail": f"{enabled} enabled rule(s)"}
        channels = list(rt.dispatcher.notifiers)
        failing = rt.dispatcher.failing_channels()
        checks["channels"] = {
            "ok": bool(channels) and len(failing) < len(channels),
            "detail": ("no channel configured" if not channels else
                       f"{len(channels) - len(failing)} of {len(channels)} healthy"
                       + (f"; failing: {', '.join(failing)}" if failing else "")),
        }
        return all(c["ok"] for c in checks.values()), checks

    async def _poll_tick(self) -> None:
        """The scheduler's tick (every ``tick`` s): sync what a reload left unsynced, and
        fill the free poll slots with due feeds (``_refill``). The claim itself runs in
        the refill task, so a tick stays short whatever is due."""
        rt = self.rt
        if rt is None or self._stop.is_set():
            return
        self._last_tick = asyncio.get_running_loop().time()
        await rt.sync_pending()  # what a reload changed and a store error left unsynced
        self._drained = False  # feeds may have come due since the last claim
        self._kick("tick")

    def _kick(self, trigger: str) -> None:
        """Start the refill task, or, while it runs, ask it for one more round: one
        claim at a time, never overlapping."""
        if self.rt is None or self._stop.is_set():
            return
        if self._refilling is not None:
            self._again = True
            return
        self._refilling = asyncio.create_task(self._refill(trigger), name="poll-refill")

    async def _refill(self, trigger: str) -> None:
        """Claim due feeds for the free slots and start their polls, as long as slots
        are free and feeds are due. A claim that finds fewer due feeds than free slots
        means nothing more is due now: finished polls stop asking (``_drained``) until
        the next tick, so an idle instance runs one claim a tick, not one a poll."""
        try:
            while self.rt is not None and not self._stop.is_set():
                self._again = False
                free = self.slots - len(self._inflight)
                if free <= 0:
                    return
                got = await self._claim(free, trigger)
                if got is None or got < free:
                    self._drained = got is not None
                    return
                if not self._again:
                    return
                trigger = "refill"
        except Exception as e:  # a bug: said, and the next tick claims again
            log.error("poll.refill_crashed", trigger=trigger, error=repr(e), exc_info=True)
        finally:
            self._refilling = None

    async def _claim(self, free: int, trigger: str) -> int | None:
        """Claim at most ``free`` due feeds and start their polls; how many were claimed
        (None: the store failed, said once by ``trouble``)."""
        rt = self.rt
        assert rt is not None
        now = self.clock()
        specs = rt.specs()
        rt.metrics.feed_claims.labels(trigger).inc()
        try:
            due = await rt.store.claim_due_feeds(
                now, limit=free, lease_until=now + feed_lease(rt.config),
                by=rt.liveness.id if rt.liveness else None)
        except StoreError as e:
            rt.trouble.store_failed(e, "claim")
            return None
        rt.metrics.feeds_claimed.labels(trigger).inc(len(due))
        lag = rt.metrics.poll_lag
        for st in due:
            if st.due is not None:
                lag.observe(max(0.0, (now - st.due).total_seconds()))
            spec = specs.get(st.name)
            if spec is None:  # not configured (here): left alone, its claim holds it
                continue
            if st.configured_url != spec.url:  # its URL changed while it was polling
                st = moved(st, spec, now)
            if self._stop.is_set():  # stopping while we claimed: give it back
                with contextlib.suppress(StoreError):
                    await rt.store.save_feed(replace(st, next_poll=now))
                continue
            task = asyncio.create_task(rt.poll_one(st, spec), name=f"poll:{st.name}")
            self._inflight.add(task)
            self._claimed[task] = st
            task.add_done_callback(self._forget)
        rt.metrics.polls_in_flight.set(len(self._inflight))
        return len(due)

    def _forget(self, task: asyncio.Task[PollOutcome]) -> None:
        """A poll ended: its slot is free. Refill once enough slots are free
        (``refill_at``), so one claim serves several slots, unless the last claim found
        nothing more due (then the next tick claims)."""
        self._inflight.discard(task)
        self._claimed.pop(task, None)
        if self.rt is not None:
            self.rt.metrics.polls_in_flight.set(len(self._inflight))
        if not task.cancelled() and task.exception() is None:
            outcome = task.result()
            self._polled[outcome.result] += 1
            self._polled[" new"] += outcome.new
            self._polled[" alerts"] += outcome.alerts
        if not self._drained and self.slots - len(self._inflight) >= self.refill_at:
            self._kick("refill")

    @property
    def refill_at(self) -> int:
        """Free slots that start a refill between ticks: a sixteenth of the slots (at
        least one), so that one claim query serves several finished polls."""
        return max(1, self.slots // 16)

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
                 outbox_pending=pending, gc_max_pause_ms=round(self.gc.take_max() * 1000, 1),
                 **results)

    async def _sweep_gc(self) -> None:
        self.gc.sweep()

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
        """A change in the rules directory reloads the whole configuration (so a rule
        edit that fixes a rejected reload applies the config edits waiting with it)."""
        import watchfiles

        path = self.config.rules_path
        if not path.exists():
            return
        async for changes in watchfiles.awatch(path, debounce=200, step=50,
                                               stop_event=self._rules_watch_stop):
            names = sorted({Path(p).name for _, p in changes})
            if not any(n.endswith((".yaml", ".yml")) for n in names):
                continue
            log.info("rules.changed", files=",".join(names))
            await self.reload("rules-watcher")

    async def _watch_config(self) -> None:
        """A change to the config file reloads the whole configuration. Its directory is
        watched (an editor replaces the file rather than writing it), not recursively,
        and only the file's own name counts (and a ConfigMap's ``..data`` swap). When
        the config file is a symlink, an edit of its target elsewhere needs a SIGHUP."""
        import watchfiles

        if self.config_path is None:
            return
        # the path as given (a symlink is not followed: its directory is watched)
        path = self.config_path if self.config_path.is_absolute() else (
            Path.cwd() / self.config_path)
        if not path.parent.exists():
            return

        def ours(_: object, changed: str) -> bool:
            # the file, or a Kubernetes ConfigMap's swap of its ``..data`` link
            name = Path(changed).name
            return name == path.name or name.startswith("..data")

        async for _ in watchfiles.awatch(path.parent, debounce=200, step=50,
                                         stop_event=asyncio.Event(), recursive=False,
                                         watch_filter=ours):
            log.info("config.changed", file=str(path))
            await self.reload("config-watcher")
