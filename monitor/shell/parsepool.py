"""The off-loop stage's executor: where ``core.prepare`` runs, in processes or threads,
each job within a deadline.

feedparser is the expensive part of ingest, and the daemon runs it in worker processes
so that it can use every core. A worker compiles the rules itself, from the rules
directory (reading the files: this is why it lives in the shell), keeps the last
compiled set by fingerprint, and hands ``prepare`` a matcher only when the files on
disk are the rules the daemon is running (``RuleSet.fingerprint``); if they changed in
between, it leaves matching to the daemon.

Deadlines. A job that runs past ``fetch.parse_timeout`` (a pathological feed, a
catastrophic regex, a C extension that never returns) is abandoned: its worker process
is killed (SIGKILL: a stuck C extension need not listen to SIGTERM) and a fresh one
takes its place, and the caller gets ``JobTimedOut``, which says which entry the job was
on. Only that worker is touched: the pool owns its processes (one socket pair each), so
the jobs of other feeds running beside it go on undisturbed. A worker that dies (OOM
killer, a crash) is replaced too and its job tried once more. ``ParsePool.health`` tells
``/healthz`` about abandoned jobs and replaced workers.

Workers are spawned, not forked: a fresh interpreter that inherits no listening socket,
database or file watch, keeps the default SIGTERM, and exits when the daemon dies,
however it dies (``worker_init``).

In threads (``fetch.parse_in: thread``, and the executors tests hand in) a job past its
deadline is abandoned all the same, but a thread cannot be killed: it stays busy until
the job ends (``health`` reports it as stuck), and the pool moves on to fresh threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from monitor.core.model import Story
from monitor.core.prepare import Job, Prepared, Progress, prepare
from monitor.core.rules.match import Matcher, compile_rules
from monitor.errors import MonitorError
from monitor.log import get_logger
from monitor.metrics import Metrics
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
START_TIMEOUT = 60.0  # seconds a new worker process gets to start (imports), on a busy host
REPLACED_WINDOW = 900.0  # seconds /healthz stays degraded after a worker was replaced
PROGRESS_BYTES = 256  # where a worker's job is, readable by the daemon while it runs
FAILPOINTS = "MONITOR_FAILPOINTS"  # test aid, see _failpoints

JobFn = Callable[[Job, Progress | None], Prepared]


def worker_init(parent: int) -> None:
    """A parse worker's start: it ends when the daemon ``parent`` does, however that
    ends. On Linux the kernel sends it SIGTERM when its parent dies (PR_SET_PDEATHSIG);
    everywhere a watch thread also checks the parent every ``PARENT_CHECK`` seconds and
    exits when it is gone (reparented). SIGTERM and SIGINT keep their default effect."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C goes to the daemon, which stops us
    if sys.platform.startswith("linux"):
        import ctypes  # here: only a worker needs it, and the daemon's start is spared it

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


def run_job(job: Job, progress: Progress | None = None) -> Prepared:
    """A worker's whole job: the matcher of the daemon's rules (when the files still hold
    them), then ``prepare``."""
    m = (_matcher(job.rules_path, job.rules_fingerprint)
         if job.rules_path and job.rules_fingerprint else None)
    return prepare(job, m, progress)


def _failpoints() -> set[str]:
    """TEST AID, read in a worker process only: ``MONITOR_FAILPOINTS=prepare-hang:NAME``
    (comma-separated, repeatable) makes every job of the feed NAME hang at its first
    entry, deaf to SIGTERM, as a catastrophic regex or a stuck C extension would: how the
    tests drive a real daemon past its parse deadline. Unset in production."""
    out: set[str] = set()
    for point in os.environ.get(FAILPOINTS, "").split(","):
        kind, _, feed = point.strip().partition(":")
        if kind == "prepare-hang" and feed:
            out.add(feed)
    return out


def _hang() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:  # asleep, not spinning: the tests share the machine
        time.sleep(1.0)


_HEADER = struct.Struct("!Q")  # the length of the pickle that follows


def _read_frame(f: io.BufferedIOBase) -> bytes | None:
    head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (n,) = _HEADER.unpack(head)
    data = f.read(n)
    return data if len(data) == n else None


def _write_frame(f: io.BufferedIOBase, data: bytes) -> None:
    f.write(_HEADER.pack(len(data)) + data)  # one send: the daemon wakes once to read it
    f.flush()


