"""``monitor migrate`` and ``monitor store copy``: the store's schema, and moving a store.

    monitor migrate [--dry-run] [--store URL]     bring the schema to this monitor's version
    monitor store copy --from URL --to URL [--force]   copy a whole store to a new database

Both take the store URL from the config unless given (``--store``; ``copy`` needs both
URLs). SQLite paths in a URL given here are relative to the working directory.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitor.errors import MonitorError
from monitor.log import redact_url
from monitor.store.copy import BATCH, CopyReport
from monitor.store.migrations import Plan


def add_parsers(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "migrate", help="bring the store's schema to this monitor's version",
        description="Prints the store's schema version, this monitor's, and each migration "
        "it applies. Every command migrates the store when it opens it; this one does it "
        "alone, before starting the instances of a new release for example. With "
        "--dry-run nothing changes: the migrations run in a transaction that is rolled "
        "back (SQLite and PostgreSQL alike), which proves they apply. Instances migrating "
        "at once take turns (an advisory lock in PostgreSQL, the write lock in SQLite). A "
        "store at a newer version than this monitor knows is refused.")
    add_common(p)
    p.add_argument("--store", metavar="URL",
                   help="the store (default: the config's store:), e.g. sqlite:///monitor.db "
                        "or postgresql://user@host/db")
    p.add_argument("--dry-run", action="store_true",
                   help="run the migrations in a transaction and roll it back")

    store = sub.add_parser("store", help="store tools").add_subparsers(
        dest="store_cmd", required=True, metavar="COMMAND")
    p = store.add_parser(
        "copy", help="copy a whole store to another database (SQLite to PostgreSQL, ...)",
        description="Copies feeds' state (baselines, validators, schedules), stories, "
        "clusters and their merges, and the outbox (every delivery with its state, "
        "attempts, next attempt, error and reference), so the target carries on where the "
        "source stopped: no feed baselined again, no alert sent twice, no pending one "
        "lost. Stop the daemon first: the copy reads one snapshot of the source, and "
        "what happens after it began is not in it. Both stores are migrated to this "
        "monitor's schema first. The target is written in one transaction, in batches; "
        "a target that holds anything is refused unless --force (which replaces its "
        "contents). Then point store: in config.yaml at the target.")
    add_common(p)
    p.add_argument("--from", dest="source", metavar="URL", required=True,
                   help="the store to copy (sqlite:///monitor.db, postgresql://...)")
    p.add_argument("--to", dest="target", metavar="URL", required=True,
                   help="the new store (created or migrated as needed)")
    p.add_argument("--force", action="store_true",
                   help="replace whatever the target holds")
    p.add_argument("--batch", type=int, default=BATCH,
                   help=f"rows per batch (default {BATCH})")


def store_url(args: argparse.Namespace, config_url: Callable[[], str]) -> str:
    return str(args.store) if getattr(args, "store", None) else config_url()


# -- migrate ----------------------------------------------------------------------------
async def cmd_migrate(url: str, args: argparse.Namespace) -> int:
    from monitor.store.open import open_store

    async with open_store(url, migrate=False) as store:
        plan = await store.migrate(dry_run=args.dry_run)
    if args.json:
        _print_json(plan_dict(plan, url))
        return 0
    print(f"store: {redact_url(url)} ({plan.dialect})")
    print(f"schema version: {plan.current or 'none (a new database)'}; "
          f"this monitor's: {plan.target}")
    if not plan.steps:
        print("up to date: nothing to apply")
    elif plan.dry_run:
        print(f"would apply {len(plan.steps)} migration(s) (dry run: each ran in a "
              f"transaction that was rolled back; nothing changed):")
    else:
        print(f"applied {len(plan.steps)} migration(s), now at version {plan.version}:")
    for m in plan.steps:
        print(f"  {m.version:>4}  {m.name}")
    return 0


def plan_dict(plan: Plan, url: str) -> dict[str, Any]:
    return {"store": redact_url(url), "dialect": plan.dialect, "current": plan.current,
            "target": plan.target, "version": plan.version, "dry_run": plan.dry_run,
            "applied": plan.applied,
            "migrations": [{"version": m.version, "name": m.name} for m in plan.steps]}


# -- store copy -------------------------------------------------------------------------
async def cmd_store_copy(args: argparse.Namespace) -> int:
    from monitor.store.copy import copy_store
    from monitor.store.open import open_store

    if args.batch < 1:
        raise MonitorError(f"--batch must be at least 1, got {args.batch}")
    if _same_store(args.source, args.target):
        raise MonitorError(f"--from and --to are the same store ({redact_url(args.source)})")
    async with open_store(args.source, migrate=False) as source, \
            open_store(args.target, migrate=False) as target:
        report = await copy_store(source, target, replace=args.force, batch=args.batch)
    if args.json:
        _print_json(copy_dict(report, args.source, args.target))
        return 0
    _print_copy(report, args.source, args.target)
    return 0


def copy_dict(report: CopyReport, source: str, target: str) -> dict[str, Any]:
    return {"from": plan_dict(report.source, source), "to": plan_dict(report.target, target),
            "rows": report.rows, "total": sum(report.rows.values()), "force": report.replace}


def _print_copy(report: CopyReport, source: str, target: str) -> None:
    for side, url, plan in (("from", source, report.source), ("to", target, report.target)):
        migrated = ("" if not plan.applied else ", created" if not plan.current
                    else f", migrated from version {plan.current}")
        print(f"{side:>4}: {redact_url(url)} (schema version {plan.version}{migrated})")
    total = sum(report.rows.values())
    print(f"copied {total} rows: " + ", ".join(f"{n} {t}" for t, n in report.rows.items()))
    print("next: point store: in config.yaml at the new store, then start monitor there")


def _same_store(a: str, b: str) -> bool:
    def key(url: str) -> str:
        if url.lower().startswith("sqlite:///"):
            path = url[len("sqlite:///"):].partition("?")[0]
            return "sqlite:" + (path if path.startswith(":") else str(Path(path).resolve()))
        return url.replace("postgres://", "postgresql://", 1)

    return key(a) == key(b)


def _print_json(obj: Any) -> None:
    from monitor.cli.main import _print_json as print_json

    print_json(obj)
