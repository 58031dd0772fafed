"""``monitor stories cluster``: the daemon's dedup engine over JSON-lines records, offline.

The adapter between loose records (dicts from ``json.loads``, times as ISO-8601 or epoch
seconds / milliseconds) and the pure ``StoryIndex``: the records are converted here, at
the edge, so the core sees only ``Story`` objects and aware datetimes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from monitor.core.dedup.features import DedupSettings
from monitor.core.dedup.index import StoryIndex
from monitor.core.model import Story
from monitor.errors import MonitorError

__all__ = ["cluster_stream", "explain_pair", "story_from_record"]


def _parse_time(value: Any) -> datetime:
    """A record's ``published`` as a UTC datetime: epoch seconds (milliseconds above 1e11),
    as a number or a string, or ISO-8601 (a naive one taken as UTC)."""
    if isinstance(value, int | float):
        v = float(value)
        if v > 1e11:  # milliseconds
            v /= 1000.0
        return datetime.fromtimestamp(v, tz=UTC)
    if isinstance(value, str):
        s = value.strip()
        try:
            return _parse_time(float(s))
        except ValueError:
            pass
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    raise ValueError(f"published must be ISO-8601 or epoch seconds, not {value!r}")


def cluster_stream(
    lines: Iterable[dict[str, Any]], settings: DedupSettings | None = None
) -> Iterator[dict[str, Any]]:
    """``monitor stories cluster``: ``{"id","title","summary"?,"source"?,"published"}``
    records (in time order; ``published`` ISO-8601 or epoch s/ms) → ``{"id","cluster"}``,
    plus ``"merged"``: the clusters this one absorbed (their earlier records move to it)."""
    index = StoryIndex(settings)
    latest: datetime | None = None
    for n, rec in enumerate(lines, 1):
        if not isinstance(rec, dict) or "id" not in rec or "published" not in rec:
            raise MonitorError(f"record {n}: expected a JSON object with \"id\" and "
                               f"\"published\", got {json.dumps(rec, ensure_ascii=False)[:200]}")
        sid = str(rec["id"])
        try:
            when = _parse_time(rec["published"])
        except (ValueError, OverflowError, OSError) as e:
            raise MonitorError(f"record {n} ({sid}): {e}") from e
        story = _story(rec, sid, when)
        latest = when if latest is None or when > latest else latest
        decision = index.add(story, now=latest)
        row: dict[str, Any] = {"id": sid, "cluster": decision.cluster}
        if decision.merged:  # earlier records of these clusters now belong to this one
            row["merged"] = list(decision.merged)
        yield row


def _story(rec: dict[str, Any], sid: str, when: datetime) -> Story:
    return Story(
        id=sid,
        feed=str(rec.get("source") or rec.get("feed") or ""),
        title=str(rec.get("title") or ""),
        link=str(rec.get("link") or ""),
        summary=str(rec.get("summary") or ""),
        published=when,
        first_seen=when,
    )


def story_from_record(text: str, *, now: datetime) -> Story:
    """A story from one JSON line (``title``, optional ``summary``, ``source``, ``link``,
    ``published``; ``id`` defaults to the link or the title)."""
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise MonitorError(f"not a JSON object: {e}: {text[:120]!r}") from e
    if not isinstance(rec, dict) or not str(rec.get("title") or "").strip():
        raise MonitorError(f"expected a JSON object with a \"title\": {text[:120]!r}")
    sid = str(rec.get("id") or rec.get("link") or rec["title"])
    try:
        when = _parse_time(rec["published"]) if "published" in rec else now
    except (ValueError, OverflowError, OSError) as e:
        raise MonitorError(f"{sid}: {e}") from e
    return _story(rec, sid, when)


def explain_pair(index: StoryIndex, a: Story, b: Story) -> dict[str, Any]:
    """Whether ``b`` is the same story as ``a`` by the daemon's score: ``b`` against a
    cluster holding ``a`` alone, with the IDF of what ``index`` holds (the stored window,
    or nothing). The score per feature group, the threshold and the words that carried
    it. ``index`` is left as it was."""
    probe = f"explain:{a.id}"
    index.restore([(a, probe)])
    try:
        parts = index.explain(probe, b)
    finally:
        index.forget(probe)
    assert parts is not None
    return {
        "same_story": parts.same,
        "score": parts.score,
        "threshold": parts.threshold,
        "cosine": parts.cosine,
        "groups": {"title": parts.title, "title_and_lead": parts.full,
                   "rare_name": parts.anchor, "time": -parts.time if parts.time else 0.0,
                   "young_cluster": -parts.small if parts.small else 0.0},
        "shared_words": parts.shared,
        "blocked": parts.blocked,
        "rare_name": parts.anchor_word,
        "words": [{"word": w, "share": v} for w, v in parts.words],
    }
