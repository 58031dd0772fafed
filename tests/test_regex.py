"""Rule regexes on RE2: no catastrophic backtracking, what RE2 cannot do reported at load with
file:line:column and a fix, Python's meaning kept where it can be, and the per-story budget."""

from __future__ import annotations

import re
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
import re2

from monitor.core.model import Story
from monitor.core.rules.load import RuleFile, parse_rules
from monitor.core.rules.match import Matcher, compile_rules
from monitor.core.rules.regex import RegexProblem, compile_rule_regex
from monitor.errors import RulesError

NOW = datetime(2026, 2, 17, 12, 0, tzinfo=UTC)
EVIL = "/(a+)+$/"


def story(title: str = "", summary: str = "", content: str = "") -> Story:
    return Story(id="s1", feed="wire", title=title, link="https://example.org/a", summary=summary,
                 content=content, published=NOW, first_seen=NOW)


def load(text: str, actors: str = "") -> Matcher | list[str]:
    """The compiled rules of ``r.yaml`` (and ``actors.yaml``), or their problems."""
    files = [RuleFile(path=Path("rules/r.yaml"), text=textwrap.dedent(text))]
    if actors:
        files.insert(0, RuleFile(path=Path("rules/actors.yaml"), text=textwrap.dedent(actors)))
    try:
        return compile_rules(parse_rules(Path("rules"), files, channels=None))
    except RulesError as e:
        return [str(p) for p in e.problems]


def matcher(text: str, actors: str = "", **kw: int) -> Matcher:
    m = load(text, actors)
    assert isinstance(m, Matcher), m
    return Matcher(m.ruleset, **kw) if kw else m


def fired(m: Matcher, s: Story) -> list[str]:
    return [x.rule for x in m.match(s)]


# --- no catastrophic backtracking ----------------------------------------------------------


def test_the_redos_pattern_answers_at_once_and_correctly() -> None:
    """``/(a+)+$/`` backtracks for ever on Python's ``re``; on RE2 it is linear. The test
    just runs it: it would hang (and hit the per-test timeout) on a backtracking engine."""
    m = matcher(f"rules:\n  - name: evil\n    any: ['{EVIL}']\n")
    assert fired(m, story("a" * 26 + "!")) == []
    assert fired(m, story("a" * 100_000 + "!")) == []
    assert fired(m, story("x", content="a" * 100_000 + "!")) == []
    assert fired(m, story("b" * 100_000 + "aaa")) == ["evil"]
    (hit,) = m.match(story("b " + "a" * 40))[0].hits
    assert (hit.start, hit.end) == (2, 42)


def test_rules_test_explains_with_re2_too() -> None:
    """``monitor rules test`` / ``explain`` evaluates every rule on the same compiled RE2."""
    m = matcher(f"rules:\n  - name: evil\n    any: ['{EVIL}']\n  - name: disabled\n    enabled: false\n    any: ['{EVIL}']\n")
    expl = {e.rule: e for e in m.explain(story("a" * 50_000 + "!"))}
    assert not expl["evil"].matched and not expl["disabled"].matched
    expl = {e.rule: e for e in m.explain(story("aaaa"))}
    assert expl["evil"].matched and expl["evil"].condition.children[0].hits[0].text == "aaaa"


def test_rule_regexes_are_compiled_by_re2_with_no_fallback_to_re() -> None:
    """google-re2's module raises on what RE2 cannot do; it never hands the pattern to
    Python's ``re`` (some ``re2`` wrappers do, which would bring the backtracking back)."""
    with pytest.raises(re2.error):
        re2.compile(r"(a)\1")
    with pytest.raises(re2.error):
        re2.compile(r"a(?=b)")
    rx = compile_rule_regex("(a+)+$", "")
    assert not isinstance(rx, re.Pattern)
    assert type(rx).__module__.startswith("re2")
    with pytest.raises(RegexProblem):
        compile_rule_regex(r"(a)\1", "")


# --- what RE2 cannot do, reported at load --------------------------------------------------

