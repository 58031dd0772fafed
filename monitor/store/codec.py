"""Story / Alert / FeedState ⇄ JSON and database rows, shared by every store.

Round-trips are exact: ``story_from_json(story_to_json(s)) == s`` with tuples kept as
tuples and datetimes timezone-aware UTC. Datetimes become fixed-width ISO-8601 text in
UTC (``2026-01-02T03:04:05.000006+00:00``) so that text comparison is chronological
(SQLite stores them as text and compares them in SQL).

Encoding refuses naive datetimes: the whole package works in aware UTC, and a naive
value reaching the store is a bug that must not be silently shifted.
"""

from __future__ import annotations

import functools
import json
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from monitor.core.model import Alert, Delivery, FeedState, Grouping, Hit, Match, Story
from monitor.errors import CodecError

T = TypeVar("T")

#: Bumped when the JSON shape changes incompatibly; decoders accept every older version.
PAYLOAD_VERSION = 1


# -- datetimes ----------------------------------------------------------------------------


def dt_to_text(dt: datetime) -> str:
    """Aware datetime → fixed-width UTC ISO text (sorts chronologically)."""
    if dt.tzinfo is UTC and type(dt) is datetime:  # the usual case, and a hot one
        return dt.isoformat(timespec="microseconds")
    if not isinstance(dt, datetime):
        raise CodecError(f"expected a datetime, got {type(dt).__name__}")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise CodecError(f"naive datetime {dt.isoformat()} (expected timezone-aware UTC)")
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def dt_from_text(text: str) -> datetime:
    """Inverse of :func:`dt_to_text` (accepts any aware ISO-8601 text)."""
    try:
        dt = datetime.fromisoformat(text)
    except (TypeError, ValueError) as e:
        raise CodecError(f"bad datetime {text!r}: {e}") from e
    if dt.tzinfo is None:
        raise CodecError(f"naive datetime {text!r} in stored data")
    return dt.astimezone(UTC)


def opt_dt_to_text(dt: datetime | None) -> str | None:
    return None if dt is None else dt_to_text(dt)


def opt_dt_from_text(text: str | None) -> datetime | None:
    return None if text is None else dt_from_text(text)


def utc(dt: datetime) -> datetime:
    """Check a datetime is aware and return it in UTC (for drivers with native types)."""
    if not isinstance(dt, datetime):
        raise CodecError(f"expected a datetime, got {type(dt).__name__}")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise CodecError(f"naive datetime {dt.isoformat()} (expected timezone-aware UTC)")
    return dt.astimezone(UTC)


# -- text for columns ---------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")


def column_text(s: str, *, nul: bool = False) -> str:
    """Text for a database column or lookup key.

    Lone surrogates (from broken character references) cannot be encoded as UTF-8 by
    any driver: they become U+FFFD. ``nul=True`` also drops NUL characters, which
    PostgreSQL text refuses. Stores apply the same function to the values they store
    and to the values they look up, so lookups stay consistent; the JSON payloads keep
    the exact text (escaped).
    """
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            s = _SURROGATE.sub("\ufffd", s)
    if nul and "\x00" in s:
        s = s.replace("\x00", "")
    return s


# -- small typed readers ------------------------------------------------------------------


def _get(d: Mapping[str, Any], key: str, kind: type[T], what: str) -> T:
    try:
        value = d[key]
    except KeyError:
        raise CodecError(f"{what}: missing field {key!r}") from None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CodecError(f"{what}: field {key!r} should be {kind.__name__}, got {type(value).__name__}")
    return value


def _opt(d: Mapping[str, Any], key: str, kind: type[T], what: str) -> T | None:
    if d.get(key) is None:
        return None
    return _get(d, key, kind, what)


def _strs(d: Mapping[str, Any], key: str, what: str) -> tuple[str, ...]:
    value = d.get(key, [])
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise CodecError(f"{what}: field {key!r} should be a list of strings")
    return tuple(value)


def _check_strs(values: tuple[str, ...], name: str) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise CodecError(f"{name} should contain only strings: {values!r}")
    return list(values)


def _dumps(obj: Any) -> str:
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: keep them, \u-escaped
                text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
        return text
    except (TypeError, ValueError) as e:
        raise CodecError(f"cannot encode to JSON: {e}") from e


