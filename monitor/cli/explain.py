"""Explanations for a terminal: ``monitor rules test`` without ``--json``.

The explanation itself is data (``monitor.core.rules.explain``, from ``Matcher.explain``);
this renders it: one block per rule, every condition with a mark, and each hit shown in its
context with the matched text highlighted (``«…»`` without colour, ANSI bold with colour).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from monitor.core.rules.explain import Condition, RuleExplanation

_GREEN, _RED, _BOLD, _DIM, _RESET, _YELLOW = "\x1b[32m", "\x1b[31m", "\x1b[1m", "\x1b[2m", "\x1b[0m", "\x1b[33m"


def _snippet(text: str, start: int, end: int, color: bool, width: int = 40) -> str:
    a = max(0, start - width)
    b = min(len(text), end + width)
    before = re.sub(r"\s+", " ", text[a:start])
    after = re.sub(r"\s+", " ", text[end:b])
    if a == 0:
        before = before.lstrip()
    if b == len(text):
        after = after.rstrip()
    mid = text[start:end]
    mid = f"{_BOLD}{_YELLOW}{mid}{_RESET}" if color else f"«{mid}»"
    return ("…" if a > 0 else "") + before + mid + after + ("…" if b < len(text) else "")


def format_explanation(expls: Iterable[RuleExplanation], color: bool = False) -> str:
    """Human-readable explanation of every rule, matched text highlighted in context
    (``«…»`` without color, ANSI bold with color)."""
    lines: list[str] = []

    def c(code: str, s: str) -> str:
        return f"{code}{s}{_RESET}" if color else s

    for ex in expls:
        mark = c(_GREEN, "✔ MATCH   ") if ex.matched else (c(_DIM, "– DISABLED") if not ex.enabled else c(_RED, "✘ no match"))
        lines.append(f"{mark} {c(_BOLD, ex.rule)}  [{ex.severity} → {', '.join(ex.channels) or '-'}]  {c(_DIM, ex.where)}")
        lines.append(f"    {ex.reason}")
        lines.append(f"    {c(_DIM, 'condition: ' + ex.expr)}")
        if ex.condition is not None:
            _render_cond(ex.condition, ex.texts, lines, 2, color, neg=False)
        for ch in ex.checks:
            sym = c(_GREEN, "✔") if ch.ok else c(_RED, "✘")
            lines.append(f"    {sym} {ch.label}: {ch.note}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _render_cond(n: Condition, texts: dict[str, str], lines: list[str], depth: int, color: bool, *, neg: bool) -> None:
    pad = "  " * depth
    yes = f"{_GREEN}✔{_RESET}" if color else "✔"
    no = f"{_RED}✘{_RESET}" if color else "✘"
    ok_s = yes if n.ok else no
    if n.kind in ("term", "actor"):
        if n.found:
            state = "found" + (" (forbidden)" if neg else "")
            sym = no if neg else ok_s
        else:
            state = "absent"
            sym = yes if neg else ok_s
        lines.append(f"{pad}{sym} {n.label}: {state}" + (f" — {n.note}" if n.note and not n.found and not neg else ""))
        for h in n.hits[:5]:
            text = texts.get(h.field, "")
            lines.append(f"{pad}    {h.field}[{h.start}:{h.end}] {_snippet(text, h.start, h.end, color)}")
        if len(n.hits) > 5:
            lines.append(f"{pad}    … {len(n.hits) - 5} more")
        return
    note = f" — {n.note}" if n.note else ""
    lines.append(f"{pad}{ok_s} {n.label}{note}")
    for ch in n.children:
        _render_cond(ch, texts, lines, depth + 1, color, neg=neg or n.kind in ("none", "not"))
