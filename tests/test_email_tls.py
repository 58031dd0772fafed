"""The email channel over TLS: STARTTLS and implicit TLS against a real aiosmtpd server
whose certificate comes from a private CA (trustme), trusted through ``ca_file``; and
``ca_file`` in the configuration (resolved against the config file, checked at load)."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pytest
import trustme

from monitor.config import EmailChannel, parse_config
from monitor.core.model import SendFailed, Sent
from monitor.errors import ConfigError
from monitor.notify.email import EmailNotifier
from monitor.notify.registry import build_notifiers
from tests.peers.smtpserver import SMTPServer
from tests.test_notify import SMTP_PASS, SMTP_USER, make_alert

Mode = Literal["starttls", "tls"]


class TLSSMTPServer(SMTPServer):
    """``SMTPServer`` (same recording and controls) speaking TLS with ``context``:
    STARTTLS required before MAIL (``starttls``), or TLS from the first byte (``tls``).
    With ``credentials`` set, AUTH is required and only offered over TLS."""

    def __init__(self, mode: Mode, context: ssl.SSLContext) -> None:
        super().__init__()
        self.mode = mode
        self.context = context

    def controller_options(self) -> dict[str, Any]:
        options = super().controller_options()
        if options:  # a login: required, and only over TLS
            options |= {"auth_required": True, "auth_require_tls": True}
        if self.mode == "starttls":
            return options | {"tls_context": self.context, "require_starttls": True}
        return options | {"ssl_context": self.context}


@pytest.fixture(autouse=True)
async def _let_closing_transports_close() -> AsyncIterator[None]:
    """A failed TLS handshake closes the client's socket from a loop callback (asyncio
    closes transports that way); the daemon's loop runs it at once, but a test's loop may
    be closed first, and the socket is then reported as leaked. Let the loop run a few
    rounds after each test."""
    yield
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture
def ca_pem(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "relay-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@contextmanager
def tls_server(mode: Mode, context: ssl.SSLContext) -> Iterator[TLSSMTPServer]:
    server = TLSSMTPServer(mode, context)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def starttls_server(server_context: ssl.SSLContext) -> Iterator[TLSSMTPServer]:
    with tls_server("starttls", server_context) as server:
        yield server


@pytest.fixture
def implicit_tls_server(server_context: ssl.SSLContext) -> Iterator[TLSSMTPServer]:
    with tls_server("tls", server_context) as server:
        yield server


@pytest.fixture(params=["starttls", "tls"])
def any_tls_server(
    request: pytest.FixtureRequest, server_context: ssl.SSLContext
) -> Iterator[TLSSMTPServer]:
    with tls_server(request.param, server_context) as server:
        yield server


def notifier(server: SMTPServer, **kw: Any) -> EmailNotifier:
    data: dict[str, Any] = {
        "type": "email",
        "host": server.host,
        "port": server.port,
        "security": server.mode if isinstance(server, TLSSMTPServer) else "none",
        "from": "monitor@alerts.example.org",
        "to": ["ops@example.org"],
        "timeout": 5,
        "rate": 1000,
    }
    return EmailNotifier("mail", EmailChannel.model_validate({**data, **kw}))


# --------------------------------------------------------------------------- delivery


async def test_starttls_delivers_with_private_ca(
    starttls_server: TLSSMTPServer, ca_pem: Path
) -> None:
    # the server answers MAIL with 530 until STARTTLS: a delivery means TLS was used
    r = await notifier(starttls_server, ca_file=str(ca_pem)).send(make_alert())
    assert isinstance(r, Sent), r
    assert [m.message["Message-ID"] for m in starttls_server.messages] == [r.ref]


async def test_implicit_tls_delivers_with_private_ca(
    implicit_tls_server: TLSSMTPServer, ca_pem: Path
) -> None:
    r = await notifier(implicit_tls_server, ca_file=str(ca_pem)).send(make_alert())
    assert isinstance(r, Sent), r
    assert [m.message["Message-ID"] for m in implicit_tls_server.messages] == [r.ref]


async def test_system_store_rejects_private_ca_and_is_retried(
    any_tls_server: TLSSMTPServer,
) -> None:
    n = notifier(any_tls_server, username=SMTP_USER, password=SMTP_PASS)
    r = await n.send(make_alert())
    assert isinstance(r, SendFailed), r
    assert r.retry is True  # a certificate can be fixed without a config change
    assert "certificate verify failed" in r.reason
    assert "system CA store" in r.reason and "ca_file" in r.reason
    assert f"smtp 127.0.0.1:{any_tls_server.port}" in r.reason
    assert SMTP_PASS not in r.reason
    assert any_tls_server.messages == []


async def test_ca_file_replaces_the_system_store_and_is_reread_after_a_failure(
    any_tls_server: TLSSMTPServer, ca: trustme.CA, tmp_path: Path
) -> None:
    # ca_file holds another CA: the server's certificate is refused
    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    n = notifier(any_tls_server, ca_file=str(path))
    r = await n.send(make_alert())
    assert isinstance(r, SendFailed) and r.retry is True, r
    assert "certificate verify failed" in r.reason and str(path) in r.reason
    assert any_tls_server.messages == []
    # the bundle is fixed in place: the retry reloads it and goes through
    ca.cert_pem.write_to_path(str(path))
    assert isinstance(await n.send(make_alert()), Sent)
    assert len(any_tls_server.messages) == 1


async def test_host_name_is_checked(ca: trustme.CA, ca_pem: Path) -> None:
    # a certificate from the trusted CA, but for another name than the one dialled
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("relay.example.org").configure_cert(ctx)
    with tls_server("tls", ctx) as server:
        r = await notifier(server, ca_file=str(ca_pem)).send(make_alert())
        assert isinstance(r, SendFailed) and r.retry is True, r
        assert "certificate verify failed" in r.reason and "mismatch" in r.reason
        assert server.messages == []


async def test_implicit_tls_against_a_plain_port_says_to_use_starttls(
    smtp_server: SMTPServer,
) -> None:
    # security: tls against a server that speaks plain SMTP first (port 587/25)
    r = await notifier(smtp_server, security="tls").send(make_alert())
    assert isinstance(r, SendFailed) and r.retry is True, r  # kept until the config is fixed
    assert f"smtp 127.0.0.1:{smtp_server.port}: TLS handshake failed" in r.reason
    assert "security: starttls" in r.reason
    assert smtp_server.messages == []


async def test_a_login_in_plain_text_to_a_server_that_wants_tls_first_says_what_to_set(
    server_context: ssl.SSLContext,
) -> None:
    # AUTH is offered only after STARTTLS: security: none with a login cannot work
    server = TLSSMTPServer("starttls", server_context)
    server.credentials = (SMTP_USER, SMTP_PASS)
    server.start()
    try:
        r = await notifier(server, security="none", username=SMTP_USER,
                           password=SMTP_PASS).send(make_alert())
    finally:
        server.stop()
    assert isinstance(r, SendFailed) and r.retry is True, r
    assert "set security: starttls" in r.reason and "security: tls;" not in r.reason
    assert SMTP_PASS not in r.reason and server.messages == []


async def test_plain_text_to_a_server_that_wants_starttls_says_what_to_set(
    starttls_server: TLSSMTPServer,
) -> None:
    r = await notifier(starttls_server, security="none").send(make_alert())
    assert isinstance(r, SendFailed) and r.retry is True, r
    assert "530" in r.reason and "set security: starttls" in r.reason
    assert starttls_server.messages == []


@pytest.mark.parametrize("security", ["starttls", "none"])
async def test_plain_client_against_an_implicit_tls_port_says_to_use_tls(
    implicit_tls_server: TLSSMTPServer, security: str
) -> None:
    # the server waits for a TLS ClientHello, the client for a "220" greeting
    r = await notifier(implicit_tls_server, security=security, timeout=1).send(make_alert())
    assert isinstance(r, SendFailed) and r.retry is True, r
    assert "timed out waiting for the server's greeting" in r.reason
    assert "set security: tls" in r.reason
    assert implicit_tls_server.messages == []


async def test_starttls_answered_in_plain_text_is_a_tls_failure() -> None:
    # a broken relay (or something in between) that accepts STARTTLS and then does not
    # speak TLS: the handshake fails for another reason than the certificate
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 relay.example.org ESMTP\r\n")
        while line := await reader.readline():
            if line.upper().startswith((b"EHLO", b"HELO")):
                writer.write(b"250-relay.example.org\r\n250 STARTTLS\r\n")
            elif line.upper().startswith(b"STARTTLS"):
                writer.write(b"220 go ahead\r\n")
                await writer.drain()
                await reader.read(1)  # the ClientHello
                writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        plain = SMTPServer()
        plain.port = port  # only its address is used
        r = await notifier(plain, security="starttls", timeout=5).send(make_alert())
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(r, SendFailed) and r.retry is True, r
    assert r.reason.startswith(f"smtp 127.0.0.1:{port}: TLS handshake failed ("), r.reason


async def test_auth_over_starttls(server_context: ssl.SSLContext, ca_pem: Path) -> None:
    server = TLSSMTPServer("starttls", server_context)
    server.credentials = (SMTP_USER, SMTP_PASS)  # AUTH required, offered only after TLS
    server.start()
    try:
        ok = notifier(server, ca_file=str(ca_pem), username=SMTP_USER, password=SMTP_PASS)
        assert isinstance(await ok.send(make_alert()), Sent)
        bad = notifier(server, ca_file=str(ca_pem), username=SMTP_USER, password="wrong-pw")
        r = await bad.send(make_alert())
        assert isinstance(r, SendFailed) and r.retry is False and "535" in r.reason
        assert "wrong-pw" not in r.reason
        assert len(server.messages) == 1
    finally:
        server.stop()


async def test_ca_file_gone_after_load_is_a_retryable_failure(
    starttls_server: TLSSMTPServer, ca_pem: Path
) -> None:
    n = notifier(starttls_server, ca_file=str(ca_pem))
    aside = str(ca_pem) + ".bak"
    os.replace(ca_pem, aside)  # gone after the config was loaded
    r = await n.send(make_alert())
    assert isinstance(r, SendFailed) and r.retry is True, r
    assert "ca_file" in r.reason and "No such file" in r.reason
    assert starttls_server.messages == []
    os.replace(aside, ca_pem)
    assert isinstance(await n.send(make_alert()), Sent)


# --------------------------------------------------------------------------- config


CONFIG = """\
channels:
  mail:
    type: email
    host: smtp.example.org
    from: a@example.org
    to: b@example.org
    security: {security}
    ca_file: {ca_file}
