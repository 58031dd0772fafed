"""The least a process on monitor's stack can spend on an all-304 cycle (bench_start).

    python -m bench.stackfloor PORT N

Imports what ``monitor once`` cannot do without (asyncio with uvloop, aiohttp, pydantic's
``BaseModel`` for the config, PyYAML, sqlite3), then sends ``N`` conditional GETs to
``http://127.0.0.1:PORT/I.xml`` (``If-None-Match: "v1"``, 32 at a time, one session) and
checks that each answers 304. No config is read and nothing is stored: any process built
on this stack costs at least this much, so ``bench start`` reports its CPU against
reader's as the floor under ``cpu_vs_reader``.
"""

from __future__ import annotations

import sys


def main(port: int, n: int) -> None:
    import asyncio
    import sqlite3  # noqa: F401  (the store)

    import aiohttp
    import uvloop
    import yaml  # noqa: F401  (the config's and rules' files)
    from pydantic import BaseModel  # noqa: F401  (the config's validation)

    async def cycle() -> None:
        slots = asyncio.Semaphore(32)
        async with aiohttp.ClientSession() as session:
            async def one(i: int) -> None:
                async with slots, session.get(f"http://127.0.0.1:{port}/{i}.xml",
                                              headers={"If-None-Match": '"v1"'}) as resp:
                    if resp.status != 304:
                        raise SystemExit(f"feed {i}: {resp.status}, expected 304")

            await asyncio.gather(*(one(i) for i in range(n)))

    uvloop.run(cycle())


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