def worker_main(conn: socket.socket, parent: int, progress: Any, fn: JobFn) -> None:
    """A worker process: ``worker_init``, say it is ready, then run the jobs the daemon
    sends over ``conn`` one at a time, until the daemon closes it. Before each entry it
    writes where it is into ``progress`` (shared memory), for the daemon to read when
    the job runs past its deadline."""
    worker_init(parent)
    hang = _failpoints()
    with conn, conn.makefile("rwb") as f:
        _write_frame(f, pickle.dumps(("ready", os.getpid())))
        while True:
            data = _read_frame(f)
            if data is None:
                return  # the daemon is done with us
            job: Job = pickle.loads(data)

            def report(i: int, n: int, story: Story, stuck: bool = job.feed in hang) -> None:
                progress.value = _where(i, n, story)
                if stuck:
                    _hang()

            progress.value = b"while parsing the feed"
            out: tuple[str, Any]
            try:
                out = ("ok", fn(job, report))
            except Exception as e:  # the daemon's to report, as a thread's would be
                out = ("error", e)
            progress.value = b""
            try:
                payload = pickle.dumps(out, pickle.HIGHEST_PROTOCOL)
            except Exception as e:
                payload = pickle.dumps(("error", RuntimeError(f"{type(e).__name__}: {e}")))
            _write_frame(f, payload)


def _where(i: int, n: int, story: Story) -> bytes:
    title = " ".join(story.title.split())[:100]
    text = f'at entry {i} of {n}, "{title}" (id {story.id[:100]})'
    return text.encode("utf-8")[:PROGRESS_BYTES - 1]


class JobAbandoned(MonitorError):
    """A parse job that gave no result: the feed's poll fails with this as its error."""

    def __init__(self, message: str, *, feed: str) -> None:
        super().__init__(message)
        self.feed = feed


class JobTimedOut(JobAbandoned):
    """A parse job ran past its deadline and was abandoned (its process killed)."""

    def __init__(self, *, feed: str, deadline: float, where: str, killed: bool) -> None:
        fate = ("its worker was killed and replaced" if killed else
                "its thread could not be stopped and runs on")
        super().__init__(f"parse job exceeded its {deadline:g} s deadline "
                         f"{where or 'while parsing the feed'}; {fate}", feed=feed)
        self.deadline = deadline
        self.where = where
        self.killed = killed


class WorkerDied(JobAbandoned):
    """The worker process running the job died under it (OOM killer, a crash)."""


@dataclass(frozen=True, slots=True)
class Incident:
    """A job abandoned, for ``/healthz``."""

    at: float  # time.monotonic()
    feed: str
    kind: str  # "timeout" | "died"
    detail: str


class _Backend(Protocol):
    kills: bool  # whether a job past its deadline is killed (processes) or left (threads)

    async def run(self, job: Job, deadline: float) -> Prepared: ...
    def running(self) -> list[tuple[str, float]]: ...  # (feed, seconds) of the jobs running
    def workers(self) -> int: ...
    def shutdown(self) -> None: ...


class _Worker:
    __slots__ = ("feed", "proc", "progress", "reader", "since", "writer")

    def __init__(self, proc: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 progress: Any) -> None:
        self.proc = proc
        self.reader = reader
        self.writer = writer
        self.progress = progress
        self.feed: str | None = None
        self.since = 0.0

    def where(self) -> str:
        raw: bytes = self.progress.value
        return raw.decode("utf-8", "replace")


