"""The start benchmark's floor (``bench/stackfloor.py``): it really sends its conditional
GETs, one per feed, and refuses a server that does not answer 304 (then its CPU would
not be an all-304 cycle's)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[str], dict[str, int]]]:
    seen: list[str] = []
    status = {"code": 304}

    async def feed(request: web.Request) -> web.Response:
        seen.append(f"{request.path} {request.headers.get('If-None-Match')}")
        return web.Response(status=status["code"], body=b"" if status["code"] == 304 else b"x")

    app = web.Application()
    app.router.add_get("/{n}.xml", feed)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    try:
        yield port, seen, status
    finally:
        await runner.cleanup()


async def _floor(port: int, n: int) -> subprocess.CompletedProcess[str]:
    import asyncio

    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bench.stackfloor", str(port), str(n)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)


async def test_the_floor_asks_each_feed_once_with_its_etag(
        server: tuple[int, list[str], dict[str, int]]) -> None:
    port, seen, _ = server
    done = await _floor(port, 7)
    assert done.returncode == 0, done.stderr
    assert sorted(seen) == sorted(f'/{i}.xml "v1"' for i in range(7))


async def test_the_floor_refuses_a_server_that_does_not_answer_304(
        server: tuple[int, list[str], dict[str, int]]) -> None:
    port, _, status = server
    status["code"] = 200
    done = await _floor(port, 3)
    assert done.returncode != 0
    assert "expected 304" in done.stderr
