"""The dedup snapshot's pause (issue #14): how long the event loop stands still while
``monitor run`` saves its dedup index, taken on the loop or in a forked child.

    python -m bench snapshot                              # 100,000 stories (make bench)
    BENCH_SNAPSHOT_STORIES=300000 python -m bench snapshot

An index of that many stories (headlines from the shared corpora run together, as
``bench_start`` builds them; 48 h of first-seen times) is saved into a SQLite store
twice by ``DedupState.save``: once on the loop (``fork_above=None``), once in a forked
child (``fork_above=1``), in turns ``RUNS`` times. Meanwhile a task on the loop wakes
every 5 ms: ``max_stall_ms`` is the longest it waited beyond that (the loop blocked),
``wall_ms`` the whole save (the child, reading its bytes, the store's write), and
``ratio`` forked ÷ on the loop of the median stalls. Beside it, a task asks the store
for a feed over and over: ``max_store_wait_ms`` is the longest one of those calls took,
which is how long a poll's store call can wait behind the snapshot's write (SQLite
writes a big snapshot in parts of ``SNAPSHOT_PART``, 4 MB, one transaction each; with
``BENCH_SNAPSHOT_PART=0`` in one, as before).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.bench_start import synthetic_titles
from monitor.core.dedup.features import DedupSettings
from monitor.core.model import Story
from monitor.shell.dedupstate import DedupState
from monitor.store import sqlite as sqlite_store
from monitor.store.sqlite import SQLiteStore

N = int(os.environ.get("BENCH_SNAPSHOT_STORIES", "100000"))
RUNS = int(os.environ.get("BENCH_SNAPSHOT_RUNS", "3"))
TICK = 0.005


async def _save(st: DedupState, fork_above: int | None) -> dict[str, float]:
    st.fork_above = fork_above
    stall = 0.0
    wait = 0.0
    going = True

    async def asker() -> None:
        nonlocal wait
        while going:
            t = time.perf_counter()
            await st.store.get_feed("nobody")
            wait = max(wait, time.perf_counter() - t)
            await asyncio.sleep(TICK)

    async def ticker() -> None:
        nonlocal stall
        loop = asyncio.get_running_loop()
        while going:
            t = loop.time()
            await asyncio.sleep(TICK)
            stall = max(stall, loop.time() - t - TICK)

    tasks = [asyncio.ensure_future(ticker()), asyncio.ensure_future(asker())]
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    assert await st.save(force=True)
    wall = time.perf_counter() - t0
    going = False
    await asyncio.gather(*tasks)
    return {"max_stall_ms": round(stall * 1000, 1), "max_store_wait_ms": round(wait * 1000, 1),
            "wall_ms": round(wall * 1000, 1)}


async def _main(tmp: Path) -> dict[str, Any]:
    now = datetime.now(UTC)
    start = now - timedelta(hours=44)
    step = timedelta(hours=44) / N
    store = SQLiteStore(tmp / "snap.db")
    async with store:
        st = DedupState(store, DedupSettings(), window=48 * 3600.0, clock=lambda: now)
        t0 = time.perf_counter()
        st.index.restore(
            (Story(id=f"urn:b:{i}", feed=f"feed{i % 400}", title=title,
                   link=f"https://{i % 400}.example/{i}", summary="",
                   published=start + i * step, first_seen=start + i * step), f"urn:b:{i}")
            for i, title in enumerate(synthetic_titles(N)))
        built = time.perf_counter() - t0
        loaded = asyncio.get_running_loop().create_future()
        loaded.set_result(None)
        st._loading = loaded  # filled by hand: nothing to read from the store
        rows: dict[str, list[dict[str, float]]] = {"on_loop": [], "forked": []}
        for _ in range(RUNS):
            rows["on_loop"].append(await _save(st, None))
            rows["forked"].append(await _save(st, 1))
    med = {k: {f: statistics.median(r[f] for r in v)
               for f in ("max_stall_ms", "max_store_wait_ms", "wall_ms")}
           for k, v in rows.items()}
    return {
        "stories": N, "runs": RUNS, "snapshot_part": sqlite_store.SNAPSHOT_PART, "index_build_s": round(built, 1),
        "snapshot_bytes": len(st.index.snapshot()),
        "median": med, "all": rows,
        "stall_ratio_forked_vs_loop": round(
            med["forked"]["max_stall_ms"] / max(med["on_loop"]["max_stall_ms"], 0.1), 3),
    }


def run() -> dict[str, Any]:
    if "BENCH_SNAPSHOT_PART" in os.environ:
        sqlite_store.SNAPSHOT_PART = int(os.environ["BENCH_SNAPSHOT_PART"]) or 2**62
    if not hasattr(os, "fork"):
        return {"skipped": "no os.fork on this platform: snapshots are taken on the loop"}
    with tempfile.TemporaryDirectory() as d:
        return asyncio.run(_main(Path(d)))


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
