"""The start benchmark's floor (``bench/stackfloor.py``): it really sends its conditional
GETs, one per feed, and refuses a server that does not answer 304 (then its CPU would
not be an all-304 cycle's)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from tests.peers.feedserver import FeedServer

ROOT = Path(__file__).resolve().parents[1]


async def _floor(feed_server: FeedServer, n: int, etag: str) -> subprocess.CompletedProcess[str]:
    for i in range(n):
        feed_server.serve(f"/{i}.xml", b"<rss><channel/></rss>", etag=etag)
    port = urlsplit(feed_server.url("/")).port
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bench.stackfloor", str(port), str(n)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)


async def test_the_floor_asks_each_feed_once_with_its_etag(feed_server: FeedServer) -> None:
    done = await _floor(feed_server, 7, '"v1"')
    assert done.returncode == 0, done.stderr
    asked = sorted((r.path, r.headers.get("If-None-Match")) for r in feed_server.requests)
    assert asked == sorted((f"/{i}.xml", '"v1"') for i in range(7))


async def test_the_floor_refuses_a_server_that_does_not_answer_304(
        feed_server: FeedServer) -> None:
    done = await _floor(feed_server, 3, '"v2"')  # another version: 200 with the body
    assert done.returncode != 0
    assert "expected 304" in done.stderr
