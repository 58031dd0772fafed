"""Rule files' text → a RuleSet, validated as a whole, every problem at once with
file:line:column (``parse_rules``; ``monitor.shell.rulefiles`` reads the files).

The rules language
==================

A rule file is YAML: a mapping with a ``rules:`` list and/or an ``actors:`` block, or a single
rule mapping. Any number of files live in the rules directory (``*.yaml`` / ``*.yml``); rule and
actor names are unique across all of them. A separate ``actors.yaml`` typically holds the
actors every rule shares::

    # rules/actors.yaml
    actors:
      putin: ["Vladimir Putin", "Putin", "Путин*", "the Kremlin leader"]
      trump: ["Donald Trump", "President Trump", "Trump"]

    # rules/sanctions-deadline.yaml
    rules:
      - name: sanctions-deadline
        description: Sanctions deadlines involving Trump, Putin or Witkoff
        all: [sanctions, deadline]          # every item must occur
        actors: [trump, putin, witkoff]     # at least one actor (any alias) must occur
        severity: high
        channels: [slack-news, email-oncall]
        cooldown: 6h

Conditions (all given conditions must hold):

``all: [..]`` every item; ``any: [..]`` at least one; ``none: [..]`` no item. An item is a term
or a nested group ``{all: [..]}`` / ``{any: [..]}`` / ``{none: [..]}`` or an actor ``@putin``.
``actors: [a, b]`` at least one actor; ``actors_all: [a, b]`` every actor.
``near: [{terms: [sanctions, deadline], within: 10, same_sentence: false}]`` proximity:
all terms within ``within`` words of each other (adjacent words are 1 apart), optionally in one
sentence. ``expr: '(sanctions OR tariffs) AND deadline AND @putin AND NOT sport'`` the
one-line form (see ``monitor.core.rules.expr``: precedence NOT > NEAR > AND > OR, ``NEAR/5``,
``NEAR/5/s``, ``NEAR/s``; two terms side by side are an error, never an implicit AND).

Terms: ``sanction`` matches ``Sanctions``, ``sanctioned``, ``sanctioning`` (case-, accent- and
inflection-insensitive, on word boundaries, ``Trump’s``/``Putin's`` match ``Trump``/``Putin``);
``Donald Trump`` or ``"Donald Trump"`` is a phrase (tokens in sequence); ``=US`` or
``{term: US, exact: true}`` matches the word exactly as written (case kept, no inflection;
``U.S.`` still counts); ``Путин*`` is a prefix (for inflected languages); ``/sanction(s|ed)?/i``
or ``{regex: ..., flags: i}`` is a regular expression over the original text, run on RE2
(linear time; what RE2 cannot run, such as backreferences and lookaround, is a problem
located at the construct: ``monitor.core.rules.regex``).

Where: ``fields`` (title, summary, content, author, tags, link; default title, summary,
content); ``require_title: true`` (one of the rule's terms or actors must be in the title).
Scope: ``feeds``, ``feed_tags``, ``languages`` (``en`` covers ``en-US``; a story with no
language is out of a language-scoped rule). Corroboration: ``min_sources: 3`` distinct sources
carry the story cluster within ``window`` (default 24h). Action: ``severity``
(info/low/medium/high/critical, default medium), ``channels`` (default: the config's default
channels), ``cooldown`` (per rule and story cluster; 0 = once ever), ``digest`` (a crontab line,
e.g. ``"0 8 * * *"``: collect and send on that schedule instead of at once; read in UTC, or in
the config's ``digest.tz``, or ``digest: {cron: "0 8 * * 1-5", tz: Europe/Berlin}``),
``enabled: false``.
Grouping (opt-in, Alertmanager's semantics; see ``monitor.core.route``): ``group_by`` (any of
rule, actors, tags, feed), ``group_wait`` (default 30s: the first message waits this long and
carries what matched meanwhile), ``group_interval`` (default 5m: at most one threaded follow-up
per interval), ``repeat_interval`` (default 4h: a group quiet this long starts a new top-level
message).
"""

