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


#: ``_mark_ranges()`` as Unicode 14.0 (Python 3.11's) has it, written out: computing it
#: walks 65,000 code points (10 ms at every start); another Unicode version computes it
_MARKS_UNICODE_14 = (
    r"\u0300-\u036f\u0483-\u0489\u0591-\u05bd\u05bf-\u05bf\u05c1-\u05c2\u05c4-\u05c5"
    r"\u05c7-\u05c7\u0610-\u061a\u064b-\u065f\u0670-\u0670\u06d6-\u06dc\u06df-\u06e4"
    r"\u06e7-\u06e8\u06ea-\u06ed\u0711-\u0711\u0730-\u074a\u07a6-\u07b0\u07eb-\u07f3"
    r"\u07fd-\u07fd\u0816-\u0819\u081b-\u0823\u0825-\u0827\u0829-\u082d\u0859-\u085b"
    r"\u0898-\u089f\u08ca-\u08e1\u08e3-\u0903\u093a-\u093c\u093e-\u094f\u0951-\u0957"
    r"\u0962-\u0963\u0981-\u0983\u09bc-\u09bc\u09be-\u09c4\u09c7-\u09c8\u09cb-\u09cd"
    r"\u09d7-\u09d7\u09e2-\u09e3\u09fe-\u09fe\u0a01-\u0a03\u0a3c-\u0a3c\u0a3e-\u0a42"
    r"\u0a47-\u0a48\u0a4b-\u0a4d\u0a51-\u0a51\u0a70-\u0a71\u0a75-\u0a75\u0a81-\u0a83"
    r"\u0abc-\u0abc\u0abe-\u0ac5\u0ac7-\u0ac9\u0acb-\u0acd\u0ae2-\u0ae3\u0afa-\u0aff"
    r"\u0b01-\u0b03\u0b3c-\u0b3c\u0b3e-\u0b44\u0b47-\u0b48\u0b4b-\u0b4d\u0b55-\u0b57"
    r"\u0b62-\u0b63\u0b82-\u0b82\u0bbe-\u0bc2\u0bc6-\u0bc8\u0bca-\u0bcd\u0bd7-\u0bd7"
    r"\u0c00-\u0c04\u0c3c-\u0c3c\u0c3e-\u0c44\u0c46-\u0c48\u0c4a-\u0c4d\u0c55-\u0c56"
    r"\u0c62-\u0c63\u0c81-\u0c83\u0cbc-\u0cbc\u0cbe-\u0cc4\u0cc6-\u0cc8\u0cca-\u0ccd"
    r"\u0cd5-\u0cd6\u0ce2-\u0ce3\u0d00-\u0d03\u0d3b-\u0d3c\u0d3e-\u0d44\u0d46-\u0d48"
    r"\u0d4a-\u0d4d\u0d57-\u0d57\u0d62-\u0d63\u0d81-\u0d83\u0dca-\u0dca\u0dcf-\u0dd4"
    r"\u0dd6-\u0dd6\u0dd8-\u0ddf\u0df2-\u0df3\u0e31-\u0e31\u0e34-\u0e3a\u0e47-\u0e4e"
    r"\u0eb1-\u0eb1\u0eb4-\u0ebc\u0ec8-\u0ecd\u0f18-\u0f19\u0f35-\u0f35\u0f37-\u0f37"
    r"\u0f39-\u0f39\u0f3e-\u0f3f\u0f71-\u0f84\u0f86-\u0f87\u0f8d-\u0f97\u0f99-\u0fbc"
    r"\u0fc6-\u0fc6\u102b-\u103e\u1056-\u1059\u105e-\u1060\u1062-\u1064\u1067-\u106d"
    r"\u1071-\u1074\u1082-\u108d\u108f-\u108f\u109a-\u109d\u135d-\u135f\u1712-\u1715"
    r"\u1732-\u1734\u1752-\u1753\u1772-\u1773\u17b4-\u17d3\u17dd-\u17dd\u180b-\u180d"
    r"\u180f-\u180f\u1885-\u1886\u18a9-\u18a9\u1920-\u192b\u1930-\u193b\u1a17-\u1a1b"
    r"\u1a55-\u1a5e\u1a60-\u1a7c\u1a7f-\u1a7f\u1ab0-\u1ace\u1b00-\u1b04\u1b34-\u1b44"
    r"\u1b6b-\u1b73\u1b80-\u1b82\u1ba1-\u1bad\u1be6-\u1bf3\u1c24-\u1c37\u1cd0-\u1cd2"
    r"\u1cd4-\u1ce8\u1ced-\u1ced\u1cf4-\u1cf4\u1cf7-\u1cf9\u1dc0-\u1dff\u20d0-\u20f0"
    r"\u2cef-\u2cf1\u2d7f-\u2d7f\u2de0-\u2dff\u302a-\u302f\u3099-\u309a\ua66f-\ua672"
    r"\ua674-\ua67d\ua69e-\ua69f\ua6f0-\ua6f1\ua802-\ua802\ua806-\ua806\ua80b-\ua80b"
    r"\ua823-\ua827\ua82c-\ua82c\ua880-\ua881\ua8b4-\ua8c5\ua8e0-\ua8f1\ua8ff-\ua8ff"
    r"\ua926-\ua92d\ua947-\ua953\ua980-\ua983\ua9b3-\ua9c0\ua9e5-\ua9e5\uaa29-\uaa36"
    r"\uaa43-\uaa43\uaa4c-\uaa4d\uaa7b-\uaa7d\uaab0-\uaab0\uaab2-\uaab4\uaab7-\uaab8"
    r"\uaabe-\uaabf\uaac1-\uaac1\uaaeb-\uaaef\uaaf5-\uaaf6\uabe3-\uabea\uabec-\uabed"
    r"\ufb1e-\ufb1e\ufe00-\ufe0f\ufe20-\ufe2f"
)
_MARKS = (_MARKS_UNICODE_14 if unicodedata.unidata_version == "14.0.0" else _mark_ranges())
_W = f"[\\w{_MARKS}]"
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

