"""The work done in the parse pool, off the event loop, for one fetched body.

feedparser is the expensive part of ingest, and the daemon runs it in a process pool so
that it can use every core. The same worker also computes the per-story halves of the
next stages, which depend on nothing but the story itself:

* dedup features (normalised title, tokens, lead text): ``dedup.story_features``;
* the text half of rule matching: ``Matcher.prematch`` (which rules' term conditions
  hold); scope and corroboration, which need the story's cluster, stay with the
  pipeline.

The result is one ``PreparedStory(story, features, prematch)`` per entry, in feed order:
facts about the text only. Channels, severity, cooldown and digests are configuration,
decided once on the daemon's side (``route.plan``).

The caller hands over the matcher compiled from the rules ``job.rules_fingerprint``
names (a parse worker compiles and caches them itself: ``monitor.shell.parsepool``), or
none, and then no prematch is made. ``Prepared`` says which rules the prematches were
made with, and the daemon uses them only if those are still the rules in force. Results
are plain frozen dataclasses, cheap to pickle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from monitor.core.dedup.features import DedupSettings, Features, story_features
from monitor.core.model import FeedHints, Story
from monitor.core.rules.match import Matcher, Prematch


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
class PreparedStory:
    """One entry of the feed and the per-story work done on it off the loop."""

    story: Story
    features: Features | None = None  # None: no dedup settings, or its work was skipped
    # which rules' text conditions hold; None: not made (skipped, or no usable rules)
    prematch: Prematch | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Prepared:
    """What the parse pool hands back for one body."""

    stories: tuple[PreparedStory, ...] = ()  # one per entry, in feed order
    problem: str | None = None  # bozo / parse warning, as ``ParsedFeed.problem``
    failed: bool = False  # nothing usable came out (then ``problem`` says why)
    rules_fingerprint: str = ""  # the rules the prematches were made with; "" for none
    hints: FeedHints = field(default_factory=FeedHints)  # ttl, sy:*, cadence: the next poll


#: Told which entry the per-story work is on: (1-based position, entries, story), before
#: that story's work starts. The parse pool records it, so that a job abandoned at its
#: deadline can say which item it was stuck on.
Progress = Callable[[int, int, Story], None]


def prepare(job: Job, matcher: Matcher | None = None, progress: Progress | None = None
            ) -> Prepared:
    """Parse and normalise ``job.body``, then compute the per-story work. ``matcher`` must
    be compiled from the rules ``job.rules_fingerprint`` names; None: no prematch.
    ``progress`` is called before each entry's work (see ``Progress``)."""
    # imported here: feedparser is a tenth of a second to import, and a process that
    # has no body to parse (every feed answered 304) never pays for it
    from monitor.core.parse import parse_feed

    parsed = parse_feed(
        job.body, job.headers, feed=job.feed, feed_tags=job.feed_tags, url=job.url, now=job.now
    )
    if parsed.failed or not parsed.stories:
        return Prepared(problem=parsed.problem, failed=parsed.failed, hints=parsed.hints)
    skip = job.skip_ids
    dedup = job.dedup
    m = matcher if job.rules_fingerprint else None
    total = len(parsed.stories)

    def one(i: int, s: Story) -> PreparedStory:
        if s.id in skip:
            return PreparedStory(story=s)
        if progress is not None:
            progress(i, total, s)
        return PreparedStory(
            story=s,
            features=story_features(s, dedup) if dedup else None,
            prematch=m.prematch(s) if m is not None else None,
        )

    stories = tuple(one(i, s) for i, s in enumerate(parsed.stories, 1))
    return Prepared(
        stories=stories,
        problem=parsed.problem,
        rules_fingerprint=job.rules_fingerprint if m is not None else "",
        hints=parsed.hints,
    )
