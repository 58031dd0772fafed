"""Dedup features: what the story index needs to know about one story's text.

Pure functions of the story alone (no index, no clock), so the pipeline computes them off
the event loop, in the parse pool (``story_features``), and hands them to
``StoryIndex.add``:

* ``normalize_title``: case-, accent- and punctuation-free title without publisher
  affixes (" - Reuters", "WATCH: ");
* ``title_tokens``: its words, lightly stemmed (plurals), in order, without duplicates;
* the informative tokens of the summary's lead (its first sentences), which the index
  weighs less than the title's;
* case marks: which words of a sentence-case title are capitalised, for the index's case
  table (names versus ordinary words).

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
    "informative",
    "normalize_title",
    "story_features",
    "title_tokens",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class DedupSettings:
    """Knobs of the engine (``index.py`` says what each one does). The defaults are the
    reviewed constants fitted on the shared UCI split and the hand-labelled real-feeds
    groups (``bench/fit_dedup.py``); only ``window`` and ``threshold`` are in the config."""

    window: float = 48 * 3600.0  # seconds a cluster stays open after its last member
    threshold: float = 0.28  # score in [0, 1] (plus bonus) needed to join a cluster
    lead_weight: float = 0.5  # weight of the summary's lead tokens beside the title's
    lead_words: int = 40  # words of the summary's lead that count
    lead_threshold: float = 0.05  # taken off the cosine of title and lead together
    title_threshold: float = 0.2  # taken off the cosine of titles alone when a summary
    # lead is there to compare too (a headline alone is less evidence)
    bg_size: float = 5_000.0  # pseudo-headlines the background table stands for
    bg_words: float = 30.0  # word frequency -> share of headlines carrying it (news words
    # are far more common in headlines than in the general text wordfreq counts)
    anchor_bonus: float = 0.2  # added when a rare name anchors the story to the cluster
    anchor_min: float = 0.2  # the cosine an anchor needs already
    anchor_share: float = 0.8  # share of the cluster's members carrying the name
    anchor_within: float = 0.7  # share of the window's uses of the name inside the cluster
    anchor_zipf: float = 3.0  # a name rarer than this in the background table anchors
    anchor_alone: bool = True  # a rare name may carry a story that shares no other word
    time_grace: float = 12 * 3600.0  # no time penalty within this distance (seconds)
    time_penalty: float = 3.0  # extra threshold per day beyond the grace
    near_margin: float = 0.2  # a miss this close links the new cluster to its best one
    merge_threshold: float = 0.4  # centroid cosine at which linked clusters merge
    respell: float = 90.0  # rapidfuzz ratio at which a word new to the window is read as a
    # spelling the window knows (Zelenskyy / Zelensky); 0 turns it off
    respell_len: int = 6  # shorter words are never respelled
    small_penalty: float = 0.22  # taken off the score against a cluster of n members, / n:
    # a lone headline must match more closely than an established story (half of it is
    # waived when a rare name anchors the story)
    min_shared: int = 2  # tokens a story shares with a cluster at least (one word is not a story)
    block_tokens: int = 6  # rarest tokens of a story used to find candidates
    max_posting: int = 50  # clusters (the most recently updated) looked up per token
    max_candidates: int = 24  # clusters scored in full per story
    min_exact_tokens: int = 3  # a normalised title this short never counts as an exact repeat


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
    if text.isascii():
        return text
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
    return _plain(_strip_affixes(title))


def _plain(text: str) -> str:
    """Case-, accent- and punctuation-free text (``normalize_title`` without the affixes,
    for summaries and single words)."""
    if text.isascii() and text.isalpha():  # a plain word, most of them
        return text.lower()
    t = _strip_accents(text.translate(_QUOTES)).lower()
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


_WORD = re.compile(r"[\w'’\-]+")


_DATES_TEXT = """january february march april may june july august september october
    november december jan feb mar apr jun jul aug sep sept oct nov dec monday tuesday
    wednesday thursday friday saturday sunday mon tue wed thu fri sat sun"""
_DATES = frozenset(_DATES_TEXT.split())


def informative(tok: str) -> bool:
    """Whether a token takes part in the comparison: not a stopword, not a month, a
    weekday or a year ("March 10, 2014" says when, not what), and a number or at least
    two characters long."""
    if tok.isdigit():
        return not (len(tok) == 4 and tok[:2] in ("19", "20"))
    return len(tok) > 1 and tok not in STOPWORDS and tok not in _DATES


def _case_marks(title: str) -> tuple[tuple[str, bool], ...]:
    """(token, capitalised) for each word after the first of a sentence-case title; none
    for a Title Case or ALL CAPS one, whose capitals say nothing. The index counts these
    into its case table, which tells names ("Snowden", "Fed") from ordinary words."""
    words = _WORD.findall(_strip_affixes(title))
    if len(words) < 3:
        return ()
    upper = sum(1 for w in words if w[:1].isupper())
    if upper / len(words) > 0.6:
        return ()
    out: dict[str, bool] = {}
    for w in words[1:]:
        if not w[:1].isalpha():
            continue
        norm = _plain(w)
        if not norm or " " in norm:
            continue
        tok = _stem(norm)
        if informative(tok):
            out[tok] = out.get(tok, False) or w[:1].isupper()
    return tuple(out.items())


def _lead(summary: str, words: int) -> str:
    """The summary's first sentences, at most ``words`` words: the sentence that reaches
    half of them is the last."""
    out = summary.split(maxsplit=words)[:words]
    half = words // 2
    for i, w in enumerate(out):
        if i + 1 >= half and w[-1:] in ".!?":
            return " ".join(out[: i + 1])
    return " ".join(out)


class Features:
    """What the story index compares of one story: its informative title tokens, the
    informative tokens of its summary's lead that the title lacks, and case marks."""

    __slots__ = ("case", "lead", "norm", "tokens")

    def __init__(self, title: str, summary: str, lead_words: int = 40) -> None:
        self.norm = normalize_title(title)
        self.tokens = tuple(t for t in title_tokens(self.norm) if informative(t))
        have = set(self.tokens)
        lead_norm = _plain(_lead(summary, lead_words)) if summary else ""
        self.lead = tuple(t for t in title_tokens(lead_norm) if informative(t) and t not in have)
        self.case = _case_marks(title)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Features):
            return NotImplemented
        return (self.norm, self.tokens, self.lead, self.case) == (
            other.norm, other.tokens, other.lead, other.case)

    __hash__ = None  # type: ignore[assignment]

    def respelled(self, spelling: dict[str, str]) -> Features:
        """A copy whose tokens are replaced by ``spelling`` (a word -> the spelling the
        index knows), duplicates dropped; the normalised title stays as it was."""
        out = object.__new__(Features)
        out.norm, out.case = self.norm, self.case
        out.tokens = tuple(dict.fromkeys(spelling.get(t, t) for t in self.tokens))
        have = set(out.tokens)
        out.lead = tuple(dict.fromkeys(
            u for t in self.lead if (u := spelling.get(t, t)) not in have))
        return out

    def __getstate__(self) -> tuple[object, ...]:
        return (self.norm, self.tokens, self.lead, self.case)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        self.norm, self.tokens, self.lead, self.case = state  # type: ignore[assignment]


def story_features(story: Story, settings: DedupSettings) -> Features:
    """The per-story part of a dedup decision (normalised title, tokens, lead, case):
    pure, picklable, and independent of the index, so it can be computed off the loop."""
    return Features(story.title, story.summary, settings.lead_words)
