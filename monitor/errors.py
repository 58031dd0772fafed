"""The exception tree. Everything the package raises on purpose derives from MonitorError.

    MonitorError
    ├── ConfigError          config.yaml is missing or invalid (carries every problem found)
    ├── RulesError           rule files are invalid (carries every problem found)
    ├── StoreError           the database failed (wraps the driver's exception with ``from``)
    ├── FeedError            a feed could not be fetched or parsed (normally a *result*, not raised)
    └── DeliveryError        a notifier could not deliver (carries ``retry``)

Expected per-feed failures (timeouts, 404, broken XML) are returned as results
(``FetchFailed``, ``ParsedFeed.problem``) and recorded on the feed; they are never
raised through the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation problem, located in a file: ``path:line:column: message``."""

    path: str
    line: int | None
    column: int | None
    message: str

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}"


class MonitorError(Exception):
    """Root of every error raised on purpose by monitor."""


class ProblemsError(MonitorError):
    """An error that carries a list of located problems (config or rules validation)."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...], summary: str = "") -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        text = "\n".join(str(p) for p in self.problems)
        super().__init__(f"{summary}\n{text}" if summary else text)


class ConfigError(ProblemsError):
    """The configuration file is missing or invalid."""


class RulesError(ProblemsError):
    """One or more rule files are invalid; the whole set is rejected."""


class RuleSyntaxError(MonitorError):
    """A term or an ``expr:`` line of a rule cannot be parsed (``TermError``, ``ExprError``).

    ``message`` says what is wrong; ``column`` says where: 1-based, within the text parsed
    (the term or the expression, not the file). The rule loader turns it into a located
    ``Problem``, so it reaches the user as part of a ``RulesError``.
    """

    def __init__(self, message: str, column: int, *, text: str | None = None) -> None:
        super().__init__(message if text is None else text)
        self.message = message
        self.column = column


class StoreError(MonitorError):
    """The store (SQLite or PostgreSQL) failed."""


class FeedError(MonitorError):
    """A feed could not be fetched or parsed."""

    def __init__(self, feed: str, reason: str) -> None:
        self.feed = feed
        self.reason = reason
        super().__init__(f"feed {feed!r}: {reason}")


class DeliveryError(MonitorError):
    """A notifier could not deliver an alert."""

    def __init__(self, channel: str, reason: str, *, retry: bool, retry_after: float | None = None) -> None:
        self.channel = channel
        self.reason = reason
        self.retry = retry
        self.retry_after = retry_after
        super().__init__(f"channel {channel!r}: {reason}")
