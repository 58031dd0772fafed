"""Email notifier (aiosmtplib): STARTTLS, implicit TLS or plain; optional login.

Errors: connection refused, timeouts, dropped connections and 4xx replies → retry;
5xx replies (550 recipient refused, 535 authentication failed, 554...) → do not retry.
``Sent.ref`` is the Message-ID, which an update puts in In-Reply-To / References.
The Message-ID is derived from the channel and the alert (or the ``key`` given), so a
retried delivery keeps the same Message-ID and a receiving system can deduplicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage

import aiosmtplib

from monitor.config import EmailChannel
from monitor.log import get_logger, scrub
from monitor.model import Alert, SendFailed, SendResult, Sent
from monitor.notify.render import alert_key, email_digest, email_message
from monitor.notify.slack import RateLimiter

log = get_logger(__name__)


def _domain(address: str) -> str:
    addr = address.strip().strip("<>")
    return addr.rpartition("@")[2].strip(" >") or "monitor.invalid"


class EmailNotifier:
    """Sends each alert as one email to ``cfg.to`` (one SMTP connection per message)."""

    def __init__(self, name: str, cfg: EmailChannel) -> None:
        self.name = name
        self.cfg = cfg
        self.limiter = RateLimiter(cfg.rate)
        self.domain = _domain(cfg.from_)

    def _scrub(self, text: str) -> str:
        if self.cfg.password:
            text = text.replace(self.cfg.password, "***")
        return scrub(text)

    async def send(
        self, alert: Alert, *, thread_ref: str | None = None, key: str | None = None
    ) -> SendResult:
        """``key`` (the delivery key, optional) fixes the Message-ID; without it the
        Message-ID is derived from the channel name and the alert."""
        msg = email_message(
            alert,
            sender=self.cfg.from_,
            to=self.cfg.to,
            thread_ref=thread_ref if alert.update else None,
            message_id_domain=self.domain,
            key=key if key is not None else f"{self.name}\x1f{alert_key(alert)}",
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

    async def send_digest(self, alerts: Sequence[Alert], *, key: str) -> SendResult:
        msg = email_digest(
            alerts,
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
            errors, _ = await aiosmtplib.send(
                msg,
                sender=cfg.from_,
                recipients=list(cfg.to),
                hostname=cfg.host,
                port=cfg.effective_port,
                use_tls=cfg.security == "tls",
                start_tls=cfg.security == "starttls",
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
            return SendFailed(
                reason=self._scrub(f"{where}: {what}: {e.code} {e.message}"),
                retry=not 500 <= e.code < 600,
            )
        except aiosmtplib.SMTPTimeoutError:
            return SendFailed(reason=f"{where}: timed out", retry=True)
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected) as e:
            return SendFailed(reason=self._scrub(f"{where}: connection failed: {e}"), retry=True)
        except aiosmtplib.SMTPNotSupported as e:
            # e.g. STARTTLS or AUTH not offered: a configuration problem
            return SendFailed(reason=self._scrub(f"{where}: not supported: {e}"), retry=False)
        except aiosmtplib.SMTPException as e:
            # "STARTTLS/AUTH extension not supported by server": the server and the
            # configuration disagree, which no retry will mend
            permanent = "not supported" in str(e)
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
