"""A fresh instance's first pass and the steady state after it, per story.

The capacity target (issue #14): 50,000 feeds of 10 items each; a fresh instance baselines
all 500,000 stories within one 5-minute interval, then each cycle 80% of the feeds answer
304 and 20% carry 1-5 new items (~100 new stories/s). This bench runs the same shape,
scaled down (``BENCH_BASELINE_FEEDS``, default 2,000 feeds), through ``monitor once``'s
code (``Runtime.poll_all``: fetch from a local feed server in another process, parse in
the process pool, dedup, 50 rules, SQLite store) and reports per story:

* ``first_pass``: every feed's first poll (a silent baseline), its main-process CPU per
  stored story and its stories/s;
* ``steady``: the next cycle (20% of the feeds with 1-5 new items, the others 304), its
  main-process CPU per new story, less that of a cycle in which every feed answers 304
  (the polls' own cost), so the figure is what one new story costs;
* the parse pool's workers' CPU (``/proc``): per stored story in the first pass, and per
  entry of the changed bodies in the steady cycle (10 entries, 1-5 of them new).

Titles are real headlines (../shared/corpora), each used once: a title seen again is given
another outlet's wording (a real headline's words reordered), so dedup does the fuzzy
work it does on real feeds, not only exact-title hits.
"""

from __future__ import annotations

import gc
import html
import multiprocessing as mp
import os
import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from bench.bench_pipeline import CORPORA, _headlines, _serve, write_rules

N_FEEDS = int(os.environ.get("BENCH_BASELINE_FEEDS", "2000"))
N_ITEMS = 10
SHARE_NEW = 0.2  # feeds with new items in the steady cycle


def _titles(n: int) -> list[str]:
    """``n`` distinct real-looking titles: the corpora's headlines, then their words in
    another order (the same story, another outlet's wording)."""
    base, _ = _headlines()
    out = list(base[:n])
    rnd = random.Random(5)
    while len(out) < n:
        words = rnd.choice(base).split()
        if len(words) > 3:
            i = rnd.randrange(1, len(words) - 1)
            words = words[i:] + words[:i]
        out.append(" ".join(words))
    return out


def make_generations(now: datetime) -> tuple[list[bytes], list[bytes], int]:
    """The feeds' first bodies, their next bodies (``SHARE_NEW`` of them with 1-5 new
    items on top, the others unchanged: the server answers 304) and the new items."""
    titles = _titles(N_FEEDS * (N_ITEMS + 5))
    _, descs = _headlines()
    rnd = random.Random(11)
    fresh = {f: rnd.randint(1, 5) for f in rnd.sample(range(N_FEEDS), int(N_FEEDS * SHARE_NEW))}

    def body(f: int, shift: int) -> bytes:
        items = []
        for i in reversed(range(shift, N_ITEMS + shift)):  # newest first
            r = random.Random(f * 1000 + i)
            t = titles[f * (N_ITEMS + 5) + i]
            pub = format_datetime(now - timedelta(minutes=(N_ITEMS + 5 - i) * 7), usegmt=True)
            link = f"https://news{f % 40}.example.com/{f}/{i}/story.html?utm_source=rss"
            items.append(
                f"<item><title>{html.escape(t)}</title><link>{link}</link>"
                f"<guid isPermaLink='false'>feed{f}-item{i}</guid><pubDate>{pub}</pubDate>"
                f"<description>{html.escape(r.choice(descs))}</description>"
                f"<category>world</category></item>")
        return (
            '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>Feed {f}</title><link>https://news{f % 40}.example.com/</link>"
            f"<description>bench</description>{''.join(items)}</channel></rss>").encode()

    first = [body(f, 0) for f in range(N_FEEDS)]
    later = [body(f, fresh[f]) if f in fresh else first[f] for f in range(N_FEEDS)]
    return first, later, sum(fresh.values())


