"""One log stream: every line of a process, whoever logs it, rendered by the project's
formatter; with --log-format json, every line of stderr and stdout is JSON."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from monitor.logroute import ForeignRecords, foreign_event
from tests.feeds import BACKLOG, rss
from tests.peers.feedserver import FeedServer

ROOT = Path(__file__).resolve().parent.parent

EMIT = r"""
import asyncio, logging, sys, threading, warnings
from monitor.log import setup_logging, get_logger
setup_logging(sys.argv[1], sys.argv[2])

class Job:  # what APScheduler passes: its Job, whose str() is long
    name = "poll"
    def __str__(self): return "poll (trigger: interval[0:00:01], next run at: 2026-12-06)"

logging.getLogger("slack_sdk.webhook.async_client").info(
    "A retry handler found: RateLimitErrorRetryHandler for POST https://hooks.example/x "
    "- status: 429")
logging.getLogger("apscheduler.scheduler").warning(
    'Execution of job "%s" skipped: maximum number of running instances reached (%d)',
    Job(), 1)
logging.getLogger("apscheduler.executors.default").warning(
    'Run time of job "%s" was missed by %s', Job(), "0:00:02.5")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("apscheduler.executors.default").exception(
        'Job "%s" raised an exception', Job())
logging.getLogger("aiohttp.access").warning('127.0.0.1 "GET /healthz" 200')
logging.getLogger("aiohttp.client").warning("Unclosed client session\nclient=<x>")
logging.getLogger("aiosmtplib").warning("connection lost")
logging.getLogger("asyncio").error("Task exception was never retrieved")
logging.getLogger("some.library").info("a sentence with = and \"quotes\"")
warnings.warn("this is deprecated", DeprecationWarning, stacklevel=1)
print("stray", file=sys.stderr) if len(sys.argv) > 3 else None
get_logger("monitor.test").info("ours", n=1)
t = threading.Thread(target=lambda: 1 / 0, name="worker-1")
t.start(); t.join()
raise RuntimeError("uncaught")
"""


def _run_emitter(level: str, fmt: str) -> tuple[int, str, str]:
    import subprocess

    p = subprocess.run([sys.executable, "-W", "always", "-c", EMIT, level, fmt],
                       capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    return p.returncode, p.stdout, p.stderr


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}\n---\n{text}") from None
    return out


def test_every_library_line_is_json_with_log_format_json() -> None:
    rc, out, err = _run_emitter("debug", "json")
    assert rc == 1
    assert out == ""
    lines = _json_lines(err)
    events = {d["event"]: d for d in lines}
    assert all("logger" in d and "level" in d for d in lines)
    slack = events["slack.retrying"]
    assert slack["level"] == "debug" and slack["status"] == 429
    assert slack["handler"] == "RateLimitErrorRetryHandler"
    skipped = events["scheduler.skipped"]
    assert skipped["job"] == "poll" and skipped["level"] == "info"
    assert skipped["logger"] == "apscheduler.scheduler"
    assert events["scheduler.missed"]["late"] == "0:00:02.5"
    failed = events["scheduler.job_failed"]
    assert failed["level"] == "error" and "ZeroDivisionError" in failed["exc"]
    assert events["aiohttp.log"]["message"].startswith("Unclosed client session")
    assert events["aiosmtplib.log"]["level"] == "warning"
    assert events["asyncio.log"]["level"] == "error"
    assert events["some.log"]["message"] == 'a sentence with = and "quotes"'
    assert events["python.warning"]["category"] == "DeprecationWarning"
    assert events["ours"]["n"] == 1
    crashes = [d for d in lines if d["event"] == "monitor.crashed"]
    assert [c["where"] for c in crashes] == ["thread worker-1", "main"]
    assert "RuntimeError: uncaught" in crashes[-1]["exc"]


def test_text_format_renders_library_lines_as_events_and_demotes_the_noise() -> None:
    rc, _, err = _run_emitter("info", "text")
    assert rc == 1
    assert "slack.retrying" not in err and "retry handler" not in err  # debug now
    assert "scheduler.skipped" in err and "job=poll" in err
    assert "logger=apscheduler.scheduler" in err
    assert "maximum number of running instances" not in err.split("scheduler.skipped")[1][:80]
    # uncaught exceptions keep Python's own traceback in text
    assert "Traceback (most recent call last)" in err and "RuntimeError: uncaught" in err
    # the access log and APScheduler's info are below the default level
    assert "http.access" not in err


def test_foreign_event_is_pure_on_a_record() -> None:
    rec = logging.LogRecord("slack_sdk.web.async_base_client", logging.INFO, __file__, 1,
                            "A retry handler found: ConnectionErrorRetryHandler for POST x",
                            None, None)
    event, level, fields = foreign_event(rec)
    assert (event, level) == ("slack.retrying", logging.DEBUG)
    assert fields["handler"] == "ConnectionErrorRetryHandler"
    assert not ForeignRecords(logging.INFO).filter(rec)  # dropped at info
    assert rec.getMessage() == "slack.retrying"


@pytest.mark.timeout(90)
async def test_a_real_daemon_logs_only_json_lines(tmp_path: Path,
                                                  feed_server: FeedServer) -> None:
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    feed_server.serve("/a.rss", rss(BACKLOG))
    (tmp_path / "config.yaml").write_text(f"""
feeds:
  - {{name: a, url: '{feed_server.url('/a.rss')}', interval: 0.3s}}
  - {{name: dead, url: '{feed_server.url('/missing.rss')}', interval: 0.3s}}
defaults: {{jitter: 0}}
channels:
  slack-news: {{type: file, path: slack.jsonl}}
  email-oncall: {{type: file, path: email.jsonl}}
  audit-file: {{type: file, path: audit.jsonl}}
