"""Start cost (issue #14): ``monitor once`` on stores of 10k and 100k stories.

    python -m bench start                          # both sizes (part of `make bench`)
    BENCH_START_SIZES=10000 python -m bench start  # one size
    BENCH_START_RUNS=3 python -m bench start       # runs per figure (default 5)

A store is built per size (SQLite, synthetic but realistic headlines: real ones from the
shared corpora, pieces of three run together so that they rarely repeat, clustered by
the real dedup index), every story first seen within the dedup window (48 h): the worst
case for a rebuild, which covers the window. Feeds are served by a local server in
another process that answers ``304 Not Modified`` to a known ETag.

Measured from outside the process (the median of ``RUNS`` runs; bytecode cached, as
installed):

* ``start_to_first_poll_s``: from spawning ``monitor once`` to the first request the feed
  server sees (imports, config, rules, store, feed sync);
* ``wall_s`` and ``cpu_s`` (user + sys of the whole process and its parse workers, from
  ``getrusage(RUSAGE_CHILDREN)``) of a cycle in which every feed answers 304, with 100
  and with 1,000 feeds;
* ``one_new_story``: the 100 feeds and one more with a new story at every poll, so the
  dedup index is loaded (from its snapshot, plus the stories saved since); and
  ``one_new_story_no_snapshot``: the same with the snapshot deleted before each run (a
  first start after an upgrade or a settings change: rebuilt from the window, and the
  snapshot saved at the end).

Beside it, lemon24/reader's ``reader update --no-scheduled`` over the same feeds all
answering 304, served by the same server, its runs taken in turn with monitor's (one
monitor run, one reader run, ...) so that a change in the machine's load touches both:
``cpu_vs_reader`` is the ratio of the medians, and ``targets`` says for each store size
and feed count whether issue #14's 0.33× is met. reader runs when a Python with
``reader``, ``click`` and ``sgmllib3k`` is found: ``$BENCH_READER_PYTHON``, else
``/tmp/readervenv/bin/python``; else that part is skipped with the reason.

``stack_floor`` (``bench/stackfloor.py``, in the same turns): a process that only
imports monitor's stack (asyncio with uvloop, aiohttp, pydantic, PyYAML, sqlite3) and
sends the same conditional GETs with plain aiohttp; its ``cpu_vs_reader`` is the least
any code on this stack could reach, and ``targets`` says whether the 0.33× is within it
(``reachable_on_this_stack``).

``BENCH_START_BASE=DIR`` also runs the ``monitor`` package of another checkout (``git
worktree add DIR REV``, or ``git archive REV | tar -x -C DIR``) on a copy of each store,
in the same turns (``before``): a before/after in one run, on one machine's load.
"""

from __future__ import annotations

import asyncio
import csv
import multiprocessing as mp
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT.parent / "shared" / "corpora"
SIZES = (10_000, 100_000)
N_FEEDS = 100  # configured feeds, all answering 304
BIG_FEEDS = 1000  # and again with as many
#: the configured feed counts measured (``BENCH_START_FEEDS=100,1000,5000`` for more)
FEED_COUNTS = tuple(int(x) for x in os.environ.get(
    "BENCH_START_FEEDS", f"{N_FEEDS},{BIG_FEEDS}").split(",") if x)
STORE_FEEDS = 400  # feeds the stored stories came from
RUNS = int(os.environ.get("BENCH_START_RUNS", "5"))
TARGET = 0.33  # issue #14: an all-304 cycle at most 0.33x reader's CPU, whole process
WINDOW_H = 44  # stories first seen over the last 44 h (the window is 48 h)


