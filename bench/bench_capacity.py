"""Capacity of ``monitor run`` in daemon mode, measured as an operator would (issue #14).

A feed farm (``bench/capfarm.py``, a process of its own) serves N feeds on 16 loopback
addresses; each cycle (the poll interval) a deterministic 20 % of them gain 1–5 new items
and the rest answer 304 to the daemon's conditional GETs. ``monitor run`` is started as a
real process (K of them on one fresh PostgreSQL database, or one on SQLite) with every
feed pinned to the interval (``adaptive: false``, ``min_interval = max_interval =
interval``), one rule matching one item in 50 and a ``file`` channel, so alerts are
really written. The farm records every request; the harness samples the daemons'
``/proc`` figures every 2 s and reads their ``/metrics`` when the first pass ends and at
the end. Reported (JSON):

- ``first_pass``: start → every feed requested once, against the interval;
- ``polls_per_5min``: sustained rate after the first pass, counted over the last whole
  cycles of the run (or its second half when the first pass has not ended an interval
  before the end: ``window`` says which), and the demand (feeds × 300 s / interval);
- ``windows_10s``: polls per 10-second window, min / mean and their ratio, after the first
  pass and during it;
- ``lag_s``: how late polls are. ``daemon``: from the ``monitor_poll_lag_seconds``
  histogram (claim time minus due time) if the daemon has it, between the first pass's
  end and the end; ``farm``: per feed, the gap between consecutive requests minus the
  interval (the jitter, ±10 %, is inside it; a feed still waiting at the end counts
  with its wait so far) and the excess over interval + jitter;
- ``cpu``: user+sys of the daemons and their parse workers per poll, and the main
  processes' share of one core, in the steady window;
- ``peak_rss_mb``: VmHWM of each main process and its workers, summed; beside it the
  peak of the pages of its own a forked copy (the dedup snapshot's child) held;
- ``storage``: growth per day extrapolated from the steady window, stories, clusters,
  deliveries and alerts written at the end. SQLite: ``mb_per_day`` counts the pages in
  use (``page_count - freelist_count``, as committed, the WAL's commits included), the
  data the store holds; ``file_mb_per_day`` the files (database + WAL), which also grow
  by the WAL between checkpoints and by pages a rewrite freed for later writes (the
  dedup snapshot's parts, rewritten every 10 minutes). PostgreSQL: ``pg_database_size``;
- ``db_per_poll`` (PostgreSQL): ``pg_stat_database`` transactions and rows inserted /
  updated / deleted per poll, and round trips per poll by operation from the daemons'
  ``monitor_store_queries_total`` (``pg_stat_statements`` is not loaded here);
- ``daemon_log``: warnings and errors by event (APScheduler's skipped ticks included),
  and counts of a few info events (polls that changed, stories merged, alerts);
- ``meets``: each target of issue #14 (≥ 50,000 polls per 5 min, p99 lag < 60 s, first
  pass ≤ interval, no 10-s window below half the mean).

Fetch settings are the config's defaults: ``fetch.concurrency: auto`` sizes the polls in
flight by one rule, ceil(2 s × Σ 1/interval) within [16, 1024] (50,000 feeds every 300 s:
334), ``per_host`` 2. ``--concurrency rule`` runs the older rule instead (16 / 2 × k, k =
⌈1.5 × feeds / interval / 16⌉), ``default`` writes 16 / 2 out (a saturated instance), and
a number sets it literally.

Modes (the JSON's ``scale`` says which ran):

    python -m bench capacity        # make bench: small. SQLite, 2,000 feeds / 60 s / 180 s;
                                    # PostgreSQL 1, 2, 3 instances, 1,000 feeds / 20 s /
                                    # 120 s with concurrency 16 (each instance count
                                    # polls the demand: the database work per poll)
                                    # (about 9 min in all on 2 cores)
    MONITOR_CAPBENCH=full python -m bench capacity   # 50,000 feeds / 300 s / 1,500 s, SQLite
                                    # (about 14 min); PostgreSQL only if asked for:
    MONITOR_CAPBENCH=full MONITOR_CAPBENCH_PG=1,2,3 ...   # + 50,000 feeds on K instances
    MONITOR_CAPBENCH_PG=0 ...       # no PostgreSQL runs (also skipped when none answers)

A scaling ratio (``scaling_vs_first``: sustained polls against the first K's) measures
capacity only while the first run is saturated (``polls_per_5min.saturated``: below
97 % of the demand); otherwise every K polls the demand and the ratio is 1.
    python -m bench.bench_capacity --feeds 50000 --interval 300 --duration 1500 \\
        --instances 1 --store sqlite        # one ad-hoc run (--instances 1,2,3: several)

Every child (farm, daemons and their workers) runs in a process group of its own and is
killed on exit, errors included; temporary directories and databases are removed
(``--keep`` keeps the directory: config, logs, store, request log).
"""

