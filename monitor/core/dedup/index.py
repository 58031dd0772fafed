"""The recent-story index: exact keys, then TF-IDF cosine to cluster centroids.

Pure: no I/O, no clock. Every decision takes ``now`` as an argument and uses the
stories' own ``published`` / ``first_seen`` for time distance.

How a story is decided (``StoryIndex.add``):

1. **Exact repeat** → ``Seen``: the same id, the same canonical link, or the same
   normalised title (at least ``min_exact_tokens`` words long) as a story in the window.
2. **Same story** → ``SameStory``: the story is a TF-IDF vector of its informative title
   tokens (weight 1) and the tokens its summary's lead adds (``lead_weight``); a long
   word neither the window nor the background knows is first read as the window's
   closest spelling (``respell``, rapidfuzz). A cluster is the centroid of its members,
   a token weighing its count over the members. The score against a cluster is

   ``cosine + anchor - time - young``

   * ``cosine`` compares two feature groups: titles alone, and title plus lead. Without
     a lead on either side they are one; otherwise the better of the titles' cosine less
     ``title_threshold`` and the full one less ``lead_threshold`` counts (``_cosine``).
   * IDF is counted over the window's open clusters (a cluster counts once) and blended
     with a frozen background table (``background.py``, English word frequencies):
     ``idf = ln((N + 1 + N_bg) / (df + df_bg + 1)) + 1``. Without it, a story whose first
     headlines seed several clusters makes its own key word look common and splits
     further.
   * ``anchor`` (``anchor_bonus``) rewards a shared *name*: when the cosine is already
     ``anchor_min``, the story's title and the cluster share a non-numeric token that
     most of the cluster's members carry (``anchor_share``), that is rare in the
     background (Zipf below ``anchor_zipf``), that the window uses mostly inside this
     cluster (``anchor_within``), and that the case table calls a name (capitalised in
     most sentence-case headlines that use it mid-sentence). An anchor also waives half
     of ``young``.
   * ``time`` is ``time_penalty`` per day of distance to the cluster's nearest
     ``published`` beyond ``time_grace`` (12 h): nothing finer, so the score does not
     learn the hour of a burst.
   * ``young`` is ``small_penalty / n`` against a cluster of ``n`` members: a second
     outlet must match the first closely; a story many outlets carry takes looser wording.

   A story must share ``min_shared`` words with the cluster, unless a rare name carries
   it (``anchor_alone``). Candidates come from blocking: the story's ``block_tokens``
   rarest tokens, each giving its ``max_posting`` most recently updated clusters; the
   ``max_candidates`` sharing the most weight are scored in full (``_score``, the one
   scoring of ``add``, ``decide`` and ``explain``). The story joins the best when the
   score reaches ``threshold``.
3. Otherwise → ``New``: the story starts a cluster whose id is the story's id. A near
   miss (best score within ``near_margin`` of the threshold) links the new cluster to
   that best one: while either is young (8 members) and then each time it doubles, the
   cosine of their centroids (less the time penalty between them) is taken, and at
   ``merge_threshold`` the younger merges into the older (first sighting, then id), which
   keeps its id. The decision that caused it lists the absorbed ids in ``merged``; the
   caller moves their stored stories and alerts (the older cluster's first alert stays
   the thread).

Decisions depend only on the stories added so far and their order. The pipeline adds
the stories of the polls that reach dedup together in publication order (a dedup round,
``shell/pipeline.py``), and merges make the clusters converge across rounds.
"""

from __future__ import annotations

import heapq
import marshal
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from hashlib import blake2b, sha256
from itertools import islice

from monitor.core.dedup.features import DedupSettings, Features, normalize_title
from monitor.core.model import Story

__all__ = [
    "Decision",
    "New",
    "SameStory",
    "ScoreParts",
    "Seen",
    "StoryIndex",
    "detect_guid_churn",
    "pair_score",
    "snapshot_key",
]


def _background() -> tuple[Mapping[str, float], Mapping[int, str]]:
    """The background table (``ZIPF``, and the buckets it is made from), imported when
    first needed: it and rapidfuzz are a fair share of a start, and a ``monitor once``
    that finds nothing new never needs them."""
    from monitor.core.dedup.background import _BUCKETS, ZIPF

    return ZIPF, _BUCKETS


@dataclass(frozen=True, kw_only=True, slots=True)
class New:
    """The story starts a new cluster (``cluster`` is the story's id)."""

    cluster: str
    merged: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class SameStory:
    """The same story as cluster ``cluster``; ``matched_with`` is its first member.
    ``merged``: clusters absorbed into ``cluster`` because this story joined."""

    cluster: str
    score: float
    matched_with: str
    reason: str
    merged: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Seen:
    """An exact repeat (same id, same canonical link or same normalised title)."""

    cluster: str
    matched_with: str
    reason: str
    merged: tuple[str, ...] = ()


