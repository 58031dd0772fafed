"""``save_poll`` with growing story clusters: the cost of writing their source lists.

Each poll of a feed (one of 50,000 names) saves one new story and upserts 5 of 60
clusters, half of which gain the feed as a source, so clusters grow to a few hundred
sources, as big stories do at 50,000 feeds. A real SQLite store.

* ``save_poll``: polls/s and CPU ms per poll (the store's thread included).
* ``sources_json``: the encoding alone, per cluster saved: ``codec.strs_to_json`` of the
  whole list against ``codec.SourcesJson`` (what the stores use: the same text, only the
  new names encoded).
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from monitor.core.model import ClusterInfo, FeedState, Story
from monitor.store.base import StoredStory
from monitor.store.codec import SourcesJson, strs_to_json
from monitor.store.sqlite import SQLiteStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FEEDS = [f"feed-{i:05d}.example.org" for i in range(50_000)]


def _polls(n: int, clusters: int = 60, per: int = 5) -> list[tuple[str, list[ClusterInfo]]]:
    """Per poll: its feed and the clusters it upserts (fixed pseudo-random)."""
    rnd = random.Random(5)
    sources: dict[str, list[str]] = {f"c{i}": [] for i in range(clusters)}
    out = []
    for p in range(n):
        feed = rnd.choice(FEEDS)
        now = T0 + timedelta(seconds=p)
        cs = []
        for c in rnd.sample(list(sources), per):
            if (feed not in sources[c] and rnd.random() < 0.5) or not sources[c]:
                sources[c].append(feed)
            cs.append(ClusterInfo(id=c, first_story=c, title=c, first_seen=T0, last_seen=now,
                                  sources=tuple(sources[c])))
        out.append((feed, cs))
    return out


async def _save_poll(polls: list[tuple[str, list[ClusterInfo]]]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with SQLiteStore(Path(tmp) / "s.db") as store:
            t0, c0 = time.perf_counter(), time.process_time()
            for p, (feed, cs) in enumerate(polls):
                now = T0 + timedelta(seconds=p)
                story = Story(id=f"s{p}", feed=feed, title=f"t{p}", link=f"https://x.org/{p}",
                              published=now, first_seen=now)
                await store.save_poll(FeedState(name=feed, url="http://x", configured_url="http://x"),
                                      [StoredStory(story=story, cluster=cs[0].id)], [], cs)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    sizes = [len(c.sources) for _, cs in polls for c in cs]
    return {"polls": len(polls), "mean_sources": round(sum(sizes) / len(sizes)),
            "polls_per_s": round(len(polls) / wall),
            "cpu_ms_per_poll": round(1000 * cpu / len(polls), 3)}


def _sources_json(polls: list[tuple[str, list[ClusterInfo]]]) -> dict[str, Any]:
    saves = [(c.id, c.sources) for _, cs in polls for c in cs]
    t0 = time.process_time()
    for _, sources in saves:
        strs_to_json(sources)
    whole = time.process_time() - t0
    enc = SourcesJson()
    t0 = time.process_time()
    for cid, sources in saves:
        enc(cid, sources)
    incremental = time.process_time() - t0
    return {"saves": len(saves), "whole_us": round(1e6 * whole / len(saves), 2),
            "incremental_us": round(1e6 * incremental / len(saves), 2),
            "ratio": round(incremental / whole, 3)}


def run() -> dict[str, Any]:
    polls = _polls(6000)
    return {"save_poll": asyncio.run(_save_poll(polls)), "sources_json": _sources_json(polls)}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