def _loads(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except (TypeError, ValueError) as e:
        raise CodecError(f"{what}: invalid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise CodecError(f"{what}: expected a JSON object, got {type(obj).__name__}")
    return obj


# -- Story --------------------------------------------------------------------------------


def story_to_dict(s: Story) -> dict[str, Any]:
    """A JSON-able dict of every field of a Story."""
    return {
        "v": PAYLOAD_VERSION,
        "id": s.id,
        "feed": s.feed,
        "title": s.title,
        "link": s.link,
        "summary": s.summary,
        "content": s.content,
        "published": dt_to_text(s.published),
        "first_seen": dt_to_text(s.first_seen),
        "authors": _check_strs(s.authors, "authors"),
        "tags": _check_strs(s.tags, "tags"),
        "lang": s.lang,
        "guid": s.guid,
        "feed_tags": _check_strs(s.feed_tags, "feed_tags"),
    }


def story_from_dict(d: Mapping[str, Any]) -> Story:
    what = f"story {d.get('id')!r}"
    return Story(
        id=_get(d, "id", str, what),
        feed=_get(d, "feed", str, what),
        title=_get(d, "title", str, what),
        link=_get(d, "link", str, what),
        summary=d.get("summary") or "",
        content=d.get("content") or "",
        published=dt_from_text(_get(d, "published", str, what)),
        first_seen=dt_from_text(_get(d, "first_seen", str, what)),
        authors=_strs(d, "authors", what),
        tags=_strs(d, "tags", what),
        lang=_opt(d, "lang", str, what),
        guid=_opt(d, "guid", str, what),
        feed_tags=_strs(d, "feed_tags", what),
    )


def story_to_json(s: Story) -> str:
    return _dumps(story_to_dict(s))


def story_from_json(text: str | bytes) -> Story:
    return story_from_dict(_loads(text, "story payload"))


# -- Match / Alert ------------------------------------------------------------------------


def _hit_to_dict(h: Hit) -> dict[str, Any]:
    return {"term": h.term, "field": h.field, "start": h.start, "end": h.end, "text": h.text}


def _hit_from_dict(d: Mapping[str, Any]) -> Hit:
    what = "hit"
    return Hit(
        term=_get(d, "term", str, what),
        field=_get(d, "field", str, what),
        start=_get(d, "start", int, what),
        end=_get(d, "end", int, what),
        text=_get(d, "text", str, what),
    )


def match_to_dict(m: Match) -> dict[str, Any]:
    return {
        "rule": m.rule,
        "severity": m.severity,
        "channels": _check_strs(m.channels, "channels"),
        "terms": _check_strs(m.terms, "terms"),
        "actors": _check_strs(m.actors, "actors"),
        "hits": [_hit_to_dict(h) for h in m.hits],
        "cooldown": m.cooldown,
        "digest": m.digest,
        **({"group": _grouping_to_dict(m.group)} if m.group else {}),
        **({"digest_tz": m.digest_tz} if m.digest_tz is not None else {}),
    }


def _grouping_to_dict(g: Grouping) -> dict[str, Any]:
    return {"by": list(g.by), "wait": g.wait, "interval": g.interval, "repeat": g.repeat}


def _grouping_from_dict(d: Any, what: str) -> Grouping | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise CodecError(f"{what}: field 'group' should be an object")
    nums: dict[str, float] = {}
    for k in ("wait", "interval", "repeat"):
        v = d.get(k)
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise CodecError(f"{what}: field 'group.{k}' should be a number")
        nums[k] = float(v)
    return Grouping(by=_strs(d, "by", what), **nums)


def match_from_dict(d: Mapping[str, Any]) -> Match:
    what = f"match {d.get('rule')!r}"
    hits = d.get("hits", [])
    if not isinstance(hits, list) or not all(isinstance(h, dict) for h in hits):
        raise CodecError(f"{what}: field 'hits' should be a list of objects")
    cooldown = d.get("cooldown", 0.0)
    if not isinstance(cooldown, int | float) or isinstance(cooldown, bool):
        raise CodecError(f"{what}: field 'cooldown' should be a number")
    return Match(
        rule=_get(d, "rule", str, what),
        severity=_get(d, "severity", str, what),
        channels=_strs(d, "channels", what),
        terms=_strs(d, "terms", what),
        actors=_strs(d, "actors", what),
        hits=tuple(_hit_from_dict(h) for h in hits),
        cooldown=float(cooldown),
        digest=_opt(d, "digest", str, what),
        group=_grouping_from_dict(d.get("group"), what),
        digest_tz=_opt(d, "digest_tz", str, what),
    )


def alert_to_dict(a: Alert) -> dict[str, Any]:
    """A JSON-able dict of an Alert (story and match nested)."""
    return {
        "v": PAYLOAD_VERSION,
        "story": story_to_dict(a.story),
        "match": match_to_dict(a.match),
        "cluster": a.cluster,
        "sources": a.sources,
        "source_names": _check_strs(a.source_names, "source_names"),
        "update": a.update,
        **({"first_title": a.first_title} if a.first_title is not None else {}),
        **({"first_story": story_to_dict(a.first_story)} if a.first_story is not None else {}),
        **({"reply": False} if not a.reply else {}),
        **({"novel": _check_strs(a.novel, "novel")} if a.novel else {}),
    }


def alert_from_dict(d: Mapping[str, Any]) -> Alert:
    what = "alert"
    update = d.get("update", False)
    if not isinstance(update, bool):
        raise CodecError(f"{what}: field 'update' should be a boolean")
    return Alert(
        story=story_from_dict(_get(d, "story", dict, what)),
        match=match_from_dict(_get(d, "match", dict, what)),
        cluster=_get(d, "cluster", str, what),
        sources=_get(d, "sources", int, what) if "sources" in d else 1,
        source_names=_strs(d, "source_names", what),
        update=update,
        first_title=_get(d, "first_title", str, what) if "first_title" in d else None,
        first_story=(story_from_dict(_get(d, "first_story", dict, what))
                     if d.get("first_story") is not None else None),
        reply=_get(d, "reply", bool, what) if "reply" in d else True,
        novel=_strs(d, "novel", what),
    )


def alert_to_json(a: Alert) -> str:
    return _dumps(alert_to_dict(a))


def alert_from_json(text: str | bytes) -> Alert:
    return alert_from_dict(_loads(text, "alert payload"))


def readable_alert(text: str | bytes) -> Alert | None:
    """An outbox payload for operators to read (``monitor alerts``): None when it cannot
    be decoded, rather than failing the whole listing."""
    try:
        return alert_from_json(text)
    except CodecError:
        return None


def alert_title(text: str | bytes) -> str | None:
    """The headline of a stored alert payload, for operators (the status page); None
    when the payload cannot be read (that is the dispatcher's to report, not theirs)."""
    try:
        title = json.loads(text)["story"]["title"]
    except (TypeError, ValueError, KeyError):
        return None
    return title if isinstance(title, str) else None


# -- lists of strings (cluster sources) ---------------------------------------------------


def strs_to_json(values: tuple[str, ...]) -> str:
    return _dumps(_check_strs(values, "sources"))


@functools.lru_cache(maxsize=4096)
def one_source_json(feed: str) -> str:
    """``strs_to_json((feed,))``: the sources of a story's own cluster, once per feed."""
    return strs_to_json((feed,))


class SourcesJson:
    """Clusters' source lists as JSON for ``save_poll``, remembering each cluster's last
    encoding: a cluster saved again with the same sources costs a comparison, and one
    that gained sources (they only grow, in order of arrival) encodes only the new ones,
    appended to its last text. Anything else (a merge reordered them, a cluster not seen
    lately) is encoded whole. The text is the one ``strs_to_json`` gives.

    One per store, used by one thread at a time (SQLite's worker, PostgreSQL's event
    loop); it remembers the ``size`` clusters saved last."""

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        # cluster id -> (its sources, their JSON, whether it is ASCII-escaped throughout)
        self._last: dict[str, tuple[tuple[str, ...], str, bool]] = {}

    def __call__(self, cluster: str, sources: tuple[str, ...]) -> str:
        last = self._last.pop(cluster, None)
        if last is not None and last[0] == sources:
            entry = last
        elif (last is not None and last[0] and not last[2]
              and len(sources) > len(last[0]) and sources[:len(last[0])] == last[0]):
            more, escaped = _dumps_strs(sources[len(last[0]):])
            entry = (sources, last[1][:-1] + "," + more[1:], False) if not escaped else (
                sources, *_dumps_strs(sources))
        else:
            entry = (sources, *_dumps_strs(sources))
        self._last[cluster] = entry  # (the newest last: the oldest go first)
        if len(self._last) > self.size:
            del self._last[next(iter(self._last))]
        return entry[1]


def _dumps_strs(values: tuple[str, ...]) -> tuple[str, bool]:
    """``strs_to_json``, and whether the text had to be ASCII-escaped (lone surrogates):
    such a text cannot be extended with unescaped text and stay what one encoding gives."""
    text = strs_to_json(values)
    return text, bool(values) and text.isascii() and not all(v.isascii() for v in values)


def strs_from_json(text: str | bytes) -> tuple[str, ...]:
    try:
        obj = json.loads(text)
    except (TypeError, ValueError) as e:
        raise CodecError(f"invalid JSON list: {e}") from e
    if not isinstance(obj, list) or not all(isinstance(v, str) for v in obj):
        raise CodecError("expected a JSON list of strings")
    return tuple(obj)


# -- FeedState rows -----------------------------------------------------------------------

#: Column order of the ``feeds`` table, same as the FeedState fields.
FEED_COLUMNS: tuple[str, ...] = (
    "name",
    "url",
    "configured_url",
    "etag",
    "last_modified",
    "body_hash",
    "last_polled",
    "next_poll",
    "last_success",
    "failures",
    "last_status",
    "last_error",
    "gone",
    "baselined",
    "problem",
    "polls",
    "stories_seen",
    "ttl",
    "update_period",
    "update_base",
    "cadence",
    "poll_interval",
    "poll_reason",
    "failing_since",
    "last_new_story",
    "story_times",
    "notice",
)
_FEED_TIMES = frozenset({"last_polled", "next_poll", "last_success", "update_base",
                         "failing_since", "last_new_story"})
_FEED_BOOLS = frozenset({"gone", "baselined"})
_FEED_FIELDS = operator.attrgetter(*FEED_COLUMNS)
_TIME_AT = tuple(i for i, col in enumerate(FEED_COLUMNS) if col in _FEED_TIMES)
_STORY_TIMES_AT = FEED_COLUMNS.index("story_times")


def times_to_json(times: tuple[datetime, ...]) -> str:
    """A feed's ``story_times`` as a JSON list of ISO 8601 UTC times (both stores)."""
    # what json.dumps writes for a list of these strings (no character in them needs
    # escaping), for less than a third of its cost
    return "[" + ", ".join(['"' + dt_to_text(t) + '"' for t in times]) + "]"


def times_from_json(text: str | None) -> tuple[datetime, ...]:
    if not text:
        return ()
    try:
        obj = json.loads(text)
        if not isinstance(obj, list):
            raise TypeError("not a list")
        return tuple(dt_from_text(str(v)) for v in obj)
    except (TypeError, ValueError) as e:
        raise CodecError(f"invalid story_times: {e}") from e


def feed_to_row(state: FeedState, dt: Callable[[datetime], Any]) -> tuple[Any, ...]:
    """FeedState → values in FEED_COLUMNS order; ``dt`` encodes non-null datetimes."""
    # every poll writes its feed's row back: one C-level read of all the fields, then
    # only the few columns that need converting (a loop over all of them cost more than
    # the row's write)
    out = list(_FEED_FIELDS(state))
    for i in _TIME_AT:
        value = out[i]
        if value is not None:
            out[i] = dt(value)
    out[_STORY_TIMES_AT] = times_to_json(out[_STORY_TIMES_AT])
    return tuple(out)


def feed_from_row(row: Mapping[str, Any], dt: Callable[[Any], datetime], *,
                  due: datetime | None = None) -> FeedState:
    """A ``feeds`` row (mapping by column name) → FeedState; ``dt`` decodes datetimes,
    ``due`` as ``feed_from_values``."""
    return feed_from_values(map(row.__getitem__, FEED_COLUMNS), dt, due=due)


def feed_from_values(values: Iterable[Any], dt: Callable[[Any], datetime], *,
                     due: datetime | None = None) -> FeedState:
    """The values of FEED_COLUMNS, in that order (a ``SELECT`` of those columns) →
    FeedState; ``dt`` decodes datetimes. A store reads every feed at start and each
    claimed feed at each claim: by position, not by name (``sqlite3.Row`` finds a
    name by comparing it with each column's)."""
    state = dict(zip(FEED_COLUMNS, values, strict=True))
    for col in _FEED_TIMES:
        value = state[col]
        if value is not None:
            state[col] = dt(value)
    for col in _FEED_BOOLS:
        state[col] = bool(state[col])
    state["story_times"] = times_from_json(state["story_times"])
    return FeedState(**state, due=due)


def delivery_from_row(
    row: Any,
    *,
    created: datetime,
    next_attempt: datetime | None,
    thread_ref: str | None = None,
    requeued: datetime | None = None,
    group: str | None = None,
) -> Delivery:
    """An outbox row (``sqlite3.Row`` or ``asyncpg.Record``: key, channel, payload,
    parent_key, id, attempts) as a Delivery; times come converted by the caller."""
    return Delivery(
        key=row["key"],
        channel=row["channel"],
        alert=alert_from_json(row["payload"]),
        created=created,
        parent_key=row["parent_key"],
        id=row["id"],
        attempts=row["attempts"],
        next_attempt=next_attempt,
        thread_ref=thread_ref,
        requeued=requeued,
        group=group,
    )
