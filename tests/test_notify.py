"""One shared suite over every notifier (Slack webhook, Slack bot, email, file), each
pointed at a real local peer, plus notifier-specific tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.config import EmailChannel, FileChannel, SlackChannel, parse_config
from monitor.core.model import Alert, Match, SendFailed, Sent, Story
from monitor.notify.base import Notifier
from monitor.notify.email import EmailNotifier
from monitor.notify.file import FileNotifier
from monitor.notify.ratelimit import RateLimiter
from monitor.notify.registry import build_notifiers
from monitor.notify.render import email_subject
from monitor.notify.slack import SlackNotifier
from tests.peers.slackserver import SlackServer
from tests.peers.smtpserver import SMTPServer

TITLE = "Acme breach confirmed by regulator"
LINK = "https://news.example.com/story/1?x=1&y=2"
SMTP_USER, SMTP_PASS = "monitor", "s3cret-smtp-pass"


def make_alert(
    title: str = TITLE, link: str = LINK, *, update: bool = False, sources: int = 1
) -> Alert:
    story = Story(
        id="https://news.example.com/story/1",
        feed="example-news",
        title=title,
        link=link,
        summary="The regulator confirmed that Acme lost customer data.",
        published=datetime(2024, 5, 1, 13, 45, tzinfo=UTC),
        first_seen=datetime(2024, 5, 1, 13, 50, tzinfo=UTC),
    )
    match = Match(
        rule="breaches", severity="high", channels=("ch",), terms=("breach",), actors=("Acme",)
    )
    names = tuple(f"source-{i}" for i in range(sources))
    return Alert(
        story=story, match=match, cluster="cl-1", sources=sources, source_names=names, update=update
    )


# --------------------------------------------------------------------------- harnesses


class Harness:
    """A notifier and its peer, with the same verbs for every kind."""

    kind: str
    notifier: Any
    secrets: tuple[str, ...] = ()
    threads: bool = False  # updates carry the parent's ref

    def received(self) -> list[tuple[str, str]]:
        """(text that shows the headline, text that holds the link) per delivered message."""
        raise NotImplementedError

    async def make_transient(self) -> None:
        """The next send meets a transient problem (429 / 451 / unwritable)."""
        raise NotImplementedError

    async def make_down(self) -> None:
        raise NotImplementedError

    async def make_up(self) -> None:
        raise NotImplementedError

    def permanent(self) -> Any:
        """A notifier whose sends fail permanently, or None when the kind has no such case."""
        return None

    def thread_of(self, i: int) -> str | None:
        """The parent ref the i-th delivered message carries (thread_ts / In-Reply-To)."""
        return None


class SlackHarness(Harness):
    threads = True

    def __init__(self, server: SlackServer, webhook: bool) -> None:
        self.server = server
        self.kind = "slack-webhook" if webhook else "slack-bot"
        if webhook:
            self.cfg = SlackChannel(type="slack", webhook_url=server.webhook_url, rate=1000)
            self.secrets = (server.webhook_url, "secretpath")
            self.threads = False
        else:
            self.cfg = SlackChannel(
                type="slack",
                token=server.token,
                channel="#news",
                base_url=server.api_base_url,
                rate=1000,
            )
            self.secrets = (server.token,)
        self.notifier = SlackNotifier("slack", self.cfg)

    def received(self) -> list[tuple[str, str]]:
        return [
            (m["text"], json.dumps(m["blocks"], ensure_ascii=False)) for m in self.server.messages
        ]

    async def make_transient(self) -> None:
        self.server.fail_next(1, status=429, retry_after=7)

    async def make_down(self) -> None:
        await self.server.stop()

    async def make_up(self) -> None:
        await self.server.start()

    def permanent(self) -> Any:
        if self.cfg.webhook_url:
            url = self.server.webhook_url.replace("/webhook/", "/webhook/gone/")
            return SlackNotifier("slack", SlackChannel(type="slack", webhook_url=url, rate=1000))
        cfg = self.cfg.model_copy(update={"token": "xoxb-wrong-token"})
        return SlackNotifier("slack", cfg)

    def thread_of(self, i: int) -> str | None:
        m = self.server.messages[i]
        # a bot's Sent.ref is "<channel ID>/<ts>"; the reply names its parent's ts
        return None if m["thread_ts"] is None else f"{m['channel_id']}/{m['thread_ts']}"


class EmailHarness(Harness):
    kind = "email"
    threads = True
    secrets = (SMTP_PASS,)

    def __init__(self, server: SMTPServer) -> None:
        self.server = server
        server.stop()
        server.credentials = (SMTP_USER, SMTP_PASS)
        server.start()
        self.cfg = EmailChannel.model_validate(
            {
                "type": "email",
                "host": server.host,
                "port": server.port,
                "security": "none",
                "username": SMTP_USER,
                "password": SMTP_PASS,
                "from": "monitor@alerts.example.org",
                "to": ["ops@example.org"],
                "timeout": 5,
                "rate": 1000,
            }
        )
        self.notifier = EmailNotifier("mail", self.cfg)

    def received(self) -> list[tuple[str, str]]:
        out = []
        for m in self.server.messages:
            html = m.message.get_body(("html",))
            assert html is not None
            out.append((str(m.message["Subject"]), html.get_content()))
        return out

    async def make_transient(self) -> None:
        self.server.fail_next_data(1, "451 4.3.0 Try again later")

    async def make_down(self) -> None:
        self.server.stop()

    async def make_up(self) -> None:
        self.server.start()

    def permanent(self) -> Any:
        self.server.reject_rcpt = {"ops@example.org": "550 5.1.1 No such user"}
        return self.notifier

    def thread_of(self, i: int) -> str | None:
        v = self.server.messages[i].message["In-Reply-To"]
        return None if v is None else str(v)


class FileHarness(Harness):
    kind = "file"

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "out"
        self.cfg = FileChannel(type="file", path="out/alerts.jsonl", rate=1000)
        self.notifier = FileNotifier("file", self.cfg, base_dir=tmp)

    def received(self) -> list[tuple[str, str]]:
        path = self.dir / "alerts.jsonl"
        if not path.is_file():
            return []
        records = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()]
        return [(r["title"], r["link"]) for r in records]

    async def make_transient(self) -> None:
        # the directory is taken by a file: writing fails until it is removed
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "alerts.jsonl").mkdir()

    async def make_down(self) -> None:
        await self.make_transient()

    async def make_up(self) -> None:
        (self.dir / "alerts.jsonl").rmdir()


KINDS = ["slack-webhook", "slack-bot", "email", "file"]


@pytest.fixture(params=KINDS)
async def harness(
    request: pytest.FixtureRequest,
    slack_server: SlackServer,
    smtp_server: SMTPServer,
    tmp_path: Path,
) -> AsyncIterator[Harness]:
    kind = request.param
    h: Harness
    if kind.startswith("slack"):
        h = SlackHarness(slack_server, webhook=kind == "slack-webhook")
    elif kind == "email":
        h = EmailHarness(smtp_server)
    else:
        h = FileHarness(tmp_path)
    try:
        yield h
    finally:
        await h.notifier.close()


# --------------------------------------------------------------------------- shared suite


async def test_is_a_notifier(harness: Harness) -> None:
    assert isinstance(harness.notifier, Notifier)


async def test_sent_alert_arrives_once_with_headline_and_link(harness: Harness) -> None:
    result = await harness.notifier.send(make_alert())
    assert isinstance(result, Sent), result
    got = harness.received()
    assert len(got) == 1
    headline, body = got[0]
    assert TITLE in headline
    assert LINK in body or LINK.replace("&", "&amp;") in body


async def test_transient_failure_says_retry(harness: Harness) -> None:
    await harness.make_transient()
    result = await harness.notifier.send(make_alert())
    assert isinstance(result, SendFailed)
    assert result.retry is True
    if harness.kind.startswith("slack"):
        assert result.retry_after == 7  # the 429's Retry-After
    assert harness.received() == []
    if harness.kind == "file":
        await harness.make_up()
    assert isinstance(await harness.notifier.send(make_alert()), Sent)
    assert len(harness.received()) == 1


async def test_peer_down_is_retryable_and_reason_has_no_secret(harness: Harness) -> None:
    await harness.make_down()
    result = await harness.notifier.send(make_alert())
    assert isinstance(result, SendFailed)
    assert result.retry is True
    assert result.reason
    for secret in harness.secrets:
        assert secret not in result.reason
    await harness.make_up()
    assert isinstance(await harness.notifier.send(make_alert()), Sent)
    assert len(harness.received()) == 1


async def test_permanent_failure_is_not_retried(harness: Harness) -> None:
    notifier = harness.permanent()
    if notifier is None:
        pytest.skip(f"{harness.kind}: no permanent failure mode (I/O errors may heal)")
    try:
        result = await notifier.send(make_alert())
    finally:
        await notifier.close()
    assert isinstance(result, SendFailed)
    assert result.retry is False
    for secret in harness.secrets:
        assert secret not in result.reason
    assert harness.received() == []


async def test_update_threads_under_the_first_alert(harness: Harness) -> None:
    first = await harness.notifier.send(make_alert())
    assert isinstance(first, Sent)
    update = make_alert(update=True, sources=3)
    second = await harness.notifier.send(update, thread_ref=first.ref)
    assert isinstance(second, Sent)
    got = harness.received()
    assert len(got) == 2
    assert "3 sources" in got[1][0] or "3 sources" in got[1][1] or harness.kind == "file"
    if harness.threads:
        assert first.ref
        assert harness.thread_of(1) == first.ref
        assert harness.thread_of(0) is None
    else:
        assert harness.thread_of(1) is None


# --------------------------------------------------------------------------- Slack


async def test_slack_bot_reports_ts_and_payload_passes_checks(slack_server: SlackServer) -> None:
    n = SlackNotifier(
        "s",
        SlackChannel(
            type="slack",
            token=slack_server.token,
            channel="#news",
            base_url=slack_server.api_base_url,
            rate=1000,
            username="monitor",
        ),
    )
    try:
        title = "<!channel> click <http://evil|here> @here " + "long " * 2000
        r = await n.send(make_alert(title=title))
    finally:
        await n.close()
    assert isinstance(r, Sent)
    assert r.ref == "C0NEWS/" + slack_server.messages[0]["ts"]  # the channel's ID and the ts
    assert slack_server.rejected == []
    msg = slack_server.messages[0]
    assert msg["payload"]["username"] == "monitor"
    assert msg["payload"]["unfurl_links"] is False
    text = msg["text"] + json.dumps(msg["blocks"])
    assert "<!channel>" not in text and "<http://evil" not in text and "@here" not in text


async def test_slack_bot_unknown_channel_is_permanent(slack_server: SlackServer) -> None:
    cfg = SlackChannel(
        type="slack",
        token=slack_server.token,
        channel="#nope",
        base_url=slack_server.api_base_url,
        rate=1000,
    )
    n = SlackNotifier("s", cfg)
    try:
        r = await n.send(make_alert())
    finally:
        await n.close()
    assert isinstance(r, SendFailed) and r.retry is False
    assert "channel_not_found" in r.reason


@pytest.mark.parametrize("webhook", [True, False])
async def test_slack_timeout_is_configurable_and_retried(
    slack_server: SlackServer, webhook: bool
) -> None:
    """A Slack that answers in 1.5 s, later than the channel's ``timeout`` of 1 s: a
    retryable failure (with the 30 s default the message would have gone through)."""
    auth: dict[str, str] = (
        {"webhook_url": slack_server.webhook_url} if webhook
        else {"token": slack_server.token, "channel": "#news",
              "base_url": slack_server.api_base_url}
    )
    cfg = SlackChannel.model_validate({"type": "slack", "rate": 1000, "timeout": "1s", **auth})
    assert cfg.timeout == 1.0
    n = SlackNotifier("s", cfg)
    slack_server.delay = 1.5
    try:
        r = await n.send(make_alert())
    finally:
        await n.close()
    assert isinstance(r, SendFailed) and r.retry is True, r
    # the outcome is ambiguous (the peer may have taken the message), and the reason says
    # how the retry avoids a repeat
    assert "timed out" in r.reason and "may have arrived" in r.reason
    assert ("ambiguous 1 of 2" if webhook else "history") in r.reason


@pytest.mark.parametrize("status", [429, 500, 503])
@pytest.mark.parametrize("webhook", [True, False])
async def test_slack_errors_are_not_retried_by_the_sdk(
    slack_server: SlackServer, webhook: bool, status: int
) -> None:
    h = SlackHarness(slack_server, webhook=webhook)
    slack_server.fail_next(2, status=status, retry_after=30)
    try:
        r = await h.notifier.send(make_alert())
    finally:
        await h.notifier.close()
    assert isinstance(r, SendFailed) and r.retry is True
    assert r.retry_after == (30 if status == 429 else None)
    assert str(status) in r.reason
    assert slack_server.requests == 1  # slack-sdk neither slept nor retried on its own


async def test_slack_webhook_bad_payload_is_permanent(slack_server: SlackServer) -> None:
    h = SlackHarness(slack_server, webhook=True)
    try:
        # Slack refuses a payload without text or blocks: 400 invalid_payload
        webhook, _ = h.notifier._clients()
        assert webhook is not None
        r = await h.notifier._send_webhook(webhook, {"text": ""}, "k")
    finally:
        await h.notifier.close()
    assert isinstance(r, SendFailed) and r.retry is False
    assert "invalid_payload" in r.reason
    assert "secretpath" not in r.reason


async def test_slack_rate_limit_spaces_a_burst() -> None:
    rl = RateLimiter(rate=2.0)
    waits = [rl.reserve(10.0) for _ in range(4)]
    assert waits == [0.0, 0.5, 1.0, 1.5]
    rl2 = RateLimiter(rate=2.0)
    assert rl2.reserve(0.0) == 0.0
    assert rl2.reserve(5.0) == 0.0  # tokens refilled after a pause (capped at the burst)
    assert rl2.reserve(5.0) == 0.5


async def test_rate_limiter_does_not_block_the_loop() -> None:
    rl = RateLimiter(rate=1000.0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    t = asyncio.create_task(ticker())
    await asyncio.gather(*(rl.acquire() for _ in range(20)))
    t.cancel()
    assert ticks > 0


# --------------------------------------------------------------------------- email


def email_cfg(server: SMTPServer, **kw: Any) -> EmailChannel:
    data: dict[str, Any] = {
        "type": "email",
        "host": server.host,
        "port": server.port,
        "security": "none",
        "from": "monitor@alerts.example.org",
        "to": ["ops@example.org", "oncall@example.org"],
        "timeout": 5,
        "rate": 1000,
    }
    return EmailChannel.model_validate({**data, **kw})


async def test_email_is_multipart_with_stable_message_id(smtp_server: SMTPServer) -> None:
    n = EmailNotifier("mail", email_cfg(smtp_server))
    a = make_alert()
    r1 = await n.send(a)
    r2 = await n.send(a)  # a retry of the same delivery
    r3 = await n.send(a, key="delivery-key-1")
    assert isinstance(r1, Sent) and isinstance(r2, Sent) and isinstance(r3, Sent)
    assert r1.ref == r2.ref != r3.ref
    assert r1.ref and r1.ref.endswith("@alerts.example.org>")
    got = smtp_server.messages[0]
    assert got.mail_from == "monitor@alerts.example.org"
    assert got.rcpt_tos == ("ops@example.org", "oncall@example.org")
    assert got.message.get_content_type() == "multipart/alternative"
    assert got.message["Message-ID"] == r1.ref
    assert got.message["Date"] is not None
    assert got.message["Subject"] == f"[HIGH] {TITLE}"


async def test_encoded_words_in_feed_text_cannot_add_headers(smtp_server: SMTPServer) -> None:
    # an RFC 2047 encoded word hiding CR LF + headers, as a feed title: received as text
    evil = ("Sanctions deadline =?utf-8?q?x=0D=0AReply-To=3A_attacker=40evil.example=0D=0A"
            "X-Injected=3A_yes?= set")
    r = await EmailNotifier("mail", email_cfg(smtp_server)).send(make_alert(evil))
    assert isinstance(r, Sent), r
    got = smtp_server.messages[0].message
    assert got["Reply-To"] is None and got["X-Injected"] is None
    assert [k for k in got if k.lower() in ("reply-to", "x-injected")] == []
    subject = str(got["Subject"]).replace("\u200b", "")
    assert subject == f"[HIGH] {evil}"  # the feed's text, as it was (not decoded)


async def test_email_451_retry_550_and_535_permanent(smtp_server: SMTPServer) -> None:
    n = EmailNotifier("mail", email_cfg(smtp_server))
    smtp_server.fail_next_data(1, "451 4.3.0 Try again later")
    r = await n.send(make_alert())
    assert isinstance(r, SendFailed) and r.retry is True and "451" in r.reason

    smtp_server.reject_rcpt = {"*": "550 5.1.1 No such user"}
    r = await n.send(make_alert())
    assert isinstance(r, SendFailed) and r.retry is False and "550" in r.reason

    smtp_server.reject_rcpt = {"*": "450 4.2.0 Mailbox busy"}
    r = await n.send(make_alert())
    assert isinstance(r, SendFailed) and r.retry is True

    smtp_server.reject_rcpt = {"oncall@example.org": "550 5.1.1 No such user"}
    r = await n.send(make_alert())  # one of two refused: delivered to the other
    assert isinstance(r, Sent)
    assert smtp_server.messages[-1].rcpt_tos == ("ops@example.org",)

    smtp_server.stop()
    smtp_server.credentials = (SMTP_USER, SMTP_PASS)
    smtp_server.start()
    bad = EmailNotifier("mail", email_cfg(smtp_server, username=SMTP_USER, password="wrong-pw"))
    r = await bad.send(make_alert())
    assert isinstance(r, SendFailed) and r.retry is False and "535" in r.reason
    assert "wrong-pw" not in r.reason


async def test_email_server_down_then_back_on_same_port(smtp_server: SMTPServer) -> None:
    n = EmailNotifier("mail", email_cfg(smtp_server))
    port = smtp_server.port
    smtp_server.stop()
    r = await n.send(make_alert())
    assert isinstance(r, SendFailed) and r.retry is True
    smtp_server.start()
    assert smtp_server.port == port
    assert isinstance(await n.send(make_alert()), Sent)
    assert len(smtp_server.messages) == 1


async def test_email_starttls_not_offered_is_kept_and_says_what_to_set(
    smtp_server: SMTPServer,
) -> None:
    # never sent in the clear; kept for a retry (a setting to fix, or a relay whose
    # STARTTLS was stripped on the way), and the reason says what to set
    n = EmailNotifier("mail", email_cfg(smtp_server, security="starttls"))
    r = await n.send(make_alert())
    assert isinstance(r, SendFailed) and r.retry is True
    assert "STARTTLS extension not supported" in r.reason and "set security: tls" in r.reason
    assert smtp_server.messages == []


# --------------------------------------------------------------------------- file


async def test_file_lines_never_interleave(tmp_path: Path) -> None:
    n = FileNotifier(
        "f", FileChannel(type="file", path=str(tmp_path / "a" / "b.jsonl"), rate=1000), tmp_path
    )
    alerts = [make_alert(title=f"story {i} " + "x" * 5000) for i in range(30)]
    results = await asyncio.gather(*(n.send(a) for a in alerts))
    assert all(isinstance(r, Sent) and r.ref is None for r in results)
    lines = (tmp_path / "a" / "b.jsonl").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    records = [json.loads(ln) for ln in lines[:-1]]
    assert sorted(r["title"].split()[1] for r in records) == sorted(str(i) for i in range(30))
    assert records[0]["published"] == "2024-05-01T13:45:00+00:00"


# --------------------------------------------------------------------------- registry


def test_build_notifiers_from_config(tmp_path: Path) -> None:
    text = """
