"""Terms: how words in rules and words in stories are made comparable. Pure, no I/O.

A story field is cut into *tokens* once (``tokenize``); every token gets three keys:

* the **stem key** (default matching): casefolded, accents and combining marks removed,
  curly apostrophes straightened, possessive ``'s`` dropped, dots of abbreviations removed
  (``U.S.`` → ``us``), then a light English inflection stemmer for Latin-script words
  (``sanctions``, ``sanctioned``, ``sanctioning`` → ``sanction``; ``deadlines`` → ``deadlin``).
  Words in other scripts are compared whole (use a ``*`` prefix term for inflected languages:
  ``Путин*`` matches ``Путина``, ``Путину``).
* the **exact key** (terms written ``=US`` or ``{term: US, exact: true}``): the token as written,
  case and accents kept, only apostrophes, possessives and abbreviation dots normalised,
  so ``=US`` matches ``US`` and ``U.S.`` but not ``us``.
* the **prefix key** (terms ending in ``*``): the normalised word without stemming.

A rule term is parsed by ``parse_term`` into a ``TermSpec``: a word, a phrase (several tokens
in sequence, each compared with the same tolerance) or a regular expression.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from monitor.core.rules.regex import FLAGS, RegexProblem, compile_rule_regex
from monitor.errors import RuleSyntaxError

# --- tokeniser ----------------------------------------------------------------------------


def _mark_ranges() -> str:
    """A character-class fragment of every combining mark in the BMP (Mn, Mc, Me)."""
    out: list[str] = []
    start = prev = -2
    for cp in range(0x300, 0x10000):
        if unicodedata.category(chr(cp)) in ("Mn", "Mc", "Me"):
            if cp != prev + 1:
                if start >= 0:
                    out.append(f"\\u{start:04x}-\\u{prev:04x}")
                start = cp
            prev = cp
    if start >= 0:
        out.append(f"\\u{start:04x}-\\u{prev:04x}")
    return "".join(out)


_W = f"[\\w{_mark_ranges()}]"
_APOS = "['\u2019\u02bc\u2018]"
#: an abbreviation with dots (U.S., U.N.), or a word possibly with inner apostrophes (Trump’s)
TOKEN_RE = re.compile(rf"(?:[^\W\d_]\.){{2,}}|{_W}+(?:{_APOS}{_W}+)*")
#: a sentence boundary: terminal punctuation followed by space or end, or a blank line
SENTENCE_RE = re.compile(r"[.!?\u3002\uff01\uff1f\u061f\u06d4]+[\"'\u201d\u2019)\]]*(?=\s|$)|\n\s*\n")
_APOS_TRANS = str.maketrans({"\u2019": "'", "\u02bc": "'", "\u2018": "'"})


def _strip_marks(s: str) -> str:
    if s.isascii():
        return s
    d = unicodedata.normalize("NFKD", s)
    return unicodedata.normalize("NFC", "".join(c for c in d if not unicodedata.combining(c)))


def _tidy(tok: str) -> str:
    """Straighten apostrophes, drop a possessive and abbreviation dots (case kept)."""
    if not tok.isascii():
        tok = tok.translate(_APOS_TRANS)
    if "'" in tok:
        if tok[-2:] in ("'s", "'S"):
            tok = tok[:-2]
        tok = tok.rstrip("'")
    if "." in tok:
        tok = tok.replace(".", "")
    return tok


def exact_key(tok: str) -> str:
    """The key of a token for exact terms: case and accents kept."""
    return unicodedata.normalize("NFC", _tidy(tok))


def norm_key(tok: str) -> str:
    """Casefolded, accent-free, tidied token (no stemming)."""
    t = _tidy(tok)
    return _strip_marks(t.casefold()) if not t.isascii() else t.lower()


_VOWELS = frozenset("aeiouy")
_KEEP_S = ("ss", "us", "is", "as", "os")
_NO_STEM = frozenset({"news", "during", "thing", "nothing", "something", "anything", "everything"})


def _undouble(w: str) -> str:
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "lsz" and w[-1] not in _VOWELS:
        return w[:-1]
    return w


def stem(w: str) -> str:
    """A light, predictable English inflection stemmer (same function for rules and text).

    Only plain ASCII letters longer than three characters are touched; the result is a
    matching key, not a word. ``sanctions/sanctioned/sanctioning → sanction``,
    ``countries → country``, ``taxes → tax``, ``make/making → mak``. Words ending in
    ``-ss/-us/-is/-as/-os`` keep their ``s`` (``Hamas``, ``crisis``, ``virus``, ``Lagos``).
    """
    n = len(w)
    if n <= 3 or not (w.isascii() and w.isalpha()) or w in _NO_STEM:
        return w
    if w.endswith(("ies", "ied")) and n > 4:
        w = w[:-3] + "y"
    elif w.endswith(("sses", "shes", "ches", "xes", "zes")):
        w = w[:-2]
    elif w[-1] == "s":
        if not w.endswith(_KEEP_S):
            w = w[:-1]
    elif w.endswith("ing") and n >= 6 and not _VOWELS.isdisjoint(w[:-3]):
        w = _undouble(w[:-3])
    elif w.endswith("ed") and n >= 5 and not _VOWELS.isdisjoint(w[:-2]):
        w = _undouble(w[:-2])
    if len(w) > 3 and w[-1] == "e":
        w = w[:-1]
    return w


_CACHE: dict[str, tuple[str, str, str]] = {}
_CACHE_MAX = 200_000


def token_keys(tok: str) -> tuple[str, str, str]:
    """``(stem key, normalised key, exact key)`` of one token, cached."""
    k = _CACHE.get(tok)
    if k is None:
        n = norm_key(tok)
        k = (stem(n), n, exact_key(tok))
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[tok] = k
    return k


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """Tokens of ``text`` with their character offsets: ``[(token, start, end), ...]``."""
    return [(m.group(), m.start(), m.end()) for m in TOKEN_RE.finditer(text)]


def sentence_ids(text: str, starts: list[int]) -> list[int]:
    """The sentence number of each token start offset."""
    bounds = [m.end() for m in SENTENCE_RE.finditer(text)]
    out: list[int] = []
    s = 0
    for st in starts:
        while s < len(bounds) and bounds[s] <= st:
            s += 1
        out.append(s)
    return out


# --- rule terms ---------------------------------------------------------------------------

Mode = Literal["stem", "exact", "prefix"]
STEM: Mode = "stem"
EXACT: Mode = "exact"
PREFIX: Mode = "prefix"


@dataclass(frozen=True, kw_only=True, slots=True)
class TermSpec:
    """A parsed rule term. ``tokens`` is empty for regex terms."""

    label: str  # as the user wrote it (for explanations)
    tokens: tuple[tuple[Mode, str], ...] = ()
    regex: str | None = None  # the pattern as written (``monitor.core.rules.regex`` compiles it)
    flags: str = ""  # regex flags, sorted letters of ``regex.FLAGS`` ("i", "ims")

    @property
    def kind(self) -> str:
        if self.regex is not None:
            return "regex"
        return "phrase" if len(self.tokens) > 1 else "word"

    @property
    def key(self) -> tuple[object, ...]:
        """Identity for de-duplication across rules (labels may differ)."""
        return (self.tokens, self.regex, self.flags)


class TermError(RuleSyntaxError):
    """A term could not be parsed; ``offset`` is the 0-based column inside the term."""

    def __init__(self, message: str, offset: int = 0, *, key: str | None = None) -> None:
        super().__init__(message, offset + 1)
        self.offset = offset
        self.key = key  # in a term mapping, the key whose value ``offset`` is in ("regex")


MIN_PREFIX = 3


def parse_regex(raw: str, body: str, flag_text: str, *, offset: int = 0) -> TermSpec:
    """A ``/body/flags`` term, checked on the engine that will run it (RE2, see
    ``monitor.core.rules.regex``); raise TermError on a bad pattern or flag, or a construct
    the engine does not support. ``offset`` is the column of ``raw`` in its text; ``body``
    starts one character after it."""
    for ch in flag_text:
        if ch not in FLAGS:
            fix = "; the verbose flag x is not supported by the linear-time regex engine: write the pattern without spaces and comments" if ch == "x" else ""
            raise TermError(f"unknown regex flag {ch!r} in {raw}; use i, m or s{fix}", offset)
    if not body:
        raise TermError("empty regular expression", offset)
    try:
        rx = compile_rule_regex(body, flag_text)
    except RegexProblem as e:
        raise TermError(f"bad regular expression {raw}: {e.message} at position {e.pos}", offset + 1 + e.pos) from None
    if rx.search("") is not None:
        raise TermError(f"regular expression {raw} matches the empty string; it would match every story", offset)
    return TermSpec(label=raw, regex=body, flags="".join(sorted(set(flag_text))))


def parse_term(raw: str, *, exact: bool = False) -> TermSpec:
    """Parse one term as written in a rule list or an actor alias.

    ``sanctions`` (a word, inflected), ``Donald Trump`` or ``"Donald Trump"`` (a phrase),
    ``=US`` (exact), ``Путин*`` (prefix), ``/sanction(s|ed)?/i`` (regex).
    """
    text = raw.strip()
    lead = len(raw) - len(raw.lstrip())
    if not text:
        raise TermError("empty term", 0)
    if text.startswith("/"):
        end = text.rfind("/")
        if end == 0:
            raise TermError(f"unterminated regex {text!r}: write /pattern/ or /pattern/i", lead)
        return parse_regex(text, text[1:end], text[end + 1 :], offset=lead)
    if text.startswith("="):
        exact = True
        text = text[1:].strip()
        lead += 1
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
        lead += 1
    if '"' in text:
        raise TermError(f"unbalanced quote in term {raw.strip()!r}", lead + text.index('"'))
    tokens: list[tuple[Mode, str]] = []
    for chunk in re.finditer(r"\S+", text):
        word = chunk.group()
        prefix = word.endswith("*")
        if prefix:
            word = word.rstrip("*")
        toks = TOKEN_RE.findall(word)
        if "*" in word:
            raise TermError(f"'*' is only allowed at the end of a word, in {raw.strip()!r}", lead + chunk.start())
        for i, tok in enumerate(toks):
            if prefix and i == len(toks) - 1:
                if exact:
                    raise TermError(f"a term cannot be both exact (=) and a prefix (*): {raw.strip()!r}", lead + chunk.start())
                key = norm_key(tok)
                if len(key) < MIN_PREFIX:
                    raise TermError(
                        f"prefix {word}* is too short: give at least {MIN_PREFIX} characters", lead + chunk.start()
                    )
                tokens.append((PREFIX, key))
            elif exact:
                tokens.append((EXACT, exact_key(tok)))
            else:
                tokens.append((STEM, token_keys(tok)[0]))
    if not tokens:
        raise TermError(f"term {raw.strip()!r} has no letters or digits", lead)
    label = raw.strip()
    return TermSpec(label=label, tokens=tuple(tokens))


def term_mapping(value: dict[str, object]) -> TermSpec:
    """``{term: US, exact: true}`` or ``{regex: 'sanction(s|ed)', flags: i}``."""
    if "regex" in value:
        extra = set(value) - {"regex", "flags"}
        if extra:
            raise TermError(f"unknown key {sorted(extra)[0]!r} in a regex term; expected regex, flags")
        body, flags = value["regex"], value.get("flags", "")
        if not isinstance(body, str) or not isinstance(flags, str):
            raise TermError("regex and flags must be strings")
        bad_flags = any(ch not in FLAGS for ch in flags)
        try:
            return parse_regex(f"/{body}/{flags}", body, flags, offset=-1)
        except TermError as e:
            # located in the value of flags: or of regex: (offsets in the pattern as written)
            raise TermError(e.message, max(e.offset, 0), key="flags" if bad_flags else "regex") from None
    extra = set(value) - {"term", "exact"}
    if extra:
        raise TermError(f"unknown key {sorted(extra)[0]!r} in a term mapping; expected term, exact")
    term, exact = value.get("term"), value.get("exact", False)
    if not isinstance(term, str):
        raise TermError("term: expected a string")
    if not isinstance(exact, bool):
        raise TermError("exact: expected true or false")
    spec = parse_term(term, exact=exact)
    return TermSpec(label=("=" if exact and not term.startswith("=") else "") + term.strip(), tokens=spec.tokens, regex=spec.regex, flags=spec.flags)

