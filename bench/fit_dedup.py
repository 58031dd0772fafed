"""Fit the story index's constants offline (not part of ``make bench``).

    python -m bench.fit_dedup [--trials 200] [--seed 1] [--jobs 2] [--top 12]

A seeded random search over the knobs of ``DedupSettings``, each setting scored on the
shared UCI split (titles only) in time order and time-blind (``bench.dedup_eval.
time_blind``), and on the hand-labelled real-feeds groups (titles and summaries). A
setting is admissible when it meets issue #10's targets: B-cubed precision 0.95 in time
order, 0.93 time-blind, 0.97 on the real-feeds groups (recall 0.80 there), and the
seed pair (the seed article and a wire copy) must join; among those the best has the
largest smallest recall margin: above 0.55 in time order, 0.45 time-blind, and (at half
weight) 0.70 over the items of the real-feeds multi-item groups, whose recall the
singletons would hide. The best few are then cross-validated by story: the UCI stories are split
in two halves (by a hash of the label), one setting is chosen on each half and scored on
the other. Prints JSON lines: each trial, the choice per fold with its held-out score,
and the best. The shipped defaults are reviewed constants taken from such a run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from typing import Any

from bench.dedup_eval import Headline, bcubed, cluster_uci, load_uci, seed_pair_joins, time_blind
from bench.real_groups import evaluate_real_groups
from monitor.core.dedup.features import DedupSettings

SPACE: dict[str, list[Any]] = {
    "threshold": [0.24, 0.26, 0.28, 0.3, 0.32, 0.35],
    "small_penalty": [0.0, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4],
    "anchor_alone": [False, True],
    "anchor_bonus": [0.1, 0.2, 0.3],
    "anchor_min": [0.15, 0.2, 0.25, 0.3],
    "anchor_zipf": [3.0, 3.5, 4.0],
    "anchor_share": [0.5, 0.7, 0.8],
    "anchor_within": [0.7, 0.9],
    "merge_threshold": [0.4, 0.45, 0.5, 0.55],
    "near_margin": [0.1, 0.15, 0.2],
    "time_penalty": [1.0, 2.0, 3.0],
    "bg_size": [2_000.0, 5_000.0, 20_000.0],
    "bg_words": [30.0, 100.0, 300.0],
}


def fold_of(story: str) -> int:
    return hashlib.sha256(story.encode()).digest()[0] & 1


def score(rows: list[Headline], settings: DedupSettings) -> dict[str, float]:
    timed = bcubed(cluster_uci(rows, settings), [h.story for h in rows])
    blind_rows = time_blind(rows)
    blind = bcubed(cluster_uci(blind_rows, settings), [h.story for h in blind_rows])
    return {"p_time": timed["precision"], "r_time": timed["recall"],
            "p_blind": blind["precision"], "r_blind": blind["recall"]}


def merit(s: dict[str, float]) -> float:
    """Above 0 when every target is met: the smaller recall margin; below, the
    largest precision shortfall."""
    short = min(s["p_time"] - 0.95, s["p_blind"] - 0.93,
                s.get("p_real", 1.0) - 0.97, s.get("r_real", 1.0) - 0.80,
                s.get("seed", 1.0) - 1.0)
    if short < 0:
        return -1.0 + short
    return min(s["r_time"] - 0.55, s["r_blind"] - 0.45,
               (s.get("r_real_multi", 1.0) - 0.70) / 2)


def _trial(args: tuple[dict[str, Any], list[Headline]]) -> dict[str, Any]:
    knobs, rows = args
    st = DedupSettings(**knobs)
    real = evaluate_real_groups(st)
    return {"knobs": knobs, "full": {**score(rows, st), "p_real": real["precision"],
                                     "r_real": real["recall"],
                                     "r_real_multi": real["recall_multi_item_groups"],
                                     "seed": float(seed_pair_joins(st))}}


def _folds(args: tuple[dict[str, Any], list[list[Headline]]]) -> list[dict[str, float]]:
    knobs, folds = args
    return [score(rows, DedupSettings(**knobs)) for rows in folds]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--top", type=int, default=12, help="trials cross-validated by story")
    a = ap.parse_args(argv)
    rows = load_uci()
    folds = [[h for h in rows if fold_of(h.story) == k] for k in (0, 1)]
    rnd = random.Random(a.seed)
    default = {k: v for k, v in asdict(DedupSettings()).items() if k in SPACE}
    trials = [default] + [{k: rnd.choice(v) for k, v in SPACE.items()}
                          for _ in range(a.trials)]
    with ProcessPoolExecutor(a.jobs) as pool:
        results = []
        for r in pool.map(_trial, [(t, rows) for t in trials]):
            results.append(r)
            print(json.dumps(r), flush=True)
        results.sort(key=lambda r: merit(r["full"]), reverse=True)
        top = results[: a.top]
        for r, f in zip(top, pool.map(_folds, [(r["knobs"], folds) for r in top]), strict=True):
            r["folds"] = f
    # two-fold cross-validation by story among the best: chosen on one half of the
    # stories, scored on the other
    for k in (0, 1):
        best = max(top, key=lambda r: merit(r["folds"][k]))
        print(json.dumps({"chosen_on_fold": k, "knobs": best["knobs"],
                          "fit": best["folds"][k], "held_out": best["folds"][1 - k]}))
    print(json.dumps({"best": top[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
