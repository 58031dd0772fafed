"""``poll_feed()``: the one place that strings the stages together for one feed.

fetch → (unchanged? stop) → parse+normalise (executor) → known? → dedup → match → route
→ ``store.save_poll`` (feed state + stories + clusters + outbox in one transaction).

Expected failures (timeouts, HTTP errors, broken XML) are recorded on the feed and
returned in the ``PollOutcome``; they are never raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import BrokenExecutor, Executor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from monitor.config import Config
from monitor.core.dedup.features import Features
from monitor.core.dedup.index import New, SameStory, Seen, StoryIndex, detect_guid_churn
from monitor.core.model import (
    ClusterInfo,
    Delivery,
    FeedSpec,
    FeedState,
    Fetched,
    FetchFailed,
    NotModified,
    Story,
)
from monitor.core.prepare import Job, Prepared, prepare
from monitor.core.route import UPDATE_MILESTONES, ClusterFacts, route, updates
from monitor.core.rules.match import Matcher, Prematch
from monitor.core.rules.model import RuleSet
from monitor.core.schedule import next_cron, next_poll
from monitor.log import get_logger
from monitor.metrics import Metrics
from monitor.shell.fetch import Fetcher
from monitor.store.base import Store, StoredStory
from monitor.store.groupcommit import FeedStateWriter

log = get_logger(__name__)

# A story is "news" only while it is recent: an item published longer ago than this
# (a feed re-surfacing its archive) is remembered but never alerted on.
MAX_ALERT_AGE = timedelta(days=3)
ALERT_CACHE = 200_000  # clusters whose first alerts are kept in memory


@dataclass
class ActiveRules:
    """The rule set in force; swapped atomically on reload (the old one keeps running
    when a new one is invalid, and ``error`` says why)."""

    ruleset: RuleSet
    matcher: Matcher
    loaded_at: datetime
    error: str | None = None
    error_at: datetime | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PollOutcome:
    """What one poll did: for logs, ``monitor once --json`` and tests."""

    feed: str
    result: str  # "new" | "unchanged" | "not-modified" | "failed" | "gone" | "baseline"
    status: int | None = None
    stories: int = 0  # entries in the feed
    new: int = 0  # stories never seen before
    alerts: int = 0  # deliveries queued
    error: str | None = None
    problem: str | None = None
    ms: float = 0.0
    deliveries: tuple[Delivery, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, object]:
        return {
            "feed": self.feed,
            "result": self.result,
            "status": self.status,
            "stories": self.stories,
            "new": self.new,
            "alerts": self.alerts,
            "error": self.error,
            "problem": self.problem,
            "ms": round(self.ms, 1),
        }


PrepareFn = Callable[[Job], Awaitable[Prepared]]


class ParsePool:
    """Runs ``prepare`` (parse, normalise, per-story dedup and rule work) off the event
    loop in an executor (threads or processes). A process pool whose worker died (OOM
    killer, a crash in a C extension) is broken for good: it is replaced, once per
    breakage, and the job retried, so one bad feed cannot stop every feed."""

    def __init__(self, make: Callable[[], Executor]) -> None:
        self._make = make
        self._executor = make()

    async def __call__(self, job: Job) -> Prepared:
        loop = asyncio.get_running_loop()
        executor = self._executor
        try:
            return await loop.run_in_executor(executor, prepare, job)
        except BrokenExecutor:
            if self._executor is executor:  # the first to notice replaces it
                log.error("parse_pool.broken", feed=job.feed, note="a worker died; restarting")
                self._executor = self._make()
                executor.shutdown(wait=False, cancel_futures=True)
            return await loop.run_in_executor(self._executor, prepare, job)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class Pipeline:
    """The stages, wired to their I/O. One per daemon; ``poll_feed`` is safe to run
    for several feeds concurrently (the index is only touched between awaits)."""

    config: Config
    store: Store
    fetcher: Fetcher
    index: StoryIndex
    rules: ActiveRules
    prepare: PrepareFn
    metrics: Metrics
    clock: Callable[[], datetime]
    on_queued: Callable[[], None] = lambda: None
    _alerted: OrderedDict[str, list[Delivery]] = field(default_factory=OrderedDict)
    # feed states of polls that found nothing new (or failed), written in groups
    states: FeedStateWriter = field(init=False)
    # the story ids each feed carried at its last parsed poll (see Job.skip_ids)
    _last_ids: dict[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.states = FeedStateWriter(self.store)

    async def poll_feed(self, state: FeedState, spec: FeedSpec) -> PollOutcome:
        t0 = time.perf_counter()
        result = await self.fetcher.fetch(
            state.url, etag=state.etag, last_modified=state.last_modified
        )
        now = self.clock()
        fc = self.config.fetch
        jitter = self.config.defaults.jitter
        url = state.url
        if result.permanent_redirect and result.permanent_redirect != state.url:
            log.info("feed.moved", feed=spec.name, old=state.url, new=result.permanent_redirect)
            url = result.permanent_redirect

        def ms() -> float:
            return (time.perf_counter() - t0) * 1000

        if isinstance(result, FetchFailed):
            return await self._failed(state, spec, now, url, result.reason, result.status,
                                      retry_after=result.retry_after, gone=result.gone, ms=ms())

        next_at = next_poll(
            now=now, interval=spec.interval, failures=0, retry_after=None,
            backoff_max=fc.backoff_max, jitter=jitter, key=spec.name,
        )
        if isinstance(result, NotModified):
            await self.states.save(_succeeded(
                state, url=url, now=now, next_at=next_at, status=304,
                etag=result.etag or state.etag,
                last_modified=result.last_modified or state.last_modified,
                body_hash=state.body_hash,
            ))
            self.metrics.polls.labels(spec.name, "not-modified").inc()
            log.debug("feed.polled", feed=spec.name, status=304, new=0, ms=ms())
            return PollOutcome(feed=spec.name, result="not-modified", status=304, ms=ms())

        assert isinstance(result, Fetched)
        body_hash = hashlib.sha256(result.body).hexdigest()
        ok_state = _succeeded(
            state, url=url, now=now, next_at=next_at, status=result.status,
            etag=result.etag, last_modified=result.last_modified, body_hash=body_hash,
        )
        if body_hash == state.body_hash and state.baselined:
            await self.states.save(ok_state)
            self.metrics.polls.labels(spec.name, "unchanged").inc()
            log.debug("feed.polled", feed=spec.name, status=result.status, new=0,
                      unchanged=True, ms=ms())
            return PollOutcome(feed=spec.name, result="unchanged", status=result.status, ms=ms())

        prepared = await self.prepare(Job(
            body=result.body,
            headers=result.headers,
            feed=spec.name,
            feed_tags=spec.tags,
            url=result.final_url,
            now=now,
            rules_path=str(self.config.rules_path),
            rules_fingerprint=self.rules.ruleset.fingerprint,
            dedup=self.index.settings,
            skip_ids=self._last_ids.get(spec.name, frozenset()),
        ))
        parsed = prepared.parsed
        if parsed.failed:
            return await self._failed(state, spec, now, url, parsed.problem or "unparseable feed",
                                      result.status, retry_after=None, gone=False, ms=ms())
        ok_state = replace(ok_state, problem=parsed.problem)
        self._last_ids[spec.name] = frozenset(s.id for s in parsed.stories)
        return await self._ingest(ok_state, spec, parsed.stories, now, result.status, ms,
                                  prepared)

    async def _ingest(
        self,
        state: FeedState,
        spec: FeedSpec,
        stories: Sequence[Story],
        now: datetime,
        status: int | None,
        ms: Callable[[], float],
        prepared: Prepared | None = None,
    ) -> PollOutcome:
        # unique ids within the batch, oldest first so clusters form in time order
        uniq: dict[str, Story] = {}
        for s in stories:
            uniq.setdefault(s.id, s)
        batch = sorted(uniq.values(), key=lambda s: (s.published, s.id))
        # two questions, not one: an id that happens to equal a stored link is still new
        known_ids = await self.store.known([s.id for s in batch], [])
        links = [s.link for s in batch if s.link and s.id not in known_ids]
        known_links = await self.store.known([], links) if links else set()
        # a known id is a story we already have; a known link under a new id is the same
        # story from another source (or re-published): it joins its cluster as a source
        fresh = [s for s in batch if s.id not in known_ids]

        baseline = not state.baselined and not spec.alert_on_first_poll
        churn = False
        if fresh and not baseline and state.baselined:
            churn = detect_guid_churn(fresh, self.index.known_under_other_id)
            if churn:
                state = replace(
                    state,
                    problem=f"GUID churn: {len(fresh)} of {len(batch)} items came back with new "
                    "ids but known titles and links; they were recorded without alerting",
                )
                log.warning("feed.guid_churn", feed=spec.name, fresh=len(fresh), total=len(batch))

        # the per-story work the parse pool already did, by story id
        feats: dict[str, Features | None] = {}
        pre: dict[str, Prematch | None] = {}
        if prepared is not None:
            ids = [s.id for s in prepared.parsed.stories]
            if prepared.features is not None:
                feats = dict(zip(ids, prepared.features, strict=True))
            if (prepared.prematch is not None
                    and prepared.rules_fingerprint == self.rules.ruleset.fingerprint):
                pre = dict(zip(ids, prepared.prematch, strict=True))
        to_store: list[StoredStory] = []
        deliveries: list[Delivery] = []
        clusters: dict[str, ClusterInfo] = {}
        matcher = self.rules.matcher
        enabled = {r.name for r in self.rules.ruleset.rules if r.enabled}
        outcomes: Counter[str] = Counter()
        needs_times = bool(matcher.rules_needing_sources())
        fired: Counter[str] = Counter()
        for story in fresh:
            decision = self.index.add(story, now=now, features=feats.get(story.id))
            cluster = decision.cluster
            to_store.append(StoredStory(story=story, cluster=cluster))
            sources = self.index.cluster_sources(cluster)
            clusters[cluster] = self._cluster_info(cluster, story, sources, now)
            if isinstance(decision, New):
                outcomes["new"] += 1
            elif isinstance(decision, SameStory):
                outcomes["same-story"] += 1
                log.debug("story.clustered", feed=spec.name, story=story.id, cluster=cluster,
                          score=decision.score, matched_with=decision.matched_with)
            elif isinstance(decision, Seen):
                outcomes["repeat"] += 1
            if baseline or churn or story.published < now - MAX_ALERT_AGE:
                continue
            if isinstance(decision, New) and story.link and story.link in known_links:
                continue  # an old story (its link is stored) that left the dedup window
            matches = matcher.match(story, sources=len(sources), source_names=sources,
                                    prematched=pre.get(story.id),
                                    source_seen=self.index.cluster_source_times(cluster)
                                    if needs_times else None)
            for m in matches:
                fired[m.rule] += 1
            facts = ClusterFacts(cluster=cluster, sources=sources)
            if isinstance(decision, New):
                self._remember(cluster, [])
                deliveries += route(story, matches, facts, now=now)
                continue
            if not matches and len(sources) not in UPDATE_MILESTONES:
                continue  # nothing to alert and no update due: no need to look
            # a member of a known cluster: first alerts only for rules that had not fired
            # on it (e.g. min_sources just reached), updates for those that had
            earlier = [d for d in await self._cluster_alerts(cluster)
                       if d.alert.match.rule in enabled]
            last: dict[tuple[str, str], datetime] = {}
            for d in earlier:
                k = (d.alert.match.rule, d.channel)
                last[k] = max(last.get(k, d.created), d.created)
            deliveries += route(story, matches, facts, now=now, last_alerts=last)
            firsts = {d.alert.match.rule: d.alert for d in earlier}
            # updates thread under the rule's very first alert (oldest first): its headline
            # is their subject, whichever later alert (a cooldown's) they count from
            titles: dict[str, str] = {}
            for d in earlier:
                titles.setdefault(d.alert.match.rule, d.alert.first_title or d.alert.story.title)
            deliveries += updates(
                story, [replace(a, first_title=titles[r]) for r, a in firsts.items()], facts,
                now=now)

        if any(d.alert.match.digest for d in deliveries):
            deliveries = [self._digested(d, now) for d in deliveries]
        state = replace(
            state,
            baselined=True,
            stories_seen=state.stories_seen + len(fresh),
        )
        # the index's sources as of now: polls of other feeds may have added some while
        # this one awaited the store
        fresh_clusters = [replace(c, sources=self.index.cluster_sources(c.id) or c.sources)
                          for c in clusters.values()]
        inserted = await self.store.save_poll(state, to_store, deliveries, fresh_clusters)
        for d in inserted:
            if d.parent_key is None:
                self._remember(d.alert.cluster, [d])
        result = "baseline" if baseline else "new" if fresh else "unchanged"
        self.metrics.polls.labels(spec.name, result).inc()
        for outcome, n in outcomes.items():
            self.metrics.stories.labels(spec.name, outcome).inc(n)
        for rule, n in fired.items():
            self.metrics.matches.labels(rule).inc(n)
        self.metrics.clusters.set(len(self.index))
        self.metrics.feed_failures.labels(spec.name).set(0)
        log.info(
            "feed.polled", feed=spec.name, status=status, entries=len(batch), new=len(fresh),
            alerts=len(inserted), baseline=baseline, problem=state.problem, ms=ms(),
        )
        for d in inserted:
            log.info("alert.queued", feed=spec.name, rule=d.alert.match.rule, channel=d.channel,
                     story=d.alert.story.id, cluster=d.alert.cluster, update=d.alert.update,
                     title=d.alert.story.title[:120])
        if inserted:
            self.on_queued()
        return PollOutcome(
            feed=spec.name, result=result, status=status, stories=len(batch), new=len(fresh),
            alerts=len(inserted), problem=state.problem, ms=ms(), deliveries=tuple(inserted),
        )

    @staticmethod
    def _digested(d: Delivery, now: datetime) -> Delivery:
        """A digest rule's alert waits in the outbox for the digest's next fire time."""
        cron = d.alert.match.digest
        if not cron:
            return d
        return replace(d, next_attempt=next_cron(cron, now) or now)

    async def _cluster_alerts(self, cluster: str) -> list[Delivery]:
        """The first alerts of a cluster: from memory for clusters this process has seen,
        from the store once for the others. A stale answer (another instance alerted
        meanwhile) cannot cause a repeat: the store ignores a delivery whose key exists."""
        known = self._alerted.get(cluster)
        if known is None:
            known = await self.store.cluster_alerts(cluster)
            self._remember(cluster, known)
            return known
        self._alerted.move_to_end(cluster)
        return known

    def forget_alerts(self, clusters: Iterable[str]) -> None:
        """Another instance stored stories (and maybe alerts) in these clusters: the next
        look at their first alerts reads the store again."""
        for cluster in clusters:
            self._alerted.pop(cluster, None)

    def _remember(self, cluster: str, deliveries: list[Delivery]) -> None:
        have = self._alerted.setdefault(cluster, [])
        have.extend(deliveries)
        self._alerted.move_to_end(cluster)
        while len(self._alerted) > ALERT_CACHE:
            self._alerted.popitem(last=False)

    def _cluster_info(
        self, cluster: str, story: Story, sources: tuple[str, ...], now: datetime
    ) -> ClusterInfo:
        return ClusterInfo(
            id=cluster,
            first_story=cluster,
            title=story.title,  # kept from the insert: the first story that got stored
            first_seen=now,
            last_seen=now,
            sources=sources,
        )

    async def _failed(
        self,
        state: FeedState,
        spec: FeedSpec,
        now: datetime,
        url: str,
        reason: str,
        status: int | None,
        *,
        retry_after: float | None,
        gone: bool,
        ms: float,
    ) -> PollOutcome:
        failures = state.failures + 1
        new = replace(
            state,
            url=url,
            last_polled=now,
            failures=failures,
            last_status=status,
            last_error=reason,
            gone=gone,
            polls=state.polls + 1,
            next_poll=next_poll(
                now=now, interval=spec.interval, failures=failures, retry_after=retry_after,
                backoff_max=self.config.fetch.backoff_max, jitter=self.config.defaults.jitter,
                key=spec.name,
            ),
        )
        await self.states.save(new)
        result = "gone" if gone else "failed"
        self.metrics.polls.labels(spec.name, result).inc()
        self.metrics.feed_failures.labels(spec.name).set(failures)
        # one line per failure streak change, not per retry: first failure, a new reason,
        # and then every 10th
        if failures == 1 or reason != state.last_error or failures % 10 == 0 or gone:
            log.warning(
                "feed.gone" if gone else "feed.failed", feed=spec.name, status=status,
                error=reason, failures=failures, next_poll=new.next_poll.isoformat()
                if new.next_poll else None, ms=ms,
            )
        return PollOutcome(feed=spec.name, result=result, status=status, error=reason, ms=ms)


def _succeeded(
    state: FeedState,
    *,
    url: str,
    now: datetime,
    next_at: datetime,
    status: int,
    etag: str | None,
    last_modified: str | None,
    body_hash: str | None,
) -> FeedState:
    """The state a successful poll (200 or 304) writes back, in one ``replace``: this is
    the hot path of the polls that change nothing."""
    return replace(
        state, url=url, last_polled=now, last_success=now, failures=0, last_error=None,
        gone=False, polls=state.polls + 1, next_poll=next_at, last_status=status,
        etag=etag, last_modified=last_modified, body_hash=body_hash,
    )
