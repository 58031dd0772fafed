"""The proof of issue #14: three ``monitor run`` processes share one PostgreSQL database
(through a TCP proxy) and 300 local feeds that keep publishing; one instance is killed
with SIGKILL midway (and a fresh one started later), and every database connection is
cut once, with new ones refused for a while (a database restart, as the daemons see it).

Then:
- every story that matches the rule is alerted exactly once, in the one file channel the
  instances share (a line is one ``O_APPEND`` write: safe between processes);
- no feed is ever polled by two instances at once (the feed server records the
  requests in flight per path);
- every feed is polled within its interval plus the grace period (``dead_after`` +
  a heartbeat + a tick) throughout, the database outage apart;
- /readyz says not ready while the store is unreachable, and ready again after.

Scale: ``MONITOR_PROOF_FEEDS`` (300) feeds, publishing for ``MONITOR_PROOF_SECONDS`` (60)
seconds; about 2 minutes in all on 2 cores. The figures (retake time after the kill,
recovery after the cut) are printed (``pytest -s``) and written to ``proof.json`` in the
test's directory. Skips when no PostgreSQL server answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from tests.peers.tcpproxy import TCPProxy
from tests.test_store import PG_URL, _pg_unavailable

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.postgres, pytest.mark.timeout(420)]

FEEDS = int(os.environ.get("MONITOR_PROOF_FEEDS", "300"))
PUBLISH = float(os.environ.get("MONITOR_PROOF_SECONDS", "60"))
INTERVAL = 10.0  # each feed's poll interval
JITTER = 0.1
HEARTBEAT = 2.0
DEAD_AFTER = 6.0
TICK = 1.0
#: how late a poll may be: the interval (with its jitter), then the grace period of a
#: dead instance (``dead_after``, the heartbeat that notices, the tick that claims), and
#: a few seconds for a loaded 2-core machine
SLACK = 4.0
BOUND = INTERVAL * (1 + JITTER) + DEAD_AFTER + HEARTBEAT + TICK + SLACK
CUT_FOR = 6.0  # seconds the proxy refuses connections after cutting them all
MATCH = "earthquake"
SLOW = 2.5  # seconds one feed in ten takes to answer

def title(feed: int, k: int) -> str:
    """A headline no other feed's resembles (words of random letters: dedup keeps them
    apart); a quarter of them carry the matching word."""
    h = hashlib.sha256(f"{feed}/{k}".encode()).digest()
    words = ["".join(chr(97 + b % 26) for b in h[i:i + 6]) for i in range(0, 30, 6)]
    if matches(feed, k):
        words.insert(2, MATCH)
    return " ".join(words).capitalize()


def matches(feed: int, k: int) -> bool:
    return (feed * 7 + k) % 4 == 0


def story_id(feed: int, k: int) -> str:
    return f"urn:proof:{feed}:{k}"


@dataclass
class Publisher:
    """Feed ``i`` publishes item ``k`` at ``start + offset(i) + k * period(i)`` until
    ``stop``; each response lists the newest 40 items; the ETag follows the newest."""

    feeds: int
    start: float | None = None  # monotonic
    stop: float | None = None
    wall: datetime = field(default_factory=lambda: datetime.now(UTC))
    mono: float = field(default_factory=time.monotonic)
    # per path: (start, end, status) of every request
    log: dict[int, list[tuple[float, float, int]]] = field(default_factory=lambda: defaultdict(list))
    active: Counter[int] = field(default_factory=Counter)
    overlaps: list[tuple[int, float]] = field(default_factory=list)

    @staticmethod
    def period(i: int) -> float:
        return 12.0 + (i % 7)

    def offset(self, i: int) -> float:
        return (i * 0.37) % self.period(i)

    def count(self, i: int, now: float) -> int:
        if self.start is None:
            return 0
        t = (now if self.stop is None else min(now, self.stop)) - self.start - self.offset(i)
        return 0 if t < 0 else int(t // self.period(i)) + 1

    def published(self) -> list[tuple[int, int]]:
        end = self.stop if self.stop is not None else time.monotonic()
        return [(i, k) for i in range(self.feeds) for k in range(self.count(i, end))]

    def body(self, i: int, n: int) -> bytes:
        items = []
        for k in range(max(0, n - 40), n):
            assert self.start is not None
            at = self.wall + timedelta(
                seconds=self.start - self.mono + self.offset(i) + k * self.period(i))
            items.append(
                f"<item><title>{escape(title(i, k))}</title>"
                f"<link>http://news.example/{i}/{k}</link>"
                f"<guid isPermaLink='false'>{story_id(i, k)}</guid>"
                f"<pubDate>{format_datetime(at, usegmt=True)}</pubDate>"
                f"<description>Item {k} of feed {i}.</description></item>")
        return (f"<?xml version='1.0'?><rss version='2.0'><channel><title>Feed {i}</title>"
                f"<link>http://news.example/{i}</link><description>proof</description>"
                + "".join(reversed(items)) + "</channel></rss>").encode()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        i = int(request.match_info["n"])
        begin = time.monotonic()
        self.active[i] += 1
        if self.active[i] > 1:
            self.overlaps.append((i, begin))
        try:
            # some service time: a poll is in flight long enough for overlaps to show;
            # one feed in ten is slow, so a killed instance leaves claims behind
            await asyncio.sleep(SLOW if i % 10 == 0 else 0.3)
            n = self.count(i, time.monotonic())
            etag = f'"{i}-{n}"'
            if request.headers.get("If-None-Match") == etag:
                resp = web.Response(status=304, headers={"ETag": etag})
            else:
                resp = web.Response(body=self.body(i, n), headers={"ETag": etag},
                                    content_type="application/rss+xml")
            return resp
        finally:
            self.active[i] -= 1
            self.log[i].append((begin, time.monotonic(), 0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Instance:
    def __init__(self, name: str, config: Path, port: int, tmp: Path) -> None:
        self.name, self.config, self.port = name, config, port
        self.log = tmp / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MONITOR_PORT": str(self.port)}
        self._fh = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "monitor", "--log-format", "json", "run",
            "--config", str(self.config), stdout=self._fh, stderr=self._fh, env=env,
            cwd=str(self.config.parent))

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        rc = await asyncio.wait_for(self.proc.wait(), 60)
        self._fh.close()
        return rc

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def instance_id(self) -> str | None:
        for rec in self.lines():
            if rec.get("event") == "instance.started":
                return str(rec["instance"])
        return None


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    reason = await _pg_unavailable()
    if reason:
        pytest.skip(reason)
    name = f"proof_{uuid.uuid4().hex[:10]}"
    yield name
    con = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await con.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await con.close()


async def until(cond: Any, what: str, limit: float) -> None:
    end = time.monotonic() + limit
    while not await cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.5)


async def test_killed_instance_and_cut_database_lose_nothing_and_repeat_nothing(
        tmp_path: Path, schema: str) -> None:
    pub = Publisher(FEEDS)
    app = web.Application()
    app.router.add_get("/f{n}.rss", pub.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    feed_port = runner.addresses[0][1]
    pg_port = urlsplit(PG_URL).port or 5432
    proxy = TCPProxy("127.0.0.1", pg_port)
    through = PG_URL.replace(f":{pg_port}/", f":{await proxy.start()}/")

    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "proof.yaml").write_text(f"""
