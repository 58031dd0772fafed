"""Forward-only schema migrations, one SQL file per version and dialect.

``NNNN_name.<dialect>.sql`` (dialect ``sqlite`` or ``postgres``); version ``NNNN`` is
applied when the database's version is lower, in one transaction with the version bump.
Never edit a released file: add the next one.

Both stores migrate when they open (``Store.open``), one migrator at a time: PostgreSQL
under an advisory lock on a fixed key per schema, SQLite inside a ``BEGIN IMMEDIATE``
transaction that re-reads the version. ``monitor migrate`` runs (or, ``--dry-run``, tries
and rolls back) the same steps and reports them as a ``Plan``. A database at a version
newer than the code knows is refused (``too_new``): an older monitor must not write to a
schema it does not know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from monitor.errors import SchemaTooNew

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.(sqlite|postgres)\.sql$")


@dataclass(frozen=True, kw_only=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    """What ``Store.migrate`` found and did."""

    dialect: str  # "sqlite" | "postgres"
    where: str  # the database file, or the server and schema (no password)
    current: int  # the version found before migrating (0: a new database)
    target: int  # the latest version this code knows
    steps: tuple[Migration, ...]  # the migrations from ``current`` to ``target``, in order
    applied: bool  # committed; False when there was nothing to do, or in a dry run
    dry_run: bool = False  # the steps ran in a transaction that was rolled back

    @property
    def version(self) -> int:
        """The version the database is at now."""
        return self.target if self.applied else self.current


def too_new(where: str, found: int, known: int) -> SchemaTooNew:
    """The refusal of a database whose schema is newer than this code."""
    return SchemaTooNew(
        f"the database at {where} is at schema version {found}, this monitor knows up to "
        f"{known}: upgrade monitor (or restore a backup made before the upgrade)",
        where=where, detail=f"schema version {found} > {known}",
        fix="upgrade monitor (or restore a backup made before the upgrade)",
    )


def load(dialect: str) -> list[Migration]:
    """Every migration for ``dialect``, in version order."""
    out: list[Migration] = []
    for entry in resources.files(__name__).iterdir():
        m = _NAME.match(entry.name)
        if m and m.group(2) == dialect:
            out.append(Migration(version=int(m.group(1)), name=entry.name, sql=entry.read_text("utf-8")))
    out.sort(key=lambda m: m.version)
    versions = [m.version for m in out]
    if versions != list(range(1, len(out) + 1)):
        raise RuntimeError(f"{dialect} migrations are not numbered 1..n: {versions}")
    return out


def latest(dialect: str) -> int:
    """The schema version the code expects."""
    return len(load(dialect))