async def _read(reader: asyncio.StreamReader) -> tuple[str, Any]:
    (n,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    out: tuple[str, Any] = pickle.loads(await reader.readexactly(n))
    return out


class Processes:
    """Up to ``size`` spawned worker processes that the pool owns, started when first
    needed. One job at a time per worker, over a socket pair; a worker whose job runs
    past its deadline, is cancelled, or dies is killed, and the next job starts a new
    one in its place."""

    kills = True

    def __init__(self, size: int, fn: JobFn = run_job) -> None:
        self.size = max(1, size)
        self._fn = fn
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = asyncio.Semaphore(self.size)
        self._idle: deque[_Worker] = deque()
        self._busy: set[_Worker] = set()
        self._dead: list[Any] = []  # killed processes not reaped yet
        self._closed = False

    async def _spawn(self) -> _Worker:
        self._reap()
        ours, theirs = socket.socketpair()
        progress = self._ctx.RawArray("c", PROGRESS_BYTES)
        proc = self._ctx.Process(target=worker_main, name="monitor-parse", daemon=True,
                                 args=(theirs, os.getpid(), progress, self._fn))
        try:
            proc.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        w: _Worker | None = None
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours)
            w = _Worker(proc, reader, writer, progress)
            async with asyncio.timeout(START_TIMEOUT):
                await _read(reader)  # "ready": its imports are done
        except BaseException as e:
            if w is not None:
                self._kill(w)
            else:
                ours.close()
                proc.kill()
                self._dead.append(proc)
            if isinstance(e, TimeoutError | asyncio.IncompleteReadError | ConnectionError):
                raise MonitorError(f"a parse worker did not start (exit code "
                                   f"{proc.exitcode})") from e
            raise
        log.debug("parse_pool.worker_started", pid=proc.pid)
        return w

    def _kill(self, w: _Worker) -> None:
        w.writer.close()
        if w.proc.exitcode is None:
            w.proc.kill()
        self._dead.append(w.proc)

    def _reap(self) -> None:
        self._dead = [p for p in self._dead if p.exitcode is None]  # (waitpid, WNOHANG)

    async def run(self, job: Job, deadline: float) -> Prepared:
        async with self._slots:
            if self._closed:
                raise MonitorError("the parse pool is shut down")
            w = self._idle.popleft() if self._idle else await self._spawn()
            done = False
            try:
                payload = pickle.dumps(job, pickle.HIGHEST_PROTOCOL)
                w.feed, w.since = job.feed, time.monotonic()
                self._busy.add(w)
                try:
                    async with asyncio.timeout(deadline):
                        # one write, so one send: each system call lets go of the
                        # interpreter lock, which the store's thread may then hold
                        w.writer.write(_HEADER.pack(len(payload)) + payload)
                        await w.writer.drain()
                        kind, value = await _read(w.reader)
                except TimeoutError:
                    raise JobTimedOut(feed=job.feed, deadline=deadline, where=w.where(),
                                      killed=True) from None
                except (asyncio.IncompleteReadError, ConnectionError):
                    if self._closed:
                        raise MonitorError("the parse pool was shut down under the job"
                                           ) from None
                    w.proc.join(1.0)  # it is gone: its exit code says how
                    raise WorkerDied(f"the parse worker died {w.where() or 'while parsing'}"
                                     f" (exit code {w.proc.exitcode})", feed=job.feed) from None
                done = True
            finally:
                self._busy.discard(w)
                w.feed = None
                if done and not self._closed:
                    self._idle.append(w)
                else:  # past its deadline, dead, or its poll was cancelled mid-job
                    self._kill(w)
        if kind == "error":
            assert isinstance(value, BaseException)
            raise value
        assert isinstance(value, Prepared)
        return value

    def running(self) -> list[tuple[str, float]]:
        now = time.monotonic()
        return [(w.feed, now - w.since) for w in self._busy if w.feed is not None]

    def workers(self) -> int:
        return len(self._idle) + len(self._busy)

    def shutdown(self) -> None:
        """Kill every worker, busy or not, and reap them (a second at most each)."""
        self._closed = True
        workers = [*self._idle, *self._busy]
        self._idle.clear()
        for w in workers:
            self._kill(w)
        for p in self._dead:
            p.join(1.0)
        self._reap()


