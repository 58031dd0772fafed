"""``monitor store copy``: a whole store moved between SQLite and PostgreSQL (every
direction), mid-life, so that the copy carries on: nothing re-baselined, nothing sent
twice, no pending delivery lost. The end-to-end test runs ``monitor once`` before and
after a copy, against the local feed server and file channels."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from monitor.core.model import FeedState
from monitor.errors import StoreError
from monitor.store.base import Rows, Store
from monitor.store.copy import copy_store
from tests.feeds import BACKLOG, UNRELATED, Item, rss, seed_item
from tests.peers.feedserver import FeedServer
from tests.test_cli import monitor, workdir
from tests.test_migrations import LATEST, Db, check_the_store_in_use, rows_of_a_store_in_use
from tests.test_store import PG_URL, _pg_unavailable

__all__ = ["workdir"]  # the fixture, shared with test_cli

DIALECTS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture
async def dbs(tmp_path: Path) -> AsyncIterator[Any]:
    """``make(dialect)``: a new empty database (a file, or a PostgreSQL schema)."""
    made: list[Db] = []

    async def make(dialect: str) -> Db:
        if dialect == "postgres" and (reason := await _pg_unavailable()):
            pytest.skip(reason)
        d = Db(dialect, tmp_path / f"db{len(made)}")
        (tmp_path / f"db{len(made)}").mkdir()
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in made:
            await d.drop()


async def a_store_in_use(db: Db) -> dict[str, set[str]]:
    await db.apply(LATEST)
    return await db.insert(rows_of_a_store_in_use())


async def dump(store: Store) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, sorted, with the values as SQLite holds them."""
    from monitor.store.sqlite import _to_sqlite

    out: dict[str, list[tuple[object, ...]]] = {}
    tables = await store.tables()
    async for t, rows in store.export_rows(tables, batch=1000):
        out.setdefault(t.name, []).extend(tuple(_to_sqlite(v) for v in r) for r in rows)
    return {name: sorted(rows, key=repr) for name, rows in out.items()}


@pytest.mark.parametrize("src", DIALECTS)
@pytest.mark.parametrize("dst", DIALECTS)
async def test_a_copy_carries_on_where_the_source_stopped(dbs: Any, src: str, dst: str) -> None:
    source, target = await dbs(src), await dbs(dst)
    have = await a_store_in_use(source)
    async with source.store() as s, target.store() as t:
        report = await copy_store(s, t, batch=2)  # several batches per table
        assert report.rows == {"cluster_merges": 1, "clusters": 2, "deliveries": 5, "feeds": 2,
                               "stories": 3} | {k: 0 for k in report.rows if k not in (
                                   "cluster_merges", "clusters", "deliveries", "feeds", "stories")}
        assert (report.source.version, report.target.version) == (LATEST, LATEST)
        assert await dump(t) == await dump(s)
    async with target.store() as t:
        await check_the_store_in_use(t, have)


