"""Delivery: alerts per second from the outbox to a Slack-compatible peer, and the latency
from a story's save to the peer accepting its alert.

Everything is real except Slack: a SQLite outbox (the default store), the ``Dispatcher``
with its per-channel loop, ``SlackNotifier`` (slack-sdk's ``AsyncWebClient`` in bot mode,
its ``AsyncWebhookClient`` in webhook mode) pointed at a small local aiohttp server that
answers like Slack (``chat.postMessage`` → ``{"ok": true, "ts": …}``, webhook → ``ok``).
The channel's rate is unlimited and roll-ups are off, so every alert is one request.

* ``throughput``: ``n`` first alerts queued at once (one poll's burst), then one
  ``run_once``; alerts/s = n / wall time. Target: at least 500/s in one process.
* ``overhead``: the dispatcher's and the store's own cost, with a peer that accepts at
  once (no network, one turn of the event loop per send): ``n`` alerts queued, one
  ``run_once``; alerts/s, CPU ms per alert, and store write transactions per 1,000
  alerts (the marks are stored several per transaction: ``dispatch.MARKS_AHEAD``).
* ``claim``: ms per claim of 50 from a backlog of 20,000 due deliveries of one channel
  (the claim reads the index ``deliveries_claim`` in order: its cost follows the limit,
  not the backlog).
* ``latency``: ``serve`` running as in ``monitor run``; polls save 1–5 alerts at a time
  (fixed pseudo-random sizes and gaps, 2–20 ms), each save wakes the dispatcher as the
  pipeline does; latency = the moment the peer received the request minus the moment the
  save committed. Target: p99 under 1 s.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from monitor.config import DeliveryConfig, SlackChannel
from monitor.core.model import Alert, Delivery, FeedState, Match, Sent, Story
from monitor.metrics import Metrics
from monitor.notify.slack import SlackNotifier
from monitor.shell.dispatch import Dispatcher
from monitor.store.sqlite import SQLiteStore

TOKEN = "xoxb-bench"


class Peer:
    """Answers like Slack, and notes when each story's message arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/chat.postMessage", self._post)
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _note(self, body: dict[str, Any]) -> None:
        text = str(body.get("text", ""))
        self.arrived[text.split("#", 1)[-1].split(" ", 1)[0]] = time.perf_counter()

    async def _post(self, request: web.Request) -> web.Response:
        if request.content_type == "application/json":
            body = await request.json()
        else:
            body = dict(await request.post())
        self._note(body)
        ts = f"{time.time():.6f}"
        return web.json_response({"ok": True, "channel": "C0BENCH", "ts": ts})

    async def _hook(self, request: web.Request) -> web.Response:
        self._note(json.loads(await request.read()))
        return web.Response(text="ok")


def _delivery(i: int, now: datetime) -> Delivery:
    story = Story(id=f"s{i}", feed="wire", title=f"Story #{i} sanctions deadline",
                  link=f"https://news.example.org/{i}", published=now, first_seen=now)
    match = Match(rule="sanctions", severity="high", channels=("slack",), terms=("sanctions",))
    return Delivery(key=f"a:c{i}:sanctions:slack", channel="slack", created=now,
                    alert=Alert(story=story, match=match, cluster=f"c{i}", sources=1,
                                source_names=("wire",)))


def _notifier(peer: Peer, mode: str) -> SlackNotifier:
    base = f"http://127.0.0.1:{peer.port}"
    if mode == "webhook":
        cfg = SlackChannel(type="slack", webhook_url=f"{base}/hook", rate=1e6)
    else:
        cfg = SlackChannel(type="slack", token=TOKEN, channel="C0BENCH",
                           base_url=f"{base}/api/", rate=1e6)
    return SlackNotifier("slack", cfg)


FEED = FeedState(name="wire", url="http://wire", configured_url="http://wire")


async def _throughput(mode: str, n: int) -> dict[str, Any]:
    peer = Peer()
    await peer.start()
    with tempfile.TemporaryDirectory() as tmp:
        async with SQLiteStore(Path(tmp) / "s.db") as store:
            now = datetime.now(UTC)
            await store.save_poll(FEED, [], [_delivery(i, now) for i in range(n)])
            dsp = Dispatcher(store, {"slack": _notifier(peer, mode)},
                             DeliveryConfig(rollup_after=0), Metrics(),
                             lambda: datetime.now(UTC))
            t0 = time.perf_counter()
            r = await dsp.run_once()
            wall = time.perf_counter() - t0
            await dsp.close()
    await peer.stop()
    assert r.sent == n and len(peer.arrived) == n, (r, len(peer.arrived))
    return {"alerts": n, "seconds": round(wall, 3), "alerts_per_s": round(n / wall)}