# (pattern as written in YAML single quotes, 0-based position of the construct, words of the fix)
UNSUPPORTED = [
    (r"(sanction)s? \1", 13, "backreferences (\\1) are not supported by the linear-time regex engine (RE2); rewrite without them"),
    (r"(?P<w>x) (?P=w)", 9, "backreferences (?P=name) are not supported"),
    (r"(x) \g<1>", 4, "backreferences (\\g<..>) are not supported"),
    (r"Iran(?= deal)", 4, "lookahead (?=...) is not supported"),
    (r"Iran(?! deal)", 4, "negative lookahead (?!...) is not supported by the linear-time regex engine (RE2); put what must not occur in a none: list"),
    (r"(?<=US )sanctions", 0, "lookbehind (?<=...) is not supported"),
    (r"(?<!no )deal", 0, "negative lookbehind (?<!...) is not supported"),
    (r"(?>a+)b", 0, "atomic groups (?>...) are not supported"),
    (r"a++b", 1, "possessive quantifiers (++) are not supported by the linear-time regex engine (RE2); drop the second +"),
    (r"a{2,3}+b", 5, "possessive quantifiers (}+) are not supported"),
    (r"(a)?(?(1)b|c)", 4, "conditional groups (?(...)...) are not supported"),
    (r"(?x) a b", 0, "the verbose flag (?x) is not supported"),
    (r"\bПутин", 0, "\\b only knows ASCII letters"),
    # the pattern names a non-ASCII word: the \b beside the group would never see it
    (r"\b(Путин|Putin)\b", 0, "\\b only knows ASCII letters"),
    (r"\b\w+ deal", 0, "\\b only knows ASCII letters"),  # \w meets every script
    (r"deal \w+\b", 8, "\\b only knows ASCII letters"),
    (r"\b[^ ]+ deal", 0, "\\b only knows ASCII letters"),
    (r"[\W_]+x", 1, "\\W inside [...] is not supported"),
    (r"sanction(s", 8, "missing ), unterminated subpattern"),
    (r"a{1001}", 1, "invalid repetition size {1001}: counts go up to 1000"),
]


@pytest.mark.parametrize(("pattern", "pos", "fix"), UNSUPPORTED)
def test_an_unsupported_construct_is_a_located_load_error_with_a_fix(pattern: str, pos: int, fix: str) -> None:
    # line 3 is `    any: ['/<pattern>/']`: the pattern starts in column 13
    (problem,) = load(f"rules:\n  - name: x\n    any: ['/{pattern}/']\n")
    assert problem.startswith(f'rules/r.yaml:3:{13 + pos}: rule "x": bad regular expression /{pattern}/: '), problem
    assert fix in problem, problem


def test_unsupported_constructs_are_located_in_every_form_a_regex_takes() -> None:
    problems = load(
        """\
        rules:
          - name: listed
            all: [Iran, {regex: 'deal(?! off)', flags: i}]
          - name: expr
            expr: 'Iran AND /(\\w+) \\1/i'
          - name: nested
            all: [Iran, {none: ['/x(?<=y)/']}]
          - name: flags
            any: [{regex: 'deal', flags: ix}]
          - name: actor
            actors: [iran]
        """,
        actors="""\
        actors:
          iran: [Iran, '/Teh(?=ran)/']
        """,
    )
    assert problems == [
        "rules/actors.yaml:2:21: actor \"iran\": bad regular expression /Teh(?=ran)/: lookahead (?=...) is not supported by the linear-time regex engine (RE2); match the text that follows as part of the pattern, or put what must be there in another term (all: [..]) at position 3",
        "rules/r.yaml:3:30: rule \"listed\": bad regular expression /deal(?! off)/i: negative lookahead (?!...) is not supported by the linear-time regex engine (RE2); put what must not occur in a none: list or a NOT term at position 4",
        "rules/r.yaml:5:28: rule \"expr\": expr: bad regular expression /(\\w+) \\1/i: backreferences (\\1) are not supported by the linear-time regex engine (RE2); rewrite without them, e.g. spell out the alternatives at position 6",
        "rules/r.yaml:7:28: rule \"nested\": bad regular expression /x(?<=y)/: lookbehind (?<=...) is not supported by the linear-time regex engine (RE2); match the text that comes before as part of the pattern, or use another term (all: [..]) at position 1",
        "rules/r.yaml:9:34: rule \"flags\": unknown regex flag 'x' in /deal/ix; use i, m or s; the verbose flag x is not supported by the linear-time regex engine: write the pattern without spaces and comments",
    ]