from __future__ import annotations

import difflib
import hashlib
import re
import types
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from monitor.core.model import GROUP_LABELS, Grouping, GroupLabel
from monitor.core.rules.expr import (
    Actor,
    And,
    ExprError,
    Near,
    Node,
    Not,
    Or,
    Term,
    is_positional,
    parse_expr,
    unknown_actor,
)
from monitor.core.rules.model import DEFAULT_WINDOW, ActorDef, Rule, RuleSet
from monitor.core.rules.terms import TermError, TermSpec, parse_term, term_mapping
from monitor.core.schedule import tz_problem, validate_cron
from monitor.core.units import parse_duration
from monitor.core.yamlpos import Positions, load_yaml, locate
from monitor.errors import Problem, RulesError, YamlError

_ACTOR_NAME = re.compile(r"^[A-Za-z0-9_][\w-]*$")

YPath = tuple[str | int, ...]


# --- pydantic models of the YAML ----------------------------------------------------------


def _listify(v: Any) -> Any:
    return [v] if isinstance(v, str) else v


def _duration0(v: Any) -> float:
    d = parse_duration(v)
    if d < 0:
        raise ValueError("must not be negative")
    return d


StrList = Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_listify)]
FieldName = Literal["title", "summary", "content", "author", "tags", "link"]


def _default_fields() -> list[FieldName]:
    return ["title", "summary", "content"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


class _NearModel(_Model):
    terms: list[Any] = Field(min_length=2)
    within: int | None = Field(None, ge=1)
    same_sentence: bool = False


class _DigestModel(_Model):
    cron: str
    tz: str | None = None


class _RuleModel(_Model):
    name: str = Field(min_length=1)
    description: str = ""
    enabled: bool = True
    all_: list[Any] | None = Field(None, alias="all")
    any_: list[Any] | None = Field(None, alias="any")
    none: list[Any] | None = None
    actors: StrList = []
    actors_all: StrList = []
    expr: str | None = None
    near: list[_NearModel] = []
    fields: Annotated[list[FieldName], BeforeValidator(_listify)] = Field(
        default_factory=_default_fields, min_length=1
    )
    require_title: bool = False
    feeds: StrList = []
    feed_tags: StrList = []
    languages: StrList = []
    min_sources: int = Field(1, ge=1)
    window: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] | None = None
    severity: Literal["info", "low", "medium", "high", "critical"] = "medium"
    channels: StrList | None = None
    cooldown: Annotated[float, BeforeValidator(_duration0)] = 0.0
    digest: str | _DigestModel | None = None
    group_by: Annotated[list[GroupLabel], BeforeValidator(_listify)] | None = None
    group_wait: Annotated[float, BeforeValidator(_duration0)] | None = None
    group_interval: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] | None = None
    repeat_interval: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] | None = None


_RULE_KEYS = sorted(
    (f.alias or n) for n, f in _RuleModel.model_fields.items()
)

# --- loading ------------------------------------------------------------------------------


@dataclass(slots=True)
class _File:
    path: str
    positions: Positions
    rules: list[tuple[YPath, dict[str, Any]]]
    lines: list[str]


