"""The outbox worker: claim due deliveries, send them, record the outcome.

A delivery is marked sent only after the peer accepted it. A transient failure (a 5xx,
SMTP down) is retried with backoff (with jitter), honouring Retry-After; a permanent one
(bad token, rejected recipient) is marked failed and logged for the operator.

Channels are independent: each has its own loop (``serve``), claims only its own
deliveries and sends at its own pace, so a slow or failing channel never delays another.
A 429 pauses its channel for exactly the Retry-After, without counting against the alert.
When a channel's due queue is longer than its rate can send within
``delivery.rollup_after``, each rule's alerts go as one summary ("rule: 14 new stories");
alerts that waited longer than ``delivery.max_age`` (an outage) go as one "while monitor
could not deliver" summary instead of as breaking news. Nothing is dropped: rolled-up and
held-back alerts are marked sent with the summary's reference, and their updates thread
under it.

A grouped rule's deliveries (``group_by``) come due together at their group's slot (see
``route``): each group claimed goes as ONE message, "rule · Snowden: 7 stories", or,
when the group sent within its ``repeat_interval``, a follow-up "rule · Snowden: 3 more"
threaded under the group's first message; all its deliveries are marked sent with that
thread root. A channel's quiet hours (``quiet``) hold its deliveries until the window
ends (given back, not tried: no attempt is counted), except the severities it lets
through; once the window is over, what was queued during it goes as ONE "while you were
away" digest (the channel's last window, ``schedule.last_quiet_window``: stateless).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from monitor.config import DeliveryConfig, QuietHours
from monitor.core.feedhealth import channel_review
from monitor.core.model import Delivery, GroupState, SendFailed, SendResult, Sent
from monitor.core.route import group_label, group_thread
from monitor.core.schedule import last_quiet_window, next_cron, quiet_window, retry_at
from monitor.errors import StoreError
from monitor.log import get_logger, scrub
from monitor.metrics import Metrics
from monitor.notify.base import BatchNotifier, Notifier
from monitor.notify.render import DigestKind, group_heading, quiet_heading
from monitor.store.base import Store

log = get_logger(__name__)

LEASE = timedelta(minutes=5)  # deliveries of a channel no longer configured
#: A claim is held for twice its sending time at the channel's rate, plus this many of
#: the peer's timeouts, plus ``LEASE_MARGIN`` seconds.
LEASE_TIMEOUTS = 10
LEASE_MARGIN = 10.0
#: A roll-up claims at most this many deliveries of one channel at once.
ROLLUP_CLAIM_MAX = 1000
#: How often ``serve`` looks for deliveries of channels no longer configured.
STRAYS_EVERY = 60.0
#: The "while you were away" digest claims at most this many deliveries of one channel.
QUIET_CLAIM_MAX = 10 * ROLLUP_CLAIM_MAX
#: A 429 without a usable Retry-After pauses its channel this long.
DEFAULT_PAUSE = 1.0
#: At most this many deliveries that the peer accepted wait for their mark to be stored
#: at any moment (one message that carries more, a summary, waits for its own): the
#: marks are written in the background, together, while the next sends go on. So a
#: crash (kill -9, power loss) sends again at most this many deliveries, plus the one
#: being sent, once their lease runs out or their instance is declared dead.
MARKS_AHEAD = 8
#: A write of marks starts when half of ``MARKS_AHEAD`` wait, or this long (seconds)
#: after the first of them was noted, or at once before a claim, at the end of a round
#: and at a stop: a mark waits at most this long plus one write.
MARKS_WINDOW = 0.005


def _timeout_of(notifier: Notifier | None) -> float:
    """The peer's timeout of one request (seconds); a file channel has none: 1 s."""
    timeout = getattr(getattr(notifier, "cfg", None), "timeout", None)
    return float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else 1.0


def _rate_of(notifier: Notifier) -> float:
    limiter = getattr(notifier, "limiter", None)
    rate = getattr(limiter, "rate", None)
    return float(rate) if isinstance(rate, (int, float)) and rate > 0 else 1.0


#: A channel is failing after this many failed sends in a row ...
CHANNEL_FAILING_AFTER = 3
#: ... or when its sends have kept failing (none succeeded) for this long.
CHANNEL_FAILING_FOR = timedelta(minutes=15)