def _titles() -> list[str]:
    titles: list[str] = []
    with (CORPORA / "uci-news-aggregator" / "headlines.csv").open(encoding="utf-8") as f:
        titles += [row["TITLE"] for row in csv.DictReader(f)]
    with (CORPORA / "stsb-headlines" / "headline_pairs.tsv").open(encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 6 and parts[0] != "split":
                titles += parts[4:6]
    return [t for t in dict.fromkeys(titles) if len(t.split()) >= 4]


def synthetic_titles(n: int, seed: int = 14) -> Iterator[str]:
    """``n`` headlines: a real one as it is (a fifth), or pieces of three real headlines
    run together (new combinations of real news vocabulary: most start a story of
    their own, some join one)."""
    real = _titles()
    rnd = random.Random(seed)
    for _ in range(n):
        a = rnd.choice(real).split()
        if rnd.random() < 0.2:
            yield " ".join(a)
            continue
        b, c = rnd.choice(real).split(), rnd.choice(real).split()
        i = rnd.randrange(2, max(3, len(a) // 2 + 1))
        j = rnd.randrange(0, max(1, len(b) - 2))
        k = rnd.randrange(1, max(2, len(c) - 1))
        yield " ".join(a[:i] + b[j:j + 2] + c[k:])


def build_store(path: Path, n: int, now: datetime) -> dict[str, Any]:
    """A SQLite store at ``path`` with ``n`` stories first seen over the last
    ``WINDOW_H`` hours, clustered by the dedup index as the daemon would, saved a poll
    at a time (about 10 stories per save)."""
    from monitor.core.dedup.features import DedupSettings
    from monitor.core.dedup.index import StoryIndex
    from monitor.core.model import FeedState, Story
    from monitor.store.base import StoredStory
    from monitor.store.sqlite import SQLiteStore

    rnd = random.Random(n)
    t0 = now - timedelta(hours=WINDOW_H)
    step = WINDOW_H * 3600.0 / n
    index = StoryIndex(DedupSettings())
    batches: list[tuple[str, list[StoredStory]]] = []
    batch: list[StoredStory] = []
    feed = "src0"
    for i, title in enumerate(synthetic_titles(n)):
        seen = t0 + timedelta(seconds=i * step)
        if len(batch) >= 10:
            batches.append((feed, batch))
            batch, feed = [], f"src{rnd.randrange(STORE_FEEDS)}"
        story = Story(id=f"https://news.example.com/{feed}/{i}", feed=feed, title=title,
                      link=f"https://news.example.com/{feed}/{i}.html",
                      summary="", published=seen - timedelta(minutes=rnd.randrange(90)),
                      first_seen=seen)
        cluster = index.add(story, now=seen).cluster
        batch.append(StoredStory(story=story, cluster=cluster))
    batches.append((feed, batch))

    async def save() -> None:
        async with SQLiteStore(path) as store:
            for feed, stories in batches:
                await store.save_poll(FeedState(name=feed, url="", configured_url=""),
                                      stories, [])
            for f in range(STORE_FEEDS):  # not configured: the next start forgets them
                await store.delete_feed(f"src{f}")

    asyncio.run(save())
    return {"stories": n, "clusters_open": index.clusters}


def _serve(conn: Any, n_feeds: int) -> None:
    """Feed server process: ``/N.xml`` answers 304 to ``If-None-Match: "v1"``, else a
    20-item feed with that ETag. "stats" answers (requests, first request epoch) and
    resets them; "stop" stops it."""
    from aiohttp import web

    stats: dict[str, Any] = {"n": 0, "first": None}

    def body(i: int) -> bytes:
        items = "".join(
            f"<item><title>Feed {i} item {k} about something</title>"
            f"<link>http://example.com/{i}/{k}</link><guid>f{i}-{k}</guid></item>"
            for k in range(20))
        return (f"<?xml version='1.0'?><rss version='2.0'><channel><title>f{i}</title>"
                f"<link>http://example.com/</link>{items}</channel></rss>").encode()

    async def feed(request: web.Request) -> web.Response:
        if stats["first"] is None:
            stats["first"] = time.time()
        stats["n"] += 1
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={"ETag": '"v1"'})
        return web.Response(body=body(int(request.match_info["n"])), headers={"ETag": '"v1"'},
                            content_type="application/rss+xml")

    fresh = [0]

    async def new(request: web.Request) -> web.Response:
        """Always 200, with an item never served before on top of the usual ones."""
        if stats["first"] is None:
            stats["first"] = time.time()
        stats["n"] += 1
        fresh[0] += 1
        k = fresh[0]
        item = (f"<item><title>Fresh report {k}: storm closes airport in city {k}</title>"
                f"<link>http://example.com/new/{k}</link><guid>new-{k}</guid></item>")
        return web.Response(body=body(0).replace(b"<item>", item.encode() + b"<item>", 1),
                            content_type="application/rss+xml")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/new/{n}.xml", new)
        app.router.add_get("/{n}.xml", feed)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        conn.send(next(a[1] for a in runner.addresses if isinstance(a, tuple)))
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, conn.recv) != "stop":
            conn.send((stats["n"], stats["first"]))
            stats["n"], stats["first"] = 0, None
        await runner.cleanup()

    asyncio.run(main())


def write_config(dir_: Path, port: int, *, feeds_n: int = N_FEEDS, fresh: bool = False,
                 name: str = "config.yaml") -> Path:
    """``feeds_n`` feeds answering 304 once baselined; ``fresh``: and one more that has
    a new story at every poll (then the dedup index is needed)."""
    feeds = "\n".join(f"  - {{name: f{i}, url: 'http://127.0.0.1:{port}/{i}.xml'}}"
                      for i in range(feeds_n))
    if fresh:
        feeds += f"\n  - {{name: fresh, url: 'http://127.0.0.1:{port}/new/0.xml'}}"
    (dir_ / "rules").mkdir(exist_ok=True)
    (dir_ / "rules" / "news.yaml").write_text(
        "rules:\n  - name: quake\n    any: [earthquake, tsunami]\n"
        "    channels: [audit-file]\n", encoding="utf-8")
    cfg = dir_ / name
    cfg.write_text(f"""
feeds:
{feeds}
rules: rules
store: sqlite:///state.db
channels:
  audit-file: {{type: file, path: alerts.jsonl}}
fetch: {{concurrency: 32, per_host: 32}}
server: {{enabled: false}}
""", encoding="utf-8")
    return cfg


def _timed(cmd: list[str], cwd: Path, conn: Any, env: dict[str, str] | None = None
           ) -> dict[str, float]:
    """Run ``cmd``; its wall and CPU time (user + sys, children included) and the time
    from spawning it to the feed server's first request."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    spawned = time.time()
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, env=env or _ENV)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    conn.send("stats")
    requests, first = conn.recv()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "requests": requests}
    if first is not None:
        out["start_to_first_poll_s"] = round(first - spawned, 3)
    return out


# as installed: bytecode cached (this environment may say PYTHONDONTWRITEBYTECODE)
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}


def _monitor_once(dir_: Path, cfg: Path, conn: Any, *, drop_snapshot: bool = False
                  ) -> dict[str, float]:
    cmd = [sys.executable, "-m", "monitor", "-c", str(cfg), "--log-level", "warning", "once"]
    runs = []
    for _ in range(RUNS):
        if drop_snapshot:
            _drop_snapshot(dir_ / "state.db")
        runs.append(_timed(cmd, dir_, conn))
    return _median(runs)


def _drop_snapshot(db: Path) -> None:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        with con:
            con.execute("DELETE FROM dedup_snapshot")
    except sqlite3.OperationalError:  # no such table: a store without snapshots
        pass
    finally:
        con.close()


def _reader_python() -> str | None:
    for cand in (os.environ.get("BENCH_READER_PYTHON"), "/tmp/readervenv/bin/python"):
        if cand and Path(cand).exists():
            ok = subprocess.run([cand, "-c", "import reader, click"], capture_output=True)
            if ok.returncode == 0:
                return cand
    return None


def _reader_setup(tmp: Path, port: int, conn: Any, feeds_n: int
                  ) -> tuple[list[str] | None, dict[str, Any]]:
    """A reader database with ``feeds_n`` feeds, updated once (200s: the baseline); the
    command of an update, and what to report (or why it is skipped)."""
    py = _reader_python()
    if py is None:
        return None, {"skipped": "no Python with reader and click (pip install "
                                 "'reader[cli]' sgmllib3k into a venv, then "
                                 "BENCH_READER_PYTHON=its python)"}
    db = str(tmp / f"reader-{feeds_n}.sqlite")
    (tmp / "none.toml").write_text("[reader]\n", encoding="utf-8")
    cmd = [py, "-m", "reader", "--db", db, "--config", str(tmp / "none.toml"),
           "update", "--no-scheduled"]
    urls = [f"http://127.0.0.1:{port}/{i}.xml" for i in range(feeds_n)]
    subprocess.run([py, "-c", "import sys; from reader import make_reader; "
                    "r = make_reader(sys.argv[1]); [r.add_feed(u) for u in sys.argv[2:]]",
                    db, *urls], check=True, env=_ENV)
    subprocess.run(cmd, check=True, env=_ENV, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    conn.send("stats")
    conn.recv()
    version = subprocess.run([py, "-c", "import reader; print(reader.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    return cmd, {"version": version, "command": "reader update --no-scheduled"}


def run() -> dict[str, Any]:
    if not (CORPORA / "uci-news-aggregator" / "headlines.csv").exists():
        return {"skipped": f"no shared corpora at {CORPORA} (real headlines to build stores)"}
    sizes = [int(s) for s in os.environ.get("BENCH_START_SIZES", "").split(",") if s] or SIZES
    base = os.environ.get("BENCH_START_BASE")
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(child, N_FEEDS), daemon=True)
    server.start()
    port = parent.recv()
    out: dict[str, Any] = {"runs": RUNS, "store": "sqlite", "command": "monitor once",
                           "target_cpu_vs_reader": TARGET}
    if base:
        out["before"] = {"code": base}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp_:
            tmp = Path(tmp_)
            reader = {n: _reader_setup(tmp, port, parent, n) for n in FEED_COUNTS}
            out["reader"] = {f"feeds_{n}": info for n, (_, info) in reader.items()}
            for n in sizes:
                out[f"stories_{n}"] = _one_store(tmp, n, port, parent, reader, base)
    finally:
        parent.send("stop")
        server.join(timeout=10)
    out["targets"] = {
        f"stories_{n}_feeds_{f}": {
            "cpu_vs_reader": c["cpu_vs_reader"], "target": TARGET,
            "met": c["cpu_vs_reader"] <= TARGET,
            "stack_floor_vs_reader": c["stack_floor"]["cpu_vs_reader"],
            "reachable_on_this_stack": c["stack_floor"]["cpu_vs_reader"] <= TARGET,
            **({"before": c["before"]["cpu_vs_reader"]} if "before" in c else {})}
        for n in sizes for f in FEED_COUNTS
        if "cpu_vs_reader" in (c := out[f"stories_{n}"][f"all_304_feeds_{f}"])}
    return out


def _monitor_cmd(cfg: Path) -> list[str]:
    return [sys.executable, "-m", "monitor", "-c", str(cfg), "--log-level", "warning", "once"]


def _base_env(base: str) -> dict[str, str]:
    """The environment that runs ``base``'s monitor package instead of this one."""
    return {**_ENV, "PYTHONPATH": str(Path(base).resolve())}


def _in_turns(conn: Any, cmds: dict[str, tuple[list[str], Path, dict[str, str]]]
              ) -> dict[str, dict[str, float]]:
    """Each command ``RUNS`` times, taking turns; the median of each."""
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in cmds}
    for _ in range(RUNS):
        for k, (cmd, cwd, env) in cmds.items():
            runs[k].append(_timed(cmd, cwd, conn, env))
    return {k: _median(v) for k, v in runs.items()}