class _Loader:
    def __init__(self, channels: Collection[str] | None, feeds: Collection[str], default_channels: tuple[str, ...], default_digest_tz: str | None = None) -> None:
        self.check_channels = channels is not None
        self.default_digest_tz = default_digest_tz
        self.hasher = hashlib.sha256()
        self.channels = set(channels or ())
        self.feeds = set(feeds)
        self.default_channels = default_channels
        self.problems: list[Problem] = []
        self.actors: dict[str, ActorDef] = {}

    def problem(self, f: _File | tuple[str, Positions], where: YPath, msg: str, *, key: bool = False, col_offset: int = 0) -> None:
        path, positions = (f.path, f.positions) if isinstance(f, _File) else f
        pos = locate(positions, where, key=key)
        line, col = (pos[0], pos[1] + col_offset) if pos else (None, None)
        self.problems.append(Problem(path, line, col, msg))

    # files ----------------------------------------------------------------------------
    def read(self, rf: RuleFile) -> _File | None:
        path, text, sp = rf.path, rf.text, str(rf.path)
        if text is None:
            self.problems.append(Problem(sp, None, None, f"cannot read rule file: {rf.error}"))
            return None
        try:
            data, positions = load_yaml(text, sp)
        except YamlError as e:
            self.problems.append(e.problem)
            return None
        self.hasher.update(f"{path.name}\0{len(text)}\0{text}\0".encode())
        f = _File(sp, positions, [], text.splitlines())
        if data is None:
            return f
        if not isinstance(data, dict):
            self.problem(f, (), "a rule file must be a mapping with rules: and/or actors:, or a single rule with name:")
            return None
        if "rules" not in data and "actors" not in data and "name" in data:
            f.rules.append(((), data))
            return f
        for k in data:
            if k not in ("rules", "actors"):
                hint = _did_you_mean(k, ["rules", "actors"])
                self.problem(f, (k,), f"unknown top-level key {k!r}{hint}; expected rules: and/or actors:", key=True)
        if "actors" in data:
            self.read_actors(f, data["actors"])
        rules = data.get("rules")
        if "rules" in data:
            if not isinstance(rules, list):
                self.problem(f, ("rules",), "rules: must be a list of rules (each item starting with '- name:')")
            else:
                for i, r in enumerate(rules):
                    if not isinstance(r, dict):
                        self.problem(f, ("rules", i), f"rules[{i}]: a rule must be a mapping with name: and conditions")
                    else:
                        f.rules.append((("rules", i), r))
        return f

    def read_actors(self, f: _File, block: Any) -> None:
        if not isinstance(block, dict):
            self.problem(f, ("actors",), 'actors: must be a mapping of name → list of aliases, e.g. putin: ["Vladimir Putin", "Putin"]')
            return
        for name, aliases in block.items():
            where: YPath = ("actors", name)
            if not _ACTOR_NAME.match(name):
                self.problem(f, where, f'actor name "{name}" must be letters, digits, "-" or "_"', key=True)
                continue
            if isinstance(aliases, str):
                aliases = [aliases]
            if not isinstance(aliases, list) or not aliases:
                self.problem(f, where, f'actor "{name}": expected a non-empty list of aliases, e.g. ["Vladimir Putin", "Putin"]')
                continue
            specs: list[TermSpec] = []
            for i, a in enumerate(aliases):
                if not isinstance(a, str):
                    self.problem(f, (*where, i), f'actor "{name}": alias #{i + 1} must be a string, got {type(a).__name__}')
                    continue
                try:
                    specs.append(parse_term(a))
                except TermError as e:
                    self.problem(f, (*where, i), f'actor "{name}": {e.message}', col_offset=e.offset + _quote(f, (*where, i)))
            pos = locate(f.positions, where, key=True)
            if name in self.actors:
                first = self.actors[name]
                self.problem(f, where, f'duplicate actor "{name}": already defined at {first.path}:{first.line}', key=True)
                continue
            self.actors[name] = ActorDef(name=name, aliases=tuple(specs), path=f.path, line=pos[0] if pos else None)

    # rules ----------------------------------------------------------------------------
    def build_rule(self, f: _File, where: YPath, data: dict[str, Any], seen: dict[str, Rule]) -> Rule | None:
        """One rule, or None after recording its problems (in the order a reader meets them:
        keys pydantic rejects, conditions, scope, channels, schedule, the name's uniqueness)."""
        raw_name = data.get("name")
        label = f'rule "{raw_name}"' if isinstance(raw_name, str) and raw_name else f"rule #{where[-1] + 1 if where else 1}"  # type: ignore[operator]
        n0 = len(self.problems)
        m = self._validate(f, where, data, label)
        if m is None:
            return None
        parts = self._conditions(f, where, m, label)
        if not parts and len(self.problems) == n0:
            self.problem(f, where or ("name",), f"{label}: has no conditions; give all, any, actors, near or expr")
        elif parts and _trivially_true(parts[0] if len(parts) == 1 else And(items=tuple(parts))):
            self.problem(f, where or ("name",), f"{label}: would match every story: none:/NOT conditions need a positive condition (all, any, actors, near or expr) beside them")
        self._check_feeds(f, where, m, label)
        channels = self._channels(f, where, m, label)
        self._check_timing(f, where, m, label)
        if m.name in seen:
            first = seen[m.name]
            self.problem(f, (*where, "name"), f'{label}: duplicate rule name; already defined at {first.where}')
        if len(self.problems) > n0:
            return None
        pos = locate(f.positions, (*where, "name"))
        cond = parts[0] if len(parts) == 1 else And(items=tuple(parts), label="rule")
        return Rule(
            name=m.name,
            description=m.description,
            enabled=m.enabled,
            condition=cond,
            expr=m.expr,
            fields=tuple(dict.fromkeys(m.fields)),
            require_title=m.require_title,
            feeds=tuple(m.feeds),
            feed_tags=tuple(m.feed_tags),
            languages=tuple(x.lower() for x in m.languages),
            min_sources=m.min_sources,
            window=(m.window or DEFAULT_WINDOW) if m.min_sources > 1 else None,
            severity=m.severity,
            channels=channels,
            cooldown=m.cooldown,
            digest=m.digest.cron if isinstance(m.digest, _DigestModel) else m.digest,
            digest_tz=((m.digest.tz if isinstance(m.digest, _DigestModel) else None) or self.default_digest_tz) if m.digest is not None else None,
            group=_grouping(m),
            path=f.path,
            line=pos[0] if pos else None,
        )

    def _validate(self, f: _File, where: YPath, data: dict[str, Any], label: str) -> _RuleModel | None:
        """The rule's keys checked by pydantic; on errors, record them and validate the rest
        without the keys in error, so that the checks below still run (None if even that fails)."""
        try:
            return _RuleModel.model_validate(data)
        except ValidationError as err:
            bad: set[str] = set()
            for e in err.errors(include_url=False):
                self._pyd(f, where, label, e)
                if e["loc"]:
                    bad.add(str(e["loc"][0]))
        try:
            return _RuleModel.model_validate({k: v for k, v in data.items() if k not in bad})
        except ValidationError:
            return None

    def _conditions(self, f: _File, where: YPath, m: _RuleModel, label: str) -> list[Node]:
        """The rule's conditions, one node per key given (all, any, none, actors, actors_all,
        near, expr), to be ANDed."""
        parts: list[Node] = []
        for key, items in (("all", m.all_), ("any", m.any_), ("none", m.none)):
            if items is None:
                continue
            if not items:
                self.problem(f, (*where, key), f"{label}: {key}: is empty; give at least one term or remove it")
                continue
            built = tuple(self.items(f, (*where, key), items, label))
            if key == "none":
                parts.append(Not(item=Or(items=built, label="none"), label="none"))
            elif key == "any":
                parts.append(Or(items=built, label="any"))
            else:
                parts.append(And(items=built, label="all"))
        for key in ("actors", "actors_all"):
            refs = self._actor_refs(f, (*where, key), getattr(m, key), label)
            if refs:
                parts.append(Or(items=refs, label="actors") if key == "actors" else And(items=refs, label="actors_all"))
        for i, nm in enumerate(m.near):
            parts.append(self._near(f, (*where, "near", i), nm, label))
        if m.expr is not None:
            try:
                parts.append(parse_expr(m.expr, actors=self.actors))
            except ExprError as e:
                self.problem(f, (*where, "expr"), f"{label}: expr: {e.message}", col_offset=e.col - 1 + _quote(f, (*where, "expr")))
        return parts

    def _actor_refs(self, f: _File, where: YPath, names: list[str], label: str) -> tuple[Node, ...]:
        refs: list[Node] = []
        for i, a in enumerate(names):
            a = a.lstrip("@")
            if a not in self.actors:
                self.problem(f, (*where, i), f"{label}: {unknown_actor(a, self.actors)}")
            refs.append(Actor(name=a))
        return tuple(refs)

    def _near(self, f: _File, where: YPath, nm: _NearModel, label: str) -> Near:
        nwhere = (*where, "terms")
        near_items = self.items(f, nwhere, nm.terms, label)
        for j, node in enumerate(near_items):
            if not is_positional(node):
                self.problem(f, (*nwhere, j), f"{label}: near terms must be terms, phrases, @actors or {{any: [..]}} groups")
        if nm.within is None and not nm.same_sentence:
            self.problem(f, where, f"{label}: near needs within: N (words) and/or same_sentence: true")
        return Near(items=tuple(near_items), within=nm.within, same_sentence=nm.same_sentence)

    def _check_feeds(self, f: _File, where: YPath, m: _RuleModel, label: str) -> None:
        for i, feed in enumerate(m.feeds):
            if self.feeds and feed not in self.feeds:
                self.problem(f, (*where, "feeds", i), f'{label}: unknown feed "{feed}"{_did_you_mean(feed, self.feeds)}; known feeds: {", ".join(sorted(self.feeds))}')

    def _channels(self, f: _File, where: YPath, m: _RuleModel, label: str) -> tuple[str, ...]:
        """The rule's channels (the config's default channels when it names none), checked."""
        if m.channels is None:
            channels = tuple(self.default_channels)
            if not channels and self.check_channels:
                self.problem(f, (*where, "name"), f"{label}: no channels: name them with channels: [..] or set default channels in the config")
        else:
            channels = tuple(m.channels)
            if not channels:
                self.problem(f, (*where, "channels"), f"{label}: channels: is empty")
            for i, ch in enumerate(channels):
                if self.check_channels and ch not in self.channels:
                    known = ", ".join(sorted(self.channels)) or "(none configured)"
                    self.problem(f, (*where, "channels", i), f'{label}: unknown channel "{ch}"{_did_you_mean(ch, self.channels)}; known channels: {known}')
        for i, ch in enumerate(channels):
            if ch in channels[:i]:
                self.problem(f, (*where, "channels", i), f'{label}: channel "{ch}" is listed twice')
        return channels

    def _check_timing(self, f: _File, where: YPath, m: _RuleModel, label: str) -> None:
        """The digest's cron line, and a window only where there is corroboration to count."""
        if m.digest is not None:
            cron: str = m.digest if isinstance(m.digest, str) else m.digest.cron
            at: YPath = (*where, "digest")
            if isinstance(m.digest, _DigestModel):
                at = (*where, "digest", "cron")
                why_tz = tz_problem(m.digest.tz)
                if why_tz is not None:
                    self.problem(f, (*where, "digest", "tz"), f"{label}: digest: tz: {why_tz}")
            why = validate_cron(cron)
            if why is not None:
                self.problem(f, at, f'{label}: digest: bad cron line {cron!r}: {why}; expected 5 fields "minute hour day month weekday" as crontab reads them (weekday 0 or 7 = Sunday), e.g. "0 8 * * 1-5" for 08:00 UTC Monday to Friday (in local time: digest: {{cron: "0 8 * * 1-5", tz: Europe/Berlin}})')
        if m.window is not None and m.min_sources <= 1:
            self.problem(f, (*where, "window"), f"{label}: window: only makes sense with min_sources: 2 or more")
        self._check_grouping(f, where, m, label)

    def _check_grouping(self, f: _File, where: YPath, m: _RuleModel, label: str) -> None:
        """``group_by`` and its timers: the timers need ``group_by``, a digest rule does
        not group, a label is given once, and a follow-up cannot come before the first."""
        timers = [k for k in ("group_wait", "group_interval", "repeat_interval")
                  if getattr(m, k) is not None]
        if m.group_by is None:
            for k in timers:
                self.problem(f, (*where, k), f"{label}: {k}: only makes sense with group_by (e.g. group_by: [actors])", key=True)
            return
        if m.digest is not None:
            self.problem(f, (*where, "group_by"), f"{label}: group_by: a digest rule already sends its alerts together; give either digest or group_by", key=True)
        if not m.group_by:
            self.problem(f, (*where, "group_by"), f"{label}: group_by: give at least one of {', '.join(GROUP_LABELS)}")
        for i, g in enumerate(m.group_by):
            if g in m.group_by[:i]:
                self.problem(f, (*where, "group_by", i), f'{label}: group_by: "{g}" is listed twice')
        grouping = _grouping(m)
        if grouping is not None and grouping.repeat < grouping.interval:
            at = "repeat_interval" if m.repeat_interval is not None else "group_interval"
            self.problem(f, (*where, at), f"{label}: {at}: repeat_interval ({grouping.repeat:g}s) must not be shorter than group_interval ({grouping.interval:g}s)")

    def items(self, f: _File, where: YPath, items: list[Any], label: str) -> list[Node]:
        out: list[Node] = []
        for i, item in enumerate(items):
            w = (*where, i)
            if isinstance(item, str):
                s = item.strip()
                if s.startswith("@"):
                    name = s[1:]
                    if name not in self.actors:
                        self.problem(f, w, f"{label}: {unknown_actor(name, self.actors)}")
                    out.append(Actor(name=name))
                    continue
                try:
                    out.append(Term(spec=parse_term(item)))
                except TermError as e:
                    self.problem(f, w, f"{label}: {e.message}", col_offset=e.offset + _quote(f, w))
            elif isinstance(item, dict):
                groups = [k for k in item if k in ("all", "any", "none")]
                if groups:
                    if len(item) != 1:
                        self.problem(f, w, f"{label}: a nested group is a mapping with exactly one key: all, any or none")
                        continue
                    k = groups[0]
                    sub = item[k]
                    if not isinstance(sub, list) or not sub:
                        self.problem(f, (*w, k), f"{label}: {k}: expected a non-empty list of terms")
                        continue
                    built = tuple(self.items(f, (*w, k), sub, label))
                    if k == "all":
                        out.append(And(items=built, label="all"))
                    elif k == "any":
                        out.append(Or(items=built, label="any"))
                    else:
                        out.append(Not(item=Or(items=built, label="none"), label="none"))
                    continue
                try:
                    out.append(Term(spec=term_mapping(item)))
                except TermError as e:
                    if e.key is not None and (*w, e.key) in f.positions:
                        kw = (*w, e.key)  # a bad regex or flags: at its value, column of the problem
                        self.problem(f, kw, f"{label}: {e.message}", col_offset=e.offset + _quote(f, kw))
                    else:
                        self.problem(f, w, f"{label}: {e.message}; a list item is a term, @actor, {{term: .., exact: true}}, {{regex: ..}} or a group {{all|any|none: [..]}}")
            else:
                self.problem(f, w, f"{label}: expected a term (a string), got {_yaml_type(item)} {item!r}; quote it if it is meant as text")
        return out

    def _pyd(self, f: _File, where: YPath, label: str, e: Any) -> None:
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        full = (*where, *loc)
        dotted = ".".join(str(x) for x in loc) or "(rule)"
        t = e["type"]
        if t == "extra_forbid" or t == "extra_forbidden":
            key = str(loc[-1])
            known = _RULE_KEYS if len(loc) == 1 else sorted(_NearModel.model_fields)
            self.problem(f, full, f"{label}: unknown key {key!r}{_did_you_mean(key, known)}; known keys: {', '.join(known)}", key=True)
            return
        if t == "missing":
            self.problem(f, where, f"{label}: missing required key {dotted!r}")
            return
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if t == "string_type" and isinstance(e.get("input"), bool):
            msg += " (YAML reads on/off/yes/no/true/false as booleans: quote it)"
        elif t.endswith("_type") or t in ("literal_error", "bool_parsing", "int_parsing", "int_from_float", "string_too_short", "too_short", "greater_than_equal", "greater_than"):
            msg += f" (got {e['input']!r})"
        self.problem(f, full, f"{label}: {dotted}: {msg}")


