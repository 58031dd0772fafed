"""Loading and validating rule files: every problem at once, each with file:line:column."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from monitor.core.rules.expr import And, Not, Or
from monitor.core.rules.model import RuleSet
from monitor.errors import RulesError
from monitor.shell.rulefiles import load_rules
from tests.conftest import ROOT

CHANNELS = {"slack-news", "email-oncall", "audit-file"}

ACTORS = """\
actors:
  putin: ["Vladimir Putin", "Putin"]
  trump: ["Donald Trump", "Trump"]
  witkoff: ["Steve Witkoff", "Witkoff"]
"""


def write(d: Path, name: str, text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def problems(d: Path, **kw: object) -> list[str]:
    """Every problem as 'file:line:col: message' with the directory stripped."""
    with pytest.raises(RulesError) as info:
        load_rules(d, channels=kw.pop("channels", CHANNELS), **kw)  # type: ignore[arg-type]
    return [str(p).replace(f"{d}/", "") for p in info.value.problems]


def one(d: Path, rule: str, **kw: object) -> str:
    write(d, "actors.yaml", ACTORS)
    write(d, "r.yaml", rule)
    (p,) = problems(d, **kw)
    return p


# --- shipped examples --------------------------------------------------------------------


def test_shipped_rules_load() -> None:
    rs = load_rules(ROOT / "rules", channels=CHANNELS)
    names = [r.name for r in rs.rules]
    assert "sanctions-deadline" in names and len(names) >= 5
    assert {"putin", "trump", "witkoff"} <= set(rs.actors)
    assert all(f.parent.name == "rules" for f in rs.files)
    sd = rs.rule("sanctions-deadline")
    assert sd.severity == "high" and sd.cooldown == 21600 and sd.path.endswith("sanctions-deadline.yaml")
    assert any(not r.enabled for r in rs.rules)


def test_single_file_and_single_rule_form(tmp_path: Path) -> None:
    write(tmp_path, "actors.yaml", ACTORS)
    p = write(tmp_path, "one.yml", """\
        name: lone
        any: [Iran]
        channels: audit-file
    """)
    rs = load_rules(tmp_path, channels=CHANNELS)
    assert [r.name for r in rs.rules] == ["lone"] and rs.rules[0].channels == ("audit-file",)
    assert len(rs.files) == 2
    rs1 = load_rules(p, channels=CHANNELS)
    assert rs1.files == (p,)


def test_structure_of_conditions(tmp_path: Path) -> None:
    write(tmp_path, "actors.yaml", ACTORS)
    write(tmp_path, "r.yaml", """\
        rules:
          - name: a
            all: [sanctions, deadline]
            none: [sport]
            actors: [trump, putin]
            channels: [slack-news]
    """)
    (r,) = load_rules(tmp_path, channels=CHANNELS).rules
    c = r.condition
    assert isinstance(c, And) and c.label == "rule"
    assert [type(i) for i in c.items] == [And, Not, Or]


def test_default_channels_and_defaults(tmp_path: Path) -> None:
    write(tmp_path, "r.yaml", """\
        rules:
          - name: a
            any: [Iran]
          - name: b
            any: [Iran]
            min_sources: 2
    """)
    rs: RuleSet = load_rules(tmp_path, channels=CHANNELS, default_channels=("audit-file",))
    a, b = rs.rules
    assert a.channels == ("audit-file",) and a.severity == "medium" and a.fields == ("title", "summary", "content")
    assert a.cooldown == 0 and a.window is None and a.enabled
    assert b.window == 86400


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="does not exist"):
        load_rules(tmp_path / "nope", channels=CHANNELS)


# --- every validation error, with its position -------------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (  # unknown key, with a suggestion
            """\
            rules:
              - name: iran-deal
                any: [Iran]
                sevrity: high
                channels: [slack-news]
            """,
            'r.yaml:4:5: rule "iran-deal": unknown key \'sevrity\' (did you mean "severity"?); known keys: ',
        ),
        (  # unknown actor
            """\
            rules:
              - name: iran-deal
                any: [Iran]
                actors: [trump, khamenei]
                channels: [slack-news]
            """,
            'r.yaml:4:21: rule "iran-deal": unknown actor "khamenei"; known actors: putin, trump, witkoff',
        ),
        (  # unknown actor inside a list item
            """\
            rules:
              - name: iran-deal
                all: [Iran, "@khamenei"]
                channels: [slack-news]
            """,
            'r.yaml:3:17: rule "iran-deal": unknown actor "khamenei"; known actors: putin, trump, witkoff',
        ),
        (  # unknown actor inside expr: column of the @
            """\
            rules:
              - name: iran-deal
                expr: Iran AND @khamenei
                channels: [slack-news]
            """,
            'r.yaml:3:20: rule "iran-deal": expr: unknown actor "khamenei"; known actors: putin, trump, witkoff',
        ),
        (  # unbalanced expression, quoted scalar: columns count the quote
            """\
            rules:
              - name: x
                expr: "(sanctions OR tariffs AND deadline"
                channels: [slack-news]
            """,
            "r.yaml:3:12: rule \"x\": expr: unbalanced parentheses: this '(' is never closed",
        ),
        (
            """\
            rules:
              - name: x
                expr: sanctions AND OR deadline
                channels: [slack-news]
            """,
            'r.yaml:3:25: rule "x": expr: expected a term before OR',
        ),
        (  # bad regex: column of the offending character
            """\
            rules:
              - name: x
                any: ["/sanction(s/"]
                channels: [slack-news]
            """,
            'r.yaml:3:21: rule "x": bad regular expression /sanction(s/: missing ), unterminated subpattern at position 8',
        ),
        (  # wrong type
            """\
            rules:
              - name: x
                any: [Iran]
                min_sources: many
                channels: [slack-news]
            """,
            "r.yaml:4:18: rule \"x\": min_sources: Input should be a valid integer, unable to parse string as an integer (got 'many')",
        ),
        (
            """\
            rules:
              - name: x
                any: [Iran]
                severity: urgent
                channels: [slack-news]
            """,
            "r.yaml:4:15: rule \"x\": severity: Input should be 'info', 'low', 'medium', 'high' or 'critical' (got 'urgent')",
        ),
        (  # a bare number where a term is expected
            """\
            rules:
              - name: x
                any: [Iran, 100]
                channels: [slack-news]
            """,
            'r.yaml:3:17: rule "x": expected a term (a string), got a number 100; quote it if it is meant as text',
        ),
        (  # YAML booleans
            """\
            rules:
              - name: off
                any: [Iran]
                channels: [slack-news]
            """,
            "r.yaml:2:11: rule #1: name: Input should be a valid string (YAML reads on/off/yes/no/true/false as booleans: quote it)",
        ),
        (  # empty rule
            """\
            rules:
              - name: x
                channels: [slack-news]
            """,
            'r.yaml:2:5: rule "x": has no conditions; give all, any, actors, near or expr',
        ),
        (
            """\
            rules:
              - name: x
                all: []
                channels: [slack-news]
            """,
            'r.yaml:3:10: rule "x": all: is empty; give at least one term or remove it',
        ),
        (  # only negative conditions
            """\
            rules:
              - name: x
                none: [sport]
                channels: [slack-news]
            """,
            'r.yaml:2:5: rule "x": would match every story: none:/NOT conditions need a positive condition (all, any, actors, near or expr) beside them',
        ),
        (
            """\
            rules:
              - name: x
                expr: NOT sport
                channels: [slack-news]
            """,
            'r.yaml:2:5: rule "x": would match every story: none:/NOT conditions need a positive condition (all, any, actors, near or expr) beside them',
        ),
        (  # unknown channel
            """\
            rules:
              - name: x
                any: [Iran]
                channels: [slack-news, slak-news]
            """,
            'r.yaml:4:28: rule "x": unknown channel "slak-news" (did you mean "slack-news"?); known channels: audit-file, email-oncall, slack-news',
        ),
        (  # no channel and no default
            """\
            rules:
              - name: x
                any: [Iran]
            """,
            'r.yaml:2:11: rule "x": no channels: name them with channels: [..] or set default channels in the config',
        ),
        (  # bad cron
            """\
            rules:
              - name: x
                any: [Iran]
                digest: "0 25 * * *"
                channels: [slack-news]
            """,
            "r.yaml:4:13: rule \"x\": digest: bad cron line '0 25 * * *': hour field '25': Error validating expression '25': the last value (25) is higher than the maximum value (23); expected 5 fields \"minute hour day month weekday\" as crontab reads them (weekday 0 or 7 = Sunday), e.g. \"0 8 * * 1-5\" for 08:00 UTC Monday to Friday",
        ),
        (
            """\
            rules:
              - name: x
                any: [Iran]
                digest: "daily"
                channels: [slack-news]
            """,
            "r.yaml:4:13: rule \"x\": digest: bad cron line 'daily': wrong number of fields; got 1, expected 5 (minute hour day-of-month month day-of-week); expected 5 fields \"minute hour day month weekday\" as crontab reads them (weekday 0 or 7 = Sunday), e.g. \"0 8 * * 1-5\" for 08:00 UTC Monday to Friday",
        ),
        (  # bad duration
            """\
            rules:
              - name: x
                any: [Iran]
                cooldown: 5 parsecs
                channels: [slack-news]
            """,
            "r.yaml:4:15: rule \"x\": cooldown: expected a duration such as 30s, 5m, 2h or 7d, got '5 parsecs'",
        ),
        (
            """\
            rules:
              - name: x
                any: [Iran]
                window: 2h
                channels: [slack-news]
            """,
            'r.yaml:4:13: rule "x": window: only makes sense with min_sources: 2 or more',
        ),
        (  # near without a distance
            """\
            rules:
              - name: x
                near: [{terms: [a1, b1]}]
                channels: [slack-news]
            """,
            'r.yaml:3:12: rule "x": near needs within: N (words) and/or same_sentence: true',
        ),
        (
            """\
            rules:
              - name: x
                near: [{terms: [a1, {all: [b1, c1]}], within: 3}]
                channels: [slack-news]
            """,
            'r.yaml:3:25: rule "x": near terms must be terms, phrases, @actors or {any: [..]} groups',
        ),
        (
            """\
            rules:
              - name: x
                any: [Iran]
                fields: [title, body]
                channels: [slack-news]
            """,
            "r.yaml:4:21: rule \"x\": fields.1: Input should be 'title', 'summary', 'content', 'author', 'tags' or 'link' (got 'body')",
        ),
        (  # a term with no letters
            """\
            rules:
              - name: x
                any: ["!!!"]
                channels: [slack-news]
            """,
            "r.yaml:3:12: rule \"x\": term '!!!' has no letters or digits",
        ),
        (
            """\
            rules:
              - name: x
                any: [{term: US, exactly: true}]
                channels: [slack-news]
            """,
            "r.yaml:3:11: rule \"x\": unknown key 'exactly' in a term mapping; expected term, exact; a list item is a term, @actor, {term: .., exact: true}, {regex: ..} or a group {all|any|none: [..]}",
        ),
        (
            """\
            rules:
              - name: x
                any: [Iran]
                feeds: [bbc, cnn]
                channels: [slack-news]
            """,
            'r.yaml:4:18: rule "x": unknown feed "cnn"; known feeds: bbc, npr',
        ),
        (
            """\
            rules: {name: x}
            """,
            "r.yaml:1:8: rules: must be a list of rules (each item starting with '- name:')",
        ),
        (
            """\
            rule:
              - name: x
            """,
            "r.yaml:1:1: unknown top-level key 'rule' (did you mean \"rules\"?); expected rules: and/or actors:",
        ),
        (
            """\
            rules:
              - name: x
                any: [Iran
            """,
            "r.yaml:4:1: invalid YAML: expected ',' or ']', but got '<stream end>' (parsing "
            "a flow sequence that starts at line 3, column 10: is its ']' missing?)",
        ),
    ],
)
def test_validation_error(tmp_path: Path, rule: str, expected: str) -> None:
    got = one(tmp_path, rule, feeds={"bbc", "npr"})
    assert got.startswith(expected), got


def test_every_problem_at_once_across_files(tmp_path: Path) -> None:
    write(tmp_path, "actors.yaml", ACTORS)
    write(tmp_path, "a.yaml", """\
        rules:
          - name: iran-deal
            any: [Iran]
            actors: [khamenei]
            channels: [slack-news]
          - name: dup
            any: [x1]
            channels: [nowhere]
    """)
    write(tmp_path, "b.yaml", """\
        actors:
          putin: [Putin]
        rules:
          - name: dup
            expr: "a1 b1"
            channels: [slack-news]
    """)
    got = problems(tmp_path)
    assert got == [
        'a.yaml:4:14: rule "iran-deal": unknown actor "khamenei"; known actors: putin, trump, witkoff',
        'a.yaml:8:16: rule "dup": unknown channel "nowhere"; known channels: audit-file, email-oncall, slack-news',
        'b.yaml:2:3: duplicate actor "putin": already defined at actors.yaml:2',
        'b.yaml:4:11: rule "dup": duplicate rule name; already defined at a.yaml:6',
        'b.yaml:5:15: rule "dup": expr: expected AND, OR or NEAR/n between \'a1\' and \'b1\' (for a phrase write "a1 b1")',
    ]


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "rules:\n  - {name: same, any: [x1], channels: [audit-file]}\n")
    write(tmp_path, "b.yaml", "name: same\nany: [y1]\nchannels: [audit-file]\n")
    (p,) = problems(tmp_path)
    assert p == 'b.yaml:1:7: rule "same": duplicate rule name; already defined at a.yaml:2'


def test_actor_errors(tmp_path: Path) -> None:
    write(tmp_path, "actors.yaml", """\
        actors:
          putin: []
          "bad name": [x1]
          trump: ["Trump", 42, "/tr(/"]
    """)
    assert problems(tmp_path) == [
        'actors.yaml:2:10: actor "putin": expected a non-empty list of aliases, e.g. ["Vladimir Putin", "Putin"]',
        'actors.yaml:3:3: actor name "bad name" must be letters, digits, "-" or "_"',
        'actors.yaml:4:20: actor "trump": alias #2 must be a string, got int',
        'actors.yaml:4:28: actor "trump": bad regular expression /tr(/: missing ), unterminated subpattern at position 2',
    ]


def test_actors_block_in_a_rule_file_is_shared(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "actors:\n  lebanon: [Lebanon, Beirut]\n")
    write(tmp_path, "b.yaml", "rules:\n  - {name: r, actors: [lebanon], channels: [audit-file]}\n")
    rs = load_rules(tmp_path, channels=CHANNELS)
    assert [a.label for a in rs.actors["lebanon"].aliases] == ["Lebanon", "Beirut"]


def test_disabled_rules_are_still_validated(tmp_path: Path) -> None:
    write(tmp_path, "r.yaml", """\
        rules:
          - name: x
            enabled: false
            any: [Iran]
            channels: [nowhere]
    """)
    (p,) = problems(tmp_path)
    assert p.startswith('r.yaml:5:16: rule "x": unknown channel "nowhere"')


def test_empty_file_is_fine(tmp_path: Path) -> None:
    write(tmp_path, "empty.yaml", "# nothing yet\n")
    assert load_rules(tmp_path, channels=CHANNELS).rules == ()


def test_a_yaml_value_that_cannot_be_built_is_a_rules_problem(tmp_path: Path) -> None:
    write(tmp_path, "r.yaml", "name: x\nany: [sanctions]\nsince: 2024-02-30\n")
    assert problems(tmp_path) == ["r.yaml: invalid YAML: day is out of range for month"]
