"""Issue #13 through a real `monitor run`: full live reload (SIGHUP, the config watcher,
an invalid config), readiness, channel health and the new metrics.

Every wait is bounded and waits for something the daemon must bring about (polls seen
by the feed server, a log line, a file written): no timing assertion.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.feeds import BACKLOG, UNRELATED, Item, rss
from tests.peers.feedserver import FeedServer
from tests.peers.slackserver import SlackServer
from tests.peers.tcpproxy import TCPProxy
from tests.test_daemon import ROOT, DaemonProc, file_alerts, free_port, health, until, wait_polls

pytestmark = pytest.mark.timeout(120)

ROBOTS = "rules:\n  - name: robots\n    any: [robot, humanoid]\n    channels: [{ch}]\n"


def config_text(port: int, feeds: dict[str, str], *, channels: str, rules: str = "rules",
                store: str = "sqlite:///state.db", extra: str = "") -> str:
    feed_lines = "".join(f"  - {{name: {n}, url: '{u}', interval: 0.3s}}\n"
                         for n, u in feeds.items())
    return (f"feeds:\n{feed_lines}defaults: {{jitter: 0}}\nrules: {rules}\nstore: {store}\n"
            f"channels:\n{channels}"
            "delivery: {retry_min: 0.2s, retry_max: 0.5s}\nfetch: {parse_in: thread}\n"
            f"server: {{listen: '127.0.0.1:{port}'}}\n{extra}")


STD_CHANNELS = """\
  slack-news: {type: slack, webhook_url: '${TEST_SLACK_WEBHOOK}', rate: 100}
  email-oncall: {type: file, path: email.jsonl}
  audit-file: {type: file, path: alerts.jsonl}
