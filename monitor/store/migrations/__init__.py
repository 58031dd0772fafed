"""Forward-only schema migrations, one SQL file per version and dialect.

``NNNN_name.<dialect>.sql`` (dialect ``sqlite`` or ``postgres``); version ``NNNN`` is
applied when the database's version is lower, in one transaction with the version bump.
Never edit a released file: add the next one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.(sqlite|postgres)\.sql$")


@dataclass(frozen=True, kw_only=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


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
