"""End to end: `monitor run` as a real process against local feed, Slack and SMTP peers.

Poll → baseline → new stories → exactly one alert per matching story in Slack, email and
the file; SIGTERM, restart, re-poll: no repeats; SMTP down: the alert is delivered after
it comes back; a rule edit is hot-reloaded; an invalid edit keeps the old rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.feeds import BACKLOG, UNRELATED, Item, rss, seed_item
from tests.peers.feedserver import FeedServer
from tests.peers.slackserver import SlackServer
from tests.peers.smtpserver import SMTPServer

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(cond: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Wait for a condition the daemon must bring about (bounded; not a timing assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


class DaemonProc:
    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._fh = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "monitor", "run", "--config", str(self.config),
            "--log-level", "debug", stdout=self._fh, stderr=self._fh, env=env, cwd=str(ROOT),
        )

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = await asyncio.wait_for(self.proc.wait(), 30)
        self.close_log()
        return rc

    def close_log(self) -> None:
        self._fh.close()

    def logtext(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@dataclass(frozen=True, kw_only=True)
class Setup:
    """A daemon ready to start, with the peers it talks to."""

    tmp: Path
    daemon: DaemonProc
    port: int
    rules: Path
    feeds: FeedServer
    slack: SlackServer
    smtp: SMTPServer


@pytest.fixture
async def setup(tmp_path: Path, feed_server: FeedServer, slack_server: SlackServer, smtp_server: SMTPServer
                ) -> AsyncIterator[Setup]:
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    port = free_port()
    feed_server.serve("/world.rss", rss(BACKLOG))
    feed_server.serve("/wire.rss", rss([]))
    config = tmp_path / "config.yaml"
    config.write_text(f"""
feeds:
  - name: world
    url: {feed_server.url('/world.rss')}
    interval: 0.3s
  - name: wire
    url: {feed_server.url('/wire.rss')}
    interval: 0.3s
defaults:
  jitter: 0
rules: rules
store: sqlite:///state.db
channels:
  slack-news:
    type: slack
    webhook_url: ${{TEST_SLACK_WEBHOOK}}
    rate: 100
  email-oncall:
    type: email
    host: 127.0.0.1
    port: {smtp_server.port}
    security: none
    from: monitor@example.org
    to: [oncall@example.org]
    timeout: 5s
  audit-file:
    type: file
    path: alerts.jsonl
delivery:
  retry_min: 0.2s
  retry_max: 0.5s
fetch:
  parse_in: thread
server:
  listen: 127.0.0.1:{port}
