"""Pure matching: compiled rules × story → matches, and an explanation of why.

How it stays fast with many rules:

1. ``Matcher(ruleset)`` compiles once: every distinct term of every rule and actor alias gets
   an id; a single dict maps the key of a term's first token (stem, exact or prefix key, see
   ``monitor.core.rules.terms``) to the terms starting with it.
2. ``match(story)`` tokenises each searched field once and does one dict lookup per token
   (a per-matcher cache of the index entries a token starts: its stem, exact and prefix keys
   are looked up on the token's first sighting only), verifying phrases in place.
3. Only rules that reference a term that occurred (or that contain a regex) are evaluated;
   evaluation is a small boolean walk over sets of term ids. Positions are consulted only for
   NEAR, and character offsets only for the rules that matched (once per story and term,
   shared by the rules that matched it).

Matching comes in two halves. ``prematch(story)`` is the costly one, about the text only
(which rules' conditions hold, which terms and actors, where): a ``Prematch`` of
``TextMatch``, cheap to pickle, so the parse pool can compute it. ``match(story,
prematched=...)`` adds what depends on the story's cluster (scope, corroboration) and on the
configuration (channels, severity, cooldown, digest: this matcher's rule's say) and builds
each ``Match`` once. ``explain(story)`` evaluates every rule and says why (see
``monitor.core.rules.explain``).

Rule regexes run on RE2 (``monitor.core.rules.regex``), whose time is linear in the text,
and within a per-story budget (``regex.REGEX_BUDGET`` characters scanned, each regex term scanning
each searched field counting the field's length). Fields are scanned in order (title first)
and regex terms in order; once the next scan would pass the budget, the story's remaining
regex scans are skipped. A rule is then evaluated with those terms unknown (three-valued:
``a OR /x/`` still holds when ``a`` occurs); a rule whose outcome depends on them is
*undecided*: it does not fire, and ``Prematch.skipped`` (``RegexSkipped``) names it, so the
shell can log it. The same story and rules always give the same result.

No clock, no I/O: ``sources`` (distinct sources carrying the story's cluster) is an argument.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import compress
from typing import Any

from monitor.core.model import Hit, Match, Story
from monitor.core.rules import regex
from monitor.core.rules.explain import Condition, RuleExplanation, explain_condition, verdict
from monitor.core.rules.expr import Actor, Near, Node, Not, Or, Term, render
from monitor.core.rules.model import DEFAULT_FIELDS, Rule, RuleSet
from monitor.core.rules.regex import RuleRegex, compile_rule_regex
from monitor.core.rules.terms import (
    _CACHE,
    EXACT,
    PREFIX,
    TOKEN_RE,
    Mode,
    TermSpec,
    sentence_ids,
    token_keys,
)

_EXACT_NS = "\x00="
_PREFIX_NS = "\x00*"
MAX_HITS = 50
_TOK_CACHE_MAX = 200_000

# compiled condition opcodes
_TERM, _ANYOF, _ALLOF, _AND, _OR, _NOT, _NEAR = range(7)


def field_text(story: Story, name: str) -> str:
    """The text of one searchable field of a story."""
    if name == "title":
        return story.title
    if name == "summary":
        return story.summary
    if name == "content":
        return story.content
    if name == "author":
        return "; ".join(story.authors)
    if name == "tags":
        return "; ".join(story.tags)
    if name == "link":
        return story.link
    raise ValueError(f"unknown field {name!r}")


@dataclass(slots=True)
class _Field:
    text: str
    toks: list[str]
    spans: list[tuple[int, int]] | None = None
    sents: list[int] | None = None

    def span_list(self) -> list[tuple[int, int]]:
        if self.spans is None:
            # The tokens are TOKEN_RE's consecutive matches and the pattern has no lookaround:
            # a token's text cannot occur earlier in the gap before it (the pattern would have
            # matched there), so finding it from the previous token's end gives its offset;
            # twice as fast as a second regex pass with Match.span().
            spans: list[tuple[int, int]] = []
            append = spans.append
            find = self.text.find
            pos = 0
            for tok in self.toks:
                pos = find(tok, pos)
                end = pos + len(tok)
                append((pos, end))
                pos = end
            self.spans = spans
        return self.spans

    def sentence(self, ti: int) -> int:
        if self.sents is None:
            self.sents = sentence_ids(self.text, [s for s, _ in self.span_list()])
        return self.sents[ti]


# an occurrence: (token start, token end (exclusive), char start, char end); chars -1 = from tokens
_Occ = tuple[int, int, int, int]


@dataclass(slots=True)
class _Scan:
    fields: dict[str, _Field] = field(default_factory=dict)
    occ: dict[str, dict[int, list[_Occ]]] = field(default_factory=dict)
    present_cache: dict[tuple[str, ...], frozenset[int]] = field(default_factory=dict)
    # (field, term id, label) → that term's hits in the field, in occurrence order, each as
    # (sort key, end, Hit): built once per story, shared by every rule that matched it
    hit_cache: dict[tuple[str, int, str], list[tuple[int, int, Hit]]] = field(default_factory=dict)
    # the regex budget: characters scanned so far, and per field the regex term ids whose
    # scan of it was skipped because the budget ran out (empty when it did not)
    regex_chars: int = 0
    regex_wanted: int = 0  # the characters all regex scans would have taken
    skipped: dict[str, set[int]] = field(default_factory=dict)

    def unscanned(self, fields: tuple[str, ...]) -> frozenset[int]:
        """Regex term ids not searched in some of ``fields`` (the budget ran out)."""
        if not self.skipped:
            return frozenset()
        return frozenset(t for f in fields for t in self.skipped.get(f, ()))

    def present(self, fields: tuple[str, ...]) -> frozenset[int]:
        p = self.present_cache.get(fields)
        if p is None:
            s: set[int] = set()
            for f in fields:
                o = self.occ.get(f)
                if o:
                    s.update(o)
            p = self.present_cache[fields] = frozenset(s)
        return p


@dataclass(frozen=True, kw_only=True, slots=True)
class _CRule:
    rule: Rule
    cond: tuple[Any, ...]
    positive: frozenset[int]  # term ids whose occurrence can make the rule true
    labels: dict[int, str]  # term id → label in this rule ("@actor" for aliases)
    actor_tids: tuple[tuple[str, frozenset[int]], ...]
    alias_tids: frozenset[int]  # the union of actor_tids
    has_regex: bool
    regex_tids: frozenset[int]  # the regex terms the rule refers to, either way (NOT too)


# --- the matcher -------------------------------------------------------------------------


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, kw_only=True, slots=True)
class TextMatch:
    """A rule whose conditions on a story's text hold, scope not yet applied: what the text
    says, never what to do about it (channels, severity, cooldown and digest are the rule's,
    looked up by the matcher that makes the ``Match``).

    ``rule`` is the rule's index in the rule set it was matched with: a matcher compiled from
    the same files (the same ``RuleSet.fingerprint``) has the same rules in the same order."""

    rule: int
    terms: tuple[str, ...]  # the rule's terms that occur
    actors: tuple[str, ...]  # the rule's actors one of whose aliases occurs
    hits: tuple[Hit, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class RegexSkipped:
    """A story whose regex budget ran out: what was not searched, and what that left open."""

    budget: int  # characters of regex scanning allowed per story (``Matcher.regex_budget``)
    wanted: int  # characters all of the story's regex scans would have taken
    terms: tuple[str, ...]  # the regex terms not searched in some field (labels, term order)
    # the rules whose outcome depended on those terms: they did not fire on this story
    undecided: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Prematch:
    """``Matcher.prematch``: the text half of matching (small, picklable)."""

    texts: tuple[TextMatch, ...] = ()  # the rules whose text conditions hold, in rule order
    skipped: RegexSkipped | None = None  # set when the story's regex budget ran out


class Matcher:
    """Compiled rules. ``match()`` and ``explain()`` are pure and thread-safe.

    ``regex_budget``: characters of regex scanning per story (see the module docstring);
    None: ``regex.REGEX_BUDGET``."""

    def __init__(self, ruleset: RuleSet, *, regex_budget: int | None = None) -> None:
        self.ruleset = ruleset
        self.regex_budget = regex.REGEX_BUDGET if regex_budget is None else regex_budget
        self._terms: list[TermSpec] = []
        self._tid_by_key: dict[tuple[object, ...], int] = {}
        self._index: dict[str, list[tuple[int, tuple[tuple[Mode, str], ...]]]] = {}
        self._regex: list[tuple[int, RuleRegex]] = []
        prefix_lens: set[int] = set()
        self._has_exact = False
        self._actor_tids: dict[str, frozenset[int]] = {}
        for name, actor in ruleset.actors.items():
            self._actor_tids[name] = frozenset(self._tid(s) for s in actor.aliases)
        self._rules: list[_CRule] = []
        fields: set[str] = set()
        for rule in ruleset.rules:
            cr = self._compile_rule(rule)
            self._rules.append(cr)
            if rule.enabled:
                fields.update(rule.fields)
        for spec in self._terms:
            if spec.regex is None:
                mode, key = spec.tokens[0]
                if mode == PREFIX:
                    prefix_lens.add(len(key))
                self._has_exact |= any(m == EXACT for m, _ in spec.tokens)
        self._prefix_lens = tuple(sorted(prefix_lens))
        # token → the index entries it starts (``_token_entries``), filled as stories come
        self._tok_entries: dict[str, tuple[tuple[int, tuple[tuple[Mode, str], ...]], ...]] = {}
        self._fields = tuple(f for f in ("title", "summary", "content", "author", "tags", "link") if f in fields)
        # Prefilter: every rule gets up to _SLOTS necessary clauses (sets of term ids, one of
        # which must occur for the rule to hold). Per term id and slot, a bitmask of the rules
        # whose clause in that slot it satisfies; per story, OR the masks of the terms that
        # occurred, AND the slots: the set bits are the only rules worth evaluating.
        slot_masks: dict[int, dict[int, int]] = {}
        always = 0
        short = [0] * _SLOTS  # rules with fewer clauses than slot j pass it
        for i, cr in enumerate(self._rules):
            if not cr.rule.enabled:
                continue
            bit = 1 << i
            clauses = sorted(_clauses(cr.cond), key=len)
            if cr.has_regex or not clauses:
                always |= bit
                continue
            for j in range(_SLOTS):
                if j >= len(clauses):
                    short[j] |= bit
                    continue
                for tid in clauses[j]:
                    d = slot_masks.setdefault(tid, {})
                    d[j] = d.get(j, 0) | bit
        self._slot_masks = {t: tuple(d.items()) for t, d in slot_masks.items()}
        self._short = tuple(short)
        self._always = always

    # compile --------------------------------------------------------------------------
    def _tid(self, spec: TermSpec) -> int:
        tid = self._tid_by_key.get(spec.key)
        if tid is not None:
            return tid
        tid = len(self._terms)
        self._terms.append(spec)
        self._tid_by_key[spec.key] = tid
        if spec.regex is not None:
            self._regex.append((tid, compile_rule_regex(spec.regex, spec.flags)))
        else:
            (mode, key), rest = spec.tokens[0], spec.tokens[1:]
            k = key if mode == "stem" else (_EXACT_NS if mode == EXACT else _PREFIX_NS) + key
            self._index.setdefault(k, []).append((tid, rest))
        return tid

    def _compile_rule(self, rule: Rule) -> _CRule:
        labels: dict[int, str] = {}
        positive: set[int] = set()
        has_regex = [False]
        regex_tids: set[int] = set()
        actors: dict[str, frozenset[int]] = {}

        def comp(node: Node, pos: bool) -> tuple[Any, ...]:
            if isinstance(node, Term):
                tid = self._tid(node.spec)
                labels.setdefault(tid, node.spec.label)
                if node.spec.regex is not None:
                    regex_tids.add(tid)
                if pos:
                    positive.add(tid)
                    has_regex[0] |= node.spec.regex is not None
                return (_TERM, tid)
            if isinstance(node, Actor):
                tids = self._actor_tids[node.name]
                actors[node.name] = tids
                for t in tids:
                    labels.setdefault(t, f"@{node.name}")
                    if self._terms[t].regex is not None:
                        regex_tids.add(t)
                    if pos:
                        positive.add(t)
                        has_regex[0] |= self._terms[t].regex is not None
                return (_ANYOF, tids)
            if isinstance(node, Not):
                return (_NOT, comp(node.item, not pos))
            if isinstance(node, Near):
                sets = tuple(frozenset(self._leaf_tids(i, comp, pos)) for i in node.items)
                return (_NEAR, sets, node.within, node.same_sentence)
            kids = tuple(comp(i, pos) for i in node.items)
            if isinstance(node, Or):
                if kids and all(k[0] in (_TERM, _ANYOF) for k in kids):
                    return (_ANYOF, frozenset(_flat(kids)))
                return (_OR, kids)
            if kids and all(k[0] == _TERM for k in kids):
                return (_ALLOF, frozenset(k[1] for k in kids))
            return (_AND, kids)

        cond = comp(rule.condition, True)
        return _CRule(
            rule=rule,
            cond=cond,
            positive=frozenset(positive),
            labels=labels,
            actor_tids=tuple(actors.items()),
            alias_tids=frozenset(t for ts in actors.values() for t in ts),
            has_regex=has_regex[0],
            regex_tids=frozenset(regex_tids),
        )

    def _leaf_tids(self, node: Node, comp: Any, pos: bool) -> set[int]:
        c = comp(node, pos)
        if c[0] == _TERM:
            return {c[1]}
        return set(c[1])

    # scan -----------------------------------------------------------------------------
    def _token_entries(self, tok: str) -> tuple[tuple[int, tuple[tuple[Mode, str], ...]], ...]:
        """The index entries a token starts (stem, then exact, then prefixes by length), cached."""
        k = _CACHE.get(tok) or token_keys(tok)
        index_get = self._index.get
        out: list[tuple[int, tuple[tuple[Mode, str], ...]]] = []
        entries = index_get(k[0])
        if entries is not None:
            out += entries
        if self._has_exact:
            entries = index_get(_EXACT_NS + k[2])
            if entries is not None:
                out += entries
        nk = k[1]
        for ln in self._prefix_lens:
            if len(nk) < ln:
                break
            entries = index_get(_PREFIX_NS + nk[:ln])
            if entries is not None:
                out += entries
        cache = self._tok_entries
        if len(cache) >= _TOK_CACHE_MAX:
            cache.clear()
        res = cache[tok] = tuple(out)
        return res

    def _scan(self, story: Story, fields: Iterable[str]) -> _Scan:
        scan = _Scan()
        tok_get = self._tok_entries.get
        for fname in fields:
            text = field_text(story, fname)
            if not text:
                continue
            toks = TOKEN_RE.findall(text)
            fd = _Field(text, toks)
            scan.fields[fname] = fd
            occ: dict[int, list[_Occ]] = {}
            # one dict lookup per token; () when it starts no term (falsy for compress)
            ents = list(map(tok_get, toks))
            if None in ents:
                for i, e in enumerate(ents):
                    if e is None:
                        ents[i] = self._token_entries(toks[i])
            n = len(toks)
            for i in compress(range(n), ents):
                for tid, rest in ents[i]:  # type: ignore[union-attr]
                    if not rest:
                        item = (i, i + 1, -1, -1)
                    elif _phrase_at(rest, toks, i, n):
                        item = (i, i + 1 + len(rest), -1, -1)
                    else:
                        continue
                    o = occ.get(tid)
                    if o is None:
                        occ[tid] = [item]
                    else:
                        o.append(item)
            if self._regex:
                starts: list[int] | None = None
                for tid, rx in self._regex:
                    scan.regex_wanted += len(text)
                    if scan.skipped or scan.regex_chars + len(text) > self.regex_budget:
                        scan.skipped.setdefault(fname, set()).add(tid)
                        continue
                    scan.regex_chars += len(text)
                    for m in rx.finditer(text):
                        if m.end() == m.start():
                            continue
                        if starts is None:
                            starts = [s for s, _ in fd.span_list()]
                        ti = max(bisect.bisect_right(starts, m.start()) - 1, 0)
                        tj = max(bisect.bisect_left(starts, m.end()), ti + 1)
                        occ.setdefault(tid, []).append((ti, tj, m.start(), m.end()))
            if occ:
                scan.occ[fname] = occ
        return scan

    # evaluation -----------------------------------------------------------------------
    def _eval(self, c: tuple[Any, ...], present: frozenset[int], scan: _Scan, fields: tuple[str, ...]) -> bool:
        op = c[0]
        if op == _TERM:
            return c[1] in present
        if op == _ANYOF:
            return not present.isdisjoint(c[1])
        if op == _ALLOF:
            return c[1] <= present  # type: ignore[no-any-return]
        if op == _AND:
            return all(self._eval(k, present, scan, fields) for k in c[1])
        if op == _OR:
            return any(self._eval(k, present, scan, fields) for k in c[1])
        if op == _NOT:
            return not self._eval(c[1], present, scan, fields)
        return _near(c[1], c[2], c[3], scan, fields)[0]

    def _scope(
        self,
        rule: Rule,
        story: Story,
        sources: int,
        source_names: tuple[str, ...],
        source_seen: Mapping[str, datetime] | None = None,
    ) -> list[tuple[str, bool, str]]:
        """Scope and corroboration checks: (name, ok, note)."""
        out: list[tuple[str, bool, str]] = []
        if rule.feeds:
            ok = story.feed in rule.feeds or any(s in rule.feeds for s in source_names)
            out.append(("feeds", ok, f"feed {story.feed!r} " + ("is" if ok else "is not") + f" in {list(rule.feeds)}"))
        if rule.feed_tags:
            ok = any(t in rule.feed_tags for t in story.feed_tags)
            out.append(("feed_tags", ok, f"feed tags {list(story.feed_tags)} vs {list(rule.feed_tags)}"))
        if rule.languages:
            lang = (story.lang or "").lower()
            ok = bool(lang) and any(lang == x or lang.startswith(x + "-") or lang.startswith(x + "_") for x in rule.languages)
            out.append(("languages", ok, f"language {story.lang or 'unknown'} vs {list(rule.languages)}"))
        if rule.min_sources > 1:
            if source_seen is not None and rule.window:
                # the sources that carried the story within the rule's window, counted back
                # from this story's arrival
                since = story.first_seen - timedelta(seconds=rule.window)
                n = sum(1 for t in source_seen.values() if t >= since)
                ok = n >= rule.min_sources
                out.append(("min_sources", ok, f"needs {rule.min_sources} sources within "
                            f"{_human(rule.window)}, the story has {n}"))
            else:
                ok = sources >= rule.min_sources
                out.append(("min_sources", ok, f"needs {rule.min_sources} sources, the story has {sources}"))
        return out

    def _title_hit(self, cr: _CRule, scan: _Scan) -> bool:
        occ = scan.occ.get("title")
        return occ is not None and not cr.positive.isdisjoint(occ.keys())

    def match(
        self,
        story: Story,
        *,
        sources: int = 1,
        source_names: tuple[str, ...] = (),
        prematched: Prematch | None = None,
        source_seen: Mapping[str, datetime] | None = None,
    ) -> tuple[Match, ...]:
        """The enabled rules that fire on ``story`` (in rule order).

        ``prematched`` is ``self.prematch(story)`` computed earlier (e.g. in a worker
        process by a matcher compiled from the same rule files, perhaps without the
        config): only the scope and corroboration checks, which depend on the story's
        cluster, are left to do. Either way each ``Match`` takes what to do (channels,
        severity, cooldown, digest) from this matcher's rule."""
        if prematched is None:
            texts, _ = self._text_matches(story, story, sources, source_names, source_seen)
        elif not prematched.texts:
            return ()
        else:
            texts = [t for t in prematched.texts
                     if self._in_scope(self._rules[t.rule].rule, story, sources, source_names, source_seen)]
        return tuple([_match(self._rules[t.rule].rule, t) for t in texts])

    def prematch(self, story: Story) -> Prematch:
        """The rules whose conditions on the story's text hold, scope not yet applied:
        the costly, cluster-independent half of ``match`` (picklable); with what the regex
        budget left unsearched, if it ran out."""
        texts, skipped = self._text_matches(story, None, 1, ())
        return Prematch(texts=tuple(texts), skipped=skipped)

    def _in_scope(
        self,
        rule: Rule,
        story: Story,
        sources: int,
        source_names: tuple[str, ...],
        source_seen: Mapping[str, datetime] | None,
    ) -> bool:
        """Whether the rule's scope and corroboration checks pass (most rules have none)."""
        if not (rule.feeds or rule.feed_tags or rule.languages or rule.min_sources > 1):
            return True
        return all(ok for _, ok, _ in self._scope(rule, story, sources, source_names, source_seen))

    def _text_matches(
        self,
        story: Story,
        scoped: Story | None,
        sources: int,
        source_names: tuple[str, ...],
        source_seen: Mapping[str, datetime] | None = None,
    ) -> tuple[list[TextMatch], RegexSkipped | None]:
        """The rules whose text conditions hold; with ``scoped``, rules out of scope are
        skipped before their conditions are evaluated. With them, what the regex budget
        left unsearched (None when it did not run out)."""
        scan = self._scan(story, self._fields)
        sat = list(self._short)
        masks = self._slot_masks
        for occ in scan.occ.values():
            for tid in occ:
                ms = masks.get(tid)
                if ms is not None:
                    for j, m in ms:
                        sat[j] |= m
        cands = self._always | _and_all(sat)
        out: list[TextMatch] = []
        undecided: list[str] = []
        while cands:
            low = cands & -cands
            cands ^= low
            i = low.bit_length() - 1
            cr = self._rules[i]
            rule = cr.rule
            if scoped is not None and not self._in_scope(rule, scoped, sources, source_names, source_seen):
                continue
            present = scan.present(rule.fields)
            unknown = scan.unscanned(rule.fields) & cr.regex_tids if scan.skipped else frozenset()
            if unknown:
                held = _eval3(cr.cond, present, unknown - present, scan, rule.fields)
                if held is None:
                    undecided.append(rule.name)
                    continue
                if not held:
                    continue
            elif present.isdisjoint(cr.positive) or not self._eval(cr.cond, present, scan, rule.fields):
                continue
            if rule.require_title and not self._title_hit(cr, scan):
                continue
            out.append(self._text_match(i, cr, scan, present))
        return out, self._skipped(scan, undecided)

    def _skipped(self, scan: _Scan, undecided: list[str]) -> RegexSkipped | None:
        """What the regex budget left unsearched in ``scan``, if it ran out."""
        if not scan.skipped:
            return None
        tids = sorted({t for ts in scan.skipped.values() for t in ts})
        return RegexSkipped(
            budget=self.regex_budget,
            wanted=scan.regex_wanted,
            terms=tuple(dict.fromkeys(self._terms[t].label for t in tids)),
            undecided=tuple(undecided),
        )

    def _text_match(self, i: int, cr: _CRule, scan: _Scan, present: frozenset[int]) -> TextMatch:
        found = cr.positive & present
        alias_tids = cr.alias_tids
        return TextMatch(
            rule=i,
            terms=tuple(dict.fromkeys(cr.labels[t] for t in sorted(found) if t not in alias_tids)),
            actors=tuple(a for a, ts in cr.actor_tids if not ts.isdisjoint(present) and not ts.isdisjoint(cr.positive)),
            hits=self._hits(cr, scan, found, cr.rule.fields),
        )

    def _hits(self, cr: _CRule, scan: _Scan, tids: Iterable[int], fields: tuple[str, ...], limit: int = MAX_HITS) -> tuple[Hit, ...]:
        """The hits of ``tids`` in ``fields``: ordered by field (in ``fields`` order), start,
        longest first, ties in occurrence order; a hit inside the previous kept one dropped."""
        wanted = tids if isinstance(tids, (set, frozenset)) else set(tids)
        labels_get = cr.labels.get
        cache = scan.hit_cache
        # hits grouped by field, groups in order of the field's first index in ``fields``
        # (what a stable sort on (fields.index(field), start, -end) gives)
        groups: dict[str, list[tuple[int, int, Hit]]] = {}
        for fname in fields:
            occ = scan.occ.get(fname)
            if not occ:
                continue
            group = groups.get(fname)
            if group is None:
                group = groups[fname] = []
            fd = scan.fields[fname]
            for tid in occ:
                if tid not in wanted:
                    continue
                label = labels_get(tid, self._terms[tid].label)
                key = (fname, tid, label)
                hs = cache.get(key)
                if hs is None:
                    hs = cache[key] = _field_hits(fd, fname, occ[tid], label)
                group += hs
        kept: list[Hit] = []
        for group in groups.values():
            if len(group) > 1:
                group.sort(key=_sort_key)  # stable: ties keep occurrence order
            last_end = -1  # the first hit of a field is always kept
            for _, e, h in group:  # drop a hit inside a longer one ("Putin" inside "Vladimir Putin")
                if e <= last_end:
                    continue
                kept.append(h)
                last_end = e
            if len(kept) >= limit:
                break
        return tuple(kept[:limit])

    def rules_needing_sources(self) -> tuple[Rule, ...]:
        """Enabled rules with ``min_sources > 1``: re-evaluate them when a cluster grows."""
        return tuple(r for r in self.ruleset.rules if r.enabled and r.min_sources > 1)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.ruleset.rules

    @property
    def fields(self) -> tuple[str, ...]:
        """The story fields some enabled rule searches."""
        return self._fields

    # explain --------------------------------------------------------------------------
    def explain(self, story: Story, *, sources: int = 1, source_names: tuple[str, ...] = ()) -> list[RuleExplanation]:
        """For every rule (disabled too): matched or not, and why."""
        all_fields = tuple(dict.fromkeys(f for cr in self._rules for f in cr.rule.fields)) or DEFAULT_FIELDS
        scan = self._scan(story, all_fields)
        texts = {f: fd.text for f, fd in scan.fields.items()}
        return [self._explain_rule(cr, story, scan, texts, sources, source_names) for cr in self._rules]

    def _explain_rule(
        self,
        cr: _CRule,
        story: Story,
        scan: _Scan,
        texts: dict[str, str],
        sources: int,
        source_names: tuple[str, ...],
    ) -> RuleExplanation:
        rule = cr.rule
        fields = rule.fields
        present = scan.present(fields)

        def leaf(node: Term | Actor) -> Condition:
            return self._explain_leaf(node, cr, scan, present, fields)

        def near(node: Near) -> tuple[bool, str]:
            sets = tuple(frozenset(self._node_tids(i)) for i in node.items)
            return _near(sets, node.within, node.same_sentence, scan, fields)

        cond = explain_condition(rule.condition, leaf, near)
        checks = [
            Condition(kind="check", label=name, ok=ok, note=note)
            for name, ok, note in self._scope(rule, story, sources, source_names)
        ]
        if rule.require_title:
            ok = self._title_hit(cr, scan)
            checks.append(Condition(kind="check", label="require_title", ok=ok,
                                    note="a term or actor is in the title" if ok else "no term or actor of the rule is in the title"))
        matched, reason = verdict(rule.enabled, cond, checks)
        return RuleExplanation(
            rule=rule.name,
            matched=matched,
            enabled=rule.enabled,
            reason=reason,
            severity=rule.severity,
            channels=rule.channels,
            where=rule.where,
            condition=cond,
            checks=tuple(checks),
            expr=render(rule.condition),
            texts=texts,
        )

    def _explain_leaf(self, node: Term | Actor, cr: _CRule, scan: _Scan, present: frozenset[int], fields: tuple[str, ...]) -> Condition:
        """Whether a term or an actor occurs in ``fields``, and where."""
        if isinstance(node, Term):
            tid = self._tid_by_key[node.spec.key]
            found = tid in present
            hits = self._hits(cr, scan, (tid,), fields, limit=10) if found else ()
            hits = tuple(Hit(term=node.spec.label, field=h.field, start=h.start, end=h.end, text=h.text) for h in hits)
            return Condition(kind="term", label=node.spec.label, ok=found, found=found, hits=hits,
                             note="" if found else self._not_found(scan, (tid,), fields))
        tids = self._actor_tids[node.name]
        found = not tids.isdisjoint(present)
        hits = self._hits(cr, scan, tids & present, fields, limit=10) if found else ()
        note = "no alias found: " + ", ".join(s.label for s in self.ruleset.actors[node.name].aliases)
        if not found and not tids.isdisjoint(scan.unscanned(fields)):
            note += f" ({self._not_found(scan, tids, fields)})"
        return Condition(kind="actor", label=f"@{node.name}", ok=found, found=found, hits=hits,
                         note="" if found else note)

    def _not_found(self, scan: _Scan, tids: Iterable[int], fields: tuple[str, ...]) -> str:
        """Why a term is not found: absent, or (a regex) not searched for lack of budget."""
        skipped = [f for f in fields if not scan.skipped.get(f, set()).isdisjoint(tids)]
        if skipped:
            return (f"not searched in {', '.join(skipped)}: the story's regex budget "
                    f"({self.regex_budget:,} characters) ran out")
        return f"not found in {', '.join(fields)}"

    def _node_tids(self, node: Node) -> set[int]:
        if isinstance(node, Term):
            return {self._tid_by_key[node.spec.key]}
        if isinstance(node, Actor):
            return set(self._actor_tids[node.name])
        out: set[int] = set()
        if isinstance(node, Or):
            for i in node.items:
                out |= self._node_tids(i)
        return out


