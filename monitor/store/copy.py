"""``monitor store copy``: move a whole store to another database (SQLite to
PostgreSQL, back, or to another file) without re-baselining a feed or re-sending an alert.

Every table of the schema is copied as it is: feeds with their state (validators,
baselines, next poll, adaptive-polling facts), stories, clusters and cluster merges, and
the outbox with each delivery's id, state, attempts, next attempt, last error and
reference (so updates stay threaded under the message their first alert was). The copy
reads ONE snapshot of the source (``Store.export_rows``) in batches, and writes the
target in ONE transaction (``Store.import_rows``): a failure leaves the target as it was.

Both stores are brought to the latest schema first (as opening them does), so they have
the same tables; values are converted between the dialects by the target (times as
text in SQLite and ``timestamptz`` in PostgreSQL, booleans as integers or booleans).

A target that holds anything is refused unless ``replace`` (``--force``): copying into a
live store would mix two histories, whose keys and ids clash.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from monitor.errors import StoreError
from monitor.store.base import Rows, Store, Table
from monitor.store.migrations import Plan

#: Rows per batch: memory stays bounded whatever the size of the store.
BATCH = 1000


@dataclass(frozen=True, kw_only=True, slots=True)
class CopyReport:
    source: Plan  # the source's schema (migrated first when it was older)
    target: Plan
    rows: dict[str, int]  # rows copied per table, in the order they were written
    replace: bool  # the target was emptied first, had it held rows (--force)


#: Tables that only cache what the rest holds (the dedup index's snapshot): not copied;
#: the target builds its own on its first start.
CACHES = frozenset({"dedup_snapshot", "dedup_snapshot_parts"})


async def copy_store(source: Store, target: Store, *, replace: bool = False,
                     batch: int = BATCH) -> CopyReport:
    """Copy every row of ``source`` into ``target`` (both open). Raises ``StoreError``
    when the target is not empty (unless ``replace``) or their schemas differ."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    src_plan = await source.migrate()
    dst_plan = await target.migrate()
    src_tables = {t.name: t for t in await source.tables() if t.name not in CACHES}
    dst_tables = [t for t in await target.tables() if t.name not in CACHES]
    _same_layout(src_tables, dst_tables)
    # the source's rows, read in the target's table order (referenced tables first)
    # and column order
    wanted = [_columns_of(src_tables[t.name], t.columns) for t in dst_tables]

    async def batches() -> AsyncIterator[Rows]:
        async with contextlib.aclosing(source.export_rows(wanted, batch=batch)) as rows:
            async for item in rows:
                yield item

    rows = await target.import_rows(batches(), replace=replace)
    return CopyReport(source=src_plan, target=dst_plan, rows=rows, replace=replace)


def _same_layout(source: dict[str, Table], target: list[Table]) -> None:
    """Both stores are at the latest schema: the same tables with the same columns."""
    problems = []
    names = {t.name for t in target}
    for name in sorted(set(source) ^ names):
        problems.append(f"table {name} is only in the {'source' if name in source else 'target'}")
    for t in target:
        s = source.get(t.name)
        if s is not None and set(s.columns) != set(t.columns):
            diff = sorted(set(s.columns) ^ set(t.columns))
            problems.append(f"table {t.name} differs in columns {', '.join(diff)}")
    if problems:
        raise StoreError("store copy: the source and the target have different schemas: "
                         + "; ".join(problems))


def _columns_of(table: Table, columns: tuple[str, ...]) -> Table:
    """``table`` with its columns in the order ``columns`` (the other store's)."""
    kinds = dict(zip(table.columns, table.kinds, strict=True))
    return Table(name=table.name, columns=columns, kinds=tuple(kinds[c] for c in columns))
