"""The one-line expression form: precedence, grouping, operators and every error (with columns)."""

from __future__ import annotations

import pytest

from monitor.core.rules.expr import Actor, And, ExprError, Near, Not, Or, Term, parse_expr, render
from monitor.core.rules.terms import EXACT, PREFIX, STEM, TermError, parse_term
from monitor.errors import MonitorError, RuleSyntaxError

ACTORS = {"putin", "trump", "witkoff"}


def p(src: str) -> str:
    """Parse and render back with full parentheses, to compare structure."""
    return _show(parse_expr(src, actors=ACTORS))


def _show(n: object) -> str:
    if isinstance(n, Term):
        return n.spec.label
    if isinstance(n, Actor):
        return f"@{n.name}"
    if isinstance(n, Not):
        return f"NOT({_show(n.item)})"
    if isinstance(n, Near):
        op = f"NEAR{n.within}{'s' if n.same_sentence else ''}"
        return f"{op}(" + ", ".join(_show(i) for i in n.items) + ")"
    if isinstance(n, And):
        return "AND(" + ", ".join(_show(i) for i in n.items) + ")"
    if isinstance(n, Or):
        return "OR(" + ", ".join(_show(i) for i in n.items) + ")"
    raise AssertionError(n)


@pytest.mark.parametrize(
    ("src", "tree"),
    [
        ("a", "a"),
        ("a AND b OR c", "OR(AND(a, b), c)"),
        ("a OR b AND c", "OR(a, AND(b, c))"),
        ("(a OR b) AND c", "AND(OR(a, b), c)"),
        ("NOT a AND b", "AND(NOT(a), b)"),
        ("NOT (a AND b)", "NOT(AND(a, b))"),
        ("NOT NOT a AND b", "AND(NOT(NOT(a)), b)"),
        ("a NEAR/5 b AND c", "AND(NEAR5(a, b), c)"),
        ("a AND b NEAR/3 c", "AND(a, NEAR3(b, c))"),
        ("a NEAR/5 b OR c", "OR(NEAR5(a, b), c)"),
        ("a NEAR/5 b NEAR/2 c", "AND(NEAR5(a, b), NEAR2(b, c))"),
        ("(a OR b) NEAR/4 @putin", "NEAR4(OR(a, b), @putin)"),
        ("a NEAR/5/s b", "NEAR5s(a, b)"),
        ("a NEAR/s b", "NEARNones(a, b)"),
        ("((a))", "a"),
        (
            "(sanctions OR tariffs) AND deadline AND @putin AND NOT sport",
            "AND(OR(sanctions, tariffs), deadline, @putin, NOT(sport))",
        ),
        ('"Donald Trump" OR =US', 'OR("Donald Trump", =US)'),
        ("/sanction(s|ed)?/i AND Путин*", "AND(/sanction(s|ed)?/i, Путин*)"),
        ("a AND b AND c", "AND(a, b, c)"),
        ("a OR b OR c", "OR(a, b, c)"),
    ],
)
def test_precedence_and_grouping(src: str, tree: str) -> None:
    assert p(src) == tree


def test_term_kinds() -> None:
    node = parse_expr('sanctions AND "Donald Trump" AND =US AND Путин* AND /x+/i AND US-Iran')
    assert isinstance(node, And)
    kinds = [(i.spec.kind, i.spec.tokens) for i in node.items if isinstance(i, Term)]
    assert kinds[0] == ("word", ((STEM, "sanction"),))
    assert kinds[1] == ("phrase", ((STEM, "donald"), (STEM, "trump")))
    assert kinds[2] == ("word", ((EXACT, "US"),))
    assert kinds[3] == ("word", ((PREFIX, "путин"),))
    assert kinds[4][0] == "regex"
    assert kinds[5] == ("phrase", ((STEM, "us"), (STEM, "iran")))


def test_columns_of_nodes() -> None:
    node = parse_expr("tariffs AND @trump", actors=ACTORS)
    assert isinstance(node, And)
    assert [getattr(i, "col", None) for i in node.items] == [1, 13]


def test_render_round_trip() -> None:
    src = '(sanctions OR tariffs) AND "secondary sanctions" NEAR/10 deadline AND @putin AND NOT sport'
    assert p(render(parse_expr(src, actors=ACTORS))) == p(src)


@pytest.mark.parametrize(
    ("src", "col", "fragment"),
    [
        ("", 1, "empty expression"),
        ("   ", 1, "empty expression"),
        ("(a OR b", 1, "'(' is never closed"),
        ("a AND (b OR (c AND d)", 7, "'(' is never closed"),
        ("a OR b)", 7, "')' has no matching '('"),
        (")", 1, "')' has no matching '('"),
        ("a AND", 6, "expected a term after 'AND'"),
        ("a OR ", 5, "expected a term after 'OR'"),
        ("AND a", 1, "expected a term before AND"),
        ("a OR OR b", 6, "expected a term before OR"),
        ("NOT", 4, "expected a term after 'NOT'"),
        ("sanctions deadline", 11, 'for a phrase write "sanctions deadline"'),
        ("(a b)", 4, "expected AND, OR or NEAR/n between 'a' and 'b'"),
        ("a and b", 3, "operators are written in capitals: AND"),
        ("a or b", 3, "operators are written in capitals: OR"),
        ("not a", 1, "operators are written in capitals: NOT"),
        ("a AND @khamenei", 7, 'unknown actor "khamenei"; known actors: putin, trump, witkoff'),
        ("@putn OR x", 1, 'did you mean "putin"'),
        ("a AND @", 7, "@ must be followed by an actor name"),
        ('a AND "b c', 7, "unterminated phrase"),
        ('a AND ""', 7, "empty phrase"),
        ("a AND /b(/", 9, "bad regular expression"),
        ("a AND /b", 7, "unterminated regex"),
        ("a AND /x*/", 7, "matches the empty string"),
        ("a NEAR b", 3, "NEAR needs a distance"),
        ("a NEAR/x b", 3, "bad proximity operator"),
        ("a NEAR/0 b", 3, "at least 1"),
        ("a NEAR/5 NOT b", 10, "NEAR/5 needs a term, phrase, @actor or (a OR b) group"),
        ("(a AND b) NEAR/5 c", 1, "NEAR/5 needs a term"),
        ("a AND x*", 7, "too short"),
        ("a AND ()", 7, "empty parentheses"),
    ],
)
def test_errors_with_columns(src: str, col: int, fragment: str) -> None:
    with pytest.raises(ExprError) as info:
        parse_expr(src, actors=ACTORS)
    assert fragment in info.value.message
    assert info.value.col == col, info.value


def test_actor_check_can_be_skipped() -> None:
    assert isinstance(parse_expr("@anyone"), Actor)


def test_bare_near_word_is_a_term() -> None:
    assert p("nearby AND NEARBY") == "AND(nearby, NEARBY)"


def test_syntax_errors_join_the_monitor_error_tree() -> None:
    with pytest.raises(RuleSyntaxError) as info:
        parse_expr("a AND x*")
    assert isinstance(info.value, ExprError) and isinstance(info.value, MonitorError)
    assert not isinstance(info.value, ValueError)
    assert (info.value.column, info.value.col) == (7, 7)
    assert str(info.value) == "column 7: prefix x* is too short: give at least 3 characters"
    with pytest.raises(TermError) as term:
        parse_term("  =x*")
    assert isinstance(term.value, RuleSyntaxError)
    assert (term.value.offset, term.value.column) == (3, 4)
    assert str(term.value) == term.value.message