channels:
  hook: {type: slack, webhook_url: "https://hooks.slack.com/services/T/B/xyz"}
  bot: {type: slack, token: xoxb-1234, channel: "#news"}
  mail: {type: email, host: smtp.example.org, from: a@example.org, to: b@example.org}
  log: {type: file, path: alerts/out.jsonl}
"""
    path = tmp_path / "config.yaml"
    config = parse_config(text, str(path), env={})
    ns = build_notifiers(config)
    assert set(ns) == {"hook", "bot", "mail", "log"}
    assert all(isinstance(v, Notifier) and v.name == k for k, v in ns.items())
    assert isinstance(ns["hook"], SlackNotifier) and ns["hook"].kind == "webhook"
    assert isinstance(ns["bot"], SlackNotifier) and ns["bot"].kind == "bot"
    assert isinstance(ns["mail"], EmailNotifier)
    log = ns["log"]
    assert isinstance(log, FileNotifier)
    assert log.path == tmp_path.resolve() / "alerts" / "out.jsonl"


@pytest.mark.parametrize("title", [
    "Re: deadline: a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p-q-r-s-t-u-v-w-x-y-z",
    '"q" a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p-q-r-s-t-u-v-w-x-y-z Re: Re:',
    "«quoted» sanctions üüüüüüüüüüüüüüüüüüüüüüüüüüüüüü Witkoff’s",
    "Trump sets sanctions deadline for Putin as Witkoff heads to Moscow " * 4,
    "特朗普制裁普京最后期限" * 8,
    "https://example.com/" + "a" * 120,
    "x" * 200,
])
async def test_subject_never_folds_straight_after_the_name(smtp_server: SMTPServer,
                                                          title: str) -> None:
    # The standard folder can break the line right after "Subject:" (then clients show
    # a leading space); the raw bytes the server received show where the fold is.
    alert = make_alert(title)
    r = await EmailNotifier("mail", email_cfg(smtp_server)).send(alert)
    assert isinstance(r, Sent), r
    got = smtp_server.messages[0]
    head = got.raw.split(b"\r\n\r\n", 1)[0]
    line = next(x for x in head.split(b"\r\n") if x.lower().startswith(b"subject:"))
    assert line[len(b"Subject:"):].startswith(b" ") and line[len(b"Subject: "):].strip(), head
    assert got.raw.isascii()  # 7-bit on the wire: encoded words, QP/base64 bodies
    assert str(got.message["Subject"]) == email_subject(alert)
    assert email_subject(alert).startswith("[HIGH] " + title[:20])
