"""The parse pool's work for one body (monitor.shell.parsepool.run_job, then
monitor.core.prepare), run in-process."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from monitor.core.dedup.features import DedupSettings, story_features
from monitor.core.prepare import Job, prepare
from monitor.core.rules.match import Matcher, compile_rules
from monitor.shell.parsepool import run_job
from monitor.shell.rulefiles import load_rules
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
    full = run_job(job)
    ids = [p.story.id for p in full.stories]
    assert len(ids) == 4 and full.rules_fingerprint == ruleset.fingerprint
    assert all(p.features is not None and p.prematch is not None for p in full.stories)
    matcher: Matcher = compile_rules(ruleset)
    assert full.stories[0].prematch == matcher.prematch(full.stories[0].story)
    pre = full.stories[0].prematch
    assert pre is not None and pre.texts  # the seed story fires sanctions-deadline

    skipped = run_job(Job(**{**{f: getattr(job, f) for f in job.__slots__},
                             "skip_ids": frozenset(ids[1:])}))
    assert [p.story for p in skipped.stories] == [p.story for p in full.stories]
    assert skipped.rules_fingerprint == full.rules_fingerprint
    assert (skipped.problem, skipped.failed) == (full.problem, full.failed)
    want = story_features(full.stories[0].story, DedupSettings())
    got = skipped.stories[0].features
    assert got is not None
    assert (got.norm, got.tokens, got.lead, got.case) == (want.norm, want.tokens, want.lead,
                                                           want.case)
    assert skipped.stories[0].prematch == full.stories[0].prematch
    assert [p.features for p in skipped.stories[1:]] == [None, None, None]
    assert [p.prematch for p in skipped.stories[1:]] == [None, None, None]


def test_rules_other_than_the_daemons_make_no_prematch(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    body = rss([seed_item(), *BACKLOG], now=NOW)
    job = Job(body=body, headers={}, feed="a", feed_tags=(), url="https://a.example/rss",
              now=NOW, rules_path=str(tmp_path / "rules"), rules_fingerprint="not-these",
              dedup=DedupSettings())
    out = run_job(job)
    assert len(out.stories) == 4 and out.rules_fingerprint == ""
    assert all(p.prematch is None and p.features is not None for p in out.stories)


def test_an_unparseable_body_prepares_no_story() -> None:
    job = Job(body=b"this is not a feed at all <<<", headers={}, feed="a", feed_tags=(),
              url="https://a.example/rss", now=NOW, dedup=DedupSettings())
    out = prepare(job)
    assert out.failed and out.problem and out.stories == ()


def test_prepare_makes_no_prematch_without_a_matcher(tmp_path: Path) -> None:
    """The pure stage prematches only with the matcher it is given."""
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    ruleset = load_rules(tmp_path / "rules", channels=None)
    job = Job(body=rss([seed_item()], now=NOW), headers={}, feed="a", feed_tags=(),
              url="https://a.example/rss", now=NOW, rules_fingerprint=ruleset.fingerprint)
    bare = prepare(job)
    assert bare.rules_fingerprint == "" and [p.prematch for p in bare.stories] == [None]
    given = prepare(job, compile_rules(ruleset))
    pre = given.stories[0].prematch
    assert given.rules_fingerprint == ruleset.fingerprint and pre is not None and pre.texts
