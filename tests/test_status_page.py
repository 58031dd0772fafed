"""The status page (``GET /``): what a person sees, in a real headless Chromium.

* against a running daemon (``monitor run`` as a process) bound to 0.0.0.0 with
  ``server.auth``: a feed that 404s, an alert whose Slack delivery failed (the peer
  answers ``invalid_auth``), the rule's hit counts, no secret anywhere in the page source;
  401 without the token, 200 with it; ``/healthz`` and ``/readyz`` open to probes;
* on loopback without auth, in process: the page is open, and escapes what feeds say;
* a non-loopback listen without auth is refused by ``monitor check`` and ``monitor run``,
  with the file, line and column;
* the pieces: relative times, credential checks, the grouping of deliveries into alerts.

The browser tests skip, with the reason, where Chromium and chromedriver are absent
(``make test`` installs them with apt where it can).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import monitor
from monitor.config import ServerAuth, parse_config
from monitor.core.model import FeedState
from monitor.shell.daemon import Runtime
from monitor.shell.rulefiles import load_rules
from monitor.shell.server import Server, authorized
from monitor.shell.status import StatusData, StatusPage, alert_rows, render, status_view, when
from monitor.store.base import DeliveryStatus
from tests.browser import browser_unavailable, chromium, send_header
from tests.feeds import BACKLOG, rss, seed_item
from tests.peers.feedserver import FeedServer
from tests.peers.slackserver import SlackServer
from tests.test_cli import monitor as run_monitor
from tests.test_daemon import DaemonProc, free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)

FEED_TOKEN = "feedtok-9f8e7d6c5b"  # in a feed URL's query
FEED_PASSWORD = "pw-0a1b2c3d4e"  # in a feed URL's user info
STATUS_TOKEN = "status-tok-5d4c3b2a1f"
SLACK_TOKEN = "xoxb-revoked-1234567890"  # the Slack peer does not know it: invalid_auth
SECRETS = (FEED_TOKEN, FEED_PASSWORD, STATUS_TOKEN, SLACK_TOKEN)


def needs_browser() -> None:
    reason = browser_unavailable()
    if reason:
        pytest.skip(f"no headless browser: {reason}")


def write_config(tmp: Path, feeds: FeedServer, slack: SlackServer, *, listen: str,
                 auth: bool) -> Path:
    shutil.copytree(ROOT / "rules", tmp / "rules", dirs_exist_ok=True)
    feeds.serve("/world.rss", rss([seed_item(), *BACKLOG]))
    host = feeds.url("/").split("://", 1)[1].rstrip("/")
    server_auth = "  auth:\n    token: ${MONITOR_STATUS_TOKEN}\n" if auth else ""
    config = tmp / "config.yaml"
    config.write_text(f"""
feeds:
  - name: world
    url: http://{host}/world.rss?token=${{FEED_TOKEN}}
    interval: 0.5s
    alert_on_first_poll: true
  - name: retired-desk
    url: http://reader:${{FEED_PASSWORD}}@{host}/gone.rss
    interval: 0.5s
defaults:
  jitter: 0
rules: rules
store: sqlite:///state.db
channels:
  slack-news:
    type: slack
    token: ${{SLACK_TOKEN}}
    channel: '#news'
    base_url: {slack.api_base_url}
    timeout: 5s
  email-oncall:
    type: file
    path: email.jsonl
  audit-file:
    type: file
    path: alerts.jsonl
delivery:
  retry_min: 0.2s
  retry_max: 0.5s
fetch:
  parse_in: thread
