"""What a config reload changes, and what it cannot change without a restart.

``diff_configs(old, new)`` compares two validated configurations (no I/O): the feeds and
channels added, removed or changed, the rules path, and the settings that differ.
``live_config(old, new)`` is the configuration a running daemon switches to: ``new``,
with the settings that only a restart can apply (``RESTART_ONLY``) kept as they run.

Applied live: feeds (``sync_feeds``), channels (``Dispatcher.update_channels``), rules
(and the rules path), ``defaults``, ``delivery``, ``digest``, ``health``, ``retention``,
``shutdown_timeout``, ``dedup.settle`` and the fetch limits read per request
(``timeout``, ``connect_timeout``, ``max_bytes``, ``max_redirects``, ``backoff_max``).

Needs a restart: the store, the server, the HTTP client's pool and identity
(``fetch.concurrency``, ``per_host``, ``user_agent``), the parse pool (``parse_in``,
``parse_workers``, ``parse_timeout``) and the dedup index (``dedup.window``,
``threshold``).

Secrets: ``${VAR}`` are resolved with the environment as it was when the daemon started
(a reload re-reads the file, not the environment).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from monitor.config import Config

#: (section, key) of the settings a running daemon cannot change; key None: all of it
RESTART_ONLY: tuple[tuple[str, str | None], ...] = (
    ("store", None),
    ("server", None),
    ("fetch", "concurrency"),
    ("fetch", "per_host"),
    ("fetch", "user_agent"),
    ("fetch", "parse_in"),
    ("fetch", "parse_workers"),
    ("fetch", "parse_timeout"),
    ("dedup", "window"),
    ("dedup", "threshold"),
)

#: top-level sections compared setting by setting (the rest: feeds, channels, rules)
SECTIONS = ("defaults", "fetch", "dedup", "delivery", "digest", "health", "server")
SCALARS = ("store", "retention", "shutdown_timeout")

NAMES_SHOWN = 10  # names a log line lists per kind of change, at most


def _restart_only(section: str, key: str | None) -> bool:
    return (section, None) in RESTART_ONLY or (section, key) in RESTART_ONLY


@dataclass(frozen=True, kw_only=True, slots=True)
class ConfigDiff:
    feeds_added: list[str] = field(default_factory=list)
    feeds_removed: list[str] = field(default_factory=list)
    feeds_changed: list[str] = field(default_factory=list)
    channels_added: list[str] = field(default_factory=list)
    channels_removed: list[str] = field(default_factory=list)
    channels_changed: list[str] = field(default_factory=list)
    rules_path: bool = False  # the rules moved (``rules:``)
    settings: list[str] = field(default_factory=list)  # applied live, "delivery.batch"
    restart: list[str] = field(default_factory=list)  # changed, but only a restart applies

    @property
    def channels_new(self) -> list[str]:
        """The channels whose notifier a reload builds."""
        return sorted(self.channels_added + self.channels_changed)

    def summary(self) -> dict[str, Any]:
        """Counts and (capped) names of what changed, for the ``config.reloaded`` line."""
        out: dict[str, Any] = {}
        for kind in ("feeds_added", "feeds_removed", "feeds_changed", "channels_added",
                     "channels_removed", "channels_changed", "settings", "restart"):
            names: list[str] = getattr(self, kind)
            if names:
                shown = names[:NAMES_SHOWN]
                more = len(names) - len(shown)
                out[kind] = len(names)
                out[f"{kind}_names"] = ", ".join(shown) + (f" (+{more} more)" if more else "")
        if self.rules_path:
            out["rules_path"] = True
        return out


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    """What differs between ``old`` and ``new`` (feeds by name, with their effective
    interval and flags; channels by name; settings by dotted name)."""
    before = {s.name: s for s in old.feed_specs()}
    after = {s.name: s for s in new.feed_specs()}
    settings: list[str] = []
    restart: list[str] = []
    for section in SECTIONS:
        a, b = getattr(old, section).model_dump(), getattr(new, section).model_dump()
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                (restart if _restart_only(section, key) else settings).append(f"{section}.{key}")
    for key in SCALARS:
        if getattr(old, key) != getattr(new, key):
            (restart if _restart_only(key, None) else settings).append(key)
    return ConfigDiff(
        feeds_added=sorted(after.keys() - before.keys()),
        feeds_removed=sorted(before.keys() - after.keys()),
        feeds_changed=sorted(n for n in after.keys() & before.keys() if after[n] != before[n]),
        channels_added=sorted(new.channels.keys() - old.channels.keys()),
        channels_removed=sorted(old.channels.keys() - new.channels.keys()),
        channels_changed=sorted(n for n in new.channels.keys() & old.channels.keys()
                                if new.channels[n] != old.channels[n]),
        rules_path=old.rules_path != new.rules_path,
        settings=settings,
        restart=restart,
    )


def live_config(old: Config, new: Config) -> Config:
    """``new`` with the settings only a restart can change kept as ``old`` runs them."""
    update: dict[str, Any] = {}
    for section, key in RESTART_ONLY:
        if key is None:
            update[section] = getattr(old, section)
    for section in ("fetch", "dedup"):
        keys = {k: getattr(getattr(old, section), k) for s, k in RESTART_ONLY
                if s == section and k is not None}
        update[section] = getattr(new, section).model_copy(update=keys)
    # the credentials of both: the store URL's (kept) and the new feeds'
    update["url_secrets"] = old.url_secrets | new.url_secrets
    return new.model_copy(update=update)
