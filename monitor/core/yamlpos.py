"""YAML loading that remembers where every value came from.

``load_yaml(text, path)`` returns ``(data, positions)``: plain Python data and a map from
the path of each value (a tuple of keys and list indices) to its 1-based (line, column).
``locate()`` turns a pydantic error location into the nearest known position, so that
validation errors can name ``file:line:column``.

Limits, for rules and config alike (a hand-edited file never comes near them; a hostile
one cannot stall the daemon or fill its memory): ``MAX_BYTES`` of text, ``MAX_DEPTH``
levels of nesting, ``MAX_ALIASES`` alias uses, and ``MAX_VALUES`` values once aliases
are expanded (a "billion laughs" of nested ``*a`` references stays a few hundred bytes
of text). Each is a located ``YamlError`` that says which limit and what to do.

Speed: when PyYAML has its LibYAML binding, the text is scanned and parsed in C (the
events carry the same line and column marks) and only composed and constructed in
Python, here, so the limits above still hold (a 1,000-feed config loads in about a
quarter of the time). Any YAML error found that way is reported by parsing again in pure
Python, so that the messages and positions a user sees do not depend on how PyYAML was
built.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import yaml
from pydantic import ValidationError

from monitor.errors import Problem, YamlError

Path = tuple[str | int, ...]
Positions = dict[Path, tuple[int, int]]

MAX_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 1_000
MAX_VALUES = 200_000


class _Limit(Exception):
    """A limit of the module docstring, hit at ``mark`` (a YAML mark or None)."""

    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.mark = mark


class _Budget:
    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values = 0


class _Counting:
    """Counts alias uses and nesting while a loader composes (a mixin of the loaders)."""

    _aliases = 0
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Limit(f"more than {MAX_ALIASES:,} YAML aliases ('*name'); write the "
                             "values out", self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Limit(f"nested more than {MAX_DEPTH} levels deep; flatten it",
                             self.peek_event().start_mark)
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._depth -= 1

    # provided by the loaders this is mixed into
    check_event: Any
    peek_event: Any


class _Loader(_Counting, yaml.SafeLoader):
    """PyYAML's safe loader, pure Python: the reference for messages and positions."""


try:
    from yaml._yaml import CParser
except ImportError:  # PyYAML without LibYAML: pure Python only
    _FastLoader: type[Any] | None = None
else:

    class _CLoader(_Counting, yaml.composer.Composer, CParser,
                   yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        """Events from LibYAML's parser (C), composed by PyYAML's composer (Python, with
        the counting above), constructed by the safe constructor."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    _FastLoader = _CLoader


_UNCLOSED = (
    ("flow sequence", ": is its ']' missing?"),
    ("flow mapping", ": is its '}' missing?"),
    ("quoted scalar", ": is its closing quote missing?"),
)


def load_yaml(text: str, path: str) -> tuple[Any, Positions]:
    """Parse YAML text; raise ``YamlError`` (its ``problem`` located) on bad YAML or a
    file past the limits of the module docstring."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise YamlError(Problem(path, None, None, f"the file is {size:,} bytes, more than "
                                f"the {MAX_BYTES:,} a monitor YAML file may have; split it"))
    if _FastLoader is not None:
        try:
            return _load(_FastLoader(text), path)
        except YamlError:
            pass  # said again below, by the pure loader: its messages are the reference
    return _load(_Loader(text), path)


def _load(loader: Any, path: str) -> tuple[Any, Positions]:
    try:
        node = loader.get_single_node()
        positions: Positions = {}
        if node is None:
            return None, positions
        data = _convert(loader, node, (), positions, _Budget())
    except _Limit as e:
        line = e.mark.line + 1 if e.mark is not None else None
        col = e.mark.column + 1 if e.mark is not None else None
        raise YamlError(Problem(path, line, col, str(e))) from None
    except RecursionError:
        raise YamlError(Problem(path, None, None, f"nested more than {MAX_DEPTH} levels "
                                "deep; flatten it")) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        msg = f"invalid YAML: {e.problem or e.context}"
        ctx = e.context_mark
        if e.problem and e.context and ctx is not None and mark is not None and (
                ctx.line != mark.line):
            # the error shows where parsing gave up; say where the open construct began
            opened = next((hint for what, hint in _UNCLOSED if what in e.context), "")
            msg += (f" ({e.context.removeprefix('while ')} that starts at line {ctx.line + 1}"
                    f", column {ctx.column + 1}{opened})")
        raise YamlError(Problem(path, line, col, msg)) from e
    except yaml.YAMLError as e:
        raise YamlError(Problem(path, None, None, f"invalid YAML: {e}")) from e
    except (ValueError, OverflowError) as e:  # a scalar PyYAML cannot build: 2024-02-30
        raise YamlError(Problem(path, None, None, f"invalid YAML: {e}")) from e
    finally:
        loader.dispose()
    return data, positions