Decision = New | SameStory | Seen


@dataclass(frozen=True, kw_only=True, slots=True)
class ScoreParts:
    """A score taken apart, for ``monitor stories explain``. Feature groups: ``title``
    is the cosine of the titles alone, ``full`` that of title and summary lead;
    ``cosine`` the one the score starts from (see ``StoryIndex._cosine``). ``anchor`` is
    the rare-name bonus (with the part of the young-cluster penalty it waives), ``time``
    and ``small`` what the time distance and a young cluster take off; ``words`` the
    tokens that carried most of ``full``, with their shares. ``shared`` counts the words
    in common; ``blocked`` says why the story could not join whatever its score."""

    cosine: float
    title: float
    full: float
    anchor: float
    anchor_word: str | None
    time: float
    small: float
    score: float
    threshold: float
    words: tuple[tuple[str, float], ...]
    shared: int = 0
    blocked: str | None = None

    @property
    def same(self) -> bool:
        return self.blocked is None and self.score >= self.threshold


@dataclass(frozen=True, slots=True)
class _Scored:
    score: float
    cos: float
    anchor: str | None
    blocked: bool


# ---------------------------------------------------------------------------------------
# the index


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
        "near",
        "norm_n",
        "num",
        "sources",
        "sq",
        "tf",
        "tsq",
        "ttf",
    )

    def __init__(self, num: int, cid: str) -> None:
        self.num = num
        self.id = cid
        self.members: list[str] = []
        self.sources: dict[str, float] = {}  # feed → when it first carried the story
        self.keys: list[int] = []  # exact keys (see _key) to drop on eviction
        self.tf: dict[str, float] = {}  # token → members carrying it (lead counts less)
        self.n = 0
        self.sq = 0.0  # the centroid's squared length (see StoryIndex._norm)
        # the titles' centroid: None while no member brought a summary lead (then tf)
        self.ttf: dict[str, float] | None = None
        self.tsq = 0.0
        self.norm_n = 0  # members when sq was last summed in full
        self.near: list[int] = []  # clusters a near miss linked (second-chance merge)
        self.first = 0.0  # first_seen epoch of the first member
        self.last = 0.0  # latest first_seen epoch (eviction)
        self.first_pub = math.inf
        self.last_pub = -math.inf


def _epoch(dt: datetime) -> float:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


_ID, _LINK, _TITLE = 0, 1, 2