class _Instant:
    """A peer that accepts every alert at once."""

    name = "slack"

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, alert: Alert, **_: Any) -> Sent:
        self.sent += 1
        await asyncio.sleep(0)  # one turn of the loop, as a request takes at least
        return Sent(ref=f"{self.sent}.000100")

    async def send_digest(self, alerts: Any, **_: Any) -> Sent:
        return Sent(ref="digest")

    async def close(self) -> None:
        pass


async def _overhead(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with SQLiteStore(Path(tmp) / "s.db") as store:
            now = datetime.now(UTC)
            await store.save_poll(FEED, [], [_delivery(i, now) for i in range(n)])
            commits = 0

            def trace(sql: str) -> None:
                nonlocal commits
                commits += sql == "COMMIT"

            await store._run("trace", lambda con: con.set_trace_callback(trace))
            peer = _Instant()
            dsp = Dispatcher(store, {"slack": peer}, DeliveryConfig(rollup_after=0),  # type: ignore[dict-item]
                             Metrics(), lambda: datetime.now(UTC), rates={"slack": 1e6})
            t0, c0 = time.perf_counter(), time.process_time()
            r = await dsp.run_once()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            await dsp.close()
            await store._run("trace", lambda con: con.set_trace_callback(None))
    assert r.sent == n == peer.sent, r
    return {"alerts": n, "alerts_per_s": round(n / wall),
            "cpu_ms_per_alert": round(1000 * cpu / n, 3),
            "write_transactions_per_1000": round(1000 * commits / n)}


async def _claim(backlog: int, claims: int = 40) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with SQLiteStore(Path(tmp) / "s.db") as store:
            now = datetime.now(UTC)
            await store.save_poll(FEED, [], [_delivery(i, now) for i in range(backlog)])
            later = now + timedelta(hours=1)
            t0 = time.perf_counter()
            for _ in range(claims):
                got = await store.claim_deliveries(later, limit=50, channel="slack",
                                                   lease_until=later + timedelta(hours=1))
                assert len(got) == 50
            wall = time.perf_counter() - t0
    return {"backlog": backlog, "ms_per_claim_of_50": round(1000 * wall / claims, 2)}


async def _latency(mode: str, n: int) -> dict[str, Any]:
    peer = Peer()
    await peer.start()
    rnd = random.Random(12)
    saved: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        async with SQLiteStore(Path(tmp) / "s.db") as store:
            dsp = Dispatcher(store, {"slack": _notifier(peer, mode)},
                             DeliveryConfig(rollup_after=0), Metrics(),
                             lambda: datetime.now(UTC))
            wake = asyncio.Event()
            serving = asyncio.create_task(dsp.serve(wake, tick=1.0))
            i = 0
            while i < n:
                k = min(rnd.randint(1, 5), n - i)
                now = datetime.now(UTC)
                await store.save_poll(FEED, [], [_delivery(j, now) for j in range(i, i + k)])
                t = time.perf_counter()
                for j in range(i, i + k):
                    saved[f"{j}"] = t
                wake.set()
                i += k
                await asyncio.sleep(rnd.uniform(0.002, 0.02))
            end = time.perf_counter() + 60
            while len(peer.arrived) < n and time.perf_counter() < end:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # (the peer's count, polled: no event to wait on)
            dsp.stopping = True
            wake.set()
            await asyncio.wait_for(serving, 10)
            await dsp.close()
    await peer.stop()
    lat = sorted(peer.arrived[k] - saved[k] for k in saved if k in peer.arrived)
    assert len(lat) == n, f"{len(lat)} of {n} delivered"

    def pct(p: float) -> float:
        return round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 1)

    return {"alerts": n, "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0),
            "mean_ms": round(1000 * statistics.fmean(lat), 1)}


def run() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("bot", "webhook"):
        out[mode] = {
            "throughput": asyncio.run(_throughput(mode, 2000)),
            "latency": asyncio.run(_latency(mode, 1000)),
        }
    out["overhead"] = asyncio.run(_overhead(5000))
    out["claim"] = asyncio.run(_claim(20000))
    out["target_500_per_s"] = all(out[m]["throughput"]["alerts_per_s"] >= 500
                                  for m in ("bot", "webhook"))
    out["target_p99_under_1s"] = all(out[m]["latency"]["p99_ms"] < 1000
                                     for m in ("bot", "webhook"))
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