def _one_store(tmp: Path, n: int, port: int, conn: Any,
               reader: dict[int, tuple[list[str] | None, dict[str, Any]]],
               base: str | None) -> dict[str, Any]:
    dir_ = tmp / f"s{n}"
    dir_.mkdir()
    t0 = time.perf_counter()
    built = build_store(dir_ / "state.db", n, datetime.now(UTC))
    built["build_s"] = round(time.perf_counter() - t0, 1)
    res: dict[str, Any] = {"store": built}
    base_dir = tmp / f"s{n}-before"
    if base:
        shutil.copytree(dir_, base_dir)
    for feeds_n in FEED_COUNTS:
        cmds: dict[str, tuple[list[str], Path, dict[str, str]]] = {
            "monitor": (_monitor_cmd(write_config(dir_, port, feeds_n=feeds_n)), dir_, _ENV)}
        if base:
            cmds["before"] = (_monitor_cmd(write_config(base_dir, port, feeds_n=feeds_n)),
                              base_dir, _base_env(base))
        # every feed answers 200 (a silent baseline: the index is loaded, rebuilt, and
        # its snapshot saved), then 304 at every run
        for cmd, cwd, env in cmds.values():
            _timed(cmd, cwd, conn, env)
        ref_cmd, _ = reader[feeds_n]
        if ref_cmd is not None:
            cmds["reader"] = (ref_cmd, tmp, _ENV)
            cmds["floor"] = ([sys.executable, "-m", "bench.stackfloor", str(port),
                              str(feeds_n)], ROOT, _ENV)
        got = _in_turns(conn, cmds)
        cycle = got["monitor"]
        if "reader" in got:
            res.setdefault("reader", {})[f"feeds_{feeds_n}"] = got["reader"]
            cycle["cpu_vs_reader"] = round(cycle["cpu_s"] / got["reader"]["cpu_s"], 2)
            # the stack alone (bench/stackfloor.py): what no code on it can go below
            cycle["stack_floor"] = {**got["floor"], "cpu_vs_reader": round(
                got["floor"]["cpu_s"] / got["reader"]["cpu_s"], 2)}
            if "before" in got:
                got["before"]["cpu_vs_reader"] = round(
                    got["before"]["cpu_s"] / got["reader"]["cpu_s"], 2)
        if "before" in got:
            cycle["before"] = got["before"]
        res[f"all_304_feeds_{feeds_n}"] = cycle
    # the same 100 feeds and one with a new story at every poll: the index is loaded,
    # from the snapshot and the stories since; then without a snapshot (a rebuild)
    cfg = write_config(dir_, port, fresh=True, name="fresh.yaml")
    res["one_new_story"] = _monitor_once(dir_, cfg, conn)
    res["one_new_story_no_snapshot"] = _monitor_once(dir_, cfg, conn, drop_snapshot=True)
    shutil.rmtree(dir_, ignore_errors=True)
    shutil.rmtree(base_dir, ignore_errors=True)
    return res


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
