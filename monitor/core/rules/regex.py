"""Rule regexes on a linear-time engine (RE2), checked when the rules are loaded. Pure.

A rule regex (``/pattern/flags`` or ``{regex: .., flags: ..}``) runs on RE2 (the
``google-re2`` package, module ``re2``): matching time grows with the length of the text
and never explodes, so ``/(a+)+$/`` on ``"a" * 100_000 + "!"`` answers at once where
Python's ``re`` would backtrack for ever. The project's own regexes (tokeniser, HTML
reduction) stay on ``re``: they are written to be safe, rule regexes are not ours.

``compile_rule_regex(body, flags)`` is the only way a rule regex is compiled, for loading
(``terms.parse_regex``: ``monitor check``, daemon start and reload) and for matching and
explaining (``match.Matcher``). RE2 is used through its own ``Options``, never through a
``re``-compatible wrapper that could quietly hand an unsupported pattern to Python's
backtracking ``re``: google-re2's ``re2`` module has no such fallback (an unsupported
pattern raises ``re2.error``), and a test keeps it so.

What RE2 cannot do is reported with a position and a fix (``RegexProblem``):
backreferences (``\\1``, ``(?P=name)``, ``\\g<1>``), lookahead and lookbehind
(``(?=``, ``(?!``, ``(?<=``, ``(?<!``), atomic groups ``(?>``, possessive quantifiers
(``a++``), conditionals ``(?(1)..)``, comments ``(?#..)``, the verbose flag ``x`` and the
inline flags ``a``, ``L``, ``u``.

To keep Python's meaning where it can, the pattern is rewritten before RE2 sees it:
``\\w \\d \\s`` (and ``\\W \\D \\S`` outside brackets) match Unicode letters, digits and
spaces as in Python (RE2's own are ASCII-only), ``\\Z`` is RE2's ``\\z`` (end of text),
``\\uXXXX``/``\\UXXXXXXXX`` become ``\\x{..}``. ``\\b``/``\\B`` remain ASCII-only in RE2,
so a ``\\b`` next to a non-ASCII letter (``\\bПутин``, which would never match) is an error.
``$`` without ``m`` matches only at the very end (Python's also before a final newline).

The budget: ``REGEX_BUDGET`` characters of regex scanning per story (each regex term
scanning each searched field counts the field's length) bound the work a story can cause
even on a linear engine; ``Matcher`` skips the regex scans beyond it and says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, cast

import re2

#: characters of regex scanning per story (len(field text) per regex term and field):
#: 50 regex terms over 40,000 characters of text; RE2 scans a few hundred MB/s, so a story
#: costs at most some milliseconds of regex work
REGEX_BUDGET = 2_000_000

#: the flags a rule regex may carry, and RE2's inline form of each
FLAGS = {"i": "i", "m": "m", "s": "s"}

_UNICODE_IN_CLASS = {
    "w": r"\p{L}\p{N}_",
    "d": r"\p{Nd}",
    "s": r"\t\n\v\f\r\x1c-\x1f \x85\p{Z}",
    "D": r"\P{Nd}",
}
_UNICODE = {
    "w": r"[\p{L}\p{N}_]",
    "W": r"[^\p{L}\p{N}_]",
    "d": r"\p{Nd}",
    "D": r"\P{Nd}",
    "s": r"[\t\n\v\f\r\x1c-\x1f \x85\p{Z}]",
    "S": r"[^\t\n\v\f\r\x1c-\x1f \x85\p{Z}]",
}
_ENGINE = "the linear-time regex engine (RE2)"


class RegexMatch(Protocol):
    def start(self) -> int: ...
    def end(self) -> int: ...


class RuleRegex(Protocol):
    """A compiled rule regex (RE2's ``_Regexp``; only what the matcher uses)."""

    @property
    def pattern(self) -> str: ...
    def search(self, text: str) -> RegexMatch | None: ...
    def finditer(self, text: str) -> Iterator[RegexMatch]: ...


class RegexProblem(ValueError):
    """A rule regex RE2 cannot run: ``message`` (with the fix), ``pos`` (0-based, in the body)."""

    def __init__(self, message: str, pos: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


def _options() -> Any:
    opts = re2.Options()
    opts.log_errors = False  # the error is raised (and reported located), not logged to stderr
    return opts


_OPTIONS = _options()


def compile_rule_regex(body: str, flags: str) -> RuleRegex:
    """RE2's compiled form of a rule regex; raise ``RegexProblem`` when RE2 cannot run it.

    ``flags`` are letters of ``FLAGS`` (already checked by the caller)."""
    translated, unclosed, unopened = _translate(body)
    inline = "".join(sorted({FLAGS[c] for c in flags}))
    pattern = (f"(?{inline})" if inline else "") + translated
    try:
        return cast(RuleRegex, re2.compile(pattern, _OPTIONS))
    except re2.error as e:
        raise _problem(body, e, unclosed, unopened) from None


def _problem(body: str, e: Exception, unclosed: int | None, unopened: int | None) -> RegexProblem:
    """RE2's error, worded for a rule author and located in ``body``."""
    arg = e.args[0] if e.args else str(e)
    msg = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
    what, _, fragment = msg.partition(": ")
    if what == "missing )":
        return RegexProblem("missing ), unterminated subpattern", unclosed if unclosed is not None else 0)
    if what in ("unexpected )", "missing ("):
        return RegexProblem("unbalanced parenthesis", unopened if unopened is not None else 0)
    if what == "invalid repetition size":
        return RegexProblem(f"invalid repetition size {fragment}: counts go up to 1000", max(body.find(fragment), 0))
    if what == "missing ]":
        return RegexProblem("missing ], unterminated character set", max(body.rfind("["), 0))
    pos = body.find(fragment) if fragment else -1
    return RegexProblem(msg, max(pos, 0))


def _translate(body: str) -> tuple[str, int | None, int | None]:
    """``body`` rewritten for RE2 (see the module docstring), the position of the innermost
    unclosed ``(`` and of the first ``)`` that closes nothing, if any; raise
    ``RegexProblem`` on what RE2 cannot do."""
    out: list[str] = []
    n = len(body)
    i = 0
    in_class = False
    opened: list[int] = []
    unopened: int | None = None
    while i < n:
        c = body[i]
        if c == "\\":
            i = _escape(body, i, in_class, out)
            continue
        if in_class:
            if c == "[" and body.startswith("[:", i) and (end := body.find(":]", i + 2)) > 0:
                out.append(body[i : end + 2])
                i = end + 2
                continue
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            j = i + 1
            if body.startswith("^", j):
                j += 1
            if body.startswith("]", j):  # a "]" first in the set is a literal
                j += 1
            out.append(body[i:j])
            i = j
            continue
        if c == "(":
            if body.startswith("(?", i):
                _group(body, i)
            opened.append(i)
        elif c == ")":
            if opened:
                opened.pop()
            elif unopened is None:
                unopened = i
        elif c in "*+?}" and body.startswith("+", i + 1) and _quantifies(body, i):
            raise RegexProblem(
                f"possessive quantifiers ({body[i:i + 2]}) are not supported by {_ENGINE}; "
                f"drop the second + (the engine never backtracks, so they are not needed)", i)
        out.append(c)
        i += 1
    return "".join(out), (opened[-1] if opened else None), unopened


def _quantifies(body: str, i: int) -> bool:
    """Whether ``body[i]`` (``* + ? }``) ends a quantifier (not a literal ``}`` or ``(?``)."""
    if body[i] == "}":
        start = body.rfind("{", 0, i)
        inner = body[start + 1 : i] if start >= 0 else "x"
        return bool(inner) and all(ch.isdigit() or ch == "," for ch in inner)
    return i > 0 and body[i - 1] != "(" and not (body[i] == "?" and body[i - 1] in "*+?")


_LOOKS = {
    "(?=": ("lookahead (?=...) is", "match the text that follows as part of the pattern, or put what must be there in another term (all: [..])"),
    "(?!": ("negative lookahead (?!...) is", "put what must not occur in a none: list or a NOT term"),
    "(?<=": ("lookbehind (?<=...) is", "match the text that comes before as part of the pattern, or use another term (all: [..])"),
    "(?<!": ("negative lookbehind (?<!...) is", "put what must not occur in a none: list or a NOT term"),
    "(?>": ("atomic groups (?>...) are", "write a plain group (...): the engine never backtracks, so they are not needed"),
    "(?P=": ("backreferences (?P=name) are", "rewrite without them, e.g. spell out the alternatives"),
    "(?(": ("conditional groups (?(...)...) are", "rewrite as alternatives (a|b)"),
    "(?#": ("comments (?#...) are", "remove the comment"),
}


def _group(body: str, i: int) -> None:
    """Check a ``(?`` group opener at ``body[i]``."""
    for opener, (what, fix) in _LOOKS.items():
        if body.startswith(opener, i):
            raise RegexProblem(f"{what} not supported by {_ENGINE}; {fix}", i)
    if body.startswith(("(?P<", "(?<"), i):  # a named group
        return
    j = i + 2
    while j < len(body) and (body[j].isalpha() or body[j] == "-"):
        ch = body[j]
        if ch == "x":
            raise RegexProblem(f"the verbose flag (?x) is not supported by {_ENGINE}; write the pattern without spaces and comments", i)
        if ch.isalpha() and ch not in "imsU":
            raise RegexProblem(f"the inline flag {ch!r} (?{ch}) is not supported by {_ENGINE}; only (?i), (?m) and (?s) are", i)
        j += 1


def _escape(body: str, i: int, in_class: bool, out: list[str]) -> int:
    """Translate the escape at ``body[i]`` (a backslash) into ``out``; the index after it."""
    nxt = body[i + 1 : i + 2]
    if not nxt:
        raise RegexProblem("trailing backslash: escape it as \\\\", i)
    if nxt in "123456789" and not in_class:
        raise RegexProblem(
            f"backreferences (\\{nxt}) are not supported by {_ENGINE}; rewrite without them, "
            "e.g. spell out the alternatives", i)
    if nxt == "g" and body.startswith("<", i + 2):
        raise RegexProblem(f"backreferences (\\g<..>) are not supported by {_ENGINE}; rewrite without them", i)
    if nxt in "uU":
        width = 4 if nxt == "u" else 8
        digits = body[i + 2 : i + 2 + width]
        if len(digits) == width and all(ch in "0123456789abcdefABCDEF" for ch in digits):
            out.append(f"\\x{{{digits}}}")
            return i + 2 + width
        raise RegexProblem(f"bad escape \\{nxt}: expected {width} hex digits", i)
    if nxt in "xpP" and body.startswith("{", i + 2) and (end := body.find("}", i + 3)) > 0:
        out.append(body[i : end + 1])  # \x{41}, \p{Greek}: the braces are not a repetition
        return end + 1
    if nxt == "Z":
        out.append("\\z")  # the end of the text, Python's \Z
        return i + 2
    if nxt in "bB":
        _check_boundary(body, i)
    if in_class:
        if nxt in "WS":
            raise RegexProblem(
                f"\\{nxt} inside [...] is not supported by {_ENGINE}; write an alternative "
                f"instead, e.g. (?:\\{nxt}|_) for [\\{nxt}_]", i)
        rep = _UNICODE_IN_CLASS.get(nxt)
    else:
        rep = _UNICODE.get(nxt)
    out.append(rep if rep is not None else body[i : i + 2])
    return i + 2


def _check_boundary(body: str, i: int) -> None:
    """``\\b``/``\\B`` where it could sit next to a non-ASCII word character: RE2's
    are ASCII-only, so they would silently never match there. That is the case beside a
    non-ASCII letter, in a pattern that names non-ASCII letters anywhere
    (``\\b(Путин|Putin)\\b``), and beside what matches any letter (``\\w``, ``.``,
    a negated or ``\\w`` class)."""
    after = body[i + 2 : i + 3]
    before = body[i - 1] if i > 0 and (i < 2 or body[i - 2] != "\\") else ""
    wide = (any(not c.isascii() and (c.isalnum() or c == "_") for c in body)
            or body[i + 2 : i + 4] in ("\\w", "\\W") or after == "."
            or body[max(0, i - 2) : i] in ("\\w", "\\W") or (before in (".", "+", "*")
            and _wide_before(body, i))
            or (after == "[" and _wide_class(body, i + 2)))
    if wide and not any(ch and not ch.isascii() for ch in (after, before)):
        raise RegexProblem(
            f"\\{body[i + 1]} only knows ASCII letters in {_ENGINE}, so it never sees a word "
            "boundary next to a non-ASCII letter, and this pattern can meet one there; use a "
            "term instead (a word, or a prefix like Путин*), or (?:^|[^\\w]) and "
            "(?:[^\\w]|$) around the word", i)
    for ch in (after, before):
        if ch and not ch.isascii() and (ch.isalnum() or ch == "_"):
            raise RegexProblem(
                f"\\{body[i + 1]} only knows ASCII letters in {_ENGINE}, so it never sees a word "
                f"boundary next to {ch!r}; use a term instead (a word, or a prefix like Путин*), "
                "or (?:^|[^\\w]) and (?:[^\\w]|$) around the word", i)


def _wide_before(body: str, i: int) -> bool:
    """Whether the quantified token just before ``i`` can match a non-ASCII letter."""
    j = i - 1
    while j >= 0 and body[j] in "+*?":
        j -= 1
    return body[max(0, j - 1) : j + 1] in ("\\w", "\\W") or body[j : j + 1] == "."


def _wide_class(body: str, start: int) -> bool:
    """Whether the bracket class opening at ``start`` can match a non-ASCII letter."""
    end = body.find("]", start + 2)
    cls = body[start : end + 1 if end >= 0 else len(body)]
    return cls.startswith("[^") or "\\w" in cls or "\\W" in cls or not cls.isascii()
