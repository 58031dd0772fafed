"""A local SMTP server (pytest plugin): fixture ``smtp_server``.

aiosmtpd's ``Controller`` runs its own event loop in a thread on 127.0.0.1 at a fixed
port chosen once (``smtp_server.port``). Accepted messages are recorded in
``smtp_server.messages`` as ``ReceivedMail(mail_from, rcpt_tos, message)`` where
``message`` is the parsed ``email.message.EmailMessage`` (policy ``default``).

Control (all synchronous; safe to call from a test's event loop, they only touch the
server thread):

* ``smtp_server.stop()`` closes the listener (connections are then refused) and
  ``smtp_server.start()`` opens it again on the SAME port (a new Controller: aiosmtpd
  closes a Controller's loop when it stops, so one cannot be restarted);
* ``smtp_server.reject_rcpt = {"bad@example.org": "550 5.1.1 No such user"}`` refuses
  those recipients (``"*"`` refuses all);
* ``smtp_server.fail_next_data(n, "451 4.3.0 Try again later")`` answers the next ``n``
  DATA commands with that reply;
* ``smtp_server.credentials = ("user", "pass")`` offers AUTH LOGIN/PLAIN (without
  TLS; not required, a client that gives no username may still send); a wrong password
  is answered 535. Set before ``start()`` (the fixture starts
  without auth; call ``stop()``, set, ``start()``).

The Controller thread is joined on ``stop()``; recorded lists are guarded by a lock.
"""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    raw: bytes = b""  # the DATA exactly as received



def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Handler:
    def __init__(self, server: SMTPServer) -> None:
        self.server = server

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        reply = self.server.reject_rcpt.get(address) or self.server.reject_rcpt.get("*")
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.server.lock:
            if self.server.data_failures:
                return self.server.data_failures.pop(0)
            msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            self.server.messages.append(
                ReceivedMail(
                    mail_from=envelope.mail_from, rcpt_tos=tuple(envelope.rcpt_tos), message=msg,
                    raw=bytes(envelope.original_content or envelope.content),
                )
            )
        return "250 Message accepted for delivery"


class SMTPServer:
    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.messages: list[ReceivedMail] = []
        self.reject_rcpt: dict[str, str] = {}
        self.data_failures: list[str] = []
        self.credentials: tuple[str, str] | None = None
        self.lock = threading.Lock()
        self._controller: Controller | None = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if (
            self.credentials is not None
            and isinstance(auth_data, LoginPassword)
            and (auth_data.login.decode(), auth_data.password.decode()) == self.credentials
        ):
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def controller_options(self) -> dict[str, Any]:
        """aiosmtpd ``Controller`` options (a TLS variant adds its own)."""
        if self.credentials is None:
            return {}
        return {
            "authenticator": self._authenticate,
            "auth_required": False,  # True warns (AUTH without TLS); offering is enough
            "auth_require_tls": False,
        }

    def start(self) -> None:
        if self._controller is not None:
            return
        controller = Controller(_Handler(self), hostname=self.host, port=self.port,
                                **self.controller_options())
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        if self._controller is not None:
            controller, self._controller = self._controller, None
            controller.stop()

    def fail_next_data(self, n: int, reply: str = "451 4.3.0 Try again later") -> None:
        with self.lock:
            self.data_failures += [reply] * n


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    server = SMTPServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
