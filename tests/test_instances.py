"""Two daemons sharing one PostgreSQL store: each feed polled by one of them at a time,
each alert delivered once. Skips when no PostgreSQL server answers."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from monitor.config import Config, load_config
from monitor.shell.daemon import Runtime
from monitor.store.postgres import PostgresStore
from tests.feeds import BACKLOG, Item, rss, seed_item
from tests.peers.feedserver import FeedServer
from tests.test_store import PG_URL, _pg_unavailable, kill_listener

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.postgres


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    reason = await _pg_unavailable()
    if reason:
        pytest.skip(reason)
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    con = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await con.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await con.close()


def shared_config(tmp_path: Path, schema: str, feeds: dict[str, str]) -> Config:
    """A config of these feeds (name → URL), the shipped rules, file channels and the
    PostgreSQL store in ``schema``: what every instance of a test runs."""
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    lines = "\n".join(f"  - {{name: {n}, url: '{u}'}}" for n, u in feeds.items())
    (tmp_path / "config.yaml").write_text(f"""
feeds:
{lines}
rules: rules
store: {PG_URL}?schema={schema}
channels:
  slack-news: {{type: file, path: alerts.jsonl}}
  email-oncall: {{type: file, path: email.jsonl}}
  audit-file: {{type: file, path: audit.jsonl}}
