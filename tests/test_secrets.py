"""Every credential is a secret (#11): a known secret in every output path, grepped for.

Feed URLs carry a literal password in their user info, a password and query values
from ``${VAR}``, and a permanent redirect to a Location with credentials of its own; the
real daemon runs on them, and its logs (text and JSON), ``/healthz``, ``/metrics``,
``monitor status`` (text and ``--json``), ``monitor once``, ``monitor check`` errors,
fetch errors and the stored problems must never show one. The shown form stays
recognisable: scheme, host, port and path.

And the commands that only read the store work with a channel's variable unset, while
``check``, ``once`` and ``run`` still report it at its file:line:col.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from monitor.config import parse_config, secrets_of
from monitor.redact import display_url, redact_text, template_secrets, url_secrets
from tests.feeds import BACKLOG, rss, seed_item
from tests.peers.feedserver import FeedServer
from tests.test_cli import monitor
from tests.test_daemon import DaemonProc, free_port, health, until

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)

LITERAL_PW = "Lit3ralPw0rd"  # written in config.yaml as is
ENV = {"FEED_PW": "VarPassw0rd", "FEED_KEY": "ApiK3yValue", "FEED_Q": "QueryS3cret",
       "FEED_TOKEN": "T0kenValue"}
REDIRECT_PW = "Redir3ctPw"  # only in a redirect's Location
SECRETS = (LITERAL_PW, *ENV.values(), REDIRECT_PW)


def read(p: Path) -> str:
    return p.read_text(encoding="utf-8")


def write(p: Path, text: str) -> None:
    p.write_text(text, encoding="utf-8")


def assert_no_secret(text: str, where: str) -> None:
    for s in SECRETS:
        assert s not in text, f"{s} in {where}:\n{text}"


# -- the shown form of a URL ------------------------------------------------------------
def test_display_url_masks_user_info_and_credential_query_values() -> None:
    assert display_url("http://u:pw@h.example:8080/a/feed.rss?x=1") == \
        "http://***@h.example:8080/a/feed.rss?x=1"
    assert display_url("https://TOKEN123@h.example/f") == "https://***@h.example/f"
    assert display_url("https://h.example/f?api_key=abc&page=2&Access-Token=t&sig=s") == \
        "https://h.example/f?api_key=***&page=2&Access-Token=***&sig=***"
    # a value known to be a secret (from ${VAR}), whatever its parameter is called
    assert display_url("https://h.example/f?q=hidden-value&lang=en", ["hidden-value"]) == \
        "https://h.example/f?q=***&lang=en"
    # a store URL keeps its user name
    assert display_url("postgresql://mon:pw@db/x", keep_user=True) == "postgresql://mon:***@db/x"
    assert display_url("http://h.example/plain?x=1") == "http://h.example/plain?x=1"


def test_redact_text_finds_urls_and_secrets_in_free_text() -> None:
    text = ("redirect loop at http://bob:pw@h.example/f?token=abc, then "
            "'https://h.example/x?q=s3cret-q' and s3cret-q%21 again")
    out = redact_text(text, ["s3cret-q", "s3cret-q!"])
    assert out == ("redirect loop at http://***@h.example/f?token=***, then "
                   "'https://h.example/x?q=***' and *** again")


def test_secrets_a_url_carries_and_those_var_put_in_it() -> None:
    assert set(url_secrets("http://u:pw1@h/f?apikey=k1&q=1")) == {"pw1", "k1"}
    assert url_secrets("https://tok@h/f") == ["tok"]
    assert url_secrets("postgresql://monitor@db/x", lone_user=False) == []
    t = "http://${U}:${P}@h/${PATHVAR}/f?q=${Q}#${F}"
    subs = [(m, m + len(n), v) for n, v in (("${U}", "u1"), ("${P}", "p1"),
                                            ("${PATHVAR}", "news"), ("${Q}", "q1"),
                                            ("${F}", "f1")) for m in [t.index(n)]]
    assert sorted(template_secrets(t, subs)) == ["f1", "p1", "q1", "u1"]  # not the path


def test_the_config_knows_its_url_secrets_and_never_quotes_them() -> None:
    text = f"""
feeds:
  - {{name: lit, url: 'http://alice:{LITERAL_PW}@h.example/f'}}
  - {{name: var, url: 'http://bob:${{FEED_PW}}@h.example/f?api_key=${{FEED_KEY}}&q=${{FEED_Q}}'}}
  - {{name: whole, url: '${{WHOLE}}'}}