server:
  listen: '{listen}'
{server_auth}""", encoding="utf-8")
    return config


ENV = {"FEED_TOKEN": FEED_TOKEN, "FEED_PASSWORD": FEED_PASSWORD,
       "MONITOR_STATUS_TOKEN": STATUS_TOKEN, "SLACK_TOKEN": SLACK_TOKEN}


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as s, s.get(
            url, headers=headers or {}, timeout=aiohttp.ClientTimeout(total=10)) as r:
        return r.status, await r.text(), r.headers


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret ({secret[:6]}…) is on the page"


# -- against a running daemon, in Chromium ---------------------------------------------------


@pytest.fixture
async def daemon(tmp_path: Path, feed_server: FeedServer, slack_server: SlackServer,
                 secret_env: None) -> AsyncIterator[tuple[DaemonProc, int]]:
    port = free_port()
    config = write_config(tmp_path, feed_server, slack_server, listen=f"0.0.0.0:{port}",
                          auth=True)
    d = DaemonProc(config, tmp_path / "daemon.log")
    await d.start()
    try:
        yield d, port
    finally:
        if d.proc is not None and d.proc.returncode is None:
            await d.stop()
        assert_no_secret(d.logtext())


async def test_the_page_of_a_running_daemon_in_chromium(
        daemon: tuple[DaemonProc, int], feed_server: FeedServer) -> None:
    d, port = daemon
    base = f"http://127.0.0.1:{port}"
    bearer = {"Authorization": f"Bearer {STATUS_TOKEN}"}
    page: dict[str, str] = {}

    async def seen() -> bool:
        try:
            status, text, _ = await get(base + "/", bearer)
        except aiohttp.ClientError:
            return False
        page["text"] = text
        return status == 200 and "invalid_auth" in text and "HTTP 404" in text

    async def ready() -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + 60
        while not await seen():
            assert loop.time() < end, f"the page never showed both failures:\n{d.logtext()}"
            await asyncio.sleep(0.2)

    await ready()

    # the probes stay open; the page and the metrics ask for the token
    assert (await get(base + "/healthz"))[0] == 200
    assert (await get(base + "/readyz"))[0] == 200
    status, _, headers = await get(base + "/")
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="monitor"'
    assert (await get(base + "/metrics"))[0] == 401
    assert (await get(base + "/", {"Authorization": "Bearer wrong"}))[0] == 401
    assert (await get(base + "/metrics", bearer))[0] == 200
    assert_no_secret(page["text"])

    needs_browser()  # what a person sees, from here on
    from selenium.webdriver.common.by import By

    def look() -> dict[str, Any]:
        with chromium() as browser:
            browser.get(base + "/")  # no token
            out: dict[str, Any] = {"denied": browser.find_element(By.TAG_NAME, "body").text}
            send_header(browser, "Authorization", f"Bearer {STATUS_TOKEN}")
            browser.get(base + "/")
            out["title"] = browser.title
            out["source"] = browser.page_source
            out["status"] = browser.find_element(By.ID, "status").text
            out["version"] = browser.find_element(By.ID, "version").text
            out["refresh"] = browser.find_element(
                By.CSS_SELECTOR, 'meta[http-equiv="refresh"]').get_attribute("content")
            out["feeds"] = {
                row.get_attribute("data-feed"): [c.text for c in
                                                 row.find_elements(By.TAG_NAME, "td")]
                for row in browser.find_elements(By.CSS_SELECTOR, "#feeds tr[data-feed]")}
            alert = browser.find_element(
                By.CSS_SELECTOR, '#alerts tr[data-rule="sanctions-deadline"]')
            out["alert"] = alert.text
            out["alert_deliveries"] = {
                li.get_attribute("data-channel"): li.text
                for li in alert.find_elements(By.CSS_SELECTOR, "li[data-channel]")}
            rule = browser.find_element(By.CSS_SELECTOR, '#rules tr[data-rule="sanctions-deadline"]')
            out["hits"] = (rule.find_element(By.CLASS_NAME, "hits-day").text,
                           rule.find_element(By.CLASS_NAME, "hits-week").text)
            out["channels"] = {
                row.get_attribute("data-channel"): row.text
                for row in browser.find_elements(By.CSS_SELECTOR, "#channels tr[data-channel]")}
            out["problems"] = browser.find_element(By.ID, "problems").text
            return out

    seen_page = await asyncio.to_thread(look)

    assert "401" in seen_page["denied"] and "sanctions" not in seen_page["denied"]
    assert seen_page["title"] == "monitor: degraded" and seen_page["status"] == "degraded"
    assert seen_page["version"] == monitor.__version__
    assert seen_page["refresh"] == "30"
    # the failing feed: its row, its state and its problem in words
    name, state, _last, failures, _next, problem = seen_page["feeds"]["retired-desk"]
    assert state == "failing" and int(failures) >= 1 and "HTTP 404" in problem, seen_page["feeds"]
    assert "reader:***@" not in name and "***@127.0.0.1" in name  # the URL, credentials masked
    world = seen_page["feeds"]["world"]
    assert world[1] == "ok" and "token=***" in world[0] and world[5] == ""
    assert "1 feed(s) failing" in seen_page["problems"]
    # the alert, and each channel's delivery: Slack failed with the peer's error
    assert "Witkoff" in seen_page["alert"] and "update:" not in seen_page["alert"]
    slack = seen_page["alert_deliveries"]["slack-news"]
    assert "failed" in slack and "invalid_auth" in slack, slack
    assert "sent" in seen_page["alert_deliveries"]["audit-file"]
    assert "sent" in seen_page["alert_deliveries"]["email-oncall"]
    assert seen_page["hits"] == ("1", "1")
    assert "failing" in seen_page["channels"]["slack-news"]
    assert "invalid_auth" in seen_page["channels"]["slack-news"]
    assert "ok" in seen_page["channels"]["audit-file"]
    assert_no_secret(seen_page["source"])
    assert_no_secret(page["text"])
    assert "<script" not in seen_page["source"].lower()  # nothing to run: no JavaScript


# -- in process: loopback without auth, escaping ---------------------------------------------


async def test_on_loopback_the_page_is_open_and_escapes_what_feeds_say(
        tmp_path: Path, feed_server: FeedServer, slack_server: SlackServer,
        secret_env: None) -> None:
    config = parse_config(
        write_config(tmp_path, feed_server, slack_server, listen="127.0.0.1:0", auth=False)
        .read_text(), str(tmp_path / "config.yaml"), dict(os.environ))
    feed_server.serve("/world.rss", rss([seed_item(), *BACKLOG],
                                        title="<script>alert('feed')</script>"))
    async with Runtime(config) as rt:
        await rt.poll_all()
        await rt.drain()
        # a hostile error text, as a feed could make one
        [world] = [f for f in await rt.store.get_feeds() if f.name == "world"]
        from dataclasses import replace
        await rt.store.save_feed(replace(world, problem="<img src=x onerror=alert(1)> & co"))
        server = Server("127.0.0.1:0", rt.metrics, rt.health, page=StatusPage(rt).render)
        await server.start()
        try:
            url = f"http://127.0.0.1:{server.port}/"
            status, text, headers = await get(url)
            assert status == 200 and headers["Content-Type"].startswith("text/html")
            assert "default-src 'none'" in headers["Content-Security-Policy"]
            assert "&lt;img src=x onerror=alert(1)&gt; &amp; co" in text
            assert "<img" not in text
            assert (await get(url.rstrip("/") + "/metrics"))[0] == 200  # no auth set
            assert_no_secret(text)
            if browser_unavailable() is None:
                from selenium.webdriver.common.by import By

                def look() -> str:
                    with chromium() as browser:
                        browser.get(url)
                        row = browser.find_element(By.CSS_SELECTOR, '#feeds tr[data-feed="world"]')
                        return str(row.text)

                row = await asyncio.to_thread(look)
                assert "<img src=x onerror=alert(1)> & co" in row, row
        finally:
            await server.stop()


# -- refusing a server open to the network ----------------------------------------------------


async def test_check_and_run_refuse_a_non_loopback_listen_without_auth(
        tmp_path: Path, feed_server: FeedServer, slack_server: SlackServer,
        secret_env: None) -> None:
    config = write_config(tmp_path, feed_server, slack_server, listen="0.0.0.0:9464", auth=False)
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1)
                if "0.0.0.0:9464" in text)
    where = f"{config}:{line}:11: server.listen: 0.0.0.0:9464 is not a loopback address"
    rc, _, err = await run_monitor("check", "--config", str(config), cwd=tmp_path)
    assert rc == 1 and where in err, err
    rc, out, err = await run_monitor("run", "--config", str(config), cwd=tmp_path)
    assert rc != 0 and where in out + err, out + err
    assert not (tmp_path / "state.db").exists()  # refused before anything started


async def test_the_server_itself_refuses_to_serve_the_network_without_auth() -> None:
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    from monitor.errors import MonitorError
    from monitor.metrics import Metrics

    async def page() -> str:
        return "<p>status</p>"

    with pytest.raises(MonitorError, match=r"without server\.auth"):
        await Server("0.0.0.0:0", Metrics(), health, page=page).start()
    s = Server("127.0.0.2:0", Metrics(), health, page=page)  # any 127/8 address is loopback
    try:
        await s.start()
    except Exception as e:  # no such address here: not what this test is about
        pytest.skip(f"cannot bind 127.0.0.2: {e}")
    await s.stop()


# -- the pieces ---------------------------------------------------------------------------


def test_credentials_are_checked_by_scheme() -> None:
    token = ServerAuth(token="t0k3n")
    basic = ServerAuth(user="ops", password="pa:ss")
    both = ServerAuth(token="t0k3n", user="ops", password="pa:ss")

    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    assert authorized("Bearer t0k3n", token) and authorized("bearer  t0k3n ", token)
    assert not authorized("Bearer t0k3", token) and not authorized(None, token)
    assert not authorized(f"Basic {b64('ops:t0k3n')}", token)
    assert authorized(f"Basic {b64('ops:pa:ss')}", basic)  # a colon in the password
    assert not authorized(f"Basic {b64('ops:pa')}", basic)
    assert not authorized(f"Basic {b64('op:pa:ss')}", basic)
    assert not authorized("Basic !!notbase64", basic) and not authorized("Bearer t0k3n", basic)
    assert authorized("Bearer t0k3n", both) and authorized(f"Basic {b64('ops:pa:ss')}", both)


def test_times_are_shown_relative_with_the_exact_time_beside() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert when(None, now) is None
    assert when(now, now) == {"text": "now", "iso": "2026-03-01 12:00:00 UTC"}
    cases = {-30: "30 s ago", 20: "in 20 s", -600: "10 min ago", 7200: "in 2 h",
             -3 * 86400: "3 d ago"}
    for secs, text in cases.items():
        got = when(now + timedelta(seconds=secs), now)
        assert got is not None and got["text"] == text, (secs, got)


def status(key: str, channel: str, state: str, *, rule: str = "r1", cluster: str = "c1",
           minutes: float = 0, attempts: int = 1, error: str | None = None,
           parent: str | None = None) -> DeliveryStatus:
    t = datetime(2026, 3, 1, 12, 0, tzinfo=UTC) + timedelta(minutes=minutes)
    return DeliveryStatus(id=abs(hash(key)) % 10**6, key=key, channel=channel, state=state,
                          attempts=attempts, created=t, next_attempt=None,
                          sent_at=t if state == "sent" else None, last_error=error, ref=None,
                          rule=rule, cluster=cluster, parent_key=parent, title=f"story {cluster}")


def test_deliveries_are_grouped_into_alerts_newest_first() -> None:
    now = datetime(2026, 3, 1, 13, 0, tzinfo=UTC)
    rows = alert_rows([
        status("u:c1:r1:slack:2", "slack", "pending", minutes=30, attempts=0, parent="a:c1:r1:slack"),
        status("a:c2:r1:slack", "slack", "failed", cluster="c2", minutes=20, error="invalid_auth"),
        status("a:c2:r1:file", "file", "sent", cluster="c2", minutes=20),
        status("a:c1:r1:slack", "slack", "sent", minutes=10),
        status("a:c1:r1:file", "file", "pending", minutes=10, error="disk full"),
        status("a:c1:r2:file", "file", "sent", rule="r2", minutes=10),
    ], now, str)
    shown = [(r["title"], r["rule"], r["is_update"], r["state"],
              [(d["channel"], d["state"], d["error"]) for d in r["deliveries"]]) for r in rows]
    assert shown == [
        ("story c1", "r1", True, "pending", [("slack", "pending", None)]),
        ("story c2", "r1", False, "failed", [("file", "sent", None),
                                             ("slack", "failed", "invalid_auth")]),
        ("story c1", "r1", False, "retrying", [("file", "retrying", "disk full"),
                                               ("slack", "sent", None)]),
        ("story c1", "r2", False, "sent", [("file", "sent", None)]),
    ]
    assert len(alert_rows([status(f"a:c{i}:r1:s", "s", "sent", cluster=f"c{i}")
                           for i in range(50)], now, str, limit=5)) == 5


def test_the_page_shows_reload_errors_and_hides_secrets_in_errors(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    config = parse_config(
        "feeds:\n  - {name: w, url: 'https://u:${PW}@feeds.example/w.rss'}\nrules: rules\n"
        "channels:\n  slack-news: {type: file, path: a}\n  email-oncall: {type: file, path: b}\n"
        "  audit-file: {type: file, path: c}\n", str(tmp_path / "c.yaml"), {"PW": FEED_PASSWORD})
    rules = load_rules(config.rules_path, channels=list(config.channels), feeds=["w"])
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    feed = FeedState(name="w", url=config.feeds[0].url, configured_url=config.feeds[0].url,
                     failures=3, last_polled=now, polls=5,
                     last_error=f"HTTP 401 from https://u:{FEED_PASSWORD}@feeds.example/w.rss")
    health = {"status": "degraded", "reasons": ["the last rules reload failed"],
              "rules": {"error": "x.yaml:3:5: unknown actor 'nobody'", "error_at": "12:00"},
              "outbox": {"pending": 2}}
    html = render(status_view(config, StatusData(
        now=now, health=health, feeds=[feed], deliveries=[], rules=rules,
        hits_day={"sanctions-deadline": 4}, hits_week={"sanctions-deadline": 9})))
    assert FEED_PASSWORD not in html
    assert re.search(r"HTTP 401 from https://(u:)?\*\*\*@feeds.example/w.rss</td>", html), html
    assert "The last rules reload failed" in html and "unknown actor &#39;nobody&#39;" in html
    assert "outbox: 2 pending" in html
    assert '<td class="num hits-day">4</td>' in html and '<td class="num hits-week">9</td>' in html
