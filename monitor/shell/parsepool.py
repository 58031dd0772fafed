"""The off-loop stage's executor: where ``core.prepare`` runs, in threads or processes.

feedparser is the expensive part of ingest, and the daemon runs it in a process pool so
that it can use every core. A worker compiles the rules itself, from the rules directory
(reading the files: this is why it lives in the shell), keeps the last compiled set by
fingerprint, and hands ``prepare`` a matcher only when the files on disk are the rules the
daemon is running (``RuleSet.fingerprint``); if they changed in between, it leaves
matching to the daemon.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor
from pathlib import Path

from monitor.core.prepare import Job, Prepared, prepare
from monitor.core.rules.match import Matcher, compile_rules
from monitor.errors import MonitorError
from monitor.log import get_logger
from monitor.shell.rulefiles import load_rules

log = get_logger(__name__)

_MATCHERS: dict[str, Matcher] = {}  # this worker's compiled rules, by fingerprint


def _matcher(path: str, fingerprint: str) -> Matcher | None:
    m = _MATCHERS.get(fingerprint)
    if m is None:
        try:
            ruleset = load_rules(Path(path), channels=None)
        except MonitorError:
            return None  # being edited: the daemon matches itself
        if ruleset.fingerprint != fingerprint:
            return None
        m = compile_rules(ruleset)
        _MATCHERS.clear()
        _MATCHERS[fingerprint] = m
    return m


PARENT_CHECK = 1.0  # seconds between a worker's looks at whether its daemon still lives


def worker_init(parent: int) -> None:
    """A parse worker's start: it ends when the daemon ``parent`` does, however that
    ends. On Linux the kernel sends it SIGTERM when its parent dies (PR_SET_PDEATHSIG);
    everywhere a watch thread also checks the parent every ``PARENT_CHECK`` seconds and
    exits when it is gone (reparented). SIGTERM and SIGINT keep their default effect."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C goes to the daemon, which stops us
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the daemon died before we got here
        os._exit(0)

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_job(job: Job) -> Prepared:
    """A worker's whole job: the matcher of the daemon's rules (when the files still hold
    them), then ``prepare``."""
    m = (_matcher(job.rules_path, job.rules_fingerprint)
         if job.rules_path and job.rules_fingerprint else None)
    return prepare(job, m)


class ParsePool:
    """Runs ``prepare`` (parse, normalise, per-story dedup and rule work) off the event
    loop in an executor (threads or processes). A process pool whose worker died (OOM
    killer, a crash in a C extension) is broken for good: it is replaced, once per
    breakage, and the job retried, so one bad feed cannot stop every feed."""

    def __init__(self, make: Callable[[], Executor]) -> None:
        self._make = make
        self._executor = make()

    async def __call__(self, job: Job) -> Prepared:
        loop = asyncio.get_running_loop()
        executor = self._executor
        try:
            return await loop.run_in_executor(executor, run_job, job)
        except BrokenExecutor:
            if self._executor is executor:  # the first to notice replaces it
                log.error("parse_pool.broken", feed=job.feed, note="a worker died; restarting")
                self._executor = self._make()
                executor.shutdown(wait=False, cancel_futures=True)
            return await loop.run_in_executor(self._executor, run_job, job)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
