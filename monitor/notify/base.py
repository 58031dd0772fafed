"""The Notifier protocol: one per channel kind, one shared test suite (tests/test_notify.py).

``send`` never raises for a delivery problem: it returns ``Sent(ref)`` when the peer
accepted the message, or ``SendFailed(reason, retry, retry_after)``. ``retry`` is True
for transient problems (connection refused, timeouts, 5xx, 429 with its Retry-After)
and False for those that will not heal by themselves (bad token, unknown channel,
rejected recipient). Secrets (webhook URLs, tokens, passwords) never appear in reasons.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from monitor.core.model import Alert, SendResult
from monitor.notify.render import DigestKind, Part


@runtime_checkable
class Notifier(Protocol):
    name: str  # the channel's name in config.yaml

    async def send(
        self,
        alert: Alert,
        *,
        thread_ref: str | None = None,
        key: str | None = None,
        attempt: int = 1,
        created: datetime | None = None,
    ) -> SendResult:
        """Deliver one alert. ``thread_ref`` is the parent's ``Sent.ref`` for updates
        (Slack: reply in the thread, or edit the first message; email: In-Reply-To /
        References). ``key`` is the delivery's idempotency key, ``attempt`` counts from 1
        and ``created`` is when the delivery was queued: a notifier may use them to make
        a retry after an ambiguous outcome (a timeout after sending) repeat nothing
        (Slack bot: the key travels in the message's metadata and a retry looks for it
        in the channel's history first; email: the key fixes the Message-ID)."""
        ...

    async def send_digest(self, alerts: Sequence[Alert], *, key: str,
                          kind: DigestKind = "digest", heading: str | None = None,
                          thread_ref: str | None = None, part: Part | None = None,
                          attempt: int = 1, created: datetime | None = None) -> SendResult:
        """Deliver many alerts as ONE message (``key`` identifies it, e.g. for a stable
        email Message-ID): what a digest rule collected, a roll-up of one rule's alerts
        when the channel's queue is longer than its rate can send promptly, the alerts
        held back while the channel was down, a group's message, or what the channel's
        quiet hours held (``kind``). ``heading`` replaces the kind's default heading;
        ``thread_ref`` (a group's first message's ``Sent.ref``) threads a follow-up
        under it. ``part`` (k, n): the message is the k-th of a digest the dispatcher
        split in n (it says "part k/n").

        A notifier whose messages hold a limited number of stories says so with an
        attribute ``digest_max`` (Slack 20, email 100; None or absent: no limit): the
        dispatcher splits longer digests on story boundaries."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class BatchNotifier(Notifier, Protocol):
    """A notifier that can take many alerts in one write, all or nothing (the file
    channel: one append and one fsync for a batch). The dispatcher then records the
    whole batch sent in one store transaction instead of one per alert."""

    async def send_batch(self, alerts: Sequence[Alert]) -> SendResult:
        """Deliver every alert as its own message in one operation: ``Sent`` means all
        of them were accepted, ``SendFailed`` that none was."""
        ...
