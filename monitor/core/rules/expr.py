"""The condition tree of a rule, and the one-line expression form that builds one.

Every rule condition, whether written as YAML lists (``all`` / ``any`` / ``none`` /
``actors`` / ``near``) or as an ``expr:`` line, becomes the same small tree of frozen nodes:
``Term``, ``Actor``, ``And``, ``Or``, ``Not``, ``Near``. ``monitor.core.rules.match`` compiles it.

Expression grammar (operators are written in capitals; precedence NOT > NEAR > AND > OR)::

    expr    := or
    or      := and ("OR" and)*
    and     := near ("AND" near)*
    near    := unary (("NEAR/n" | "NEAR/n/s" | "NEAR/s") unary)*
    unary   := "NOT" unary | primary
    primary := "(" expr ")" | "@"actor | "\\"phrase\\"" | "/regex/flags" | word

Words: ``sanctions`` (inflected), ``=US`` (exact), ``Путин*`` (prefix), ``US-Iran`` (the
tokens in sequence). Two terms side by side are an error, not an implicit AND: write
``"Donald Trump"`` for a phrase, or put an operator between them. ``a NEAR/5 b``: a and b at
most 5 words apart (adjacent words are 1 apart); ``/s`` adds "in the same sentence";
``NEAR/s`` alone means "in the same sentence". ``a NEAR/5 b NEAR/5 c`` means
``(a NEAR/5 b) AND (b NEAR/5 c)``. NEAR operands must be terms, actors or ``(x OR y)`` groups.

Examples::

    (sanctions OR tariffs) AND deadline AND @putin AND NOT sport
    "secondary sanctions" NEAR/10 (deadline OR ultimatum)
    @iran AND (nuclear NEAR/s talks) AND NOT =IAEA
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from dataclasses import dataclass

from monitor.core.rules.terms import TermError, TermSpec, parse_regex, parse_term
from monitor.errors import RuleSyntaxError


@dataclass(frozen=True, kw_only=True, slots=True)
class Term:
    """A word, phrase or regex."""

    spec: TermSpec
    col: int = 0  # 1-based column in the expression (0 when from a YAML list)


@dataclass(frozen=True, kw_only=True, slots=True)
class Actor:
    """``@name``: any alias of a named actor."""

    name: str
    col: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class And:
    items: tuple[Node, ...]
    label: str = "AND"


@dataclass(frozen=True, kw_only=True, slots=True)
class Or:
    items: tuple[Node, ...]
    label: str = "OR"


@dataclass(frozen=True, kw_only=True, slots=True)
class Not:
    item: Node
    label: str = "NOT"


@dataclass(frozen=True, kw_only=True, slots=True)
class Near:
    """All items within ``within`` words of each other (None: any distance), optionally in
    one sentence. Items are positional: Term, Actor or Or of positional nodes."""

    items: tuple[Node, ...]
    within: int | None
    same_sentence: bool = False


Node = Term | Actor | And | Or | Not | Near


class ExprError(RuleSyntaxError):
    """A syntax or reference error; ``col`` is 1-based within the expression."""

    def __init__(self, message: str, col: int) -> None:
        super().__init__(message, col, text=f"column {col}: {message}")
        self.col = col


def unknown_actor(name: str, known: Collection[str]) -> str:
    """The message for a reference to an actor nobody defined."""
    msg = f'unknown actor "{name}"'
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        msg += f' (did you mean "{close[0]}"?)'
    if known:
        msg += "; known actors: " + ", ".join(sorted(known))
    else:
        msg += "; no actors are defined (add them to actors.yaml or an actors: block)"
    return msg


def is_positional(node: Node) -> bool:
    """Whether a node has word positions (so it can be an operand of NEAR)."""
    if isinstance(node, Term | Actor):
        return True
    if isinstance(node, Or):
        return all(is_positional(i) for i in node.items)
    return False


# --- lexer -------------------------------------------------------------------------------

_NEAR = re.compile(r"NEAR(?:/(\d+))?(/s|/S)?(?![\w/])|NEAR/s(?![\w/])|NEAR/\S*")
_WORD = re.compile(r'[^\s()"]+')
_FLAGS = re.compile(r"[a-z]*")
_ACTOR = re.compile(r"@([\w-]*)")


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # ( ) AND OR NOT NEAR TERM ACTOR
    col: int
    text: str
    node: Node | None = None
    within: int | None = None
    same_sentence: bool = False


def _lex(src: str, actors: Collection[str] | None) -> list[_Tok]:
    """The tokens of an expression; raise ``ExprError`` at the first one that is wrong."""
    out: list[_Tok] = []
    i, n = 0, len(src)
    while i < n:
        if src[i].isspace():
            i += 1
            continue
        tok, i = _lex_one(src, i, actors)
        out.append(tok)
    return out


def _lex_one(src: str, i: int, actors: Collection[str] | None) -> tuple[_Tok, int]:
    """The token starting at ``src[i]`` (not a space), and where the next one may start."""
    c = src[i]
    if c in "()":
        return _Tok(c, i + 1, c), i + 1
    if c == '"' or (c == "=" and src[i + 1 : i + 2] == '"'):
        return _lex_phrase(src, i)
    if c == "/":
        return _lex_regex(src, i)
    if c == "@":
        return _lex_actor(src, i, actors)
    nm = _NEAR.match(src, i)
    if nm:
        return _lex_near(nm, i + 1), nm.end()
    return _lex_word(src, i)


def _lex_phrase(src: str, i: int) -> tuple[_Tok, int]:
    """``"a phrase"`` or ``="an exact phrase"``."""
    col = i + 1
    q = i + (1 if src[i] == '"' else 2)
    end = src.find('"', q)
    if end < 0:
        raise ExprError('unterminated phrase: a " has no closing "', col)
    raw = src[i : end + 1]
    if not src[q:end].strip():
        raise ExprError("empty phrase", col)
    return _Tok("TERM", col, raw, Term(spec=_term(raw, col), col=col)), end + 1


def _lex_regex(src: str, i: int) -> tuple[_Tok, int]:
    """``/pattern/flags`` (a ``\\/`` inside the pattern does not end it)."""
    col = i + 1
    n = len(src)
    j = i + 1
    while j < n and src[j] != "/":
        j += 2 if src[j] == "\\" else 1
    if j >= n:
        raise ExprError("unterminated regex: write /pattern/ or /pattern/i", col)
    m = _FLAGS.match(src, j + 1)
    flag_end = m.end() if m else j + 1
    raw = src[i:flag_end]
    try:
        spec = parse_regex(raw, src[i + 1 : j], src[j + 1 : flag_end])
    except TermError as e:
        raise ExprError(e.message, col + e.offset) from e
    return _Tok("TERM", col, raw, Term(spec=spec, col=col)), flag_end


def _lex_actor(src: str, i: int, actors: Collection[str] | None) -> tuple[_Tok, int]:
    """``@name``, checked against the known actors when they are given."""
    col = i + 1
    m = _ACTOR.match(src, i)
    assert m is not None
    name = m.group(1)
    if not name:
        raise ExprError("@ must be followed by an actor name, e.g. @putin", col)
    if actors is not None and name not in actors:
        raise ExprError(unknown_actor(name, actors), col)
    return _Tok("ACTOR", col, m.group(), Actor(name=name, col=col)), m.end()


def _lex_near(nm: re.Match[str], col: int) -> _Tok:
    """``NEAR/5``, ``NEAR/5/s`` or ``NEAR/s``; a bare or malformed NEAR is an error."""
    raw = nm.group()
    if raw == "NEAR/s" or raw == "NEAR/S":
        return _Tok("NEAR", col, raw, within=None, same_sentence=True)
    if nm.group(1) is None and raw != "NEAR" and nm.group(2) is None:
        raise ExprError(f"bad proximity operator {raw!r}: write NEAR/5, NEAR/5/s or NEAR/s", col)
    if nm.group(1) is None and nm.group(2) is None:
        raise ExprError("NEAR needs a distance in words: NEAR/5 (or NEAR/s for the same sentence)", col)
    within = int(nm.group(1)) if nm.group(1) else None
    if within is not None and within < 1:
        raise ExprError("NEAR distance must be at least 1", col)
    return _Tok("NEAR", col, raw, within=within, same_sentence=nm.group(2) is not None)


def _lex_word(src: str, i: int) -> tuple[_Tok, int]:
    """An operator (AND, OR, NOT: capitals only) or a word term."""
    col = i + 1
    m = _WORD.match(src, i)
    assert m is not None
    word = m.group()
    if word in ("AND", "OR", "NOT"):
        return _Tok(word, col, word), m.end()
    if word.lower() in ("and", "or", "not", "near") or word.lower().startswith("near/"):
        raise ExprError(
            f"operators are written in capitals: {word.upper()} (to search for the word, quote it: \"{word}\")",
            col,
        )
    return _Tok("TERM", col, word, Term(spec=_term(word, col), col=col)), m.end()


def _term(raw: str, col: int) -> TermSpec:
    try:
        return parse_term(raw)
    except TermError as e:
        raise ExprError(e.message, col + e.offset) from e


# --- parser ------------------------------------------------------------------------------


class _Parser:
    def __init__(self, toks: list[_Tok], src: str) -> None:
        self.toks = toks
        self.i = 0
        self.end_col = len(src.rstrip()) + 1

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def parse(self) -> Node:
        node = self.or_()
        t = self.peek()
        if t is not None:
            if t.kind == ")":
                raise ExprError("unbalanced parentheses: this ')' has no matching '('", t.col)
            prev = self.toks[self.i - 1]
            raise ExprError(
                f"expected AND, OR or NEAR/n between {prev.text!r} and {t.text!r}"
                + (
                    f' (for a phrase write "{prev.text} {t.text}")'
                    if prev.kind == "TERM" and t.kind == "TERM"
                    else ""
                ),
                t.col,
            )
        return node

    def or_(self) -> Node:
        items = [self.and_()]
        while (t := self.peek()) is not None and t.kind == "OR":
            self.take()
            items.append(self.and_())
        return items[0] if len(items) == 1 else Or(items=tuple(items))

    def and_(self) -> Node:
        items = [self.near()]
        while (t := self.peek()) is not None and t.kind == "AND":
            self.take()
            items.append(self.near())
        return items[0] if len(items) == 1 else And(items=tuple(items))

    def near(self) -> Node:
        first_col = self.peek().col if self.peek() is not None else self.end_col  # type: ignore[union-attr]
        left = self.unary()
        pairs: list[Node] = []
        while (t := self.peek()) is not None and t.kind == "NEAR":
            op = self.take()
            right_col = self.peek().col if self.peek() is not None else self.end_col  # type: ignore[union-attr]
            right = self.unary()
            for node, col in ((left, first_col), (right, right_col)):
                if not is_positional(node):
                    raise ExprError(
                        f"{op.text} needs a term, phrase, @actor or (a OR b) group on each side", col
                    )
            pairs.append(Near(items=(left, right), within=op.within, same_sentence=op.same_sentence))
            left, first_col = right, right_col
        if not pairs:
            return left
        return pairs[0] if len(pairs) == 1 else And(items=tuple(pairs))

    def unary(self) -> Node:
        t = self.peek()
        if t is None:
            prev = self.toks[self.i - 1] if self.i else None
            if prev is None:
                raise ExprError("empty expression", 1)
            raise ExprError(f"expected a term after {prev.text!r}", self.end_col)
        if t.kind == "NOT":
            self.take()
            return Not(item=self.unary())
        return self.primary()

    def primary(self) -> Node:
        t = self.take()
        if t.kind == "(":
            if (nxt := self.peek()) is not None and nxt.kind == ")":
                raise ExprError("empty parentheses", t.col)
            node = self.or_()
            close = self.peek()
            if close is None or close.kind != ")":
                if close is None:
                    raise ExprError("unbalanced parentheses: this '(' is never closed", t.col)
                return self._unexpected(close, inside=True)
            self.take()
            return node
        if t.kind in ("TERM", "ACTOR"):
            assert t.node is not None
            return t.node
        if t.kind == ")":
            raise ExprError("unbalanced parentheses: this ')' has no matching '('"
                            if self.i == 1 or self.toks[self.i - 2].kind not in ("AND", "OR", "NOT", "NEAR", "(")
                            else f"expected a term after {self.toks[self.i - 2].text!r}", t.col)
        raise ExprError(f"expected a term before {t.text}", t.col)

    def _unexpected(self, t: _Tok, *, inside: bool) -> Node:
        prev = self.toks[self.i - 1]
        hint = f' (for a phrase write "{prev.text} {t.text}")' if prev.kind == "TERM" and t.kind == "TERM" else ""
        raise ExprError(f"expected AND, OR or NEAR/n between {prev.text!r} and {t.text!r}{hint}", t.col)


def parse_expr(src: str, *, actors: Collection[str] | None = None) -> Node:
    """Parse a one-line expression; raise ``ExprError`` with a 1-based column.

    ``actors``: the known actor names (an unknown ``@name`` is an error); None skips the check.
    """
    if not src.strip():
        raise ExprError("empty expression", 1)
    toks = _lex(src, actors)
    return _Parser(toks, src).parse()


def render(node: Node) -> str:
    """The node back as an expression (for explanations)."""
    if isinstance(node, Term):
        return node.spec.label if " " not in node.spec.label or node.spec.label.startswith(('"', '="', "/")) else f'"{node.spec.label}"'
    if isinstance(node, Actor):
        return f"@{node.name}"
    if isinstance(node, Not):
        inner = render(node.item)
        return f"NOT {inner}" if isinstance(node.item, Term | Actor) else f"NOT ({inner})"
    if isinstance(node, Near):
        op = "NEAR" + (f"/{node.within}" if node.within is not None else "") + ("/s" if node.same_sentence else "")
        return f" {op} ".join(_paren(i) for i in node.items)
    sep = " AND " if isinstance(node, And) else " OR "
    return sep.join(_paren(i) for i in node.items)


def _paren(node: Node) -> str:
    s = render(node)
    return f"({s})" if isinstance(node, And | Or) and len(node.items) > 1 else s
