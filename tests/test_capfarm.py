"""The capacity benchmark's feed farm (``bench/capfarm.py``): what its feeds say over
time, and that its server answers conditional GETs with 304 and records each request."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import feedparser

from bench.capfarm import ITEMS, MARKER, Farm, feed_url, load_headlines, read_requests

ROOT = Path(__file__).resolve().parent.parent


def test_a_fifth_of_the_feeds_gain_one_to_five_items_each_cycle() -> None:
    farm = Farm(5000, 100.0, 0.0, ["Alpha beta gamma delta", "Epsilon zeta eta theta"])
    for c in (1, 2, 3):
        gained = [farm.new_items(i, c) for i in range(5000)]
        share = sum(1 for g in gained if g) / 5000
        assert 0.18 < share < 0.22, share
        assert set(gained) == {0, 1, 2, 3, 4, 5}
    # the count at a time is the 10 first items plus what each cycle brought until then
    for i in range(200):
        assert farm.count(i, -1.0) == ITEMS
        after_two = ITEMS + farm.new_items(i, 1) + farm.new_items(i, 2)
        assert farm.count(i, 300.0) == after_two  # every phase of cycles 1, 2 is < 300
        # an item appears at its cycle's publishing point, not before
        for k in range(ITEMS, after_two):
            at = farm.item_time(i, k)
            assert farm.count(i, at - 0.01) <= k < farm.count(i, at)


def test_titles_are_mostly_distinct_and_one_in_fifty_carries_the_marker() -> None:
    headlines, _ = load_headlines()
    farm = Farm(1000, 100.0, 0.0, headlines)
    titles = [farm.title(i, k) for i in range(1000) for k in range(10)]
    assert len(set(titles)) > 0.95 * len(titles)
    marked = sum(1 for t in titles if MARKER in t.split())
    assert 0.01 < marked / len(titles) < 0.03
    assert all(MARKER not in h.lower() for h in headlines)


async def test_the_server_answers_304_to_a_conditional_get_and_records_requests(
        tmp_path: Path) -> None:
    farm = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.capfarm", "--feeds", "40", "--interval", "1000",
        "--t0", str(time.time() - 1500), "--log-dir", str(tmp_path),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        assert farm.stdout is not None
        ready = (await asyncio.wait_for(farm.stdout.readline(), 30)).decode().split()
        assert ready[0] == "READY"
        port = int(ready[1])
        url = feed_url(17, port)
        assert url.startswith("http://127.0.0.2:")  # feeds are spread over 16 addresses
        async with aiohttp.ClientSession() as s:
            async with s.get(url) as resp:
                assert resp.status == 200
                body, etag = await resp.read(), resp.headers["ETag"]
                modified = resp.headers["Last-Modified"]
            async with s.get(url, headers={"If-None-Match": etag}) as resp:
                assert resp.status == 304
            async with s.get(url, headers={"If-Modified-Since": modified}) as resp:
                assert resp.status == 304
            async with s.get(url, headers={"If-None-Match": '"17-0"'}) as resp:
                assert resp.status == 200
            async with s.get(feed_url(40, port)) as resp:
                assert resp.status == 404
        parsed = feedparser.parse(body)
        assert len(parsed.entries) == ITEMS
        assert parsed.entries[0].id.startswith("urn:cap:17:")
    finally:
        farm.terminate()
        await asyncio.wait_for(farm.wait(), 10)
    got = Counter((f, s) for _, f, s in read_requests(tmp_path))
    assert got == Counter({(17, 200): 2, (17, 304): 2})
