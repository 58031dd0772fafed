"""``monitor_store_queries_total{op}``: the PostgreSQL statements a store operation sends
are counted under that operation's name and shown by every daemon's ``/metrics`` (the
capacity benchmark divides them by the polls, ``bench/bench_capacity.py``)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from monitor.metrics import STORE_QUERIES, Metrics
from monitor.store.postgres import PostgresStore
from tests.test_store import PG_URL, _pg_unavailable, feed

pytestmark = pytest.mark.postgres


async def test_statements_are_counted_by_operation_and_shown_in_metrics() -> None:
    reason = await _pg_unavailable()
    if reason:
        pytest.skip(reason)
    schema = f"q_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(PG_URL, schema=schema, max_size=2)
    try:
        await store.open()
        await asyncio.sleep(0)  # the query loggers run soon after their statement
        before = STORE_QUERIES.copy()
        await store.save_feeds([feed("a"), feed("b")])
        await store.get_feeds()
        await store.get_feeds()
        await asyncio.sleep(0.05)
        got = STORE_QUERIES - before
        # two reads of one statement each (plus the pool's reset on release, if any):
        # the same count each time, so an even number under get_feeds
        assert got["get_feeds"] >= 2 and got["get_feeds"] % 2 == 0
        # one transaction writing two feeds: BEGIN, the writes, COMMIT
        assert got["save_feeds"] >= 3
        assert set(got) <= {"get_feeds", "save_feeds"}, got
        text = Metrics().render().decode()
        line = next(x for x in text.splitlines()
                    if x.startswith('monitor_store_queries_total{op="get_feeds"}'))
        assert float(line.split()[-1]) == STORE_QUERIES["get_feeds"]
    finally:
        await store.close()
        con = await asyncpg.connect(PG_URL, timeout=5)
        try:
            await con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await con.close()