from __future__ import annotations

import argparse
import array
import atexit
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.capfarm import MARKER, MARKER_EVERY, die_with_parent, feed_url, read_requests

ROOT = Path(__file__).resolve().parents[1]
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
SAMPLE_EVERY = 2.0
WINDOW = 10.0
JITTER = 0.1  # defaults.jitter: left at its default
TICK = os.sysconf("SC_CLK_TCK")

SMALL: dict[str, Any] = {"feeds": 2000, "interval": 60.0, "duration": 180.0}
SMALL_PG: dict[str, Any] = {"feeds": 1000, "interval": 20.0, "duration": 120.0,
                            "concurrency": "default"}
FULL: dict[str, Any] = {"feeds": 50000, "interval": 300.0, "duration": 1500.0}

_children: list[subprocess.Popen[bytes]] = []


def _kill_children() -> None:
    """End every process group this harness started: SIGTERM, then SIGKILL."""
    for p in _children:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for p in _children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)  # stragglers of the group (workers)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)
    _children.clear()


atexit.register(_kill_children)


def _spawn(args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    """A child in a process group of its own (so that its workers are ended with it),
    sent SIGTERM by Linux should this harness die without cleaning up (SIGKILL)."""
    p = subprocess.Popen(args, start_new_session=True, preexec_fn=die_with_parent, **kw)
    _children.append(p)
    return p


def _exit_on_sigterm() -> None:
    """SIGTERM ends the harness through ``SystemExit``, so its children are ended too."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fetch_settings(feeds: int, interval: float) -> dict[str, Any]:
    """The one scaling rule of the default fetch settings: both multiplied by k, where
    k × 16 polls/s covers 1.5 × the demand."""
    k = max(1, math.ceil(1.5 * feeds / interval / 16))
    return {"concurrency": 16 * k, "per_host": 2 * k,
            "rule": f"defaults × k, k = ceil(1.5 × feeds / interval / 16) = {k}"}


# -- PostgreSQL ---------------------------------------------------------------------------

def psql(sql: str, db: str = "postgres") -> str:
    out = subprocess.run(["psql", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, "-d", db,
                          "-XAtqc", sql], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def pg_unavailable() -> str | None:
    if shutil.which("psql") is None:
        return "psql not installed"
    try:
        psql("SELECT 1")
    except (subprocess.SubprocessError, OSError) as e:
        return f"PostgreSQL at {PG_HOST}:{PG_PORT} does not answer ({e})"
    return None


def pg_stats(db: str) -> dict[str, float]:
    row = psql("SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, "
               f"pg_database_size(datname) FROM pg_stat_database WHERE datname = '{db}'")
    names = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted",
             "size")
    return dict(zip(names, map(float, row.split("|")), strict=True))


# -- /proc ---------------------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on


def descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = defaultdict(list)
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st:
                kids[int(st[1])].append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """user+sys of ``pid`` (and of its reaped children when ``reaped``), in seconds."""
    st = _stat(pid)
    if st is None:
        return 0.0
    ticks = int(st[11]) + int(st[12]) + ((int(st[13]) + int(st[14])) if reaped else 0)
    return ticks / TICK


def private_kib(pid: int) -> int:
    """Memory of ``pid`` that no other process shares (a forked copy's own pages)."""
    total = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def _cmdline(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""


def hwm_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


# -- the daemons ---------------------------------------------------------------------------

@dataclass
class Instance:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    hwm: dict[int, int] = field(default_factory=dict)  # pid → peak VmHWM seen (KiB)
    #: forked copies of the main process (the dedup snapshot's child): pid → peak of
    #: their own pages (their VmHWM counts the pages they share with the main process)
    forks: dict[int, int] = field(default_factory=dict)

    def cpu(self) -> tuple[float, float]:
        """(main process with its reaped children, main + live descendants) CPU seconds."""
        main = cpu_seconds(self.proc.pid, reaped=True)
        kids = descendants(self.proc.pid)
        me = _cmdline(self.proc.pid)
        for pid in [self.proc.pid, *kids]:
            if pid != self.proc.pid and _cmdline(pid) == me:
                self.forks[pid] = max(self.forks.get(pid, 0), private_kib(pid))
            else:
                self.hwm[pid] = max(self.hwm.get(pid, 0), hwm_kib(pid))
        return cpu_seconds(self.proc.pid), main + sum(cpu_seconds(k) for k in kids)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=30) as r:
            return str(r.read().decode())
        return ""


_SAMPLE = re.compile(r'^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str, names: set[str]) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m and m.group(1) in names:
            labels = dict(_LABEL.findall(m.group(2) or ""))
            with contextlib.suppress(ValueError):
                out.append((m.group(1), labels, float(m.group(3))))
    return out


def lag_buckets(texts: list[str]) -> dict[float, float]:
    """Cumulative ``monitor_poll_lag_seconds`` buckets summed over instances."""
    out: dict[float, float] = defaultdict(float)
    for text in texts:
        for _, labels, v in parse_metrics(text, {"monitor_poll_lag_seconds_bucket"}):
            out[float(labels["le"])] += v
    return dict(out)


def bucket_quantile(cum: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram, linear within a bucket (as
    Prometheus' histogram_quantile)."""
    if not cum:
        return None
    les = sorted(cum)
    total = cum[les[-1]]
    if total <= 0:
        return None
    rank, prev_le, prev_c = q * total, 0.0, 0.0
    for le in les:
        if cum[le] >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / max(cum[le] - prev_c, 1e-9))
        prev_le, prev_c = le, cum[le]
    return les[-1]


def store_queries(texts: list[str]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for text in texts:
        for _, labels, v in parse_metrics(text, {"monitor_store_queries_total"}):
            out[labels.get("op", "")] += v
    return dict(out)


# -- analysis ------------------------------------------------------------------------------

def quantile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def window_stats(times: list[float], start: float, end: float) -> dict[str, Any]:
    """Polls per whole 10-s window in [start, end)."""
    n = int((end - start) // WINDOW)
    if n < 1:
        return {"windows": 0}
    counts = [0] * n
    for t in times:
        j = int((t - start) // WINDOW)
        if 0 <= j < n:
            counts[j] += 1
    mean = sum(counts) / n
    return {"windows": n, "min": min(counts), "mean": round(mean, 1), "max": max(counts),
            "min_over_mean": round(min(counts) / mean, 3) if mean else None,
            "below_half_mean": sum(1 for c in counts if c < mean / 2)}


def r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


@dataclass
class Sample:
    at: float
    cpu_main: float
    cpu_all: float
    store_bytes: float
    pg: dict[str, float] | None
    store_used: float = 0.0  # SQLite: bytes of the pages in use (``sqlite_used_bytes``)


def at_time(samples: list[Sample], t: float) -> Sample:
    """The last sample taken at or before ``t`` (the first one if none)."""
    best = samples[0]
    for s in samples:
        if s.at <= t:
            best = s
    return best


# -- one run -------------------------------------------------------------------------------

def write_config(tmp: Path, *, feeds: int, interval: float, farm_port: int, store: str,
                 fetch: dict[str, Any]) -> Path:
    (tmp / "rules").mkdir()
    (tmp / "rules" / "capbench.yaml").write_text(f"""
rules:
  - name: capbench
    description: the farm's marked items, one in {MARKER_EVERY}
    any: [{MARKER}]
    severity: high
    channels: [alerts]
""", encoding="utf-8")
    lines = [
        f"defaults: {{interval: {interval}s, min_interval: {interval}s, "
        f"max_interval: {interval}s, adaptive: false}}",
        "rules: rules",
        f"store: {store}",
        "channels:",
        "  alerts: {type: file, path: alerts.jsonl}",
        "server: {listen: '127.0.0.1:${MONITOR_PORT}'}",
    ]
    fetch_yaml = {k: v for k, v in fetch.items() if k in ("concurrency", "per_host")}
    if fetch_yaml:
        lines.append("fetch: {" + ", ".join(f"{k}: {v}" for k, v in fetch_yaml.items()) + "}")
    lines.append("feeds:")
    lines += [f"  - {{name: f{i:05d}, url: '{feed_url(i, farm_port)}'}}" for i in range(feeds)]
    config = tmp / "config.yaml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def run_once(*, feeds: int, interval: float, duration: float, store: str = "sqlite",
             instances: int = 1, concurrency: str | None = None, farm_procs: int = 1,
             keep: bool = False, code: str | None = None) -> dict[str, Any]:
    """One measured run: farm, ``instances`` daemons, ``duration`` seconds from spawn."""
    tmp = Path(tempfile.mkdtemp(prefix="capbench-"))
    db = f"capbench_{uuid.uuid4().hex[:10]}" if store == "postgres" else None
    try:
        return _run(tmp, db, feeds=feeds, interval=interval, duration=duration, store=store,
                    instances=instances, concurrency=concurrency, farm_procs=farm_procs,
                    code=code)
    finally:
        _kill_children()
        if db:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        if keep:
            print(f"# kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Run:
    """What one run collected, for the report."""

    feeds: int
    interval: float
    store: str
    instances: int
    tmp: Path
    db: str | None
    daemons: list[Instance] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    t_spawn: float = 0.0
    t_end: float = 0.0
    fp_end: float | None = None  # when every feed had been requested once
    scrape_fp: list[str] = field(default_factory=list)  # /metrics at fp_end
    scrape_end: list[str] = field(default_factory=list)
    farm_cpu: float = 0.0

    def store_bytes(self) -> float:
        if self.store == "postgres":
            return 0.0
        return float(sum(p.stat().st_size for p in self.tmp.glob("monitor.db*")))

    def sample(self) -> None:
        mains, alls = zip(*(d.cpu() for d in self.daemons), strict=True)
        used = 0.0 if self.store == "postgres" else sqlite_used_bytes(self.tmp / "monitor.db")
        self.samples.append(Sample(time.time(), sum(mains), sum(alls), self.store_bytes(),
                                   pg_stats(self.db) if self.db else None, used))


def sqlite_used_bytes(path: Path) -> float:
    """Bytes of the SQLite database's pages in use, as committed (what its WAL holds
    included): ``(page_count - freelist_count) × page_size``. 0 when it cannot be read
    yet (not created, or busy past the timeout)."""
    if not path.exists():
        return 0.0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                timeout=5)) as con:
            pages = con.execute("PRAGMA page_count").fetchone()[0]
            free = con.execute("PRAGMA freelist_count").fetchone()[0]
            size = con.execute("PRAGMA page_size").fetchone()[0]
    except sqlite3.Error:
        return 0.0
    return float((pages - free) * size)


def _fetch(feeds: int, interval: float, concurrency: str | None) -> dict[str, Any]:
    out = _fetch_rule(feeds, interval, concurrency)
    if per_host := os.environ.get("MONITOR_CAPBENCH_PER_HOST"):  # the farm's 16 addresses
        out["per_host"] = int(per_host)  # standing for many hosts: see the docstring
        out["rule"] += f"; per_host {per_host} (MONITOR_CAPBENCH_PER_HOST)"
    return out


def _fetch_rule(feeds: int, interval: float, concurrency: str | None) -> dict[str, Any]:
    if concurrency is None:  # the config's own defaults: fetch.concurrency is auto
        need = math.ceil(2.0 * feeds / interval)
        return {"rule": "the defaults: fetch.concurrency auto = ceil(2 s × feeds / interval) "
                        f"within [16, 1024] = {min(1024, max(16, need))}, per_host 2"}
    if concurrency == "rule":
        return fetch_settings(feeds, interval)
    if concurrency == "default":  # written out, so that a version with another default runs 16 / 2
        return {"concurrency": 16, "per_host": 2, "rule": "main's defaults, unscaled"}
    return {"concurrency": concurrency, "rule": f"concurrency: {concurrency} (given)"}


def _run(tmp: Path, db: str | None, *, feeds: int, interval: float, duration: float,
         store: str, instances: int, concurrency: str | None,
         farm_procs: int, code: str | None = None) -> dict[str, Any]:
    fetch = _fetch(feeds, interval, concurrency)
    reqdir = tmp / "farm"
    reqdir.mkdir()
    with (tmp / "farm.log").open("wb") as farm_log:
        farm = _spawn([sys.executable, "-m", "bench.capfarm", "--feeds", str(feeds),
                       "--interval", str(interval), "--procs", str(farm_procs),
                       "--log-dir", str(reqdir)], cwd=ROOT, stdout=subprocess.PIPE,
                      stderr=farm_log)
    assert farm.stdout is not None
    ready = farm.stdout.readline().decode().split(maxsplit=2)
    if not ready or ready[0] != "READY":
        raise RuntimeError(f"the feed farm did not start: {(tmp / 'farm.log').read_text()}")
    farm_port, titles = int(ready[1]), ready[2].strip()

    if store == "postgres":
        assert db is not None
        psql(f'CREATE DATABASE "{db}"')
        store_url = f"{{url: 'postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}'}}"
    else:
        store_url = "sqlite:///monitor.db"
    config = write_config(tmp, feeds=feeds, interval=interval, farm_port=farm_port,
                          store=store_url, fetch=fetch)

    run = Run(feeds, interval, store, instances, tmp, db)
    run.t_spawn = time.time()
    for n in range(instances):
        port = free_port()
        log = tmp / f"daemon-{n}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MONITOR_PORT": str(port)}
        if code:  # another checkout's monitor package, ahead of the installed one
            env["PYTHONPATH"] = os.pathsep.join(filter(None, (code, env.get("PYTHONPATH"))))
        with log.open("wb") as fh:
            proc = _spawn([sys.executable, "-m", "monitor", "--log-format", "json", "run",
                           "--config", str(config)], cwd=tmp, env=env,
                          stdout=fh, stderr=subprocess.STDOUT)
        run.daemons.append(Instance(f"i{n}", port, proc, log))
    _measure(run, farm, reqdir, run.t_spawn + duration)

    result: dict[str, Any] = {
        "feeds": feeds, "interval_s": interval, "duration_s": duration, "store": store,
        "instances": instances, "fetch": fetch, "titles": titles,
        "code": code or "the installed monitor",
        "marked_items": f"1 in {MARKER_EVERY} (rule capbench)",
    }
    reqs = sorted((t, f, s) for t, f, s in read_requests(reqdir) if t <= run.t_end)
    w0 = _report_requests(run, reqs, result)
    _report_resources(run, reqs, w0, result)
    result["daemon_log"] = _log_events(run.daemons)
    result["meets"] = _meets(run, result)
    return result


def _measure(run: Run, farm: subprocess.Popen[bytes], reqdir: Path, end: float) -> None:
    """Sample until ``end``: /proc every 2 s, the farm's request log for the first pass's
    end (then /metrics once), /metrics again at the end; then stop everything."""
    seen: set[int] = set()
    offsets: dict[Path, int] = {}

    def farm_cpu() -> float:
        return (cpu_seconds(farm.pid, reaped=True)
                + sum(cpu_seconds(k) for k in descendants(farm.pid)))

    def read_new() -> None:
        for path in sorted(reqdir.glob("requests-*.bin")):
            with path.open("rb") as fh:
                fh.seek(offsets.get(path, 0))
                raw = fh.read()
            usable = len(raw) - len(raw) % 24
            offsets[path] = offsets.get(path, 0) + usable
            a = array.array("d")
            a.frombytes(raw[:usable])
            seen.update(int(a[j]) for j in range(1, len(a), 3))

    farm_cpu0 = farm_cpu()
    wanted: bool | None = None  # is the scrape at the first pass's end worth its cost?
    while time.time() < end:
        for d in run.daemons:
            if d.proc.poll() is not None:
                raise RuntimeError(f"monitor run {d.name} exited with {d.proc.returncode}: "
                                   + d.log.read_text(errors="replace")[-2000:])
        run.sample()
        read_new()
        if wanted is None and seen:
            # /metrics has series per feed: at 50,000 feeds one scrape costs the daemon
            # seconds, so the one at the first pass's end (for the differences of the lag
            # histogram and of the store's statements) is taken only when it would
            # show something; this early one is cheap, few feeds being known yet
            probe = run.daemons[0].metrics()
            wanted = ("monitor_poll_lag_seconds_bucket" in probe
                      or "monitor_store_queries_total{" in probe)
        if run.fp_end is None and len(seen) >= run.feeds:
            run.fp_end = time.time()
            if wanted:
                run.scrape_fp = [d.metrics() for d in run.daemons]
            run.sample()
        time.sleep(max(0.0, min(SAMPLE_EVERY, end - time.time())))
    run.sample()
    # the measured run ends here: the last /metrics read costs a 50,000-feed daemon
    # seconds of CPU (a series per feed), which is this benchmark's doing, not the load's
    run.t_end = time.time()
    run.scrape_end = [d.metrics() for d in run.daemons]
    run.farm_cpu = farm_cpu() - farm_cpu0
    # a clean stop (SIGTERM), then the farm
    for d in run.daemons:
        with contextlib.suppress(ProcessLookupError):
            d.proc.send_signal(signal.SIGTERM)
    for d in run.daemons:
        with contextlib.suppress(subprocess.TimeoutExpired):
            d.proc.wait(40)
    farm.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        farm.wait(10)


def _report_requests(run: Run, reqs: list[tuple[float, int, int]],
                     result: dict[str, Any]) -> float:
    """First pass, sustained rate, 10-s windows and the farm-side lag; returns the start
    of the steady window."""
    feeds, interval, fp_end, t_end = run.feeds, run.interval, run.fp_end, run.t_end
    times = [t for t, _, _ in reqs]
    first_req = times[0] if times else None
    result["first_pass"] = {
        "done": fp_end is not None,
        "from_spawn_s": r(fp_end - run.t_spawn) if fp_end else None,
        "from_first_request_s": r(fp_end - first_req) if fp_end and first_req else None,
        "first_request_after_s": r(first_req - run.t_spawn) if first_req else None,
        "feeds_requested": len({f for _, f, _ in reqs}),
        "interval_s": interval,
    }
    if fp_end is not None and t_end - fp_end >= interval:
        cycles = int((t_end - fp_end) // interval)
        w0, how = t_end - cycles * interval, f"last {cycles} whole cycle(s) after the first pass"
    else:
        w0 = run.t_spawn + (t_end - run.t_spawn) / 2
        how = "second half of the run (the first pass did not end an interval before the end)"
    steady = [x for x in reqs if x[0] >= w0]
    span = t_end - w0
    result["polls_per_5min"] = {
        "sustained": round(len(steady) / span * 300) if span > 0 else None,
        "demand": round(feeds * 300 / interval),
        "saturated": len(steady) / span * 300 < 0.97 * feeds * 300 / interval
        if span > 0 else None,
        "window": how, "window_s": r(span),
        "statuses": dict(Counter(str(s) for _, _, s in steady)),
    }
    result["windows_10s"] = {
        # the last whole cycles (as polls_per_5min): the steady state
        "steady": window_stats(times, w0, t_end),
        # from the first pass's end: with the catch-up of a first pass that overran
        "after_first_pass": window_stats(times, fp_end, t_end) if fp_end else {"windows": 0},
        "first_pass": window_stats(times, first_req, fp_end or t_end) if first_req else {},
    }
    # lag, farm side: the gap between consecutive requests of a feed, minus the interval
    last: dict[int, float] = {}
    gaps: list[float] = []
    for t, f, _ in reqs:
        if f in last and t >= w0:
            gaps.append(t - last[f] - interval)
        last[f] = t
    # feeds still waiting at the end count too (a lower bound of their lag): without
    # them a saturated daemon, which never comes back to many feeds, would look punctual
    for f in range(feeds):
        waiting = t_end - last.get(f, run.t_spawn) - interval
        if waiting > 0:
            gaps.append(waiting)
    farm_lag = {
        "gap_minus_interval_p50": r(quantile(gaps, 0.5)),
        "gap_minus_interval_p99": r(quantile(gaps, 0.99)),
        "gap_minus_interval_max": r(max(gaps) if gaps else None),
        "over_interval_plus_jitter_p99": r(
            quantile([max(0.0, g - JITTER * interval) for g in gaps], 0.99)),
        "feeds_not_polled_in_window": feeds - len({f for _, f, _ in steady}),
    }
    cum_end, cum_fp = lag_buckets(run.scrape_end), lag_buckets(run.scrape_fp)
    if cum_end:
        diff = {le: v - cum_fp.get(le, 0.0) for le, v in cum_end.items()} if cum_fp else cum_end
        daemon_lag: dict[str, Any] = {
            "p50": r(bucket_quantile(diff, 0.5), 2), "p99": r(bucket_quantile(diff, 0.99), 2),
            "polls": round(max(diff.values())),
            "window": "first pass end → end" if cum_fp else "whole run"}
    else:
        daemon_lag = {"absent": "the daemon has no monitor_poll_lag_seconds histogram"}
    result["lag_s"] = {"daemon": daemon_lag, "farm": farm_lag}
    return w0


def _report_resources(run: Run, reqs: list[tuple[float, int, int]], w0: float,
                      result: dict[str, Any]) -> None:
    """CPU, memory, store growth and database work, over the steady window."""
    s0, s1 = at_time(run.samples, w0), run.samples[-1]
    wall = s1.at - s0.at
    polls = sum(1 for t, _, _ in reqs if s0.at <= t <= s1.at)
    result["cpu"] = {
        "per_poll_ms": r((s1.cpu_all - s0.cpu_all) / polls * 1000, 2) if polls else None,
        "main_core_fraction": r((s1.cpu_main - s0.cpu_main) / wall / run.instances, 3)
        if wall else None,
        "all_cores": r((s1.cpu_all - s0.cpu_all) / wall, 3) if wall else None,
        "whole_run_s": r(s1.cpu_all, 1),
        "farm_core_fraction": r(run.farm_cpu / (run.t_end - run.t_spawn), 3),
        "window_s": r(wall), "polls_in_window": polls,
    }
    hwm_main = [d.hwm.get(d.proc.pid, 0) for d in run.daemons]
    hwm_all = [sum(d.hwm.values()) for d in run.daemons]
    result["peak_rss_mb"] = {"main": r(max(hwm_main) / 1024),
                             "main_and_workers": r(max(hwm_all) / 1024),
                             "all_instances": r(sum(hwm_all) / 1024),
                             "snapshot_fork_own_pages": r(max(
                                 (max(d.forks.values(), default=0) for d in run.daemons),
                                 default=0) / 1024)}
    st: dict[str, Any] = {}
    tables = ("stories", "deliveries", "clusters")
    if run.db is not None and s1.pg and s0.pg:
        grow = s1.pg["size"] - s0.pg["size"]
        st["final_bytes"] = int(s1.pg["size"])
        counts = psql("SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in tables),
                      run.db).split("|")
        per: dict[str, Any] = {
            k: r((s1.pg[k] - s0.pg[k]) / polls, 2) if polls else None
            for k in ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated",
                      "tup_deleted")}
        q_end, q_fp = store_queries(run.scrape_end), store_queries(run.scrape_fp)
        q = {op: v - q_fp.get(op, 0.0) for op, v in q_end.items()}
        # the scrapes' window: the first pass's end (or the start) to the end
        since = run.fp_end if run.scrape_fp and run.fp_end else run.t_spawn
        q_polls = sum(1 for t, _, _ in reqs if t >= since)
        if q and q_polls:
            per["store_round_trips"] = r(sum(q.values()) / q_polls, 2)
            per["round_trips_by_op"] = {op: r(v / q_polls, 3)
                                        for op, v in sorted(q.items(), key=lambda kv: -kv[1])
                                        if v > 0}
        else:
            per["store_round_trips"] = "absent: the daemon has no monitor_store_queries_total"
        per["round_trips_window"] = ("first pass end → end" if run.scrape_fp else
                                     "whole run (the first pass did not end)")
        result["db_per_poll"] = per
    else:
        files = s1.store_bytes - s0.store_bytes
        grow = s1.store_used - s0.store_used
        st["final_bytes"] = int(run.store_bytes())
        st["final_used_bytes"] = int(s1.store_used)
        st["file_mb_per_day"] = r(files / wall * 86400 / 2**20) if wall else None
        with contextlib.closing(sqlite3.connect(run.tmp / "monitor.db")) as con:
            counts = [str(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                      for t in tables]
    st["bytes_per_day"] = round(grow / wall * 86400) if wall else None
    st["mb_per_day"] = r(grow / wall * 86400 / 2**20) if wall else None
    st.update(zip(tables, map(int, counts), strict=True))
    alerts = run.tmp / "alerts.jsonl"
    st["alerts_written"] = 0
    with contextlib.suppress(OSError), alerts.open(encoding="utf-8") as fh:
        st["alerts_written"] = sum(1 for _ in fh)
    st["growth_window"] = (result["polls_per_5min"]["window"] if result["first_pass"]["done"]
                           else "during the first pass: the baseline's 10 stories a feed, "
                                "not the steady state")
    result["storage"] = st


#: info events of the daemons' logs worth counting in the report
EVENTS = ("feed.polled", "story.merged", "alert.queued", "delivery.sent", "feed.failed")


def _log_events(daemons: list[Instance]) -> dict[str, Any]:
    """The daemons' warnings and errors by event (APScheduler's skipped ticks too), the
    first line of each (its fields, the traceback's last line), and a few telling info
    events (``EVENTS``: polls that changed, stories merged, …)."""
    bad: Counter[str] = Counter()
    info: Counter[str] = Counter()
    first: dict[str, str] = {}
    for d in daemons:
        for line in d.log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                rec = {"event": line, "level": "warning" if "maximum number" in line else ""}
            event = str(rec.get("event", "?"))[:80]
            if rec.get("level") in ("warning", "error", "critical"):
                bad[event] += 1
                if event not in first:
                    trace = str(rec.get("exc") or rec.get("exception") or "")
                    fields = {k: v for k, v in rec.items()
                              if k not in ("event", "level", "ts", "exc", "exception")}
                    tail = trace.strip().splitlines()[-1:]  # the exception itself
                    first[event] = (json.dumps(fields, default=str)[:300]
                                    + (f" | {tail[0][:300]}" if tail else ""))
            elif event in EVENTS:
                info[event] += 1
    return {"warnings": dict(bad.most_common(12)),
            "first_of_each": {k: first[k] for k, _ in bad.most_common(12)},
            "events": dict(info)}


def _meets(run: Run, result: dict[str, Any]) -> dict[str, bool]:
    """Issue #14's targets, each true or false (lag: the daemon's p99 where it has the
    histogram, else the farm's excess over interval + jitter)."""
    p99 = result["lag_s"]["daemon"].get("p99")
    if p99 is None:
        p99 = result["lag_s"]["farm"]["over_interval_plus_jitter_p99"]
    fp = result["first_pass"]["from_spawn_s"]
    ratio = result["windows_10s"]["steady"].get("min_over_mean")
    sustained = result["polls_per_5min"]["sustained"] or 0
    return {
        "polls_per_5min_ge_50000": sustained >= 50000,
        "polls_per_5min_ge_demand": sustained >= 0.97 * run.feeds * 300 / run.interval,
        "p99_lag_lt_60s": p99 is not None and p99 < 60,
        "first_pass_le_interval": fp is not None and fp <= run.interval,
        "min_10s_window_ge_half_mean": ratio is not None and ratio >= 0.5,
    }


# -- modes -------------------------------------------------------------------------------

def run_pg_series(counts: list[int], **kw: Any) -> dict[str, Any]:
    """K instances on one fresh database each, for each K; the scaling ratio against
    the first K's sustained polls."""
    out: dict[str, Any] = {}
    base: float | None = None
    for k in counts:
        print(f"# capacity: postgres, {k} instance(s) ...", file=sys.stderr, flush=True)
        res = run_once(store="postgres", instances=k, **kw)
        got = res["polls_per_5min"]["sustained"] or 0
        if base is None:
            base = got
        res["scaling_vs_first"] = r(got / base, 2) if base else None
        out[str(k)] = res
    return out


def run() -> dict[str, Any]:
    """``make bench``: the small mode by default, ``MONITOR_CAPBENCH=full`` for the
    50,000-feed run (see the module's docstring)."""
    _exit_on_sigterm()
    full = os.environ.get("MONITOR_CAPBENCH", "small") == "full"
    mode = FULL if full else SMALL
    out: dict[str, Any] = {
        "scale": ("full: 50,000 feeds / 300 s" if full else
                  "small (the default; MONITOR_CAPBENCH=full runs 50,000 feeds / 300 s for "
                  "1,500 s: the first pass and three cycles after it)"),
    }
    print(f"# capacity: sqlite, {mode['feeds']} feeds ...", file=sys.stderr, flush=True)
    out["sqlite"] = run_once(feeds=int(mode["feeds"]), interval=float(mode["interval"]),
                             duration=float(mode["duration"]))
    pg_counts = os.environ.get("MONITOR_CAPBENCH_PG", "0" if full else "1,2,3")
    if pg_counts in ("", "0"):
        out["postgres"] = {"skipped": "MONITOR_CAPBENCH_PG=0 (the default in full mode: "
                                      "set it to 1,2,3 for 50,000 feeds on K instances)"}
    elif (why := pg_unavailable()) is not None:
        out["postgres"] = {"skipped": why}
    else:
        pg_mode = mode if full else SMALL_PG
        out["postgres"] = run_pg_series(
            [int(x) for x in pg_counts.split(",")], feeds=int(pg_mode["feeds"]),
            interval=float(pg_mode["interval"]), duration=float(pg_mode["duration"]),
            concurrency=pg_mode.get("concurrency"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_capacity",
                                 description="one capacity run of monitor run (issue #14)")
    ap.add_argument("--feeds", type=int, default=SMALL["feeds"])
    ap.add_argument("--interval", type=float, default=SMALL["interval"])
    ap.add_argument("--duration", type=float, default=SMALL["duration"])
    ap.add_argument("--instances", default="1", help="K, or K1,K2,... (PostgreSQL)")
    ap.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--concurrency", default=None,
                    help="fetch.concurrency: unset (the default: the config's own, auto), "
                         "'rule' (16/2 × k), 'default' (16/2 written out), or a literal "
                         "value such as 256")
    ap.add_argument("--farm-procs", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--code", default=None,
                    help="a directory holding another version's monitor package (e.g. from "
                         "git archive BRANCH), run instead of the installed one")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.instances.split(",")]

    _exit_on_sigterm()
    kw = {"feeds": args.feeds, "interval": args.interval, "duration": args.duration,
          "concurrency": args.concurrency, "farm_procs": args.farm_procs, "keep": args.keep,
          "code": args.code}
    if args.store == "postgres":
        if (why := pg_unavailable()) is not None:
            print(json.dumps({"skipped": why}))
            return 1
        out: dict[str, Any] = run_pg_series(counts, **kw)
    elif counts != [1]:
        ap.error("several instances need --store postgres")
    else:
        out = run_once(**kw)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
