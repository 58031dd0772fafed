"""Pure polling-schedule decisions: when should a feed be fetched next?

Nothing here reads the clock or does I/O: ``now`` is always an argument, and the
"random" jitter is derived from a hash of the feed's key (and ``now``), so the same
inputs always give the same answer while different feeds still spread out.

* :func:`next_poll`    after a poll: the interval (± jitter) on success, exponential
  backoff on failure (never giving up), ``Retry-After`` as a lower bound.
* :func:`timeout_backoff` after a parse job that ran past its deadline: a longer wait,
  so that a feed whose content hangs the parser cannot monopolise the parse workers.
* :func:`initial_poll` at start-up: resume the stored schedule, spreading overdue
  feeds over the first minute and brand-new feeds over the first 30 seconds, so a
  restart does not fire every feed at once.
* :func:`parse_retry_after` a ``Retry-After`` header (feeds, Slack) as seconds.
* :func:`retry_at`     after a failed delivery: exponential backoff, ``Retry-After`` as
  a lower bound, giving up after a while.
* :func:`next_cron`    the next fire time of a digest's crontab expression;
  :func:`validate_cron` says why one is invalid, :func:`tz_problem` why a time zone is.
* :func:`quiet_window` the quiet-hours window a time falls in, and
  :func:`last_quiet_window` the latest one that has ended (a channel's ``quiet``).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, time, timedelta, tzinfo
from email.utils import parsedate_to_datetime

from apscheduler.triggers.cron import CronTrigger  # cron arithmetic only: no scheduler, no clock

#: A ``Retry-After`` longer than this is treated as this (a server asking for a week
#: of silence is more likely broken than sincere; we still back off a whole day).
RETRY_AFTER_CAP = 24 * 3600.0
#: Overdue feeds found at start-up are spread over at most this many seconds.
OVERDUE_SPREAD = 60.0
#: Brand-new feeds get their first poll spread over at most this many seconds.
NEW_FEED_SPREAD = 30.0
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
    """
    _require_aware(now)
    interval = max(interval, 0.0)
    jitter = min(max(jitter, 0.0), 1.0)
    delay = interval if failures <= 0 else backoff_delay(
        interval=interval, failures=failures, backoff_max=backoff_max
    )
    # offset in [-jitter, +jitter) × delay
    delay += (2.0 * unit_hash(key, now.isoformat()) - 1.0) * jitter * delay
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
    return now + timedelta(seconds=max(delay, 0.0))


def initial_poll(
    *,
    now: datetime,
    interval: float,
    key: str,
    last_polled: datetime | None,
    next_poll: datetime | None,
) -> datetime:
    """The first poll time of a feed when the daemon starts (or the feed is added).

    * A stored ``next_poll`` in the future (or exactly ``now``) is kept as it is: a
      restart resumes the schedule, including any backoff in progress.
    * Without a stored ``next_poll`` but with ``last_polled``, the feed is due at
      ``last_polled + interval``.
    * A due time in the past means the feed is overdue (the daemon was down): instead
      of firing every overdue feed at once, each is placed at a deterministic point
      (by ``key``) in ``[now, now + min(interval, 60 s))``.
    * A brand-new feed (never polled, nothing stored) is placed at a deterministic
      point in ``[now, now + min(interval, 30 s))``.
    """
    _require_aware(now)
    interval = max(interval, 0.0)
    due = next_poll
    if due is None and last_polled is not None:
        due = last_polled + timedelta(seconds=interval)
    if due is None:
        window = min(interval, NEW_FEED_SPREAD)
    elif due >= now:
        return due
    else:
        window = min(interval, OVERDUE_SPREAD)
    return now + timedelta(seconds=unit_hash(key) * window)


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