"""
    cfg = parse_config(text, "c.yaml", {**ENV, "WHOLE": f"https://h.example/w?token={ENV['FEED_TOKEN']}"})
    assert set(SECRETS[:-1]) <= set(secrets_of(cfg))
    shown = [cfg.display(f.url) for f in cfg.feeds]
    assert shown == ["http://***@h.example/f", "http://***@h.example/f?api_key=***&q=***",
                     "https://h.example/w?token=***"]
    # an invalid value quoted in a problem: masked
    bad = text.replace("http://bob", "ftp://bob") + "fetch: {concurrency: '${FEED_Q}'}\n"
    with pytest.raises(Exception) as e:
        parse_config(bad, "c.yaml", {**ENV, "WHOLE": "https://h.example/w"})
    assert_no_secret(str(e.value), "the config problems")
    assert "ftp://***@h.example/f?api_key=***&q=***" in str(e.value)


async def test_fetch_errors_never_quote_credentials(feed_server: FeedServer) -> None:
    from monitor.core.model import FetchFailed
    from monitor.shell.fetch import Fetcher

    port = free_port()  # nothing listens there
    base = feed_server.base.replace("http://", f"http://bob:{ENV['FEED_PW']}@")
    feed_server.redirect("/loop.rss", f"/loop.rss?api_key={ENV['FEED_KEY']}")
    feed_server.redirect("/bad.rss", f"ftp://x:{REDIRECT_PW}@h.example/?token={ENV['FEED_TOKEN']}")
    async with Fetcher(user_agent="", connect_timeout=2, timeout=5, max_bytes=1 << 20,
                       max_redirects=3, concurrency=2, per_host=2) as f:
        reasons = []
        for url in (f"http://u:{LITERAL_PW}@127.0.0.1:{port}/x?token={ENV['FEED_TOKEN']}",
                    f"http://u:{LITERAL_PW}@127.0.0.1:99999/x",
                    f"{base}/loop.rss?api_key={ENV['FEED_KEY']}",
                    f"{base}/bad.rss"):
            r = await f.fetch(url, etag=None, last_modified=None)
            assert isinstance(r, FetchFailed), r
            reasons.append(r.reason)
    text = "\n".join(reasons)
    assert_no_secret(text, "the fetch reasons")
    assert f"redirect loop at http://***@{feed_server.base[7:]}/loop.rss?api_key=***" in text


def test_log_lines_mask_secrets_in_text_and_json(caplog: pytest.LogCaptureFixture) -> None:
    from monitor.log import JsonFormatter, TextFormatter, redact

    odd = 'pa"ss\\w0rd'  # JSON escapes it: the escaped form is masked too
    redact(odd)
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "feed.failed", None, None)
    record.fields = {"error": f"at http://u:{LITERAL_PW}@h.example/f?sig=abc", "pw": odd}
    for fmt in (TextFormatter(), JsonFormatter()):
        line = fmt.format(record)
        assert LITERAL_PW not in line and "abc" not in line and "w0rd" not in line, line
        assert "http://***@h.example/f?sig=***" in line


# -- a real daemon, every output path ---------------------------------------------------
@pytest.fixture
def secret_config(tmp_path: Path, feed_server: FeedServer, monkeypatch: pytest.MonkeyPatch
                  ) -> Path:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    hostport = feed_server.base[len("http://"):]
    # a redirect loop: its reason quotes the URL, credentials included
    feed_server.redirect("/lit.rss", "/lit.rss")
    feed_server.redirect(
        "/var.rss", f"/var.rss?api_key={ENV['FEED_KEY']}&q={ENV['FEED_Q']}&lang=en")
    # a permanent redirect to a Location with credentials of its own
    feed_server.redirect(
        "/old.rss", f"http://erin:{REDIRECT_PW}@{hostport}/new.rss?token={ENV['FEED_TOKEN']}")
    feed_server.serve("/new.rss", rss(BACKLOG))
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    config = tmp_path / "config.yaml"
    config.write_text(f"""