rules:
  - name: quake
    any: [{MATCH}]
    severity: high
    channels: [alerts]
""", encoding="utf-8")
    feeds = "\n".join(f"  - {{name: f{i}, url: 'http://127.0.0.1:{feed_port}/f{i}.rss'}}"
                      for i in range(FEEDS))
    config = tmp_path / "config.yaml"
    config.write_text(f"""
defaults: {{interval: {INTERVAL}s, min_interval: {INTERVAL}s, adaptive: false, jitter: {JITTER}}}
feeds:
{feeds}
rules: rules
store:
  url: {through}?schema={schema}
  pool: {{min: 1, max: 4}}
  timeout: 10s
  heartbeat: {HEARTBEAT}s
  dead_after: {DEAD_AFTER}s
channels:
  alerts: {{type: file, path: alerts.jsonl}}
fetch: {{parse_in: thread, parse_workers: 2, concurrency: 32, per_host: 32, timeout: 5s,
         parse_timeout: 5s}}
delivery: {{retry_min: 1s, rollup_after: 0}}
server: {{listen: '127.0.0.1:${{MONITOR_PORT}}'}}
shutdown_timeout: 5s
""", encoding="utf-8")

    instances = [Instance(f"i{n}", config, free_port(), tmp_path) for n in range(3)]
    direct = await asyncpg.connect(PG_URL, timeout=5, server_settings={"search_path": schema})
    readiness: list[tuple[float, str, bool]] = []
    stop_probing = asyncio.Event()
    figures: dict[str, Any] = {"feeds": FEEDS, "publish_s": PUBLISH, "interval_s": INTERVAL,
                               "dead_after_s": DEAD_AFTER, "heartbeat_s": HEARTBEAT}

    async def probe(session: aiohttp.ClientSession) -> None:
        while not stop_probing.is_set():
            for inst in instances:
                if inst.proc is None or inst.proc.returncode is not None:
                    continue
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"http://127.0.0.1:{inst.port}/readyz",
                                           timeout=aiohttp.ClientTimeout(total=3)) as r:
                        readiness.append((time.monotonic(), inst.name, r.status == 200))
            await asyncio.sleep(0.5)

    async def scalar(sql: str) -> Any:
        return await direct.fetchval(sql)

    session = aiohttp.ClientSession()
    prober = asyncio.ensure_future(probe(session))
    try:
        for inst in instances:
            await inst.start()

        async def all_baselined() -> bool:
            with contextlib.suppress(asyncpg.UndefinedTableError):
                return bool(await scalar("SELECT count(*) FROM feeds WHERE baselined")
                            == FEEDS)
            return False

        await until(all_baselined, "every feed polled once (baseline)", 120)
        t0 = pub.start = time.monotonic()

        # -- kill -9 one instance midway, start a fresh one once it was declared dead
        await asyncio.sleep(PUBLISH * 0.25)
        # the victim: the instance holding the most claims right now (polls in flight)
        ids = {inst.instance_id(): inst for inst in instances}
        assert None not in ids
        held = Counter({r[0]: r[1] for r in await direct.fetch(
            "SELECT claimed_by, count(*) FROM feeds WHERE claimed_by IS NOT NULL GROUP BY 1")})
        victim_id = max(ids, key=lambda i: (held[i], str(i)))
        victim = ids[victim_id]
        killed_at, killed_wall = time.monotonic(), datetime.now(UTC)
        assert await victim.stop(signal.SIGKILL) == -signal.SIGKILL

        async def declared_dead() -> bool:
            return await direct.fetchval(
                "SELECT dead_since IS NOT NULL FROM instances WHERE id = $1", victim_id) is True

        await until(declared_dead, "the killed instance declared dead", 60)
        row = await direct.fetchrow("SELECT * FROM instances WHERE id = $1", victim_id)
        figures["retake_after_kill_s"] = round((row["dead_since"] - killed_wall).total_seconds(), 1)
        figures["feeds_retaken"] = row["feeds_retaken"]
        figures["deliveries_retaken"] = row["deliveries_retaken"]
        assert row["feeds_retaken"] >= 1, "the killed instance held no claim: nothing shown"
        fresh = Instance("i3", config, free_port(), tmp_path)
        instances.append(fresh)
        await fresh.start()

        # -- every database connection cut, new ones refused for a while
        await asyncio.sleep(max(0.0, t0 + PUBLISH * 0.55 - time.monotonic()))
        cut_at = time.monotonic()
        figures["connections_cut"] = proxy.cut(refuse=True)
        await asyncio.sleep(CUT_FOR)
        allowed_at = time.monotonic()
        proxy.allow()

        await asyncio.sleep(max(0.0, t0 + PUBLISH - time.monotonic()))
        pub.stop = time.monotonic()
        published = pub.published()
        expected = {story_id(i, k) for i, k in published if matches(i, k)}

        # -- let them catch up: every story stored, the outbox empty
        async def caught_up() -> bool:
            try:
                stories = await scalar("SELECT count(*) FROM stories")
                pending = await scalar("SELECT count(*) FROM deliveries WHERE state = 'pending'")
            except asyncpg.PostgresError:
                return False
            return bool(stories == len(published) and pending == 0)

        await until(caught_up, "every published story stored and the outbox empty", 90)
        await asyncio.sleep(2 * INTERVAL)  # polls after the end: still one at a time
        observed_until = time.monotonic()
        # /healthz of a survivor: the instances alive, and the victim dead with its retake
        survivor = next(inst for inst in instances[:3] if inst is not victim)
        async with session.get(f"http://127.0.0.1:{survivor.port}/healthz") as r:
            health = await r.json()
        alive = {i["id"] for i in health["instances"]["alive"]}
        assert len(alive) == 3 and victim_id not in alive, health["instances"]
        assert [(i["id"], i["feeds_retaken"]) for i in health["instances"]["dead"]] == [
            (victim_id, row["feeds_retaken"])], health["instances"]
        stop_probing.set()
        await prober
        rcs = [await inst.stop() for inst in instances if inst is not victim]
        assert rcs == [0] * len(rcs), [inst.log.read_text()[-3000:] for inst in instances]

        # -- every matching story alerted exactly once
        lines = [json.loads(x) for x in
                 (tmp_path / "alerts.jsonl").read_text(encoding="utf-8").splitlines()]
        counts = Counter(rec["story"] for rec in lines)
        repeated = {s: n for s, n in counts.items() if n > 1}
        assert not repeated, f"alerted more than once: {sorted(repeated.items())[:10]}"
        assert set(counts) == expected, (
            f"missing {sorted(expected - set(counts))[:10]}, "
            f"unexpected {sorted(set(counts) - expected)[:10]}")
        assert all(rec["rule"] == "quake" and not rec["update"] for rec in lines)
        figures["stories"] = len(published)
        figures["alerts"] = len(lines)

        # -- no feed polled by two instances at once
        assert not pub.overlaps, f"polled twice at once: {pub.overlaps[:10]}"

        # -- every feed polled within interval + grace, the database outage apart
        late: list[tuple[int, float, float]] = []
        worst = 0.0
        worst_outage = 0.0
        outage = (cut_at, allowed_at)
        for i in range(FEEDS):
            starts = sorted(b for b, _, _ in pub.log[i] if b >= t0)
            edges = [t0, *starts, observed_until]  # (a feed that stopped being polled: late)
            for a, b in itertools.pairwise(edges):
                gap = b - a
                if a < outage[1] and b > outage[0]:  # spans the outage
                    worst_outage = max(worst_outage, gap)
                    allowed = BOUND + (outage[1] - outage[0]) + 10.0  # + the reconnect backoff
                else:
                    worst = max(worst, gap)
                    allowed = BOUND
                if gap > allowed:
                    late.append((i, round(a - t0, 1), round(gap, 1)))
        figures["max_gap_s"] = round(worst, 1)
        figures["max_gap_across_outage_s"] = round(worst_outage, 1)
        figures["gap_bound_s"] = BOUND
        assert not late, f"{len(late)} polls later than allowed (feed, at, gap): {late[:10]}"

        # -- /readyz: not ready while the store was unreachable, ready again after
        during = {n for t, n, ok in readiness if outage[0] + 1 < t < outage[1] and not ok}
        survivors = {inst.name for inst in instances[:3] if inst is not victim}
        assert during >= survivors, (during, readiness[-20:])
        back = {}
        for t, n, ok in readiness:
            if t > outage[1] and ok and n not in back:
                back[n] = t - outage[1]
        assert set(back) >= survivors, back
        figures["ready_again_after_allow_s"] = round(max(back.values()), 1)
        first_poll = min((b for i in range(FEEDS) for b, _, _ in pub.log[i] if b > outage[1]),
                         default=None)
        assert first_poll is not None
        figures["first_poll_after_allow_s"] = round(first_poll - outage[1], 1)
        reconnected = [rec for inst in instances for rec in inst.lines()
                       if rec.get("event") == "store.reconnected"]
        assert reconnected, "no store.reconnected line"
        figures["killed_at_s"] = round(killed_at - t0, 1)
        figures["cut_at_s"] = round(cut_at - t0, 1)
    finally:
        stop_probing.set()
        prober.cancel()
        await asyncio.gather(prober, return_exceptions=True)
        for inst in instances:
            if inst.proc is not None and inst.proc.returncode is None:
                inst.proc.kill()
                await inst.proc.wait()
            if inst.proc is not None:
                inst._fh.close()  # (idempotent)
        await session.close()
        await direct.close()
        await proxy.stop()
        await runner.cleanup()
        (tmp_path / "proof.json").write_text(json.dumps(figures, indent=2), encoding="utf-8")
        print("\nproof figures:", json.dumps(figures))
