"""``poll_feed()``: the one place that strings the stages together for one feed.

fetch → (unchanged? stop) → prepare (executor: parse, normalise, per-story work) → known?
→ dedup → match → ``route.plan`` → ``store.save_poll`` (feed state + stories + clusters +
outbox in one transaction).

The pipeline gathers what the pure stages need (store reads, the dedup index, the cache of
clusters' alerts), calls them, and acts on their answers: saves, logs, metrics. What to
alert, where and when is ``route.plan``'s to decide.

Expected failures (timeouts, HTTP errors, broken XML) are recorded on the feed and
returned in the ``PollOutcome``; they are never raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from monitor.config import Config, SlackChannel
from monitor.core.dedup.index import (
    Decision,
    New,
    SameStory,
    Seen,
    StoryIndex,
    detect_guid_churn,
)
from monitor.core.feedhealth import is_operational, remember_news
from monitor.core.model import (
    ClusterInfo,
    Delivery,
    FeedHints,
    FeedSpec,
    FeedState,
    Fetched,
    FetchFailed,
    NotModified,
    Story,
)
from monitor.core.prepare import Job, Prepared, PreparedStory
from monitor.core.route import (
    Candidate,
    ClusterFacts,
    is_baseline,
    needs_earlier,
    plan,
    schedule_groups,
    silenced,
)
from monitor.core.rules.match import Matcher, RegexSkipped
from monitor.core.rules.model import RuleSet
from monitor.core.schedule import (
    PollDecision,
    first_anchor,
    http_freshness,
    next_poll,
    poll_interval,
    timeout_backoff,
)
from monitor.core.streaks import is_news
from monitor.log import get_logger
from monitor.metrics import Metrics
from monitor.redact import without_userinfo
from monitor.shell import ops
from monitor.shell.fetch import Fetcher
from monitor.shell.parsepool import JobAbandoned, JobTimedOut
from monitor.store.base import PollSave, Store, StoredStory
from monitor.store.groupcommit import FeedStateWriter, PollWriter

log = get_logger(__name__)

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
    # new items published more than the feed's max_age ago: recorded, not alerted on
    stale: int = 0
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
            "stale": self.stale,
            "ms": round(self.ms, 1),
        }


PrepareFn = Callable[[Job], Awaitable[Prepared]]


@dataclass(kw_only=True, slots=True)
class _Work:
    """What dedup and matching made of one poll's new stories, for ``plan`` and the save."""

    enabled: frozenset[str]  # the rules in force when the stories were matched
    to_store: list[StoredStory] = field(default_factory=list)
    clusters: dict[str, ClusterInfo] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)  # the stories that may alert
    outcomes: Counter[str] = field(default_factory=Counter)  # dedup decisions, for metrics
    fired: Counter[str] = field(default_factory=Counter)  # matches per rule, for metrics
    merges: list[tuple[str, str]] = field(default_factory=list)  # (absorbed, survivor)
    stale: int = 0  # new stories published more than the feed's max_age ago
    # publication times of the stories that count as the feed's news (its cadence)
    news: list[datetime] = field(default_factory=list)


ROUND_MAX = 2  # a dedup round is decided within this many settles of its first poll


@dataclass(slots=True)
class _Ticket:
    """One poll's way to the dedup step (see ``Pipeline._arrive``)."""

    arrived: bool = False


_TICKET: ContextVar[_Ticket | None] = ContextVar("monitor_dedup_ticket", default=None)


