"""Shared evaluation code for the story-clustering engine (``monitor.core.dedup.index``).

* loaders for ``../shared/corpora/uci-news-aggregator/headlines.csv`` (labelled STORY
  clusters) and ``../shared/corpora/stsb-headlines/headline_pairs.tsv`` (graded pairs);
* B-cubed precision / recall / F1;
* the issue's naive baseline: single-link ``rapidfuzz.fuzz.token_set_ratio`` over a 48 h
  window;
* ROC-AUC and precision / recall of a pair score at a threshold.

Used by ``bench/bench_dedup.py`` and ``tests/test_dedup_quality.py``.
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from rapidfuzz import fuzz, process, utils

from monitor.core.dedup.features import DedupSettings
from monitor.core.dedup.index import StoryIndex
from monitor.core.model import Story

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT.parent / "shared" / "corpora"
UCI = CORPORA / "uci-news-aggregator" / "headlines.csv"
STSB = CORPORA / "stsb-headlines" / "headline_pairs.tsv"


@dataclass(frozen=True, kw_only=True, slots=True)
class Headline:
    id: str
    title: str
    publisher: str
    story: str  # gold STORY label
    ts: float  # epoch seconds
    url: str = ""
    summary: str = ""  # plain text (the real-feed groups carry it; UCI rows have none)


def load_uci(path: Path = UCI) -> list[Headline]:
    """Rows of the UCI sample in TIMESTAMP order (ties by ID)."""
    rows: list[Headline] = []
    with path.open(encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh):
            rows.append(
                Headline(
                    id=r["ID"],
                    title=r["TITLE"],
                    publisher=r["PUBLISHER"],
                    story=r["STORY"],
                    ts=int(r["TIMESTAMP"]) / 1000.0,
                    url=r["URL"],
                )
            )
    rows.sort(key=lambda h: (h.ts, int(h.id)))
    return rows


def time_blind(rows: Sequence[Headline], *, seed: int = 1, span: float = 86400.0) -> list[Headline]:
    """The rows with their times thrown away: each given a random time inside one
    ``span`` (24 h) window from the first row's, with a fixed seed, then sorted by it.
    The UCI labels leak time (each story's headlines are stamped within about 75 s of
    each other and stories do not overlap), so quality is also measured without it."""
    rnd = random.Random(seed)
    base = min((h.ts for h in rows), default=0.0)
    out = [replace(h, ts=base + rnd.random() * span) for h in rows]
    out.sort(key=lambda h: (h.ts, int(h.id) if h.id.isdigit() else 0, h.id))
    return out


SEED = CORPORA.parent / "seeds" / "sanctions-deadline-article.txt"
WIRE_TITLE = "Witkoff heads to Moscow as Trump's sanctions deadline for Russia looms"
WIRE_SUMMARY = ("Steve Witkoff travels to Moscow for talks with Vladimir Putin, days before "
                "Trump's Friday deadline for secondary sanctions.")


def seed_pair_joins(settings: DedupSettings | None = None) -> bool:
    """Issue #10's seed pair: the seed article (title, body as its summary), then a wire
    version of the same event from another outlet. True when the wire copy joins."""
    lines = [x for x in SEED.read_text(encoding="utf-8").splitlines() if x.strip()]
    when = datetime(2026, 8, 5, 12, tzinfo=UTC)
    a = Story(id="post", feed="post", title=lines[0], link="", summary=" ".join(lines[1:]),
              published=when, first_seen=when)
    b = Story(id="wire", feed="wire", title=WIRE_TITLE, link="", summary=WIRE_SUMMARY,
              published=when, first_seen=when)
    index = StoryIndex(settings)
    index.add(a, now=when)
    return index.add(b, now=when).cluster == "post"


def load_pairs(path: Path = STSB) -> list[tuple[float, str, str]]:
    """(score 0-5, headline1, headline2) of the STS-B headlines genre."""
    out: list[tuple[float, str, str]] = []
    with path.open(encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 6:
                out.append((float(parts[3]), parts[4], parts[5]))
    return out


def to_story(h: Headline, *, with_link: bool = False) -> Story:
    when = datetime.fromtimestamp(h.ts, tz=UTC)
    return Story(
        id=h.id,
        feed=h.publisher,
        title=h.title,
        summary=h.summary,
        link=h.url if with_link else "",
        published=when,
        first_seen=when,
    )


def bcubed(pred: Sequence[str], gold: Sequence[str]) -> dict[str, float]:
    """B-cubed precision, recall and F1 of predicted vs gold cluster labels (same order)."""
    n = len(pred)
    if n == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    both = Counter(zip(pred, gold, strict=True))
    p_size = Counter(pred)
    g_size = Counter(gold)
    prec = sum(k * k / p_size[p] for (p, _), k in both.items()) / n
    rec = sum(k * k / g_size[g] for (_, g), k in both.items()) / n
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4)}


def cluster_uci(rows: Sequence[Headline], settings: DedupSettings | None = None) -> list[str]:
    """Cluster ids the engine assigns to the rows, fed in time order."""
    index = StoryIndex(settings)
    labels: list[str] = []
    into: dict[str, str] = {}  # absorbed cluster -> the one it merged into
    for h in rows:
        s = to_story(h)
        d = index.add(s, now=s.first_seen)
        labels.append(d.cluster)
        for gone in d.merged:
            into[gone] = d.cluster
    return [final_cluster(c, into) for c in labels]


def final_cluster(cluster: str, into: dict[str, str]) -> str:
    """Where a cluster ended up after the merges ``into`` records (absorbed -> survivor)."""
    while cluster in into:
        cluster = into[cluster]
    return cluster


def baseline_uci(
    rows: Sequence[Headline], threshold: float, window: float = 48 * 3600.0
) -> list[str]:
    """Naive single-link clustering: join the cluster of the best earlier title in the
    window by ``fuzz.token_set_ratio`` (lower-cased, punctuation-free) when ≥ threshold."""
    titles: list[str] = []
    clusters: list[str] = []
    times: list[float] = []
    start = 0
    out: list[str] = []
    for h in rows:
        while start < len(times) and times[start] < h.ts - window:
            start += 1
        q = utils.default_process(h.title)
        hit = process.extractOne(
            q, titles[start:], scorer=fuzz.token_set_ratio, score_cutoff=threshold
        )
        cid = clusters[start + hit[2]] if hit else h.id
        titles.append(q)
        clusters.append(cid)
        times.append(h.ts)
        out.append(cid)
    return out


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve (ties count half)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return float("nan")
    ranked = sorted((s, y) for s, y in zip(scores, labels, strict=True))
    # rank-sum with average ranks for ties
    rank_sum = 0.0
    i = 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        avg = (i + j + 1) / 2.0
        rank_sum += avg * sum(1 for k in range(i, j) if ranked[k][1])
        i = j
    return (rank_sum - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg))


def pair_report(
    pairs: Iterable[tuple[float, str, str]],
    score: Callable[[str, str], float],
    threshold: float,
    *,
    pos_min: float = 4.0,
    neg_max: float = 1.0,
) -> dict[str, float]:
    """ROC-AUC of ``score`` separating pairs ≥ pos_min from pairs ≤ neg_max, and the
    judged-duplicate rates at ``threshold``."""
    scored = [(g, score(a, b)) for g, a, b in pairs]
    extremes = [(s, g >= pos_min) for g, s in scored if g >= pos_min or g <= neg_max]
    auc = roc_auc([s for s, _ in extremes], [y for _, y in extremes])
    dup = [(g, s >= threshold) for g, s in scored]
    pos = [d for g, d in dup if g >= pos_min]
    neg = [d for g, d in dup if g <= neg_max]
    judged = [g for g, d in dup if d]
    return {
        "pairs": len(scored),
        "roc_auc_ge4_vs_le1": round(auc, 4),
        "threshold": threshold,
        "recall_ge4": round(sum(pos) / len(pos), 4) if pos else 0.0,
        "false_positive_rate_le1": round(sum(neg) / len(neg), 4) if neg else 0.0,
        "precision_ge4_among_judged": round(sum(1 for g in judged if g >= pos_min) / len(judged), 4)
        if judged
        else 0.0,
        "precision_ge3_among_judged": round(sum(1 for g in judged if g >= 3.0) / len(judged), 4)
        if judged
        else 0.0,
    }
