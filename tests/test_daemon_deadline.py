"""End to end: `monitor run` as a real process with parse jobs that never end.

Two feeds whose parse jobs hang (the test failpoint ``MONITOR_FAILPOINTS=prepare-hang:…``:
each job stops at its first entry, deaf to SIGTERM, as a catastrophic regex or a stuck C
extension would) pin both parse workers. The daemon abandons them at their deadline,
kills and replaces the workers, and so the normal feed still alerts; /healthz turns
degraded and names them; a restart does not block again (the feeds are backed off); and
SIGTERM with a job stuck in a worker ends the process within its documented deadline.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from monitor.shell.parsepool import FAILPOINTS
from tests.feeds import BACKLOG, Item, rss, seed_item
from tests.peers.feedserver import FeedServer
from tests.test_daemon import (
    DaemonProc,
    _alive,
    _children,
    file_alerts,
    free_port,
    health,
    until,
    until_async,
    wait_polls,
)

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 2  # fetch.parse_timeout, seconds
SHUTDOWN = 3  # shutdown_timeout, seconds
pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc"),
]


def config_text(feed_server: FeedServer, port: int, *, parse_timeout: float,
                hang1: str = "/hang1.rss") -> str:
    return f"""
feeds:
  - {{name: world, url: '{feed_server.url("/world.rss")}', interval: 0.3s}}
  - {{name: hang1, url: '{feed_server.url(hang1)}', interval: 0.3s}}
  - {{name: hang2, url: '{feed_server.url("/hang2.rss")}', interval: 0.3s}}
defaults: {{jitter: 0}}
rules: rules
store: sqlite:///state.db
channels:
  slack-news: {{type: file, path: slack.jsonl}}
  email-oncall: {{type: file, path: email.jsonl}}
  audit-file: {{type: file, path: alerts.jsonl}}