@dataclass(kw_only=True, slots=True)
class ChannelHealth:
    """The outcome of a channel's recent sends (one message: an alert, a digest, a batch
    written at once). A 429 is neither: the peer is pacing us, not failing. A channel
    that has not sent anything yet is healthy."""

    failures: int = 0  # failed sends since the last successful one
    last_error: str | None = None
    last_failure: datetime | None = None
    last_success: datetime | None = None
    failing_since: datetime | None = None  # the first failure of the current streak

    def failing(self, now: datetime) -> bool:
        """Its deliveries keep failing: ``CHANNEL_FAILING_AFTER`` failed sends in a row,
        or failures only for ``CHANNEL_FAILING_FOR``."""
        return self.failures >= CHANNEL_FAILING_AFTER or (
            self.failing_since is not None and now - self.failing_since >= CHANNEL_FAILING_FOR)

    def to_dict(self, now: datetime) -> dict[str, object]:
        return {
            "failing": self.failing(now),
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
            "last_failure": self.last_failure.isoformat() if self.last_failure else None,
            "last_success": self.last_success.isoformat() if self.last_success else None,
            "failing_since": self.failing_since.isoformat() if self.failing_since else None,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class DispatchResult:
    sent: int = 0  # deliveries accounted as delivered (rolled up and held back included)
    retrying: int = 0
    failed: int = 0
    rolled_up: int = 0  # of ``sent``: in a per-rule roll-up summary
    stale: int = 0  # of ``sent``: in a "while monitor could not deliver" summary
    grouped: int = 0  # of ``sent``: in a group's message (a rule's ``group_by``)
    quiet: int = 0  # of ``sent``: in a "while you were away" digest (quiet hours)
    held: int = 0  # given back until the channel's quiet hours end (not attempted)
    #: the same counts per channel (``run_once``: `monitor once` shows them); deliveries
    #: of channels no longer configured are in the totals only
    by_channel: Mapping[str, DispatchResult] = field(default_factory=dict, compare=False)

    def __add__(self, other: DispatchResult) -> DispatchResult:
        channels = dict(self.by_channel)
        for ch, r in other.by_channel.items():
            channels[ch] = channels[ch] + r if ch in channels else r
        return DispatchResult(
            sent=self.sent + other.sent,
            retrying=self.retrying + other.retrying,
            failed=self.failed + other.failed,
            rolled_up=self.rolled_up + other.rolled_up,
            stale=self.stale + other.stale,
            grouped=self.grouped + other.grouped,
            quiet=self.quiet + other.quiet,
            held=self.held + other.held,
            by_channel=channels,
        )

    def counts(self) -> dict[str, int]:
        return {"sent": self.sent, "rolled_up": self.rolled_up, "stale": self.stale,
                "grouped": self.grouped, "quiet": self.quiet, "held": self.held,
                "retrying": self.retrying, "failed": self.failed}


class Dispatcher:
    def __init__(
        self,
        store: Store,
        notifiers: Mapping[str, Notifier],
        settings: DeliveryConfig,
        metrics: Metrics,
        clock: Callable[[], datetime],
        on_sent: Callable[[Delivery], None] | None = None,
        rates: Mapping[str, float] | None = None,
        quiet: Mapping[str, QuietHours] | None = None,
    ) -> None:
        self.store = store
        self.notifiers = dict(notifiers)
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.on_sent = on_sent
        # channel → messages per second: given, else the notifier's own pace
        self.rates = {ch: _rate_of(n) for ch, n in self.notifiers.items()}
        self.rates.update(rates or {})
        self.quiet = dict(quiet or {})  # channel → its quiet hours
        self.stopping = False  # set on shutdown: finish the send in hand, give back the rest
        # the instance whose claims these are (``shell.liveness``): its deliveries are
        # retaken when it is declared dead; None: nobody's (``monitor once``)
        self.claimer: str | None = None
        # deliveries the peer accepted whose mark is not stored yet: id -> (sent at, ref).
        # Written in the background (``_write_marks``), at most ``MARKS_AHEAD`` of them
        # waiting; when the store cannot take them (it is unreachable) they stay here and
        # are written before the next claim: never sent again by this instance
        self._unmarked: dict[int, tuple[datetime, str | None]] = {}
        self._writing: asyncio.Task[None] | None = None  # the marks' write in hand
        self._late: set[int] = set()  # of ``_unmarked``: a write of theirs failed
        # set when the write in hand may go (``MARKS_WINDOW``): while it gathers marks
        self._gather: asyncio.Future[None] | None = None
        self._flushing = 0  # callers of ``_flush_marks`` waiting: no gathering then
        # why the last write failed (the store is unreachable): raised to every sender
        # until a flush gets the marks through
        self._mark_error: Exception | None = None
        self._paused: dict[str, datetime] = {}  # channel → not before (429, peer unwell)
        self._failing: dict[str, int] = {}  # channel → transient failures in a row
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.health: dict[str, ChannelHealth] = {ch: ChannelHealth() for ch in self.notifiers}
        # ``health.channel`` and ``health.fallback``: where notices about a failing
        # channel go (set by the runtime, and again by a config reload)
        self.ops: tuple[str | None, str | None] = (None, None)
        self._ops_open: dict[str, str] = {}  # channel → key of its open "failing" notice
        # ``serve``: one loop per channel, started and ended as channels come and go
        self._events: dict[str, asyncio.Event] = {}
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._tick = 1.0
        self._serving = False
        self._closing: set[asyncio.Task[None]] = set()  # old notifiers closed after a reload
        self._gauged: set[str] = set()  # channels the outbox gauges have a value for
        # a store failure of a round (the daemon: said once while it lasts, see
        # shell.trouble); without it, an error line per failure
        self.on_store_error: Callable[[StoreError, str], None] | None = None

    def _round_failed(self, e: BaseException, during: str, event: str = "dispatch.error",
                      **fields: object) -> None:
        if isinstance(e, StoreError) and self.on_store_error is not None:
            self.on_store_error(e, during)
        else:
            log.error(event, error=scrub(repr(e)), **fields)

    # -- pacing ----------------------------------------------------------------------

    def rollup_threshold(self, channel: str) -> int | None:
        """More due deliveries than this (what the channel's rate sends within
        ``rollup_after``) and a channel rolls each rule's alerts up; None: never."""
        if self.settings.rollup_after <= 0:
            return None
        return max(1, int(self.rates.get(channel, 1.0) * self.settings.rollup_after))

    def _claim_limit(self, channel: str) -> int:
        # enough to see a queue longer than the roll-up threshold, where one can be seen
        threshold = self.rollup_threshold(channel)
        if threshold is None or threshold >= ROLLUP_CLAIM_MAX:
            return self.settings.batch
        return max(self.settings.batch, threshold + 1)

    async def _mark_sent(self, ids: Sequence[int], now: datetime, ref: str | None) -> None:
        """Note that the peer accepted these deliveries. Their marks are stored in the
        background, many in one transaction (``_write_marks``), while the next sends go
        on; before each claim, at the end of a round and at ``close`` every mark noted
        is stored first (``_flush_marks``). At most ``MARKS_AHEAD`` wait at any moment:
        past that, this waits for them to be stored.

        When the store cannot take them (a database restart) they are kept here and
        retried before the next claim, and the store's error ends the round: what was
        sent is not sent again by this instance, and by no other while the lease holds."""
        for i in ids:
            self._unmarked.setdefault(i, (now, ref))
        if self._mark_error is not None:
            raise self._mark_error
        self._start_marks()
        if len(self._unmarked) >= MARKS_AHEAD // 2:
            self._hurry_marks()
        while len(self._unmarked) > MARKS_AHEAD:
            self._start_marks()
            if self._writing is None:
                break
            await asyncio.shield(self._writing)
            if self._mark_error is not None:
                raise self._mark_error

    def _start_marks(self) -> None:
        """Start storing the marks noted, unless a write is in hand (when it ends, it
        starts the next one for what was noted meanwhile) or the last one failed (the
        next ``_flush_marks`` tries again)."""
        if not self._unmarked or self._mark_error is not None:
            return
        if self._writing is not None and not self._writing.done():
            return
        self._writing = asyncio.create_task(self._write_marks(), name="dispatch-marks")
        self._writing.add_done_callback(self._marks_written)

    def _hurry_marks(self) -> None:
        """Write the marks waiting now, without waiting out ``MARKS_WINDOW``."""
        if self._gather is not None and not self._gather.done():
            self._gather.set_result(None)

    def _marks_written(self, task: asyncio.Task[None]) -> None:
        """A write ended: the next one starts for the marks noted meanwhile (but after a
        cancelled one, the loop ending: ``_flush_marks`` will)."""
        if not task.cancelled():
            self._start_marks()

    async def _write_marks(self) -> None:
        """Store every mark noted so far in one transaction. A batch the store refuses
        for one of its rows (a delivery deleted meanwhile) is stored one by one, and
        the marks it refuses are dropped, said; when the store is unreachable, the marks
        stay and ``_mark_error`` says why."""
        if len(self._unmarked) < MARKS_AHEAD // 2 and not self._late and not self._flushing:
            # a few more, from the sends going on, join this write
            loop = asyncio.get_running_loop()
            self._gather = gather = loop.create_future()
            timer = loop.call_later(MARKS_WINDOW, self._hurry_marks)
            try:
                await gather
            finally:
                timer.cancel()
                self._gather = None
        batch = [(i, at, ref) for i, (at, ref) in self._unmarked.items()]
        late = any(i in self._late for i, _, _ in batch)
        try:
            await self.store.mark_sent_each(batch)
        except StoreError as e:
            if e.kind in ("unavailable", "busy"):
                self._marks_refused(e, len(batch))
                return
            for i, at, ref in batch:
                try:
                    await self.store.mark_sent(i, at, ref)
                except StoreError as e1:
                    if e1.kind in ("unavailable", "busy"):
                        self._marks_refused(e1, len(self._unmarked))
                        return
                    log.warning("delivery.unmarked_dropped", id=i, error=scrub(str(e1)))
                self._unmarked.pop(i, None)
                self._late.discard(i)
            return
        except Exception as e:  # not the store's answer (a bug): kept, retried, said
            self._marks_refused(e, len(batch))
            return
        for i, _, _ in batch:
            self._unmarked.pop(i, None)
        if late:
            self._late.difference_update(i for i, _, _ in batch)
            log.info("delivery.marked_late", deliveries=len(batch),
                     sent_at=min(at for _, at, _ in batch).isoformat())

    def _marks_refused(self, e: Exception, n: int) -> None:
        self._mark_error = e
        self._late.update(self._unmarked)
        log.warning("delivery.unmarked", deliveries=n, error=scrub(str(e)),
                    note="sent, but not marked yet: the mark is retried, the "
                    "delivery is not sent again")

    async def _flush_marks(self) -> None:
        """Store every mark noted so far (before a claim, at the end of a round, at
        ``close``); raises the store's error when it cannot take them."""
        self._mark_error = None  # try again
        wanted = set(self._unmarked)
        self._flushing += 1
        try:
            while wanted & self._unmarked.keys():
                self._start_marks()
                self._hurry_marks()
                if self._writing is None:
                    break
                await asyncio.shield(self._writing)
                if self._mark_error is not None:
                    raise self._mark_error
        finally:
            self._flushing -= 1

    def _lease(self, channel: str, n: int) -> timedelta:
        """How long a claim of ``n`` deliveries is held: longer than the worst case of
        sending them all (twice the time the channel's rate needs, plus
        ``LEASE_TIMEOUTS`` of its peer's timeouts for the slowest send: connecting,
        SMTP's commands, a history lookup), and no longer, so that the deliveries of a
        daemon killed mid-send come back soon after its restart."""
        rate = max(self.rates.get(channel, 1.0), 1e-3)
        timeout = _timeout_of(self.notifiers.get(channel))
        return timedelta(seconds=2 * n / rate + LEASE_TIMEOUTS * timeout + LEASE_MARGIN)

    def paused_until(self, channel: str) -> datetime | None:
        until = self._paused.get(channel)
        return until if until is not None and until > self.clock() else None

    def _peer_failed(self, channel: str, now: datetime, retry_after: float | None,
                     cap: datetime | None = None) -> None:
        """A transient failure: the channel rests before its next send, ``retry_min``
        doubling with each failure in a row (up to ``retry_max``), the peer's
        Retry-After at least. The failed delivery keeps its own backoff; the others
        are not held to it (one old alert's long backoff must not hold a channel)."""
        k = self._failing.get(channel, 0) + 1
        self._failing[channel] = k
        wait = min(self.settings.retry_max, self.settings.retry_min * 2 ** min(k - 1, 30))
        if retry_after is not None:
            wait = max(wait, min(retry_after, 24 * 3600.0))
        until = now + timedelta(seconds=wait)
        if cap is not None:  # never past the failed delivery's own retry time
            until = min(until, cap)
        self._pause(channel, until)

    def _pause(self, channel: str, until: datetime) -> None:
        self._paused[channel] = max(until, self._paused.get(channel, until))

    # -- rounds ----------------------------------------------------------------------

    async def run_once(self) -> DispatchResult:
        """Send everything due now, every channel at once, and return what happened. A
        paused channel (429) keeps its deliveries for later."""
        channels = list(self.notifiers)
        results = await asyncio.gather(
            *(self.drain_channel(ch) for ch in channels), self._drain_strays(),
            return_exceptions=True,
        )
        total = DispatchResult()
        for ch, r in zip([*channels, None], results, strict=True):
            if isinstance(r, DispatchResult):
                total = total + (replace(r, by_channel={ch: r}) if ch is not None else r)
            elif isinstance(r, BaseException):
                # the store failed mid-round: what was claimed and not marked is retried
                # after its lease; say so, and let the next round try again
                self._round_failed(r, "deliver", "dispatch.store_error")
        await self._gauge()
        return total

    async def serve(self, wake: asyncio.Event, tick: float = 1.0) -> None:
        """``monitor run``: one loop per channel until ``stopping``. ``wake`` (set when
        a poll queued deliveries) wakes every channel; a channel also looks every
        ``tick`` seconds for retries that came due. Channels added by a reload
        (``update_channels``) get their loop at once; a removed channel's loop ends
        after the claim in hand."""
        self._tick = tick
        self._serving = True
        for ch in self.notifiers:
            self._spawn(ch)

        async def pump() -> None:
            while True:
                await wake.wait()
                wake.clear()
                for ev in self._events.values():
                    ev.set()
                self._changed.set()

        async def strays() -> None:
            while not self.stopping:
                try:
                    await self._drain_strays()
                except Exception as e:
                    self._round_failed(e, "deliver:strays")
                await asyncio.sleep(STRAYS_EVERY)

        helpers = [asyncio.create_task(pump(), name="dispatch-wake"),
                   asyncio.create_task(strays(), name="dispatch-strays")]
        try:
            while True:
                self._loops = {ch: t for ch, t in self._loops.items() if not t.done()}
                if self.stopping and not self._loops:
                    break
                self._changed.clear()
                changed = asyncio.ensure_future(self._changed.wait())
                try:
                    await asyncio.wait({*self._loops.values(), changed},
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
        finally:
            self._serving = False
            for t in [*helpers, *self._loops.values()]:
                t.cancel()
            await asyncio.gather(*helpers, *self._loops.values(), return_exceptions=True)
            self._loops.clear()

    def _spawn(self, channel: str) -> None:
        """Start ``channel``'s loop (``serve``), unless it runs."""
        running = self._loops.get(channel)
        if running is not None and not running.done():
            return
        ev = self._events.setdefault(channel, asyncio.Event())
        ev.set()  # look at once
        self._loops[channel] = asyncio.create_task(self._channel_loop(channel, ev),
                                                   name=f"dispatch:{channel}")
        self._changed.set()

    async def _channel_loop(self, channel: str, ev: asyncio.Event) -> None:
        while not self.stopping and channel in self.notifiers:
            try:
                r = await self.drain_channel(channel)
                if r != DispatchResult():
                    await self._gauge()
            except Exception as e:  # the store hiccuped: try again shortly
                self._round_failed(e, f"deliver:{channel}", channel=channel)
            timeout = self._tick
            until = self.paused_until(channel)
            if until is not None:
                timeout = min(self._tick, max(0.01, (until - self.clock()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), timeout=timeout)
            ev.clear()
        self._events.pop(channel, None)

    def update_channels(
        self,
        notifiers: Mapping[str, Notifier],
        *,
        settings: DeliveryConfig,
        rates: Mapping[str, float],
        quiet: Mapping[str, QuietHours],
    ) -> None:
        """A config reload: ``notifiers`` is every channel now configured (new notifiers
        for the channels added or changed, the running ones for the others). A new
        channel gets its loop; a removed one's loop ends (its pending deliveries are then
        failed as strays, said); a replaced notifier is closed once the claim it may be
        sending is done. Delivery settings apply from the next claim."""
        old = self.notifiers
        self.notifiers = dict(notifiers)
        self.settings = settings
        self.rates = {ch: _rate_of(n) for ch, n in self.notifiers.items()}
        self.rates.update(rates)
        self.quiet = dict(quiet)
        for ch in self.notifiers:
            self.health.setdefault(ch, ChannelHealth())
        for ch in set(self.health) - set(self.notifiers):
            del self.health[ch]
            self._paused.pop(ch, None)
            with contextlib.suppress(KeyError):
                self.metrics.channel_failures.remove(ch)
        for ch, n in old.items():
            if self.notifiers.get(ch) is not n:
                if ch in self.notifiers:  # changed: its failures were the old settings'
                    self.health[ch] = ChannelHealth()
                    self._paused.pop(ch, None)
                task = asyncio.create_task(self._close_later(ch, n), name=f"close:{ch}")
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        if self._serving:
            for ch in self.notifiers:
                self._spawn(ch)
            for ev in self._events.values():
                ev.set()

    async def _close_later(self, channel: str, notifier: Notifier) -> None:
        async with self._locks[channel]:  # the round in hand (if any) is over
            try:
                await notifier.close()
            except Exception as e:
                log.warning("notifier.close_failed", channel=channel, error=repr(e))

    def _record(self, channel: str, outcome: SendResult) -> None:
        """Keep the channel's health (``ChannelHealth``) after a send."""
        h = self.health.setdefault(channel, ChannelHealth())
        now = self.clock()
        if isinstance(outcome, Sent):
            if h.failures:
                log.info("channel.recovered", channel=channel, failures=h.failures,
                         error=h.last_error or "")
            h.failures, h.failing_since, h.last_success = 0, None, now
        elif not outcome.rate_limited:
            h.failures += 1
            h.last_error = scrub(outcome.reason)[:500]
            h.last_failure = now
            if h.failing_since is None:
                h.failing_since = now
        else:
            return
        self.metrics.channel_failures.labels(channel).set(h.failures)

    def failing_channels(self) -> list[str]:
        """The channels whose deliveries keep failing (``ChannelHealth.failing``)."""
        now = self.clock()
        return sorted(ch for ch, h in self.health.items()
                      if ch in self.notifiers and h.failing(now))

    async def drain_channel(self, channel: str) -> DispatchResult:
        """Claim and send ``channel``'s due deliveries until none is due, it is paused,
        or the dispatcher stops. One round per channel at a time, and a round claims each
        delivery at most once: one given back during the round (a retry whose time came
        while the round went on) waits for the next round, so a round always ends."""
        total = DispatchResult()
        seen: set[int] = set()
        async with self._locks[channel]:
            while not self.stopping:
                # what was sent is marked before the claim: an update finds its alert sent
                # (and its ref to thread under), a group its last message
                await self._flush_marks()
                now = self.clock()
                if self.paused_until(channel) is not None:
                    break
                limit = self._claim_limit(channel)
                batch = await self.store.claim_deliveries(
                    now, limit=limit, lease_until=now + self._lease(channel, limit),
                    channel=channel, by=self.claimer,
                )
                if self._unmarked:  # (sent already: their marks are pending)
                    batch = [d for d in batch if d.id not in self._unmarked]
                if not batch:
                    break
                if len(batch) >= limit and self._quiet_members(channel, batch, now):
                    # the quiet hours' digest is ONE message: claim all it holds
                    while len(batch) < QUIET_CLAIM_MAX:
                        more = await self.store.claim_deliveries(
                            now, limit=ROLLUP_CLAIM_MAX,
                            lease_until=now + self._lease(channel, len(batch) + ROLLUP_CLAIM_MAX),
                            channel=channel, by=self.claimer,
                        )
                        batch += more
                        if len(more) < ROLLUP_CLAIM_MAX:
                            break
                again = [d for d in batch if d.id in seen]
                if again:  # come back within this round: give them back, end the round
                    await self._release(again, now)
                    batch = [d for d in batch if d.id not in seen]
                seen.update(d.id for d in batch if d.id is not None)
                if batch:
                    total = total + await self._send_channel(channel, batch)
                    await self._channel_notices(channel)
                if again or len(batch) < limit:
                    break
            await self._flush_marks()
        return total

    async def _channel_notices(self, channel: str) -> None:
        """After a channel's sends: a notice when its deliveries keep failing, and one
        when it delivers again (``core.feedhealth.channel_review``), queued in the outbox
        for the health channel (or the fallback, when the failing one is the health
        channel)."""
        h = self.health.get(channel)
        if h is None:
            return
        now = self.clock()
        health_channel, fallback = self.ops
        open_, notices = channel_review(
            channel, failing=h.failing(now), recovered=h.failures == 0,
            open_notice=self._ops_open.get(channel), since=h.failing_since,
            error=h.last_error or "", health_channel=health_channel, fallback=fallback,
            now=now)
        if open_ is None:
            self._ops_open.pop(channel, None)
        else:
            self._ops_open[channel] = open_
        if not notices:
            return
        for d in await self.store.queue(notices):
            kind = d.alert.match.rule.removeprefix("monitor:")
            self.metrics.ops_notices.labels(kind).inc()
            log.warning("ops.queued", channel=d.channel, about=channel, kind=kind, key=d.key,
                        notice=d.alert.story.title[:200])
            ev = self._events.get(d.channel)
            if ev is not None:
                ev.set()

    async def _drain_strays(self) -> DispatchResult:
        """Deliveries queued for a channel that is no longer configured: failed, said."""
        now = self.clock()
        batch = await self.store.claim_deliveries(
            now, limit=self.settings.batch, lease_until=now + LEASE, exclude=list(self.notifiers),
            by=self.claimer)
        by_channel: dict[str, list[int]] = defaultdict(list)
        for d in batch:
            if d.id is not None:
                by_channel[d.channel].append(d.id)
        for ch, ids in by_channel.items():
            await self.store.mark_failed_many(
                ids, now, f"channel {ch!r} is not configured any more", None)
        for d in batch:
            self.metrics.deliveries.labels(d.channel, "failed").inc()
            log.error("delivery.failed", channel=d.channel, key=d.key,
                      error="channel not configured")
        return DispatchResult(failed=len(batch))

    async def _gauge(self) -> None:
        """The outbox gauges: depth and oldest pending age per channel (one query)."""
        backlog = await self.store.backlog()
        now = self.clock()
        for ch in set(backlog) | set(self.notifiers) | self._gauged:
            b = backlog.get(ch)
            self.metrics.outbox_pending.labels(ch).set(b.pending if b else 0)
            self.metrics.outbox_oldest_age.labels(ch).set(
                max(0.0, (now - b.oldest).total_seconds()) if b else 0.0)
        self._gauged = set(backlog) | set(self.notifiers)

    # -- one channel's claim ---------------------------------------------------------

    async def _send_channel(self, channel: str, deliveries: list[Delivery]) -> DispatchResult:
        """Deliveries of one channel, in order (the notifier paces them to its rate):
        quiet hours (held, or what the last window held as one digest), then digests,
        then groups' messages, then what waited too long, then roll-ups, then one message
        each. After a 429 or a transient failure the channel pauses: the rest is given
        back."""
        result = DispatchResult()
        notifier = self.notifiers.get(channel)
        if notifier is None:  # removed by a reload since the claim
            await self._release(deliveries, self.clock())
            return result
        refs: dict[str, str] = {}  # parents sent in this claim: key → ref, for threading
        if channel in self.quiet and not self.stopping:
            deliveries, res = await self._quiet_hours(channel, notifier, deliveries, refs)
            result = result + res
        deliveries, res = await self._collected(channel, notifier, deliveries, refs)
        result = result + res
        deliveries, res = await self._summaries(channel, notifier, deliveries, refs)
        result = result + res
        if (
            isinstance(notifier, BatchNotifier)
            and len(deliveries) > 1
            and not self.stopping
            and self.paused_until(channel) is None
        ):
            return result + await self._send_batch(channel, notifier, deliveries)
        for k, d in enumerate(deliveries):
            assert d.id is not None
            if self.stopping:  # the rest is due again at the next start
                await self._release(deliveries[k:], self.clock())
                break
            until = self.paused_until(channel)
            if until is not None:
                await self._release(deliveries[k:], until)
                result = result + DispatchResult(retrying=len(deliveries) - k)
                break
            if d.parent_key and d.thread_ref is None and d.parent_key in refs:
                d = replace(d, thread_ref=refs[d.parent_key])
            did = d.id
            assert did is not None
            try:
                outcome = await notifier.send(d.alert, thread_ref=d.thread_ref, key=d.key, attempt=d.attempts + 1, created=d.created)
            except Exception as e:  # a notifier bug must not lose the delivery
                log.error("delivery.crashed", channel=channel, key=d.key, error=repr(e))
                outcome = SendFailed(reason=f"notifier error: {e!r}", retry=True)
            self._record(channel, outcome)
            now = self.clock()
            if isinstance(outcome, Sent):
                await self._mark_sent([did], now, outcome.ref)
                self._failing.pop(channel, None)
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

    async def _collected(
        self, channel: str, notifier: Notifier, deliveries: list[Delivery],
        refs: dict[str, str],
    ) -> tuple[list[Delivery], DispatchResult]:
        """Digest rules' deliveries as their digests, grouped rules' as their groups'
        messages. Returns the deliveries still to send."""
        result = DispatchResult()
        digests: dict[str, list[Delivery]] = defaultdict(list)
        for d in deliveries:
            if d.alert.match.digest and not self.stopping:
                digests[d.alert.match.rule].append(d)
        if digests:
            deliveries = [d for d in deliveries if not d.alert.match.digest]
            for group in digests.values():
                result = result + await self._send_digest(channel, notifier, group)
        groups: dict[str, list[Delivery]] = defaultdict(list)
        for d in deliveries:
            if d.group and d.alert.match.group and not self.stopping:
                groups[d.group].append(d)
        if groups:
            deliveries = [d for d in deliveries if not (d.group and d.alert.match.group)]
            states = await self.store.group_states(list(groups))
            for key, members in groups.items():
                result = result + await self._send_group(channel, notifier, members,
                                                         states.get(key), refs)
        return deliveries, result

    def _quiet_members(self, channel: str, deliveries: list[Delivery],
                       now: datetime) -> list[Delivery]:
        """The deliveries of ``deliveries`` that the channel's last quiet window held: those
        queued during it, but for the severities it lets through and digest rules' (which
        keep their own schedule)."""
        q = self.quiet.get(channel)
        if q is None:
            return []
        start, end = last_quiet_window(now, q.from_, q.to, q.tz)
        return [d for d in deliveries
                if start <= d.created < end and d.alert.match.severity not in q.except_severity
                and not d.alert.match.digest]

    async def _quiet_hours(
        self, channel: str, notifier: Notifier, deliveries: list[Delivery],
        refs: dict[str, str],
    ) -> tuple[list[Delivery], DispatchResult]:
        """In the channel's quiet window: give back what it holds until the window ends
        (no attempt counted). After it: what was queued during the last window goes as
        ONE "while you were away" digest. Returns the deliveries still to send."""
        q = self.quiet[channel]
        now = self.clock()
        result = DispatchResult()
        window = quiet_window(now, q.from_, q.to, q.tz)
        if window is not None:
            keep = [d for d in deliveries if d.alert.match.severity in q.except_severity]
            held = [d for d in deliveries if d.alert.match.severity not in q.except_severity]
            await self._release(held, window[1])
            result = result + DispatchResult(held=len(held))
            if result.held:
                self.metrics.deliveries.labels(channel, "held").inc(result.held)
                log.info("quiet.held", channel=channel, alerts=result.held,
                         until=window[1].isoformat())
            deliveries = keep
        members = self._quiet_members(channel, deliveries, now)
        if not members:
            return deliveries, result
        keys = {d.key for d in members}
        rest = [d for d in deliveries if d.key not in keys]
        if self.paused_until(channel) is not None:
            return rest, result + await self._give_back(channel, members)
        heading = quiet_heading([d.alert for d in members], q.label)
        r = await self._send_summary(channel, notifier, members, "quiet", refs,
                                     heading=heading)
        return rest, result + r

    async def _release(self, group: Sequence[Delivery], until: datetime) -> None:
        """Give ``group`` back without counting an attempt, due at ``until``: one
        transaction."""
        ids = [d.id for d in group if d.id is not None]
        if ids:
            await self.store.release_many(ids, until)

    async def _give_back(self, channel: str, group: list[Delivery]) -> DispatchResult:
        """Release ``group`` until the channel's pause ends (a 429 earlier in the claim)."""
        await self._release(group, self.paused_until(channel) or self.clock())
        return DispatchResult(retrying=len(group))

    async def _send_group(
        self, channel: str, notifier: Notifier, group: list[Delivery], state: GroupState | None,
        refs: dict[str, str],
    ) -> DispatchResult:
        """One message for a group's due deliveries: its first message, or a follow-up
        threaded under that (``route.group_thread``); all marked sent with the group's
        thread root, so the next follow-up (and any update) threads there too."""
        if self.paused_until(channel) is not None:
            return await self._give_back(channel, group)
        first = group[0]
        grouping = first.alert.match.group
        assert grouping is not None
        more, root = group_thread(grouping, state, min(d.created for d in group))
        heading = group_heading([d.alert for d in group], group_label(first.alert), more=more)
        return await self._send_summary(channel, notifier, group, "group", refs,
                                        heading=heading, thread_ref=root)

    async def _summaries(
        self, channel: str, notifier: Notifier, deliveries: list[Delivery],
        refs: dict[str, str],
    ) -> tuple[list[Delivery], DispatchResult]:
        """Send what waited past ``max_age`` as one summary, and, when the claim is more
        than the channel's rate sends within ``rollup_after``, each rule's alerts as one
        summary. Returns the deliveries still to send one by one."""
        result = DispatchResult()
        now = self.clock()
        max_age = self.settings.max_age
        if max_age > 0 and not self.stopping:
            cutoff = now - timedelta(seconds=max_age)
            stale = [d for d in deliveries if max(d.created, d.requeued or d.created) < cutoff]
            if stale:
                deliveries = [d for d in deliveries if d not in stale]
                result = result + await self._send_summary(channel, notifier, stale, "stale",
                                                           refs)
        threshold = self.rollup_threshold(channel)
        firsts = [d for d in deliveries if not d.alert.update]
        if threshold is None or len(firsts) <= threshold or self.stopping:
            return deliveries, result
        by_rule: dict[str, list[Delivery]] = defaultdict(list)
        for d in firsts:
            by_rule[d.alert.match.rule].append(d)
        rolled: set[str] = set()
        for group in by_rule.values():
            if len(group) < 2 or self.paused_until(channel) is not None:
                continue
            r = await self._send_summary(channel, notifier, group, "rollup", refs)
            result = result + r
            if r.sent:
                rolled.update(d.key for d in group)
        return [d for d in deliveries if d.key not in rolled], result

    async def _send_summary(
        self, channel: str, notifier: Notifier, group: list[Delivery], kind: DigestKind,
        refs: dict[str, str], *, heading: str | None = None, thread_ref: str | None = None,
    ) -> DispatchResult:
        """One message for ``group`` (a roll-up, held-back alerts, a group's message, what
        quiet hours held), or, when it lists more stories than a message of the channel
        shows (the notifier's ``digest_max``: Slack 20), several on story boundaries,
        each saying "part k/n": every story listed is named, never only counted. A part
        that fails keeps the rest back (retried with the channel)."""
        size = getattr(notifier, "digest_max", None)
        if not isinstance(size, int) or size <= 0 or len(group) <= size:
            return await self._send_summary_part(channel, notifier, group, kind, refs,
                                                 heading=heading, thread_ref=thread_ref)
        parts = [group[i:i + size] for i in range(0, len(group), size)]
        result = DispatchResult()
        for k, part in enumerate(parts):
            if self.stopping or self.paused_until(channel) is not None:
                until = self.paused_until(channel) or self.clock()
                rest = [d for p in parts[k:] for d in p if d.id is not None]
                await self._release(rest, until)
                return result + DispatchResult(retrying=len(rest))
            result = result + await self._send_summary_part(
                channel, notifier, part, kind, refs, heading=heading, thread_ref=thread_ref,
                part=(k + 1, len(parts)))
        return result

    async def _send_summary_part(
        self, channel: str, notifier: Notifier, group: list[Delivery], kind: DigestKind,
        refs: dict[str, str], *, heading: str | None = None, thread_ref: str | None = None,
        part: tuple[int, int] | None = None,
    ) -> DispatchResult:
        """One message for ``group``; all or nothing. A threaded message
        (``thread_ref``) marks its deliveries with the thread's root, so that what follows
        threads there too."""
        ids = [d.id for d in group if d.id is not None]
        key = f"{kind}:{channel}:{min(ids)}"
        outcome: SendResult
        # a retry looks for the message first (Slack bot: an earlier attempt whose
        # answer timed out may have posted it)
        attempt = max(d.attempts for d in group) + 1
        created = min(d.created for d in group)
        try:
            outcome = await notifier.send_digest([d.alert for d in group], key=key,
                                                 kind=kind, heading=heading,
                                                 thread_ref=thread_ref, part=part,
                                                 attempt=attempt, created=created)
        except Exception as e:  # a notifier bug must not lose the deliveries
            log.error("delivery.crashed", channel=channel, key=key, error=repr(e))
            outcome = SendFailed(reason=f"notifier error: {e!r}", retry=True)
        self._record(channel, outcome)
        now = self.clock()
        if isinstance(outcome, Sent):
            outcome = Sent(ref=thread_ref or outcome.ref)
            await self._mark_sent(ids, now, outcome.ref)
            self._failing.pop(channel, None)
            self.metrics.deliveries.labels(channel, "sent").inc(len(ids))
            rules = sorted({d.alert.match.rule for d in group})
            log.info(f"{kind}.sent", channel=channel, rule=",".join(rules)[:200],
                     alerts=len(ids))
            for d in group:
                if outcome.ref:
                    refs[d.key] = outcome.ref
                if self.on_sent:
                    self.on_sent(d)
            n = len(ids)
            return DispatchResult(sent=n, rolled_up=n if kind == "rollup" else 0,
                                  stale=n if kind == "stale" else 0,
                                  grouped=n if kind == "group" else 0,
                                  quiet=n if kind == "quiet" else 0)
        if kind in ("group", "quiet") and not outcome.rate_limited:
            # retried together, at one time: still one message when they come back
            return await self._failed_together(channel, group, outcome, now, key)
        result = DispatchResult()
        for d in group:
            result = result + await self._failed(channel, d, outcome, now)
        return result

    async def _failed_together(
        self, channel: str, group: list[Delivery], outcome: SendFailed, now: datetime, key: str
    ) -> DispatchResult:
        """A failed message of many deliveries: one retry time for all (or all given up),
        counted from the oldest; the channel pauses until then."""
        first = min(group, key=lambda d: d.created)
        nxt = (
            retry_at(now=now, created=max(first.created, first.requeued or first.created),
                     attempts=max(d.attempts for d in group) + 1,
                     retry_after=outcome.retry_after, retry_min=self.settings.retry_min,
                     retry_max=self.settings.retry_max,
                     give_up_after=self.settings.give_up_after, key=key)
            if outcome.retry else None
        )
        await self.store.mark_failed_many([d.id for d in group if d.id is not None], now,
                                          scrub(outcome.reason), nxt)
        if nxt is not None:
            self._peer_failed(channel, now, outcome.retry_after, cap=nxt)
            self.metrics.deliveries.labels(channel, "retry").inc(len(group))
            log.warning("delivery.retry", channel=channel, key=key, alerts=len(group),
                        error=outcome.reason, next_attempt=nxt.isoformat())
            return DispatchResult(retrying=len(group))
        self.metrics.deliveries.labels(channel, "failed").inc(len(group))
        log.error("delivery.failed", channel=channel, key=key, alerts=len(group),
                  error=outcome.reason, retryable=outcome.retry)
        return DispatchResult(failed=len(group))

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
        self._record(channel, outcome)
        now = self.clock()
        if isinstance(outcome, Sent):
            self._failing.pop(channel, None)
            await self._mark_sent([d.id for d in batch if d.id is not None], now,
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
        """Record a failed attempt. A 429 is not the alert's failure: the channel pauses
        for the Retry-After and the delivery is given back as it was. Otherwise it is
        retried later (and the channel pauses until then: the peer is unwell) or given
        up."""
        assert d.id is not None
        if outcome.rate_limited:
            until = now + timedelta(seconds=outcome.retry_after or DEFAULT_PAUSE)
            self._pause(channel, until)
            await self.store.release(d.id, until)
            self.metrics.deliveries.labels(channel, "rate_limited").inc()
            log.info("channel.paused", channel=channel, seconds=outcome.retry_after,
                     reason=outcome.reason, until=until.isoformat())
            return DispatchResult(retrying=1)
        nxt = (
            retry_at(
                now=now,
                created=max(d.created, d.requeued or d.created),
                attempts=d.attempts + 1,
                retry_after=outcome.retry_after,
                retry_min=self.settings.retry_min,
                retry_max=self.settings.retry_max,
                give_up_after=self.settings.give_up_after,
                key=d.key,
            )
            if outcome.retry
            else None
        )
        await self.store.mark_failed(d.id, now, scrub(outcome.reason), nxt)
        if nxt is None:
            if outcome.retry:  # given up for its age, but the peer is struggling right now:
                # the channel's other deliveries wait a little all the same
                self._peer_failed(channel, now, outcome.retry_after)
            self.metrics.deliveries.labels(channel, "failed").inc()
            log.error("delivery.failed", channel=channel, rule=d.alert.match.rule,
                      story=d.alert.story.id, error=outcome.reason,
                      attempts=d.attempts + 1, retryable=outcome.retry)
            return DispatchResult(failed=1)
        self.metrics.deliveries.labels(channel, "retry").inc()
        log.warning("delivery.retry", channel=channel, rule=d.alert.match.rule,
                    error=outcome.reason, attempts=d.attempts + 1,
                    next_attempt=nxt.isoformat())
        self._peer_failed(channel, now, outcome.retry_after, cap=nxt)
        return DispatchResult(retrying=1)

    async def _send_digest(
        self, channel: str, notifier: Notifier | None, group: list[Delivery]
    ) -> DispatchResult:
        """The alerts a digest rule collected, as one message; all sent or all retried.

        A digest longer than a message of the channel holds (the notifier's
        ``digest_max``: Slack 20 stories, email 100) goes as several, split on story
        boundaries, oldest first, each saying "part k/n". Progress is recorded per part:
        a part's deliveries are marked sent as soon as the peer accepted it, so when part 2
        fails after part 1 went out, only parts 2..n are retried (and part 1 is never
        sent twice). The retry splits what is left anew ("part 1/1" for one part left).
        Each part's key, and so its email Message-ID, derives from its first delivery: a
        part resent after a crash between the peer's answer and the store's record has
        the same Message-ID."""
        ids = [d.id for d in group if d.id is not None]
        if notifier is None:
            await self.store.mark_failed_many(
                ids, self.clock(), f"channel {channel!r} is not configured any more", None)
            return DispatchResult(failed=len(ids))
        size = getattr(notifier, "digest_max", None)
        step = size if isinstance(size, int) and size > 0 else len(group)
        parts = [group[i:i + step] for i in range(0, len(group), step)]
        result = DispatchResult()
        for k, part in enumerate(parts):
            rest = [d for p in parts[k:] for d in p]
            if k and self.stopping:  # the parts sent are recorded; the rest waits
                await self._release(rest, self.clock())
                break
            r, ok = await self._send_digest_part(
                channel, notifier, part, rest, (k + 1, len(parts)) if len(parts) > 1 else None)
            result = result + r
            if not ok:
                break
        return result

    async def _send_digest_part(
        self, channel: str, notifier: Notifier, part: list[Delivery], rest: list[Delivery],
        of: tuple[int, int] | None,
    ) -> tuple[DispatchResult, bool]:
        """One message of a digest (``part``); on failure, ``rest`` (this part and the
        ones after it) is retried or given up. Returns what happened and whether it was
        accepted."""
        rule = part[0].alert.match.rule
        ids = [d.id for d in part if d.id is not None]
        key = f"digest:{rule}:{channel}:{min(ids)}"
        try:
            alerts = [d.alert for d in part]
            outcome = await notifier.send_digest(
                alerts, key=key, part=of, attempt=max(d.attempts for d in part) + 1,
                created=min(d.created for d in part))
        except Exception as e:  # a notifier bug must not lose the deliveries
            log.error("delivery.crashed", channel=channel, key=key, error=repr(e))
            outcome = SendFailed(reason=f"notifier error: {e!r}", retry=True)
        self._record(channel, outcome)
        now = self.clock()
        if isinstance(outcome, Sent):
            await self._mark_sent(ids, now, outcome.ref)
            self._failing.pop(channel, None)
            self.metrics.deliveries.labels(channel, "sent").inc(len(ids))
            log.info("digest.sent", channel=channel, rule=rule, stories=len(ids),
                     **({"part": f"{of[0]}/{of[1]}"} if of else {}))
            return DispatchResult(sent=len(ids)), True
        ids = [d.id for d in rest if d.id is not None]
        if outcome.rate_limited:
            until = now + timedelta(seconds=outcome.retry_after or DEFAULT_PAUSE)
            self._pause(channel, until)
            await self.store.release_many(ids, until)
            log.info("channel.paused", channel=channel, seconds=outcome.retry_after,
                     reason=outcome.reason, until=until.isoformat())
            return DispatchResult(retrying=len(ids)), False
        first = part[0]
        # a digest's delivery starts when it fires, not when its first story matched
        fired = next_cron(first.alert.match.digest or "", first.created,
                          first.alert.match.digest_tz) or first.created
        fired = max(fired, first.requeued or fired)  # `monitor outbox retry` restarts it
        nxt = (
            retry_at(now=now, created=fired, attempts=first.attempts + 1,
                     retry_after=outcome.retry_after, retry_min=self.settings.retry_min,
                     retry_max=self.settings.retry_max,
                     give_up_after=self.settings.give_up_after, key=key)
            if outcome.retry else None
        )
        if nxt is not None:
            self._peer_failed(channel, now, outcome.retry_after, cap=nxt)
        await self.store.mark_failed_many(ids, now, scrub(outcome.reason), nxt)
        log.warning("digest.failed", channel=channel, rule=rule, stories=len(ids),
                    error=outcome.reason, retry=nxt is not None,
                    **({"part": f"{of[0]}/{of[1]}"} if of else {}))
        if nxt is None:
            return DispatchResult(failed=len(ids)), False
        return DispatchResult(retrying=len(ids)), False

    async def close(self) -> None:
        """Store the marks still waiting (a stop: every delivery the peer accepted is
        marked sent before the store closes), then close the notifiers."""
        if self._unmarked:
            try:
                await self._flush_marks()
            except Exception as e:  # the store is gone: these are sent again after the lease
                log.error("delivery.unmarked_at_stop", deliveries=len(self._unmarked),
                          error=scrub(repr(e)),
                          note="sent, but not marked: sent again after their lease")
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        for n in self.notifiers.values():
            try:
                await n.close()
            except Exception as e:  # closing must not mask the shutdown
                log.warning("notifier.close_failed", channel=n.name, error=repr(e))
