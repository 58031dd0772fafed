"""Email notifier (aiosmtplib): STARTTLS, implicit TLS or plain; optional login.

Errors: connection refused, timeouts, dropped connections and 4xx replies → retry;
5xx replies (550 recipient refused, 535 authentication failed, 554...) → do not retry.
A server certificate that fails verification → retry (see ``_cert_failed``).
TLS (STARTTLS or implicit) verifies the server's certificate and host name against the
system CA store, or only against the CAs in ``ca_file`` when the channel sets one.
``Sent.ref`` is the Message-ID, which an update puts in In-Reply-To / References.
The Message-ID is derived from the channel and the alert (or the ``key`` given), so a
retried delivery keeps the same Message-ID and a receiving system can deduplicate.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import TypeVar

import aiosmtplib

from monitor.config import EmailChannel
from monitor.core.feedhealth import is_operational
from monitor.core.model import Alert, SendFailed, SendResult, Sent
from monitor.log import get_logger, scrub
from monitor.notify.ratelimit import RateLimiter
from monitor.notify.render import (
    EMAIL_DIGEST_MAX,
    DigestKind,
    Part,
    email_digest,
    email_message,
    message_key,
)

log = get_logger(__name__)

E = TypeVar("E", bound=BaseException)


def _domain(address: str) -> str:
    addr = address.strip().strip("<>")
    return addr.rpartition("@")[2].strip(" >") or "monitor.invalid"


def _in_chain(e: BaseException, kind: type[E]) -> E | None:
    """The first exception of ``kind`` in ``e``'s chain of causes, if any."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kind):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _cert_error(e: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind ``e``, if any (aiosmtplib wraps the
    one of an implicit-TLS connect in SMTPConnectError; STARTTLS lets it through)."""
    return _in_chain(e, ssl.SSLCertVerificationError)


class EmailNotifier:
    """Sends each alert as one email to ``cfg.to`` (one SMTP connection per message).
    A relative ``cfg.ca_file`` resolves against ``base_dir`` (the config file's directory)."""

    digest_max = EMAIL_DIGEST_MAX  # stories per digest message; a longer digest is split

    def __init__(self, name: str, cfg: EmailChannel, base_dir: Path | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.limiter = RateLimiter(cfg.rate)
        self.domain = _domain(cfg.from_)
        self.ca_path: Path | None = None
        if cfg.ca_file:
            p = Path(cfg.ca_file).expanduser()
            self.ca_path = p if p.is_absolute() or base_dir is None else Path(base_dir) / p
        self._tls: ssl.SSLContext | None = None  # built on first use, then reused

    async def _tls_context(self) -> ssl.SSLContext | None:
        """The client context for STARTTLS / implicit TLS (None for ``security: none``):
        certificate and host name checked, against ``ca_file`` alone when it is set."""
        if self.cfg.security == "none":
            return None
        if self._tls is None:
            cafile = str(self.ca_path) if self.ca_path else None
            self._tls = await asyncio.to_thread(ssl.create_default_context, cafile=cafile)
        return self._tls

    def _cert_failed(self, where: str, err: ssl.SSLCertVerificationError) -> SendFailed:
        # retry=True: an expired or wrongly issued server certificate, or a CA bundle that
        # lacks the relay's (new) CA, is mended on the server or in ca_file without a
        # config change, and the alert should then go out instead of being dropped; the
        # dispatcher's backoff and give_up_after bound the attempts, and every one logs
        # this reason. The context is dropped so the next attempt reloads ca_file.
        self._tls = None
        trusted = (
            f"trusting the CAs in {self.ca_path}"
            if self.ca_path
            else "trusting the system CA store; set ca_file for a private CA"
        )
        detail = err.verify_message or err.reason or str(err)
        return SendFailed(
            reason=self._scrub(f"{where}: TLS certificate verify failed: {detail} ({trusted})"),
            retry=True,
        )

    def _tls_failed(self, where: str, err: ssl.SSLError) -> SendFailed:
        """A TLS handshake that failed for another reason than the certificate."""
        detail = err.reason or str(err)
        hint = ""
        if err.reason == "WRONG_VERSION_NUMBER" and self.cfg.security == "tls":
            # the classic: implicit TLS against a port that speaks plain SMTP first
            hint = (
                ": the server did not answer in TLS; if it speaks plain SMTP first "
                "(usually port 587 or 25), set security: starttls"
            )
        # retry=True: once the configuration (or the server) is fixed, the alert goes out
        return SendFailed(
            reason=self._scrub(f"{where}: TLS handshake failed ({detail}){hint}"), retry=True
        )

    def _scrub(self, text: str) -> str:
        if self.cfg.password:
            text = text.replace(self.cfg.password, "***")
        return scrub(text)

    async def send(
        self,
        alert: Alert,
        *,
        thread_ref: str | None = None,
        key: str | None = None,
        attempt: int = 1,
        created: datetime | None = None,
    ) -> SendResult:
        """``key`` (the delivery key, optional) fixes the Message-ID; without it the
        Message-ID is derived from the channel name and the alert. An update that only
        edits a first message (``reply`` False: routed to channels that can edit) is not
        mailed: mail gets updates at milestones only."""
        if alert.update and not alert.reply:
            return Sent(ref=None)
        msg = email_message(
            alert,
            sender=self.cfg.from_,
            to=self.cfg.to,
            thread_ref=thread_ref if alert.update or is_operational(alert) else None,
            message_id_domain=self.domain,
            key=key if key is not None else f"{self.name}\x1f{message_key(alert)}",
            date=datetime.now(UTC),
        )
        mid = str(msg["Message-ID"])
        await self.limiter.acquire()
        result = await self._deliver(msg)
        if isinstance(result, SendFailed):
            log.warning(
                "notify.failed",
                channel=self.name,
                kind="email",
                reason=result.reason,
                retry=result.retry,
            )
            return result
        log.info("notify.sent", channel=self.name, kind="email", ref=mid)
        return Sent(ref=mid)

    async def send_digest(self, alerts: Sequence[Alert], *, key: str,
                          kind: DigestKind = "digest", heading: str | None = None,
                          thread_ref: str | None = None, part: Part | None = None,
                          attempt: int = 1, created: datetime | None = None) -> SendResult:
        msg = email_digest(
            alerts,
            kind=kind,
            heading=heading,
            thread_ref=thread_ref,
            part=part,
            sender=self.cfg.from_,
            to=self.cfg.to,
            message_id_domain=self.domain,
            key=f"{self.name}\x1f{key}",
            date=datetime.now(UTC),
        )
        mid = str(msg["Message-ID"])
        await self.limiter.acquire()
        result = await self._deliver(msg)
        if isinstance(result, SendFailed):
            log.warning("notify.failed", channel=self.name, kind="email", reason=result.reason,
                        retry=result.retry, digest=len(alerts))
            return result
        log.info("notify.sent", channel=self.name, kind="email", ref=mid, digest=len(alerts))
        return Sent(ref=mid)

    async def _deliver(self, msg: EmailMessage) -> SendFailed | None:
        cfg = self.cfg
        where = f"smtp {cfg.host}:{cfg.effective_port}"
        try:
            tls_context = await self._tls_context()
        except OSError as e:  # ssl.SSLError included
            # the loader checked ca_file; it has since gone or changed: restoring it
            # heals, and the next attempt loads it again
            return SendFailed(
                reason=self._scrub(
                    f"{where}: ca_file {self.ca_path}: cannot load: {e.strerror or e}"
                ),
                retry=True,
            )
        try:
            errors, _ = await aiosmtplib.send(
                # flattened here, with the message's own policy (render.MAIL_POLICY:
                # subjects folded safely, 7-bit bodies), not the library's
                msg.as_bytes(),
                sender=cfg.from_,
                recipients=list(cfg.to),
                hostname=cfg.host,
                port=cfg.effective_port,
                use_tls=cfg.security == "tls",
                start_tls=cfg.security == "starttls",
                tls_context=tls_context,
                username=cfg.username,
                password=cfg.password,
                timeout=cfg.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as e:
            codes = [r.code for r in e.recipients]
            detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in e.recipients)
            transient = any(400 <= c < 500 for c in codes)
            return SendFailed(
                reason=self._scrub(f"{where}: recipients refused: {detail}"), retry=transient
            )
        except aiosmtplib.SMTPResponseException as e:
            what = type(e).__name__.removeprefix("SMTP")
            reason = f"{where}: {what}: {e.code} {e.message}"
            if e.code == 530 and "STARTTLS" in e.message.upper() and cfg.security == "none":
                # the server requires TLS first: the setting, not the message, is wrong;
                # kept for a retry once it is fixed
                return SendFailed(reason=self._scrub(
                    f"{reason}: the server wants STARTTLS first: set security: starttls"),
                    retry=True)
            return SendFailed(reason=self._scrub(reason), retry=not 500 <= e.code < 600)
        except aiosmtplib.SMTPTimeoutError as e:
            if isinstance(e, aiosmtplib.SMTPConnectTimeoutError) and isinstance(
                e.__cause__, aiosmtplib.SMTPReadTimeoutError
            ):
                # connected, but no "220" greeting came: a port that expects TLS from the
                # first byte stays silent towards a plain-text client
                hint = "" if cfg.security == "tls" else (
                    "; a port that expects TLS from the first byte (usually 465) stays "
                    "silent like this: if this is one, set security: tls"
                )
                return SendFailed(
                    reason=f"{where}: timed out waiting for the server's greeting{hint}",
                    retry=True,
                )
            return SendFailed(reason=f"{where}: timed out", retry=True)
        except ssl.SSLCertVerificationError as e:  # STARTTLS handshake
            return self._cert_failed(where, e)
        except ssl.SSLError as e:  # STARTTLS handshake, another reason
            return self._tls_failed(where, e)
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected) as e:
            cert = _cert_error(e)  # implicit TLS: the handshake is part of the connect
            if cert is not None:
                return self._cert_failed(where, cert)
            tls = _in_chain(e, ssl.SSLError)
            if tls is not None:
                return self._tls_failed(where, tls)
            return SendFailed(reason=self._scrub(f"{where}: connection failed: {e}"), retry=True)
        except aiosmtplib.SMTPNotSupported as e:
            # e.g. STARTTLS or AUTH not offered: a configuration problem
            return SendFailed(reason=self._scrub(f"{where}: not supported: {e}"), retry=False)
        except aiosmtplib.SMTPException as e:
            text = str(e)
            if cfg.security == "none" and "Try connecting via TLS" in text:
                # a login asked for, and the server offers AUTH only over TLS
                return SendFailed(reason=self._scrub(
                    f"{where}: {text.rstrip('.')}: set security: starttls (or tls on an "
                    "implicit-TLS port such as 465)"), retry=True)
            if cfg.security == "starttls" and "STARTTLS" in text and "not supported" in text:
                # security: starttls, and this port does not offer it: a setting to fix;
                # kept for a retry once it is fixed, like the other security mismatches
                return SendFailed(reason=self._scrub(
                    f"{where}: {text.rstrip('.')}: if the port expects TLS from the first "
                    "byte (usually 465), set security: tls; security: none sends in the "
                    "clear (a trusted local relay only)"), retry=True)
            # "AUTH extension not supported by server": the server and the configuration
            # disagree, which no retry will mend
            permanent = "not supported" in text
            return SendFailed(reason=self._scrub(f"{where}: {e}"), retry=not permanent)
        except TimeoutError:
            return SendFailed(reason=f"{where}: timed out", retry=True)
        except OSError as e:
            return SendFailed(reason=self._scrub(f"{where}: {type(e).__name__}: {e}"), retry=True)
        if errors:
            # some (not all) recipients refused: the message went out to the others
            log.warning(
                "notify.partial",
                channel=self.name,
                refused=", ".join(f"{k}: {v.code}" for k, v in errors.items()),
            )
        return None

    async def close(self) -> None:
        """Nothing to release: each message uses its own SMTP connection."""
