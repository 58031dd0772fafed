"""Explanations as data: whether each rule matches a story, and why.

``Matcher.explain`` evaluates every rule (disabled ones too) and returns one
``RuleExplanation`` each: the rule's condition tree with every leaf found or not (and where),
the scope and corroboration checks, and a one-line reason. This module holds that data and
its JSON shape (``to_dict``: what ``monitor rules test --json`` prints), the walk that mirrors
a condition tree (``explain_condition``: the matcher supplies the leaves, which terms occur
and where, and the proximity verdicts) and the reason line (``verdict``). Rendering for a
terminal is ``monitor.cli.explain``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from monitor.core.model import Hit
from monitor.core.rules.expr import Actor, Near, Node, Not, Or, Term


@dataclass(frozen=True, kw_only=True, slots=True)
class Condition:
    """One node of a rule's condition, evaluated against a story."""

    kind: str  # term | actor | all | any | none | and | or | not | near | check
    label: str
    ok: bool
    found: bool = False  # for term/actor leaves: it occurs (under "none", found means failure)
    hits: tuple[Hit, ...] = ()
    children: tuple[Condition, ...] = ()
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "label": self.label, "ok": self.ok}
        if self.kind in ("term", "actor"):
            d["found"] = self.found
        if self.note:
            d["note"] = self.note
        if self.hits:
            d["hits"] = [_hit_dict(h) for h in self.hits]
        if self.children:
            d["children"] = [c.to_dict() for c in self.children]
        return d


def _hit_dict(h: Hit) -> dict[str, Any]:
    return {"term": h.term, "field": h.field, "start": h.start, "end": h.end, "text": h.text}


@dataclass(frozen=True, kw_only=True, slots=True)
class RuleExplanation:
    """Whether one rule matches a story, and why."""

    rule: str
    matched: bool
    enabled: bool
    reason: str  # one line: why it matched or the first reason it did not
    severity: str
    channels: tuple[str, ...]
    where: str
    condition: Condition | None  # None when scope excluded the story before any term check
    checks: tuple[Condition, ...] = ()  # scope, corroboration, require_title
    expr: str = ""
    texts: dict[str, str] = field(default_factory=dict)  # field → text, for highlighting

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "matched": self.matched,
            "enabled": self.enabled,
            "reason": self.reason,
            "severity": self.severity,
            "channels": list(self.channels),
            "where": self.where,
            "condition_expr": self.expr,
            "condition": self.condition.to_dict() if self.condition else None,
            "checks": [c.to_dict() for c in self.checks],
        }


# --- evaluation --------------------------------------------------------------------------


def explain_condition(
    node: Node,
    leaf: Callable[[Term | Actor], Condition],
    near: Callable[[Near], tuple[bool, str]],
) -> Condition:
    """A rule's condition tree, evaluated: ``leaf`` says whether a term or an actor occurs
    (and where), ``near`` whether a proximity condition holds (with a note)."""
    if isinstance(node, Term | Actor):
        return leaf(node)
    if isinstance(node, Not):
        if isinstance(node.item, Or) and node.item.label == "none":
            kids = tuple(explain_condition(i, leaf, near) for i in node.item.items)
            ok = not any(k.ok for k in kids)
            return Condition(kind="none", label="none of", ok=ok, children=kids)
        kid = explain_condition(node.item, leaf, near)
        return Condition(kind="not", label="NOT", ok=not kid.ok, children=(kid,))
    if isinstance(node, Near):
        kids = tuple(explain_condition(i, leaf, near) for i in node.items)
        ok, note = near(node)
        op = ("NEAR" + (f"/{node.within}" if node.within is not None else "") + ("/s" if node.same_sentence else ""))
        return Condition(kind="near", label=op, ok=ok, children=kids, note=note)
    kids = tuple(explain_condition(i, leaf, near) for i in node.items)
    if isinstance(node, Or):
        label = {"any": "any of", "actors": "any actor of", "OR": "OR"}.get(node.label, node.label)
        return Condition(kind="any" if node.label != "OR" else "or", label=label, ok=any(k.ok for k in kids), children=kids)
    label = {"all": "all of", "actors_all": "every actor of", "rule": "all conditions", "AND": "AND"}.get(node.label, node.label)
    return Condition(kind="all" if node.label != "AND" else "and", label=label, ok=all(k.ok for k in kids), children=kids)


def verdict(enabled: bool, cond: Condition, checks: Sequence[Condition]) -> tuple[bool, str]:
    """Whether a rule matched, and the one-line reason: what matched, or the first reason it
    did not (its condition before its scope and corroboration checks)."""
    failed = [c for c in checks if not c.ok]
    matched = enabled and cond.ok and not failed
    if not enabled:
        reason = "disabled (enabled: false)" + ("; its condition holds" if cond.ok and not failed else "")
    elif matched:
        reason = "matched: " + _summary(cond)
    elif not cond.ok:
        reason = "no match: " + _why_not(cond)
    else:
        reason = "no match: " + "; ".join(f"{c.label}: {c.note}" for c in failed)
    return matched, reason


def _summary(c: Condition) -> str:
    leaves: list[str] = []

    def walk(n: Condition, neg: bool) -> None:
        if n.kind in ("term", "actor"):
            if n.found and not neg and n.hits:
                h = n.hits[0]
                leaves.append(f"{n.label} ({h.field}: {h.text!r})")
            return
        for ch in n.children:
            walk(ch, neg or n.kind in ("none", "not"))

    walk(c, False)
    return ", ".join(dict.fromkeys(leaves)) or "condition holds"


def _why_not(c: Condition) -> str:
    """The first failing leaf-level reason."""
    if c.ok:
        return ""
    if c.kind in ("term", "actor"):
        return f"{c.label}: {c.note}" if c.note else c.label
    if c.kind == "none":
        bad = [k for k in c.children if k.found]
        return "excluded by " + ", ".join(f"{k.label} ({k.hits[0].field}: {k.hits[0].text!r})" if k.hits else k.label for k in bad)
    if c.kind == "not":
        return f"excluded by NOT {c.children[0].label}"
    if c.kind == "near":
        return f"{c.label}: {c.note}"
    if c.kind in ("any", "or"):
        return f"{c.label}: none found (" + ", ".join(k.label for k in c.children) + ")"
    for k in c.children:
        if not k.ok:
            return _why_not(k)
    return ""