"""


def test_relative_ca_file_resolves_against_the_config(tmp_path: Path, ca: trustme.CA) -> None:
    (tmp_path / "certs").mkdir()
    ca.cert_pem.write_to_path(str(tmp_path / "certs" / "ca.pem"))
    path = tmp_path / "config.yaml"
    config = parse_config(CONFIG.format(security="tls", ca_file="certs/ca.pem"), str(path), {})
    n = build_notifiers(config)["mail"]
    assert isinstance(n, EmailNotifier)
    assert n.ca_path == tmp_path.resolve() / "certs" / "ca.pem"


def test_ca_file_from_an_unset_variable_is_no_ca_file(tmp_path: Path) -> None:
    config = parse_config(
        CONFIG.format(security="starttls", ca_file="${SMTP_CA_FILE:-}"),
        str(tmp_path / "c.yaml"),
        {},
    )
    mail = config.channels["mail"]
    assert isinstance(mail, EmailChannel) and mail.ca_file is None


def config_problems(tmp_path: Path, security: str, ca_file: str) -> list[str]:
    path = tmp_path / "c.yaml"
    with pytest.raises(ConfigError) as e:
        parse_config(CONFIG.format(security=security, ca_file=ca_file), str(path), {})
    return [str(p).removeprefix(str(path)) for p in e.value.problems]


def test_bad_ca_file_is_a_located_config_error(tmp_path: Path) -> None:
    got = config_problems(tmp_path, "starttls", "missing.pem")
    assert got == [
        f":8:14: channels.mail.ca_file: {tmp_path.resolve() / 'missing.pem'} does not exist"
    ]
    (tmp_path / "notes.txt").write_text("not a certificate\n")
    got = config_problems(tmp_path, "starttls", "notes.txt")
    assert len(got) == 1 and got[0].startswith(":8:14: channels.mail.ca_file: "), got
    assert "is not a PEM bundle of CA certificates" in got[0]
    got = config_problems(tmp_path, "tls", ".")
    assert len(got) == 1 and got[0].endswith("is not a file"), got


def test_ca_file_needs_tls(tmp_path: Path, ca_pem: Path) -> None:
    got = config_problems(tmp_path, "none", str(ca_pem))
    assert len(got) == 1 and got[0].startswith(":3:5: channels.mail: ca_file needs security"), got
