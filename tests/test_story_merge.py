"""Once per story through the real pipeline: a reworded copy from another outlet is an
update, clusters that turn out to be one story merge without a new alert, and the
clusters do not depend on which feed of a burst is heard first."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.dedup_eval import bcubed, final_cluster, to_story
from bench.real_groups import load_real_groups
from monitor.config import Config, load_config
from monitor.core.dedup.index import StoryIndex
from monitor.shell.daemon import Runtime
from tests.clock import Clock
from tests.feeds import Item, rss, seed_item
from tests.peers.feedserver import FeedServer

ROOT = Path(__file__).resolve().parent.parent
MakeConfig = Callable[..., Config]

# The wire version of the seed story, in our own words: another outlet, another headline
WIRE = Item(
    title="Witkoff heads to Moscow as Trump's sanctions deadline for Russia looms",
    link="https://wire.example/world/witkoff-moscow-deadline",
    guid="wire-20260806-1",
    description="Steve Witkoff travels to Moscow for talks with Vladimir Putin, days before "
                "Trump's Friday deadline for secondary sanctions on Russia's oil buyers.",
)


def alerts(tmp: Path) -> list[dict[str, Any]]:
    p = tmp / "alerts.jsonl"
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x] \
        if p.exists() else []


@pytest.fixture
def make_config(tmp_path: Path, feed_server: FeedServer) -> MakeConfig:
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    (tmp_path / "rules" / "volcano.yaml").write_text(
        "rules:\n  - name: volcano\n    any: [volcano, lava]\n    channels: [slack-news]\n",
        encoding="utf-8")

    def make(feeds: list[str], extra: str = "") -> Config:
        lines = "\n".join(f"  - {{name: {n}, url: '{feed_server.url('/' + n)}', interval: 60s}}"
                          for n in feeds)
        path = tmp_path / "config.yaml"
        path.write_text(f"""
feeds:
{lines}
rules: rules
store: sqlite:///state.db
channels:
  slack-news: {{type: file, path: alerts.jsonl}}
  email-oncall: {{type: file, path: email.jsonl}}
  audit-file: {{type: file, path: audit.jsonl}}