feeds:
  - {{name: lit, interval: 0.3s, url: 'http://alice:{LITERAL_PW}@{hostport}/lit.rss'}}
  - name: var
    interval: 0.3s
    url: 'http://bob:${{FEED_PW}}@{hostport}/var.rss?api_key=${{FEED_KEY}}&q=${{FEED_Q}}&lang=en'
  - {{name: moved, interval: 0.3s, url: 'http://{hostport}/old.rss?token=${{FEED_TOKEN}}'}}
defaults: {{jitter: 0}}
store: sqlite:///state.db
channels:
  slack-news: {{type: file, path: slack.jsonl}}
  email-oncall: {{type: file, path: email.jsonl}}
  audit-file: {{type: file, path: audit.jsonl}}
fetch: {{parse_in: thread}}
server: {{listen: '127.0.0.1:{free_port()}'}}
""", encoding="utf-8")
    return config


async def test_no_output_of_the_daemon_shows_a_credential(
    secret_config: Path, feed_server: FeedServer
) -> None:
    tmp = secret_config.parent
    hostport = feed_server.base[len("http://"):]
    port = int(read(secret_config).split("listen: '127.0.0.1:")[1].split("'")[0])
    d = DaemonProc(secret_config, tmp / "daemon.log")
    await d.start()
    try:
        await until(lambda: "feed.moved" in d.logtext() and feed_server.hits("/new.rss") >= 2
                    and d.logtext().count("redirect loop") >= 2, "the redirect and the loops")
        h = await health(port)
        assert h is not None and h["status"] == "degraded"
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
            metrics = await r.text()
        assert 'monitor_polls_total{feed="var",result="failed"}' in metrics
    finally:
        assert await d.stop() == 0
    log = d.logtext()
    assert_no_secret(log, "the text log")
    assert_no_secret(json.dumps(h), "/healthz")
    assert_no_secret(metrics, "/metrics")
    # recognisable: host, port and path
    moved = next(line for line in log.splitlines() if "feed.moved" in line)
    assert f'old="http://{hostport}/old.rss?token=***"' in moved, moved
    assert f'new="http://***@{hostport}/new.rss?token=***"' in moved, moved
    assert f"redirect loop at http://***@{hostport}/lit.rss" in log
    errors = {f["feed"]: f["error"] for f in h["feeds"]["failing"]}
    assert errors["var"] == (f"redirect loop at http://***@{hostport}/var.rss"
                             "?api_key=***&q=***&lang=en"), errors
    assert f'url="http://***@{hostport}/var.rss?api_key=***&q=***&lang=en"' in log  # fetch.done

    # the store keeps the real URL (to fetch it), never a credential in a problem
    with sqlite3.connect(tmp / "state.db") as db:
        rows = dict(db.execute("SELECT name, url FROM feeds").fetchall())
        problems = " ".join(str(r) for r in db.execute("SELECT last_error, problem FROM feeds"))
    assert ENV["FEED_PW"] in rows["var"] and REDIRECT_PW in rows["moved"]
    assert_no_secret(problems, "the stored problems")

    rc, out, err = await monitor("status", cwd=tmp)
    assert rc == 0, err
    assert_no_secret(out + err, "monitor status")
    assert f"redirect loop at http://***@{hostport}/lit.rss" in out
    rc, out, err = await monitor("status", "--json", cwd=tmp)
    assert rc == 0, err
    assert_no_secret(out + err, "monitor status --json")
    urls = {f["name"]: f["url"] for f in json.loads(out)["feeds"]}
    assert urls == {"lit": f"http://***@{hostport}/lit.rss",
                    "var": f"http://***@{hostport}/var.rss?api_key=***&q=***&lang=en",
                    "moved": f"http://***@{hostport}/new.rss?token=***"}


async def test_once_json_logs_show_no_credential(secret_config: Path,
                                                 feed_server: FeedServer) -> None:
    tmp = secret_config.parent
    rc, out, err = await monitor("once", "--log-level", "debug", cwd=tmp)
    assert rc == 0, err
    assert_no_secret(out + err, "monitor once")
    assert "redirect loop at http://***@" in out
    rc, out, err = await monitor("once", "--log-format", "json", "--log-level", "debug",
                                 "--json", cwd=tmp)
    assert rc == 0, err
    assert_no_secret(out + err, "monitor once --json --log-format json")
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(x.get("event") == "fetch.done" and "/var.rss?api_key=***" in x["url"]
               for x in lines), err
    assert "redirect loop at http://***@" in out


async def test_check_errors_show_no_credential(secret_config: Path) -> None:
    text = read(secret_config).replace("url: 'http://bob", "url: 'ftp://bob")
    text = text.replace("fetch: {parse_in: thread}", "fetch: {parse_in: thread, "
                        "concurrency: '${FEED_KEY}'}")
    write(secret_config, text)
    for args in (("check",), ("check", "--json"), ("status",), ("run",)):
        rc, out, err = await monitor(*args, cwd=secret_config.parent)
        assert rc == 1
        assert_no_secret(out + err, " ".join(args))
        assert "ftp://***@127.0.0.1:" in out + err and "/var.rss?api_key=***&q=***" in out + err


# -- the commands that only read the store do not need the channels' secrets -----------
async def test_read_only_commands_work_with_a_channel_variable_unset(
    secret_config: Path, feed_server: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = secret_config.parent
    feed_server.set("/new.rss", rss([seed_item(), *BACKLOG]))
    rc, _, err = await monitor("once", cwd=tmp)
    assert rc == 0, err
    monkeypatch.delenv("TEST_UNSET_HOOK", raising=False)
    monkeypatch.delenv("TEST_UNSET_PW", raising=False)
    text = read(secret_config).replace(
        "  slack-news: {type: file, path: slack.jsonl}\n",
        "  slack-news: {type: slack, webhook_url: '${TEST_UNSET_HOOK}'}\n"
        "  mail: {type: email, host: 127.0.0.1, from: a@example.org, to: b@example.org,\n"
        "         username: me, password: '${TEST_UNSET_PW}'}\n")
    write(secret_config, text)
    rc, out, err = await monitor("stories", "list", "--json", cwd=tmp)
    assert rc == 0, err
    cluster = json.loads(out)[0]["id"]
    story = json.dumps({"title": "Witkoff and Putin", "summary": "sanctions deadline"})
    for args in (("status",), ("status", "--json"), ("stories", "list"),
                 ("stories", "show", cluster), ("stories", "explain", story, story),
                 ("outbox", "retry"), ("outbox", "retry", "--channel", "slack-news"),
                 ("backtest", "--since", "30d"), ("rules", "test", "--title", "Putin")):
        rc, out, err = await monitor(*args, cwd=tmp)
        assert rc in (0, 1) and "TEST_UNSET" not in err and "error" not in err.lower(), (
            args, rc, out, err)
        if args[0] != "rules":
            assert rc == 0, (args, out, err)
    # the commands that send still need them: one error per variable, located
    lines = text.splitlines()
    hook = next(i for i, line in enumerate(lines, 1) if "TEST_UNSET_HOOK" in line)
    pw = next(i for i, line in enumerate(lines, 1) if "TEST_UNSET_PW" in line)
    for args in (("check",), ("once",), ("run",)):
        rc, out, err = await monitor(*args, cwd=tmp)
        assert rc == 1, (args, out, err)
        assert err.count("environment variable TEST_UNSET_HOOK is not set") == 1, err
        assert err.count("environment variable TEST_UNSET_PW is not set") == 1, err
        assert f"config.yaml:{hook}:" in err and f"config.yaml:{pw}:" in err, err
    # the store's variables are still needed to read it
    write(secret_config, text.replace("store: sqlite:///state.db",
                                      "store: '${TEST_UNSET_STORE}'"))
    rc, _, err = await monitor("status", cwd=tmp)
    assert rc == 1 and "TEST_UNSET_STORE is not set" in err and "TEST_UNSET_HOOK" not in err


def test_a_channel_left_unresolved_is_never_sent_to() -> None:
    from monitor.errors import ConfigError, MonitorError
    from monitor.notify.registry import build_notifiers

    text = ("channels:\n  s: {type: slack, webhook_url: '${TEST_UNSET_HOOK}'}\n"
            "defaults: {channels: [s]}\n")
    cfg = parse_config(text, "c.yaml", {}, channel_secrets=False)
    assert sorted(cfg.channels) == ["s"] and cfg.unresolved_channels == {"s"}
    with pytest.raises(MonitorError, match="not resolved"):
        build_notifiers(cfg)
    with pytest.raises(ConfigError) as e:
        parse_config(text, "c.yaml", {})
    assert [p.message.split(" (")[0] for p in e.value.problems] == [
        "environment variable TEST_UNSET_HOOK is not set"]
