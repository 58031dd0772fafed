"""Feed health, pure: cadence, condition, and the notices ``review`` decides (fixed ``now``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from monitor.core.feedhealth import (
    CADENCE_SAMPLES,
    HealthSettings,
    cadence,
    channel_review,
    condition,
    is_operational,
    notice_kind,
    ops_target,
    remember_news,
    review,
)
from monitor.core.model import FeedState
from tests.clock import T0

H = timedelta(hours=1)
ON = HealthSettings(channel="ops", failing_after=3600, silent_factor=6, silent_min=6 * 3600)


def feed(**kw: object) -> FeedState:
    return FeedState(name="wire", url="https://wire.example/feed",
                     configured_url="https://wire.example/feed", **kw)  # type: ignore[arg-type]


def hourly(n: int = 8, end: datetime = T0) -> tuple[datetime, ...]:
    return tuple(end - i * H for i in reversed(range(n)))


def test_cadence_is_the_median_gap_between_publications() -> None:
    assert cadence(hourly()) == 3600
    # a few odd gaps do not move it: a weekend, a correction a minute after a story
    times = [*hourly(), T0 + 60 * H, T0 + 60 * H + timedelta(minutes=1)]
    assert cadence(times) == 3600
    # too few publications: not known (never silent)
    assert cadence(hourly(3)) is None
    assert cadence([]) is None


def test_a_burst_is_one_publication() -> None:
    # a newsletter posting ten items at once, once a day: daily, not every few seconds
    days = [T0 + timedelta(days=d, seconds=s) for d in range(5) for s in range(10)]
    assert cadence(days) == 86400


def test_remember_news_keeps_the_latest_samples_and_no_future() -> None:
    st = remember_news(feed(), list(hourly(50)), now=T0)
    assert len(st.story_times) == CADENCE_SAMPLES and st.story_times[-1] == T0
    assert st.last_new_story == T0
    later = remember_news(st, [T0 + 100 * H], now=T0 + H)  # a date in the future: now
    assert later.story_times[-1] == T0 + H and later.last_new_story == T0 + H
    assert remember_news(st, [], now=T0 + H) is st  # no news: nothing changes


def test_condition() -> None:
    ok = feed(last_success=T0, last_new_story=T0, story_times=hourly())
    assert condition(feed(), ON, now=T0) == "new"
    assert condition(ok, ON, now=T0) == "ok"
    assert condition(replace(ok, failures=1), ON, now=T0) == "failing"
    assert condition(replace(ok, gone=True, failures=1), ON, now=T0) == "gone"
    # hourly: silent after max(6 × 1h, 6h) = 6h without a new story
    assert condition(ok, ON, now=T0 + 6 * H) == "ok"
    assert condition(ok, ON, now=T0 + 6 * H + timedelta(seconds=1)) == "silent"
    # the floor: a feed that posts every 20 minutes is not silent after 2 hours
    busy = replace(ok, story_times=tuple(T0 - timedelta(minutes=20 * i) for i in range(10)))
    assert cadence(busy.story_times) == 1200
    assert condition(busy, ON, now=T0 + H) == "ok"
    assert condition(busy, ON, now=T0 + 7 * H) == "silent"
    # no known cadence: never silent
    assert condition(replace(ok, story_times=()), ON, now=T0 + 1000 * H) == "ok"


def test_a_failing_feed_gives_one_notice_then_one_recovery() -> None:
    st = feed(last_success=T0, failures=1, failing_since=T0 + H, last_polled=T0 + H,
              last_error="HTTP 404 Not Found")
    # failing for less than feed_failing_after: nothing yet
    assert review(st, ON, now=T0 + 1.5 * H) == (st, [])
    st = replace(st, failures=4, last_polled=T0 + 2 * H)
    st, [d] = review(st, ON, now=T0 + 2 * H)
    assert d.key == "ops:feed-failing:wire:2026-02-17T13:00:00Z:ops" == st.notice
    assert d.channel == "ops" and d.parent_key is None and is_operational(d.alert)
    assert d.alert.match.rule == "monitor:feed-failing" and d.alert.match.severity == "warning"
    assert "'wire' is failing for 1h: HTTP 404 Not Found" in d.alert.story.title
    assert "4 failed polls in a row" in d.alert.story.summary and d.alert.story.link == ""
    # still failing: the notice is open, nothing more
    assert review(replace(st, failures=9), ON, now=T0 + 9 * H) == (replace(st, failures=9), [])
    # back: one recovery, threaded under the notice
    back = replace(st, failures=0, failing_since=None, last_success=T0 + 10 * H,
                   last_error=None)
    back, [r] = review(back, ON, now=T0 + 10 * H)
    assert back.notice is None and r.parent_key == d.key
    assert r.key == f"ops:feed-recovered:wire:{d.key}" and notice_kind(r.key) == "feed-recovered"
    assert r.alert.match.rule == "monitor:feed-recovered" and "recovered" in r.alert.story.title
    assert review(back, ON, now=T0 + 11 * H) == (back, [])


def test_the_notice_key_is_the_streak() -> None:
    # the same streak reviewed twice (a replay, another instance) makes the same key:
    # the outbox keeps one; a new streak makes another
    st = feed(failures=3, failing_since=T0, last_error="timeout")
    _, [a] = review(st, ON, now=T0 + 2 * H)
    _, [b] = review(replace(st, failures=5), ON, now=T0 + 3 * H)
    _, [c] = review(replace(st, failing_since=T0 + 5 * H), ON, now=T0 + 7 * H)
    assert a.key == b.key != c.key


def test_a_gone_feed_is_said_at_once() -> None:
    st = feed(failures=1, failing_since=T0, gone=True, last_error="HTTP 410 Gone")
    st, [d] = review(st, ON, now=T0)
    assert "is gone (HTTP 410)" in d.alert.story.title and st.notice == d.key


def test_a_silent_feed_gives_one_notice_and_recovers_with_its_next_story() -> None:
    st = feed(last_success=T0, last_new_story=T0, story_times=hourly(), baselined=True)
    assert review(st, ON, now=T0 + 5 * H) == (st, [])
    st, [d] = review(replace(st, last_success=T0 + 7 * H), ON, now=T0 + 7 * H)
    assert d.alert.match.rule == "monitor:feed-silent"
    assert "no new story for 7h" in d.alert.story.title
    assert "usually publishes every 1h" in d.alert.story.summary
    assert review(st, ON, now=T0 + 8 * H) == (st, [])
    st = remember_news(st, [T0 + 9 * H], now=T0 + 9 * H)
    st, [r] = review(st, ON, now=T0 + 9 * H)
    assert r.parent_key == d.key and st.notice is None


def test_a_recovered_failing_feed_is_back_even_when_it_has_no_news() -> None:
    st = feed(last_success=T0, last_new_story=T0, story_times=hourly(), failures=2,
              failing_since=T0, last_error="HTTP 503")
    st, [_] = review(st, ON, now=T0 + 2 * H)
    st = replace(st, failures=0, failing_since=None, last_success=T0 + 12 * H)
    st, [r] = review(st, ON, now=T0 + 12 * H)
    assert "polls succeed again" in r.alert.story.title and st.notice is None
    # and then: silent, said as such
    st, [s] = review(st, ON, now=T0 + 12 * H)
    assert notice_kind(s.key) == "feed-silent"


def test_without_a_channel_nothing_is_sent_but_the_state_is_kept() -> None:
    off = HealthSettings()
    st = feed(failures=30, failing_since=T0, last_error="HTTP 404")
    assert review(st, off, now=T0 + 100 * H) == (st, [])
    assert condition(st, off, now=T0) == "failing"


def test_a_recovery_to_another_channel_is_not_threaded() -> None:
    st = feed(failures=2, failing_since=T0, last_error="x")
    st, [_] = review(st, ON, now=T0 + 2 * H)
    st = replace(st, failures=0, failing_since=None, last_success=T0 + 3 * H)
    _, [r] = review(st, replace(ON, channel="other"), now=T0 + 3 * H)
    assert r.channel == "other" and r.parent_key is None


def test_shown_error_is_what_the_notice_says() -> None:
    st = feed(failures=2, failing_since=T0, last_error="GET https://u:secret@x/ failed")
    _, [d] = review(st, ON, now=T0 + 2 * H, shown_error="GET https://u:***@x/ failed")
    assert "secret" not in d.alert.story.title + d.alert.story.summary


# -- channels -----------------------------------------------------------------------------


def test_a_notice_about_a_channel_goes_to_the_health_channel_or_the_fallback() -> None:
    assert ops_target("slack", "ops", None) == "ops"
    assert ops_target("ops", "ops", "mail") == "mail"  # the health channel itself broke
    assert ops_target("ops", "ops", None) is None  # nowhere else to say it
    assert ops_target("slack", None, "mail") is None  # no health channel: no notices


def test_one_failing_notice_per_streak_then_one_recovery_threaded_under_it() -> None:
    kw = {"since": T0, "error": "slack api: HTTP 200: invalid_auth",
          "health_channel": "ops", "fallback": None}
    # not failing yet: nothing
    assert channel_review("slack", failing=False, recovered=False, open_notice=None,
                          now=T0, **kw) == (None, [])
    key, [d] = channel_review("slack", failing=True, recovered=False, open_notice=None,
                              now=T0, **kw)
    assert key == d.key == "ops:channel-failing:slack:2026-02-17T12:00:00Z:ops"
    assert d.channel == "ops" and d.alert.match.rule == "monitor:channel-failing"
    assert "invalid_auth" in d.alert.story.title
    # still failing: the same notice stays open, nothing new
    assert channel_review("slack", failing=True, recovered=False, open_notice=key,
                          now=T0 + timedelta(hours=1), **kw) == (key, [])
    opened, [r] = channel_review("slack", failing=False, recovered=True, open_notice=key,
                                 now=T0 + timedelta(hours=2), **kw)
    assert opened is None and r.parent_key == key and r.channel == "ops"
    assert r.alert.match.rule == "monitor:channel-recovered" and r.alert.match.severity == "info"
