"""Story clustering (monitor.core.dedup.index): quality and speed, as one JSON document.

Quality
  * UCI News Aggregator sample: B-cubed precision / recall / F1 of the engine (titles fed in
    TIMESTAMP order, source = PUBLISHER) beside the issue's naive baseline (single-link
    ``fuzz.token_set_ratio`` over 48 h at thresholds 65 and 75), in the same run.
  * STS-B headlines: ROC-AUC of the pair score (pairs >= 4 vs <= 1) and the judged-duplicate
    rates at the engine's threshold, beside ``token_set_ratio``.

Speed (one core, pure Python + rapidfuzz)
  * stories/second added to an index already holding 1k, 10k and 100k stories; the probe
    mixes near-duplicate variants of indexed stories and fresh stories (half / half);
  * at 100k: ``rapidfuzz.process.extractOne`` over every title of the window, per story,
    and the agreement of its answers with the engine's on a generated near-duplicate set;
  * memory per indexed story (tracemalloc, 10k stories);
  * the event-loop cost of ``StoryIndex.add`` given precomputed ``story_features`` (as the
    daemon calls it, the features coming from the parse pool), in µs per story, on two
    fixed streams: the UCI sample in time order, and the 10k stories of 200 of
    bench_pipeline's generated feeds (parsed with ``monitor.core.parse.parse_feed``).

Headlines are generated from the real ones (UCI + the 2026-02-17 snapshot): each synthetic
story splices thirds of three real headlines and swaps two content words for invented
names, so the vocabulary grows
with the window as it does in the news; a third of the window are re-wordings of earlier
stories (publisher suffixes, "UPDATE 1-" prefixes, dropped words, truncation, case).
"""

from __future__ import annotations

import gc
import random
import re
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

from rapidfuzz import fuzz, process, utils

from bench.dedup_eval import (
    CORPORA,
    STSB,
    UCI,
    baseline_uci,
    bcubed,
    cluster_uci,
    load_pairs,
    load_uci,
    pair_report,
    to_story,
)
from monitor.core.dedup.features import DedupSettings, Features, normalize_title, story_features
from monitor.core.dedup.index import New, SameStory, Seen, StoryIndex, pair_score
from monitor.core.model import Story

SNAPSHOT = CORPORA / "real-feeds" / "news-snapshot-2026-02-17"
NOW = datetime(2026, 2, 17, 12, 0, tzinfo=UTC)
SPAN = timedelta(hours=46)  # the window holds every generated story

_SYLL = [
    "ka",
    "lo",
    "vi",
    "ren",
    "dor",
    "sa",
    "mi",
    "tu",
    "bel",
    "gar",
    "no",
    "ste",
    "fan",
    "quo",
    "ri",
    "zel",
    "mar",
    "pol",
    "ek",
    "an",
    "ur",
    "is",
    "ta",
    "ven",
]
_SUFFIXES = [" - Reuters", " | BBC News", " - The Washington Post", " - AP", " | Al Jazeera"]
_PREFIXES = ["UPDATE 1-", "WATCH: ", "LIVE: ", "REFILE-"]


def _base_titles() -> list[str]:
    titles = [h.title for h in load_uci(UCI)] if UCI.exists() else []
    if SNAPSHOT.exists():
        for path in sorted(SNAPSHOT.iterdir()):
            if path.suffix in (".xml", ".rdf"):
                text = path.read_text(encoding="utf-8", errors="replace")
                for m in re.finditer(r"<title>(?:<!\[CDATA\[)?(.*?)(?:\]\]>)?</title>", text, re.S):
                    t = " ".join(m.group(1).split())
                    if len(t.split()) >= 4:
                        titles.append(t)
    if not titles:
        raise RuntimeError("no headlines: ../shared/corpora is absent")
    return sorted(set(titles))


class Generator:
    """Deterministic synthetic headlines built from real ones."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.bases = _base_titles()

    def name(self) -> str:
        r = self.rng
        return "".join(r.choice(_SYLL) for _ in range(r.randint(2, 3))).capitalize()

    def fresh(self) -> str:
        """A new story: thirds of three real headlines spliced together, with two content
        words swapped for invented names."""
        r = self.rng
        parts = [r.choice(self.bases).split() for _ in range(3)]
        words = [
            *parts[0][: max(2, len(parts[0]) // 3)],
            *parts[1][len(parts[1]) // 3 : 2 * len(parts[1]) // 3],
            *parts[2][2 * len(parts[2]) // 3 :],
        ]
        slots = [i for i, w in enumerate(words) if len(w) >= 4 and w[0].isalpha()]
        for i in r.sample(slots, min(2, len(slots))):
            words[i] = self.name()
        if len(slots) < 2:
            words.append(self.name())
        return " ".join(words)

    def variant(self, title: str) -> str:
        """Another publisher's wording of the same headline (one or two light edits)."""
        r = self.rng
        t = title
        for op in r.sample(range(6), r.randint(1, 2)):
            words = t.split()
            if op == 0:
                t = t + r.choice(_SUFFIXES)
            elif op == 1:
                t = r.choice(_PREFIXES) + t
            elif op == 2 and len(words) > 5:
                del words[r.randrange(1, len(words))]
                t = " ".join(words)
            elif op == 3 and len(words) > 6 and not t.endswith("..."):
                t = " ".join(words[: max(6, int(len(words) * 0.8))]) + " ..."
            elif op == 4:
                t = t.lower() if r.random() < 0.5 else t.title()
            elif op == 5 and len(words) > 4:
                i = r.randrange(len(words) - 1)
                words[i], words[i + 1] = words[i + 1], words[i]
                t = " ".join(words)
        return t


