"""The rules' data: a validated rule set, as ``load.py`` builds it and ``match.py`` compiles it.

Frozen and immutable: a rule set is valid as a whole or not built at all, and a reload
replaces it whole. ``Rule.condition`` is the condition tree of ``monitor.core.rules.expr``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from monitor.core.model import Grouping
from monitor.core.rules.expr import Node
from monitor.core.rules.terms import TermSpec

DEFAULT_FIELDS: tuple[str, ...] = ("title", "summary", "content")
DEFAULT_WINDOW = 86400.0  # seconds: a rule's corroboration window when it gives none


# --- validated, immutable results ---------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ActorDef:
    """A named actor and its aliases."""

    name: str
    aliases: tuple[TermSpec, ...]
    path: str
    line: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Rule:
    """A validated rule. ``condition`` is the whole condition tree (see ``monitor.core.rules.expr``)."""

    name: str
    condition: Node
    description: str = ""
    enabled: bool = True
    expr: str | None = None
    fields: tuple[str, ...] = DEFAULT_FIELDS
    require_title: bool = False
    feeds: tuple[str, ...] = ()
    feed_tags: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    min_sources: int = 1
    window: float | None = None  # seconds; set when min_sources > 1
    severity: str = "medium"
    channels: tuple[str, ...] = ()
    cooldown: float = 0.0
    digest: str | None = None
    group: Grouping | None = None  # ``group_by`` and its timers, when the rule groups
    digest_tz: str | None = None  # IANA zone of the digest's cron line (None: UTC)
    path: str = ""
    line: int | None = None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


@dataclass(frozen=True, kw_only=True)
class RuleSet:
    """Every rule and actor of a rules directory, validated as a whole."""

    rules: tuple[Rule, ...]
    actors: Mapping[str, ActorDef]
    files: tuple[Path, ...]
    digest: Mapping[str, str]  # rule name → crontab line, for rules that collect into a digest
    fingerprint: str = ""  # sha256 of the files' names and contents: same text, same rules

    @property
    def enabled(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.enabled)

    def rule(self, name: str) -> Rule:
        for r in self.rules:
            if r.name == name:
                return r
        raise KeyError(name)
