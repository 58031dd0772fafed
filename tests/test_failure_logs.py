"""Repeated failures are said once, summarised periodically, and their end is said: feeds
that keep failing and a store that keeps failing (real SQLite errors, a fixed clock)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from monitor.config import Config, load_config
from monitor.core.streaks import Streaks, is_news
from monitor.shell.daemon import Runtime
from tests.clock import T0, Clock
from tests.feeds import BACKLOG, Item, rss
from tests.peers.feedserver import FeedServer

MakeConfig = Callable[..., Config]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_config(tmp_path: Path, feed_server: FeedServer) -> MakeConfig:
    shutil.copytree(ROOT / "rules", tmp_path / "rules")

    def make(feeds: dict[str, str]) -> Config:
        lines = "\n".join(f"  - {{name: {n}, url: '{feed_server.url(p)}', interval: 60s}}"
                           for n, p in feeds.items())
        path = tmp_path / "config.yaml"
        path.write_text(f"""
feeds:
{lines}
rules: rules
store: sqlite:///state.db
channels:
  slack-news: {{type: file, path: alerts.jsonl}}
  email-oncall: {{type: file, path: email.jsonl}}
  audit-file: {{type: file, path: audit.jsonl}}
fetch: {{parse_in: thread}}
server: {{enabled: false}}
""", encoding="utf-8")
        return load_config(path)

    return make


def test_streaks_say_what_is_news_and_summarise_the_rest() -> None:
    s = Streaks()
    assert s.failed("a", "HTTP 503 Service Unavailable", T0) == "new"
    assert s.failed("a", "HTTP 503 Service Unavailable", T0 + timedelta(minutes=1)) == "repeat"
    assert s.failed("a", "timeout after 30s", T0 + timedelta(minutes=2)) == "changed"
    assert s.failed("b", "x" * 100, T0 + timedelta(minutes=3)) == "new"
    assert s.summary() == ("a (3x, timeout after 30s, since 12:00), "
                           f"b (1x, {'x' * 59}…, since 12:03)")
    for i in range(12):
        s.failed(f"f{i:02}", "HTTP 404 Not Found", T0)
    line = s.summary(cap=3)
    assert line.startswith("a (3x") and line.endswith(" +11 more") and line.count("(") == 3
    ended = s.succeeded("a")
    assert ended is not None and ended.count == 3 and ended.since == T0
    assert s.succeeded("a") is None and "a" not in s and len(s) == 13
    assert is_news(failures_before=0, last_error=None, reason="x")
    assert not is_news(failures_before=4, last_error="x", reason="x")
    assert is_news(failures_before=4, last_error="x", reason="y")


def _lines(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == event]


def _fields(r: logging.LogRecord) -> dict[str, object]:
    return dict(getattr(r, "fields", {}))


async def test_a_failing_feed_warns_once_then_is_summarised_then_recovers(
        make_config: MakeConfig, feed_server: FeedServer, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    feed_server.serve("/a.rss", rss(BACKLOG, now=T0))
    config = make_config({"a": "/a.rss", "dead": "/dead.rss"})
    caplog.set_level(logging.DEBUG, logger="monitor")
    async with Runtime(config, clock=clock) as rt:
        for _ in range(4):
            await rt.poll_all()
            clock.advance(minutes=5)
        failed = _lines(caplog, "feed.failed")
        assert [r.levelno for r in failed] == [logging.WARNING] + [logging.DEBUG] * 3
        assert _fields(failed[0])["error"] == "HTTP 404 Not Found"
        caplog.clear()
        rt.trouble.summarize()
        (summary,) = _lines(caplog, "feeds.failing")
        assert summary.levelno == logging.WARNING
        assert _fields(summary) == {"count": 1, "feeds": "dead (4x, HTTP 404 Not Found, since 12:00)"}
        # the problem changes: news again
        feed_server.status("/dead.rss", 503)
        caplog.clear()
        await rt.poll_all()
        (changed,) = _lines(caplog, "feed.failed")
        assert changed.levelno == logging.WARNING and _fields(changed)["status"] == 503
        # and it comes back
        feed_server.serve("/dead.rss", rss(BACKLOG, now=clock.now))
        clock.advance(minutes=5)
        caplog.clear()
        await rt.poll_all()
        (recovered,) = _lines(caplog, "feed.recovered")
        assert recovered.levelno == logging.INFO
        assert _fields(recovered)["failures"] == 5 and "last_ok" not in _fields(recovered)
        caplog.clear()
        rt.trouble.summarize()
        assert not _lines(caplog, "feeds.failing")


async def _set_page_cap(rt: Runtime, cap: Callable[[int], int]) -> None:
    from monitor.store.sqlite import SQLiteStore

    assert isinstance(rt.store, SQLiteStore)
    run = rt.store._run
    pages = await run("pages", lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await run("cap", lambda c: c.execute(f"PRAGMA max_page_count = {cap(pages)}"))


async def test_a_full_store_is_one_line_then_quiet_then_summarised_then_recovered(
        make_config: MakeConfig, feed_server: FeedServer, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    many = [Item(title=f"Story number {i} about {i % 7} things", link=f"https://x.example/{i}",
                 description="words " * 200) for i in range(200)]
    feed_server.serve("/a.rss", rss(many, now=T0))
    config = make_config({"a": "/a.rss"})
    caplog.set_level(logging.DEBUG, logger="monitor")
    async with Runtime(config, clock=clock) as rt:
        # SQLite refuses new pages (SQLITE_FULL) as on a full disk: the baseline cannot be saved
        await _set_page_cap(rt, lambda pages: pages)
        for _ in range(3):
            (outcome,) = await rt.poll_all()
            assert outcome.result == "failed" and "database or disk is full" in str(outcome.error)
            clock.advance(minutes=5)
        failed = _lines(caplog, "store.failed")
        assert [r.levelno for r in failed] == [logging.ERROR, logging.DEBUG, logging.DEBUG]
        first = failed[0]
        assert first.exc_info is None  # no traceback at the default level
        f = _fields(first)
        assert f["kind"] == "full" and f["during"] == "poll:a"
        assert str(f["path"]).endswith("/state.db") and "state.db" in str(f["fix"])
        assert "free space on the disk holding" in str(f["fix"])
        assert not _lines(caplog, "feed.poll_crashed") and not _lines(caplog, "feed.failed")
        (state,) = await rt.store.get_feeds()
        assert state.failures == 0 and not state.last_error  # not the feed's fault
        caplog.clear()
        rt.trouble.summarize()
        (failing,) = _lines(caplog, "store.failing")
        assert _fields(failing)["failures"] == 3 and _fields(failing)["kind"] == "full"
        # space again
        await _set_page_cap(rt, lambda pages: 1_000_000)
        caplog.clear()
        (outcome,) = await rt.poll_all()
        assert outcome.result == "baseline"
        (recovered,) = _lines(caplog, "store.recovered")
        assert _fields(recovered)["failures"] == 3 and recovered.levelno == logging.INFO


async def test_a_running_daemon_on_a_full_store_says_it_once_without_a_traceback(
        make_config: MakeConfig, feed_server: FeedServer,
        caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    from monitor.shell.daemon import Daemon

    feed_server.serve("/a.rss", rss([]))
    config = make_config({"a": "/a.rss"})
    config = config.model_copy(update={"feeds": [
        f.model_copy(update={"interval": 0.2}) for f in config.feeds]})
    caplog.set_level(logging.DEBUG)
    daemon = Daemon(config, tick=0.05)
    running = asyncio.ensure_future(daemon.run())
    try:
        for _ in range(200):
            if _lines(caplog, "feed.polled"):
                break
            await asyncio.sleep(0.05)
        assert daemon.rt is not None and _lines(caplog, "feed.polled")
        await _set_page_cap(daemon.rt, lambda pages: pages)
        feed_server.set("/a.rss", rss([
            Item(title=f"Story {i}", link=f"https://x.example/{i}", description="words " * 200)
            for i in range(200)]))
        for _ in range(200):
            if len(_lines(caplog, "store.failed")) >= 4:
                break
            await asyncio.sleep(0.05)
    finally:
        daemon.stop()
        await asyncio.wait_for(running, 30)
    failed = _lines(caplog, "store.failed")
    assert len(failed) >= 4
    assert [r.levelno for r in failed].count(logging.ERROR) == 1
    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert not [r for r in loud if r.exc_info], [r.getMessage() for r in loud if r.exc_info]
    assert not [r for r in loud if r.name.startswith("apscheduler") and r.levelno >= logging.WARNING]