def _story(sid: str, title: str, feed: str, when: datetime) -> Story:
    return Story(
        id=sid,
        feed=feed,
        title=title,
        link=f"https://{feed}.example/{sid}",
        published=when,
        first_seen=when,
    )


def make_window(gen: Generator, n: int) -> list[Story]:
    """``n`` stories spread over the 46 h before NOW; a third re-word an earlier story."""
    out: list[Story] = []
    step = SPAN / max(1, n)
    start = NOW - SPAN
    for i in range(n):
        if out and gen.rng.random() < 1 / 3:
            title = gen.variant(gen.rng.choice(out[-2000:]).title)
        else:
            title = gen.fresh()
        out.append(_story(f"w{i}", title, f"feed{gen.rng.randrange(300)}", start + step * i))
    return out


def make_probes(gen: Generator, window: list[Story], m: int, dup_share: float) -> list[Story]:
    out: list[Story] = []
    for j in range(m):
        when = NOW + timedelta(seconds=j)
        if gen.rng.random() < dup_share:
            title = gen.variant(gen.rng.choice(window).title)
        else:
            title = gen.fresh()
        out.append(_story(f"p{j}", title, f"feed{gen.rng.randrange(300)}", when))
    return out


def build(stories: list[Story], settings: DedupSettings) -> tuple[StoryIndex, list[str]]:
    index = StoryIndex(settings)
    clusters = [index.add(s, now=s.first_seen).cluster for s in stories]
    return index, clusters


def speed(sizes: tuple[int, ...] = (1_000, 10_000, 100_000), probes: int = 3_000) -> dict[str, Any]:
    settings = DedupSettings()
    out: dict[str, Any] = {}
    rates: dict[int, float] = {}
    kept: dict[str, Any] = {}
    for n in sizes:
        gen = Generator(seed=n)
        window = make_window(gen, n)
        t0 = time.perf_counter()
        index, clusters = build(window, settings)
        build_s = time.perf_counter() - t0
        batch = make_probes(gen, window, probes, dup_share=0.5)
        t0 = time.perf_counter()
        for s in batch:
            index.add(s, now=s.first_seen)
        dt = time.perf_counter() - t0
        rates[n] = probes / dt
        out[f"n{n}"] = {
            "indexed": len(index) - probes,
            "clusters": index.clusters,
            "build_stories_per_s": round(n / build_s),
            "add_stories_per_s": round(probes / dt),
            "add_us_per_story": round(dt / probes * 1e6, 1),
        }
        if n == max(sizes):
            kept = {"gen": gen, "window": window, "clusters": clusters, "n": n}
    lo, hi = min(sizes), max(sizes)
    out["cost_ratio_largest_vs_smallest"] = round(rates[lo] / rates[hi], 2)
    out["cost_ratio_note"] = f"time per story at {hi} / at {lo} (target < 5)"
    out["versus_extractOne"] = versus_extract_one(**kept)
    return out


def versus_extract_one(
    gen: Generator, window: list[Story], clusters: list[str], n: int, queries: int = 500
) -> dict[str, Any]:
    """The engine against ``process.extractOne`` over every title in the window."""
    settings = DedupSettings()
    index, _ = build(window, settings)
    choices = [normalize_title(s.title) for s in window]
    cutoff = 75.0
    # the near-duplicate set: re-worded copies of indexed stories
    batch = make_probes(gen, window, queries, dup_share=1.0)
    # the engine (decide: no insert, so both answer against the same window)
    t0 = time.perf_counter()
    ours = [index.decide(s, now=s.first_seen) for s in batch]
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs: list[str | None] = []
    for s in batch:
        hit = process.extractOne(
            normalize_title(s.title),
            choices,
            scorer=fuzz.token_set_ratio,
            processor=None,
            score_cutoff=cutoff,
        )
        theirs.append(clusters[hit[2]] if hit else None)
    t_theirs = time.perf_counter() - t0
    same = sum(
        1
        for d, c in zip(ours, theirs, strict=True)
        if (isinstance(d, New) and c is None) or (not isinstance(d, New) and d.cluster == c)
    )
    return {
        "window": n,
        "queries": queries,
        "extractOne_scorer": f"token_set_ratio, score_cutoff={cutoff}, normalised titles",
        "engine_ms_per_story": round(t_ours / queries * 1e3, 3),
        "extractOne_ms_per_story": round(t_theirs / queries * 1e3, 2),
        "speedup": round(t_theirs / t_ours, 1),
        "same_answer_share": round(same / queries, 4),
    }


