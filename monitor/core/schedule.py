"""Pure polling-schedule decisions: when should a feed be fetched next?

Nothing here reads the clock or does I/O: ``now`` is always an argument, and the
"random" jitter is derived from a hash of the feed's key (and ``now``), so the same
inputs always give the same answer while different feeds still spread out.

* :func:`next_poll`    after a poll: the interval (± jitter) on success, exponential
  backoff on failure (never giving up), ``Retry-After`` as a lower bound.
* :func:`timeout_backoff` after a parse job that ran past its deadline: a longer wait,
  so that a feed whose content hangs the parser cannot monopolise the parse workers.
* :func:`initial_poll` at start-up: resume the stored schedule, spreading overdue
  and brand-new feeds over a window (:func:`spread_window`: at least a minute / 30
  seconds, up to the interval when there are more than the instance polls in that
  time), so a restart does not fire every feed at once and a big first pass does
  not bunch.
* :func:`auto_concurrency` ``fetch.concurrency: auto``: the polls in flight a
  configuration needs (Little's law over its poll rate).
* :func:`parse_retry_after` a ``Retry-After`` header (feeds, Slack) as seconds.
* :func:`retry_at`     after a failed delivery: exponential backoff, ``Retry-After`` as
  a lower bound, giving up after a while.
* :func:`next_cron`    the next fire time of a digest's crontab expression;
  :func:`validate_cron` says why one is invalid, :func:`tz_problem` why a time zone is.
* :func:`quiet_window` the quiet-hours window a time falls in, and
  :func:`last_quiet_window` the latest one that has ended (a channel's ``quiet``).

Adaptive polling (after a successful poll; failures keep the backoff above):

* :func:`learn_cadence`  how often a feed publishes, from its entries' publication times;
* :func:`http_freshness` how long a response says it stays fresh (``Cache-Control:
  max-age``, else ``Expires`` against the response's ``Date``);
* :func:`poll_interval`  the interval to use, and why: the configured ``interval``, or
  the learned cadence (``adaptive``), lengthened by the feed's own hints (``<ttl>``,
  ``sy:updatePeriod``/``sy:updateFrequency``/``sy:updateBase``, the HTTP freshness),
  always within ``[min_interval, max_interval]`` (widened to include ``interval``).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

from monitor.core.units import format_duration

#: A ``Retry-After`` longer than this is treated as this (a server asking for a week
#: of silence is more likely broken than sincere; we still back off a whole day).
RETRY_AFTER_CAP = 24 * 3600.0
#: Overdue feeds found at start-up are spread over at most this many seconds.
OVERDUE_SPREAD = 60.0
#: Brand-new feeds get their first poll spread over at most this many seconds.
NEW_FEED_SPREAD = 30.0
#: A fresh instance's first pass (every feed new) is spread over at most this share of
#: the interval, so that it ends within one interval even when its polls run late by a
#: fifth of it; ``first_anchor`` spreads the second polls back over the whole interval.
FIRST_PASS_SHARE = 0.8
#: Seconds one poll is taken to last when sizing (``auto_concurrency``, ``spread_window``):
#: polls in flight = poll rate × time per poll. A local 304 takes milliseconds, a remote
#: feed 0.1–1 s, a slow server seconds: 2 s leaves room for the slow ones.
POLL_SECONDS = 2.0
#: ``fetch.concurrency: auto`` stays within these bounds: 16 (the former default, plenty
#: for a small configuration) and 1024 (sockets and memory of one process).
AUTO_CONCURRENCY_MIN = 16
AUTO_CONCURRENCY_MAX = 1024
#: Exponent cap for the backoff multiplier (2**62 × any interval is beyond any cap).
_MAX_EXPONENT = 62


def unit_hash(*parts: str) -> float:
    """A deterministic number in [0, 1) derived from ``parts`` (stable across runs)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def backoff_delay(*, interval: float, failures: int, backoff_max: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures (``failures >= 1``).

    ``interval × 2**(failures-1)``, capped at ``backoff_max`` but never shorter than
    ``interval`` (a small ``backoff_max`` must not make a failing feed poll *faster*).
    """
    exponent = min(max(failures, 1) - 1, _MAX_EXPONENT)
    return max(interval, min(interval * float(2**exponent), backoff_max))


#: A feed whose parse job was abandoned at its deadline waits at least this many
#: deadlines before its next poll (doubling with each further failure): it can occupy a
#: worker for at most about 1/(1 + TIMEOUT_BACKOFF) of the time, and less and less.
TIMEOUT_BACKOFF = 10.0


def timeout_backoff(*, deadline: float, interval: float, failures: int,
                    backoff_max: float) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (``>= 1``) when it was
    a parse job abandoned at its ``deadline``: the usual backoff, computed from the longer
    of ``interval`` and ``TIMEOUT_BACKOFF × deadline``, capped at ``backoff_max`` unless
    that is shorter than one such wait. Use it as ``next_poll``'s ``retry_after``."""
    base = max(interval, TIMEOUT_BACKOFF * deadline)
    return backoff_delay(interval=base, failures=failures, backoff_max=backoff_max)


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")


def next_poll(
    *,
    now: datetime,
    interval: float,
    failures: int,
    retry_after: float | None,
    backoff_max: float,
    jitter: float,
    key: str,
    floor: float = 0.0,
    due: datetime | None = None,
) -> datetime:
    """When to poll a feed next, decided right after a poll that ended at ``now``.

    * ``failures == 0`` (success): ``now + interval ± jitter × interval``.
    * ``failures >= 1``: exponential backoff ``interval × 2**(failures-1)``, capped at
      ``backoff_max`` (but never below ``interval``); the feed is never given up on.
      The same relative jitter applies, so feeds failing together do not retry together.
    * ``retry_after`` (seconds, from a 429/503) is a lower bound on the delay, itself
      capped at :data:`RETRY_AFTER_CAP`; negative values are ignored.

    ``jitter`` is a fraction of the delay in [0, 1]; the offset is derived from a hash
    of ``key`` and ``now``: deterministic for tests, different across feeds and polls.
    ``floor`` (seconds) is a lower bound applied after the jitter: a feed's hint that
    :func:`poll_interval` honoured (its ``floor``) is not undercut by the jitter.

    Anchoring: ``due`` is when this poll was due. After a success that ran late by less
    than half the delay, the delay counts from ``due``, not from ``now``: the feed keeps
    its place in the interval, so due times spread over the interval (``initial_poll``)
    stay spread however long the polls take or wait for a slot. Counted from the
    finish, each poll's lag would push its feed back for good, and after a busy moment
    (a first pass, a restart, a slow store) the polls would keep the shape of that
    moment, bunched, cycle after cycle. A poll later than half the delay (the instance
    fell behind: a first pass slower than the interval, a long outage) keeps its place
    too, a cycle or more on: the next poll is the first point ``due + k × delay`` at
    least half the delay after ``now``. So the feed is not polled again right away, and
    a first pass that overran the interval does not leave the next cycles bunched where
    it ended. Failures always count from ``now`` (backoff). ``retry_after`` and
    ``floor`` count from ``now`` whatever the anchor, and the result is never before
    ``now``.

    A feed's first poll follows the same rule, counted from :func:`first_anchor`: a
    first pass that overran the interval leaves its late feeds a cycle on, at their own
    places of the grid, for one cycle; the cycles after are as even as the grid. (Next
    polls that followed the first pass's own pace instead, half an interval after each
    first poll, kept that pace's shape: where the slow first pass was longer than the
    interval, two feeds shared each place of part of it, and the cycles after kept a
    wave of twice the polls there, cycle after cycle.)
    """
    _require_aware(now)
    interval = max(interval, 0.0)
    jitter = min(max(jitter, 0.0), 1.0)
    delay = interval if failures <= 0 else backoff_delay(
        interval=interval, failures=failures, backoff_max=backoff_max
    )
    # offset in [-jitter, +jitter) × delay
    delay += (2.0 * unit_hash(key, now.isoformat()) - 1.0) * jitter * delay
    delay = max(delay, 0.0)
    at = now + timedelta(seconds=delay)
    if failures <= 0 and due is not None and delay > 0 and now >= due:
        late = (now - due).total_seconds()
        # the feed keeps its place in the interval: the next point of its grid that is
        # at least half a delay away (one delay on when on time or nearly)
        cycles = max(1, math.ceil((late + delay / 2) / delay))
        at = due + timedelta(seconds=cycles * delay)
    least = 0.0  # from now: the Retry-After and the honoured hint
    if retry_after is not None and retry_after > 0:
        least = max(least, min(retry_after, RETRY_AFTER_CAP))
    if math.isfinite(floor) and floor > 0:
        least = max(least, floor)
    return max(at, now + timedelta(seconds=least))


# -- Adaptive polling ---------------------------------------------------------------------

#: A feed is polled about every this fraction of its learned publishing gap: a story
#: waits half a gap on average, at about two polls per story published.
CADENCE_FACTOR = 0.5
#: The cadence is learned from the publication times within this window before ``now``
#: (an old pinned post or an archive does not stretch it) ...
CADENCE_WINDOW = 7 * 86400.0
#: ... at most this many of the most recent distinct ones ...
CADENCE_RECENT = 50
#: ... and only when the feed dates at least this many distinct entries.
CADENCE_MIN_TIMES = 3
#: Publication times further than this in the future are bogus and ignored; a newest
#: time less far ahead is the publisher's clock (or time zone) being off, and every time
#: is shifted back by that much.
CADENCE_SKEW = 86400.0


def learn_cadence(published: Iterable[datetime], *, now: datetime) -> float | None:
    """Seconds between a feed's publications, from its entries' publication times (as
    written by the feed: entries without a date are left out by the caller), or None
    when the feed dates fewer than :data:`CADENCE_MIN_TIMES` distinct entries.

    A rate, not a median of gaps, so that a feed posting in bursts counts as often as it
    posts on average (ten posts in one minute, once a day, is a post every 2.4 h):

    * over the most recent :data:`CADENCE_RECENT` distinct times within
      :data:`CADENCE_WINDOW`: the time from the oldest of them to ``now`` divided by the
      number of gaps that span it; that includes the open gap since the newest, so a
      feed that went quiet is learned to be slower;
    * when the feed reaches back further than the window: the window divided by the
      number of publications within it (a feed with one post this week: a week);
    * when nothing is within the window: the time since the newest publication.

    Times more than :data:`CADENCE_SKEW` ahead of ``now`` are ignored; when the newest of
    the others is ahead of ``now``, all are shifted back by that much (a clock or time
    zone that is off shifts every date alike).
    """
    _require_aware(now)
    limit = now + timedelta(seconds=CADENCE_SKEW)
    times = sorted({t for t in published if t.tzinfo is not None and t <= limit},
                   reverse=True)
    if len(times) < CADENCE_MIN_TIMES:
        return None
    if times[0] > now:
        skew = times[0] - now
        times = [t - skew for t in times]
    times = times[:CADENCE_RECENT]
    start = now - timedelta(seconds=CADENCE_WINDOW)
    recent = [t for t in times if t > start]
    if not recent:
        return (now - times[0]).total_seconds()
    if len(recent) < len(times):
        return CADENCE_WINDOW / len(recent)
    return max((now - times[-1]).total_seconds(), 1.0) / (len(times) - 1)


_DIRECTIVE = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*("[^"]*"|[^,\s]*))?\s*')


def _cache_directives(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in value.split(","):
        m = _DIRECTIVE.fullmatch(part)
        if m:
            out.setdefault(m.group(1).lower(), (m.group(2) or "").strip('"'))
    return out


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def http_freshness(headers: Mapping[str, str], *, now: datetime) -> tuple[float, str] | None:
    """How many more seconds a response says it stays fresh (RFC 9111 §4.2), and why:
    ``(300.0, "Cache-Control max-age=300")``; None when it says nothing usable.

    * ``Cache-Control: no-store`` or ``no-cache``: nothing (the server wants every poll
      to reach it; that says nothing about how often it changes);
    * ``max-age=N`` (a private cache's: ``s-maxage`` is for shared ones) wins over
      ``Expires``; an invalid ``max-age`` makes the response stale: nothing;
    * ``Expires`` is measured from the response's ``Date`` when it has one (the
      server's clock, so a skew between us and it does not matter), else from ``now``;
      an invalid date (``0``, ``-1``) means already expired: nothing;
    * an ``Age`` (the time the response spent in a cache) is subtracted.
    """
    h = {k.lower(): v for k, v in headers.items()}
    directives = _cache_directives(h.get("cache-control", ""))
    if "no-store" in directives or "no-cache" in directives:
        return None
    age_text = h.get("age", "").strip()
    age = float(age_text) if age_text.isdigit() else 0.0
    if "max-age" in directives:
        raw = directives["max-age"]
        if not raw.isdigit():
            return None
        left = float(raw) - age
        return (left, f"Cache-Control max-age={int(raw)}") if left > 0 else None
    expires = _http_date(h.get("expires"))
    if expires is None:
        return None
    date = _http_date(h.get("date")) or now
    left = (expires - date).total_seconds() - age
    return (left, f"Expires in {format_duration(left)}") if left >= 1 else None


@dataclass(frozen=True, kw_only=True, slots=True)
class PollDecision:
    """The interval :func:`poll_interval` chose after a successful poll, and why."""

    delay: float  # seconds to the next poll, before jitter
    floor: float  # a hint honoured: the jittered delay is not shorter (0: none)
    why: str  # for people: "interval 5m", "cadence ~7m", "ttl 60m", "Cache-Control max-age=300"


def _rough(seconds: float) -> float:
    """An estimate as people say it: to the second under 2 min, the minute under 2 h,
    the hour beyond (a learned cadence of 4m3s is "~4m", of 12h55m "~13h")."""
    unit = 1.0 if seconds < 120 else 60.0 if seconds < 7200 else 3600.0
    return round(seconds / unit) * unit


def _usable(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0


def _sy_delay(period: float, base: datetime | None, now: datetime) -> float:
    """Seconds from ``now`` to the next update of an ``sy:`` schedule: ``period`` after
    ``now``, or, with ``sy:updateBase``, the next of ``base + k × period`` after ``now``."""
    if base is None or base.tzinfo is None:
        return period
    elapsed = (now - base).total_seconds()
    slots = math.floor(elapsed / period) + 1 if elapsed >= 0 else 0
    return max((base - now).total_seconds() + slots * period, 1.0)


def poll_interval(
    *,
    now: datetime,
    interval: float,
    min_interval: float,
    max_interval: float,
    adaptive: bool,
    cadence: float | None = None,
    ttl: float | None = None,
    update_period: float | None = None,
    update_base: datetime | None = None,
    freshness: tuple[float, str] | None = None,
) -> PollDecision:
    """The interval until a feed's next poll after a successful one (200 or 304).

    The bounds are ``lo = min(min_interval, interval)`` and ``hi = max(max_interval,
    interval)``: the configured ``interval`` is always allowed.

    1. The base is ``interval``; with ``adaptive`` and a learned ``cadence`` (seconds
       between publications) it is ``cadence × CADENCE_FACTOR`` within ``[lo, hi]``, so
       a feed that posts every few minutes is polled often and one that posts daily is
       not.
    2. The feed document's hints, ``ttl`` and the ``sy:`` schedule (``update_period``
       seconds, aligned on ``update_base``), lengthen it, up to ``hi``: the longest one
       wins. Unless (``adaptive``) the learned cadence shows that the feed publishes
       more often than the hint says: such a hint is boilerplate (WordPress writes
       ``sy:updatePeriod hourly`` into every feed) and is not followed.
    3. The response's HTTP freshness (:func:`http_freshness`) lengthens it too, up to
       ``hi``: a poll before it runs out would get the same bytes from any cache on the
       way.

    A hint that was honoured is the ``floor``: the jitter does not poll earlier. Values
    that are not positive finite numbers (a garbage ``ttl``) are ignored; a hint never
    shortens the interval.
    """
    _require_aware(now)
    interval = interval if _usable(interval) else 0.0
    lo = min(min_interval, interval) if _usable(min_interval) else interval
    hi = max(max_interval, interval) if _usable(max_interval) else interval
    fmt = format_duration
    learned = adaptive and _usable(cadence)

    if learned:
        assert cadence is not None
        raw = cadence * CADENCE_FACTOR
        delay = min(max(raw, lo), hi)
        why = f"cadence ~{fmt(_rough(cadence))}"
        if raw < lo:
            why += f", raised to min_interval {fmt(lo)}"
        elif raw > hi:
            why += f", capped at max_interval {fmt(hi)}"
    else:
        delay, why = interval, f"interval {fmt(interval)}"

    hints: list[tuple[float, float, str]] = []  # (delay, period, why)
    if _usable(ttl):
        assert ttl is not None
        hints.append((ttl, ttl, f"ttl {ttl / 60:g}m"))
    if _usable(update_period):
        assert update_period is not None
        aligned = update_base is not None and update_base.tzinfo is not None
        hints.append((_sy_delay(update_period, update_base, now), update_period,
                      f"sy:updatePeriod every {fmt(update_period)}"
                      + (" from sy:updateBase" if aligned else "")))
    floor = 0.0
    if hints:
        hint, period, hint_why = max(hints)
        if learned and cadence is not None and cadence < period:
            why += f" (publishes more often than its {hint_why.split(' from ')[0]})"
        else:
            floor = min(hint, hi)
            if hint > delay:
                delay = floor
                why = hint_why + (f", capped at max_interval {fmt(hi)}" if hint > hi else "")
    if freshness is not None and _usable(freshness[0]):
        fresh, fresh_why = freshness
        floor = max(floor, min(fresh, hi))
        if fresh > delay:
            delay = min(fresh, hi)
            why = fresh_why + (f", capped at max_interval {fmt(hi)}" if fresh > hi else "")
    return PollDecision(delay=float(delay), floor=float(floor), why=why)


def initial_poll(
    *,
    now: datetime,
    interval: float,
    key: str,
    last_polled: datetime | None,
    next_poll: datetime | None,
    backlog: int = 1,
    rate: float = math.inf,
) -> datetime:
    """The first poll time of a feed when the daemon starts (or the feed is added).

    * A stored ``next_poll`` in the future (or exactly ``now``) is kept as it is: a
      restart resumes the schedule, including any backoff in progress.
    * Without a stored ``next_poll`` but with ``last_polled``, the feed is due at
      ``last_polled + interval``.
    * A due time in the past means the feed is overdue (the daemon was down): instead
      of firing every overdue feed at once, each is placed at a deterministic point
      (by ``key``) in ``[now, now + spread_window(least=60 s))``.
    * A brand-new feed (never polled, nothing stored) is placed at a deterministic
      point in ``[now, now + spread_window(least=30 s, share=FIRST_PASS_SHARE))``; its
      first poll then counts from :func:`first_anchor` for the next one.

    ``backlog`` is how many feeds are being placed together (the new and overdue feeds
    of this start or reload) and ``rate`` how many polls a second the instance is sized
    for (``fetch.concurrency`` / :data:`POLL_SECONDS`): see :func:`spread_window`. The
    defaults (one feed, no limit) give the least window.
    """
    _require_aware(now)
    interval = max(interval, 0.0)
    due = next_poll
    if due is None and last_polled is not None:
        due = last_polled + timedelta(seconds=interval)
    share = 1.0
    if due is None:
        least, share = NEW_FEED_SPREAD, FIRST_PASS_SHARE
    elif due >= now:
        return due
    else:
        least = OVERDUE_SPREAD
    window = spread_window(interval=interval, least=least, backlog=backlog, rate=rate,
                           share=share)
    return now + timedelta(seconds=unit_hash(key) * window)


def first_anchor(*, due: datetime, key: str, interval: float) -> datetime:
    """The due time a feed's first poll counts from for its next one
    (``next_poll(due=...)``), where ``due`` is when that first poll was due.

    A fresh instance's first pass is spread over :data:`FIRST_PASS_SHARE` of the
    interval (``initial_poll``: the feed at ``unit_hash(key)`` of it), so that it ends
    within one interval. Counted from those due times, the next cycles would keep that
    shape: every poll in the first four fifths of each interval, none in the last fifth.
    Counted from this anchor instead, ``due − (1 − share) × (1 − unit_hash(key)) ×
    interval``, the feed's second poll falls at ``share × interval + unit_hash(key) ×
    interval`` from the start: the second polls begin where the first pass ends and are
    spread evenly over one whole interval, at the same rate as every cycle after.

    For a feed placed otherwise (added later, its first polls failed) this only moves its
    place in the interval, by at most a fifth of it, earlier; ``next_poll`` still keeps
    the next poll at least half an interval away."""
    back = (1.0 - FIRST_PASS_SHARE) * (1.0 - unit_hash(key)) * max(interval, 0.0)
    return due - timedelta(seconds=back)


def spread_window(*, interval: float, least: float, backlog: int, rate: float,
                  share: float = 1.0) -> float:
    """Seconds over which the first polls of ``backlog`` feeds placed together (new
    feeds, or overdue ones at a restart) are spread, for a feed polled every
    ``interval``, by an instance sized for ``rate`` polls a second:

        window = min(share × interval, max(least, backlog / rate))

    * A few feeds (a reload that adds one, a small configuration) are polled within
      ``least`` (30 s new, 60 s overdue): soon, yet not all in the same second.
    * When the backlog takes the instance longer than ``least`` to poll, the window is
      the time it takes, up to the whole interval. Squeezed into ``least`` instead, the
      first pass would run at full tilt for ``backlog / rate`` seconds and then idle,
      and the next passes would keep that shape; spread over the interval (``auto``
      concurrency makes ``backlog / rate`` about the interval for a whole
      configuration), the first pass ends within one interval and the steady state,
      anchored on due times (:func:`next_poll`), has no bunch.
    * Never longer than ``share`` of the interval (1 for overdue feeds; new feeds:
      :data:`FIRST_PASS_SHARE`, see :func:`first_anchor`): a feed is first polled within
      its interval, with room for the polls to run late.
    """
    interval = max(interval, 0.0)
    need = backlog / rate if rate > 0 and math.isfinite(rate) else 0.0
    return min(share * interval, max(least, need))


def auto_concurrency(intervals: Iterable[float]) -> int:
    """``fetch.concurrency: auto``: the polls in flight that the configured poll rate
    needs, by Little's law (in flight = rate × time per poll):

        concurrency = ceil(POLL_SECONDS × Σ 1 / interval), within [16, 1024]

    ``Σ 1 / interval`` over the feeds (their configured intervals) is the polls a second
    the configuration asks for; :data:`POLL_SECONDS` (2 s) is a generous time per poll,
    so the slots are busy only when polls are slow. 50,000 feeds every 5 minutes: 167
    polls/s, 334 in flight at most; 1,000 feeds every 5 minutes: 16 (the floor). A
    feed whose learned cadence polls it more often than its interval is not counted
    at that pace: the 2 s margin covers it."""
    rate = sum(1.0 / i for i in intervals if i > 0 and math.isfinite(i))
    return min(AUTO_CONCURRENCY_MAX, max(AUTO_CONCURRENCY_MIN, math.ceil(POLL_SECONDS * rate)))


_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP-date.

    delay-seconds may carry a fraction (Slack's own clients send whole seconds). An
    HTTP-date is measured from ``now`` (the fetcher passes the response's ``Date`` header
    when there is one, so the server's own clock is used and clock skew between us and
    the server does not matter). A date in the past gives ``0``; an unparsable or
    negative value gives ``None``.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" dates are naive: they are UTC by definition
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def retry_at(
    *,
    now: datetime,
    created: datetime,
    attempts: int,
    retry_after: float | None,
    retry_min: float,
    retry_max: float,
    give_up_after: float,
    key: str = "",
    jitter: float = 0.2,
) -> datetime | None:
    """When to try a failed delivery again (None: give up). ``attempts`` counts the
    attempt that just failed. Exponential backoff from ``retry_min`` capped at
    ``retry_max``, shortened by up to ``jitter`` (a fraction, derived from ``key`` and
    ``attempts``, so deliveries that failed together do not all come back together);
    a peer's Retry-After is a lower bound."""
    if (now - created).total_seconds() >= give_up_after:
        return None
    delay = min(retry_max, retry_min * (2 ** min(max(0, attempts - 1), 30)))
    delay *= 1.0 - jitter * unit_hash("retry", key, str(attempts))
    if retry_after is not None:
        delay = max(delay, min(retry_after, 24 * 3600.0))
    return now + timedelta(seconds=delay)


_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _crontab_days(field: str) -> set[int]:
    """The weekdays (0 = Sunday … 6 = Saturday) of a crontab day-of-week field, as
    crontab(5) reads it: numbers 0–7 (0 and 7 are Sunday), names, ranges, steps, lists."""
    def day(tok: str) -> int:
        tok = tok.strip().lower()
        if tok[:3] in _DOW_NAMES and tok.isalpha():
            return _DOW_NAMES.index(tok[:3])
        if not tok.isdigit() or int(tok) > 7:
            raise ValueError(f"day of week {tok!r}: use 0-7 (0 or 7 = Sunday) or sun..sat")
        return int(tok)

    days: set[int] = set()
    for part in field.split(","):
        rng, _, step_s = part.partition("/")
        step = 1
        if step_s:
            if not step_s.isdigit() or int(step_s) == 0:
                raise ValueError(f"day of week step {step_s!r}: use a positive number")
            step = int(step_s)
        if rng == "*":
            lo, hi = 0, 6
        elif "-" in rng:
            a, _, b = rng.partition("-")
            lo, hi = day(a), day(b)
            if hi < lo:
                raise ValueError(f"day of week range {rng!r} runs backwards")
        else:
            lo = hi = day(rng)
            if step_s:
                hi = 7 if lo else 6
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return days


def _triggers(expr: str, tz: str | None) -> list[CronTrigger]:
    """APScheduler triggers that together fire when the crontab line ``expr`` does.

    APScheduler 3 counts weekdays from Monday = 0, crontab from Sunday = 0 (and 7), so
    the day-of-week field is translated to names. When both day of month and day of
    week are restricted, crontab fires when *either* matches (``0 8 1 * mon`` is the
    1st and every Monday); APScheduler would need both, so that case is two triggers.
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    # cron arithmetic only: no scheduler, no clock (imported here: a start without a
    # cron schedule does not pay for APScheduler)
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5 "
                         "(minute hour day-of-month month day-of-week)")
    minute, hour, dom, month, dow = fields
    try:
        zone = ZoneInfo(tz) if tz else UTC
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"unknown time zone {tz!r}: use an IANA name such as "
                         "Europe/Berlin") from e
    days = ",".join(_DOW_NAMES[d] for d in sorted(_crontab_days(dow)))

    for name, value in (("minute", minute), ("hour", hour), ("day of month", dom),
                        ("month", month)):
        try:
            CronTrigger(**{name.replace("day of month", "day"): value}, timezone=zone)
        except ValueError as e:
            raise ValueError(f"{name} field {value!r}: {e}") from e

    def trig(day: str, day_of_week: str) -> CronTrigger:
        return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                           day_of_week=day_of_week, timezone=zone)

    if dom.startswith("*") or dow.startswith("*"):
        return [trig(dom, days if not dow.startswith("*") else "*")]
    return [trig(dom, "*"), trig("*", days)]


def tz_problem(tz: str | None) -> str | None:
    """None if ``tz`` is an IANA time zone name zoneinfo knows (or None: UTC), else why
    not."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if tz is None:
        return None
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {tz!r}: use an IANA name such as Europe/Berlin or UTC"
    return None


def validate_cron(expr: str, tz: str | None = None) -> str | None:
    """None if ``expr`` is a valid 5-field crontab expression (crontab(5) semantics),
    else the reason."""
    try:
        _triggers(expr, tz)
    except (ValueError, TypeError, KeyError) as e:
        return str(e)
    return None


def next_cron(expr: str, after: datetime, tz: str | None = None) -> datetime | None:
    """The first fire time of a crontab expression strictly after ``after`` (pure),
    read as crontab(5) reads it (day of week 0 or 7 = Sunday), in time zone ``tz``
    (an IANA name; UTC when None). The answer is in UTC."""
    start = after + timedelta(microseconds=1)
    times = [t for t in (tr.get_next_fire_time(None, start) for tr in _triggers(expr, tz))
             if t is not None]
    return min(times).astimezone(UTC) if times else None


# --------------------------------------------------------------------------- quiet hours


def parse_hhmm(text: str) -> tuple[int, int]:
    """``"22:00"`` → (22, 0); ValueError for anything but HH:MM from 00:00 to 23:59."""
    m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a time of day HH:MM (00:00 to 23:59)")
    return int(m.group(1)), int(m.group(2))


def _zone(tz: str) -> tzinfo:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"unknown time zone {tz!r}: use an IANA name such as "
                         "Europe/Berlin") from e


def _windows_around(now: datetime, start: str, end: str, tz: str) -> list[tuple[datetime, datetime]]:
    """The quiet windows that begin on the local days around ``now``, in UTC, oldest
    first. A window begins at ``start`` local time and ends at the next ``end`` (the
    next day's when ``end`` is not after ``start``: it crosses midnight). On a DST day
    local times are taken as the zone says: a time that does not exist (skipped by the
    clocks going forward) is read with the offset before the change (02:30 → 03:30
    summer time), one that exists twice as its first occurrence."""
    _require_aware(now)
    zone = _zone(tz)
    (sh, sm), (eh, em) = parse_hhmm(start), parse_hhmm(end)
    crosses = (eh, em) <= (sh, sm)
    today = now.astimezone(zone).date()
    out = []
    for back in (2, 1, 0):
        day = today - timedelta(days=back)
        s = datetime.combine(day, time(sh, sm), tzinfo=zone)
        e = datetime.combine(day + timedelta(days=1 if crosses else 0), time(eh, em), tzinfo=zone)
        out.append((s.astimezone(UTC), e.astimezone(UTC)))
    return out


def quiet_window(now: datetime, start: str, end: str, tz: str) -> tuple[datetime, datetime] | None:
    """The quiet window ``[start, end)`` (UTC) that ``now`` is in, or None (pure).
    ``start``/``end`` are local times "HH:MM" in the IANA zone ``tz``;
    ``"22:00"``–``"07:00"`` crosses midnight."""
    for s, e in _windows_around(now, start, end, tz):
        if s <= now < e:
            return s, e
    return None


def last_quiet_window(now: datetime, start: str, end: str, tz: str) -> tuple[datetime, datetime]:
    """The latest quiet window (UTC) that ended at or before ``now`` (pure): what it held
    goes out as one digest once it is over."""
    return [(s, e) for s, e in _windows_around(now, start, end, tz) if e <= now][-1]