@dataclass(slots=True)
class _Round:
    """The new stories of the polls that reached dedup within ``Pipeline.settle`` of one
    another: decided together, in publication order, as soon as no other poll is on its
    way to dedup, else once ``settle`` passes without a new one (and at the latest
    ``ROUND_MAX`` settles after the first)."""

    entries: list[tuple[PreparedStory, datetime, bool]]  # (story, its poll's now, quick)
    done: asyncio.Future[dict[tuple[str, str], Decision]]
    last_call: float  # loop time by which the round is decided, at the latest
    timer: asyncio.TimerHandle | None = None


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
    # awaited before the index is first used: it is loaded then (``dedupstate.py``)
    index_ready: Callable[[], Awaitable[object]] | None = None
    settle: float = 0.0  # seconds a poll waits for others to decide together (dedup.settle)
    _round: _Round | None = None
    _on_way: int = 0  # polls started that have not reached the dedup step yet
    _alerted: OrderedDict[str, list[Delivery]] = field(default_factory=OrderedDict)
    # clusters the index merged whose merge the store does not have yet: absorbed -> survivor
    # (saved with the next poll's transaction; until then their alerts are looked up too)
    _absorbed: dict[str, str] = field(default_factory=dict)
    # absorbed clusters whose merge a save in flight carries: the others' saves leave it
    # out (a failed save leaves it in ``_absorbed`` for the next one)
    _merging: set[str] = field(default_factory=set)
    # feed states of polls that found nothing new (or failed), written in groups
    states: FeedStateWriter = field(init=False)
    # baseline polls (no deliveries, no merges: a fresh instance's first pass), written in
    # groups
    baselines: PollWriter = field(init=False)
    # the story ids each feed carried at its last parsed poll (see Job.skip_ids)
    _last_ids: dict[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.states = FeedStateWriter(self.store)
        self.baselines = PollWriter(self.store)

    async def poll_feed(self, state: FeedState, spec: FeedSpec) -> PollOutcome:
        """Fetch, parse, dedup, match, route and save one feed's poll."""
        ticket = _Ticket()
        token = _TICKET.set(ticket)
        self._on_way += 1
        try:
            return await self._poll_feed(state, spec)
        finally:
            _TICKET.reset(token)
            self._arrive(ticket)

    def _arrive(self, ticket: _Ticket) -> None:
        """A poll reached the dedup step, or ended without: once no poll is on its way
        there, the waiting round is decided at once."""
        if ticket.arrived:
            return
        ticket.arrived = True
        self._on_way -= 1
        r = self._round
        if r is not None and self._on_way == 0:
            if r.timer is not None:
                r.timer.cancel()
            self._flush(r)

    async def _poll_feed(self, state: FeedState, spec: FeedSpec) -> PollOutcome:
        t0 = time.perf_counter()
        result = await self.fetcher.fetch(
            state.url, etag=state.etag, last_modified=state.last_modified
        )
        now = self.clock()
        fc = self.config.fetch
        jitter = self.config.defaults.jitter
        url = state.url
        if result.permanent_redirect and result.permanent_redirect != state.url:
            # the new URL is kept to fetch; only its shown form is logged
            log.info("feed.moved", feed=spec.name, old=self.config.display(state.url),
                     new=self.config.display(result.permanent_redirect))
            url = result.permanent_redirect

        def ms() -> float:
            return (time.perf_counter() - t0) * 1000

        if isinstance(result, FetchFailed):
            return await self._failed(state, spec, now, url, result.reason, result.status,
                                      retry_after=result.retry_after, gone=result.gone, ms=ms(),
                                      kind=result.kind)

        # the feed's own hints as last parsed (a 304 or an unchanged body has no new ones)
        # and this response's freshness decide the next poll (schedule.poll_interval)
        freshness = http_freshness(result.headers, now=now)
        decision = _decide(state, spec, now, freshness)
        next_at = next_poll(
            now=now, interval=decision.delay, failures=0, retry_after=None,
            backoff_max=fc.backoff_max, jitter=jitter, key=spec.name, floor=decision.floor,
            # counted from when it was due: it keeps its place
            due=_anchor(state, spec.name, decision.delay),
        )
        if isinstance(result, NotModified):
            _recovered(state, spec, now)
            self._ok(spec, now)
            new = _succeeded(
                state, url=url, now=now, next_at=next_at, decision=decision, status=304,
                etag=result.etag or state.etag,
                last_modified=result.last_modified or state.last_modified,
                body_hash=state.body_hash,
            )
            await self._save_state(*ops.review(self.config, new, now))
            self.metrics.polls.labels(spec.name, "not-modified").inc()
            if log.debugging:  # the most frequent poll: its line's fields only when shown
                log.debug("feed.polled", feed=spec.name, status=304, new=0, ms=ms(),
                          **_schedule_fields(new, now))
            return PollOutcome(feed=spec.name, result="not-modified", status=304, ms=ms())

        assert isinstance(result, Fetched)
        self.metrics.fetched_bytes.labels(spec.name).inc(len(result.body))
        body_hash = hashlib.sha256(result.body).hexdigest()
        ok_state = _succeeded(
            state, url=url, now=now, next_at=next_at, decision=decision, status=result.status,
            etag=result.etag, last_modified=result.last_modified, body_hash=body_hash,
        )
        if body_hash == state.body_hash and state.baselined:
            _recovered(state, spec, now)
            self._ok(spec, now)
            await self._save_state(*ops.review(self.config, ok_state, now))
            self.metrics.polls.labels(spec.name, "unchanged").inc()
            log.debug("feed.polled", feed=spec.name, status=result.status, new=0,
                      unchanged=True, ms=ms(), **_schedule_fields(ok_state, now))
            return PollOutcome(feed=spec.name, result="unchanged", status=result.status, ms=ms())

        # a baseline never alerts: its stories need no text matching (prematch)
        silent = is_baseline(state, spec)
        try:
            prepared = await self.prepare(Job(
                body=result.body,
                headers=result.headers,
                feed=spec.name,
                feed_tags=spec.tags,
                # relative links resolve against it: never carry the feed's user info into
                # a story's link (and an alert)
                url=without_userinfo(result.final_url),
                now=now,
                rules_path=None if silent else str(self.config.rules_path),
                rules_fingerprint="" if silent else self.rules.ruleset.fingerprint,
                dedup=self.index.settings,
                skip_ids=self._last_ids.get(spec.name, frozenset()),
            ))
        except JobAbandoned as e:  # past its deadline (then a longer backoff), or a dead worker
            retry = timeout_backoff(
                deadline=e.deadline, interval=spec.interval, failures=state.failures + 1,
                backoff_max=self.config.fetch.backoff_max,
            ) if isinstance(e, JobTimedOut) else None
            return await self._failed(state, spec, now, url, str(e), result.status,
                                      retry_after=retry, gone=False, ms=ms(),
                                      kind="parse_timeout" if isinstance(e, JobTimedOut)
                                      else "parse")
        if prepared.failed:
            return await self._failed(state, spec, now, url,
                                      prepared.problem or "unparseable feed", result.status,
                                      retry_after=None, gone=False, ms=ms(), kind="parse")
        ok_state = replace(ok_state, problem=prepared.problem)
        h = prepared.hints
        if h != _hints_of(ok_state):  # the document's hints changed: decide again with them
            ok_state = replace(ok_state, ttl=h.ttl, update_period=h.update_period,
                               update_base=h.update_base, cadence=h.cadence)
            decision = _decide(ok_state, spec, now, freshness)
            ok_state = replace(ok_state, poll_interval=decision.delay,
                               poll_reason=decision.why, next_poll=next_poll(
                                   now=now, interval=decision.delay, failures=0,
                                   retry_after=None, backoff_max=fc.backoff_max,
                                   jitter=jitter, key=spec.name, floor=decision.floor,
                                   due=_anchor(state, spec.name, decision.delay)))
        _recovered(state, spec, now)
        self._ok(spec, now)
        self._last_ids[spec.name] = frozenset(p.story.id for p in prepared.stories)
        return await self._ingest(ok_state, spec, prepared, now, result.status, ms)

    async def _ingest(
        self,
        state: FeedState,
        spec: FeedSpec,
        prepared: Prepared,
        now: datetime,
        status: int | None,
        ms: Callable[[], float],
    ) -> PollOutcome:
        """Gather what ``route.plan`` needs for the feed's entries, call it, save."""
        batch = _unique_oldest_first(prepared.stories)
        fresh, known_links = await self._fresh(batch)
        if fresh and self.index_ready is not None:
            await self.index_ready()
        baseline = is_baseline(state, spec)
        churn = self._churn(state, spec, fresh, len(batch), baseline=baseline)
        if churn:
            state = replace(
                state,
                problem=f"GUID churn: {len(fresh)} of {len(batch)} items came back with new "
                "ids but known titles and links; they were recorded without alerting",
            )
        # a baseline never alerts: its stories get the index's quick search (the cost of a
        # fresh instance's first pass); later stories are scored against them as any
        decisions = await self._decide(fresh, now, quick=baseline)
        rules = self.rules  # one rule set for the whole poll, even if a reload comes
        max_age = timedelta(seconds=spec.max_age)
        work = self._dedup_and_match(
            spec, fresh, decisions, known_links, now, rules,
            # the worker's text matching counts only if it used the rules in force
            prematched=prepared.rules_fingerprint == rules.ruleset.fingerprint,
            baseline=baseline, churn=churn, max_age=max_age,
        )
        if work.merges:
            self._merge(spec, work)
        deliveries = plan(
            candidates=work.candidates,
            earlier=await self._earlier_alerts(work.candidates),
            enabled=work.enabled,
            now=now,
            baseline=baseline,
            churn=churn,
            editable=self._editable(),
            max_age=max_age,
        )
        groups = {d.group for d in deliveries if d.group}
        if groups:  # a grouped rule's alerts wait for their group's next message
            deliveries = schedule_groups(deliveries, await self.store.group_states(groups),
                                         now=now)
        state = remember_news(replace(
            state,
            baselined=True,
            stories_seen=state.stories_seen + len(fresh),
        ), work.news, now=now)
        state, notices = ops.review(self.config, state, now)
        inserted = await self._save(state, work, deliveries + notices, grouped=baseline)
        ops.queued([d for d in inserted if is_operational(d.alert)], self.metrics)
        inserted = [d for d in inserted if not is_operational(d.alert)]
        result = "baseline" if baseline else "new" if fresh else "unchanged"
        self._count(spec, result, work)
        log.info(
            "feed.polled", feed=spec.name, status=status, entries=len(batch), new=len(fresh),
            alerts=len(inserted), stale=work.stale, baseline=baseline, ms=ms(),
            **({"problem": state.problem} if state.problem else {}),
            **_schedule_fields(state, now),
        )
        for d in inserted:
            log.info("alert.queued", feed=spec.name, rule=d.alert.match.rule, channel=d.channel,
                     story=d.alert.story.id, cluster=d.alert.cluster, update=d.alert.update,
                     title=d.alert.story.title[:120])
        if inserted or notices:
            self.on_queued()
        return PollOutcome(
            feed=spec.name, result=result, status=status, stories=len(batch), new=len(fresh),
            alerts=len(inserted), problem=state.problem, stale=work.stale, ms=ms(),
            deliveries=tuple(inserted),
        )

    async def _save_state(self, state: FeedState, notices: Sequence[Delivery]) -> None:
        """A poll that stores no story: the feed's state, with the operational notices
        due (``ops.review``) in the same transaction when there are any."""
        if not notices:
            await self.states.save(state)
            return
        ops.queued(await self.store.save_poll(state, [], notices), self.metrics)
        self.on_queued()

    async def _fresh(
        self, batch: Sequence[PreparedStory]
    ) -> tuple[list[PreparedStory], set[str]]:
        """The entries whose ids the store does not have, and which of their links it has."""
        # two questions in one round trip, their answers apart: an id that happens to
        # equal a stored link is still new
        known_ids, known_links = await self.store.known_apart(
            [p.story.id for p in batch], [p.story.link for p in batch if p.story.link])
        fresh = [p for p in batch if p.story.id not in known_ids]
        # a known id is a story we already have; a known link under a new id is the same
        # story from another source (or re-published): it joins its cluster as a source
        # (only the fresh stories' links are asked about: a known story's is its own)
        return fresh, {p.story.link for p in fresh if p.story.link in known_links}

    def _churn(self, state: FeedState, spec: FeedSpec, fresh: Sequence[PreparedStory],
               total: int, *, baseline: bool) -> bool:
        """Whether the feed re-issued known items under new ids (then nothing alerts)."""
        if not fresh or baseline or not state.baselined:
            return False
        churn = detect_guid_churn([p.story for p in fresh], self.index.known_under_other_id)
        if churn:
            log.warning("feed.guid_churn", feed=spec.name, fresh=len(fresh), total=total)
        return churn

    async def _decide(self, fresh: Sequence[PreparedStory], now: datetime, *,
                      quick: bool = False) -> dict[tuple[str, str], Decision]:
        """The dedup decision of each new story, keyed by (feed, id). With ``settle``,
        the stories of the polls that get here within ``settle`` seconds of one another
        (a burst: ``monitor once``, or the feeds of one scheduler tick) are added to the
        index together, in publication order: which feed answered first does not change
        the clusters. A round waits ``ROUND_MAX * settle`` at most.

        ``quick`` (a baseline: stories that never alert) is decided at once, outside any
        round. In a fresh instance's first pass every poll is a baseline, and under
        continuous load a round lasts its full ``ROUND_MAX * settle``: each poll held
        its slot a second longer, and the rounds released the polls in waves that
        queued at the parse workers and the store (10,000 feeds every minute: the first
        pass 68.5 s with rounds, 62.8 s without, in one run each)."""
        ticket = _TICKET.get()
        if not fresh or self.settle <= 0 or quick:
            if ticket is not None:
                self._arrive(ticket)
            return self._add_all([(p, now, quick) for p in fresh]) if fresh else {}
        loop = asyncio.get_running_loop()
        r = self._round
        if r is None:
            r = self._round = _Round(entries=[], done=loop.create_future(),
                                     last_call=loop.time() + ROUND_MAX * self.settle)
            r.done.add_done_callback(_retrieve)
        elif r.timer is not None:
            r.timer.cancel()
        r.timer = loop.call_at(min(loop.time() + self.settle, r.last_call), self._flush, r)
        r.entries.extend((p, now, quick) for p in fresh)
        if ticket is not None:
            self._arrive(ticket)  # the last poll on its way decides the round now
        # shielded: a poll cancelled while it waits does not cancel the others' round
        return await asyncio.shield(r.done)

    def _flush(self, r: _Round) -> None:
        if self._round is r:
            self._round = None
        log.debug("dedup.round", feeds=len({p.story.feed for p, _, _ in r.entries}),
                  stories=len(r.entries))
        try:
            r.done.set_result(self._add_all(r.entries))
        except Exception as e:  # handed to every poll of the round
            r.done.set_exception(e)

    def _add_all(self, entries: Sequence[tuple[PreparedStory, datetime, bool]]
                 ) -> dict[tuple[str, str], Decision]:
        """Add the stories to the index oldest first (ties by id, then feed), all at the
        latest ``now`` of their polls; ``quick`` (a baseline's story) with the index's quick
        search (``StoryIndex.add``). No await: the index sees them in one go. A merge
        is recorded at once (``_absorbed``), before any poll can read a stale cache."""
        now = max(n for _, n, _ in entries)
        out: dict[tuple[str, str], Decision] = {}
        for p, _, quick in sorted(entries, key=lambda e: (e[0].story.published, e[0].story.id,
                                                          e[0].story.feed)):
            story = p.story
            decision = self.index.add(story, now=now, features=p.features, quick=quick)
            out[(story.feed, story.id)] = decision
            for gone in decision.merged:
                self._absorbed[gone] = decision.cluster
                self._alerted.pop(gone, None)
                self._alerted.pop(decision.cluster, None)
        return out

    def _dedup_and_match(
        self,
        spec: FeedSpec,
        fresh: Sequence[PreparedStory],
        decisions: Mapping[tuple[str, str], Decision],
        known_links: Collection[str],
        now: datetime,
        rules: ActiveRules,
        *,
        prematched: bool,
        baseline: bool,
        churn: bool,
        max_age: timedelta,
    ) -> _Work:
        """Record the new stories' dedup ``decisions`` and match those that may alert
        against their clusters."""
        work = _Work(enabled=frozenset(r.name for r in rules.ruleset.rules if r.enabled))
        matcher = rules.matcher
        needs_times = bool(matcher.rules_needing_sources())
        for p in fresh:
            story = p.story
            decision = decisions[(story.feed, story.id)]
            # the cluster now: a later story of the round may have merged it into another
            cluster = self._survivor(decision.cluster)
            work.merges.extend((gone, decision.cluster) for gone in decision.merged)
            work.to_store.append(StoredStory(story=story, cluster=cluster))
            sources = self.index.cluster_sources(cluster)
            work.clusters[cluster] = self._cluster_info(cluster, story, sources, now)
            if isinstance(decision, New):
                work.outcomes["new"] += 1
            elif isinstance(decision, SameStory):
                work.outcomes["same-story"] += 1
                log.debug("story.clustered", feed=spec.name, story=story.id, cluster=cluster,
                          score=decision.score, matched_with=decision.matched_with)
            elif isinstance(decision, Seen):
                work.outcomes["repeat"] += 1
            c = Candidate(story=story,
                          facts=ClusterFacts(cluster=cluster, sources=sources,
                                             new=isinstance(decision, New)
                                             and cluster == decision.cluster),
                          link_known=story.link in known_links)
            why = silenced(c, now=now, baseline=baseline, churn=churn, max_age=max_age)
            if why in (None, "baseline"):
                work.news.append(story.published)
            if why == "too-old":
                work.stale += 1
                log.debug("story.stale", feed=spec.name, story=story.id,
                          published=story.published.isoformat(), title=story.title[:120])
            if why is not None:
                continue
            pre = p.prematch if prematched and p.prematch is not None else matcher.prematch(story)
            if pre.skipped is not None:
                self._budget_exceeded(spec, story, pre.skipped)
            matches = matcher.match(story, sources=len(sources), source_names=sources,
                                    prematched=pre,
                                    source_seen=self.index.cluster_source_times(cluster)
                                    if needs_times else None)
            for m in matches:
                work.fired[m.rule] += 1
            work.candidates.append(replace(c, matches=matches))
        return work

    @staticmethod
    def _budget_exceeded(spec: FeedSpec, story: Story, skipped: RegexSkipped) -> None:
        """A story whose regex budget ran out: some regex terms were not searched, and the
        rules that depended on them did not fire (``monitor.core.rules.match``)."""
        log.warning("rules.budget_exceeded", feed=spec.name, story=story.id, title=story.title[:120],
                    rules=list(skipped.undecided), terms=list(skipped.terms),
                    wanted=skipped.wanted, budget=skipped.budget)

    def _merge(self, spec: FeedSpec, work: _Work) -> None:
        """Two clusters turned out to be one story (``StoryIndex``'s second-chance merge):
        this poll's stories and candidates of the absorbed clusters move to the survivor.
        A candidate whose cluster was new is no longer: the survivor's first alert stays
        the thread, and no new first alert is sent. The store moves the stored ones when
        this poll is saved (see ``_save``)."""
        final = self._survivor
        for gone, survivor in work.merges:
            info = work.clusters.pop(gone, None)
            last = final(survivor)
            if info is not None and last not in work.clusters:
                # the row to upsert for the survivor: its stored title and first_seen stay
                work.clusters[last] = replace(info, id=last, first_story=last,
                                              sources=self.index.cluster_sources(last))
            log.info("story.merged", feed=spec.name, cluster=last, absorbed=gone,
                     sources=len(self.index.cluster_sources(last)))
        work.to_store = [replace(s, cluster=final(s.cluster)) for s in work.to_store]
        candidates = []
        for c in work.candidates:
            cluster = final(c.facts.cluster)
            if cluster != c.facts.cluster:
                sources = self.index.cluster_sources(cluster)
                c = replace(c, facts=ClusterFacts(cluster=cluster, sources=sources, new=False))
                info = work.clusters.get(cluster)
                if info is not None:
                    work.clusters[cluster] = replace(info, sources=sources)
            candidates.append(c)
        work.candidates = candidates
        self.metrics.stories.labels(spec.name, "merged").inc(len(work.merges))

    def _survivor(self, cluster: str) -> str:
        """Where a cluster went through the merges the store does not have yet."""
        seen = 0
        while cluster in self._absorbed and seen < len(self._absorbed):
            cluster = self._absorbed[cluster]
            seen += 1
        return cluster

    def _editable(self) -> frozenset[str]:
        """The channels that edit their first message in place: Slack with a bot token
        (``route.plan`` decides their updates differently)."""
        return frozenset(name for name, ch in self.config.channels.items()
                         if isinstance(ch, SlackChannel) and ch.token)

    async def _earlier_alerts(
        self, candidates: Sequence[Candidate]
    ) -> dict[str, tuple[Delivery, ...]]:
        """The stored first alerts of the clusters ``plan`` will look at (see
        ``route.needs_earlier``), through the cache; a cluster the poll starts has none."""
        earlier: dict[str, tuple[Delivery, ...]] = {}
        for c in candidates:
            if c.facts.new:
                self._remember(c.facts.cluster, [])
            elif needs_earlier(c, edits=bool(self._editable())):
                # a copy: the cached list grows as polls of other feeds save alerts
                earlier[c.facts.cluster] = tuple(await self._cluster_alerts(c.facts.cluster))
        return earlier

    async def _save(self, state: FeedState, work: _Work, deliveries: list[Delivery], *,
                    grouped: bool = False) -> list[Delivery]:
        """One transaction: the feed state, its new stories, their clusters, the outbox.
        Returns the deliveries the store did not have (by key). ``grouped`` (a baseline):
        a save with no delivery shares its transaction with the others of the next few
        milliseconds (``PollWriter``).

        The merges the store does not have yet go with it, but for those a save in
        flight already carries: saved once, not once per concurrent poll."""
        # the index's sources as of now: polls of other feeds may have added some while
        # this one awaited the store
        fresh_clusters = [replace(c, sources=self.index.cluster_sources(c.id) or c.sources)
                          for c in work.clusters.values()]
        # this poll's, and any a failed save left
        merges = [(g, s) for g, s in self._absorbed.items() if g not in self._merging]
        carried = {g for g, _ in merges}
        self._merging |= carried
        try:
            if grouped and not deliveries:
                await self.baselines.save(PollSave(state=state, stories=work.to_store,
                                                   clusters=fresh_clusters, merges=merges))
                inserted: list[Delivery] = []
            else:
                inserted = await self.store.save_poll(state, work.to_store, deliveries,
                                                      fresh_clusters, merges)
        finally:
            self._merging -= carried
        for gone, survivor in merges:
            if self._absorbed.get(gone) == survivor:
                del self._absorbed[gone]
        for d in inserted:
            if d.parent_key is None:
                self._remember(d.alert.cluster, [d])
        return inserted

    def _count(self, spec: FeedSpec, result: str, work: _Work) -> None:
        self.metrics.polls.labels(spec.name, result).inc()
        for outcome, n in work.outcomes.items():
            self.metrics.stories.labels(spec.name, outcome).inc(n)
        for rule, n in work.fired.items():
            self.metrics.matches.labels(rule).inc(n)
        if work.stale:
            self.metrics.stale_items.labels(spec.name).inc(work.stale)
        self.metrics.clusters.set(len(self.index))

    def _ok(self, spec: FeedSpec, now: datetime) -> None:
        """A successful poll (200 or 304): the failure streak's gauge back to 0."""
        self.metrics.feed_failures.labels(spec.name).set(0)
        self.metrics.feed_last_success.labels(spec.name).set(now.timestamp())

    async def _cluster_alerts(self, cluster: str) -> list[Delivery]:
        """The first alerts of a cluster: from memory for clusters this process has seen,
        from the store once for the others. A stale answer (another instance alerted
        meanwhile) cannot cause a repeat: the store ignores a delivery whose key exists."""
        known = self._alerted.get(cluster)
        if known is None:
            known = await self.store.cluster_alerts(cluster)
            absorbed = [g for g in self._absorbed if self._survivor(g) == cluster]
            if absorbed:  # merged here, not saved yet: their alerts are this cluster's
                keys = {d.key for d in known}
                for g in absorbed:
                    known += [d for d in await self.store.cluster_alerts(g) if d.key not in keys]
                known.sort(key=lambda d: (d.created, d.id or 0))
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
        kind: str,
    ) -> PollOutcome:
        failures = state.failures + 1
        # a reason may quote the URL (a redirect loop, an aiohttp message): it is stored,
        # logged, shown by status and /healthz, so never with its credentials
        reason = self.config.redact(reason)
        new = replace(
            state,
            url=url,
            last_polled=now,
            failures=failures,
            failing_since=state.failing_since or now,
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
        await self._save_state(*ops.review(self.config, new, now))
        result = "gone" if gone else "failed"
        self.metrics.polls.labels(spec.name, result).inc()
        self.metrics.feed_failures.labels(spec.name).set(failures)
        self.metrics.poll_errors.labels(spec.name, kind).inc()
        # a warning when the streak starts or its problem changes; repeats at debug (the
        # daemon's summary lists the feeds still failing: feeds.failing)
        news = gone or is_news(failures_before=state.failures, last_error=state.last_error,
                               reason=reason)
        (log.warning if news else log.debug)(
            "feed.gone" if gone else "feed.failed", feed=spec.name, status=status,
            error=reason, failures=failures, next_poll=new.next_poll.isoformat()
            if new.next_poll else None, ms=ms,
        )
        return PollOutcome(feed=spec.name, result=result, status=status, error=reason, ms=ms)


def _recovered(state: FeedState, spec: FeedSpec, now: datetime) -> None:
    """The poll of a failing feed succeeded: say so once (its failures were warned about
    when they started)."""
    if state.failures:
        since: dict[str, object] = {}
        if state.last_success is not None:
            since = {"last_ok": state.last_success.isoformat(),
                     "down_s": round((now - state.last_success).total_seconds())}
        log.info("feed.recovered", feed=spec.name, failures=state.failures,
                 error=state.last_error or "", **since)


def _succeeded(
    state: FeedState,
    *,
    url: str,
    now: datetime,
    next_at: datetime,
    decision: PollDecision,
    status: int,
    etag: str | None,
    last_modified: str | None,
    body_hash: str | None,
) -> FeedState:
    """The state a successful poll (200 or 304) writes back, in one ``replace``: this is
    the hot path of the polls that change nothing."""
    return replace(
        state, url=url, last_polled=now, last_success=now, failures=0, last_error=None,
        failing_since=None, gone=False, polls=state.polls + 1, next_poll=next_at, last_status=status,
        etag=etag, last_modified=last_modified, body_hash=body_hash,
        poll_interval=decision.delay, poll_reason=decision.why,
    )


def _anchor(state: FeedState, key: str, interval: float) -> datetime | None:
    """What the poll in hand counts from for the next one (``next_poll(due=...)``): when
    it was due, or for the feed's first poll (not baselined yet) the place that
    ``schedule.first_anchor`` gives it, so that a fresh instance's compressed first pass
    leaves the next cycles evenly spread."""
    if state.due is None or state.baselined:
        return state.due
    return first_anchor(due=state.due, key=key, interval=interval)


def _hints_of(state: FeedState) -> FeedHints:
    return FeedHints(ttl=state.ttl, update_period=state.update_period,
                     update_base=state.update_base, cadence=state.cadence)


def _decide(state: FeedState, spec: FeedSpec, now: datetime,
            freshness: tuple[float, str] | None) -> PollDecision:
    """The interval after a successful poll: the configured one, the feed's hints kept
    on its state, its learned cadence and this response's freshness (pure: schedule)."""
    return poll_interval(
        now=now, interval=spec.interval, min_interval=spec.min_interval,
        max_interval=spec.max_interval, adaptive=spec.adaptive, cadence=state.cadence,
        ttl=state.ttl, update_period=state.update_period, update_base=state.update_base,
        freshness=freshness,
    )


def _schedule_fields(state: FeedState, now: datetime) -> dict[str, object]:
    """The ``feed.polled`` fields that say when the next poll is and why."""
    if state.next_poll is None or state.poll_interval is None:
        return {}
    return {"next_in": round((state.next_poll - now).total_seconds(), 1),
            "interval": round(state.poll_interval, 1), "why": state.poll_reason}


def _unique_oldest_first(entries: Iterable[PreparedStory]) -> list[PreparedStory]:
    """One entry per story id (the first), oldest first so clusters form in time order."""
    uniq: dict[str, PreparedStory] = {}
    for p in entries:
        uniq.setdefault(p.story.id, p)
    return sorted(uniq.values(), key=lambda p: (p.story.published, p.story.id))


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """A round whose polls were all cancelled: its error is nobody's to report."""
    if not fut.cancelled():
        fut.exception()
