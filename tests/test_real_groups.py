"""Integrity of tests/data/real_feeds_groups.jsonl, the hand-labelled "same event, different
wording" groups of the 2026-02-17 real-feed snapshot (see tests/data/REAL_FEEDS_GROUPS.md).

Only the data file is checked here, plus that the evaluation runs; quality floors of the
clustering engine on this set belong with the engine's own tests."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest

from bench.real_groups import (
    NEAR_KINDS,
    REAL_GROUPS,
    SUMMARY_CHARS,
    evaluate_real_groups,
    load_near_links,
    load_real_groups,
)

MIN_MULTI_ITEM_GROUPS = 40
MIN_NEAR_LINKS = 15
FIELDS = {"id", "feed", "title", "summary", "link", "published", "group"}
OPTIONAL = {"near", "note"}
ID = re.compile(r"(?P<feed>[a-z0-9-]+):(?P<n>0|[1-9][0-9]*)")
GROUP = re.compile(r"g-[a-z0-9]+(?:-[a-z0-9]+)*")


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    out = []
    with REAL_GROUPS.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            assert line.endswith("\n") and line.strip(), f"line {i} is blank or unterminated"
            rec = json.loads(line)
            assert isinstance(rec, dict), f"line {i}"
            out.append(rec)
    assert len(out) > 1000
    return out


@pytest.fixture(scope="module")
def groups(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_group: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_group[r["group"]].append(r)
    return by_group


def test_every_line_is_a_valid_item(records: list[dict[str, Any]]) -> None:
    for r in records:
        keys = set(r)
        assert keys >= FIELDS and keys <= FIELDS | OPTIONAL, r.get("id")
        for k in FIELDS:
            assert isinstance(r[k], str), (r["id"], k)
        m = ID.fullmatch(r["id"])
        assert m and m["feed"] == r["feed"], r["id"]
        assert r["title"].strip() and r["title"] == r["title"].strip(), r["id"]
        assert len(r["summary"]) <= SUMMARY_CHARS, r["id"]
        assert r["link"].startswith(("https://", "http://")), r["id"]
        when = datetime.strptime(r["published"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert datetime(2020, 1, 1, tzinfo=UTC) < when < datetime(2026, 3, 1, tzinfo=UTC)
        assert GROUP.fullmatch(r["group"]), r["id"]


def test_ids_unique_and_sorted_by_feed_then_position(records: list[dict[str, Any]]) -> None:
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))
    keys = [(r["feed"], int(r["id"].rsplit(":", 1)[1])) for r in records]
    assert keys == sorted(keys)
    # positions run 0..k-1 in every feed: the file holds each feed whole
    per_feed = Counter(f for f, _ in keys)
    assert {(f, n) for f, n in keys} == {(f, n) for f, k in per_feed.items() for n in range(k)}
    assert len(per_feed) == 25


def test_near_links_point_at_other_existing_groups(
    records: list[dict[str, Any]], groups: dict[str, list[dict[str, Any]]]
) -> None:
    for r in records:
        near = r.get("near")
        if near is None:
            continue
        assert isinstance(near, list) and near, r["id"]
        targets = [n["group"] for n in near]
        assert len(targets) == len(set(targets)), r["id"]
        for n in near:
            assert set(n) == {"group", "kind"}, r["id"]
            assert n["kind"] in NEAR_KINDS, r["id"]
            assert n["group"] in groups, (r["id"], n["group"])
            assert n["group"] != r["group"], r["id"]


def test_members_of_a_group_agree_on_note_and_near(
    groups: dict[str, list[dict[str, Any]]],
) -> None:
    for gid, members in groups.items():
        notes = {m.get("note") for m in members}
        nears = {json.dumps(m.get("near"), sort_keys=True) for m in members}
        assert len(notes) == 1 and len(nears) == 1, gid
        if len(members) > 1:
            note = members[0].get("note")
            assert isinstance(note, str) and note.strip(), f"{gid}: multi-item group without note"
        else:
            assert "note" not in members[0], gid


def test_enough_multi_item_groups_and_near_links(
    groups: dict[str, list[dict[str, Any]]],
) -> None:
    multi = [g for g, m in groups.items() if len(m) > 1]
    assert len(multi) >= MIN_MULTI_ITEM_GROUPS
    # a multi-item group reports one happening from several items, nearly always several feeds
    assert sum(1 for g in multi if len({m["feed"] for m in groups[g]}) > 1) >= len(multi) - 3
    links = load_near_links()
    assert len(links) >= MIN_NEAR_LINKS
    assert {n.kind for n in links} == set(NEAR_KINDS)


def test_loader_and_evaluation_run(records: list[dict[str, Any]]) -> None:
    rows = load_real_groups()
    assert len(rows) == len(records)
    assert [h.ts for h in rows] == sorted(h.ts for h in rows)
    assert {h.story for h in rows} == {r["group"] for r in records}
    report = evaluate_real_groups()
    assert report["items"] == len(records)
    for k in ("precision", "recall", "f1"):
        assert 0.0 <= report[k] <= 1.0
    assert 0 <= report["near_links_merged"] <= report["near_links"]