defaults: {{alert_on_first_poll: true}}
fetch: {{parse_in: thread, per_host: 4}}
server: {{enabled: false}}
{extra}
""", encoding="utf-8")
        return load_config(path)

    return make


async def test_the_wire_copy_of_the_seed_story_is_an_update(
        make_config: MakeConfig, feed_server: FeedServer, tmp_path: Path) -> None:
    clock = Clock()
    feed_server.serve("/post", rss([seed_item()], now=clock.now))
    feed_server.serve("/wire", rss([], now=clock.now))
    async with Runtime(make_config(["post", "wire"]), clock=clock) as rt:
        await rt.poll_all()
        await rt.drain()
        clock.advance(minutes=20)
        feed_server.set("/wire", rss([WIRE], now=clock.now))
        await rt.poll_all()
        await rt.drain()
    got = [a for a in alerts(tmp_path) if a["rule"] == "sanctions-deadline"]
    assert [a["update"] for a in got] == [False, True], got
    assert got[1]["sources"] == 2
    assert got[1]["cluster"] == got[0]["cluster"]


X = Item(title="Volcano erupts near Grindavik in Iceland", link="https://a.example/x",
         guid="x1")
Y = Item(title="Iceland volcano: thousands evacuated as lava fountains light up night sky "
               "over Grindavik", link="https://b.example/y", guid="y1")
Z = Item(title="Grindavik evacuated as Iceland volcano erupts and lava fountains light up sky",
         link="https://c.example/z", guid="z1")


async def _x_y_then_z(make_config: MakeConfig, feed_server: FeedServer) -> None:
    """Feeds a, b, c bring X, Y and Z in turn, five minutes apart, at a threshold that
    makes Y a near miss of X and Z the story that shows they are one."""
    clock = Clock()
    for n in ("a", "b", "c"):
        feed_server.serve(f"/{n}", rss([], now=clock.now))
    async with Runtime(make_config(["a", "b", "c"], "dedup: {threshold: 0.6}"),
                       clock=clock) as rt:
        for path, item in (("/a", X), ("/b", Y), ("/c", Z)):
            clock.advance(minutes=5)
            feed_server.set(path, rss([item], now=clock.now))
            await rt.poll_all()
            await rt.drain()


async def test_a_near_miss_merges_when_the_story_grows_and_keeps_the_first_thread(
        make_config: MakeConfig, feed_server: FeedServer, tmp_path: Path) -> None:
    """X alerts. Y, a near miss at this strict threshold, starts its own cluster (and
    alerts: the repeat a merge cannot take back). Z joins X and shows X and Y are one
    story: Y's stories and alert move to X, Z is an update in X's thread, and no new
    first alert goes out."""
    await _x_y_then_z(make_config, feed_server)
    got = [a for a in alerts(tmp_path) if a["rule"] == "volcano"]
    firsts = [a for a in got if not a["update"]]
    updates = [a for a in got if a["update"]]
    assert [a["title"] for a in firsts] == [X.title, Y.title]
    assert len(updates) == 1 and updates[0]["title"] == Z.title
    x = firsts[0]["cluster"]  # the first story's id (its guid, made absolute)
    assert x.endswith("/x1")
    assert updates[0]["cluster"] == x and updates[0]["sources"] == 3
    con = sqlite3.connect(tmp_path / "state.db")
    try:
        stories = dict(con.execute("SELECT id, cluster FROM stories").fetchall())
        assert sorted(s.rsplit("/", 1)[1] for s in stories) == ["x1", "y1", "z1"]
        assert set(stories.values()) == {x}
        assert [r[0] for r in con.execute("SELECT id FROM clusters")] == [x]
        assert sorted(json.loads(con.execute("SELECT sources FROM clusters").fetchone()[0])) \
            == ["a", "b", "c"]
        deliveries = con.execute(
            "SELECT cluster, parent_key IS NULL FROM deliveries ORDER BY id").fetchall()
        assert deliveries == [(x, 1), (x, 1), (x, 0)]
        keys = con.execute("SELECT key, parent_key FROM deliveries ORDER BY id").fetchall()
        assert keys[2][1] == keys[0][0]  # the update follows X's alert, the oldest
    finally:
        con.close()


def test_clusters_do_not_depend_on_which_feed_is_heard_first() -> None:
    """The real-feeds day, each feed's items oldest first as one poll, the feeds in six
    orders: the clusterings agree with the one in publication order (B-cubed F1 of one
    against the other) within a small margin."""
    rows = load_real_groups()
    feeds = sorted({h.publisher for h in rows})

    def cluster(order: list[str]) -> dict[str, str]:
        index = StoryIndex()
        into: dict[str, str] = {}
        labels: dict[str, str] = {}
        by_feed = {f: [h for h in rows if h.publisher == f] for f in order}
        for f in order:
            for h in by_feed[f]:
                s = to_story(h, with_link=True)
                d = index.add(s, now=s.first_seen)
                labels[h.id] = d.cluster
                into.update((gone, d.cluster) for gone in d.merged)
        return {k: final_cluster(v, into) for k, v in labels.items()}

    base = cluster(feeds)
    ids = sorted(base)
    perms = [list(p) for p in itertools.islice(itertools.permutations(feeds), 1, 4)]
    perms += [feeds[::-1], feeds[1::2] + feeds[::2], feeds[len(feeds) // 2:] + feeds[:len(feeds) // 2]]
    for order in perms:
        other = cluster(order)
        agree = bcubed([other[i] for i in ids], [base[i] for i in ids])
        assert agree["f1"] >= 0.97, (order[:3], agree)


async def test_an_update_after_a_merge_threads_under_the_alert_that_exists(
        make_config: MakeConfig, feed_server: FeedServer, tmp_path: Path) -> None:
    """X does not match the rule, so only Y (the near miss, its own cluster) alerts. When
    Z merges Y into X, Z's update must point at Y's alert, the one that exists: the
    outbox holds it back and threads it under that."""
    (tmp_path / "rules" / "volcano.yaml").write_text(
        "rules:\n  - name: volcano\n    any: [lava]\n    channels: [slack-news]\n",
        encoding="utf-8")
    await _x_y_then_z(make_config, feed_server)
    got = [a for a in alerts(tmp_path) if a["rule"] == "volcano"]
    assert [(a["title"], a["update"]) for a in got] == [(Y.title, False), (Z.title, True)]
    con = sqlite3.connect(tmp_path / "state.db")
    try:
        rows = con.execute("SELECT key, parent_key, state FROM deliveries ORDER BY id").fetchall()
    finally:
        con.close()
    assert rows[1][1] == rows[0][0] and rows[0][2] == rows[1][2] == "sent"


async def test_a_merge_whose_save_failed_is_saved_with_the_next_poll(
        make_config: MakeConfig, feed_server: FeedServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor.errors import StoreError
    from monitor.store.sqlite import SQLiteStore

    real = SQLiteStore.save_poll
    failed: list[int] = []

    async def flaky(self: SQLiteStore, *args: Any, **kw: Any) -> Any:
        merges = args[4] if len(args) > 4 else kw.get("merges", ())
        if merges and not failed:
            failed.append(1)
            raise StoreError("save_poll: database is locked")
        return await real(self, *args, **kw)

    monkeypatch.setattr(SQLiteStore, "save_poll", flaky)
    clock = Clock()
    for n in ("a", "b", "c", "d"):
        feed_server.serve(f"/{n}", rss([], now=clock.now))
    other = Item(title="Robots dance at the Chinese New Year gala in Beijing",
                 link="https://d.example/r", guid="r1")
    async with Runtime(make_config(["a", "b", "c", "d"], "dedup: {threshold: 0.6}"),
                       clock=clock) as rt:
        for path, item in (("/a", X), ("/b", Y), ("/c", Z), ("/d", other)):
            clock.advance(minutes=5)
            feed_server.set(path, rss([item], now=clock.now))
            await rt.poll_all()
            await rt.drain()
    assert failed == [1]  # the poll that merged failed to save ...
    con = sqlite3.connect(tmp_path / "state.db")
    try:
        clusters = {s.rsplit("/", 1)[1]: c.rsplit("/", 1)[1]
                    for s, c in con.execute("SELECT id, cluster FROM stories")}
    finally:
        con.close()
    # ... and the next save (feed c's retry or feed d's poll) carried the merge
    assert clusters == {"x1": "x1", "y1": "x1", "z1": "x1", "r1": "r1"}


def _drop_store(workdir: Path) -> None:
    for old in workdir.glob("state.db*"):
        old.unlink()


async def test_which_feed_answers_first_does_not_change_the_clusters(
        make_config: MakeConfig, feed_server: FeedServer, tmp_path: Path) -> None:
    """`monitor once` over the 25 real feeds of one day, twice: the feeds answer in one
    order, then in the reverse one. Their stories reach dedup within `dedup.settle` and
    are decided together in publication order, so the clusters come out the same."""
    from datetime import UTC, datetime

    rows = load_real_groups()
    feeds = sorted({h.publisher for h in rows})
    now = datetime.now(UTC)
    shift = now.timestamp() - max(h.ts for h in rows) - 600  # items over 3 days are skipped

    def items(feed: str) -> list[Item]:
        return [Item(title=h.title, link=h.url or f"https://{feed}.example/{h.id}",
                     guid=h.id, description=h.summary,
                     published=datetime.fromtimestamp(h.ts + shift, UTC))
                for h in rows if h.publisher == feed]

    runs = []
    for order in (feeds, feeds[::-1]):
        for i, f in enumerate(order):  # a later feed in the order answers later
            feed_server.slow(f"/{f}", 0.004 * i, rss(items(f)))
        _drop_store(tmp_path)
        # a settle window wide enough that a loaded machine (parsing 25 feeds in threads)
        # still brings them all to dedup within it: the test is about the order of the
        # stories in a round, not about how long parsing takes
        async with Runtime(make_config(feeds, "dedup: {settle: 5s}"),
                           clock=Clock(now=now)) as rt:
            outcomes = await rt.poll_all()
        assert {o.result for o in outcomes} == {"new"}, outcomes
        con = sqlite3.connect(tmp_path / "state.db")
        try:
            runs.append(dict(con.execute("SELECT id, cluster FROM stories")))
        finally:
            con.close()
    assert len(runs[0]) > 1000
    assert len(set(runs[0].values())) < len(runs[0]) - 30  # stories did cluster
    assert runs[0] == runs[1]


async def test_a_merge_is_saved_by_one_of_the_polls_saving_together(
        make_config: MakeConfig, feed_server: FeedServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The poll whose story merged two clusters and a poll of another feed decided in the
    same dedup round save concurrently: the merge goes with one of the two saves, not
    with both (each carried merge costs the store several statements)."""
    from monitor.store.sqlite import SQLiteStore

    real = SQLiteStore.save_poll
    carried: list[tuple[str, str]] = []
    other_saving = asyncio.Event()
    held: list[int] = []

    async def counting(self: SQLiteStore, *args: Any, **kw: Any) -> Any:
        merges = args[4] if len(args) > 4 else kw.get("merges", ())
        carried.extend(merges)
        if merges and not held:  # the first save with the merge waits for the other save
            held.append(1)
            await asyncio.wait_for(other_saving.wait(), 10)
        else:
            other_saving.set()
        return await real(self, *args, **kw)

    monkeypatch.setattr(SQLiteStore, "save_poll", counting)
    clock = Clock()
    for n in ("a", "b", "c", "d"):
        feed_server.serve(f"/{n}", rss([], now=clock.now))
    other = Item(title="Robots dance at the Chinese New Year gala in Beijing",
                 link="https://d.example/r", guid="r1")
    async with Runtime(make_config(["a", "b", "c", "d"], "dedup: {threshold: 0.6}"),
                       clock=clock) as rt:
        await rt.poll_all()
        for path, item in (("/a", X), ("/b", Y)):
            clock.advance(minutes=5)
            feed_server.set(path, rss([item], now=clock.now))
            await rt.poll_all()
        clock.advance(minutes=5)
        feed_server.set("/c", rss([Z], now=clock.now))
        feed_server.set("/d", rss([other], now=clock.now))
        polled = {o.feed: o.result for o in await rt.poll_all()}
        await rt.drain()
    assert polled == {"a": "not-modified", "b": "not-modified", "c": "new", "d": "new"}
    assert [gone.rsplit("/", 1)[1] for gone, _ in carried] == ["y1"]
    con = sqlite3.connect(tmp_path / "state.db")
    try:
        clusters = {s.rsplit("/", 1)[1]: c.rsplit("/", 1)[1]
                    for s, c in con.execute("SELECT id, cluster FROM stories")}
    finally:
        con.close()
    assert clusters == {"x1": "x1", "y1": "x1", "z1": "x1", "r1": "r1"}
