"""A quick scheduler load: ``monitor run`` against N local feeds, polls/s, polls in
flight, lag and main-process CPU: polls counted by the feed server and CPU read from
/proc every 10 s, /metrics read at the start and the end only (with per-feed series,
rendering it at 20,000 feeds takes seconds of the daemon's CPU).

    python -m bench.load_sched --feeds 6000 --interval 60s --seconds 150 [--root /work/main]
        [--concurrency 64]

The feeds are served by this process on 16 loopback addresses (127.0.0.1–16, one
port), so the fetcher's per-host limit applies as it would to 16 servers. Each feed
answers 304 to a conditional GET, except that in each interval about one feed in five
has 1–5 new items. ``--root`` runs another checkout's code (``main`` for a before/after)
with this interpreter. Prints one JSON document. Not part of ``make bench`` (the
capacity benchmark is ``bench_capacity``); this is the scheduler's before/after probe.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

HOSTS = [f"127.0.0.{i}" for i in range(1, 17)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _frac(*parts: object) -> float:
    h = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def _title(i: int, n: int) -> str:
    """Six made-up words, different for every story: no two stories are near-duplicates
    (titles like "feed 1 story 2" would all join one cluster)."""
    h = hashlib.blake2b(f"{i}/{n}".encode(), digest_size=18).hexdigest()
    return " ".join(h[k:k + 6] for k in range(0, 36, 6))


class Feeds:
    """Feed i's version moves on at most once per interval (about one feed in five each
    interval, by 1–5 items); its ETag is its version."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.version: dict[int, int] = {}
        self.cycle: dict[int, int] = {}
        self.requests = 0
        self.not_modified = 0

    def body(self, i: int, v: int) -> bytes:
        items = "".join(
            f"<item><title>{_title(i, n)}</title>"
            f"<link>http://bench.example/{i}/{n}</link><guid>b{i}-{n}</guid>"
            f"<description>{_title(n, i)} {_title(i, -n)}.</description></item>"
            for n in range(max(0, v - 5), v))
        return (f'<?xml version="1.0"?><rss version="2.0"><channel><title>f{i}</title>'
                f"<link>http://bench.example/{i}</link><description>d</description>"
                f"{items}</channel></rss>").encode()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        i = int(request.match_info["i"])
        self.requests += 1
        cycle = int(time.time() // self.interval)
        v = self.version.setdefault(i, 3)
        if self.cycle.get(i) != cycle:
            self.cycle[i] = cycle
            if _frac(i, cycle) < 0.2:
                v = self.version[i] = v + 1 + int(_frac("n", i, cycle) * 5)
        etag = f'"v{v}"'
        if request.headers.get("If-None-Match") == etag:
            self.not_modified += 1
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=self.body(i, v), headers={"ETag": etag},
                            content_type="application/rss+xml")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def scrape(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    out: dict[str, float] = {"polls": 0.0}
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "monitor_polls_total":
                out["polls"] += s.value
            elif s.name == "monitor_polls_in_flight":
                out["in_flight"] = s.value
            elif s.name in ("monitor_fetch_seconds_sum", "monitor_fetch_seconds_count"):
                out[s.name] = s.value
            elif s.name == "monitor_poll_lag_seconds_bucket":
                out[f"lag_le_{s.labels['le']}"] = s.value
            elif s.name == "monitor_poll_lag_seconds_count":
                out["lag_count"] = s.value
            elif s.name == "monitor_scheduler_ticks_total":
                key = f"ticks_{s.labels['job']}_{s.labels['result']}"
                out[key] = s.value
    return out


def lag_quantile(m: dict[str, float], q: float) -> float | None:
    """The bucket bound under which a fraction ``q`` of the lags fall (Prometheus style)."""
    total = m.get("lag_count")
    if not total:
        return None
    bounds = sorted((float(k[7:]), v) for k, v in m.items() if k.startswith("lag_le_"))
    for bound, count in bounds:
        if count >= q * total:
            return bound
    return math.inf


def prepare(args: argparse.Namespace, root: Path, port: int, mport: int) -> Path:
    """The daemon's directory: its config (the feeds on the 16 hosts) and rules."""
    tmp = Path(tempfile.mkdtemp(prefix="load-sched-"))
    shutil.copytree(root / "rules", tmp / "rules")
    lines = "\n".join(f"  - {{name: f{i}, url: 'http://{HOSTS[i % 16]}:{port}/f/{i}'}}"
                      for i in range(args.feeds))
    fetch = "parse_in: process"
    if args.concurrency:
        fetch += f", concurrency: {args.concurrency}"
    (tmp / "config.yaml").write_text(f"""
feeds:
{lines}
defaults: {{interval: {args.interval}, adaptive: false}}
rules: rules
store: sqlite:///state.db
channels:
  slack-news: {{type: file, path: alerts.jsonl}}
  email-oncall: {{type: file, path: email.jsonl}}
  audit-file: {{type: file, path: audit.jsonl}}
fetch: {{{fetch}}}
server: {{listen: '127.0.0.1:{mport}'}}
""", encoding="utf-8")
    return tmp


async def main(args: argparse.Namespace, root: Path, tmp: Path, port: int,
               mport: int) -> dict[str, object]:
    feeds = Feeds(args.interval_s)
    app = web.Application()
    app.router.add_get("/f/{i}", feeds.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for h in HOSTS:
        await web.TCPSite(runner, h, port).start()
    env = {**os.environ, "PYTHONPATH": str(root)}
    log = (tmp / "daemon.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor", "run", "--config", str(tmp / "config.yaml"),
        stdout=log, stderr=log, env=env, cwd=str(root))
    windows: list[dict[str, float]] = []
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    await scrape(session, mport)
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)
            t0, c0 = time.monotonic(), cpu_seconds(proc.pid)
            prev, prev_t, prev_c = feeds.requests, t0, c0
            peak_rss = 0.0
            while time.monotonic() - t0 < args.seconds:
                await asyncio.sleep(10)
                n, t, c = feeds.requests, time.monotonic(), cpu_seconds(proc.pid)
                peak_rss = max(peak_rss, rss_mb(proc.pid))
                windows.append({"t": round(t - t0),
                                "polls_per_s": round((n - prev) / (t - prev_t), 1),
                                "cpu": round((c - prev_c) / (t - prev_t), 2)})
                prev, prev_t, prev_c = n, t, c
            total = time.monotonic() - t0
            last = await scrape(session, mport)
    finally:
        proc.terminate()
        await proc.wait()
        log.close()
        await runner.cleanup()
    need = args.feeds / args.interval_s
    steady = windows[len(windows) // 2:] or windows
    rates = [w["polls_per_s"] for w in steady]
    rates_all = sum(w["polls_per_s"] for w in windows) / len(windows)
    return {
        "root": str(root), "feeds": args.feeds, "interval_s": args.interval_s,
        "concurrency": args.concurrency or "default", "needed_polls_per_s": round(need, 1),
        "seconds": round(total),
        "polls_per_s_second_half": round(sum(rates) / len(rates), 1),
        "min_10s_window_second_half": min(rates),
        "main_cpu_cores": round(sum(w["cpu"] for w in windows) / len(windows), 2),
        "cpu_ms_per_poll": round(1000 * sum(w["cpu"] for w in windows)
                                 / max(1.0, sum(w["polls_per_s"] for w in windows)), 2),
        # Little's law: polls/s × mean poll time (monitor_fetch_seconds)
        "in_flight_mean": round(rates_all * last.get("monitor_fetch_seconds_sum", 0.0)
                                / max(1.0, last.get("monitor_fetch_seconds_count", 0.0)), 1),
        "lag_p50_s": lag_quantile(last, 0.5), "lag_p99_s": lag_quantile(last, 0.99),
        "ticks_skipped": last.get("ticks_poll_skipped", 0.0),
        "peak_rss_mb": round(peak_rss),
        "server_304_share": round(feeds.not_modified / max(1, feeds.requests), 2),
        "windows": windows,
    }


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--feeds", type=int, default=6000)
    p.add_argument("--interval", default="60s")
    p.add_argument("--seconds", type=float, default=150)
    p.add_argument("--concurrency", type=int, default=0)
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    a = p.parse_args()
    a.interval_s = parse_duration(a.interval)
    root_dir, feed_port, metrics_port = Path(a.root).resolve(), free_port(), free_port()
    run_dir = prepare(a, root_dir, feed_port, metrics_port)
    print(json.dumps(asyncio.run(main(a, root_dir, run_dir, feed_port, metrics_port)),
                     indent=1))
