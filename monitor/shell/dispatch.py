"""The outbox worker: claim due deliveries, send them, record the outcome.

A delivery is marked sent only after the peer accepted it. A transient failure (a 429,
a 5xx, SMTP down) is retried with backoff, honouring Retry-After; a permanent one (bad
token, rejected recipient) is marked failed and logged for the operator. Channels are
independent: a dead SMTP server never holds up Slack.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from monitor.config import DeliveryConfig
from monitor.core.model import Delivery, SendFailed, Sent
from monitor.core.schedule import next_cron, retry_at
from monitor.log import get_logger, scrub
from monitor.metrics import Metrics
from monitor.notify.base import BatchNotifier, Notifier
from monitor.store.base import Store

log = get_logger(__name__)

LEASE = timedelta(minutes=5)


@dataclass(frozen=True, kw_only=True, slots=True)
class DispatchResult:
    sent: int = 0
    retrying: int = 0
    failed: int = 0

    def __add__(self, other: DispatchResult) -> DispatchResult:
        return DispatchResult(
            sent=self.sent + other.sent,
            retrying=self.retrying + other.retrying,
            failed=self.failed + other.failed,
        )


class Dispatcher:
    def __init__(
        self,
        store: Store,
        notifiers: Mapping[str, Notifier],
        settings: DeliveryConfig,
        metrics: Metrics,
        clock: Callable[[], datetime],
        on_sent: Callable[[Delivery], None] | None = None,
        min_rate: float = 1.0,
    ) -> None:
        self.store = store
        self.notifiers = dict(notifiers)
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.on_sent = on_sent
        self.stopping = False  # set on shutdown: finish the send in hand, give back the rest
        # a claim must outlive sending a whole batch at the slowest channel's pace
        self.lease = max(LEASE, timedelta(seconds=2 * settings.batch / min_rate))
        self._blocked: dict[str, datetime] = {}  # channel → retry time, for this round
        self._lock = asyncio.Lock()

    async def run_once(self) -> DispatchResult:
        """Send everything due now (in batches) and return what happened."""
        total = DispatchResult()
        async with self._lock:  # one dispatch round at a time per process
            self._blocked.clear()
            while not self.stopping:
                now = self.clock()
                batch = await self.store.claim_deliveries(
                    now, limit=self.settings.batch, lease_until=now + self.lease
                )
                if not batch:
                    break
                by_channel: dict[str, list[Delivery]] = defaultdict(list)
                for d in batch:
                    by_channel[d.channel].append(d)
                results = await asyncio.gather(
                    *(self._send_channel(ch, ds) for ch, ds in by_channel.items()),
                    return_exceptions=True,
                )
                failed = [r for r in results if isinstance(r, BaseException)]
                for r in results:
                    if isinstance(r, DispatchResult):
                        total = total + r
                if failed:
                    # the store failed mid-batch: what was claimed and not marked is retried
                    # after its lease; say so, and let the next round try again
                    for e in failed:
                        log.error("dispatch.store_error", error=scrub(repr(e)))
                    break
                if len(batch) < self.settings.batch:
                    break
            self.metrics.outbox_pending.set(await self.store.count_pending())
        return total

    async def _send_channel(self, channel: str, deliveries: list[Delivery]) -> DispatchResult:
        """Deliveries of one channel, in order (the notifier paces them to its rate).
        After a transient failure the channel's other deliveries of this round wait too
        (the peer is unwell): they are given back, not tried."""
        result = DispatchResult()
        notifier = self.notifiers.get(channel)
        digests: dict[str, list[Delivery]] = defaultdict(list)
        for d in deliveries:
            if d.alert.match.digest and not self.stopping:
                digests[d.alert.match.rule].append(d)
        if digests:
            deliveries = [d for d in deliveries if not d.alert.match.digest]
            for group in digests.values():
                result = result + await self._send_digest(channel, notifier, group)
        if (
            isinstance(notifier, BatchNotifier)
            and len(deliveries) > 1
            and not self.stopping
            and channel not in self._blocked
        ):
            return result + await self._send_batch(channel, notifier, deliveries)
        refs: dict[str, str] = {}  # parents sent in this batch: key → ref, for threading
        for d in deliveries:
            if self.stopping:
                assert d.id is not None
                await self.store.release(d.id, self.clock())  # due again at the next start
                continue
            if d.parent_key and d.thread_ref is None and d.parent_key in refs:
                d = replace(d, thread_ref=refs[d.parent_key])
            assert d.id is not None
            if notifier is None:
                await self.store.mark_failed(
                    d.id, self.clock(), f"channel {channel!r} is not configured any more", None
                )
                log.error("delivery.failed", channel=channel, key=d.key,
                          error="channel not configured")
                result = result + DispatchResult(failed=1)
                continue
            blocked = self._blocked.get(channel)
            if blocked is not None:
                await self.store.release(d.id, blocked)
                result = result + DispatchResult(retrying=1)
                continue
            try:
                outcome = await notifier.send(d.alert, thread_ref=d.thread_ref, key=d.key, attempt=d.attempts + 1, created=d.created)
            except Exception as e:  # a notifier bug must not lose the delivery
                log.error("delivery.crashed", channel=channel, key=d.key, error=repr(e))
                outcome = SendFailed(reason=f"notifier error: {e!r}", retry=True)
            now = self.clock()
            if isinstance(outcome, Sent):
                await self.store.mark_sent(d.id, now, outcome.ref)
                if outcome.ref:
                    refs[d.key] = outcome.ref
                self.metrics.deliveries.labels(channel, "sent").inc()
                log.info("delivery.sent", channel=channel, rule=d.alert.match.rule,
                         story=d.alert.story.id, update=d.alert.update, attempts=d.attempts + 1)
                if self.on_sent:
                    self.on_sent(d)
                result = result + DispatchResult(sent=1)
                continue
            result = result + await self._failed(channel, d, outcome, now)
        return result

    async def _send_batch(
        self, channel: str, notifier: BatchNotifier, batch: list[Delivery]
    ) -> DispatchResult:
        """A channel that writes many alerts at once (a file): one write, one store
        transaction for the whole batch; on failure every delivery is retried."""
        try:
            outcome = await notifier.send_batch([d.alert for d in batch])
        except Exception as e:  # a notifier bug must not lose the deliveries
            log.error("delivery.crashed", channel=channel, deliveries=len(batch), error=repr(e))
            outcome = SendFailed(reason=f"notifier error: {e!r}", retry=True)
        now = self.clock()
        if isinstance(outcome, Sent):
            await self.store.mark_sent_many([d.id for d in batch if d.id is not None], now,
                                            outcome.ref)
            self.metrics.deliveries.labels(channel, "sent").inc(len(batch))
            for d in batch:
                log.info("delivery.sent", channel=channel, rule=d.alert.match.rule,
                         story=d.alert.story.id, update=d.alert.update, attempts=d.attempts + 1)
                if self.on_sent:
                    self.on_sent(d)
            return DispatchResult(sent=len(batch))
        result = DispatchResult()
        for d in batch:
            result = result + await self._failed(channel, d, outcome, now)
        return result

    async def _failed(
        self, channel: str, d: Delivery, outcome: SendFailed, now: datetime
    ) -> DispatchResult:
        """Record a failed attempt: retried later (the channel's other deliveries then
        wait for this round) or given up."""
        assert d.id is not None
        nxt = (
            retry_at(
                now=now,
                created=max(d.created, d.requeued or d.created),
                attempts=d.attempts + 1,
                retry_after=outcome.retry_after,
                retry_min=self.settings.retry_min,
                retry_max=self.settings.retry_max,
                give_up_after=self.settings.give_up_after,
            )
            if outcome.retry
            else None
        )
        await self.store.mark_failed(d.id, now, scrub(outcome.reason), nxt)
        if nxt is None:
            if outcome.retry:  # given up for its age, but the peer is struggling right now:
                # the channel's other deliveries wait for this round all the same
                wait = max(self.settings.retry_min, outcome.retry_after or 0.0)
                until = now + timedelta(seconds=wait)
                self._blocked[channel] = min(until, self._blocked.get(channel, until))
            self.metrics.deliveries.labels(channel, "failed").inc()
            log.error("delivery.failed", channel=channel, rule=d.alert.match.rule,
                      story=d.alert.story.id, error=outcome.reason,
                      attempts=d.attempts + 1, retryable=outcome.retry)
            return DispatchResult(failed=1)
        self.metrics.deliveries.labels(channel, "retry").inc()
        log.warning("delivery.retry", channel=channel, rule=d.alert.match.rule,
                    error=outcome.reason, attempts=d.attempts + 1,
                    next_attempt=nxt.isoformat())
        self._blocked[channel] = min(nxt, self._blocked.get(channel, nxt))
        return DispatchResult(retrying=1)

    async def _send_digest(
        self, channel: str, notifier: Notifier | None, group: list[Delivery]
    ) -> DispatchResult:
        """The alerts a digest rule collected, as one message; all sent or all retried."""
        rule = group[0].alert.match.rule
        ids = [d.id for d in group if d.id is not None]
        if notifier is None:
            for i in ids:
                await self.store.mark_failed(
                    i, self.clock(), f"channel {channel!r} is not configured any more", None)
            return DispatchResult(failed=len(ids))
        key = f"digest:{rule}:{channel}:{min(ids)}"
        try:
            outcome = await notifier.send_digest([d.alert for d in group], key=key)
        except Exception as e:  # a notifier bug must not lose the deliveries
            log.error("delivery.crashed", channel=channel, key=key, error=repr(e))
            outcome = SendFailed(reason=f"notifier error: {e!r}", retry=True)
        now = self.clock()
        if isinstance(outcome, Sent):
            await self.store.mark_sent_many(ids, now, outcome.ref)
            self.metrics.deliveries.labels(channel, "sent").inc(len(ids))
            log.info("digest.sent", channel=channel, rule=rule, stories=len(ids))
            return DispatchResult(sent=len(ids))
        first = group[0]
        # a digest's delivery starts when it fires, not when its first story matched
        fired = next_cron(first.alert.match.digest or "", first.created) or first.created
        fired = max(fired, first.requeued or fired)  # `monitor outbox retry` restarts it
        nxt = (
            retry_at(now=now, created=fired, attempts=first.attempts + 1,
                     retry_after=outcome.retry_after, retry_min=self.settings.retry_min,
                     retry_max=self.settings.retry_max,
                     give_up_after=self.settings.give_up_after)
            if outcome.retry else None
        )
        for i in ids:
            await self.store.mark_failed(i, now, scrub(outcome.reason), nxt)
        log.warning("digest.failed", channel=channel, rule=rule, stories=len(ids),
                    error=outcome.reason, retry=nxt is not None)
        if nxt is None:
            return DispatchResult(failed=len(ids))
        return DispatchResult(retrying=len(ids))

    async def close(self) -> None:
        for n in self.notifiers.values():
            try:
                await n.close()
            except Exception as e:  # closing must not mask the shutdown
                log.warning("notifier.close_failed", channel=n.name, error=repr(e))
