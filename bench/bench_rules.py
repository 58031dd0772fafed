"""Rule matching throughput for 10, 100 and 1,000 rules over real feed text.

Stories: every item of ../shared/corpora/real-feeds (title + summary as plain text).
Rules: generated from the same corpus's vocabulary so that their terms really occur:
each has 2 ``all`` terms, 3-6 ``any`` terms, often an actor (2-4 aliases drawn from
capitalised names and two-word names), sometimes a ``none`` term, a NEAR condition or a phrase,
about 5-10 terms in all. Timing: the best of a few passes over all stories with one matcher,
on one core. ``ratio`` = cost per story at 1,000 rules / cost at 10 rules.
"""

from __future__ import annotations

import html
import itertools
import random
import re
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from monitor.core.model import Story
from monitor.core.rules.match import compile_rules
from monitor.shell.rulefiles import load_rules

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
NOW = datetime(2026, 2, 17, tzinfo=UTC)
_STOP_WORDS = """the and for that with this from have has was were are will would could should their there
    they them than then into about after before over under more most some such what when where which
    while who whom whose been being also only just very said says says its it's his her our your
    not but can may might must one two three new like how why all any out off per via
"""
STOP = frozenset(_STOP_WORDS.split())


def _stories() -> list[Story]:
    import feedparser

    out: list[Story] = []
    for f in sorted((SHARED / "corpora" / "real-feeds").glob("*/*")):
        if f.suffix not in (".xml", ".rdf", ".rss", ".atom"):
            continue
        for i, e in enumerate(feedparser.parse(f.read_bytes()).entries):
            summary = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", e.get("summary", ""))).split())
            out.append(Story(id=f"{f.stem}:{i}", feed=f.stem, title=e.get("title", ""), link=e.get("link", ""),
                             summary=summary, published=NOW, first_seen=NOW))
    return out


def _vocab(stories: list[Story]) -> tuple[list[str], list[str], list[str]]:
    words: Counter[str] = Counter()
    names: Counter[str] = Counter()
    bigrams: Counter[str] = Counter()
    for s in stories:
        text = f"{s.title}. {s.summary}"
        toks = re.findall(r"[^\W\d_]+", text)
        for t in toks:
            if len(t) >= 4 and t.lower() not in STOP:
                words[t.lower()] += 1
                if t[0].isupper() and not t.isupper():
                    names[t] += 1
        for a, b in itertools.pairwise(toks):
            if a[:1].isupper() and b[:1].isupper() and a.lower() not in STOP and len(a) > 2 and len(b) > 2:
                bigrams[f"{a} {b}"] += 1
    common = [w for w, n in words.most_common(4000) if n >= 2]
    return common, [w for w, _ in names.most_common(600)], [w for w, _ in bigrams.most_common(400)]


def _ruleset_yaml(n: int, vocab: tuple[list[str], list[str], list[str]], seed: int = 7) -> tuple[str, str]:
    rnd = random.Random(seed)
    words, names, bigrams = vocab
    actors: dict[str, list[str]] = {}
    for i in range(max(5, n // 4)):
        aliases = rnd.sample(names, rnd.randint(1, 2)) + rnd.sample(bigrams, rnd.randint(1, 2))
        actors[f"actor{i}"] = aliases
    rules: list[dict[str, Any]] = []
    # a Zipf-ish choice: rules mostly use frequent words, like real rules do
    weights = [1.0 / (r + 10) for r in range(len(words))]
    for i in range(n):
        picks = list(dict.fromkeys(rnd.choices(words, weights=weights, k=10)))
        rule: dict[str, Any] = {"name": f"rule-{i}", "all": picks[:2], "any": picks[2 : 2 + rnd.randint(3, 6)]}
        if rnd.random() < 0.6:
            rule["actors"] = rnd.sample(sorted(actors), rnd.randint(1, 2))
        if rnd.random() < 0.3:
            rule["none"] = [rnd.choice(words)]
        if rnd.random() < 0.2:
            rule["expr"] = f"{rnd.choice(words)} NEAR/8 {rnd.choice(words)}"
        if rnd.random() < 0.2:
            rule["any"].append(rnd.choice(bigrams))
        if rnd.random() < 0.1:
            rule["fields"] = ["title"]
        rule["channels"] = ["file"]
        rules.append(rule)
    return yaml.safe_dump({"actors": actors}, allow_unicode=True), yaml.safe_dump({"rules": rules}, allow_unicode=True)


def _measure(n: int, stories: list[Story], vocab: tuple[list[str], list[str], list[str]], passes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        actors, rules = _ruleset_yaml(n, vocab)
        Path(d, "actors.yaml").write_text(actors, encoding="utf-8")
        Path(d, "rules.yaml").write_text(rules, encoding="utf-8")
        t0 = time.perf_counter()
        rs = load_rules(Path(d), channels={"file"})
        t1 = time.perf_counter()
        m = compile_rules(rs)
        t2 = time.perf_counter()
    m.match(stories[0])  # warm the token cache as a running daemon would have it
    for s in stories:
        m.match(s)
    best = float("inf")
    matches = 0
    for _ in range(passes):
        t = time.perf_counter()
        matches = 0
        for s in stories:
            matches += len(m.match(s))
        best = min(best, time.perf_counter() - t)
    terms = len(m._terms)
    return {
        "rules": n,
        "distinct_terms": terms,
        "load_ms": round((t1 - t0) * 1000, 1),
        "compile_ms": round((t2 - t1) * 1000, 1),
        "stories": len(stories),
        "matches": matches,
        "stories_per_s": round(len(stories) / best),
        "us_per_story": round(best / len(stories) * 1e6, 1),
    }


def run() -> dict[str, Any]:
    if not (SHARED / "corpora" / "real-feeds").exists():
        return {"skipped": "../shared/corpora/real-feeds is absent"}
    stories = _stories()
    vocab = _vocab(stories)
    avg_words = sum(len(re.findall(r"\w+", f"{s.title} {s.summary}")) for s in stories) / len(stories)
    results = [_measure(n, stories, vocab, passes=5) for n in (10, 100, 1000)]
    ratio = results[-1]["us_per_story"] / results[0]["us_per_story"]
    return {
        "stories": len(stories),
        "avg_words_per_story": round(avg_words, 1),
        "runs": results,
        "ratio_1000_vs_10": round(ratio, 2),
        "target_ratio_lt_3": ratio < 3,
        "target_10k_per_s_at_1000": results[-1]["stories_per_s"] >= 10_000,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
