"""Adaptive polling (#13): the pure decision (``schedule.poll_interval``), cadence learning
(``schedule.learn_cadence``), HTTP freshness (``schedule.http_freshness``), the feed's
own hints as parsed (``parse.feed_hints``), over synthetic series and real feeds."""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import feedparser
import pytest

from monitor.config import load_config
from monitor.core.parse import feed_hints, parse_feed
from monitor.core.schedule import (
    CADENCE_FACTOR,
    CADENCE_WINDOW,
    http_freshness,
    learn_cadence,
    next_poll,
    poll_interval,
)
from monitor.core.units import format_duration
from monitor.errors import ConfigError
from tests.conftest import shared_path

NOW = datetime(2026, 2, 17, 12, 0, tzinfo=UTC)
MIN, HOUR, DAY = 60.0, 3600.0, 86400.0


def decide(**kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {"now": NOW, "interval": 300.0, "min_interval": 60.0,
                               "max_interval": 3600.0, "adaptive": True}
    args.update(kw)
    return poll_interval(**args)  # type: ignore[arg-type]


# -- the decision: each hint alone ---------------------------------------------------------

def test_nothing_known_is_the_configured_interval() -> None:
    d = decide()
    assert (d.delay, d.floor, d.why) == (300.0, 0.0, "interval 5m")


def test_ttl_lengthens_the_interval() -> None:
    d = decide(ttl=30 * MIN)
    assert (d.delay, d.floor, d.why) == (1800.0, 1800.0, "ttl 30m")


def test_ttl_is_capped_at_max_interval() -> None:
    d = decide(ttl=1440 * MIN)
    assert d.delay == d.floor == HOUR
    assert d.why == "ttl 1440m, capped at max_interval 1h"


def test_a_short_hint_never_shortens_the_interval() -> None:
    d = decide(ttl=1 * MIN, freshness=(30.0, "Cache-Control max-age=30"))
    assert d.delay == 300.0 and d.why == "interval 5m"
    assert d.floor == 60.0  # still honoured against the jitter


def test_sy_update_period_lengthens_the_interval() -> None:
    d = decide(update_period=HOUR / 4)
    assert d.delay == 900.0 and d.why == "sy:updatePeriod every 15m"


def test_sy_update_base_aligns_on_the_publishers_schedule() -> None:
    # every 2 h from midnight: at 12:00 the next update is 14:00 (2 h away) ...
    base = datetime(2002, 5, 1, tzinfo=UTC)
    d = decide(update_period=2 * HOUR, update_base=base, max_interval=4 * HOUR)
    assert d.delay == 2 * HOUR and "from sy:updateBase" in d.why
    # ... at 13:30 it is 30 min away, and 30 min < interval: the interval stays
    d = decide(now=NOW + timedelta(minutes=90), update_period=2 * HOUR, update_base=base,
               interval=10 * MIN)
    assert d.delay == 30 * MIN and d.floor == 30 * MIN
    d = decide(now=NOW + timedelta(minutes=90), update_period=2 * HOUR, update_base=base,
               interval=45 * MIN)
    assert d.delay == 45 * MIN and d.why == "interval 45m"
    # a base in the future: its first slot
    d = decide(update_period=HOUR, update_base=NOW + timedelta(minutes=40), interval=60.0)
    assert d.delay == 40 * MIN


def test_cache_control_max_age_lengthens_the_interval() -> None:
    d = decide(freshness=(900.0, "Cache-Control max-age=900"))
    assert (d.delay, d.floor, d.why) == (900.0, 900.0, "Cache-Control max-age=900")
    d = decide(freshness=(2 * DAY, "Cache-Control max-age=172800"))
    assert d.delay == HOUR and d.why.endswith("capped at max_interval 1h")


def test_learned_cadence_shortens_and_lengthens_within_bounds() -> None:
    fast = decide(cadence=4 * MIN)  # posts every 4 min: polled every 2
    assert fast.delay == 4 * MIN * CADENCE_FACTOR and fast.why == "cadence ~4m"
    assert fast.floor == 0.0
    firehose = decide(cadence=10.0)
    assert firehose.delay == MIN and firehose.why == "cadence ~10s, raised to min_interval 1m"
    daily = decide(cadence=DAY)
    assert daily.delay == HOUR and daily.why == "cadence ~1d, capped at max_interval 1h"
    two_hourly = decide(cadence=2 * HOUR, max_interval=6 * HOUR)
    assert two_hourly.delay == HOUR


def test_without_adaptive_the_cadence_is_not_used() -> None:
    assert decide(cadence=DAY, adaptive=False).delay == 300.0
    assert decide(cadence=MIN, adaptive=False).delay == 300.0
    # hints still are
    assert decide(cadence=MIN, adaptive=False, ttl=HOUR).delay == HOUR


# -- combinations --------------------------------------------------------------------------

def test_the_longest_hint_wins() -> None:
    # Washington Post: <ttl>1</ttl> and sy:updatePeriod hourly
    d = decide(ttl=MIN, update_period=HOUR)
    assert d.delay == HOUR and d.why == "sy:updatePeriod every 1h"
    d = decide(ttl=2 * HOUR, update_period=HOUR, freshness=(600.0, "Cache-Control max-age=600"),
               max_interval=DAY)
    assert d.delay == 2 * HOUR and d.why == "ttl 120m"
    d = decide(ttl=10 * MIN, freshness=(1200.0, "Cache-Control max-age=1200"))
    assert d.delay == 1200.0 and d.why == "Cache-Control max-age=1200" and d.floor == 1200.0


def test_a_feed_that_publishes_faster_than_its_hint_says_is_not_slowed_by_it() -> None:
    # WordPress writes sy:updatePeriod hourly into every feed: one that posts every 10 min
    # is polled every 5, and the log says why
    d = decide(cadence=10 * MIN, update_period=HOUR)
    assert d.delay == 5 * MIN and d.floor == 0.0
    assert d.why == "cadence ~10m (publishes more often than its sy:updatePeriod every 1h)"
    d = decide(cadence=10 * MIN, ttl=HOUR)
    assert d.delay == 5 * MIN and "more often than its ttl 60m" in d.why


def test_a_hint_slower_than_the_cadence_still_lengthens() -> None:
    # posts every 90 min, ttl 60: the cadence says 45 min, the ttl 60 min: 60 min
    d = decide(cadence=90 * MIN, ttl=HOUR)
    assert d.delay == HOUR and d.why == "ttl 60m" and d.floor == HOUR


def test_http_freshness_is_honoured_over_a_fast_cadence() -> None:
    # a poll before max-age runs out gets the same bytes from any cache on the way
    d = decide(cadence=2 * MIN, freshness=(600.0, "Cache-Control max-age=600"))
    assert d.delay == 600.0 and d.why == "Cache-Control max-age=600"


# -- bounds --------------------------------------------------------------------------------

def test_the_configured_interval_is_always_within_bounds() -> None:
    # interval below min_interval: the floor is the interval; above max: the cap is it
    d = decide(interval=2.0, cadence=1.0)
    assert d.delay == 2.0
    d = decide(interval=2 * HOUR, ttl=DAY)
    assert d.delay == 2 * HOUR
    assert decide(interval=2 * HOUR).delay == 2 * HOUR


def test_min_equal_max_pins_the_interval() -> None:
    for kw in ({"ttl": DAY}, {"cadence": MIN}, {"cadence": DAY},
               {"freshness": (DAY, "Expires in 1d")}):
        assert decide(interval=300.0, min_interval=300.0, max_interval=300.0,
                      **kw).delay == 300.0


# -- garbage -------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-5 * MIN, 0.0, math.nan, math.inf, -math.inf])
def test_garbage_hint_values_are_ignored(bad: float) -> None:
    for kw in ({"ttl": bad}, {"update_period": bad}, {"cadence": bad},
               {"freshness": (bad, "Cache-Control max-age=?")}):
        d = decide(**kw)
        assert d.delay == 300.0 and d.why == "interval 5m", kw


def test_a_huge_ttl_is_just_capped() -> None:
    d = decide(ttl=10.0**9 * MIN)
    assert d.delay == HOUR and "capped at max_interval" in d.why


@pytest.mark.parametrize("text,seconds", [
    ("60", 3600.0), (" 15 ", 900.0), ("1", 60.0), ("1000000000", 6e10),
    ("-5", None), ("0", None), ("sixty", None), ("", None), ("1e3", None), ("60m", None),
])
def test_ttl_text_as_parsed(text: str, seconds: float | None) -> None:
    assert feed_hints({"ttl": text}, [], now=NOW).ttl == seconds


@pytest.mark.parametrize("period,freq,seconds", [
    ("hourly", "1", HOUR), ("hourly", "6", 600.0), ("daily", "2", DAY / 2),
    ("Weekly", None, 7 * DAY), (None, "4", DAY / 4), ("hourly", "0", HOUR),
    ("hourly", "-3", HOUR), ("hourly", "often", HOUR), ("fortnightly", "1", None),
    (None, None, None),
])
def test_sy_update_period_as_parsed(period: str | None, freq: str | None,
                                    seconds: float | None) -> None:
    meta = {k: v for k, v in (("sy_updateperiod", period), ("sy_updatefrequency", freq)) if v}
    assert feed_hints(meta, [], now=NOW).update_period == seconds


def test_sy_update_base_as_parsed() -> None:
    meta = {"sy_updateperiod": "hourly", "sy_updatebase": "2017-06-21T11:33:12-07:00"}
    assert feed_hints(meta, [], now=NOW).update_base == datetime(2017, 6, 21, 18, 33, 12,
                                                                 tzinfo=UTC)
    meta["sy_updatebase"] = "yesterday"
    assert feed_hints(meta, [], now=NOW).update_base is None
    assert feed_hints({"sy_updatebase": "2002-05-01"}, [], now=NOW).update_base is None


# -- precedence vs failures and Retry-After -----------------------------------------------

def test_failures_and_retry_after_keep_their_precedence() -> None:
    # a decided interval is the success path only: a failure backs off from the configured
    # interval, and Retry-After is a lower bound, as before
    d = decide(ttl=HOUR)
    ok = next_poll(now=NOW, interval=d.delay, failures=0, retry_after=None,
                   backoff_max=6 * HOUR, jitter=0.0, key="f", floor=d.floor)
    assert ok - NOW == timedelta(hours=1)
    failed = next_poll(now=NOW, interval=300.0, failures=1, retry_after=None,
                       backoff_max=6 * HOUR, jitter=0.0, key="f")
    assert failed - NOW == timedelta(minutes=5)
    limited = next_poll(now=NOW, interval=300.0, failures=1, retry_after=2 * HOUR,
                        backoff_max=6 * HOUR, jitter=0.0, key="f")
    assert limited - NOW == timedelta(hours=2)


def test_the_jitter_does_not_undercut_an_honoured_hint() -> None:
    d = decide(ttl=HOUR)
    for i in range(50):
        at = next_poll(now=NOW, interval=d.delay, failures=0, retry_after=None,
                       backoff_max=6 * HOUR, jitter=0.1, key=f"f{i}", floor=d.floor)
        assert HOUR <= (at - NOW).total_seconds() <= 1.1 * HOUR
    # without a hint the jitter goes both ways
    spread = [(next_poll(now=NOW, interval=300.0, failures=0, retry_after=None,
                         backoff_max=6 * HOUR, jitter=0.1, key=f"f{i}") - NOW).total_seconds()
              for i in range(50)]
    assert min(spread) < 300.0 < max(spread)


# -- HTTP freshness ------------------------------------------------------------------------

DATE = "Tue, 17 Feb 2026 12:00:00 GMT"


@pytest.mark.parametrize("headers,expected", [
    ({"cache-control": "max-age=300"}, (300.0, "Cache-Control max-age=300")),
    ({"Cache-Control": "public, max-age=\"600\", must-revalidate"},
     (600.0, "Cache-Control max-age=600")),
    ({"cache-control": "max-age=300", "age": "100"}, (200.0, "Cache-Control max-age=300")),
    ({"cache-control": "max-age=300", "age": "400"}, None),
    ({"cache-control": "max-age=0"}, None),
    ({"cache-control": "max-age=abc"}, None),
    ({"cache-control": "no-cache, max-age=300"}, None),
    ({"cache-control": "no-store"}, None),
    ({"cache-control": "private, s-maxage=900"}, None),
    # max-age wins over Expires
    ({"cache-control": "max-age=60", "expires": "Tue, 17 Feb 2026 14:00:00 GMT",
      "date": DATE}, (60.0, "Cache-Control max-age=60")),
    ({"expires": "Tue, 17 Feb 2026 12:30:00 GMT", "date": DATE}, (1800.0, "Expires in 30m")),
    # Expires against the response's Date: the server's clock, not ours
    ({"expires": "Tue, 17 Feb 2026 15:30:00 GMT", "date": "Tue, 17 Feb 2026 15:00:00 GMT"},
     (1800.0, "Expires in 30m")),
    # without a Date, against now
    ({"expires": "Tue, 17 Feb 2026 12:10:00 GMT"}, (600.0, "Expires in 10m")),
    ({"expires": "0"}, None),
    ({"expires": "-1", "date": DATE}, None),
    ({"expires": "Tue, 17 Feb 2026 11:00:00 GMT", "date": DATE}, None),
    ({"cache-control": "no-cache", "expires": "Tue, 17 Feb 2026 13:00:00 GMT"}, None),
    ({}, None),
])
def test_http_freshness(headers: dict[str, str], expected: tuple[float, str] | None) -> None:
    assert http_freshness(headers, now=NOW) == expected


# -- cadence learning over synthetic series ------------------------------------------------

def series(every: timedelta, n: int, newest: timedelta = timedelta(0)) -> list[datetime]:
    return [NOW - newest - i * every for i in range(n)]


def test_cadence_every_five_minutes() -> None:
    got = learn_cadence(series(timedelta(minutes=5), 20, newest=timedelta(minutes=1)), now=NOW)
    assert got is not None and 4.5 * MIN <= got <= 5.5 * MIN
    assert decide(cadence=got).delay == pytest.approx(got * CADENCE_FACTOR)


def test_cadence_hourly() -> None:
    got = learn_cadence(series(timedelta(hours=1), 30, newest=timedelta(minutes=20)), now=NOW)
    assert got is not None and 0.9 * HOUR <= got <= 1.1 * HOUR


def test_cadence_daily() -> None:
    # 30 daily posts: the 7 within the window count, the archive does not stretch it
    got = learn_cadence(series(timedelta(days=1), 30, newest=timedelta(hours=3)), now=NOW)
    assert got == pytest.approx(DAY, rel=0.05)
    assert decide(cadence=got).delay == HOUR


def test_cadence_of_bursts_is_their_average_rate() -> None:
    # five posts a minute apart, every six hours, for two days: 40 posts in ~2 days
    times = [NOW - timedelta(hours=6 * b, minutes=m) for b in range(8) for m in range(5)]
    got = learn_cadence(times, now=NOW)
    assert got is not None and 1.0 * HOUR <= got <= 1.3 * HOUR


def test_cadence_of_a_quiet_feed_grows_with_its_silence() -> None:
    # posted every 5 min, but the last post was 3 h ago: slower than 5 min now
    got = learn_cadence(series(timedelta(minutes=5), 20, newest=timedelta(hours=3)), now=NOW)
    assert got is not None and got > 10 * MIN
    # nothing within the window: the time since the newest
    dormant = series(timedelta(days=1), 10, newest=timedelta(days=30))
    assert learn_cadence(dormant, now=NOW) == 30 * DAY


def test_cadence_one_post_this_week_is_a_week() -> None:
    times = [NOW - timedelta(hours=1), *series(timedelta(days=3), 5, newest=timedelta(days=8))]
    assert learn_cadence(times, now=NOW) == CADENCE_WINDOW


def test_cadence_with_clock_skewed_future_dates() -> None:
    # a publisher whose clock (or time zone) is 3 h ahead: every date shifted alike
    skewed = [t + timedelta(hours=3) for t in series(timedelta(minutes=10), 20,
                                                     newest=timedelta(minutes=2))]
    straight = learn_cadence(series(timedelta(minutes=10), 20), now=NOW)
    got = learn_cadence(skewed, now=NOW)
    assert got == straight and got is not None and 9 * MIN <= got <= 11 * MIN
    # bogus dates far ahead (2099) are ignored, not taken as the clock
    bogus = [datetime(2099, 1, 1, tzinfo=UTC), *series(timedelta(minutes=10), 20)]
    assert learn_cadence(bogus, now=NOW) == straight


def test_cadence_without_enough_dates_is_unknown() -> None:
    assert learn_cadence([], now=NOW) is None
    assert learn_cadence([NOW - timedelta(minutes=1)], now=NOW) is None
    # the same date on every entry (a feed that stamps its build time) is one date
    assert learn_cadence([NOW - timedelta(minutes=1)] * 20, now=NOW) is None
    assert learn_cadence([NOW - timedelta(hours=2), NOW - timedelta(hours=1)], now=NOW) is None


def test_cadence_from_a_parsed_feed_skips_undated_entries() -> None:
    def item(i: int, dated: bool) -> str:
        when = (NOW - timedelta(minutes=7 * i + 1)).strftime("%a, %d %b %Y %H:%M:%S GMT")
        return (f"<item><title>t{i}</title><link>https://e.org/{i}</link>"
                + (f"<pubDate>{when}</pubDate>" if dated else "") + "</item>")

    def doc(items: str) -> bytes:
        return f'<rss version="2.0"><channel><title>x</title>{items}</channel></rss>'.encode()

    dated = parse_feed(doc("".join(item(i, True) for i in range(15))), {}, feed="f", now=NOW)
    assert dated.hints.cadence is not None and 6 * MIN <= dated.hints.cadence <= 8 * MIN
    undated = parse_feed(doc("".join(item(i, False) for i in range(15))), {}, feed="f", now=NOW)
    assert undated.hints.cadence is None  # not the fallback first_seen dates
    mixed = parse_feed(doc("".join(item(i, i % 3 == 0) for i in range(15))), {}, feed="f",
                       now=NOW)
    assert mixed.hints.cadence is not None and mixed.hints.cadence > 15 * MIN


def test_hints_from_a_feed_with_no_entries_and_from_a_failure() -> None:
    empty = parse_feed(b'<rss version="2.0"><channel><title>x</title><ttl>30</ttl>'
                       b"</channel></rss>", {}, feed="f", now=NOW)
    assert not empty.failed and empty.hints.ttl == 1800.0
    broken = parse_feed(b"<html><body>login</body></html>", {}, feed="f", now=NOW)
    assert broken.failed and broken.hints.ttl is None


# -- real feeds ----------------------------------------------------------------------------

SNAPSHOT_NOW = datetime(2026, 2, 18, 3, 0, tzinfo=UTC)  # just after the news snapshot


def _real(path: str) -> bytes:
    return shared_path("corpora", "real-feeds", path).read_bytes()


@pytest.mark.parametrize("path,ttl,period,base", [
    ("news-snapshot-2026-02-17/404media.xml", 60 * MIN, None, None),
    ("news-snapshot-2026-02-17/bbc-news-top.xml", 15 * MIN, None, None),
    ("news-snapshot-2026-02-17/cbsnews-world.xml", 5 * MIN, None, None),
    ("news-snapshot-2026-02-17/csmonitor-all.xml", 300 * MIN, None, None),
    ("news-snapshot-2026-02-17/washingtonpost-world.xml", 1 * MIN, HOUR, None),
    ("news-snapshot-2026-02-17/restofworld.xml", None, DAY / 2, None),
    ("news-snapshot-2026-02-17/time-world.xml", None, HOUR, None),
    # RSS 1.0, sy:updateBase, and the publisher's "sy:updateFequency" typo (4 a period)
    ("news-snapshot-2026-02-17/dw-rdf-all.rdf", None, HOUR / 4,
     datetime(2002, 5, 1, tzinfo=UTC)),
    # a "syn:" prefix bound to the Syndication namespace
    ("rss-parser/craigslist.rss", None, HOUR / 6, datetime(2017, 6, 21, 18, 33, 12, tzinfo=UTC)),
    ("feed-rs/rss_2.0_wirecutter.xml", None, HOUR, None),
    ("news-snapshot-2026-02-17/nyt-world.xml", None, None, None),
])
def test_real_feeds_ttl_and_sy_fields(path: str, ttl: float | None, period: float | None,
                                      base: datetime | None) -> None:
    parsed = parse_feed(_real(path), {}, feed="f", now=SNAPSHOT_NOW)
    assert not parsed.failed
    h = parsed.hints
    assert (h.ttl, h.update_period, h.update_base) == (ttl, period, base)


def test_feedparser_keys_for_the_hints() -> None:
    # what feed_hints relies on: feedparser names the Syndication elements sy_* whatever
    # the prefix, and gives every value as the text written
    r = feedparser.parse(io.BytesIO(_real("rss-parser/craigslist.rss")))
    assert r.feed["sy_updateperiod"] == "hourly" and r.feed["sy_updatefrequency"] == "6"
    assert r.feed["sy_updatebase"] == "2017-06-21T11:33:12-07:00"
    r = feedparser.parse(io.BytesIO(_real("news-snapshot-2026-02-17/dawn-world.xml")))
    assert r.feed["ttl"] == "60"


def test_real_news_feeds_get_sensible_intervals() -> None:
    """Every news feed of the snapshot, as the default configuration would poll it just
    after the snapshot: within [1 min, 1 h], with a reason, and the busy ones faster."""
    folder = shared_path("corpora", "real-feeds", "news-snapshot-2026-02-17")
    got: dict[str, tuple[float, str]] = {}
    for p in sorted(folder.glob("*.*ml")) + sorted(folder.glob("*.rdf")):
        h = parse_feed(p.read_bytes(), {}, feed=p.stem, now=SNAPSHOT_NOW).hints
        d = poll_interval(now=SNAPSHOT_NOW, interval=300.0, min_interval=60.0,
                          max_interval=3600.0, adaptive=True, cadence=h.cadence, ttl=h.ttl,
                          update_period=h.update_period, update_base=h.update_base)
        assert 60.0 <= d.delay <= 3600.0 and d.why, p.name
        got[p.stem] = (d.delay, d.why)
    assert len(got) >= 20
    # Al Jazeera posts every ~25 min and says nothing: polled about every 12 min
    delay, why = got["aljazeera-all"]
    assert 8 * MIN <= delay <= 15 * MIN and why.startswith("cadence ~")
    # 404 Media posts a few times a day and says <ttl>60</ttl>: hourly
    assert got["404media"] == (HOUR, "cadence ~13h, capped at max_interval 1h")
    # the WSJ snapshot is a year old: the slowest allowed
    assert got["wsj-world"][0] == HOUR
    # Dawn posts every ~100 min and says <ttl>60</ttl>: the ttl is honoured
    assert got["dawn-world"] == (HOUR, "ttl 60m")


def test_real_feed_whose_hint_is_boilerplate() -> None:
    # WordPress boilerplate sy:updatePeriod hourly on a feed that publishes faster: the
    # cadence wins (synthetic: the real WordPress feeds of the snapshot are slow)
    body = _real("feed-rs/rss_2.0_wirecutter.xml")
    meta = feedparser.parse(io.BytesIO(body)).feed
    entries = [{"published_parsed": (NOW - timedelta(minutes=6 * i + 1)).timetuple()}
               for i in range(20)]
    h = feed_hints(meta, entries, now=NOW)
    assert h.update_period == HOUR and h.cadence is not None
    d = decide(cadence=h.cadence, update_period=h.update_period)
    assert d.delay < 5 * MIN and "more often than its sy:updatePeriod" in d.why


# -- configuration -------------------------------------------------------------------------

def _config(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    p = tmp_path / "config.yaml"
    p.write_text(text + "\nchannels:\n  f: {type: file, path: a.jsonl}\nserver: {enabled: false}\n",
                 encoding="utf-8")
    return load_config(p)


def test_config_defaults_and_per_feed_settings(tmp_path: Path) -> None:
    cfg = _config(tmp_path, """
defaults: {min_interval: 2m, max_interval: 2h}
feeds:
  - {name: plain, url: 'https://a.example/rss'}
  - {name: pinned, url: 'https://b.example/rss', interval: 30s}
  - {name: pinned-adaptive, url: 'https://c.example/rss', interval: 30s, adaptive: true}
  - {name: slowest, url: 'https://d.example/rss', max_interval: 6h, adaptive: false}
""")
    specs = {s.name: s for s in cfg.feed_specs()}
    assert (specs["plain"].interval, specs["plain"].min_interval,
            specs["plain"].max_interval, specs["plain"].adaptive) == (300.0, 120.0, 7200.0, True)
    assert specs["pinned"].adaptive is False  # its own interval is the user saying how often
    assert specs["pinned-adaptive"].adaptive is True
    assert (specs["slowest"].max_interval, specs["slowest"].adaptive) == (6 * HOUR, False)
    bare = _config(tmp_path, "feeds:\n  - {name: a, url: 'https://a.example/rss'}\n")
    s = bare.feed_specs()[0]
    assert (s.min_interval, s.max_interval, s.adaptive) == (60.0, 3600.0, True)


@pytest.mark.parametrize("text,needle", [
    ("defaults: {min_interval: 2h, max_interval: 1h}\nfeeds: []",
     "min_interval (7200s) is longer than max_interval (3600s)"),
    ("feeds:\n  - {name: a, url: 'https://a.example/rss', min_interval: 2h}",
     "feed 'a': min_interval (7200s) is longer than max_interval (3600s)"),
    ("feeds:\n  - {name: a, url: 'https://a.example/rss', max_interval: 0}", "max_interval"),
    ("feeds:\n  - {name: a, url: 'https://a.example/rss', min_interval: soon}", "min_interval"),
    ("defaults: {adaptive: sometimes}\nfeeds: []", "adaptive"),
])
def test_config_rejects_bad_bounds(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, text)
    assert any(needle in str(p) for p in e.value.problems), e.value.problems


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 45, 90, 420, 3600, 5400, DAY, DAY + HOUR)] == [
        "0s", "45s", "1m30s", "7m", "1h", "1h30m", "1d", "1d1h"]
