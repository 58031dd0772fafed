"""The work done in the parse pool, off the event loop, for one fetched body.

feedparser is the expensive part of ingest, and the daemon runs it in a process pool so
that it can use every core. The same worker also computes the per-story halves of the
next stages, which depend on nothing but the story itself:

* dedup features (normalised title, tokens, lead text): ``dedup.story_features``;
* the text half of rule matching: ``Matcher.prematch`` (which rules' term conditions
  hold); scope and corroboration, which need the story's cluster, stay with the
  pipeline.

A worker compiles the rules itself, from the rules directory, and uses them only when
their fingerprint equals the one the daemon is running (``RuleSet.fingerprint``); if the
files changed in between, it leaves matching to the daemon. Results are plain frozen
dataclasses, cheap to pickle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from monitor.core.dedup.features import DedupSettings, Features, story_features
from monitor.core.model import ParsedFeed
from monitor.core.parse import parse_feed
from monitor.core.rules.match import Matcher, Prematch
from monitor.core.rules.model import compile_rules, load_rules
from monitor.errors import MonitorError


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    body: bytes
    headers: Mapping[str, str]
    feed: str
    feed_tags: tuple[str, ...]
    url: str
    now: datetime
    rules_path: str | None = None  # None: do not prematch
    rules_fingerprint: str = ""
    dedup: DedupSettings | None = None  # None: no dedup features
    # ids the feed carried at its last poll: almost always known, so their per-story work
    # is skipped (the pipeline does it itself for the rare one that turns out new)
    skip_ids: frozenset[str] = frozenset()


@dataclass(frozen=True, kw_only=True, slots=True)
class Prepared:
    parsed: ParsedFeed
    # aligned with parsed.stories; None for a story whose work was skipped
    features: tuple[Features | None, ...] | None = None
    prematch: tuple[Prematch | None, ...] | None = None
    rules_fingerprint: str = ""  # the rules the prematch was made with


_MATCHERS: dict[str, Matcher] = {}  # this worker's compiled rules, by fingerprint


def _matcher(path: str, fingerprint: str) -> Matcher | None:
    m = _MATCHERS.get(fingerprint)
    if m is None:
        try:
            ruleset = load_rules(Path(path), channels=None)
        except MonitorError:
            return None  # being edited: the daemon matches itself
        if ruleset.fingerprint != fingerprint:
            return None
        m = compile_rules(ruleset)
        _MATCHERS.clear()
        _MATCHERS[fingerprint] = m
    return m


def prepare(job: Job) -> Prepared:
    """Parse and normalise ``job.body``, then compute the per-story work."""
    parsed = parse_feed(
        job.body, job.headers, feed=job.feed, feed_tags=job.feed_tags, url=job.url, now=job.now
    )
    if parsed.failed or not parsed.stories:
        return Prepared(parsed=parsed)
    skip = job.skip_ids
    dedup = job.dedup
    features = (
        tuple(None if s.id in skip else story_features(s, dedup) for s in parsed.stories)
        if dedup else None
    )
    prematch = None
    if job.rules_path and job.rules_fingerprint:
        m = _matcher(job.rules_path, job.rules_fingerprint)
        if m is not None:
            prematch = tuple(None if s.id in skip else m.prematch(s) for s in parsed.stories)
    return Prepared(
        parsed=parsed,
        features=features,
        prematch=prematch,
        rules_fingerprint=job.rules_fingerprint if prematch is not None else "",
    )
