"""The store codec: exact round-trips of Story / Alert / FeedState, strict decoding."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from monitor.core.model import Alert, FeedState, Hit, Match, Story
from monitor.errors import CodecError
from monitor.store.codec import (
    SourcesJson,
    alert_from_json,
    alert_to_json,
    dt_from_text,
    dt_to_text,
    feed_from_row,
    feed_to_row,
    story_from_json,
    story_to_json,
    strs_from_json,
    strs_to_json,
    utc,
)

ALPHABET = (
    "abcXYZ019 .,;:'\"\\/<>&{}[]\n\t"
    "éèçñüß"  # Latin accents
    "日本語中文한국어"  # CJK
    "Ελληνικάкириллицаעבריתالعربية"  # Greek, Cyrillic, RTL
    "😀🚀👩‍💻🇫🇷"  # emoji, ZWJ sequence, flag
    "\u200b\u00a0\x00\x7f\ud7ff"  # zero-width, nbsp, NUL, DEL, last BMP before surrogates
)


def _text(rng: random.Random, n: int = 40) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, n)))


def _dt(rng: random.Random) -> datetime:
    base = datetime(1990, 1, 1, tzinfo=UTC)
    dt = base + timedelta(seconds=rng.randint(0, 2_000_000_000), microseconds=rng.randint(0, 999_999))
    return dt


def _story(rng: random.Random, i: int) -> Story:
    return Story(
        id=f"urn:{i}:{_text(rng, 10)}",
        feed=_text(rng, 8) or "feed",
        title=_text(rng),
        link=f"https://example.org/{i}/{_text(rng, 10)}",
        summary=_text(rng, 200),
        content=_text(rng, 400),
        published=_dt(rng),
        first_seen=_dt(rng),
        authors=tuple(_text(rng, 12) for _ in range(rng.randint(0, 3))),
        tags=tuple(_text(rng, 8) for _ in range(rng.randint(0, 4))),
        lang=rng.choice([None, "en", "fr", "zh-Hant"]),
        guid=rng.choice([None, _text(rng, 20)]),
        feed_tags=tuple(_text(rng, 6) for _ in range(rng.randint(0, 2))),
    )


def _alert(rng: random.Random, i: int) -> Alert:
    hits = tuple(
        Hit(term=_text(rng, 6), field=rng.choice(["title", "summary"]), start=j, end=j + 3, text=_text(rng, 5))
        for j in range(rng.randint(0, 3))
    )
    match = Match(
        rule=f"rule-{i}",
        severity=rng.choice(["info", "low", "high", "critical"]),
        channels=tuple(f"ch{j}" for j in range(rng.randint(1, 3))),
        terms=tuple(_text(rng, 6) for _ in range(rng.randint(0, 3))),
        actors=tuple(_text(rng, 6) for _ in range(rng.randint(0, 2))),
        hits=hits,
        cooldown=rng.choice([0.0, 3600.0, 0.1, 1e-3, 86400.5]),
        digest=rng.choice([None, "0 8 * * *"]),
    )
    return Alert(
        story=_story(rng, i),
        match=match,
        cluster=f"c{i}",
        sources=rng.randint(1, 9),
        source_names=tuple(_text(rng, 6) for _ in range(rng.randint(0, 3))),
        update=rng.choice([True, False]),
        first_title=rng.choice([None, _text(rng, 30)]),
        first_story=rng.choice([None, _story(rng, i + 100)]),
        reply=rng.choice([True, False]),
        novel=tuple(_text(rng, 6) for _ in range(rng.randint(0, 2))),
    )


@pytest.mark.parametrize("seed", range(25))
def test_story_round_trip_is_exact(seed: int) -> None:
    rng = random.Random(seed)
    for i in range(8):
        s = _story(rng, i)
        back = story_from_json(story_to_json(s))
        assert back == s
        assert type(back.authors) is tuple and type(back.tags) is tuple and type(back.feed_tags) is tuple
        assert back.published.tzinfo is not None and back.published.utcoffset() == timedelta(0)
        assert back.published == s.published and back.first_seen == s.first_seen


@pytest.mark.parametrize("seed", range(25))
def test_alert_round_trip_is_exact(seed: int) -> None:
    rng = random.Random(1000 + seed)
    for i in range(5):
        a = _alert(rng, i)
        back = alert_from_json(alert_to_json(a))
        assert back == a
        assert type(back.match.hits) is tuple and all(isinstance(h, Hit) for h in back.match.hits)
        assert type(back.match.channels) is tuple and type(back.source_names) is tuple
        assert isinstance(back.match.cooldown, float)


def test_minimal_story_with_defaults_round_trips() -> None:
    t = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    s = Story(id="x", feed="f", title="", link="", published=t, first_seen=t)
    assert story_from_json(story_to_json(s)) == s


def test_payload_is_readable_json_with_unicode_kept() -> None:
    t = datetime(2026, 3, 1, tzinfo=UTC)
    s = Story(id="x", feed="f", title="Café 日本 😀", link="l", published=t, first_seen=t)
    text = story_to_json(s)
    assert "Café 日本 😀" in text  # not \\u-escaped: smaller and greppable
    d = json.loads(text)
    assert d["published"] == "2026-03-01T00:00:00.000000+00:00"
    assert d["v"] == 1


def test_other_timezones_come_back_as_the_same_instant_in_utc() -> None:
    paris = timezone(timedelta(hours=2))
    t = datetime(2026, 6, 1, 14, 30, 15, 123456, tzinfo=paris)
    s = Story(id="x", feed="f", title="t", link="l", published=t, first_seen=t)
    back = story_from_json(story_to_json(s))
    assert back.published == t
    assert back.published.utcoffset() == timedelta(0)
    assert back.published.hour == 12


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(2026, 1, 1)
    s = Story(id="x", feed="f", title="t", link="l", published=naive, first_seen=naive)
    with pytest.raises(CodecError, match="naive"):
        story_to_json(s)
    with pytest.raises(CodecError, match="naive"):
        utc(naive)
    with pytest.raises(CodecError, match="naive"):
        dt_from_text("2026-01-01T00:00:00")


def test_datetime_text_sorts_chronologically() -> None:
    rng = random.Random(7)
    dts = [_dt(rng) for _ in range(300)]
    dts += [datetime(1000, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)]
    texts = [dt_to_text(d) for d in dts]
    assert len({len(t) for t in texts}) == 1  # fixed width
    assert sorted(texts) == [dt_to_text(d) for d in sorted(dts)]
    assert [dt_from_text(t) for t in texts] == dts


def test_unserialisable_values_raise_codec_error() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    s = Story(id="x", feed="f", title="t", link="l", published=t, first_seen=t)
    bad = Match(rule="r", severity="high", channels=("c",), terms=(object(),))  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="terms"):
        alert_to_json(Alert(story=s, match=bad, cluster="c"))
    nan = Match(rule="r", severity="high", channels=("c",), cooldown=float("nan"))
    with pytest.raises(CodecError, match="JSON"):
        alert_to_json(Alert(story=s, match=nan, cluster="c"))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"id": "x"}', "missing field 'feed'"),
        (
            '{"id": "x", "feed": "f", "title": 3, "link": "l", "published": "2026-01-01T00:00:00+00:00",'
            ' "first_seen": "2026-01-01T00:00:00+00:00"}',
            "field 'title' should be str",
        ),
        (
            '{"id": "x", "feed": "f", "title": "t", "link": "l", "published": "yesterday",'
            ' "first_seen": "2026-01-01T00:00:00+00:00"}',
            "bad datetime",
        ),
        (
            '{"id": "x", "feed": "f", "title": "t", "link": "l", "published": "2026-01-01T00:00:00+00:00",'
            ' "first_seen": "2026-01-01T00:00:00+00:00", "tags": [1]}',
            "list of strings",
        ),
    ],
)
def test_bad_story_payloads_are_rejected_with_a_reason(payload: str, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        story_from_json(payload)


def test_bad_alert_payload_is_rejected() -> None:
    with pytest.raises(CodecError, match="missing field 'story'"):
        alert_from_json('{"match": {}, "cluster": "c"}')


def test_string_lists_round_trip() -> None:
    assert strs_from_json(strs_to_json(("a", "b é", "😀"))) == ("a", "b é", "😀")
    assert strs_from_json(strs_to_json(())) == ()
    with pytest.raises(CodecError):
        strs_from_json('{"a": 1}')


def test_feed_state_rows_round_trip() -> None:
    t = datetime(2026, 2, 3, 4, 5, 6, 7, tzinfo=UTC)
    full = FeedState(
        name="n", url="u2", configured_url="u", etag='W/"x"', last_modified="Mon", body_hash="ab",
        last_polled=t, next_poll=t + timedelta(minutes=5), last_success=t, failures=3,
        last_status=503, last_error="boom", gone=True, baselined=True, problem="bozo", polls=9,
        stories_seen=40, ttl=900.0, update_period=3600.0, update_base=t - timedelta(days=9),
        cadence=123.4, poll_interval=900.0, poll_reason="ttl 15m",
    )
    from monitor.store.codec import FEED_COLUMNS

    for state in (full, FeedState(name="m", url="u", configured_url="u")):
        row = feed_to_row(state, dt_to_text)
        mapping = dict(zip(FEED_COLUMNS, row, strict=True))
        assert feed_from_row(mapping, dt_from_text) == state


def test_lone_surrogates_round_trip_in_payloads_and_are_replaced_in_columns() -> None:
    from monitor.store.codec import column_text

    t = datetime(2026, 1, 1, tzinfo=UTC)
    s = Story(id="x\ud800", feed="f", title="a\udc00b é", link="l", published=t, first_seen=t)
    text = story_to_json(s)
    text.encode("utf-8")  # storable by any driver
    assert story_from_json(text) == s
    assert column_text("a\udc00b é") == "a\ufffdb é"
    assert column_text("nul\x00here") == "nul\x00here"
    assert column_text("nul\x00here", nul=True) == "nulhere"
    assert column_text("plain") == "plain"


def test_sources_json_is_strs_to_json_however_a_cluster_s_sources_change() -> None:
    """The incremental encoder (``save_poll``'s) gives exactly ``strs_to_json``'s text: for
    a cluster saved again as it was, grown, reordered by a merge, shrunk, with non-ASCII
    names and lone surrogates (which make the whole list ASCII-escaped), and once the
    cluster was forgotten."""
    enc = SourcesJson(size=3)
    rnd = random.Random(7)
    names = ["bbc", "ap", "Le Monde", "Süddeutsche", "東京新聞", "bad\ud800", "q\"uote", "tab\t"]
    clusters: dict[str, list[str]] = {f"c{i}": [] for i in range(5)}
    grown = 0
    for _ in range(2000):
        cid = rnd.choice(list(clusters))
        src = clusters[cid]
        r = rnd.random()
        if r < 0.6:
            src.append(rnd.choice(names) + str(rnd.randrange(50)))
            grown += 1
        elif r < 0.7:
            rnd.shuffle(src)
        elif r < 0.75 and src:
            src.pop(0)
        values = tuple(src)
        text = enc(cid, values)
        assert text == strs_to_json(values), values
        assert strs_from_json(text) == values
    assert grown > 1000 and len(enc._last) == 3  # bounded: the oldest are forgotten


def test_feed_rows_are_each_field_encoded_in_column_order() -> None:
    """``feed_to_row`` reads the fields in one go and converts only the times: the row
    is what encoding each field by itself gives, story times in any zone included."""
    from monitor.store.codec import FEED_COLUMNS

    paris = timezone(timedelta(hours=2))
    t = datetime(2026, 2, 3, 4, 5, 6, 7, tzinfo=UTC)
    state = FeedState(
        name="n", url="u2", configured_url="u", etag='W/"x"', last_polled=t,
        next_poll=t + timedelta(minutes=5), last_success=t, failures=1, gone=False,
        baselined=True, update_base=t - timedelta(days=2), failing_since=t,
        last_new_story=datetime(2026, 2, 3, 6, 0, tzinfo=paris), notice="failing:n",
        story_times=(datetime(2026, 2, 3, 6, 0, tzinfo=paris), t),
    )
    times = {"last_polled", "next_poll", "last_success", "update_base", "failing_since",
             "last_new_story"}

    def by_hand(col: str) -> object:
        value = getattr(state, col)
        if col in times:
            return None if value is None else dt_to_text(value)
        if col == "story_times":
            return json.dumps([dt_to_text(x) for x in value])
        return value

    row = feed_to_row(state, dt_to_text)
    assert row == tuple(by_hand(col) for col in FEED_COLUMNS)
    assert json.loads(row[FEED_COLUMNS.index("story_times")]) == [
        "2026-02-03T04:00:00.000000+00:00", "2026-02-03T04:05:06.000007+00:00"]
    back = feed_from_row(dict(zip(FEED_COLUMNS, row, strict=True)), dt_from_text)
    assert back == state  # the same instants (equal across zones), now in UTC
    assert back.last_new_story is not None and back.last_new_story.utcoffset() == timedelta(0)
    assert all(x.tzinfo is UTC for x in back.story_times)
    empty = feed_to_row(FeedState(name="m", url="u", configured_url="u"), dt_to_text)
    assert empty[FEED_COLUMNS.index("story_times")] == json.dumps([])


def test_utc_text_is_the_same_whichever_way_the_time_came() -> None:
    class Stamp(datetime):  # a subclass takes the general path
        pass

    t = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)
    same = [t, t.astimezone(timezone(timedelta(hours=-5))), t.astimezone(timezone(timedelta(0), "Z")),
            Stamp(2026, 2, 3, 4, 5, 6, tzinfo=UTC)]
    assert {dt_to_text(x) for x in same} == {"2026-02-03T04:05:06.000000+00:00"}
    assert utc(t) is t or utc(t) == t
    assert isinstance(utc(same[1]), datetime) and utc(same[1]).tzinfo is UTC
