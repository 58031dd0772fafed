"""Dedup features: what the story index needs to know about one story's text.

Pure functions of the story alone (no index, no clock), so the pipeline computes them off
the event loop, in the parse pool (``story_features``), and hands them to
``StoryIndex.add``:

* ``normalize_title``: case-, accent- and punctuation-free title without publisher
  affixes (" - Reuters", "WATCH: ");
* ``title_tokens``: its words, lightly stemmed (plurals), in order, without duplicates;
* capitalised names in the original title (weighed more by the index);
* when a title has few informative (non-stopword) tokens, the lead sentence of the
  summary, whose tokens the index weighs less.

``DedupSettings`` lives here, below the index, because ``story_features`` reads it:
``index`` imports this module, never the other way round.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from monitor.core.model import Story

__all__ = [
    "STOPWORDS",
    "DedupSettings",
    "Features",
    "normalize_title",
    "story_features",
    "title_tokens",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class DedupSettings:
    """Knobs of the engine; the defaults are calibrated on the shared UCI / STS-B corpora."""

    window: float = 48 * 3600.0  # seconds a cluster stays open after its last member
    threshold: float = 0.54  # score in [0, 1] needed to join a cluster
    cover_weight: float = 0.85  # share of the cluster-coverage term in the score
    cover_share: float = 0.9  # a token is "the cluster's" when this share of members has it
    fuzz_weight: float = 0.3  # share of rapidfuzz token_set_ratio in the pair score
    pair_accept: float = 0.9  # a pair score this high joins whatever the cluster cover
    containment: float = 0.0  # 0: weighted Dice of the two titles; 1: overlap coefficient
    sig_weight: float = 0.8  # share of "cluster signature carried by the story" in cover
    idf_power: float = 1.5  # weights are idf ** idf_power (sharper above 1)
    stopword_weight: float = 0.15  # weight of a stopword (informative tokens weigh >= 1)
    time_grace: float = 12 * 3600.0  # no time penalty within this distance (seconds)
    time_penalty: float = 0.06  # extra threshold per day beyond the grace
    block_tokens: int = 5  # rarest tokens of a story used to find candidates
    max_posting: int = 100  # clusters (the newest) looked up per blocking token
    max_candidates: int = 12  # clusters scored per story
    min_vote: float = 0.2  # a candidate shares at least this share of the story weight
    reps_first: int = 3  # representative members kept per cluster: the first ...
    reps_last: int = 3  # ... and the latest
    min_exact_tokens: int = 3  # a normalised title this short never counts as an exact repeat
    short_title_tokens: int = 4  # fewer informative title tokens: add the summary's lead
    lead_weight: float = 0.5  # weight factor of the summary-lead tokens
    idf_prior: float = 50.0  # pseudo-clusters in the IDF estimate (cold start)

# ---------------------------------------------------------------------------------------
# normalisation and tokens

_QUOTES = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2012": "-",
        "\u2015": "-",
        "\u00a0": " ",
        "\u2026": "...",
    }
)

# " - Reuters", " | BBC News", " - The Washington Post": a short trailing segment after a
# spaced dash/pipe/colon-less separator that looks like a publisher (<= 5 words, capitalised).
_SUFFIX = re.compile(
    r"\s+(?:[-|~\u2022:]|::)\s+(?:the\s+)?[A-Z0-9][\w.&'’]*(?:\s+[\w.&'’]+){0,4}\s*$",
)
_KNOWN_PUBLISHER = re.compile(
    r"\b(?:reuters|ap|afp|bbc|bbc news|cnn|nyt|the new york times|new york times|"
    r"washington post|the washington post|al jazeera|npr|cbs news|abc news|nbc news|"
    r"the guardian|guardian|bloomberg|associated press|dw|time|the economist|wsj|"
    r"the wall street journal|wall street journal|fox news|sky news|the independent|"
    r"the telegraph|ndtv|dawn|usa today|politico|axios|the hill|cnbc|forbes|"
    r"business insider|yahoo news|yahoo finance|marketwatch|the atlantic|vox|"
    r"los angeles times|la times|chicago tribune|the verge|techcrunch|engadget|"
    r"variety|hollywood reporter|deadline|e! online|people|us weekly|tmz)\b",
    re.IGNORECASE,
)
_PREFIX = re.compile(
    r"^\s*(?:(?:watch|live|video|breaking|update|updated|exclusive|analysis|opinion|"
    r"photos|in pictures|listen|explainer|factbox|refile|corrected|correction|"
    r"update\s*\d+|wrapup\s*\d*|rpt|podcast|live updates|breaking news)\s*[:\-|]\s*)+",
    re.IGNORECASE,
)
_ELLIPSIS = re.compile(r"(?:\s*\.\.\.|\s*\u2026)+\s*$")
_POSSESSIVE = re.compile(r"(\w)'s\b")
_NONWORD = re.compile(r"[^\w]+")


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _strip_affixes(title: str) -> str:
    t = title.translate(_QUOTES).strip()
    t = _ELLIPSIS.sub("", t)
    for _ in range(2):
        m = _SUFFIX.search(t)
        if m is None:
            break
        tail = m.group(0)
        # the segment after the separator: strip it only when it looks like a publisher
        seg = re.split(r"\s+(?:[-|~\u2022:]|::)\s+", tail, maxsplit=1)[-1].strip()
        is_pub = (
            _KNOWN_PUBLISHER.fullmatch(seg) is not None
            or (len(seg.split()) <= 4 and tail.lstrip()[0] in "|~\u2022")
            or _KNOWN_PUBLISHER.fullmatch(re.sub(r"^the\s+", "", seg, flags=re.I)) is not None
        )
        if not is_pub or len(t) - len(tail) < 12:
            break
        t = t[: m.start()].rstrip()
    t = _PREFIX.sub("", t)
    return t


def normalize_title(title: str) -> str:
    """Case-, accent- and punctuation-free title without publisher affixes.

    >>> normalize_title("WATCH: Fed’s Plosser says taper — Reuters")
    'fed plosser says taper'
    >>> normalize_title("Café owners protest | BBC News")
    'cafe owners protest'
    """
    t = _strip_affixes(title)
    t = _strip_accents(t).lower()
    t = _POSSESSIVE.sub(r"\1", t)
    t = t.replace("'", "")
    t = _NONWORD.sub(" ", t).replace("_", " ")
    return " ".join(t.split())


_STOPWORDS_TEXT = """a an the and or but nor of to in on at for from by with without about as into onto
    over under after before since until up down out off than then that this these those
    it its is are was were be been being has have had do does did will would shall should
    can could may might must not no yes so if vs via per new news says said say saying
    he she they we you i his her their our your them him us who whom whose what which when
    where why how all any some more most other such only own same too very just also
    now here there again once amid against between during through while report reports
    update live watch video photos breaking latest today week day year first last
    s t de la le el en et und der die das les des du al"""
STOPWORDS: frozenset[str] = frozenset(_STOPWORDS_TEXT.split())


def _stem(tok: str) -> str:
    if len(tok) > 4 and tok.endswith("ies"):
        return tok[:-3] + "y"
    if len(tok) > 3 and tok.endswith("s") and not tok.endswith(("ss", "us", "is")):
        return tok[:-1]
    return tok


def title_tokens(normalized: str) -> list[str]:
    """Tokens of a normalised title (or summary lead), as the story index compares them:
    words with light plural stemming, in order, duplicates removed. (Not the rule
    matcher's ``rules.terms.tokenize``: raw text to tokens with offsets.)

    >>> title_tokens("fed cuts rates as rates rise")
    ['fed', 'cut', 'rate', 'as', 'rise']
    """
    out: list[str] = []
    seen: set[str] = set()
    for raw in normalized.split():
        tok = _stem(raw)
        if tok not in seen:
            seen.add(tok)
            out.append(tok)
    return out


_CAPS = re.compile(r"\b[A-Z][\w'’\-]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _boosts(title: str) -> set[str]:
    """Tokens that look like names (capitalised mid-sentence) in the original title."""
    words = _CAPS.findall(_strip_affixes(title))
    if not words:
        return set()
    upper_ratio = sum(1 for w in title.split() if w[:1].isupper()) / max(1, len(title.split()))
    if upper_ratio > 0.6:  # Title Case Headline: capitals say nothing
        return set()
    return {_stem(normalize_title(w)) for w in words[1:]} if words else set()


def _lead(summary: str) -> str:
    s = summary.strip()
    if not s:
        return ""
    first = _SENTENCE.split(s, maxsplit=1)[0]
    return " ".join(first.split()[:30])


class Features:
    """What the matcher needs to know about one story."""

    __slots__ = ("boost", "extra", "norm", "text", "tokens")

    def __init__(self, title: str, summary: str, short_tokens: int) -> None:
        self.norm = normalize_title(title)
        self.tokens = title_tokens(self.norm)
        self.boost = frozenset(_boosts(title))
        informative = [t for t in self.tokens if t not in STOPWORDS]
        extra: list[str] = []
        text = self.norm
        if len(informative) < short_tokens and summary:
            lead_norm = normalize_title(_lead(summary))
            have = set(self.tokens)
            extra = [t for t in title_tokens(lead_norm) if t not in have]
            text = f"{self.norm} {lead_norm}".strip()
        self.extra = tuple(extra)
        self.text = text


def story_features(story: Story, settings: DedupSettings) -> Features:
    """The per-story part of a dedup decision (normalised title, tokens, lead text):
    pure, picklable, and independent of the index, so it can be computed off the loop."""
    return Features(story.title, story.summary, settings.short_title_tokens)