@pytest.mark.postgres
async def test_sqlite_to_postgres_and_back_keeps_every_value(dbs: Any) -> None:
    first, pg, back = await dbs("sqlite"), await dbs("postgres"), await dbs("sqlite")
    await a_store_in_use(first)
    # times with microseconds, booleans, REAL seconds, JSON payloads with non-ASCII text
    async with first.store() as a, pg.store() as b, back.store() as c:
        await copy_store(a, b)
        await copy_store(b, c)

    def rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
        con = sqlite3.connect(path)
        try:
            names = [r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            return {n: con.execute(f'SELECT * FROM "{n}" ORDER BY rowid').fetchall()
                    for n in names}
        finally:
            con.close()

    assert rows(back.path) == rows(first.path)


@pytest.mark.parametrize("dst", DIALECTS)
async def test_a_target_that_holds_anything_is_refused_unless_forced(dbs: Any, dst: str) -> None:
    source, target = await dbs("sqlite"), await dbs(dst)
    await a_store_in_use(source)
    async with target.store() as t:
        await t.save_feed(FeedState(name="other", url="u", configured_url="u"))
    async with source.store() as s, target.store() as t:
        with pytest.raises(StoreError, match=r"is not empty \(1 in feeds\).*--force"):
            await copy_store(s, t)
        assert [f.name for f in await t.get_feeds()] == ["other"]  # untouched
        await copy_store(s, t, replace=True)
        assert [f.name for f in await t.get_feeds()] == ["a", "b"]
        assert await dump(t) == await dump(s)


@pytest.mark.parametrize("dst", DIALECTS)
async def test_a_copy_that_fails_half_way_leaves_the_target_as_it_was(dbs: Any, dst: str) -> None:
    source, target = await dbs("sqlite"), await dbs(dst)
    await a_store_in_use(source)
    async with source.store() as s, target.store() as t:
        tables = await t.tables()

        async def broken() -> AsyncIterator[Rows]:
            n = 0
            async for item in s.export_rows(tables, batch=1):
                yield item
                n += 1
                if n == 4:
                    raise StoreError("the source went away")

        with pytest.raises(StoreError, match=r"^the source went away$"):
            await t.import_rows(broken())
        assert all(not rows for rows in (await dump(t)).values())
        await copy_store(s, t)  # and the target is usable for a copy that works
        assert await dump(t) == await dump(s)


async def test_copy_refuses_the_same_store_and_needs_both_urls(tmp_path: Path) -> None:
    rc, _, err = await monitor("store", "copy", "--from", "sqlite:///m.db", "--to",
                               f"sqlite:///{tmp_path / 'm.db'}", cwd=tmp_path)
    assert rc == 1 and "--from and --to are the same store" in err
    rc, _, err = await monitor("store", "copy", "--from", "sqlite:///m.db", cwd=tmp_path)
    assert rc == 2 and "--to" in err


# -- end to end: monitor once, copy, monitor once on the copy ------------------------------


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.postgres
async def test_moving_a_store_in_use_to_postgres_alerts_nothing_twice_and_loses_nothing(
    workdir: Path, feed_server: FeedServer
) -> None:
    if reason := await _pg_unavailable():
        pytest.skip(reason)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    pg_url = f"{PG_URL}?schema={schema}"
    config = workdir / "config.yaml"
    text = config.read_text()
    # slack-news cannot write (its directory is a file): its alerts wait in the outbox
    (workdir / "blocked").write_text("a file where a directory should be")
    text = text.replace("slack-news: {type: file, path: slack.jsonl}",
                        "slack-news: {type: file, path: blocked/slack.jsonl}")
    text = text.replace("fetch: {parse_in: thread}",
                        "fetch: {parse_in: thread}\ndelivery: {retry_min: 1s, retry_max: 1s}")
    config.write_text(text)
    (workdir / "rules" / "robots.yaml").write_text(
        "rules:\n  - name: robots\n    any: [robot]\n    channels: [audit-file]\n")
    robot = Item(title="Robot vacuum maker files for bankruptcy", link="https://x.example/robot")
    feed_server.set("/a.rss", rss([seed_item(), UNRELATED, robot, *BACKLOG]))
    try:
        rc, out, err = await monitor("once", "--json", cwd=workdir)
        assert rc == 0, err
        before = json.loads(out)["deliveries"]
        assert before["sent"] >= 2 and before["failed"] == 0, before
        audit = _lines(workdir / "audit.jsonl")
        email = _lines(workdir / "email.jsonl")
        assert {a["rule"] for a in audit} == {"sanctions-deadline", "robots"}
        rc, out, _ = await monitor("alerts", "--json", cwd=workdir)
        waiting = [d for d in json.loads(out)["deliveries"] if d["channel"] == "slack-news"]
        assert [(d["rule"], d["attempts"]) for d in waiting] == [("sanctions-deadline", 1)]
        assert waiting[0]["state"] in ("held", "pending")  # a retry, due after retry_min
        rc, out, _ = await monitor("status", "--json", cwd=workdir)
        feeds_before = {f["name"]: f for f in json.loads(out)["feeds"]}

        rc, out, err = await monitor("store", "copy", "--from", "sqlite:///monitor.db",
                                     "--to", pg_url, "--json", cwd=workdir)
        assert rc == 0, err
        copied = json.loads(out)
        con = sqlite3.connect(workdir / "monitor.db")
        try:
            assert copied["rows"] == {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                                      for t in copied["rows"]}
        finally:
            con.close()
        assert copied["rows"]["feeds"] == 2 and copied["rows"]["stories"] == 6, copied
        assert copied["to"]["dialect"] == "postgres" and copied["to"]["version"] == LATEST
        # a second copy into the same target is refused: it is not empty any more
        rc, _, err = await monitor("store", "copy", "--from", "sqlite:///monitor.db",
                                   "--to", pg_url, cwd=workdir)
        assert rc == 1 and "is not empty" in err and "--force" in err

        # move: the config now points at PostgreSQL; the SQLite file goes away
        config.write_text(f"store: '{pg_url}'\n" + config.read_text())
        (workdir / "monitor.db").rename(workdir / "old.db")
        rc, out, _ = await monitor("status", "--json", cwd=workdir)
        feeds_after = {f["name"]: f for f in json.loads(out)["feeds"]}
        assert feeds_after == feeds_before  # validators, schedules, counts came along
        # slack-news can write again; its retry is due after retry_min (1 s)
        (workdir / "blocked").unlink()
        await asyncio.sleep(1.2)
        feed_server.set("/a.rss", rss([seed_item(), UNRELATED, robot, *BACKLOG]))
        for _ in range(2):
            rc, out, err = await monitor("once", "--json", cwd=workdir)
            assert rc == 0, err
            feeds = {f["feed"]: f for f in json.loads(out)["feeds"]}
            assert feeds["a"]["new"] == 0  # nothing taken for new, nothing re-baselined
        assert _lines(workdir / "audit.jsonl") == audit  # no alert sent twice
        assert _lines(workdir / "email.jsonl") == email
        slack = _lines(workdir / "blocked" / "slack.jsonl")
        assert [a["rule"] for a in slack] == ["sanctions-deadline"]  # delivered, once
        rc, out, _ = await monitor("alerts", "--json", cwd=workdir)
        states = [d["state"] for d in json.loads(out)["deliveries"]]
        assert states and set(states) == {"sent"}

        # a new story on the copy is alerted once, as usual
        robot2 = Item(title="Robot lawnmower recall announced", link="https://x.example/robot2")
        feed_server.set("/a.rss", rss([robot2, seed_item(), UNRELATED, robot, *BACKLOG]))
        rc, out, err = await monitor("once", "--json", cwd=workdir)
        assert rc == 0, err
        assert [a["title"] for a in _lines(workdir / "audit.jsonl")[len(audit):]] == [robot2.title]
    finally:
        con = await asyncpg.connect(PG_URL, timeout=5)
        try:
            await con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await con.close()


@pytest.mark.parametrize("dst", DIALECTS)
async def test_the_dedup_snapshot_cache_is_not_copied(dbs: Any, dst: str) -> None:
    """A source that saved a dedup snapshot (a cache outside the schema) still copies:
    the target has none, and builds its own at its first start."""
    from datetime import UTC, datetime

    from monitor.store.base import DedupSnapshot

    source, target = await dbs("sqlite"), await dbs(dst)
    await a_store_in_use(source)
    async with source.store() as s:
        await s.save_dedup_snapshot(DedupSnapshot(key="k", taken=datetime.now(UTC), stories=1,
                                                  data=b"x"))
    async with source.store() as s, target.store() as t:
        report = await copy_store(s, t)
        assert "dedup_snapshot" not in report.rows and report.rows["stories"] == 3
        assert await t.load_dedup_snapshot("k") is None