""", encoding="utf-8")
    os.environ["TEST_SLACK_WEBHOOK"] = slack_server.webhook_url
    daemon = DaemonProc(config, tmp_path / "daemon.log")
    yield Setup(tmp=tmp_path, daemon=daemon, port=port, rules=rules,
                feeds=feed_server, slack=slack_server, smtp=smtp_server)
    if daemon.proc is not None and daemon.proc.returncode is None:
        daemon.proc.kill()
        await daemon.proc.wait()
    os.environ.pop("TEST_SLACK_WEBHOOK", None)


async def health(port: int) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=2)
        ) as r:
            data: dict[str, Any] = await r.json()
            return data
    except (TimeoutError, aiohttp.ClientError):
        return None


def file_alerts(tmp: Path) -> list[dict[str, Any]]:
    p = tmp / "alerts.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line]


async def wait_polls(feeds: Any, path: str, n: int) -> None:
    start = feeds.hits(path)
    await until(lambda: feeds.hits(path) >= start + n, f"{n} more polls of {path}")


async def test_daemon_alerts_once_survives_restart_and_smtp_outage(setup: Setup) -> None:
    d: DaemonProc = setup.daemon
    feeds, slack, smtp, tmp = setup.feeds, setup.slack, setup.smtp, setup.tmp
    await d.start()
    # baseline: the backlog is remembered silently
    await wait_polls(feeds, "/world.rss", 2)
    assert slack.messages == [] and smtp.messages == []

    # the seed story breaks on two feeds (the wire one under another headline)
    feeds.set("/world.rss", rss([seed_item(), UNRELATED, *BACKLOG]))
    wire = Item(title="Witkoff urged to take tough approach with Putin before sanctions deadline"
                " - Reuters", link="https://wire.example.net/witkoff", guid="wire-1",
                description="Trump's deadline for Russia is Friday; sanctions loom.")
    feeds.set("/wire.rss", rss([wire]))
    await until(lambda: len(slack.messages) >= 1 and len(smtp.messages) >= 1
                and len(file_alerts(tmp)) >= 1, "the alert in Slack, email and the file")
    # several more polls: nothing repeats
    await wait_polls(feeds, "/world.rss", 3)
    await wait_polls(feeds, "/wire.rss", 3)
    first = [m for m in slack.messages if "Witkoff" in (m["text"] or "")]
    assert len(first) >= 1
    alerts = [a for a in file_alerts(tmp) if not a.get("update")]
    assert len(alerts) == 1, alerts
    assert alerts[0]["rule"] == "sanctions-deadline"
    assert "robots" not in json.dumps(file_alerts(tmp)).lower()
    n_slack, n_mail, n_file = len(slack.messages), len(smtp.messages), len(file_alerts(tmp))
    mail = smtp.messages[0].message
    assert "Witkoff" in mail["Subject"] and mail["To"] == "oncall@example.org"

    h = await health(setup.port)
    assert h is not None and h["rules"]["error"] is None and h["outbox"]["pending"] == 0
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{setup.port}/metrics") as r:
            metrics = await r.text()
        async with s.get(f"http://127.0.0.1:{setup.port}/readyz") as r:
            assert r.status == 200
    assert 'monitor_deliveries_total{channel="slack-news",result="sent"}' in metrics
    assert 'monitor_rule_matches_total{rule="sanctions-deadline"}' in metrics
    assert 'monitor_polls_total{feed="world",result="baseline"} 1.0' in metrics
    # the collector's pauses are measured (monitor.shell.gcpolicy)
    young = re.search(r'^monitor_gc_collections_total\{generation="0"\} ([0-9.e+]+)$', metrics,
                      re.M)
    assert young is not None and float(young.group(1)) >= 1
    assert re.search(r'^monitor_gc_seconds_total\{generation="0"\} ', metrics, re.M)

    # restart: the schedule resumes, nothing is sent again
    assert await d.stop() == 0
    assert "daemon.stopped" in d.logtext()
    await d.start()
    await wait_polls(feeds, "/world.rss", 3)
    await wait_polls(feeds, "/wire.rss", 2)
    assert (len(slack.messages), len(smtp.messages), len(file_alerts(tmp))) == (
        n_slack, n_mail, n_file)

    # SMTP goes down; a new matching story arrives; Slack gets it at once, email later
    smtp.stop()
    other = Item(title="Putin rejects Trump deadline as new sanctions loom",
                 link="https://news.example.org/putin-rejects", guid="p-2",
                 description="The Kremlin said the sanctions deadline set by Trump was "
                             "unacceptable.")
    feeds.set("/world.rss", rss([other, seed_item(), UNRELATED, *BACKLOG]))
    await until(lambda: any("rejects" in (m["text"] or "") for m in slack.messages),
                "the second alert in Slack")
    await until(lambda: "delivery.retry" in d.logtext(), "a logged email retry")
    assert len(smtp.messages) == n_mail
    smtp.start()
    await until(lambda: len(smtp.messages) == n_mail + 1, "the email after SMTP came back")
    assert "rejects" in smtp.messages[-1].message["Subject"]
    await wait_polls(feeds, "/world.rss", 3)
    assert len(smtp.messages) == n_mail + 1
    assert [m["text"] for m in slack.messages].count(
        next(m["text"] for m in slack.messages if "rejects" in (m["text"] or ""))) == 1
    assert await d.stop() == 0


async def test_rules_hot_reload_and_invalid_edit_keeps_old(setup: Setup) -> None:
    d: DaemonProc = setup.daemon
    feeds, slack, rules, port = setup.feeds, setup.slack, setup.rules, setup.port
    await d.start()
    await wait_polls(feeds, "/world.rss", 2)

    # a new rule, saved while the daemon runs
    (rules / "robots.yaml").write_text(
        "rules:\n  - name: robots\n    any: [robot, humanoid]\n    channels: [slack-news]\n",
        encoding="utf-8")
    # the bound: a valid edit applies within 2 s (inotify + a 200 ms debounce)
    await until(lambda: "rules.reloaded" in d.logtext(), "the reload", limit=2.0)
    h = await health(port)
    assert h is not None and h["rules"]["error"] is None

    # an invalid edit: the old set keeps running and the error is visible
    (rules / "broken.yaml").write_text(
        "rules:\n  - name: broken\n    any: [x]\n    channels: [nowhere]\n", encoding="utf-8")
    await until(lambda: "rules.invalid" in d.logtext(), "the rejected reload", limit=10)
    h = await health(port)
    assert h is not None and h["status"] == "degraded"
    assert "broken.yaml:4" in h["rules"]["error"] and "nowhere" in h["rules"]["error"]

    feeds.set("/world.rss", rss([UNRELATED, *BACKLOG]))
    await until(lambda: any("Humanoid" in (m["text"] or "") for m in slack.messages),
                "the robots rule (loaded before the broken edit) to fire")

    # SIGHUP asks for a reload too; once the broken file is gone the set is healthy again
    (rules / "broken.yaml").unlink()
    await until(lambda: d.logtext().count("rules.reloaded") >= 2, "the reload after the fix",
                limit=10)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    await until(lambda: "by=SIGHUP" in d.logtext() and d.logtext().count("rules.reloaded") >= 3,
                "the SIGHUP reload", limit=10)
    h = await health(port)
    assert h is not None and h["status"] == "ok" and h["rules"]["error"] is None
    assert await d.stop() == 0


async def test_sigkill_loses_nothing(setup: Setup) -> None:
    """kill -9 after the story is committed but before delivery: the outbox delivers it
    on restart, once."""
    d: DaemonProc = setup.daemon
    feeds, slack, tmp = setup.feeds, setup.slack, setup.tmp
    await d.start()
    await wait_polls(feeds, "/world.rss", 2)
    await slack.stop()  # Slack unreachable: the alert stays in the outbox
    feeds.set("/world.rss", rss([seed_item(), *BACKLOG]))
    await until(lambda: "delivery.retry" in d.logtext() and "channel=slack-news" in d.logtext(),
                "a failed Slack attempt")
    assert await d.stop(signal.SIGKILL) == -signal.SIGKILL
    await slack.start()
    await d.start()
    await until(lambda: len(slack.messages) == 1, "the alert after restart")
    await wait_polls(feeds, "/world.rss", 3)
    assert len(slack.messages) == 1
    assert len([a for a in file_alerts(tmp) if not a.get("update")]) == 1
    with contextlib.suppress(ProcessLookupError):
        assert await d.stop() == 0


async def test_the_daemon_says_what_its_polls_found_every_few_minutes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # polls are logged at debug; one info line sums them up (and says the daemon is alive)
    import logging

    from monitor.config import parse_config
    from monitor.shell.daemon import Daemon
    from monitor.shell.pipeline import PollOutcome

    daemon = Daemon(parse_config("feeds: []\n", "c.yaml", {}))

    async def outcome(result: str, new: int = 0, alerts: int = 0) -> PollOutcome:
        return PollOutcome(feed="f", result=result, new=new, alerts=alerts)

    async def crash() -> PollOutcome:
        raise RuntimeError("a bug")

    tasks = [asyncio.create_task(c) for c in (
        outcome("not-modified"), outcome("not-modified"), outcome("new", 3, 1),
        outcome("failed"), crash())]
    await asyncio.gather(*tasks, return_exceptions=True)
    for t in tasks:
        daemon._forget(t)
    with caplog.at_level(logging.INFO, logger="monitor.shell.daemon"):
        await daemon._summarize()
        await daemon._summarize()  # counts start again after each line
    first, second = [r.fields for r in caplog.records  # type: ignore[attr-defined]
                     if r.getMessage() == "daemon.summary"]
    assert (first["polls"], first["new_stories"], first["alerts"]) == (4, 3, 1)  # crash: no poll
    assert first["new"] == 1  # polls that found something new
    assert (first["not_modified"], first["failed"], first["outbox_pending"]) == (2, 1, 0)
    assert second["polls"] == 0 and "not_modified" not in second


async def test_a_job_that_does_not_start_now_still_runs() -> None:
    # APScheduler adds a job *paused* when given next_run_time=None
    from datetime import UTC, datetime, timedelta

    from monitor.shell.scheduler import Scheduler

    s = Scheduler()

    async def job() -> None: ...

    s.every("later", 300.0, job, start_now=False)
    s.every("now", 300.0, job)
    s.start()
    try:
        later, now = s._s.get_job("later"), s._s.get_job("now")
        assert later is not None and now is not None
        soon = datetime.now(UTC) + timedelta(seconds=1)
        assert now.next_run_time is not None and now.next_run_time <= soon
        assert later.next_run_time is not None and later.next_run_time > soon
    finally:
        s.stop()


async def test_a_poll_abandoned_at_shutdown_is_due_again_at_once(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    # a feed that does not answer while the daemon stops: its claim (a lease of minutes)
    # is given back, so the next start polls it at once
    from datetime import UTC, datetime, timedelta

    from monitor.config import load_config
    from monitor.shell.daemon import Daemon
    from monitor.store.sqlite import SQLiteStore

    release = feed_server.gate("/stuck.rss")
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    (tmp_path / "config.yaml").write_text(f"""
feeds:
  - {{name: stuck, url: '{feed_server.url("/stuck.rss")}', interval: 1s}}
