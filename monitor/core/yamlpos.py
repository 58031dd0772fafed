"""YAML loading that remembers where every value came from.

``load_yaml(text, path)`` returns ``(data, positions)``: plain Python data and a map from
the path of each value (a tuple of keys and list indices) to its 1-based (line, column).
``locate()`` turns a pydantic error location into the nearest known position, so that
validation errors can name ``file:line:column``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import yaml
from pydantic import ValidationError

from monitor.errors import Problem, YamlError

Path = tuple[str | int, ...]
Positions = dict[Path, tuple[int, int]]


class _Loader(yaml.SafeLoader):
    pass


_UNCLOSED = (
    ("flow sequence", ": is its ']' missing?"),
    ("flow mapping", ": is its '}' missing?"),
    ("quoted scalar", ": is its closing quote missing?"),
)


def load_yaml(text: str, path: str) -> tuple[Any, Positions]:
    """Parse YAML text; raise ``YamlError`` (its ``problem`` located) on bad YAML."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        positions: Positions = {}
        if node is None:
            return None, positions
        data = _convert(loader, node, (), positions)
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


def _convert(loader: _Loader, node: yaml.Node, where: Path, positions: Positions) -> Any:
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
            out[skey] = _convert(loader, value_node, (*where, skey), positions)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _convert(loader, child, (*where, i), positions) for i, child in enumerate(node.value)
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
