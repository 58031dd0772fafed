"""A fresh instance's first pass (issue #14): baselines are decided outside the dedup
rounds, the parse pool has one worker more than the cores, and the interpreter's switch
interval is short while a Runtime is open (the store's thread waits less for the lock)."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

from monitor.config import Config, load_config
from monitor.shell.daemon import SWITCH_INTERVAL, Runtime, default_parse_workers, make_pool
from monitor.shell.parsepool import Processes
from tests.clock import Clock
from tests.feeds import Item, rss
from tests.peers.feedserver import FeedServer


def _config(tmp_path: Path, feed_server: FeedServer, extra: str = "",
            fetch: str = "parse_in: thread") -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(f"""
feeds:
  - {{name: a, url: '{feed_server.url('/a')}', interval: 60s}}
  - {{name: b, url: '{feed_server.url('/b')}', interval: 60s}}
rules: rules
store: sqlite:///state.db
channels:
  out: {{type: file, path: alerts.jsonl}}
fetch: {{{fetch}}}
server: {{enabled: false}}
{extra}
""", encoding="utf-8")
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "r.yaml").write_text(
        "rules:\n  - name: volcano\n    any: [volcano]\n    channels: [out]\n", encoding="utf-8")
    return load_config(path)


def _items(feed: str, n: int, start: int = 0) -> list[Item]:
    return [Item(title=f"{feed} story number {i} about harbour cranes and tides {feed}{i}",
                 link=f"https://{feed}.example/{i}", guid=f"{feed}-{i}")
            for i in range(start, start + n)]


async def test_baselines_are_decided_at_once_and_later_polls_in_rounds(
        tmp_path: Path, feed_server: FeedServer) -> None:
    clock = Clock()
    for f in ("a", "b"):
        feed_server.serve(f"/{f}", rss(_items(f, 3), now=clock.now))
    cfg = _config(tmp_path, feed_server, "dedup: {settle: 0.2s}")
    async with Runtime(cfg, clock=clock) as rt:
        flushes = []
        flush = rt.pipeline._flush

        def counted(r: object) -> None:
            flushes.append(r)
            flush(r)  # type: ignore[arg-type]

        rt.pipeline._flush = counted  # type: ignore[method-assign]
        first = await rt.poll_all()
        assert sorted(o.result for o in first) == ["baseline", "baseline"]
        assert flushes == []  # no round: each baseline went straight to the index
        for f in ("a", "b"):
            feed_server.serve(f"/{f}", rss(_items(f, 5), now=clock.now))
        clock.advance(seconds=120)
        second = await rt.poll_all()
        assert sorted(o.result for o in second) == ["new", "new"]
        assert len(flushes) >= 1  # new stories: decided in a round, as before
    con = sqlite3.connect(tmp_path / "state.db")
    try:
        assert con.execute("SELECT count(*) FROM stories").fetchone()[0] == 10
    finally:
        con.close()


async def test_the_switch_interval_is_short_while_a_runtime_is_open(
        tmp_path: Path, feed_server: FeedServer) -> None:
    before = sys.getswitchinterval()
    assert before != SWITCH_INTERVAL
    async with Runtime(_config(tmp_path, feed_server), clock=Clock()):
        assert sys.getswitchinterval() == SWITCH_INTERVAL
    assert sys.getswitchinterval() == before


def test_the_parse_pool_has_one_worker_more_than_the_cores(
        tmp_path: Path, feed_server: FeedServer) -> None:
    assert default_parse_workers() == (os.cpu_count() or 1) + 1
    pool = make_pool(_config(tmp_path, feed_server, fetch="parse_in: process"))
    try:
        assert isinstance(pool.backend, Processes)
        assert pool.backend.size == default_parse_workers()
    finally:
        pool.shutdown()
    pool = make_pool(_config(tmp_path, feed_server,
                             fetch="parse_in: process, parse_workers: 5"))
    try:
        assert isinstance(pool.backend, Processes) and pool.backend.size == 5
    finally:
        pool.shutdown()


async def test_a_poll_asks_the_store_about_its_stories_once(
        tmp_path: Path, feed_server: FeedServer) -> None:
    """The ids and the links of a poll's entries go to the store in one round trip
    (``known_apart``), first pass and later polls alike; a link already stored under
    another id still counts as known (the story joins its cluster as a source)."""
    clock = Clock()
    for f in ("a", "b"):
        feed_server.serve(f"/{f}", rss(_items(f, 3), now=clock.now))
    async with Runtime(_config(tmp_path, feed_server), clock=clock) as rt:
        store = rt.pipeline.store
        calls: list[str] = []
        known_apart, known = store.known_apart, store.known

        async def counted_apart(ids, links):  # type: ignore[no-untyped-def]
            calls.append("known_apart")
            return await known_apart(ids, links)

        async def counted_known(ids, links):  # type: ignore[no-untyped-def]
            calls.append("known")
            return await known(ids, links)

        store.known_apart = counted_apart  # type: ignore[method-assign]
        store.known = counted_known  # type: ignore[method-assign]
        first = await rt.poll_all()
        assert sorted(o.result for o in first) == ["baseline", "baseline"]
        assert calls == ["known_apart", "known_apart"]
        calls.clear()
        # b republishes a's story 0 under a new id, with a's link, and one story of its own
        moved = Item(title="a story number 0 about harbour cranes and tides a0",
                     link="https://a.example/0", guid="b-copy-of-a0")
        feed_server.serve("/b", rss([moved, *_items("b", 4)], now=clock.now))
        clock.advance(seconds=120)
        second = {o.feed: o for o in await rt.poll_all()}
        assert calls == ["known_apart"]  # a answered as before: nothing to ask
        assert second["b"].new == 2
        clusters = {c.id: c for c in await store.list_clusters()}
        assert any(set(c.sources) == {"a", "b"} for c in clusters.values())


async def test_once_reads_the_feeds_once_and_later_rounds_read_them_again(
        tmp_path: Path, feed_server: FeedServer) -> None:
    """``monitor once`` polls the feeds as the start's sync read them (one read of every
    feed's row, not two); a later round reads the store, so it sees what the first one
    saved."""
    clock = Clock()
    for f in ("a", "b"):
        feed_server.serve(f"/{f}", rss(_items(f, 3), now=clock.now))
    reads: list[int] = []
    async with Runtime(_config(tmp_path, feed_server), clock=clock) as rt:
        assert rt.synced is not None and sorted(s.name for s in rt.synced) == ["a", "b"]
        get_feeds = rt.store.get_feeds

        async def counted():  # type: ignore[no-untyped-def]
            got = await get_feeds()
            reads.append(len(got))
            return got

        rt.store.get_feeds = counted  # type: ignore[method-assign]
        first = await rt.poll_all()
        assert sorted(o.result for o in first) == ["baseline", "baseline"]
        assert reads == [] and rt.synced is None
        clock.advance(seconds=120)
        second = await rt.poll_all()
        assert reads == [2]
        # the second round polled with the first round's validators and counts
        assert sorted(o.result for o in second) == ["not-modified", "not-modified"]
        assert {s.name: s.polls for s in await get_feeds()} == {"a": 2, "b": 2}