defaults: {{jitter: 0}}
rules: rules
store: sqlite:///state.db
channels:
  slack-news: {{type: file, path: a.jsonl}}
  email-oncall: {{type: file, path: e.jsonl}}
  audit-file: {{type: file, path: f.jsonl}}
fetch: {{parse_in: thread}}
server: {{enabled: false}}
shutdown_timeout: 0.2s
""", encoding="utf-8")
    daemon = Daemon(load_config(tmp_path / "config.yaml"), tick=0.05)
    running = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(feed_server.wait_active(1, "/stuck.rss"), 10)
        daemon.stop()
        assert await asyncio.wait_for(running, 10) == 0
    finally:
        release.set()
    async with SQLiteStore(tmp_path / "state.db") as store:
        [st] = await store.get_feeds()
    assert st.next_poll is not None
    assert st.next_poll < datetime.now(UTC) + timedelta(minutes=1)  # not the 10 min lease


async def test_a_taken_port_is_a_clear_error_not_a_traceback() -> None:
    from monitor.errors import MonitorError
    from monitor.metrics import Metrics
    from monitor.shell.server import Server

    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    first = Server("127.0.0.1:0", Metrics(), health)
    await first.start()
    try:
        second = Server(f"127.0.0.1:{first.port}", Metrics(), health)
        with pytest.raises(MonitorError, match=rf"cannot listen on 127.0.0.1:{first.port} "
                           r"\(server.listen\): .*another instance may use it"):
            await second.start()
        await second.stop()  # nothing left to stop
    finally:
        await first.stop()


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out |= {int(x) for x in (task / "children").read_text().split()}
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
async def test_kill_9_leaves_no_worker_and_the_port_is_free_at_once(setup: Setup) -> None:
    """The parse workers die with the daemon, however it dies, and hold nothing of it:
    after kill -9 a new `monitor run` on the same port starts at once."""
    cfg = setup.daemon.config
    cfg.write_text(cfg.read_text(encoding="utf-8").replace(
        "parse_in: thread", "parse_in: process\n  parse_workers: 2"), encoding="utf-8")
    await setup.daemon.start()
    proc = setup.daemon.proc
    assert proc is not None
    await until(lambda: len(_children(proc.pid)) >= 2, "two parse workers")
    workers = _children(proc.pid)
    proc.kill()
    await proc.wait()
    setup.daemon.close_log()
    await until(lambda: not any(_alive(w) for w in workers), "the workers to exit", 20)
    again = DaemonProc(cfg, setup.tmp / "daemon2.log")
    await again.start()
    try:
        await until_async(lambda: health(setup.port), "the new daemon's health endpoint")
        assert "address already in use" not in again.logtext().lower()
    finally:
        assert await again.stop() == 0
    assert not any(_alive(w) for w in _children(again.proc.pid if again.proc else 0))


async def until_async(probe: Callable[[], Any], what: str, limit: float = 30.0) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while True:
        got = await probe()
        if got is not None:
            return got
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.1)