# --- Python's meaning kept -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("term", "text", "hit"),
    [
        ("/f-35/", "The F-35 deal", False),
        ("/f-35/i", "The F-35 deal", True),
        ("/путин/i", "ПУТИН сказал", True),
        ("/^Iran/m", "Report\nIran talks", True),
        ("/^Iran/", "Report\nIran talks", False),
        ("/talks.resume/s", "talks\nresume", True),
        ("/talks.resume/", "talks\nresume", False),
        ("/Путин\\w+/", "встреча с Путиным", True),  # \w is Unicode, as in Python
        ("/\\d{4}/", "год ٢٠٢٦", True),  # so is \d
        ("/[\\w-]+led/", "a NATO-led force", True),
        ("/deal\\Z/", "a deal", True),  # Python's \Z: the end of the text
        ("/deal\\z/", "a deal", True),  # RE2's spelling works too
        ("/\\u0414/", "Д", True),
        ("/\\bUS\\b/", "the US deal", True),  # \b is fine next to ASCII letters
        ("/\\bUS\\b/", "USA", False),
        ("/\\b(sanction|tariff)s?\\b/i", "New Sanctions on Iran", True),  # ASCII-only: fine
        ("/\\b(sanction|tariff)s?\\b/i", "sanctionsdeadline", False),
        ("/\\pL+stan/", "Kazakhstan", True),  # RE2's Unicode classes
        ("/\\p{Cyrillic}+/", "Путин", True),
        ("/\\x{41}+B/", "xAAB", True),  # braces of an escape are not a repetition
    ],
)
def test_flags_and_python_meaning_are_kept(term: str, text: str, hit: bool) -> None:
    m = matcher(f"rules:\n  - name: t\n    any: ['{term}']\n")
    assert (fired(m, story(text)) == ["t"]) is hit


# --- the per-story budget ------------------------------------------------------------------

BUDGET_RULES = """\
rules:
  - name: title-regex
    any: ['/dance/']
  - name: both-regexes
    all: ['/dance/', '/gala/']
  - name: word-or-regex
    any: [gala, '/robots?/']
  - name: not-regex
    all: [robots]
    none: ['/tango/']
  - name: words-only
    any: [gala]
"""


def test_a_story_over_the_regex_budget_is_reported_and_the_rest_decided() -> None:
    """Budget 40: the title (20 chars) is scanned by both regexes (40 chars), every later
    scan is skipped. What the known terms decide still holds; what depends on the skipped
    scans is undecided: not fired, and named."""
    m = matcher(BUDGET_RULES, regex_budget=40)
    s = story("Robots dance at a do", summary="A gala with tango and robots, " * 3)
    pre = m.prematch(s)
    assert pre.skipped is not None
    assert pre.skipped.budget == 40 and pre.skipped.wanted == 4 * (20 + len(s.summary))
    assert pre.skipped.terms == ("/dance/", "/gala/", "/robots?/", "/tango/")
    # gala is only in the summary, tango too: both-regexes and not-regex depend on them
    assert pre.skipped.undecided == ("both-regexes", "not-regex")
    assert [m.ruleset.rules[t.rule].name for t in pre.texts] == ["title-regex", "word-or-regex", "words-only"]
    assert fired(m, s) == ["title-regex", "word-or-regex", "words-only"]
    assert [x.rule for x in m.match(s, prematched=pre)] == fired(m, s)
    assert m.prematch(s) == pre  # deterministic: the same story gives the same report

    expl = {e.rule: e for e in m.explain(s)}
    assert not expl["both-regexes"].matched
    notes = [c.note for c in expl["both-regexes"].condition.children]
    assert any("not searched in summary: the story's regex budget" in n for n in notes), notes


def test_a_story_within_the_budget_reports_nothing() -> None:
    m = matcher(BUDGET_RULES)  # the default budget
    s = story("Robots dance at a do", summary="A gala with tango and robots, " * 3)
    pre = m.prematch(s)
    assert pre.skipped is None
    assert fired(m, s) == ["title-regex", "both-regexes", "word-or-regex", "words-only"]


def test_a_huge_field_is_skipped_without_being_scanned() -> None:
    """A field longer than the whole budget is never given to a regex. (/robots?/ is
    case-sensitive: the title's "Robots" does not decide word-or-regex.)"""
    m = matcher(BUDGET_RULES, regex_budget=1_000)
    s = story("Robots dance", content="tango " * 1_000_000)
    pre = m.prematch(s)
    assert pre.skipped is not None
    assert pre.skipped.undecided == ("both-regexes", "word-or-regex", "not-regex")
    assert fired(m, s) == ["title-regex"]


def test_no_regex_no_budget() -> None:
    m = matcher("rules:\n  - name: w\n    any: [gala]\n", regex_budget=0)
    pre = m.prematch(story("gala", content="x" * 10_000))
    assert pre.skipped is None and [t.rule for t in pre.texts] == [0]
