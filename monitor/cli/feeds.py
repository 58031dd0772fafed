"""``monitor feeds [--json]``: every configured feed's health, from the store.

One row per feed: its state (``new``, ``ok``, ``failing``, ``silent``, ``gone``: see
``monitor.core.feedhealth``), its last successful poll, its next poll, its usual time
between new stories (cadence), its last new story, and its problem: the last error of a
failing feed, else the last parse warning (broken XML recovered, entity declarations,
GUID churn). Problems are shown redacted, never with a credential. Reads the store only:
the channels' secrets are not needed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from monitor.config import Config
from monitor.core.feedhealth import cadence, condition, duration_words, silent_after
from monitor.core.model import FeedState
from monitor.log import scrub


def add_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "feeds", help="every feed's health: state, last success, next poll, cadence, problem",
        description="Every configured feed: state (new, ok, failing, silent, gone), last "
        "successful poll, next poll, usual time between new stories, last new story, and "
        "its problem (last error, or parse warning). Reads the store only.")
    add_common(p)


def feed_rows(config: Config, feeds: list[FeedState], now: datetime) -> list[dict[str, Any]]:
    """One dict per configured feed (then any stored feed no longer configured), in
    config order: what both the table and ``--json`` show."""
    from monitor.shell.ops import health_settings, shown_error

    settings = health_settings(config)
    stored = {f.name: f for f in feeds}
    names = [f.name for f in config.feeds] + sorted(set(stored) - {f.name for f in config.feeds})
    rows: list[dict[str, Any]] = []
    for name in names:
        st = stored.get(name)
        if st is None:  # configured, not seen by a daemon yet
            rows.append({"name": name, "state": "new", "last_success": None, "next_poll": None,
                         "cadence_s": None, "last_new_story": None, "failures": 0,
                         "failing_since": None, "problem": None, "silent_after_s": None,
                         "configured": True})
            continue
        problem = shown_error(config, st) if st.failures or st.gone else None
        if not problem and st.problem:
            problem = config.redact(scrub(st.problem))
        rows.append({
            "name": name,
            "state": condition(st, settings, now=now),
            "last_success": st.last_success,
            "next_poll": None if st.gone else st.next_poll,
            "cadence_s": cadence(st.story_times),
            "last_new_story": st.last_new_story,
            "failures": st.failures,
            "failing_since": st.failing_since,
            "problem": problem or None,
            "silent_after_s": silent_after(st, settings),
            "configured": name in {f.name for f in config.feeds},
        })
    return rows


def _t(d: datetime | None, now: datetime) -> str:
    if d is None:
        return "-"
    ago = (now - d).total_seconds()
    rel = f"{duration_words(abs(ago))} {'ago' if ago >= 0 else 'from now'}"
    return f"{d:%Y-%m-%d %H:%M} ({rel})"


def print_feeds(rows: list[dict[str, Any]], now: datetime) -> None:
    head = ("FEED", "STATE", "LAST SUCCESS", "NEXT POLL", "CADENCE", "LAST NEW STORY",
            "PROBLEM")
    table = [head] + [(
        r["name"] + ("" if r["configured"] else " (not configured)"),
        r["state"] + (f"×{r['failures']}" if r["state"] == "failing" else ""),
        _t(r["last_success"], now), _t(r["next_poll"], now),
        duration_words(r["cadence_s"]), _t(r["last_new_story"], now),
        r["problem"] or "",
    ) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    by_state: dict[str, int] = {}
    for r in rows:
        by_state[r["state"]] = by_state.get(r["state"], 0) + 1
    print(f"{len(rows)} feed{'' if len(rows) == 1 else 's'}: "
          + ", ".join(f"{n} {s}" for s, n in sorted(by_state.items())))


async def cmd_feeds(config: Config, as_json: bool) -> int:
    from monitor.cli.main import _print_json
    from monitor.store.open import open_store

    now = datetime.now(UTC)
    async with open_store(config.store_url) as store:
        feeds = await store.get_feeds()
    rows = feed_rows(config, feeds, now)
    if as_json:
        _print_json({"time": now, "feeds": rows})
    else:
        print_feeds(rows, now)
    return 0