def _hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process (``hash()`` of a str
    is salted per process): the exact keys outlive the process in a snapshot."""
    return int.from_bytes(blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest())


def _key(kind: int, text: str) -> int:
    """An exact-repeat key: the text's stable hash with its kind in the two low bits (one
    int per (kind, hash) pair, cheaper to hash than the pair)."""
    return _hash(text) << 2 | kind


_REASONS = ("same id", "same link", "same title")

#: A quick add's search (``StoryIndex.add``): clusters per blocking token, clusters scored.
#: Measured over the first pass of bench/bench_baseline.py (15,000 stories): 0.24 ms per
#: story instead of 0.43, 4,769 clusters instead of 4,373 (the same biggest ones; at 10
#: and 4, 0.20 ms and 5,467 clusters).
QUICK_POSTING = 20
QUICK_CANDIDATES = 8

#: Bumped whenever ``StoryIndex.snapshot``'s layout or the meaning of a field changes.
_SNAPSHOT_FORMAT = 1


def snapshot_key(settings: DedupSettings) -> str:
    """What a snapshot of an index holds for: the snapshot format, ``marshal``'s
    version, every dedup setting and the background table. A snapshot under another
    key is ignored (the index is rebuilt from the window's stories)."""
    h = sha256(f"{_SNAPSHOT_FORMAT} {marshal.version} {astuple(settings)!r}".encode())
    for z, words in sorted(_background()[1].items()):
        h.update(f"{z}:{words};".encode())
    return f"v{_SNAPSHOT_FORMAT}-{h.hexdigest()[:32]}"


def _time_penalty(t: float, c: _Cluster, grace: float, per_day: float) -> float:
    """What a story published at ``t`` (epoch seconds) loses against ``c``: ``per_day``
    per day of distance to the cluster's nearest ``published`` beyond ``grace``."""
    if t < c.first_pub:
        dist = c.first_pub - t
    elif t > c.last_pub:
        dist = t - c.last_pub
    else:
        return 0.0
    return max(0.0, dist - grace) / 86400.0 * per_day


class StoryIndex:
    """Clusters of recent stories over a sliding window. See the module docstring."""

    def __init__(self, settings: DedupSettings | None = None) -> None:
        self.settings = st = settings or DedupSettings()
        self._clusters: dict[int, _Cluster] = {}
        self._by_id: dict[str, int] = {}  # cluster id -> num
        self._exact: dict[int, tuple[int, str]] = {}  # _key -> (num, story id)
        self._postings: dict[str, dict[int, None]] = {}  # token -> clusters, by last update
        self._df: dict[str, int] = {}  # token -> open clusters that have it
        self._uses: dict[str, float] = {}  # token -> its count over all open clusters
        self._case: dict[str, list[int]] = {}  # token -> [capitalised, lower-case] uses
        self._prefix: dict[str, dict[str, None]] = {}  # 3 letters -> long window tokens
        self._heap: list[tuple[float, int]] = []
        self._next = 0
        self._stories = 0
        self._merged: list[str] = []  # clusters absorbed during the current add
        # background document frequency of a token, out of bg_size pseudo-headlines
        scale = st.bg_size * st.bg_words
        self._bg: Callable[[str], float] = lambda t: (
            min(st.bg_size, scale * 10.0 ** (z - 9.0)) if (z := _background()[0].get(t))
            else 0.0)
        self._bg_cache: dict[str, float] = {}
        self._now: datetime | None = None  # the last ``now`` evict saw, and its cutoff
        self._cutoff = 0.0
        self._seen_dt: datetime | None = None  # the last first_seen _insert saw, as epoch
        self._seen_t = 0.0
        self.inserted = 0  # stories inserted by this process (snapshots: what one lacks)

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
        f = self._respell(Features(story.title, story.summary, self.settings.lead_words))
        return self._decide(story, f, self._keys(story, f.norm), _epoch(story.published))[0]

    def add(self, story: Story, *, now: datetime, features: Features | None = None,
            quick: bool = False) -> Decision:
        """Decide and insert. ``Seen`` stories join their cluster (a new source counts)
        unless their id is already a member. ``features`` (from ``story_features`` with the
        same settings, e.g. computed in a worker process) saves recomputing them.

        ``quick``: a narrower search for stories that can never alert (a feed's baseline,
        a fresh instance's first pass): ``QUICK_POSTING`` clusters per blocking token and
        ``QUICK_CANDIDATES`` scored instead of ``max_posting`` and ``max_candidates``, at
        about half the cost of an add. Their clusters still form (a story many outlets
        carry gathers its sources, which corroboration counts later), the scoring is the
        same, and later stories are searched and scored against them as against any."""
        self.evict(now)
        f = self._respell(
            features or Features(story.title, story.summary, self.settings.lead_words))
        keys = self._keys(story, f.norm)
        pub = _epoch(story.published)
        decision, num, near = self._decide(story, f, keys, pub, quick=quick)
        if isinstance(decision, Seen) and decision.reason == "same id":
            return decision
        c = self._insert(story, f, num, keys=keys, pub=pub)
        if near is not None:
            c.near.append(near)
            self._clusters[near].near.append(c.num)
        elif c.near and (c.n <= 8 or c.n & (c.n - 1) == 0):
            # the centroids are compared while the cluster is young, then as it doubles:
            # a big cluster's centroid barely moves with one more member
            survivor = self._second_chance(c)
            if self._merged:
                merged = tuple(self._merged)
                self._merged.clear()
                if isinstance(decision, SameStory):
                    return SameStory(cluster=survivor.id, score=decision.score,
                                     matched_with=survivor.members[0],
                                     reason=decision.reason, merged=merged)
                if isinstance(decision, Seen):
                    return Seen(cluster=survivor.id, matched_with=decision.matched_with,
                                reason=decision.reason, merged=merged)
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

        The clusters, their tokens and the IDF estimate are rebuilt exactly; the case
        table from the window's stories only, and near-miss links are not stored.
        """
        lead_words = self.settings.lead_words
        added = 0
        for story, cid in stories_with_clusters:
            if _key(_ID, story.id) in self._exact:
                continue
            f = self._respell(Features(story.title, story.summary, lead_words))
            self._insert(story, f, self._by_id.get(cid), cluster_id=cid)
            added += 1
        return added

    def snapshot(self) -> bytes:
        """The index's whole state as bytes, for ``from_snapshot`` in another process:
        clusters (members, sources, keys, token counts, running norms, near-miss links,
        times), the exact keys, postings in their order, document frequencies, the
        window's uses, the case table and the respelling buckets. A load decides exactly
        as this index does (``snapshot_key`` says which settings it holds for).

        ``marshal`` (plain containers only, no code: far faster than JSON or pickle both
        ways, and nothing in the bytes can run) of the live dicts, so taking it costs
        one pass over them."""
        clusters = [
            (c.num, c.id, c.members, c.sources, c.keys, c.tf, c.n, c.sq, c.ttf, c.tsq,
             c.norm_n, c.near, c.first, c.last, c.first_pub, c.last_pub)
            for c in self._clusters.values()
        ]
        return marshal.dumps((
            _SNAPSHOT_FORMAT, self._next, self._stories, clusters, self._exact,
            self._postings, self._df, self._uses, self._case, self._prefix,
        ))

    def clear(self) -> None:
        """Forget every cluster and story: the index is as new, with its settings."""
        StoryIndex.__init__(self, self.settings)

    @classmethod
    def from_snapshot(cls, data: bytes, settings: DedupSettings | None = None) -> StoryIndex:
        """An index in the state ``snapshot`` took (see ``load_snapshot``)."""
        index = cls(settings)
        index.load_snapshot(data)
        return index

    def load_snapshot(self, data: bytes) -> int:
        """Take the state ``snapshot`` took, in place of this index's (which must be
        empty), and return the number of stories it holds. The settings must be those of
        the index the snapshot was taken from: the caller keys snapshots by
        ``snapshot_key``. Raises ValueError when ``data`` is not a snapshot of this
        format (the index is left empty)."""
        if self._clusters or self._stories:
            raise ValueError("load_snapshot: the index is not empty")
        try:
            state = marshal.loads(data)
            if not isinstance(state, tuple) or not state or state[0] != _SNAPSHOT_FORMAT:
                raise ValueError("another format")
            (_, nxt, stories, clusters, exact, postings, df, uses, case, prefix) = state
            table: dict[int, _Cluster] = {}
            by_id: dict[str, int] = {}
            heap: list[tuple[float, int]] = []
            for (num, cid, members, sources, keys, tf, n, sq, ttf, tsq, norm_n, near,
                 first, last, first_pub, last_pub) in clusters:
                c = _Cluster(num, cid)
                c.members, c.sources, c.keys, c.tf, c.n, c.sq = members, sources, keys, tf, n, sq
                c.ttf, c.tsq, c.norm_n, c.near = ttf, tsq, norm_n, near
                c.first, c.last, c.first_pub, c.last_pub = first, last, first_pub, last_pub
                table[num] = c
                by_id[cid] = num
                heap.append((last, num))
        except (EOFError, TypeError, ValueError) as e:
            raise ValueError(f"not a dedup snapshot of this format: {e}") from e
        heapq.heapify(heap)
        self._clusters, self._by_id, self._heap = table, by_id, heap
        self._next, self._stories = nxt, stories
        self._exact, self._postings, self._df = exact, postings, df
        self._uses, self._case, self._prefix = uses, case, prefix
        self._now = None
        return int(stories)

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
        """How close ``story`` is to the open cluster ``cluster_id`` by content alone (the
        score without the time penalty). 1.0 when its normalised title repeats one in the
        cluster; 0.0 when the title has no tokens or no such cluster is open. Nothing is
        inserted or evicted."""
        parts = self.explain(cluster_id, story, timed=False)
        return 0.0 if parts is None else parts.score

    def explain(self, cluster_id: str, story: Story, *, timed: bool = True) -> ScoreParts | None:
        """The score of ``story`` against the open cluster ``cluster_id``, taken apart
        (None when no such cluster is open). ``timed=False`` leaves out the time term."""
        c = self._get(cluster_id)
        if c is None:
            return None
        st = self.settings
        f = self._respell(Features(story.title, story.summary, st.lead_words))
        hit = self._exact.get(_key(_TITLE, f.norm))
        if hit is not None and hit[0] == c.num and f.norm.count(" ") + 1 >= st.min_exact_tokens:
            return ScoreParts(cosine=1.0, title=1.0, full=1.0, anchor=0.0, anchor_word=None,
                              time=0.0, small=0.0, score=1.0, threshold=st.threshold,
                              words=(("(same title)", 1.0),))
        weights, snorm, idf = self._story_vector(f)
        threshold = st.threshold
        if not weights:
            return ScoreParts(cosine=0.0, title=0.0, full=0.0, anchor=0.0, anchor_word=None,
                              time=0.0, small=0.0, score=0.0, threshold=threshold, words=(),
                              blocked="no informative words")
        cnorm = self._norm(c)
        per: dict[str, float] = {}
        for t, w in weights.items():
            k = c.tf.get(t)
            if k:
                per[t] = w * k * idf[t] / (snorm * cnorm)
        full = sum(per.values())
        tnorm = math.sqrt(sum(idf[t] ** 2 for t in f.tokens))
        cos = self._cosine(f, c, full, idf, tnorm)
        t_story = _epoch(story.published) if timed else None
        r = self._score(f, c, cos, len(per), t_story, threshold)
        penalty = (_time_penalty(t_story, c, st.time_grace, st.time_penalty)
                   if t_story is not None else 0.0)
        top = sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))[:8]
        return ScoreParts(
            cosine=round(cos, 4), title=round(self._title_cosine(f, c, idf, tnorm), 4),
            full=round(full, 4),
            anchor=round(r.score - cos + penalty + st.small_penalty / c.n, 4)
            if r.anchor else 0.0,
            anchor_word=r.anchor, time=round(penalty, 4),
            small=round(st.small_penalty / c.n, 4),
            score=round(r.score, 4), threshold=threshold,
            words=tuple((t, round(v, 4)) for t, v in top), shared=len(per),
            blocked="one word in common, and no rare name" if r.blocked else None,
        )

    def forget(self, cluster_id: str) -> bool:
        """Drop an open cluster and its members now, as eviction would (for probes such
        as ``monitor stories explain``). False when no such cluster is open."""
        c = self._get(cluster_id)
        if c is None:
            return False
        self._drop(c)
        return True

    def idf(self, token: str) -> float:
        """A token's IDF now: the window's clusters blended with the background table."""
        bg = self._bg_cache.get(token)
        if bg is None:
            bg = self._bg_cache[token] = self._bg(token)
        n = len(self._clusters) + 1.0 + self.settings.bg_size
        return math.log(n / (self._df.get(token, 0) + bg + 1.0)) + 1.0

    def _idfs(self, tokens: Iterable[str]) -> Iterator[float]:
        """``idf(t)`` of each token, computed alike (the same float operations) without a
        call per token: the add's hottest arithmetic. The index must not change while
        it is consumed."""
        bgc = self._bg_cache
        df = self._df
        log = math.log
        n = len(self._clusters) + 1.0 + self.settings.bg_size
        for t in tokens:
            bg = bgc.get(t)
            if bg is None:
                bg = bgc[t] = self._bg(t)
            yield log(n / (df.get(t, 0) + bg + 1.0)) + 1.0

    # -- internals ----------------------------------------------------------------------

    def _get(self, cluster_id: str) -> _Cluster | None:
        num = self._by_id.get(cluster_id)
        return None if num is None else self._clusters.get(num)

    def _keys(self, story: Story, norm: str) -> list[int]:
        keys = [_hash(story.id) << 2]  # _key(_ID, story.id)
        if story.link:
            keys.append(_hash(story.link) << 2 | _LINK)
        # a normalised title is single-spaced: its words are its spaces plus one
        if (norm.count(" ") + 1 if norm else 0) >= self.settings.min_exact_tokens:
            keys.append(_hash(norm) << 2 | _TITLE)
        return keys

    def _respell(self, f: Features) -> Features:
        """``f`` with each long word that neither the window nor the background table
        knows replaced by the window's closest spelling of it sharing its first three
        letters, when rapidfuzz's ratio reaches ``respell``: transliterations and typos
        (Zelenskyy / Zelensky, Netanyahou / Netanyahu, bankrupcy / bankruptcy) count as
        the same word; ordinary words (addiction / addition) are never touched."""
        st = self.settings
        if not st.respell:
            return f
        from rapidfuzz import fuzz, process

        df = self._df
        zipf = _background()[0]
        spelling: dict[str, str] | None = None
        for t in (*f.tokens, *f.lead):
            if len(t) < st.respell_len or t in df or t in zipf or t.isdigit():
                continue  # a word of the language is not a misspelling of another
            bucket = self._prefix.get(t[:3])
            if not bucket:
                continue
            hit = process.extractOne(t, bucket.keys(), scorer=fuzz.ratio,
                                     score_cutoff=st.respell)
            if hit is not None:
                if spelling is None:
                    spelling = {}
                spelling[t] = hit[0]
        return f if spelling is None else f.respelled(spelling)

    def _story_vector(
        self, f: Features
    ) -> tuple[dict[str, float], float, dict[str, float]]:
        """The story's token → weight (its group weight times IDF), the vector's length
        and the IDF of each token."""
        idf: dict[str, float] = dict(zip(f.tokens, self._idfs(f.tokens), strict=True))
        weights: dict[str, float] = dict(idf)
        if f.lead:
            lw = self.settings.lead_weight
            for t, i in zip(f.lead, self._idfs(f.lead), strict=True):
                idf[t] = i
                weights[t] = lw * i
        norm = math.sqrt(sum(w * w for w in weights.values()))
        return weights, norm, idf

    def _norm(self, c: _Cluster) -> float:
        """The length of the cluster's centroid (token count times IDF). Kept as a running
        sum of squares: each new member adds its words' terms at the IDF of the moment,
        and the sum is taken afresh over every word when the cluster has doubled since
        (``_renorm``), so a big story costs no more per member than a small one."""
        return math.sqrt(c.sq) if c.sq > 0.0 else 1.0

    def _renorm(self, c: _Cluster) -> None:
        c.sq = sum((k * i) ** 2 for k, i in zip(c.tf.values(), self._idfs(c.tf), strict=True))
        if c.ttf is not None:
            c.tsq = sum((k * i) ** 2 for k, i in zip(c.ttf.values(), self._idfs(c.ttf), strict=True))
        c.norm_n = c.n

    def _cosine(self, f: Features, c: _Cluster, full: float, idf: dict[str, float],
                tnorm: float) -> float:
        """The cosine a score starts from: that of the title and lead (``full``), unless
        the story or the cluster has a lead, then the better of the titles' alone and
        the full one less ``lead_threshold`` (a wire copy keeps the headline and
        rewrites the summary; a longer text shares more words by chance)."""
        if not f.lead and c.ttf is None:
            return full
        st = self.settings
        lead = full - (st.lead_threshold if f.lead else 0.0)
        return max(self._title_cosine(f, c, idf, tnorm) - st.title_threshold, lead)

    def _title_cosine(self, f: Features, c: _Cluster, idf: dict[str, float],
                      tnorm: float) -> float:
        """The cosine of the story's title alone (``tnorm`` its length) to the centroid of
        the cluster's titles alone."""
        ttf = c.tf if c.ttf is None else c.ttf
        tsq = c.sq if c.ttf is None else c.tsq
        if not tnorm or tsq <= 0.0:
            return 0.0
        dot = 0.0
        for t in f.tokens:
            k = ttf.get(t)
            if k:
                i = idf[t]
                dot += i * i * k
        return dot / (tnorm * math.sqrt(tsq))

    def _is_name(self, tok: str) -> bool:
        """What the case table says: capitalised in most sentence-case headlines that use
        it after their first word; a token the table has not seen may be one."""
        marks = self._case.get(tok)
        return marks is None or marks[0] > marks[1]

    def _anchor(self, f: Features, c: _Cluster, cos: float) -> str | None:
        """The rare name anchoring the story to ``c`` (see the module docstring)."""
        st = self.settings
        if cos < st.anchor_min or not st.anchor_bonus:
            return None
        need = st.anchor_share * c.n
        zipf = _background()[0]
        for t in f.tokens:
            k = c.tf.get(t)
            if (k is None or k < need or t.isdigit() or zipf.get(t, 0.0) >= st.anchor_zipf
                    or k < st.anchor_within * self._uses.get(t, 0.0) or not self._is_name(t)):
                continue
            return t
        return None

    def _decide(
        self, story: Story, f: Features, keys: list[int], t_story: float, *, quick: bool = False
    ) -> tuple[Decision, int | None, int | None]:
        """The decision, the number of the cluster the story joins (None for a new one),
        and for a near miss the number of the cluster to link the new one to."""
        exact = self._exact
        for key in keys:
            hit = exact.get(key)
            if hit is not None:
                num, sid = hit
                return (Seen(cluster=self._clusters[num].id, matched_with=sid,
                             reason=_REASONS[key & 3]), num, None)
        if not f.tokens and not f.lead:
            return New(cluster=story.id), None, None
        weights, snorm, idf = self._story_vector(f)
        st = self.settings
        threshold = st.threshold
        tnorm = math.sqrt(sum(idf[t] ** 2 for t in f.tokens))
        best: tuple[float, float, _Cluster] | None = None
        candidates = (self._candidates(weights, QUICK_POSTING, QUICK_CANDIDATES) if quick
                      else self._candidates(weights, st.max_posting, st.max_candidates))
        for c in candidates:
            tf = c.tf
            dot = 0.0
            shared = 0
            for t, w in weights.items():
                k = tf.get(t)
                if k:
                    dot += w * k * idf[t]
                    shared += 1
            if not shared:
                continue
            cos = self._cosine(f, c, dot / (snorm * self._norm(c)), idf, tnorm)
            if cos + st.anchor_bonus < threshold - st.near_margin:
                continue  # cannot even be a near miss (the terms taken off only lower it)
            r = self._score(f, c, cos, shared, t_story, threshold)
            if not r.blocked and (best is None or r.score > best[0]):
                best = (r.score, r.cos, c)
        if best is None:
            return New(cluster=story.id), None, None
        score, _, c = best
        if score >= threshold:
            return (SameStory(cluster=c.id, score=round(score, 4), matched_with=c.members[0],
                              reason=f"score {score:.2f}"), c.num, None)
        if score >= threshold - st.near_margin:
            return New(cluster=story.id), None, c.num
        return New(cluster=story.id), None, None

    def _score(self, f: Features, c: _Cluster, cos: float, shared: int,
               t_story: float | None, threshold: float) -> _Scored:
        """The score of a story (features ``f``, cosine ``cos`` to ``c``'s centroid, ``shared``
        words in common) against ``c``: the cosine, plus the rare-name bonus when it is
        needed (one word in common, or below ``threshold``), less the time penalty (none
        when ``t_story`` is None) and the young-cluster penalty. ``blocked``: one word in
        common and no rare name, so the story cannot join whatever the score. The one
        scoring of ``add``, ``decide`` and ``explain``."""
        st = self.settings
        small = st.small_penalty / c.n
        score = cos - small
        if t_story is not None:
            score -= _time_penalty(t_story, c, st.time_grace, st.time_penalty)
        anchor = None
        if shared < min(st.min_shared, len(f.tokens) + len(f.lead)):
            # one word in common: only a rare name can carry it
            anchor = self._anchor(f, c, cos) if st.anchor_alone else None
            if anchor is None:
                return _Scored(score=score, cos=cos, anchor=None, blocked=True)
            score += st.anchor_bonus + small / 2
        elif score < threshold:
            anchor = self._anchor(f, c, cos)
            if anchor is not None:
                score += st.anchor_bonus + small / 2
        return _Scored(score=score, cos=cos, anchor=anchor, blocked=False)

    def _candidates(self, weights: dict[str, float], max_posting: int,
                    max_candidates: int) -> list[_Cluster]:
        """Blocking: the clusters in the postings of the story's rarest tokens (the
        ``max_posting`` most recently updated of each), the ``max_candidates`` sharing the
        most weight."""
        st = self.settings
        postings = self._postings
        block = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[: st.block_tokens]
        votes: dict[int, float] = {}
        for t, w in block:
            p = postings.get(t)
            if p is None:
                continue
            for num in islice(reversed(p), max_posting):
                votes[num] = votes.get(num, 0.0) + w
        clusters = self._clusters
        if len(votes) > max_candidates:
            # (weight, num) pairs: the order of nlargest(key=(votes[n], n)), without a
            # Python call per cluster
            return [clusters[n] for _, n in heapq.nlargest(
                max_candidates, zip(votes.values(), votes, strict=True))]
        return [clusters[n] for n in sorted(votes)]

    def _centroid_cosine(self, a: _Cluster, b: _Cluster) -> float:
        """The cosine of two clusters' centroids, less the time penalty between them."""
        st = self.settings
        gap = max(a.first_pub - b.last_pub, b.first_pub - a.last_pub, 0.0)
        penalty = max(0.0, gap - st.time_grace) / 86400.0 * st.time_penalty
        if len(a.tf) > len(b.tf):
            a, b = b, a
        idf = self.idf
        tf = b.tf
        dot = sum(k * tf[t] * idf(t) ** 2 for t, k in a.tf.items() if t in tf)
        return dot / (self._norm(a) * self._norm(b)) - penalty

    def _second_chance(self, c: _Cluster) -> _Cluster:
        """Merge the clusters linked to ``c`` by a near miss whose centroids are now
        close enough; the younger goes into the older. Returns the survivor."""
        thr = self.settings.merge_threshold
        for num in list(c.near):
            other = self._clusters.get(num)
            if other is None or other is c or self._centroid_cosine(c, other) < thr:
                continue
            # the older keeps its id: by first sighting then id, the same on every instance
            old, young = (c, other) if (c.first, c.id) <= (other.first, other.id) else (other, c)
            self._absorb(old, young)
            c = old
        return c

    def _absorb(self, old: _Cluster, young: _Cluster) -> None:
        """Move ``young``'s members, tokens, keys and sources into ``old``."""
        num = old.num
        df = self._df
        postings = self._postings
        tf = old.tf
        for t, k in young.tf.items():
            p = postings[t]
            del p[young.num]
            if t in tf:
                tf[t] += k
                df[t] -= 1
                p.pop(num, None)
            else:
                tf[t] = k
            p[num] = None
        if old.ttf is not None or young.ttf is not None:
            if old.ttf is None:  # old had no lead: its counts before young's were titles
                titles = {t: round(k - young.tf.get(t, 0.0), 6) for t, k in tf.items()}
                titles = {t: k for t, k in titles.items() if k > 0.0}
            else:
                titles = old.ttf
            for t, k in (young.ttf if young.ttf is not None else young.tf).items():
                titles[t] = titles.get(t, 0.0) + k
            old.ttf = titles
        exact = self._exact
        for key in young.keys:
            hit = exact.get(key)
            if hit is not None and hit[0] == young.num:
                exact[key] = (num, hit[1])
                old.keys.append(key)
        old.members.extend(young.members)
        for feed, t0 in young.sources.items():
            if t0 < old.sources.get(feed, math.inf):
                old.sources[feed] = t0
        old.n += young.n
        old.first = min(old.first, young.first)
        old.first_pub = min(old.first_pub, young.first_pub)
        old.last_pub = max(old.last_pub, young.last_pub)
        if young.last > old.last:
            old.last = young.last
            heapq.heappush(self._heap, (old.last, num))
        for n in young.near:
            other = self._clusters.get(n)
            if other is None:
                continue
            other.near = [m for m in other.near if m != young.num]
            if n != num and n not in old.near:
                old.near.append(n)
                other.near.append(num)
        old.near = [n for n in old.near if n != young.num]
        del self._clusters[young.num]
        del self._by_id[young.id]
        self._renorm(old)
        self._merged.append(young.id)

    def _insert(
        self,
        story: Story,
        f: Features,
        num: int | None,
        *,
        cluster_id: str | None = None,
        keys: list[int] | None = None,
        pub: float | None = None,
    ) -> _Cluster:
        """Add the story to cluster ``num``, else to the open cluster ``cluster_id`` (by
        default the story's id), else to a new cluster of that id: its times, sources,
        tokens (counts, document frequencies, postings, case marks), its exact keys and
        the cluster's place in the eviction heap. Returns the cluster."""
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
        c.first_pub = min(c.first_pub, pub)
        c.last_pub = max(c.last_pub, pub)
        self._count_tokens(c, f)
        if c.n >= 2 * c.norm_n:
            self._renorm(c)
        exact = self._exact
        for key in keys if keys is not None else self._keys(story, f.norm):
            if key not in exact:
                exact[key] = (num, story.id)
                c.keys.append(key)
        if seen_at > c.last or c.n == 1:
            c.last = seen_at
            heapq.heappush(self._heap, (seen_at, num))
        self._stories += 1
        self.inserted += 1
        return c

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
        """Count a new member's tokens into the cluster, the document frequencies, the
        window's uses, the postings (the cluster moves to the end: most recent) and the
        case table."""
        num = c.num
        tf = c.tf
        df = self._df
        uses = self._uses
        postings = self._postings
        lw = self.settings.lead_weight
        idf = self.idf
        prefix = self._prefix
        min_len = self.settings.respell_len
        if f.lead and c.ttf is None:  # the first lead: the titles get their own centroid
            c.ttf = dict(tf)
            c.tsq = c.sq
        ttf = c.ttf
        if ttf is not None:
            for t in f.tokens:
                k = ttf.get(t, 0.0)
                if c.norm_n:
                    i = idf(t)
                    c.tsq += (k * 2.0 + 1.0) * i * i
                ttf[t] = k + 1.0
        for part, w in ((f.tokens, 1.0), (f.lead, lw)):
            for t in part:
                have = tf.get(t)
                uses[t] = uses.get(t, 0.0) + w
                p = postings.get(t)
                if p is None:
                    postings[t] = {num: None}
                else:
                    p.pop(num, None)
                    p[num] = None
                if c.norm_n:  # the running sum: (k + w)^2 - k^2, times idf^2
                    i = idf(t)
                    c.sq += ((have or 0.0) * 2.0 + w) * w * i * i
                if have is None:
                    tf[t] = w
                    d = df.get(t)
                    if d is None:
                        df[t] = 1
                        if len(t) >= min_len and not t.isdigit():
                            prefix.setdefault(t[:3], {})[t] = None
                    else:
                        df[t] = d + 1
                else:
                    tf[t] = have + w
        case = self._case
        for t, cap in f.case:
            marks = case.get(t)
            if marks is None:
                marks = case[t] = [0, 0]
            marks[0 if cap else 1] += 1

    def _drop(self, c: _Cluster) -> None:
        for n in c.near:
            other = self._clusters.get(n)
            if other is not None:
                other.near = [m for m in other.near if m != c.num]
        del self._clusters[c.num]
        self._by_id.pop(c.id, None)
        for key in c.keys:
            hit = self._exact.get(key)
            if hit is not None and hit[0] == c.num:
                del self._exact[key]
        df = self._df
        uses = self._uses
        for t, k in c.tf.items():
            d = df[t] - 1
            if d:
                df[t] = d
                uses[t] -= k
            else:
                del df[t]
                del uses[t]
                bucket = self._prefix.get(t[:3])
                if bucket is not None and bucket.pop(t, 0) is None and not bucket:
                    del self._prefix[t[:3]]
            p = self._postings[t]
            p.pop(c.num, None)
            if not p:
                del self._postings[t]
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