def _match(rule: Rule, text: TextMatch) -> Match:
    """What the text says (``text``) and what to do about it (``rule``'s action), as one Match."""
    return Match(
        rule=rule.name,
        severity=rule.severity,
        channels=rule.channels,
        terms=text.terms,
        actors=text.actors,
        hits=text.hits,
        cooldown=rule.cooldown,
        digest=rule.digest,
        group=rule.group,
        digest_tz=rule.digest_tz,
    )


def compile_rules(ruleset: RuleSet) -> Matcher:
    """Compile a rule set into a ``Matcher`` (done once per load)."""
    return Matcher(ruleset)


_SLOTS = 4


def _and_all(masks: list[int]) -> int:
    out = masks[0]
    for m in masks[1:]:
        out &= m
    return out


def _eval3(
    c: tuple[Any, ...], present: frozenset[int], unknown: frozenset[int], scan: _Scan, fields: tuple[str, ...]
) -> bool | None:
    """A compiled condition in three values (Kleene): True, False, or None when it depends
    on the ``unknown`` terms (regex terms the budget left unsearched)."""
    op = c[0]
    if op == _TERM:
        return True if c[1] in present else None if c[1] in unknown else False
    if op == _ANYOF:
        return True if not present.isdisjoint(c[1]) else None if not unknown.isdisjoint(c[1]) else False
    if op == _ALLOF:
        if c[1] <= present:
            return True
        return None if c[1] <= present | unknown else False
    if op == _NOT:
        v = _eval3(c[1], present, unknown, scan, fields)
        return None if v is None else not v
    if op == _NEAR:
        if _near(c[1], c[2], c[3], scan, fields)[0]:
            return True
        if any(s.isdisjoint(present) and s.isdisjoint(unknown) for s in c[1]):
            return False
        return None if any(not unknown.isdisjoint(s) for s in c[1]) else False
    vals = [_eval3(k, present, unknown, scan, fields) for k in c[1]]
    if op == _AND:
        return False if False in vals else None if None in vals else True
    return True if True in vals else None if None in vals else False  # _OR


