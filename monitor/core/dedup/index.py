"""The recent-story index: exact keys, token blocking, cluster-level rapidfuzz scoring.

Pure: no I/O, no clock. Every decision takes ``now`` as an argument and uses the
stories' own ``published`` / ``first_seen`` for time distance.

How a story is decided (``StoryIndex.decide``):

1. **Exact repeat** → ``Seen``: the same id, the same canonical link, or the same
   normalised title (at least ``min_exact_tokens`` words long) as a story in the window.
2. **Near duplicate** → ``SameStory``: candidates come from an inverted index over the
   story's *rarest* tokens (token blocking: at most ``block_tokens`` tokens, each giving at
   most its ``max_posting`` newest clusters), so the cost per story does not grow with the
   window.
   Each candidate cluster is scored *as a whole*:

   * ``pair``: the best of the cluster's representative members (its first and latest few)
     by a blend of IDF-weighted token Dice and ``rapidfuzz.fuzz.token_set_ratio``;
   * ``cover``: how well the story and the cluster's *frequent* tokens (those in at least
     ``cover_share`` of its members) cover each other, IDF-weighted: the story's weight the
     cluster carries, blended (``sig_weight``) with the weight of the cluster's signature
     the story carries. One odd member cannot chain an unrelated story into a big
     cluster, and a story about another actor doing the same thing ("X files for
     bankruptcy") does not join.

   ``score = (1 - cover_weight) * pair + cover_weight * cover`` and the story joins the
   best cluster when ``score`` reaches ``threshold`` plus a time penalty that grows with the
   distance to the cluster's nearest member (``time_grace`` free, then ``time_penalty``
   per day).
3. Otherwise → ``New``: the story starts a cluster whose id is the story's id.

Token weights are ``idf ** idf_power``, the IDF estimated online from the clusters in the
window (a token seen in many clusters says little; a cluster counts once however many
members it has); stopwords weigh ``stopword_weight``, numbers and capitalised names 25 %
more. When a title has few informative tokens the lead sentence of the summary is
added at a lower weight.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import ClassVar

from rapidfuzz import fuzz

from monitor.core.dedup.features import STOPWORDS, DedupSettings, Features, normalize_title
from monitor.core.model import Story

__all__ = [
    "Decision",
    "New",
    "SameStory",
    "Seen",
    "StoryIndex",
    "detect_guid_churn",
    "pair_score",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class New:
    """The story starts a new cluster (``cluster`` is the story's id)."""

    cluster: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SameStory:
    """A near duplicate of cluster ``cluster``; ``matched_with`` is the closest member."""

    cluster: str
    score: float
    matched_with: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Seen:
    """An exact repeat (same id, same canonical link or same normalised title)."""

    cluster: str
    matched_with: str
    reason: str


Decision = New | SameStory | Seen

# ---------------------------------------------------------------------------------------
# the index


class _Member:
    __slots__ = ("extra", "id", "text", "tokens")

    def __init__(self, sid: str, f: Features) -> None:
        self.id = sid
        self.tokens = tuple(f.tokens)
        self.extra = f.extra
        self.text = f.text


class _SourceTimes(Mapping[str, datetime]):
    """A cluster's feed → first-seen epoch seconds, seen as UTC datetimes."""

    __slots__ = ("_times",)

    def __init__(self, times: dict[str, float]) -> None:
        self._times = times

    def __getitem__(self, feed: str) -> datetime:
        return datetime.fromtimestamp(self._times[feed], UTC)

    def __iter__(self) -> Iterator[str]:
        return iter(self._times)

    def __len__(self) -> int:
        return len(self._times)


class _Cluster:
    __slots__ = (
        "first",
        "first_pub",
        "id",
        "keys",
        "last",
        "last_pub",
        "members",
        "n",
        "num",
        "pending",
        "reps",
        "sig",
        "sig_n",
        "sig_short",
        "sources",
        "tf",
    )

    def __init__(self, num: int, cid: str) -> None:
        self.num = num
        self.id = cid
        self.members: list[str] = []
        self.sources: dict[str, float] = {}  # feed → when it first carried the story
        self.keys: list[int] = []  # exact keys (see _key) to drop on eviction
        self.tf: dict[str, int] = {}
        self.reps: list[_Member] = []
        self.n = 0
        self.sig: tuple[str, ...] = ()
        self.sig_n = -1
        self.sig_short = 0  # signature tokens one character long (they weigh little)
        self.pending: list[_Member] = []  # members since the signature was computed
        self.first = 0.0  # first_seen epoch of the first member
        self.last = 0.0  # latest first_seen epoch (eviction)
        self.first_pub = math.inf
        self.last_pub = -math.inf


def _epoch(dt: datetime) -> float:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


_ID, _LINK, _TITLE = 0, 1, 2


def _key(kind: int, text: str) -> int:
    """An exact-repeat key: the text's hash with its kind in the two low bits (one int
    per (kind, hash) pair, cheaper to hash than the pair)."""
    return hash(text) << 2 | kind

_REASONS = ("same id", "same link", "same title")
_EPS = 1e-9  # far above the float error of a score, far below a meaningful difference


def _beyond(
    pair_up: float,
    cover_up: float,
    st: DedupSettings,
    need: float | None,
    margin: float | None,
    eps: float = _EPS,
) -> bool:
    """True when a score whose pair and cover terms are at most ``pair_up`` and
    ``cover_up`` can neither reach ``need`` nor beat ``margin`` (the best ``score - need``
    so far). ``eps`` keeps the answer clear of float noise when the bounds come from other
    expressions than the score's; 0.0 when they are the score's own (rounding is
    monotone)."""
    assert need is not None
    up = (1.0 - st.cover_weight) * pair_up + st.cover_weight * cover_up
    if pair_up + eps >= st.pair_accept:
        up = max(up, pair_up)
    return up + eps < need or (margin is not None and up - need + eps <= margin)


def _time_penalty(t: float, c: _Cluster, grace: float, per_day: float) -> float:
    """What a story published at ``t`` (epoch seconds) adds to ``threshold`` to join
    ``c``: ``per_day`` (``time_penalty``) per day of distance to the cluster's nearest
    ``published`` beyond ``grace`` (``time_grace``). Settings come as arguments: this
    runs for every candidate cluster of every story."""
    if t < c.first_pub:
        dist = c.first_pub - t
    elif t > c.last_pub:
        dist = t - c.last_pub
    else:
        dist = 0.0
    return max(0.0, dist - grace) / 86400.0 * per_day


def _cover(
    weights: Iterable[tuple[str, float]], total: float, c: _Cluster, cover_share: float
) -> tuple[float, float, float, int]:
    """The first cover term: the share of the story's weight (its (token, weight) pairs,
    summing to ``total``) carried by the cluster's frequent tokens (those in
    ``cover_share`` of its members, a token in fewer counting pro rata); and, for the
    bounds, the story's weight in tokens the cluster has, in its signature, and how many
    signature tokens the story has. Runs for every candidate cluster of every story."""
    need_k = max(1.0, c.n * cover_share)
    tf_get = c.tf.get
    carried = 0.0
    shared = 0.0
    sig_up = 0.0
    sig_hits = 0
    for t, w in weights:
        k = tf_get(t)
        if k:
            shared += w
            carried += w * min(1.0, k / need_k)
            if k >= need_k and t not in STOPWORDS:
                sig_up += w
                sig_hits += 1
    return (carried / total if total else 0.0), shared, sig_up, sig_hits


class StoryIndex:
    """Clusters of recent stories over a sliding window. See the module docstring."""

    # skip candidates whose score provably cannot decide (tests compare with False)
    _prune: ClassVar[bool] = True

    def __init__(self, settings: DedupSettings | None = None) -> None:
        self.settings = settings or DedupSettings()
        self._clusters: dict[int, _Cluster] = {}
        self._by_id: dict[str, int] = {}  # cluster id -> num
        self._exact: dict[int, tuple[int, str]] = {}  # _key -> (num, story id)
        self._seen: dict[int, Seen] = {}  # _key -> the Seen answer it last gave
        self._postings: dict[str, dict[int, None]] = {}  # token -> clusters, oldest first
        self._df: dict[str, int] = {}
        self._df_hist: dict[int, int] = {}  # df -> number of tokens with it
        self._df_max = 0  # the largest df: the lightest informative token weighs no less
        self._heap: list[tuple[float, int]] = []
        self._next = 0
        self._stories = 0
        self._wcache: dict[str, float] = {}  # weights of cluster tokens, within one decision
        st = self.settings
        # the score bounds assume the shares are shares and the lead weighs less
        self._bounds_hold = st.lead_weight <= 1.0 and all(
            0.0 <= x <= 1.0 for x in (st.containment, st.fuzz_weight, st.cover_weight, st.sig_weight)
        )
        # and the signature-share bound, weights that never grow with df (see _lightest)
        self._sig_bound = st.sig_weight > 0.0 and st.idf_prior >= 1.0 and st.idf_power >= 0.0
        self._idfw: dict[int, float] = {}  # df -> idf ** idf_power, for _idf_n open clusters
        self._idf_n = -1
        self._now: datetime | None = None  # the last ``now`` evict saw, and its cutoff
        self._cutoff = 0.0
        self._seen_dt: datetime | None = None  # the last first_seen _insert saw, as epoch
        self._seen_t = 0.0

    # -- public API ---------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of stories (members of open clusters) in the index."""
        return self._stories

    @property
    def clusters(self) -> int:
        """Number of open clusters."""
        return len(self._clusters)

    def decide(self, story: Story, *, now: datetime) -> Decision:
        """What ``add`` would answer, without inserting (eviction still applies)."""
        self.evict(now)
        f = Features(story.title, story.summary, self.settings.short_title_tokens)
        return self._decide(story, f, self._keys(story, f.norm), _epoch(story.published))[0]

    def add(self, story: Story, *, now: datetime, features: Features | None = None) -> Decision:
        """Decide and insert. ``Seen`` stories join their cluster (a new source counts)
        unless their id is already a member. ``features`` (from ``story_features`` with the
        same settings, e.g. computed in a worker process) saves recomputing them."""
        self.evict(now)
        f = features or Features(story.title, story.summary, self.settings.short_title_tokens)
        keys = self._keys(story, f.norm)
        pub = _epoch(story.published)
        decision, num = self._decide(story, f, keys, pub)
        if isinstance(decision, Seen) and decision.reason == "same id":
            return decision
        self._insert(story, f, num, keys=keys, pub=pub)
        return decision

    def evict(self, now: datetime) -> int:
        """Drop clusters whose latest member was first seen more than ``window`` ago."""
        if now is not self._now:  # the pipeline passes one ``now`` for a whole batch
            self._now = now
            self._cutoff = _epoch(now) - self.settings.window
        cutoff = self._cutoff
        dropped = 0
        heap = self._heap
        while heap and heap[0][0] < cutoff:
            t, num = heapq.heappop(heap)
            c = self._clusters.get(num)
            if c is None or c.last != t:
                continue  # stale entry: the cluster moved on (or is gone)
            self._drop(c)
            dropped += 1
        return dropped

    def cluster_sources(self, cluster_id: str) -> tuple[str, ...]:
        """Distinct feeds of the cluster's members, in order of arrival."""
        c = self._get(cluster_id)
        return tuple(c.sources) if c else ()

    def cluster_source_times(self, cluster_id: str) -> Mapping[str, datetime]:
        """Distinct feeds of the cluster → when each first carried it (first_seen, UTC):
        corroboration within a time window counts these. A live read-only view, converted
        on access: asking costs nothing unless a rule reads it."""
        c = self._get(cluster_id)
        return _SourceTimes({} if c is None else c.sources)

    def cluster_members(self, cluster_id: str) -> tuple[str, ...]:
        """Story ids of the cluster's members, in order of arrival."""
        c = self._get(cluster_id)
        return tuple(c.members) if c else ()

    def cluster_of(self, story_id: str) -> str | None:
        """The open cluster holding the story id, if any."""
        hit = self._exact.get(_key(_ID, story_id))
        return self._clusters[hit[0]].id if hit else None

    def restore(self, stories_with_clusters: Iterable[tuple[Story, str]]) -> int:
        """Rebuild from stored (story, cluster id) pairs, oldest first; or add the stories
        another instance stored. Ids already held are skipped; returns how many were added.

        Later decisions are the same as if the stories had been added live (given the same
        ``now``): the clusters, their tokens and the IDF estimate are rebuilt exactly.
        """
        st = self.settings
        added = 0
        for story, cid in stories_with_clusters:
            if _key(_ID, story.id) in self._exact:
                continue
            f = Features(story.title, story.summary, st.short_title_tokens)
            num = self._by_id.get(cid)
            self._insert(story, f, num, cluster_id=cid)
            added += 1
        return added

    def known_under_other_id(self, story: Story) -> bool:
        """True when the id is new but the same feed already brought this link or title."""
        if _key(_ID, story.id) in self._exact:
            return False
        for key in self._keys(story, normalize_title(story.title))[1:]:
            hit = self._exact.get(key)
            if hit is not None and story.feed in self._clusters[hit[0]].sources:
                return True
        return False

    def churn_ratio(self, stories: Sequence[Story]) -> float:
        """Share of ``stories`` presented under an unknown id whose title or link the same
        feed already brought (0.0 when none is new by id). See ``detect_guid_churn``."""
        new = [s for s in stories if _key(_ID, s.id) not in self._exact]
        if not new:
            return 0.0
        return sum(1 for s in new if self.known_under_other_id(s)) / len(new)

    def cluster_score(self, cluster_id: str, story: Story) -> float:
        """How close ``story`` is to the open cluster ``cluster_id`` by content alone: the
        score of the module docstring (``pair`` and ``cover``) without the time penalty,
        every member scored in full. 1.0 when the story's normalised title repeats one in
        the cluster (``decide`` would say ``Seen``); 0.0 when the title has no tokens or no
        such cluster is open. For calibration and explanations: nothing is inserted or
        evicted, and ``decide`` stays the answer the pipeline acts on."""
        c = self._get(cluster_id)
        f = Features(story.title, story.summary, self.settings.short_title_tokens)
        if c is None or not f.tokens:
            return 0.0
        hit = self._exact.get(_key(_TITLE, f.norm))
        if hit is not None and hit[0] == c.num:
            return 1.0
        weights = self._story_weights(f, self._weigher(f.boost))
        return self._score(f, weights, sum(weights.values()), c)[0]

    # -- internals ----------------------------------------------------------------------

    def _get(self, cluster_id: str) -> _Cluster | None:
        num = self._by_id.get(cluster_id)
        return None if num is None else self._clusters.get(num)

    def _keys(self, story: Story, norm: str) -> list[int]:
        keys = [hash(story.id) << 2]  # _key(_ID, story.id)
        if story.link:
            keys.append(hash(story.link) << 2 | _LINK)
        # a normalised title is single-spaced: its words are its spaces plus one
        if (norm.count(" ") + 1 if norm else 0) >= self.settings.min_exact_tokens:
            keys.append(hash(norm) << 2 | _TITLE)
        return keys

    def _weigher(self, boost: frozenset[str]) -> Callable[[str], float]:
        """The token weight function for one decision (the open clusters do not change
        while a story is decided). ``idf ** idf_power`` only depends on a token's document
        frequency, so it is cached by that until the number of open clusters changes."""
        st = self.settings
        n = len(self._clusters)
        idfw = self._idfw
        if n != self._idf_n:
            idfw.clear()
            self._idf_n = n
        df_get = self._df.get
        stop = st.stopword_weight
        scale = n + st.idf_prior
        power = st.idf_power
        log = math.log
        pow_ = math.pow

        def weight(tok: str) -> float:
            if tok in STOPWORDS or len(tok) == 1:
                return stop
            df = df_get(tok, 0)
            w = idfw.get(df)
            if w is None:
                w = idfw[df] = pow_(log(scale / (df + 1.0)) + 1.0, power)
            if tok.isdigit() or tok in boost:
                w *= 1.25
            return w

        return weight

    def _story_weights(self, f: Features, weight: Callable[[str], float]) -> dict[str, float]:
        """Token → weight of the story: its title tokens, then its summary-lead tokens at
        ``lead_weight`` (in that order: sums over the dict are taken in it)."""
        weights: dict[str, float] = {}
        for t in f.tokens:
            weights[t] = weight(t)
        if f.extra:
            lead = self.settings.lead_weight
            for t in f.extra:
                weights[t] = weight(t) * lead
        return weights

    def _lightest(self) -> float:
        """A lower bound of any informative token's weight (the ``_weigher`` formula at
        the largest document frequency), valid while no cluster is added or dropped."""
        st = self.settings
        n = len(self._clusters)
        return math.pow(math.log((n + st.idf_prior) / (self._df_max + 1.0)) + 1.0, st.idf_power)

    def _decide(
        self, story: Story, f: Features, keys: list[int], t_story: float
    ) -> tuple[Decision, int | None]:
        """The decision of the module docstring, and the number of the cluster the story
        joins (None for a new one): an exact repeat; else the near-duplicate cluster, among
        the candidates its rarest tokens find, whose score clears its bar by the most;
        else a new cluster. ``t_story`` is the story's ``published`` as epoch seconds."""
        repeat = self._repeat(keys)
        if repeat is not None:
            return repeat
        if not f.tokens:
            return New(cluster=story.id), None
        weight = self._weigher(f.boost)
        weights = self._story_weights(f, weight)
        votes = self._votes(weights)
        if not votes:
            return New(cluster=story.id), None
        total = sum(weights.values())
        cands = self._candidates(votes, total)
        best = self._best_cluster(f, weights, total, weight, cands, t_story)
        if best is None:
            return New(cluster=story.id), None
        margin, c, m = best
        st = self.settings
        score = margin + st.threshold + _time_penalty(t_story, c, st.time_grace, st.time_penalty)
        return (
            SameStory(
                cluster=c.id,
                score=round(score, 4),
                matched_with=m.id,
                reason=f"score {score:.2f} vs {m.text!r}",
            ),
            c.num,
        )

    def _repeat(self, keys: list[int]) -> tuple[Seen, int] | None:
        """``Seen`` and the cluster's number when one of the story's exact keys (id, link,
        title, in that order of precedence) is in the window."""
        exact = self._exact
        for key in keys:
            hit = exact.get(key)
            if hit is not None:
                c = self._clusters[hit[0]]
                # a syndicated headline is seen again and again: one (immutable) answer
                seen = self._seen.get(key)
                if seen is None or seen.matched_with is not hit[1] or seen.cluster is not c.id:
                    seen = self._seen[key] = Seen(
                        cluster=c.id, matched_with=hit[1], reason=_REASONS[key & 3]
                    )
                return seen, c.num
        return None

    def _votes(self, weights: dict[str, float]) -> dict[int, float]:
        """Token blocking: cluster number → the weight of the story's tokens it shares,
        over the postings of the story's rarest informative tokens (at most
        ``block_tokens`` of those the index holds). Clusters in order of first vote."""
        st = self.settings
        ranked = [t for t in weights if t not in STOPWORDS]
        ranked.sort(key=weights.__getitem__, reverse=True)  # stable: ties keep their order
        votes: dict[int, float] = {}
        used = 0
        postings = self._postings
        max_posting = st.max_posting
        for t in ranked:
            posting = postings.get(t)
            if posting is None:
                continue  # unseen token: costs nothing, counts nothing
            used += 1
            w = weights[t]
            if len(posting) <= max_posting:
                for num in posting:
                    votes[num] = votes.get(num, 0.0) + w
            else:
                # a common token: it adds weight to the candidates the rarer tokens found
                # and brings in only its newest max_posting clusters
                for num in votes:
                    if num in posting:
                        votes[num] += w
                for num in islice(reversed(posting), max_posting):
                    if num not in votes:
                        votes[num] = w
            if used >= st.block_tokens:
                break
        return votes

    def _candidates(self, votes: dict[int, float], total: float) -> list[int]:
        """The ``max_candidates`` best voted clusters that carry ``min_vote`` of the story
        weight ``total``, best first (ties in order of first vote, as a stable sort
        leaves them)."""
        st = self.settings
        floor = st.min_vote * total
        cands = [num for num, v in votes.items() if v >= floor]
        if len(cands) > st.max_candidates:
            cands = heapq.nlargest(st.max_candidates, cands, key=votes.__getitem__)
        else:
            cands.sort(key=votes.__getitem__, reverse=True)
        return cands

    def _best_cluster(
        self,
        f: Features,
        weights: dict[str, float],
        total: float,
        weight: Callable[[str], float],
        cands: list[int],
        t_story: float,
    ) -> tuple[float, _Cluster, _Member] | None:
        """The candidate the story joins, as (``score - need``, cluster, closest member):
        the widest margin over its ``need`` (``threshold`` plus the time penalty), the
        first in candidate order among equals; None when no score reaches its need.

        Upper bounds of the score skip most candidates before any rapidfuzz call
        (``_cannot_win``, then ``_finish``); ``_prune = False`` scores every one in full,
        to the same answer."""
        self._wcache.clear()
        st = self.settings
        clusters = self._clusters
        threshold = st.threshold
        grace = st.time_grace
        per_day = st.time_penalty
        cover_share = st.cover_share
        witems = list(weights.items())
        prune = self._prune and self._bounds_hold
        fw = st.fuzz_weight
        half = (1.0 - st.containment) / 2.0
        full = half + st.containment
        # the open clusters do not change while a story is decided
        lightest = self._lightest() if prune and self._sig_bound else 0.0
        best: tuple[float, _Cluster, _Member] | None = None
        for num in cands:
            c = clusters[num]
            need = threshold + _time_penalty(t_story, c, grace, per_day)
            margin = None if best is None else best[0]
            cover, shared, sig_up, sig_hits = _cover(witems, total, c, cover_share)
            if not prune:
                scored = self._finish(f, weights, total, c, weight, cover)
            else:
                # a member's Dice intersection is at most ``shared`` and its weight at
                # least that, and rapidfuzz's ratio at most 100
                denom = half * total + full * shared
                pair_up = (1.0 - fw) * (min(1.0, shared / denom) if denom > 0 else 0.0) + fw
                if self._cannot_win(c, pair_up, cover, sig_up, sig_hits, lightest, need, margin):
                    continue
                scored = self._finish(f, weights, total, c, weight, cover, need, margin, pair_up)
            if scored is None:
                continue  # provably below ``need`` or below the best margin so far
            score, member = scored
            if score >= need and (best is None or score - need > best[0]):
                best = (score - need, c, member)
        return best

    def _cannot_win(
        self,
        c: _Cluster,
        pair_up: float,
        cover: float,
        sig_up: float,
        sig_hits: int,
        lightest: float,
        need: float,
        margin: float | None,
    ) -> bool:
        """True when the cluster's score provably can neither reach ``need`` nor beat
        ``margin`` (the best ``score - need`` so far), from ``_cover``'s figures alone.

        Bounds, cheapest first, each kept ``_EPS`` clear of the decision: ``pair_up``
        bounds any member's pair; the story's share of the cluster's signature is 0 when
        it has none of its tokens, and otherwise at most what it has (``sig_up``) over
        that plus the lightest possible weight of the rest (``lightest``, see
        ``_lightest``; one-character tokens weigh less and are left out)."""
        st = self.settings
        sw = st.sig_weight
        if (sig_hits == 0 or sw <= 0.0) and _beyond(pair_up, cover, st, need, margin):
            return True
        if not self._sig_bound:
            return False
        sig = c.sig if c.sig_n == c.n else self._signature(c)
        if not sig:
            return False
        if c.sig_short < 0:
            c.sig_short = sum(1 for t in sig if len(t) == 1)
        missing = len(sig) - sig_hits - c.sig_short
        if sig_hits == 0:
            back_up = 0.0
        elif missing > 0:
            back_up = sig_up / (sig_up + missing * lightest)
        else:
            back_up = 1.0
        cover_up = (1.0 - sw) * cover + sw * back_up
        return _beyond(pair_up, cover_up, st, need, margin)

    def _score(
        self, f: Features, weights: dict[str, float], total: float, c: _Cluster
    ) -> tuple[float, _Member]:
        """The cluster's score for the story and its closest representative member."""
        self._wcache.clear()
        cover = _cover(weights.items(), total, c, self.settings.cover_share)[0]
        scored = self._finish(f, weights, total, c, self._weigher(f.boost), cover)
        assert scored is not None  # only a bounded call gives up
        return scored

    def _finish(
        self,
        f: Features,
        weights: dict[str, float],
        total: float,
        c: _Cluster,
        weight: Callable[[str], float],
        cover: float,
        need: float | None = None,
        margin: float | None = None,
        pair_up: float = 1.0,
    ) -> tuple[float, _Member] | None:
        """The cluster's score and closest member, from the first cover term; or, given
        ``need`` and ``margin`` (the best ``score - need`` so far), ``None`` when the
        cluster provably cannot be the decision.

        First with the exact cover and ``pair_up``, an upper bound of any member's pair
        (kept ``_EPS`` clear). Then exact bounds: the pair of each member with rapidfuzz's
        ratio at 100, in the same float expressions as the score (rounding is monotone).
        Members are rapidfuzz-scored most promising first, and only while one can still be
        the closest.
        """
        st = self.settings
        if st.sig_weight > 0.0:
            cover = self._with_signature(c, cover, weights, weight)
        if need is not None and _beyond(pair_up, cover, st, need, margin):
            return None
        # pair: the best representative member; first the weighted Dice of each
        reps = c.reps
        dices, dups = self._dices(reps, weights, total, weight)
        # the pair with ratio 1 (and below any real pair for a skipped twin)
        fw = st.fuzz_weight
        uppers = [(1.0 - fw) * d + fw * 1.0 if d >= 0.0 else -2.0 for d in dices]
        if need is not None and _beyond(max(uppers), cover, st, need, margin, 0.0):
            return None
        closest = self._closest(f.text, reps, dices, uppers, dups, cover, need, margin)
        if closest is None:
            return None
        best_pair, best_i = closest
        cw = st.cover_weight
        score = (1.0 - cw) * best_pair + cw * cover
        if best_pair >= st.pair_accept:
            # a near-verbatim copy of one member is that member's story, however broad
            # the cluster has grown
            score = max(score, best_pair)
        return score, reps[best_i]

    def _with_signature(
        self, c: _Cluster, cover: float, weights: dict[str, float], weight: Callable[[str], float]
    ) -> float:
        """The cover term blended (``sig_weight``) with the share of the cluster's
        signature (its frequent tokens) the story carries, by weight; unchanged when the
        signature weighs nothing."""
        sw = self.settings.sig_weight
        wc = self._wcache
        w_get = weights.get
        sig = c.sig if c.sig_n == c.n else self._signature(c)
        sig_total = 0.0
        sig_hit = 0.0
        for t in sig:
            x = w_get(t)
            if x is None:
                x = wc.get(t)
                if x is None:
                    x = wc[t] = weight(t)
                sig_total += x
            else:
                sig_total += x
                sig_hit += x
        if sig_total > 0.0:
            back = sig_hit / sig_total
            cover = (1.0 - sw) * cover + sw * back
        return cover

    def _dices(
        self,
        reps: list[_Member],
        weights: dict[str, float],
        total: float,
        weight: Callable[[str], float],
    ) -> tuple[list[float], int]:
        """The weighted Dice of the story (token weights ``weights``, summing to
        ``total``) with each representative member (``containment`` blends in the overlap
        coefficient), and how many members were skipped.

        A member with the same text and tokens as an earlier one (the same headline from
        another feed) scores the same and, coming later, is never the closest: -1.0."""
        st = self.settings
        wc = self._wcache
        w_get = weights.get
        lead = st.lead_weight
        cont = st.containment
        dices: list[float] = []
        texts: dict[str, _Member] = {}
        dups = 0
        for m in reps:
            twin = texts.get(m.text)
            if twin is not None and twin.tokens == m.tokens and twin.extra == m.extra:
                dices.append(-1.0)
                dups += 1
                continue
            texts[m.text] = m
            inter = 0.0
            mw = 0.0
            for t in m.tokens:
                x = w_get(t)
                if x is None:
                    x = wc.get(t)
                    if x is None:
                        x = wc[t] = weight(t)
                    mw += x
                else:
                    mw += x
                    inter += x
            for t in m.extra:
                x = w_get(t)
                if x is None:
                    x = wc.get(t)
                    if x is None:
                        x = wc[t] = weight(t)
                    mw += x * lead
                else:
                    mw += x * lead
                    inter += x * lead
            denom = (1.0 - cont) * (total + mw) / 2.0 + cont * min(total, mw)
            dices.append(min(1.0, inter / denom) if denom > 0 else 0.0)
        return dices, dups

    def _closest(
        self,
        text: str,
        reps: list[_Member],
        dices: list[float],
        uppers: list[float],
        dups: int,
        cover: float,
        need: float | None,
        margin: float | None,
    ) -> tuple[float, int] | None:
        """The best pair and the position of its member: rapidfuzz on the members most
        promising first (by ``uppers``, their pairs at ratio 100), skipping any that can
        no longer be the closest; the first member (in order) with the best pair wins, as
        in a plain scan. Given ``need``, None as soon as the cluster provably cannot be
        the decision."""
        st = self.settings
        fw = st.fuzz_weight
        order = sorted(range(len(reps)), key=uppers.__getitem__, reverse=True)
        if dups:
            del order[-dups:]
        best_pair = -1.0
        best_i = 0
        for pos, i in enumerate(order):
            up = uppers[i]
            if up < best_pair or (up == best_pair and i > best_i):
                continue
            ratio = fuzz.token_set_ratio(text, reps[i].text) / 100.0
            pair = (1.0 - fw) * dices[i] + fw * ratio
            if pair > best_pair or (pair == best_pair and i < best_i):
                best_pair, best_i = pair, i
            if need is not None:
                rest = uppers[order[pos + 1]] if pos + 1 < len(order) else best_pair
                if _beyond(max(best_pair, rest), cover, st, need, margin, 0.0):
                    return None
        return best_pair, best_i

    def _signature(self, c: _Cluster) -> tuple[str, ...]:
        """The cluster's frequent informative tokens (cached until the cluster grows)."""
        if c.sig_n != c.n:
            need = max(1.0, c.n * self.settings.cover_share)
            tf = c.tf
            pending = c.pending
            if c.sig_n >= 0 and len(pending) == c.n - c.sig_n:
                # a token that was not frequent and none of the new members have cannot
                # have become frequent (its count is the same, the bar is not lower); the
                # rest keep their order, which is the order in ``tf``
                old = c.sig
                if not any(
                    tf[t] >= need and t not in old and t not in STOPWORDS
                    for m in pending
                    for part in (m.tokens, m.extra)
                    for t in part
                ):
                    c.sig = tuple([t for t in old if tf[t] >= need])
                    c.sig_n = c.n
                    c.sig_short = -1
                    pending.clear()
                    return c.sig
            c.sig = tuple([t for t, k in tf.items() if k >= need and t not in STOPWORDS])
            c.sig_n = c.n
            c.sig_short = -1  # counted when first needed
            pending.clear()
        return c.sig

    def _insert(
        self,
        story: Story,
        f: Features,
        num: int | None,
        *,
        cluster_id: str | None = None,
        keys: list[int] | None = None,
        pub: float | None = None,
    ) -> None:
        """Add the story to cluster ``num``, else to the open cluster ``cluster_id`` (by
        default the story's id), else to a new cluster of that id: its times, sources and
        tokens (counts, document frequencies, postings), a representative member, its
        exact keys (``keys``, computed unless given) and the cluster's place in the
        eviction heap. ``pub`` is the story's ``published`` as epoch seconds, if known."""
        st = self.settings
        c = self._cluster_for(story, num, cluster_id)
        num = c.num
        if pub is None:
            pub = _epoch(story.published)
        seen_at = self._seen_epoch(story, pub)
        if c.n == 0:
            c.first = seen_at
        c.n += 1
        c.members.append(story.id)
        c.sources.setdefault(story.feed, seen_at)
        if pub < c.first_pub:
            c.first_pub = pub
        if pub > c.last_pub:
            c.last_pub = pub
        self._count_tokens(c, f)
        member = _Member(story.id, f)
        if c.sig_n >= 0:  # the signature will be updated from the new members
            if len(c.pending) < 16:
                c.pending.append(member)
            else:
                c.sig_n = -1
                c.pending.clear()
        if len(c.reps) < st.reps_first + st.reps_last:
            c.reps.append(member)
        else:
            c.reps[st.reps_first + (c.n - 1 - st.reps_first) % st.reps_last] = member
        exact = self._exact
        for key in keys if keys is not None else self._keys(story, f.norm):
            if key not in exact:
                exact[key] = (num, story.id)
                c.keys.append(key)
        if seen_at > c.last or c.n == 1:
            c.last = seen_at
            heapq.heappush(self._heap, (seen_at, num))
        self._stories += 1

    def _cluster_for(self, story: Story, num: int | None, cluster_id: str | None) -> _Cluster:
        """The cluster ``_insert`` puts the story in (see there), created if need be."""
        c = None if num is None else self._clusters.get(num)
        if c is None and (held := self._by_id.get(cluster_id or story.id)) is not None:
            # a cluster of that id is open: this story is its first one, which the index
            # did not hold (another instance stored the cluster; we had only its members)
            c = self._clusters.get(held)
        if c is None:
            num = self._next
            self._next += 1
            c = _Cluster(num, cluster_id or story.id)
            self._clusters[num] = c
            self._by_id[c.id] = num
        return c

    def _seen_epoch(self, story: Story, pub: float) -> float:
        """The story's ``first_seen`` as epoch seconds (``pub`` is its ``published``)."""
        first_seen = story.first_seen
        if first_seen is story.published:
            return pub
        if first_seen is self._seen_dt:  # the stories of one poll share their stamp
            return self._seen_t
        seen_at = self._seen_t = _epoch(first_seen)
        self._seen_dt = first_seen
        return seen_at

    def _count_tokens(self, c: _Cluster, f: Features) -> None:
        """Count a new member's tokens in the cluster; a token new to the cluster raises
        its document frequency (and the histogram of those, and their maximum) and
        enters the token's posting."""
        num = c.num
        tf = c.tf
        df = self._df
        hist = self._df_hist
        postings = self._postings
        df_max = self._df_max
        for part in (f.tokens, f.extra) if f.extra else (f.tokens,):
            for t in part:
                k = tf.get(t)
                if k is None:
                    tf[t] = 1
                    d = df[t] = df.get(t, 0) + 1
                    hist[d] = hist.get(d, 0) + 1
                    if d > 1:
                        hist[d - 1] -= 1
                    if d > df_max:
                        df_max = d
                    p = postings.get(t)
                    if p is None:
                        postings[t] = {num: None}
                    else:
                        p[num] = None
                else:
                    tf[t] = k + 1
        self._df_max = df_max

    def _drop(self, c: _Cluster) -> None:
        del self._clusters[c.num]
        self._by_id.pop(c.id, None)
        for key in c.keys:
            self._exact.pop(key, None)
            self._seen.pop(key, None)
        hist = self._df_hist
        for t in c.tf:
            k = self._df[t] - 1
            hist[k + 1] -= 1
            if k:
                self._df[t] = k
                hist[k] = hist.get(k, 0) + 1
            else:
                del self._df[t]
            p = self._postings[t]
            p.pop(c.num, None)
            if not p:
                del self._postings[t]
        while self._df_max and not hist.get(self._df_max):
            self._df_max -= 1
        self._stories -= c.n


def pair_score(a: str, b: str, *, settings: DedupSettings | None = None) -> float:
    """Score of two headlines alone (a one-member cluster), for calibration on pairs."""
    index = StoryIndex(settings)
    t0 = datetime(2000, 1, 1, tzinfo=UTC)
    index.add(Story(id="a", feed="a", title=a, link="", published=t0, first_seen=t0), now=t0)
    sb = Story(id="b", feed="b", title=b, link="", published=t0, first_seen=t0)
    return index.cluster_score("a", sb)


def detect_guid_churn(
    new_stories: Sequence[Story],
    is_known: Callable[[Story], bool],
    *,
    min_items: int = 4,
    min_ratio: float = 0.6,
) -> bool:
    """True when a feed presents most of its items under new ids while they are known.

    ``new_stories`` are the items of one poll of one feed whose ids are unknown;
    ``is_known(story)`` says whether that feed already brought the same link or title
    (``StoryIndex.known_under_other_id`` is the natural choice). The pipeline then flags
    the feed and alerts nothing for those items. At least ``min_items`` must be
    known-under-a-new-id, and they must make up ``min_ratio`` of the new items.
    """
    if not new_stories:
        return False
    known = sum(1 for s in new_stories if is_known(s))
    return known >= min_items and known / len(new_stories) >= min_ratio
