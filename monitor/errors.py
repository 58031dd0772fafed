"""The exception tree. Everything the package raises on purpose derives from MonitorError.

    MonitorError                 raised as is: a command's or the daemon's start-up failure
    │                            (a port taken, a feed that cannot be fetched for `rules test`)
    ├── ProblemsError            carries every located problem found (``Problem``: file:line:col)
    │   ├── ConfigError          config.yaml is missing or invalid
    │   ├── RulesError           rule files are invalid; the whole set is rejected
    │   └── YamlError            a YAML file cannot be read at all (reported as one of the above)
    ├── RuleSyntaxError          a term or an expr: cannot be parsed (message, column in its text)
    │   ├── TermError            monitor.core.rules.terms (``.offset``)
    │   └── ExprError            monitor.core.rules.expr (``.col``)
    └── StoreError               the database failed (the driver's exception chained ``from``);
        │                        ``kind``, ``where`` (file or server) and ``fix`` say what to do
        ├── StoreFull            kind "full": the disk (or the database's size limit) is full
        ├── StoreReadOnly        kind "readonly": the file or its directory is not writable
        ├── StoreCorrupt         kind "corrupt": not a database, or a damaged one
        ├── StoreUnavailable     kind "unavailable": cannot open the file, cannot reach the server
        ├── StoreBusy            kind "busy": locked by another process past the busy timeout
        ├── SchemaTooNew         kind "schema": the database was migrated by a newer monitor
        └── CodecError           a value cannot be encoded, or a stored payload decoded

Expected failures are results, not exceptions: a feed's (timeout, 404, broken XML) is
``FetchFailed`` or ``ParsedFeed.problem``, recorded on the feed; a channel's is
``SendFailed(retry, retry_after)``, recorded on the delivery. Neither is raised through
the scheduler or the dispatcher.
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


class YamlError(ProblemsError):
    """A YAML file cannot be read at all (its one problem says where); the caller reports
    it as a ConfigError or with the other rule files' problems."""

    def __init__(self, problem: Problem) -> None:
        super().__init__([problem])
        self.problem = problem


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
    """The store (SQLite or PostgreSQL) failed.

    The message is one line: what failed, the driver's reason and, when known, what to do.
    ``kind`` names the class of failure for logs ("error" when unclassified); ``where`` is
    the database file or the server (password hidden); ``detail`` the driver's reason;
    ``fix`` what the operator can do (``monitor.store.diagnose`` fills them in).
    """

    kind = "error"

    def __init__(self, message: str, *, where: str | None = None, detail: str | None = None,
                 fix: str | None = None) -> None:
        super().__init__(message)
        self.where = where
        self.detail = detail
        self.fix = fix


class StoreFull(StoreError):
    """No space left: on the disk holding the database, or below its size limit."""

    kind = "full"


class StoreReadOnly(StoreError):
    """The database (or its directory, for the journal) cannot be written."""

    kind = "readonly"


class StoreCorrupt(StoreError):
    """The file is not a database, or the database is damaged."""

    kind = "corrupt"


class StoreUnavailable(StoreError):
    """The database cannot be opened, or its server cannot be reached."""

    kind = "unavailable"


class StoreBusy(StoreError):
    """Another process holds the database locked for longer than the busy timeout."""

    kind = "busy"


class SchemaTooNew(StoreError):
    """The database's schema version is newer than this monitor knows: refused at open
    (never retried), so that an older monitor does not write to a schema it does not know."""

    kind = "schema"


class CodecError(StoreError):
    """A value cannot be encoded for the store, or a stored payload cannot be decoded."""