class Threads:
    """An executor's threads (or whatever ``make`` gives). A job past its deadline is
    abandoned but cannot be stopped: its thread is counted as stuck until it ends, and
    the pool makes a new executor (when ``make`` gives a new one) so that its other
    threads are not short of one. A broken executor is replaced and the job retried."""

    kills = False

    def __init__(self, make: Callable[[], Executor], fn: JobFn = run_job) -> None:
        self._make = make
        self._fn = fn
        self._executor = make()
        self._running: dict[int, tuple[str, float]] = {}

    async def run(self, job: Job, deadline: float) -> Prepared:
        executor = self._executor
        try:
            return await self._run(executor, job, deadline)
        except BrokenExecutor:
            if self._executor is executor:  # the first to notice replaces it
                log.error("parse_pool.broken", feed=job.feed, note="a worker died; restarting")
                self._executor = self._make()
                executor.shutdown(wait=False, cancel_futures=True)
            return await self._run(self._executor, job, deadline)

    async def _run(self, executor: Executor, job: Job, deadline: float) -> Prepared:
        loop = asyncio.get_running_loop()
        started = loop.create_future()
        key = id(started)

        def call() -> Prepared:
            self._running[key] = (job.feed, time.monotonic())
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_set_result, started)
            try:
                return self._fn(job, None)
            finally:
                self._running.pop(key, None)

        fut = loop.run_in_executor(executor, call)
        fut.add_done_callback(_retrieve)
        try:
            # the deadline runs from the start, not while the job waits for a thread
            await asyncio.wait({started, fut}, return_when=asyncio.FIRST_COMPLETED)
            if not fut.done():
                async with asyncio.timeout(deadline):
                    return await asyncio.shield(fut)
            return fut.result()
        except TimeoutError:
            if not fut.done():
                if self._executor is executor:
                    new = self._make()
                    if new is not executor:
                        self._executor = new
                        executor.shutdown(wait=False)  # its queue still runs, on its threads
                raise JobTimedOut(feed=job.feed, deadline=deadline, where="", killed=False
                                  ) from None
            return fut.result()
        finally:
            started.cancel()

    def running(self) -> list[tuple[str, float]]:
        now = time.monotonic()
        return [(feed, now - since) for feed, since in list(self._running.values())]

    def workers(self) -> int:
        return len(self._running)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _set_result(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """An abandoned job's late end: its result or error is nobody's to report."""
    if not fut.cancelled():
        fut.exception()


class ParsePool:
    """Runs ``prepare`` (parse, normalise, per-story dedup and rule work) off the event
    loop, each job within ``timeout`` seconds; see the module docstring. Called as the
    pipeline's ``prepare``: a job abandoned raises ``JobAbandoned`` (``JobTimedOut`` for
    the deadline), which the pipeline records on the feed."""

    def __init__(self, backend: _Backend, *, timeout: float = 30.0,
                 metrics: Metrics | None = None) -> None:
        self.backend = backend
        self.timeout = timeout
        self.metrics = metrics
        self.incidents: deque[Incident] = deque(maxlen=100)
        self.timed_out = 0  # jobs abandoned at their deadline, since start
        self.replaced = 0  # worker processes killed or found dead, and replaced

    async def __call__(self, job: Job) -> Prepared:
        try:
            return await self.backend.run(job, self.timeout)
        except JobTimedOut as e:
            self._record(e, "timeout")
            raise
        except WorkerDied as e:  # once more, on a new worker: it may have been the OOM killer
            self._record(e, "died")
        try:
            return await self.backend.run(job, self.timeout)
        except JobTimedOut as e:
            self._record(e, "timeout")
            raise
        except WorkerDied as e:
            self._record(e, "died")
            raise

    def _record(self, e: JobAbandoned, kind: str) -> None:
        self.incidents.append(Incident(at=time.monotonic(), feed=e.feed, kind=kind,
                                       detail=str(e)))
        killed = self.backend.kills
        if kind == "timeout":
            self.timed_out += 1
        if killed:
            self.replaced += 1
        if self.metrics is not None:
            if kind == "timeout":
                self.metrics.parse_timeouts.labels(e.feed).inc()
            if killed:
                self.metrics.parse_workers_replaced.labels(kind).inc()
        log.error("parse.timeout" if kind == "timeout" else "parse.worker_died", feed=e.feed,
                  error=str(e), deadline=self.timeout)

    def health(self) -> tuple[dict[str, Any], list[str]]:
        """The ``parse`` part of ``/healthz`` and the reasons it makes the daemon degraded:
        jobs running past their deadline, and workers replaced in the last
        ``REPLACED_WINDOW`` seconds."""
        now = time.monotonic()
        stuck = sorted((feed, s) for feed, s in self.backend.running() if s > self.timeout)
        recent = [i for i in self.incidents if now - i.at <= REPLACED_WINDOW]
        reasons: list[str] = []
        d = f"{self.timeout:g} s"
        if stuck:
            feeds = ", ".join(sorted({f for f, _ in stuck}))
            what = ("parse worker(s) busy" if self.backend.kills else
                    "parse thread(s) stuck (a thread cannot be killed: use "
                    "fetch.parse_in: process)")
            reasons.append(f"{len(stuck)} {what} past the {d} deadline (feed {feeds})")
        timeouts = [i for i in recent if i.kind == "timeout"]
        if timeouts:
            feeds = ", ".join(sorted({i.feed for i in timeouts}))
            if self.backend.kills:
                head = ("parse worker replaced after a job exceeded its" if len(timeouts) == 1
                        else f"{len(timeouts)} parse workers replaced after jobs exceeded "
                        "their")
            else:
                head = ("parse job abandoned after it exceeded its" if len(timeouts) == 1
                        else f"{len(timeouts)} parse jobs abandoned after they exceeded their")
            reasons.append(f"{head} {d} deadline in the last {REPLACED_WINDOW / 60:g} min "
                           f"(feed {feeds})")
        died = [i for i in recent if i.kind == "died"]
        if died:
            feeds = ", ".join(sorted({i.feed for i in died}))
            reasons.append(f"{len(died)} parse worker(s) died and were replaced in the last "
                           f"{REPLACED_WINDOW / 60:g} min (feed {feeds})")
        body = {
            "in": "process" if self.backend.kills else "thread",
            "deadline": self.timeout,
            "workers": self.backend.workers(),
            "busy": len(self.backend.running()),
            "timed_out": self.timed_out,
            "workers_replaced": self.replaced,
            "stuck": [{"feed": f, "seconds": round(s, 1)} for f, s in stuck],
            "recent": [{"feed": i.feed, "kind": i.kind, "seconds_ago": round(now - i.at),
                        "detail": i.detail} for i in list(recent)[-10:]],
        }
        return body, reasons

    def shutdown(self) -> None:
        self.backend.shutdown()