def _clauses(c: tuple[Any, ...]) -> list[frozenset[int]]:
    """Necessary clauses of a compiled condition: each set must meet the terms present."""
    op = c[0]
    if op == _TERM:
        return [frozenset((c[1],))]
    if op == _ANYOF:
        return [c[1]]
    if op == _ALLOF:
        return [frozenset((t,)) for t in c[1]]
    if op == _AND:
        return [cl for k in c[1] for cl in _clauses(k)]
    if op == _OR:
        union: set[int] = set()
        for k in c[1]:
            cls = _clauses(k)
            if not cls:
                return []
            union |= min(cls, key=len)
        return [frozenset(union)]
    if op == _NEAR:
        return list(c[1])
    return []  # NOT: no necessary occurrence


def _flat(kids: tuple[tuple[Any, ...], ...]) -> set[int]:
    out: set[int] = set()
    for k in kids:
        if k[0] == _TERM:
            out.add(k[1])
        else:
            out |= k[1]
    return out


def _phrase_at(rest: tuple[tuple[Mode, str], ...], toks: list[str], i: int, n: int) -> bool:
    """Whether the tokens after ``toks[i]`` are the rest of a phrase term."""
    if i + len(rest) >= n:
        return False
    for j, (mode, key) in enumerate(rest, 1):
        t = toks[i + j]
        k = _CACHE.get(t) or token_keys(t)
        if mode == "stem":
            if k[0] != key:
                return False
        elif mode == EXACT:
            if k[2] != key:
                return False
        elif not k[1].startswith(key):
            return False
    return True