"""


async def get(port: int, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(
        f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=10)
    ) as r:
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, await r.text()


async def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    _, text = await get(port, "/metrics")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float | None:
    return m.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
async def env(slack_server: SlackServer) -> AsyncIterator[None]:
    os.environ["TEST_SLACK_WEBHOOK"] = slack_server.webhook_url
    yield
    os.environ.pop("TEST_SLACK_WEBHOOK", None)


@pytest.fixture
async def procs() -> AsyncIterator[list[DaemonProc]]:
    made: list[DaemonProc] = []
    yield made
    for d in made:
        if d.proc is not None and d.proc.returncode is None:
            d.proc.kill()
            await d.proc.wait()
            d.close_log()


async def test_sighup_reloads_feeds_channels_and_the_rules_path(
    tmp_path: Path, feed_server: FeedServer, env: None, procs: list[DaemonProc]
) -> None:
    # config.yaml is a symlink to conf/monitor.yaml: editing the target is not seen by
    # the watcher (it watches the link's directory), so only the SIGHUP reloads here
    conf = tmp_path / "conf"
    conf.mkdir()
    shutil.copytree(ROOT / "rules", conf / "rules")
    shutil.copytree(ROOT / "rules", conf / "rules2")
    (conf / "rules2" / "robots.yaml").write_text(ROBOTS.format(ch="robots-file"), "utf-8")
    for path in ("/world.rss", "/wire.rss", "/extra.rss"):
        feed_server.serve(path, rss(BACKLOG if path == "/world.rss" else []))
    port = free_port()
    target = conf / "monitor.yaml"
    target.write_text(config_text(port, {"world": feed_server.url("/world.rss"),
                                         "wire": feed_server.url("/wire.rss")},
                                  channels=STD_CHANNELS), "utf-8")
    (tmp_path / "config.yaml").symlink_to(target)
    d = DaemonProc(tmp_path / "config.yaml", tmp_path / "daemon.log")
    procs.append(d)
    await d.start()
    await wait_polls(feed_server, "/world.rss", 2)
    await wait_polls(feed_server, "/wire.rss", 2)
    assert feed_server.hits("/extra.rss") == 0

    # wire removed, extra added, a new channel, the rules moved to rules2 (whose new rule
    # routes to the new channel): one atomic reload on SIGHUP
    target.write_text(config_text(
        port, {"world": feed_server.url("/world.rss"), "extra": feed_server.url("/extra.rss")},
        channels=STD_CHANNELS + "  robots-file: {type: file, path: robots.jsonl}\n",
        rules="rules2"), "utf-8")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    await until(lambda: "config.reloaded" in d.logtext(), "the SIGHUP reload")
    line = next(x for x in d.logtext().splitlines() if "config.reloaded" in x)
    assert "by=SIGHUP" in line
    assert "feeds_added_names=extra" in line and "feeds_removed_names=wire" in line
    assert "channels_added_names=robots-file" in line and "rules_path=True" in line
    assert "added_names=robots" in d.logtext()  # the rules.reloaded line

    await wait_polls(feed_server, "/extra.rss", 2)  # the new feed is polled
    await wait_polls(feed_server, "/world.rss", 1)  # (a poll of wire in flight is over)
    wire = feed_server.hits("/wire.rss")
    await wait_polls(feed_server, "/world.rss", 4)
    assert feed_server.hits("/wire.rss") == wire  # the removed one is not

    # the new channel has its delivery loop: the new rule's alert reaches it
    feed_server.set("/world.rss", rss([UNRELATED, *BACKLOG]))
    robots = conf / "robots.jsonl"
    await until(lambda: robots.exists() and "Humanoid" in robots.read_text("utf-8"),
                "the alert in the new channel")
    h = await health(port)
    assert h is not None and h["reload"]["ok"] is True and h["reload"]["by"] == "SIGHUP"
    assert "robots-file" in h["channels"] and h["rules"]["error"] is None
    assert h["feeds"]["total"] == 2
    assert await d.stop() == 0


async def test_a_config_edit_is_picked_up_and_an_invalid_one_keeps_the_old_running(
    tmp_path: Path, feed_server: FeedServer, env: None, procs: list[DaemonProc]
) -> None:
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    feed_server.serve("/world.rss", rss(BACKLOG))
    feed_server.serve("/extra.rss", rss([]))
    port = free_port()
    cfg = tmp_path / "config.yaml"
    good = {"world": feed_server.url("/world.rss")}
    cfg.write_text(config_text(port, good, channels=STD_CHANNELS), "utf-8")
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    procs.append(d)
    await d.start()
    await wait_polls(feed_server, "/world.rss", 2)

    # invalid: a negative interval (line 3) and an unknown key at the end
    bad = config_text(port, good, channels=STD_CHANNELS, extra="bogus: 1\n")
    bad = bad.replace("interval: 0.3s", "interval: -1s").replace(
        f"'{feed_server.url('/world.rss')}'", f"'{feed_server.url('/extra.rss')}'")
    cfg.write_text(bad, "utf-8")
    await until(lambda: "config.invalid" in d.logtext(), "the rejected reload")
    assert f"{cfg}:2:" in d.logtext()  # file:line:column in the log
    h = await health(port)
    assert h is not None and h["status"] == "degraded"
    assert any("config reload failed" in r for r in h["reasons"])
    reload = h["reload"]
    assert reload["ok"] is False and reload["by"] == "config-watcher"
    assert reload["what"] == "config" and reload["problems"] >= 2
    lines = {e.split(": ", 1)[0] for e in reload["errors"]}
    assert any(x.startswith(f"{cfg}:2:") for x in lines), reload["errors"]
    assert any("bogus" in e for e in reload["errors"])
    assert h["config"]["error"] and "bogus" in h["config"]["error"]
    status, page = await get(port, "/")  # the status page shows it too
    assert status == 200 and "bogus" in page
    # the old configuration runs on: world is polled, extra is not
    await wait_polls(feed_server, "/world.rss", 3)
    assert feed_server.hits("/extra.rss") == 0
    status, _ = await get(port, "/readyz")
    assert status == 200

    # fixed, with a feed added: applied, and the daemon is healthy again
    cfg.write_text(config_text(port, {**good, "extra": feed_server.url("/extra.rss")},
                               channels=STD_CHANNELS), "utf-8")
    await until(lambda: "config.reloaded" in d.logtext(), "the reload after the fix")
    await wait_polls(feed_server, "/extra.rss", 2)
    h = await health(port)
    assert h is not None and h["status"] == "ok", h.get("reasons")
    assert h["reload"]["ok"] is True and "errors" not in h["reload"]
    assert h["config"]["error"] is None
    m = await metrics(port)
    assert sample(m, "monitor_config_reloads_total", result="invalid") == 1.0
    assert sample(m, "monitor_config_reloads_total", result="ok") == 1.0
    assert await d.stop() == 0


async def test_readiness_rules_and_channels(
    tmp_path: Path, feed_server: FeedServer, slack_server: SlackServer, env: None,
    procs: list[DaemonProc]
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "robots.yaml").write_text(
        ROBOTS.format(ch="slack-news").replace("    channels", "    enabled: false\n    channels"),
        "utf-8")
    feed_server.serve("/world.rss", rss(BACKLOG))
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config_text(port, {"world": feed_server.url("/world.rss")}, channels=(
        "  slack-news: {type: slack, webhook_url: '${TEST_SLACK_WEBHOOK}', rate: 100}\n")),
        "utf-8")
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    procs.append(d)
    await d.start()
    await wait_polls(feed_server, "/world.rss", 2)

    # no enabled rule: not ready, and the body says which check fails
    status, body = await get(port, "/readyz")
    assert status == 503 and body["ready"] is False and body["failing"] == ["rules"]
    assert body["checks"]["store"]["ok"] and body["checks"]["scheduler"]["ok"]
    assert body["checks"]["channels"]["ok"]  # nothing sent yet: healthy

    (rules / "robots.yaml").write_text(ROBOTS.format(ch="slack-news"), "utf-8")
    await until(lambda: "config.reloaded" in d.logtext(), "the reload of the rules")
    status, body = await get(port, "/readyz")
    assert status == 200 and body["ready"] is True and "failing" not in body
    assert set(body["checks"]) == {"store", "scheduler", "instance", "rules", "channels"}

    # the only channel keeps failing: not ready, /healthz degraded with the reason
    await slack_server.stop()
    feed_server.set("/world.rss", rss([UNRELATED, *BACKLOG]))

    async def failing() -> bool:
        status, _ = await get(port, "/readyz")
        return status == 503

    for _ in range(600):
        if await failing():
            break
        await asyncio.sleep(0.05)
    status, body = await get(port, "/readyz")
    assert status == 503 and body["failing"] == ["channels"], body
    assert "failing: slack-news" in body["checks"]["channels"]["detail"]
    h = await health(port)
    assert h is not None and h["status"] == "degraded"
    ch = h["channels"]["slack-news"]
    assert ch["failing"] and ch["consecutive_failures"] >= 3 and ch["last_error"]
    assert ch["last_success"] is None
    assert any(r.startswith("channel slack-news failing") for r in h["reasons"])

    # Slack back: the retry goes through, the channel and the daemon are healthy again
    await slack_server.start()
    await until(lambda: any("Humanoid" in (m["text"] or "") for m in slack_server.messages),
                "the alert after Slack came back")
    for _ in range(200):
        status, body = await get(port, "/readyz")
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert status == 200, body
    h = await health(port)
    assert h is not None and h["channels"]["slack-news"]["consecutive_failures"] == 0
    assert h["channels"]["slack-news"]["last_success"] is not None
    assert "channel.recovered" in d.logtext()
    assert await d.stop() == 0


PG_URL = os.environ.get("MONITOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.mark.postgres
async def test_readiness_fails_when_the_store_does_not_answer(
    tmp_path: Path, feed_server: FeedServer, env: None, procs: list[DaemonProc]
) -> None:
    try:
        con = await asyncpg.connect(PG_URL, timeout=2)
    except Exception as e:
        pytest.skip(f"no PostgreSQL at {PG_URL}: {e!r}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    host_port = PG_URL.split("@", 1)[1].split("/", 1)[0]
    host, _, pg_port = host_port.partition(":")
    proxy = TCPProxy(host, int(pg_port or 5432))
    via = await proxy.start()
    store = PG_URL.replace(host_port, f"127.0.0.1:{via}") + f"?schema={schema}"
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    feed_server.serve("/world.rss", rss(BACKLOG))
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config_text(port, {"world": feed_server.url("/world.rss")},
                               channels=STD_CHANNELS, store=f"'{store}'"), "utf-8")
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    procs.append(d)
    try:
        await d.start()
        await wait_polls(feed_server, "/world.rss", 2)
        status, body = await get(port, "/readyz")
        assert status == 200, body
        proxy.freeze()  # the database stops answering; the connections stay open
        status, body = await get(port, "/readyz")
        assert status == 503 and "store" in body["failing"], body
        assert "no answer within" in body["checks"]["store"]["detail"]
    finally:
        if d.proc is not None and d.proc.returncode is None:
            d.proc.kill()
            await d.proc.wait()
            d.close_log()
        await proxy.stop()
        with contextlib.suppress(Exception):
            await con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await con.close()


async def test_metrics_after_real_polls(
    tmp_path: Path, feed_server: FeedServer, slack_server: SlackServer, env: None,
    procs: list[DaemonProc]
) -> None:
    from datetime import UTC, datetime, timedelta

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "robots.yaml").write_text(ROBOTS.format(ch="slack-news"), "utf-8")
    feed_server.serve("/good.rss", rss(BACKLOG))  # with an ETag: 304 once unchanged
    feed_server.status("/broken.rss", 500)
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config_text(port, {
        "good": feed_server.url("/good.rss"), "broken": feed_server.url("/broken.rss"),
        "down": f"http://127.0.0.1:{free_port()}/nobody.rss",
    }, channels=STD_CHANNELS.replace("audit-file", "audit").replace("email-oncall", "mail")),
        "utf-8")
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    procs.append(d)
    await d.start()
    await wait_polls(feed_server, "/good.rss", 3)
    await wait_polls(feed_server, "/broken.rss", 2)

    # an old item after the baseline: recorded, not alerted, counted
    old = Item(title="Humanoid robots: a look back", link="https://x.example/old",
               guid="https://x.example/old", published=datetime.now(UTC) - timedelta(days=10))
    body = rss([old, *BACKLOG])
    feed_server.set("/good.rss", body)
    await until(lambda: "stale=1" in d.logtext(), "the poll that skipped the old item")
    await wait_polls(feed_server, "/good.rss", 2)
    m = await metrics(port)
    assert sample(m, "monitor_stale_items_skipped_total", feed="good") == 1.0
    assert (sample(m, "monitor_fetched_bytes_total", feed="good") or 0) >= len(body)
    assert (sample(m, "monitor_feed_last_success_timestamp_seconds", feed="good") or 0) > 0
    assert (sample(m, "monitor_poll_errors_total", feed="broken", kind="http") or 0) >= 2
    await until(lambda: "feed=down" in d.logtext(), "a poll of the unreachable feed")
    m = await metrics(port)
    assert (sample(m, "monitor_poll_errors_total", feed="down", kind="connection") or 0) >= 1
    assert sample(m, "monitor_feed_last_success_timestamp_seconds", feed="broken") is None
    assert (sample(m, "monitor_feed_consecutive_failures", feed="broken") or 0) >= 2
    assert (sample(m, "monitor_polls_total", feed="good", result="not-modified") or 0) >= 1

    # good fails for a while, then recovers through a 304: the gauge is back to 0
    feed_server.status("/good.rss", 503)
    await wait_polls(feed_server, "/good.rss", 2)
    for _ in range(200):
        m = await metrics(port)
        if sample(m, "monitor_feed_consecutive_failures", feed="good"):
            break
        await asyncio.sleep(0.05)
    assert (sample(m, "monitor_feed_consecutive_failures", feed="good") or 0) >= 1
    assert (sample(m, "monitor_poll_errors_total", feed="good", kind="http") or 0) >= 1
    before = sample(m, "monitor_polls_total", feed="good", result="not-modified") or 0
    feed_server.serve("/good.rss", body)  # the same body: its ETag matches, 304
    await until(lambda: "feed.recovered" in d.logtext(), "the recovery")
    await wait_polls(feed_server, "/good.rss", 1)
    m = await metrics(port)
    assert (sample(m, "monitor_polls_total", feed="good", result="not-modified") or 0) > before
    assert sample(m, "monitor_feed_consecutive_failures", feed="good") == 0.0

    # the outbox per channel: Slack down, an alert waits
    await slack_server.stop()
    feed_server.set("/good.rss", rss([UNRELATED, old, *BACKLOG]))
    await until(lambda: "delivery.retry" in d.logtext(), "a failed Slack attempt")
    for _ in range(100):
        m = await metrics(port)
        if sample(m, "monitor_outbox_pending", channel="slack-news") == 1.0:
            break
        await asyncio.sleep(0.05)
    assert sample(m, "monitor_outbox_pending", channel="slack-news") == 1.0
    assert sample(m, "monitor_outbox_pending", channel="audit") == 0.0
    assert (sample(m, "monitor_outbox_oldest_pending_age_seconds", channel="slack-news")
            or 0) > 0
    assert (sample(m, "monitor_channel_consecutive_failures", channel="slack-news") or 0) >= 1
    await slack_server.start()
    await until(lambda: len(slack_server.messages) == 1, "the alert once Slack is back")
    assert file_alerts(tmp_path) == []  # the robots rule routes to Slack only
    assert await d.stop() == 0


# -- in process: the Runtime's reload ----------------------------------------------------


async def test_reload_in_process_secrets_restart_only_settings_and_channels(
    tmp_path: Path, feed_server: FeedServer, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from monitor.config import load_config
    from monitor.shell.daemon import Runtime
    from monitor.shell.reload import diff_configs, live_config
    from tests.clock import Clock

    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    feed_server.serve("/a.rss", rss(BACKLOG))
    cfg = tmp_path / "config.yaml"

    def write(audit: str = "${AUDIT_FILE}", extra: str = "") -> None:
        cfg.write_text(f"""