fetch: {{parse_in: thread}}
server: {{enabled: false}}
""", encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor", "--log-format", "json", "run", "--log-level", "debug",
        cwd=str(tmp_path), env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await asyncio.sleep(3)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    lines = _json_lines(out.decode()) + _json_lines(err.decode())
    events = [d["event"] for d in lines]
    assert "daemon.started" in events and "daemon.stopped" in events
    assert "feed.failed" in events


async def test_a_tick_during_a_long_run_is_skipped_counted_and_said_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """Not silently (#14): each skipped tick is counted, and the first of a run is said
    at info; the next ones of the same run at debug only."""
    from monitor.shell.scheduler import _guarded

    release = asyncio.Event()
    runs = 0
    ticks: list[tuple[str, str]] = []

    async def job() -> None:
        nonlocal runs
        runs += 1
        await release.wait()

    tick = _guarded("poll", 1.0, job, lambda name, result: ticks.append((name, result)))
    with caplog.at_level(logging.DEBUG, logger="monitor.shell.scheduler"):
        first = asyncio.ensure_future(tick())
        await asyncio.sleep(0)
        await tick()  # returns at once: the first run is still going
        await tick()
        release.set()
        await first
        await tick()  # and the next one runs again
    assert runs == 2
    assert ticks == [("poll", "ran"), ("poll", "skipped"), ("poll", "skipped"), ("poll", "ran")]
    skipped = [r for r in caplog.records if r.getMessage() == "scheduler.skipped"]
    assert [r.levelno for r in skipped] == [logging.INFO, logging.DEBUG]


# -- config errors and failed commands as JSON lines -------------------------------------
@pytest.fixture
def workdir(tmp_path: Path, feed_server: FeedServer) -> Path:
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    feed_server.serve("/a.rss", rss(BACKLOG))
    (tmp_path / "config.yaml").write_text(f"""
feeds:
  - {{name: a, url: '{feed_server.url('/a.rss')}'}}
channels:
  slack-news: {{type: file, path: slack.jsonl}}
  email-oncall: {{type: file, path: email.jsonl}}
  audit-file: {{type: file, path: audit.jsonl}}
fetch: {{parse_in: thread}}
""", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("where", ["before", "after"])
async def test_config_errors_are_json_lines(workdir: Path, where: str) -> None:
    from tests.test_cli import monitor

    (workdir / "config.yaml").write_text(
        "feeds:\n  - {name: a, url: 'http://x/a', interval: often}\nnonsense: 1\n",
        encoding="utf-8")
    for cmd in (["check"], ["status"], ["run"], ["once"]):
        opts = ["--log-format", "json"]
        args = [*opts, *cmd] if where == "before" else [*cmd, *opts]
        rc, out, err = await monitor(*args, cwd=workdir)
        assert rc == 1, (cmd, err)
        lines = _json_lines(out) + _json_lines(err)
        assert lines, cmd
        assert all(d["event"] == "config.invalid" and d["level"] == "error" for d in lines), lines
        assert {d["line"] for d in lines} == {2, 3}, lines
        for d in lines:
            assert d["file"].endswith("config.yaml") and d["column"] and d["message"]
    # text for people, unchanged
    rc, _, err = await monitor("check", cwd=workdir)
    assert rc == 1 and err.startswith("config.yaml: 2 problem(s):"), err


async def test_rule_errors_and_usage_errors_are_json_lines(workdir: Path) -> None:
    from tests.test_cli import monitor

    (workdir / "rules" / "broken.yaml").write_text(
        "rules:\n  - name: broken\n    any: [\"(unclosed\"]\n    nonsense: true\n",
        encoding="utf-8")
    rc, out, err = await monitor("run", "--log-format", "json", cwd=workdir)
    assert rc == 1
    lines = _json_lines(out) + _json_lines(err)
    assert lines and all(d["event"] == "rules.invalid" for d in lines), lines
    assert all(d["file"].endswith("broken.yaml") and d["line"] for d in lines)
    rc, out, err = await monitor("--log-format", "json", "status", "--bogus", cwd=workdir)
    assert rc == 2
    (usage,) = _json_lines(out) + _json_lines(err)
    assert usage["event"] == "usage.invalid" and "--bogus" in usage["error"]


async def test_status_on_a_corrupt_store_is_one_line_with_the_path_and_the_fix(
        workdir: Path) -> None:
    from tests.test_cli import monitor

    db = workdir / "monitor.db"  # the default store: sqlite:///monitor.db
    db.write_bytes(b"\x00this is not SQLite\xff" * 500)
    rc, out, err = await monitor("status", cwd=workdir)
    assert rc == 1 and out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"error: cannot open {db}: file is not a database — restore {db}")
    assert "internal error" not in line and "Traceback" not in err
    rc, out, err = await monitor("status", "--log-format", "json", cwd=workdir)
    assert rc == 1
    (d,) = _json_lines(out) + _json_lines(err)
    assert d["event"] == "store.failed" and d["kind"] == "corrupt" and d["path"] == str(db)
    assert "move it aside" in d["fix"]


async def test_a_commands_own_complaint_is_json_too(workdir: Path) -> None:
    from tests.test_cli import monitor

    rc, out, err = await monitor("stories", "show", "nope", "--log-format", "json", cwd=workdir)
    assert rc == 1
    (d,) = _json_lines(out) + _json_lines(err)
    assert d["event"] == "command.failed" and d["error"] == "no cluster 'nope'"
    rc, _, err = await monitor("stories", "show", "nope", cwd=workdir)
    assert rc == 1 and err == "no cluster 'nope'\n"