def _config(tmp: Path, port: int) -> Path:
    feeds = "\n".join(f"  - {{name: f{i}, url: 'http://127.0.0.1:{port}/etag/{i}.xml'}}"
                      for i in range(N_FEEDS))
    cfg = tmp / "config.yaml"
    cfg.write_text(f"""
feeds:
{feeds}
rules: rules
store: sqlite:///state.db
channels:
  slack-news: {{type: file, path: slack.jsonl}}
  email-oncall: {{type: file, path: email.jsonl}}
  audit-file: {{type: file, path: alerts.jsonl}}
fetch: {{concurrency: 64, per_host: 64, parse_in: process}}
server: {{enabled: false}}
""", encoding="utf-8")
    return cfg


async def _passes(tmp: Path, port: int, serve: Any, new_items: int,
                  workers_cpu: Callable[[], float]) -> dict[str, Any]:
    from monitor.config import load_config
    from monitor.shell.daemon import Runtime

    write_rules(tmp / "rules")
    config = load_config(_config(tmp, port))
    serve(0)
    out: dict[str, Any] = {}
    async with Runtime(config) as rt:
        gc.collect()
        c0, w0, k0 = time.process_time(), time.perf_counter(), workers_cpu()
        first = await rt.poll_all()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        kids = workers_cpu() - k0
        stored = sum(o.new for o in first)
        assert all(o.result == "baseline" for o in first), {o.result for o in first}
        out["first_pass"] = {
            "stories": stored, "seconds": round(wall, 2),
            "stories_per_s": round(stored / wall, 1),
            "main_cpu_s": round(cpu, 2),
            "main_cpu_ms_per_story": round(cpu / stored * 1000, 3),
            "workers_cpu_s": round(kids, 2),
            "workers_cpu_ms_per_story": round(kids / stored * 1000, 3),
        }
        gc.collect()
        c0 = time.process_time()
        again = await rt.poll_all()
        cpu_304 = time.process_time() - c0
        assert all(o.result == "not-modified" for o in again), {o.result for o in again}
        serve(1)
        gc.collect()
        c0, w0, k0 = time.process_time(), time.perf_counter(), workers_cpu()
        nxt = await rt.poll_all()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        kids = workers_cpu() - k0
        new = sum(o.new for o in nxt)
        assert new == new_items, (new, new_items)
        out["steady"] = {
            "new_stories": new, "polls": len(nxt), "seconds": round(wall, 2),
            "main_cpu_s": round(cpu, 3), "all_304_cpu_s": round(cpu_304, 3),
            "main_cpu_ms_per_new_story": round((cpu - cpu_304) / new * 1000, 3),
            "alerts": sum(o.alerts for o in nxt),
            # the changed feeds' bodies, 10 entries each of which 1-5 are new
            "workers_cpu_ms_per_entry": round(
                kids / (sum(o.result != "not-modified" for o in nxt) * N_ITEMS) * 1000, 3),
        }
    return out


def _children_cpu(skip: int) -> float:
    """CPU seconds (user + system) of this process's live children but ``skip`` (the feed
    server): the parse pool's workers."""
    me = os.getpid()
    kids: set[int] = set()
    for task in Path(f"/proc/{me}/task").iterdir():
        kids.update(int(k) for k in (task / "children").read_text().split())
    total = 0
    for pid in kids - {skip}:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def run() -> dict[str, Any]:
    from monitor.shell import loop

    if not CORPORA.exists():
        return {"skipped": f"{CORPORA} is absent"}
    now = datetime.now(UTC)
    first, later, new_items = make_generations(now)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=([first, later], child), daemon=True)
    server.start()
    port = parent.recv()

    def serve(generation: int) -> None:
        parent.send(f"gen {generation}")
        assert parent.recv() == "ok"

    try:
        with tempfile.TemporaryDirectory(prefix="monitor-bench-") as tmp:
            result = loop.run(_passes(Path(tmp), port, serve, new_items,
                                      lambda: _children_cpu(server.pid or 0)))
    finally:
        parent.send("stop")
        server.join(10)
    return {"feeds": N_FEEDS, "items_per_feed": N_ITEMS, "event_loop": loop.loop_factory()[0],
            **result}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
