"""The parse pool's work for one body (monitor.core.prepare), run in-process."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from monitor.core.dedup.features import DedupSettings, story_features
from monitor.core.prepare import Job, prepare
from monitor.core.rules.match import Matcher
from monitor.core.rules.model import compile_rules, load_rules
from tests.feeds import BACKLOG, rss, seed_item

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 2, 17, 12, 0, tzinfo=UTC)


def test_known_ids_skip_the_per_story_work(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    ruleset = load_rules(tmp_path / "rules", channels=None)
    body = rss([seed_item(), *BACKLOG], now=NOW)
    job = Job(body=body, headers={}, feed="a", feed_tags=(), url="https://a.example/rss",
              now=NOW, rules_path=str(tmp_path / "rules"),
              rules_fingerprint=ruleset.fingerprint, dedup=DedupSettings())
    full = prepare(job)
    ids = [s.id for s in full.parsed.stories]
    assert len(ids) == 4 and full.features is not None and full.prematch is not None
    assert all(f is not None for f in full.features)
    matcher: Matcher = compile_rules(ruleset)
    assert full.prematch[0] == matcher.prematch(full.parsed.stories[0])
    assert full.prematch[0]  # the seed story fires sanctions-deadline

    skipped = prepare(Job(**{**{f: getattr(job, f) for f in job.__slots__},
                             "skip_ids": frozenset(ids[1:])}))
    assert skipped.parsed == full.parsed
    assert skipped.features is not None and skipped.prematch is not None
    want = story_features(full.parsed.stories[0], DedupSettings())
    got = skipped.features[0]
    assert got is not None
    assert (got.norm, got.tokens, got.extra, got.text) == (want.norm, want.tokens, want.extra,
                                                           want.text)
    assert skipped.prematch[0] == full.prematch[0]
    assert skipped.features[1:] == (None, None, None)
    assert skipped.prematch[1:] == (None, None, None)