def _grouping(m: _RuleModel) -> Grouping | None:
    if not m.group_by:
        return None
    d = Grouping(by=())
    return Grouping(
        by=tuple(m.group_by),
        wait=d.wait if m.group_wait is None else m.group_wait,
        interval=d.interval if m.group_interval is None else m.group_interval,
        repeat=d.repeat if m.repeat_interval is None else m.repeat_interval,
    )


def _quote(f: _File, where: YPath) -> int:
    """1 when the scalar at ``where`` is written quoted (columns then shift by one)."""
    pos = f.positions.get(where)
    if pos is None or pos[0] > len(f.lines):
        return 0
    line = f.lines[pos[0] - 1]
    return 1 if line[pos[1] - 1 : pos[1]] in ("'", '"') else 0


def _yaml_type(v: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list"}.get(type(v), type(v).__name__)


def _did_you_mean(word: str, options: Collection[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _trivially_true(node: Node) -> bool:
    """Whether the condition holds for a story in which no term occurs."""
    if isinstance(node, Term | Actor | Near):
        return False
    if isinstance(node, Not):
        return not _trivially_true(node.item)
    if isinstance(node, And):
        return all(_trivially_true(i) for i in node.items)
    return any(_trivially_true(i) for i in node.items)


@dataclass(frozen=True, kw_only=True, slots=True)
class RuleFile:
    """One rule file as read from disk (``monitor.shell.rulefiles``): its text, or why it
    could not be read."""

    path: Path
    text: str | None
    error: str | None = None  # when text is None


def parse_rules(
    path: Path,
    files: Sequence[RuleFile],
    *,
    channels: Collection[str] | None,
    feeds: Collection[str] = (),
    default_channels: tuple[str, ...] = (),
    default_digest_tz: str | None = None,
) -> RuleSet:
    """Validate and return every rule and actor of ``files`` (the rule files under
    ``path``, in order). ``default_digest_tz``: the time zone of digests whose rule names
    none (the config's ``digest.tz``; validated there).

    Raises ``RulesError`` listing every problem (``file:line:column: message``); the set is
    valid as a whole or rejected as a whole. ``channels=None`` skips the check of channel
    names (offline tools without a config).
    """
    loader = _Loader(channels, feeds, tuple(default_channels), default_digest_tz)
    loaded = [f for f in (loader.read(rf) for rf in files) if f is not None]
    rules: list[Rule] = []
    seen: dict[str, Rule] = {}
    for f in loaded:
        for where, data in f.rules:
            r = loader.build_rule(f, where, data, seen)
            if r is not None:
                rules.append(r)
                seen[r.name] = r
            elif isinstance(data.get("name"), str) and data["name"] not in seen:
                # remember the name so a later duplicate is still reported
                pos = locate(f.positions, (*where, "name"))
                seen[data["name"]] = Rule(name=data["name"], condition=Or(items=()), path=f.path, line=pos[0] if pos else None)
    if loader.problems:
        loader.problems.sort(key=lambda p: (p.path, p.line or 0, p.column or 0))
        raise RulesError(loader.problems, f"{len(loader.problems)} problem(s) in rules at {path}")
    return RuleSet(
        rules=tuple(rules),
        actors=types.MappingProxyType(dict(loader.actors)),
        files=tuple(rf.path for rf in files),
        digest=types.MappingProxyType({r.name: r.digest for r in rules if r.digest}),
        fingerprint=loader.hasher.hexdigest(),
    )