fetch: {{parse_in: process, parse_workers: 2, parse_timeout: {parse_timeout}s}}
shutdown_timeout: {SHUTDOWN}s
server: {{listen: '127.0.0.1:{port}'}}
"""


@pytest.fixture
async def daemon(tmp_path: Path, feed_server: FeedServer, monkeypatch: pytest.MonkeyPatch
                 ) -> AsyncIterator[tuple[DaemonProc, int]]:
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    stuck = [Item(title=f"Stuck story {i}", link=f"https://stuck.example/{i}", guid=f"s-{i}")
             for i in range(3)]
    for path in ("/hang1.rss", "/hang1b.rss", "/hang2.rss"):
        feed_server.serve(path, rss(stuck))
    feed_server.serve("/world.rss", rss(BACKLOG))
    port = free_port()
    (tmp_path / "config.yaml").write_text(
        config_text(feed_server, port, parse_timeout=DEADLINE), encoding="utf-8")
    monkeypatch.setenv(FAILPOINTS, "prepare-hang:hang1,prepare-hang:hang2")
    d = DaemonProc(tmp_path / "config.yaml", tmp_path / "daemon.log")
    yield d, port
    if d.proc is not None and d.proc.returncode is None:
        d.proc.kill()
        await d.proc.wait()


async def metrics(port: int) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()


async def stop_within(d: DaemonProc, limit: float) -> int:
    """SIGTERM, and the exit code, within ``limit`` seconds (else the test fails)."""
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    rc = await asyncio.wait_for(d.proc.wait(), limit)
    d.close_log()
    return rc


async def test_stuck_parse_jobs_are_abandoned_and_the_daemon_carries_on(
    daemon: tuple[DaemonProc, int], feed_server: FeedServer, tmp_path: Path
) -> None:
    d, port = daemon
    await d.start()
    assert d.proc is not None
    # both hanging feeds are fetched and their jobs pin both workers; the normal feed's
    # baseline gets a worker once they are abandoned, and its new story alerts
    await until(lambda: feed_server.hits("/hang1.rss") >= 1 and
                feed_server.hits("/hang2.rss") >= 1, "the hanging feeds' first polls")
    await wait_polls(feed_server, "/world.rss", 2)
    feed_server.set("/world.rss", rss([seed_item(), *BACKLOG]))
    await until(lambda: any(a["rule"] == "sanctions-deadline" for a in file_alerts(tmp_path)),
                "the normal feed's alert", limit=60)

    # /healthz: degraded, naming the replaced workers' feeds; and counts
    def named(h: dict[str, Any] | None) -> dict[str, Any] | None:
        if h is None or not any("(feed hang1, hang2)" in r for r in h.get("reasons", [])):
            return None
        return h

    async def probe() -> dict[str, Any] | None:
        return named(await health(port))

    h = await until_async(probe, "health naming both stuck feeds", limit=60)
    assert h["status"] == "degraded"
    assert (f"2 parse workers replaced after jobs exceeded their {DEADLINE} s deadline in the "
            "last 15 min (feed hang1, hang2)") in h["reasons"]
    assert h["parse"]["timed_out"] == 2 and h["parse"]["workers_replaced"] == 2
    failing = {f["feed"]: f for f in h["feeds"]["failing"]}
    assert set(failing) == {"hang1", "hang2"}
    for f in failing.values():
        assert f"exceeded its {DEADLINE} s deadline at entry 1 of 3" in f["error"], f
        assert '"Stuck story' in f["error"]
        # backed off: not every 0.3 s, at least ten deadlines
        assert datetime.fromisoformat(f["next_poll"]) > datetime.now(UTC)
    text = await metrics(port)
    assert 'monitor_parse_timeouts_total{feed="hang1"} 1.0' in text
    assert 'monitor_parse_workers_replaced_total{reason="timeout"} 2.0' in text
    assert "parse.timeout" in d.logtext() and "feed=hang1" in d.logtext()

    assert await stop_within(d, SHUTDOWN + 20) == 0
    assert "daemon.stopped" in d.logtext()

    # restart: the hanging feeds are backed off (their schedule is stored), so the
    # workers are free and the normal feed flows at once
    hits = feed_server.hits("/hang1.rss"), feed_server.hits("/hang2.rss")
    n_alerts = len(file_alerts(tmp_path))
    await d.start()
    await wait_polls(feed_server, "/world.rss", 3)
    other = Item(title="Putin rejects Trump deadline as new sanctions loom",
                 link="https://news.example.org/putin-rejects", guid="p-2",
                 description="The Kremlin said the sanctions deadline set by Trump was "
                             "unacceptable.")
    feed_server.set("/world.rss", rss([other, seed_item(), *BACKLOG]))
    await until(lambda: len(file_alerts(tmp_path)) > n_alerts, "the alert after the restart")
    assert (feed_server.hits("/hang1.rss"), feed_server.hits("/hang2.rss")) == hits
    assert "parse.timeout" not in d.logtext().split("daemon.stopped")[-1]

    # SIGTERM while a job is stuck in a worker (a deadline far away, and hang1 at a new
    # URL: a new feed, due at once): the process still ends within shutdown_timeout
    cfg = tmp_path / "config.yaml"
    assert await stop_within(d, SHUTDOWN + 20) == 0
    cfg.write_text(config_text(feed_server, port, parse_timeout=600, hang1="/hang1b.rss"),
                   encoding="utf-8")
    await d.start()
    proc = d.proc
    assert proc is not None

    async def busy() -> dict[str, Any] | None:
        h = await health(port)
        return h if h is not None and h["parse"]["busy"] >= 1 else None

    await until_async(busy, "hang1's job stuck in a worker", limit=60)
    workers = _children(proc.pid)
    # (the bound: shutdown_timeout, then closing; a hang would fail here)
    assert await stop_within(d, SHUTDOWN + 20) == 0, d.logtext()[-2000:]
    log = d.logtext().split("daemon.started")[-1]
    assert "daemon.abandoned" in log and "daemon.stopped" in log
    assert "daemon.exit_forced" not in log  # the pool killed its workers itself
    await until(lambda: not any(_alive(w) for w in workers), "the workers to be gone", 20)
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert all(a["feed"] == "world" for a in lines)


def test_the_exit_watchdog_ends_a_process_that_a_stuck_thread_holds() -> None:
    # the last word of a SIGTERM: a non-daemon thread stuck for good (as one in a C call
    # would be) would hold the interpreter's exit for ever; the watchdog ends it
    import subprocess
    import sys

    code = ("import threading, time\n"
            "from monitor.log import setup_logging\n"
            "from monitor.shell.daemon import arm_exit_watchdog\n"
            "setup_logging()\n"
            "threading.Thread(target=time.sleep, args=(3600,), name='stuck').start()\n"
            "arm_exit_watchdog(0.5)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       timeout=60, check=False)
    assert r.returncode == 1
    assert b"daemon.exit_forced" in r.stderr and b"stuck" in r.stderr


def test_the_deadlines_are_validated_settings_with_defaults() -> None:
    from monitor.config import parse_config
    from monitor.errors import ConfigError

    c = parse_config("feeds: []\n", "c.yaml", {})
    assert c.fetch.parse_timeout == 30.0 and c.shutdown_timeout == 10.0
    c = parse_config("fetch: {parse_timeout: 90s}\nshutdown_timeout: 1m\n", "c.yaml", {})
    assert c.fetch.parse_timeout == 90.0 and c.shutdown_timeout == 60.0
    for bad in ("fetch: {parse_timeout: 0s}\n", "fetch: {parse_timeout: soon}\n",
                "shutdown_timeout: -1\n"):
        with pytest.raises(ConfigError) as e:
            parse_config(bad, "c.yaml", {})
        assert "c.yaml:" in str(e.value.problems[0]), e.value.problems


async def test_a_catastrophic_regex_rule_cannot_stall_the_daemon(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """The attack of issue #11: a rule `/(a+)+$/` and, in each of two feeds, a title of
    a's ending in '!' (backtracking engines take seconds at 26 a's, for ever at 5,000).
    With the linear-time engine every feed is processed at once: the normal feed alerts,
    no parse job comes near its deadline, the evil stories are matched (or not) and
    stored, and SIGTERM ends the process."""
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    (tmp_path / "rules" / "redos.yaml").write_text(
        "rules:\n  - name: redos\n    any: ['/(a+)+$/', '/^(a|aa)+$/', '/(x+x+)+y/']\n"
        "    channels: [audit-file]\n", encoding="utf-8")
    evil = "a" * 5000 + "!"
    for path in ("/evil1.rss", "/evil2.rss"):
        feed_server.serve(path, rss([Item(title=evil, link=f"https://evil.example{path}",
                                          guid=f"evil{path}", description=evil)]))
    feed_server.serve("/world.rss", rss(BACKLOG))
    port = free_port()
    (tmp_path / "config.yaml").write_text(
        config_text(feed_server, port, parse_timeout=DEADLINE)
        .replace("/hang1.rss", "/evil1.rss").replace("/hang2.rss", "/evil2.rss"),
        encoding="utf-8")
    d = DaemonProc(tmp_path / "config.yaml", tmp_path / "daemon.log")
    try:
        await d.start()
        await wait_polls(feed_server, "/evil1.rss", 2)
        await wait_polls(feed_server, "/evil2.rss", 2)
        await wait_polls(feed_server, "/world.rss", 2)
        feed_server.set("/world.rss", rss([seed_item(), *BACKLOG]))
        await until(lambda: any(a["rule"] == "sanctions-deadline"
                                for a in file_alerts(tmp_path)), "the normal feed's alert")
        h = await health(port)
        assert h is not None
        assert h["parse"]["timed_out"] == 0 and h["parse"]["workers_replaced"] == 0, h["parse"]
        assert not h["feeds"]["failing"], h["feeds"]
        assert "parse.timeout" not in d.logtext()
        assert await stop_within(d, SHUTDOWN + 20) == 0
        assert "daemon.stopped" in d.logtext()
    finally:
        if d.proc is not None and d.proc.returncode is None:
            d.proc.kill()
            await d.proc.wait()