def _check(node: yaml.Node, where: Path, budget: _Budget | None) -> None:
    if len(where) > MAX_DEPTH:
        raise _Limit(f"nested more than {MAX_DEPTH} levels deep; flatten it", node.start_mark)
    if budget is not None:
        budget.values += 1
        if budget.values > MAX_VALUES:
            raise _Limit(f"expands to more than {MAX_VALUES:,} values (YAML aliases that "
                         "refer to aliases?); write the values out or use fewer '*'",
                         node.start_mark)


def _convert(loader: Any, node: yaml.Node, where: Path, positions: Positions,
             budget: _Budget | None = None) -> Any:
    _check(node, where, budget)
    positions[where] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, "mapping keys must be plain scalars", key_node.start_mark
                )
            skey = str(key)
            if skey in out:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {skey!r}", key_node.start_mark
                )
            # the key's own position is useful for "unknown key" errors
            positions[(*where, skey, "__key__")] = (
                key_node.start_mark.line + 1,
                key_node.start_mark.column + 1,
            )
            out[skey] = _convert(loader, value_node, (*where, skey), positions, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _convert(loader, child, (*where, i), positions, budget)
            for i, child in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)


def locate(positions: Positions, loc: Sequence[str | int], *, key: bool = False) -> tuple[int, int] | None:
    """The position of the longest known prefix of ``loc`` (for a key if ``key``)."""
    loc = tuple(loc)
    if key and (*loc, "__key__") in positions:
        return positions[(*loc, "__key__")]
    for n in range(len(loc), -1, -1):
        if loc[:n] in positions:
            return positions[loc[:n]]
    return None


def _drop_tags(loc: tuple[str | int, ...], positions: Positions) -> tuple[str | int, ...]:
    """Remove the discriminator tags pydantic inserts into union locations
    (``channels.s.slack.token`` → ``channels.s.token``)."""
    out = list(loc)
    i = 0
    while i < len(out):
        here = tuple(out[: i + 1])
        if isinstance(out[i], str) and here not in positions and tuple(out[:i]) in positions:
            without = (*out[:i], *out[i + 1 : i + 2])
            if i + 1 >= len(out) or without in positions:
                del out[i]
                continue
        i += 1
    return tuple(out)


def problems_from_validation(
    err: ValidationError,
    path: str,
    positions: Positions,
    *,
    prefix: Path = (),
    describe: Iterable[tuple[Path, str]] = (),
) -> list[Problem]:
    """Turn a pydantic ValidationError into located, readable problems."""
    out: list[Problem] = []
    for e in err.errors(include_url=False):
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        unknown = e["type"] == "extra_forbidden"
        full = (*prefix, *loc)
        if not unknown and e["type"] != "missing":
            full = _drop_tags(full, positions)
        elif len(full) > 1:
            full = (*_drop_tags(full[:-1], positions), full[-1])
        unknown = e["type"] == "extra_forbidden"
        pos = locate(positions, full, key=unknown)
        dotted = ".".join(str(x) for x in full) or "(top level)"
        if unknown:
            msg = f"unknown key {dotted!r}; check its spelling or remove it"
        elif e["type"] == "missing":
            msg = f"missing required key {dotted!r}"
        else:
            text = e["msg"]
            if text.startswith("Value error, "):
                text = text[len("Value error, ") :]
            msg = f"{dotted}: {text}"
            if e["type"] not in ("value_error", "assertion_error") and "input" in e:
                msg += f" (got {e['input']!r})"
        out.append(Problem(path, pos[0] if pos else None, pos[1] if pos else None, msg))
    return out
