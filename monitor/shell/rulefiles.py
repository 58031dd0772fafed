"""Reading the rules from disk: the files of a rules directory (or the one file given),
validated as a whole by ``monitor.core.rules.load.parse_rules``."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from monitor.core.rules.load import RuleFile, parse_rules
from monitor.core.rules.model import RuleSet
from monitor.errors import Problem, RulesError


def rule_files(path: Path) -> list[Path]:
    """The rule files of a directory (sorted), or the one file given."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file() and not p.name.startswith("."))
    return [path]


def read_rule_file(path: Path) -> RuleFile:
    try:
        return RuleFile(path=path, text=path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        return RuleFile(path=path, text=None, error=str(e))


def load_rules(
    path: Path,
    *,
    channels: Collection[str] | None,
    feeds: Collection[str] = (),
    default_channels: tuple[str, ...] = (),
    default_digest_tz: str | None = None,
) -> RuleSet:
    """Read, validate and return every rule and actor under ``path`` (a directory of
    ``.yaml``/``.yml`` files, or one file).

    Raises ``RulesError`` listing every problem (``file:line:column: message``), a file
    that cannot be read among them; the set is valid as a whole or rejected as a whole.
    ``channels=None`` skips the check of channel names (offline tools without a config).
    """
    path = Path(path)
    if not path.exists():
        raise RulesError([Problem(str(path), None, None, "rules path does not exist; create it or set rules: in the config")])
    files = [read_rule_file(p) for p in rule_files(path)]
    return parse_rules(path, files, channels=channels, feeds=feeds,
                       default_channels=default_channels, default_digest_tz=default_digest_tz)