fetch: {{parse_in: thread}}
server: {{enabled: false}}
""", encoding="utf-8")
    return load_config(tmp_path / "config.yaml")


async def test_two_instances_share_the_work(tmp_path: Path, feed_server: FeedServer, schema: str
                                            ) -> None:
    names = [f"f{i}" for i in range(6)]
    for n in names:
        feed_server.serve(f"/{n}.rss", rss(BACKLOG))
    config = shared_config(tmp_path, schema, {n: feed_server.url(f"/{n}.rss") for n in names})
    now = datetime.now(UTC) + timedelta(minutes=1)  # every feed is due

    async def tick(rt: Runtime) -> list[str]:
        specs = {s.name: s for s in rt.config.feed_specs()}
        due = await rt.store.claim_due_feeds(now, limit=10, lease_until=now + timedelta(minutes=5))
        await asyncio.gather(*(rt.poll_one(st, specs[st.name]) for st in due))
        return [st.name for st in due]

    async with Runtime(config) as a, Runtime(config) as b:
        got_a, got_b = await asyncio.gather(tick(a), tick(b))
        assert sorted(got_a + got_b) == names  # disjoint, complete
        assert all(feed_server.hits(f"/{n}.rss") == 1 for n in names)
        # the same story breaks on every feed; both instances poll and deliver at once
        for n in names:
            feed_server.set(f"/{n}.rss", rss([seed_item(), *BACKLOG]))
        now += timedelta(minutes=10)
        await asyncio.gather(tick(a), tick(b))
        await asyncio.gather(a.drain(), b.drain())
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    firsts = [x for x in lines if not x["update"]]
    assert len(firsts) == 1 and firsts[0]["rule"] == "sanctions-deadline"


async def test_a_near_duplicate_polled_by_the_other_instance_does_not_alert_again(
    tmp_path: Path, feed_server: FeedServer, schema: str
) -> None:
    # the same story on two feeds, in other words and under other links; each feed is
    # polled by another instance: the second instance knows the first one's story
    feed_server.serve("/wire.rss", rss(BACKLOG))
    feed_server.serve("/desk.rss", rss(BACKLOG))
    feed_server.serve("/agency.rss", rss(BACKLOG[:1]))
    config = shared_config(tmp_path, schema, {
        n: feed_server.url(f"/{n}.rss") for n in ("wire", "desk", "agency")})
    specs = {s.name: s for s in config.feed_specs()}
    seed = seed_item("https://wire.example/witkoff-putin")
    reworded = Item(
        title="Trump envoy Witkoff urged to take tougher approach with Putin in "
              "make-or-break meeting before sanctions | Al Jazeera",
        link="https://desk.example/2026/witkoff-putin-meeting",
        guid="https://desk.example/2026/witkoff-putin-meeting",
        description=seed.description,
    )
    agency = Item(
        title="Trump envoy Witkoff urged to take tough approach with Putin in make-or-break "
              "meeting to end Ukraine war before sanctions - Reuters",
        link="https://agency.example/witkoff-putin", guid="https://agency.example/witkoff-putin",
        description=seed.description,
    )

    async def poll(rt: Runtime, name: str) -> Any:
        state = next(f for f in await rt.store.get_feeds() if f.name == name)
        return await rt.poll_one(state, specs[name])

    async with Runtime(config) as a, Runtime(config) as b:
        assert (await b.health())["peers"] == {"listening": True}
        assert (await poll(a, "wire")).result == "baseline"
        assert (await poll(b, "desk")).result == "baseline"
        assert (await poll(a, "agency")).result == "baseline"
        feed_server.set("/wire.rss", rss([seed, *BACKLOG]))
        first = await poll(a, "wire")
        assert [d.alert.match.rule for d in first.deliveries if not d.alert.update] == [
            "sanctions-deadline"] * 3  # slack-news, email-oncall, audit-file
        cluster = first.deliveries[0].alert.cluster
        await until_known(b, seed.link)
        assert b.pipeline.index.cluster_of(seed.link) == cluster
        feed_server.set("/desk.rss", rss([reworded, *BACKLOG]))
        second = await poll(b, "desk")
        assert second.new == 1
        # the same story: no first alert again (an update "carried by 2 sources" at most)
        assert [d for d in second.deliveries if not d.alert.update] == []
        assert all(d.alert.cluster == cluster for d in second.deliveries)
        stored = await b.store.get_story(reworded.link)
        assert stored is not None and stored.cluster == cluster
        assert cluster in b.pipeline._alerted  # b looked up the cluster's first alerts
        # a stores one more copy in that cluster: b's cached view of its alerts is dropped
        feed_server.set("/agency.rss", rss([agency, *BACKLOG[:1]]))
        await poll(a, "agency")
        await until_known(b, agency.link)
        assert b.pipeline.index.cluster_of(agency.link) == cluster
        assert cluster not in b.pipeline._alerted

        # b stops hearing (its connection is cut, and it cannot listen again yet); a
        # stores a story meanwhile; once b listens again, it reloads what it missed
        assert isinstance(b.store, PostgresStore)
        b.store.listener.backoff = 0.05
        direct, b.store._dsn = b.store._dsn, "postgresql://postgres@127.0.0.1:1/nowhere"
        assert await kill_listener(b.store) == 1
        for _ in range(500):
            if b.store.listening is False:
                break
            await asyncio.sleep(0.02)
        h = await b.health()
        assert h["peers"] == {"listening": False} and h["status"] == "degraded"
        late = seed_item("https://wire.example/late")
        feed_server.set("/wire.rss", rss([late, seed, *BACKLOG]))
        await poll(a, "wire")
        assert b.pipeline.index.cluster_of(late.link) is None
        b.store._dsn = direct  # reachable again
        await until_known(b, late.link)
        assert (await b.health())["peers"] == {"listening": True}
        # heard: the agency copy. b's index was loaded (by the first until_known: a poll
        # of b had brought nothing new before) when the wire's backlog and the seed were
        # stored already; late came by the reload after the gap
        assert b.metrics.peer_stories._value.get() == 1


async def until_known(rt: Runtime, story_id: str) -> None:
    # the index is loaded when a poll first brings a new story; here we look into it
    # before (loaded now, it holds what is stored, then hears the rest)
    await rt.dedup.ready()
    for _ in range(500):  # another instance's commit reaches rt within milliseconds
        if rt.pipeline.index.cluster_of(story_id) is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{story_id} never reached the other instance's index")
