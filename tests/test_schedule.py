"""monitor.core.schedule: pure decisions, fixed ``now``, no clock, no sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from monitor.core.schedule import (
    NEW_FEED_SPREAD,
    OVERDUE_SPREAD,
    RETRY_AFTER_CAP,
    backoff_delay,
    initial_poll,
    next_cron,
    next_poll,
    parse_retry_after,
    retry_at,
    unit_hash,
    validate_cron,
)

NOW = datetime(2026, 2, 17, 12, 0, 0, tzinfo=UTC)
KEYS = [f"feed-{i}" for i in range(200)]


def delay(when: datetime) -> float:
    return (when - NOW).total_seconds()


def nxt(**kw: object) -> datetime:
    args: dict[str, object] = {
        "now": NOW,
        "interval": 300.0,
        "failures": 0,
        "retry_after": None,
        "backoff_max": 6 * 3600.0,
        "jitter": 0.0,
        "key": "bbc",
    }
    args.update(kw)
    return next_poll(**args)  # type: ignore[arg-type]


# -- unit_hash --------------------------------------------------------------------------


def test_unit_hash_is_deterministic_and_in_range() -> None:
    values = [unit_hash(k) for k in KEYS]
    assert values == [unit_hash(k) for k in KEYS]
    assert all(0.0 <= v < 1.0 for v in values)
    assert len(set(values)) == len(values)
    # spread: every tenth of [0, 1) gets some keys
    assert {int(v * 10) for v in values} == set(range(10))


def test_unit_hash_parts_are_separated() -> None:
    assert unit_hash("ab", "c") != unit_hash("a", "bc")


# -- next_poll: success -----------------------------------------------------------------


def test_success_without_jitter_is_exactly_interval() -> None:
    assert nxt() == NOW + timedelta(seconds=300)


def test_success_jitter_stays_within_fraction_of_interval() -> None:
    delays = [delay(nxt(jitter=0.1, key=k)) for k in KEYS]
    assert all(270.0 <= d < 330.0 for d in delays)
    # it really spreads feeds, both earlier and later than the interval
    assert min(delays) < 285.0 and max(delays) > 315.0
    assert len(set(delays)) > 190


def test_jitter_is_deterministic_for_key_and_now() -> None:
    a = nxt(jitter=0.2, key="x")
    assert a == nxt(jitter=0.2, key="x")
    later = NOW + timedelta(seconds=300)
    # another poll time gives another offset for the same feed
    offsets = {
        delay(next_poll(now=NOW + timedelta(seconds=i), interval=300, failures=0,
                        retry_after=None, backoff_max=3600, jitter=0.2, key="x")) - i
        for i in range(20)
    }
    assert len(offsets) == 20
    assert next_poll(now=later, interval=300, failures=0, retry_after=None,
                     backoff_max=3600, jitter=0.2, key="x") > later


def test_full_jitter_never_goes_before_now() -> None:
    assert all(delay(nxt(jitter=1.0, key=k)) >= 0.0 for k in KEYS)
    # out-of-range jitter is clamped to [0, 1]
    assert all(0.0 <= delay(nxt(jitter=5.0, key=k)) < 600.0 for k in KEYS)
    assert nxt(jitter=-1.0) == NOW + timedelta(seconds=300)


def test_result_keeps_timezone_of_now() -> None:
    tz = timezone(timedelta(hours=2))
    now = NOW.astimezone(tz)
    got = next_poll(now=now, interval=60, failures=0, retry_after=None,
                    backoff_max=3600, jitter=0, key="k")
    assert got.tzinfo is tz and got == NOW + timedelta(seconds=60)


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        nxt(now=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        initial_poll(now=datetime(2026, 1, 1), interval=60, key="k",
                     last_polled=None, next_poll=None)


# -- next_poll: failures ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(1, 300), (2, 600), (3, 1200), (4, 2400), (5, 4800), (6, 9600), (7, 19200),
     (8, 21600), (9, 21600), (50, 21600), (10_000, 21600)],
)
def test_failure_backoff_doubles_and_caps(failures: int, expected: float) -> None:
    assert delay(nxt(failures=failures)) == expected


def test_backoff_never_gives_up_and_is_monotonic() -> None:
    delays = [delay(nxt(failures=f)) for f in range(1, 2000)]
    assert delays == sorted(delays)
    assert delays[-1] == 6 * 3600.0


def test_backoff_max_below_interval_does_not_speed_up_polling() -> None:
    assert delay(nxt(failures=3, backoff_max=60)) == 300
    assert backoff_delay(interval=300, failures=1, backoff_max=10) == 300


def test_failure_jitter_is_relative_to_backoff() -> None:
    delays = [delay(nxt(failures=3, jitter=0.1, key=k)) for k in KEYS]
    assert all(1080.0 <= d < 1320.0 for d in delays)
    assert len(set(delays)) > 190


def test_negative_failures_count_as_success() -> None:
    assert nxt(failures=-3) == nxt(failures=0)


# -- next_poll: Retry-After ------------------------------------------------------------


def test_retry_after_is_a_lower_bound() -> None:
    assert delay(nxt(failures=1, retry_after=3600)) == 3600
    # shorter than the backoff: the backoff wins
    assert delay(nxt(failures=4, retry_after=10)) == 2400


def test_retry_after_beats_jitter() -> None:
    assert all(delay(nxt(failures=1, jitter=1.0, retry_after=500, key=k)) >= 500 for k in KEYS)


def test_absurd_retry_after_is_capped() -> None:
    assert delay(nxt(failures=1, retry_after=30 * 86400)) == RETRY_AFTER_CAP
    assert delay(nxt(failures=1, retry_after=float("inf"))) == RETRY_AFTER_CAP


def test_zero_or_negative_retry_after_is_ignored() -> None:
    assert delay(nxt(failures=1, retry_after=0)) == 300
    assert delay(nxt(failures=1, retry_after=-100)) == 300


def test_retry_after_on_success_is_still_honoured() -> None:
    assert delay(nxt(failures=0, retry_after=900)) == 900


# -- initial_poll -----------------------------------------------------------------------


def init(**kw: object) -> datetime:
    args: dict[str, object] = {
        "now": NOW, "interval": 300.0, "key": "bbc", "last_polled": None, "next_poll": None,
    }
    args.update(kw)
    return initial_poll(**args)  # type: ignore[arg-type]


def test_future_next_poll_is_resumed() -> None:
    stored = NOW + timedelta(seconds=123)
    assert init(next_poll=stored, last_polled=NOW - timedelta(seconds=177)) == stored


def test_long_backoff_in_progress_is_kept() -> None:
    stored = NOW + timedelta(hours=5)
    assert init(next_poll=stored) == stored


def test_next_poll_exactly_now_is_kept() -> None:
    assert init(next_poll=NOW) == NOW


def test_overdue_feeds_are_spread_over_the_first_minute() -> None:
    stored = NOW - timedelta(days=3)
    delays = [delay(init(key=k, next_poll=stored)) for k in KEYS]
    assert all(0.0 <= d < OVERDUE_SPREAD for d in delays)
    assert len(set(delays)) > 190
    assert min(delays) < 10 and max(delays) > 50
    # deterministic by key: a second restart places each feed at the same point
    assert delays == [delay(init(key=k, next_poll=stored)) for k in KEYS]


def test_overdue_spread_is_capped_by_a_short_interval() -> None:
    stored = NOW - timedelta(hours=1)
    assert all(0.0 <= delay(init(key=k, interval=20, next_poll=stored)) < 20 for k in KEYS)


def test_slightly_overdue_is_spread_too() -> None:
    got = init(next_poll=NOW - timedelta(seconds=1))
    assert NOW <= got < NOW + timedelta(seconds=OVERDUE_SPREAD)


def test_last_polled_without_next_poll_resumes_from_interval() -> None:
    assert init(last_polled=NOW - timedelta(seconds=100)) == NOW + timedelta(seconds=200)


def test_last_polled_long_ago_is_overdue_and_spread() -> None:
    got = init(last_polled=NOW - timedelta(days=1))
    assert NOW <= got < NOW + timedelta(seconds=OVERDUE_SPREAD)


def test_new_feeds_are_spread_over_the_first_30_seconds() -> None:
    delays = [delay(init(key=k)) for k in KEYS]
    assert all(0.0 <= d < NEW_FEED_SPREAD for d in delays)
    assert len(set(delays)) > 190
    assert min(delays) < 5 and max(delays) > 25


def test_new_feed_with_short_interval_is_due_within_interval() -> None:
    assert all(0.0 <= delay(init(key=k, interval=5)) < 5 for k in KEYS)
    assert init(interval=0) == NOW


def test_parse_retry_after() -> None:
    """One parser for feeds and Slack: delay-seconds (a fraction allowed) or an HTTP-date
    measured from ``now``."""
    assert parse_retry_after("0", now=NOW) == 0.0
    assert parse_retry_after(" 3600 ", now=NOW) == 3600.0
    assert parse_retry_after("1.5", now=NOW) == 1.5
    assert parse_retry_after("Tue, 17 Feb 2026 12:01:30 GMT", now=NOW) == 90.0
    assert parse_retry_after("Tue, 17 Feb 2026 11:00:00 GMT", now=NOW) == 0.0  # past
    assert parse_retry_after("-5", now=NOW) is None
    assert parse_retry_after("inf", now=NOW) is None
    assert parse_retry_after("nan", now=NOW) is None
    assert parse_retry_after("", now=NOW) is None
    assert parse_retry_after(None, now=NOW) is None
    assert parse_retry_after("tomorrow", now=NOW) is None
    assert parse_retry_after("garbage", now=NOW) is None


# --- digests: crontab(5) semantics, time zones -------------------------------------

_SAT = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)  # a Saturday


@pytest.mark.parametrize(("expr", "want"), [
    ("0 8 * * 1-5", datetime(2026, 12, 7, 8, 0, tzinfo=UTC)),   # Monday, not Sunday
    ("0 8 * * 0", datetime(2026, 12, 6, 8, 0, tzinfo=UTC)),     # 0 is Sunday
    ("0 8 * * 7", datetime(2026, 12, 6, 8, 0, tzinfo=UTC)),     # and so is 7
    ("0 8 * * sun", datetime(2026, 12, 6, 8, 0, tzinfo=UTC)),
    ("0 8 * * 6", datetime(2026, 12, 12, 8, 0, tzinfo=UTC)),    # Saturday 08:00 has passed
    ("0 10 * * 6", datetime(2026, 12, 5, 10, 0, tzinfo=UTC)),   # Saturday 10:00 has not
    ("0 8 * * */2", datetime(2026, 12, 6, 8, 0, tzinfo=UTC)),   # sun,tue,thu,sat
    ("0 8 * * 1/2", datetime(2026, 12, 6, 8, 0, tzinfo=UTC)),   # mon,wed,fri,sun
    ("0 8 * * 2,4", datetime(2026, 12, 8, 8, 0, tzinfo=UTC)),   # Tuesday
    ("*/15 * * * *", datetime(2026, 12, 5, 9, 15, tzinfo=UTC)),
])
def test_cron_day_of_week_means_what_crontab_means(expr: str, want: datetime) -> None:
    assert next_cron(expr, _SAT) == want


def test_cron_weekdays_fire_monday_to_friday_only() -> None:
    t, fired = _SAT, []
    for _ in range(10):
        nxt = next_cron("0 8 * * 1-5", t)
        assert nxt is not None
        fired.append(nxt.strftime("%a"))
        t = nxt
    assert fired == ["Mon", "Tue", "Wed", "Thu", "Fri"] * 2


def test_cron_day_of_month_or_day_of_week() -> None:
    # crontab fires when either restricted day field matches: the 1st, and every Monday.
    t, fired = datetime(2026, 12, 27, tzinfo=UTC), []
    for _ in range(4):
        nxt = next_cron("0 8 1 * mon", t)
        assert nxt is not None
        fired.append(nxt.date().isoformat())
        t = nxt
    assert fired == ["2026-12-28", "2027-01-01", "2027-01-04", "2027-01-11"]


def test_cron_in_a_time_zone_across_dst() -> None:
    # 08:00 in Berlin is 07:00 UTC in winter and 06:00 UTC after the March change.
    t = datetime(2027, 3, 26, 12, 0, tzinfo=UTC)
    got = []
    for _ in range(3):
        nxt = next_cron("0 8 * * *", t, "Europe/Berlin")
        assert nxt is not None and nxt.tzinfo is not None
        got.append(nxt.astimezone(UTC).strftime("%m-%d %H:%M"))
        t = nxt
    assert got == ["03-27 07:00", "03-28 06:00", "03-29 06:00"]


@pytest.mark.parametrize(("expr", "tz", "why"), [
    ("0 8 * *", None, "expected 5"),
    ("0 8 * * 8", None, "0-7"),
    ("0 8 * * 5-1", None, "backwards"),
    ("0 8 * * */0", None, "positive"),
    ("0 8 * * *", "Mars/Base", "IANA"),
    ("61 8 * * *", None, "minute"),
])
def test_invalid_cron_says_why(expr: str, tz: str | None, why: str) -> None:
    reason = validate_cron(expr, tz)
    assert reason is not None and why in reason


def test_retry_backoff_has_jitter_derived_from_the_key() -> None:
    delays = {
        (retry_at(now=NOW, created=NOW, attempts=3, retry_after=None, retry_min=10,
                  retry_max=3600, give_up_after=86400, key=f"k{i}") - NOW).total_seconds()
        for i in range(50)
    }
    assert len(delays) > 40  # spread out
    assert all(32 <= d <= 40 for d in delays)  # 40 s shortened by at most 20 %
    again = retry_at(now=NOW, created=NOW, attempts=3, retry_after=None, retry_min=10,
                     retry_max=3600, give_up_after=86400, key="k1")
    assert again is not None and (again - NOW).total_seconds() in delays  # deterministic
    # a Retry-After is still a lower bound
    ra = retry_at(now=NOW, created=NOW, attempts=1, retry_after=100, retry_min=10,
                  retry_max=3600, give_up_after=86400, key="k1")
    assert ra == NOW + timedelta(seconds=100)