def _sort_key(item: tuple[int, int, Hit]) -> int:
    return item[0]


def _field_hits(fd: _Field, fname: str, occs: list[_Occ], label: str) -> list[tuple[int, int, Hit]]:
    """One term's hits in one field: (sort key, end, Hit), the key ordering by start and then
    longest first (``start * 2**40 - end``; fields are far shorter than 2**40 characters)."""
    out: list[tuple[int, int, Hit]] = []
    text = fd.text
    spans = fd.span_list()
    for o in occs:
        if o[2] >= 0:
            s, e = o[2], o[3]
        else:
            s, e = spans[o[0]][0], spans[o[1] - 1][1]
        out.append(((s << 40) - e, e, Hit(term=label, field=fname, start=s, end=e, text=text[s:e])))
    return out


def _near(
    sets: tuple[frozenset[int], ...], within: int | None, same_sentence: bool, scan: _Scan, fields: tuple[str, ...]
) -> tuple[bool, str]:
    """Whether one occurrence of each item lies within ``within`` words (first words), in one
    sentence if asked; with a note on the closest distance seen."""
    best: tuple[int, str] | None = None
    k = len(sets)
    for fname in fields:
        occ = scan.occ.get(fname)
        if not occ:
            continue
        merged: list[tuple[int, int, int]] = []  # (token start, item, sentence)
        fd = scan.fields[fname]
        for idx, tids in enumerate(sets):
            for tid in tids:
                for o in occ.get(tid, ()):
                    merged.append((o[0], idx, fd.sentence(o[0]) if same_sentence else 0))
        if len({m[1] for m in merged}) < k:
            continue
        merged.sort()
        groups: dict[int, list[tuple[int, int, int]]] = {}
        for m in merged:
            groups.setdefault(m[2], []).append(m)
        for items in groups.values():
            # sliding window over positions: the narrowest windows covering every item
            count: dict[int, int] = {}
            lo = 0
            for hi in range(len(items)):
                count[items[hi][1]] = count.get(items[hi][1], 0) + 1
                while len(count) == k:
                    dist = items[hi][0] - items[lo][0]
                    if best is None or dist < best[0]:
                        best = (dist, fname)
                    if within is None or dist <= within:
                        where = " (same sentence)" if same_sentence else ""
                        return True, f"{dist} word(s) apart in {fname}{where}"
                    left = items[lo][1]
                    count[left] -= 1
                    if count[left] == 0:
                        del count[left]
                    lo += 1
    if best is None:
        return False, "not all items occur" + (" in one sentence" if same_sentence else "")
    if within is None:
        return False, "not in one sentence"
    return False, f"closest: {best[0]} words apart in {best[1]}, more than {within}"
