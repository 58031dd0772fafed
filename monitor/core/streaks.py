"""Failure streaks: which failure is news, and one summary line of those that go on.

A feed (or the store) that fails on every poll must not write a warning on every poll.
The rule, for the log lines of one key (a feed's name, "store"):

- the first failure of a streak is news (warning), and so is a failure whose problem
  differs from the one before (the feed went from HTTP 503 to a timeout);
- a repeat of the same problem is not (debug);
- the first success after a streak ends it (``feed.recovered``, info);
- what still fails is listed in one line on the daemon's summary cadence:
  ``feeds.failing count=2 feeds="a (12x, HTTP 503 Service Unavailable, since 10:02), b (…)"``,
  at most ``SUMMARY_CAP`` keys named, then "+N more".

Pure: the caller passes ``now``; nothing here reads a clock or logs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

SUMMARY_CAP = 10  # keys named in a summary line, at most
PROBLEM_CHARS = 60  # of a problem's text in a summary line

Verdict = Literal["new", "changed", "repeat"]


def is_news(*, failures_before: int, last_error: str | None, reason: str) -> bool:
    """Whether a failure deserves a warning, from the durable state before it: the first
    of a streak, or a different problem than the last one."""
    return failures_before == 0 or reason != last_error


@dataclass(slots=True)
class Streak:
    """One key's failures since its last success."""

    problem: str  # the latest problem
    since: datetime  # the first failure of the streak
    last: datetime  # the latest failure
    count: int = 1


class Streaks:
    """The open failure streaks, by key."""

    def __init__(self) -> None:
        self._open: dict[str, Streak] = {}

    def failed(self, key: str, problem: str, now: datetime) -> Verdict:
        s = self._open.get(key)
        if s is None:
            self._open[key] = Streak(problem=problem, since=now, last=now)
            return "new"
        s.count += 1
        s.last = now
        if s.problem != problem:
            s.problem = problem
            return "changed"
        return "repeat"

    def succeeded(self, key: str) -> Streak | None:
        """End ``key``'s streak; the streak it ended, if any (to log the recovery)."""
        return self._open.pop(key, None)

    def forget(self, keys: Iterable[str]) -> None:
        for k in keys:
            self._open.pop(k, None)

    def get(self, key: str) -> Streak | None:
        return self._open.get(key)

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, key: object) -> bool:
        return key in self._open

    def summary(self, *, cap: int = SUMMARY_CAP) -> str:
        """``a (12x, HTTP 503, since 10:02), b (3x, timeout, since 09:58) +2 more``: the
        longest streaks first (then by name), at most ``cap`` of them."""
        ranked = sorted(self._open.items(), key=lambda kv: (-kv[1].count, kv[0]))
        parts = [f"{k} ({s.count}x, {_short(s.problem)}, since {s.since:%H:%M})"
                 for k, s in ranked[:cap]]
        more = len(ranked) - len(parts)
        return ", ".join(parts) + (f" +{more} more" if more > 0 else "")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= PROBLEM_CHARS else text[:PROBLEM_CHARS - 1] + "…"