feeds:
  - {{name: a, url: '{feed_server.url("/a.rss")}', interval: 60s}}
rules: rules
store: sqlite:///state.db
channels:
  slack-news: {{type: file, path: alerts.jsonl}}
  email-oncall: {{type: file, path: email.jsonl}}
  audit-file: {{type: file, path: '{audit}'}}
fetch: {{parse_in: thread}}
server: {{enabled: false}}
{extra}
""", encoding="utf-8")

    write()
    start_env = {"AUDIT_FILE": "audit.jsonl"}
    config = load_config(cfg, start_env)
    async with Runtime(config, clock=Clock(), config_path=cfg, env=start_env) as rt:
        audit = rt.dispatcher.notifiers["audit-file"]
        # an empty file (an editor's truncate, caught before its write) is not "no feeds"
        text = cfg.read_text(encoding="utf-8")
        cfg.write_text("", encoding="utf-8")
        assert await rt.reload("test") is False
        assert rt.reload_state["errors"] == [
            f"{cfg}: the file is empty; the running configuration is kept"]
        assert [f.name for f in rt.config.feeds] == ["a"]
        cfg.write_text(text, encoding="utf-8")
        # a variable set in the process's environment after the start is not seen
        monkeypatch.setenv("LATER_FILE", "later.jsonl")
        write(audit="${LATER_FILE}")
        assert await rt.reload("test") is False
        assert rt.reload_state["ok"] is False and rt.reload_state["what"] == "config"
        assert any("LATER_FILE is not set" in e and f"{cfg}:9:" in e
                   for e in rt.reload_state["errors"]), rt.reload_state["errors"]
        assert rt.dispatcher.notifiers["audit-file"] is audit  # nothing changed
        h = await rt.health()
        assert h["status"] == "degraded" and h["reload"]["errors"]

        # settings a restart needs are kept (and said); the others apply at once
        write(audit="other.jsonl", extra="dedup: {window: 1h}\nfetch: {parse_in: thread, "
              "concurrency: 3, timeout: 7s}\ndelivery: {batch: 7}\nretention: 2d\n")
        write_text = cfg.read_text(encoding="utf-8").replace(
            "fetch: {parse_in: thread}\n", "").replace("store: sqlite:///state.db",
                                                       "store: sqlite:///other.db")
        cfg.write_text(write_text, encoding="utf-8")
        with caplog.at_level(logging.INFO, logger="monitor.shell.daemon"):
            assert await rt.reload("test") is True
        assert rt.config.store.url == "sqlite:///state.db" and rt.config.fetch.concurrency == "auto"
        assert rt.concurrency == rt.fetcher.concurrency == 16  # resolved at start, kept
        assert rt.config.dedup.window == 48 * 3600.0
        assert rt.config.fetch.timeout == 7.0 and rt.fetcher.timeout == 7.0
        assert rt.dispatcher.settings.batch == 7 and rt.config.retention == 2 * 86400.0
        events = {r.getMessage(): r for r in caplog.records}
        restart = events["config.needs_restart"].fields["settings"]  # type: ignore[attr-defined]
        assert restart == "fetch.concurrency, dedup.window, store"
        reloaded = events["config.reloaded"].fields  # type: ignore[attr-defined]
        assert reloaded["channels_changed_names"] == "audit-file"
        assert "delivery.batch" in reloaded["settings_names"]
        # the changed channel has a new notifier; the old one is closed
        assert rt.dispatcher.notifiers["audit-file"] is not audit
        await asyncio.gather(*rt.dispatcher._closing)
        assert rt.reload_state["ok"] is True

    # the pure part: what differs, and what a running daemon switches to
    old = load_config(cfg, start_env)
    new = old.model_copy(update={"server": old.server.model_copy(update={"enabled": True})})
    diff = diff_configs(old, new)
    assert diff.restart == ["server.enabled"] and diff.settings == []
    assert live_config(old, new).server == old.server
