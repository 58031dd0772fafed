"""Hand-labelled "same event, different wording" groups from real news feeds.

``tests/data/real_feeds_groups.jsonl`` holds every story of the 25 feeds of
``../shared/corpora/real-feeds/news-snapshot-2026-02-17/`` as the daemon's parser sees it
(title, summary clipped to ~400 characters, link, published), each with a hand-given
``group`` (same real-world happening ⇒ same group) and, on some, ``near`` links to groups
that are tempting but different. See ``tests/data/REAL_FEEDS_GROUPS.md``.

* :func:`load_real_groups`: the items as :class:`bench.dedup_eval.Headline` records
  (``publisher`` = feed, ``story`` = group), in published order;
* :func:`load_near_links`: the near-miss links, one per (group, group) pair;
* :func:`evaluate_real_groups`: the items through ``StoryIndex`` (public API only):
  B-cubed precision / recall / F1 and the near-miss links the engine merged;
* :func:`check_against_corpus`: re-parse the snapshot with ``parse_feed`` and list items
  whose text no longer matches (the parser changed, or the corpus is absent).

    python -m bench.real_groups          # today's engine on the set, as JSON
    python -m bench.real_groups --check  # the file still matches what parse_feed gives
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.dedup_eval import CORPORA, ROOT, Headline, bcubed, final_cluster, to_story
from monitor.core.dedup.features import DedupSettings
from monitor.core.dedup.index import StoryIndex

REAL_GROUPS = ROOT / "tests" / "data" / "real_feeds_groups.jsonl"
SNAPSHOT = CORPORA / "real-feeds" / "news-snapshot-2026-02-17"
SUMMARY_CHARS = 400  # summaries are clipped at the last space before this
NEAR_KINDS = ("same-actors", "same-type")


@dataclass(frozen=True, slots=True)
class NearLink:
    """Group ``source`` is tempting but different from group ``target``."""

    source: str
    target: str
    kind: str  # one of NEAR_KINDS


def read_records(path: Path = REAL_GROUPS) -> list[dict[str, Any]]:
    """The file's JSON objects, in file order (feed, then position in the feed)."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def load_real_groups(path: Path = REAL_GROUPS) -> list[Headline]:
    """The labelled items in published order (ties by id): ``publisher`` is the feed,
    ``story`` the gold group, ``url`` the link, ``summary`` the clipped summary."""
    rows = [
        Headline(
            id=r["id"],
            title=r["title"],
            publisher=r["feed"],
            story=r["group"],
            ts=_epoch(r["published"]),
            url=r["link"],
            summary=r["summary"],
        )
        for r in read_records(path)
    ]
    rows.sort(key=lambda h: (h.ts, h.id))
    return rows


def load_near_links(path: Path = REAL_GROUPS) -> list[NearLink]:
    """Distinct near-miss links (a link written on every member of its source group
    counts once; A→B and B→A count once, the first one read wins)."""
    seen: set[frozenset[str]] = set()
    out: list[NearLink] = []
    for r in read_records(path):
        for n in r.get("near", ()):
            key = frozenset((r["group"], n["group"]))
            if key not in seen:
                seen.add(key)
                out.append(NearLink(r["group"], n["group"], n["kind"]))
    return out


def cluster_real(
    rows: Sequence[Headline], settings: DedupSettings | None = None, *, with_link: bool = True
) -> list[str]:
    """Cluster ids the engine assigns, feeding the rows in order with ``now`` = published
    (title, summary, feed, link, published)."""
    index = StoryIndex(settings)
    out: list[str] = []
    into: dict[str, str] = {}
    for h in rows:
        s = to_story(h, with_link=with_link)
        d = index.add(s, now=s.first_seen)
        out.append(d.cluster)
        for gone in d.merged:
            into[gone] = d.cluster
    return [final_cluster(c, into) for c in out]


def evaluate_real_groups(
    settings: DedupSettings | None = None, path: Path = REAL_GROUPS
) -> dict[str, Any]:
    """B-cubed precision / recall / F1 of the engine against the hand labels, the gold
    multi-item groups it kept whole, and the near-miss links it merged (a link counts as
    merged when some member of one group shares a predicted cluster with some member of
    the other)."""
    rows = load_real_groups(path)
    pred = cluster_real(rows, settings)
    gold = [h.story for h in rows]
    scores = bcubed(pred, gold)

    clusters_of: dict[str, set[str]] = defaultdict(set)  # gold group -> predicted clusters
    members: dict[str, set[str]] = defaultdict(set)  # predicted cluster -> gold groups
    for p, g in zip(pred, gold, strict=True):
        clusters_of[g].add(p)
        members[p].add(g)
    size = defaultdict(int)
    for g in gold:
        size[g] += 1
    multi = [g for g, n in size.items() if n > 1]
    kept_whole = [g for g in multi if len(clusters_of[g]) == 1]
    false_merges = sorted(sorted(gs) for gs in members.values() if len(gs) > 1)

    near = load_near_links(path)
    merged = [
        n for n in near if any(n.target in members[p] for p in clusters_of[n.source])
    ]
    idx = [i for i, g in enumerate(gold) if size[g] > 1]
    in_groups = bcubed([pred[i] for i in idx], [gold[i] for i in idx])
    return {
        "items": len(rows),
        # recall over the items of multi-item groups only: most items are singletons,
        # whose recall is 1 whatever the engine does
        "recall_multi_item_groups": in_groups["recall"],
        "gold_groups": len(size),
        "gold_multi_item_groups": len(multi),
        "predicted_clusters": len(set(pred)),
        **scores,
        "multi_item_groups_kept_whole": len(kept_whole),
        "split_groups": sorted(set(multi) - set(kept_whole)),
        "predicted_clusters_mixing_groups": len(false_merges),
        "mixed_groups": false_merges,
        "near_links": len(near),
        "near_links_merged": len(merged),
        "merged_near_links": [f"{n.source} ~ {n.target} ({n.kind})" for n in merged],
    }


def _clip(text: str, n: int = SUMMARY_CHARS) -> str:
    if len(text) <= n:
        return text
    cut = text[:n]
    sp = max(cut.rfind(" "), cut.rfind("\n"))
    return (cut[:sp] if sp > n // 2 else cut).rstrip()


def check_against_corpus(path: Path = REAL_GROUPS, snapshot: Path = SNAPSHOT) -> list[str]:
    """Ids whose title / summary / link / published differ from what ``parse_feed`` gives
    for the snapshot today (each feed parsed as ``feed=<file stem>``; ``<feed>:<n>`` is
    the n-th story it returns), plus ids missing on either side."""
    from monitor.core.parse import parse_feed

    now = datetime(2026, 2, 18, 12, 0, tzinfo=UTC)  # every item has its own date
    parsed: dict[str, dict[str, str]] = {}
    for p in sorted(snapshot.iterdir()):
        if p.suffix not in (".xml", ".rdf"):
            continue
        for n, s in enumerate(parse_feed(p.read_bytes(), {}, feed=p.stem, now=now).stories):
            parsed[f"{p.stem}:{n}"] = {
                "title": s.title,
                "summary": _clip(s.summary),
                "link": s.link,
                "published": s.published.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
    stored = {r["id"]: r for r in read_records(path)}
    bad = sorted(set(parsed) ^ set(stored))
    for sid in sorted(set(parsed) & set(stored)):
        if any(parsed[sid][k] != stored[sid][k] for k in parsed[sid]):
            bad.append(sid)
    return bad


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check"]:
        bad = check_against_corpus()
        print(json.dumps({"drifted": bad}, indent=2))
        return 1 if bad else 0
    print(json.dumps(evaluate_real_groups(), indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