def memory(n: int = 10_000) -> dict[str, Any]:
    gen = Generator(seed=99)
    gc.collect()
    tracemalloc.start()
    window = make_window(gen, n)
    index, _ = build(window, DedupSettings())
    del window
    gc.collect()
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "stories": len(index),
        "clusters": index.clusters,
        "bytes_per_story": round(current / len(index)),
        "note": "index state traced by tracemalloc after the Story objects are dropped",
    }


def quality() -> dict[str, Any]:
    out: dict[str, Any] = {}
    if UCI.exists():
        rows = load_uci(UCI)
        gold = [h.story for h in rows]
        settings = DedupSettings()
        t0 = time.perf_counter()
        ours = bcubed(cluster_uci(rows, settings), gold)
        ours["seconds"] = round(time.perf_counter() - t0, 2)
        out["uci_bcubed"] = {
            "rows": len(rows),
            "stories": len(set(gold)),
            "engine": {"threshold": settings.threshold, **ours},
            "baseline_token_set_ratio_single_link_48h": {
                str(thr): bcubed(baseline_uci(rows, thr), gold) for thr in (65.0, 75.0)
            },
            "engine_threshold_sweep": {
                str(thr): bcubed(cluster_uci(rows, DedupSettings(threshold=thr)), gold)
                for thr in (0.46, 0.5, 0.58, 0.62)
            },
        }
    if STSB.exists():
        pairs = load_pairs(STSB)
        thr = DedupSettings().threshold
        out["stsb_pairs"] = {
            "engine_pair_score": pair_report(pairs, pair_score, thr),
            "token_set_ratio": pair_report(
                pairs,
                lambda a, b: (
                    fuzz.token_set_ratio(utils.default_process(a), utils.default_process(b)) / 100.0
                ),
                0.75,
            ),
        }
    return out


def _pipeline_stream(n_feeds: int = 200) -> list[tuple[Story, datetime]]:
    """The stories of ``n_feeds`` of bench_pipeline's feeds, parsed, all seen at one time."""
    import bench.bench_pipeline as bp
    from monitor.core.parse import parse_feed

    now = datetime(2026, 2, 17, 12, 0, tzinfo=UTC)
    saved = bp.N_FEEDS
    bp.N_FEEDS = n_feeds
    try:
        bodies = bp.make_feeds(now)
    finally:
        bp.N_FEEDS = saved
    out: list[tuple[Story, datetime]] = []
    for i, body in enumerate(bodies):
        parsed = parse_feed(body, {}, feed=f"feed{i}", now=now)
        out += [(s, now) for s in parsed.stories]
    return out


def add_in_loop(rounds: int = 3) -> dict[str, Any]:
    """µs per ``StoryIndex.add(story, now=, features=)`` with the features precomputed."""
    settings = DedupSettings()
    streams = {
        "uci_time_order": [(s, s.first_seen) for s in map(to_story, load_uci())],
        "pipeline_200_feeds": _pipeline_stream(),
    }
    out: dict[str, Any] = {}
    for name, stream in streams.items():
        items: list[tuple[Story, datetime, Features]] = [
            (s, now, story_features(s, settings)) for s, now in stream
        ]
        best = float("inf")
        kinds: dict[str, int] = {}
        for _ in range(rounds):
            index = StoryIndex(settings)
            add = index.add
            t0 = time.perf_counter()
            decisions = [add(s, now=now, features=f) for s, now, f in items]
            best = min(best, time.perf_counter() - t0)
            kinds = {
                "new": sum(isinstance(d, New) for d in decisions),
                "same_story": sum(isinstance(d, SameStory) for d in decisions),
                "seen": sum(isinstance(d, Seen) for d in decisions),
            }
        out[name] = {
            "stories": len(items),
            "add_us_per_story": round(best / len(items) * 1e6, 2),
            "decisions": kinds,
        }
    return out


def run() -> dict[str, Any]:
    return {
        "quality": quality(),
        "speed": speed(),
        "memory": memory(),
        "add_in_loop": add_in_loop(),
    }


if __name__ == "__main__":
    import json
    import sys

    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what == "quality":
        res: dict[str, Any] = quality()
    elif what == "speed":
        res = speed()
    elif what == "memory":
        res = memory()
    elif what == "loop":
        res = add_in_loop()
    else:
        res = run()
    print(json.dumps(res, indent=2))
