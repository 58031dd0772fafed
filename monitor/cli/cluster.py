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

__all__ = ["cluster_stream"]


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
) -> Iterator[dict[str, str]]:
    """``monitor stories cluster``: ``{"id","title","summary"?,"source"?,"published"}``
    records (in time order; ``published`` ISO-8601 or epoch s/ms) → ``{"id","cluster"}``."""
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
        story = Story(
            id=sid,
            feed=str(rec.get("source") or ""),
            title=str(rec.get("title") or ""),
            link=str(rec.get("link") or ""),
            summary=str(rec.get("summary") or ""),
            published=when,
            first_seen=when,
        )
        latest = when if latest is None or when > latest else latest
        decision = index.add(story, now=latest)
        yield {"id": sid, "cluster": decision.cluster}
