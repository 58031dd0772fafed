"""Values people write by hand in YAML: durations (``90s``, ``5m``, ``7d``) and sizes
(``512KiB``, ``10MiB``). Both raise ``ValueError``, which pydantic turns into a located
validation problem."""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_duration(value: Any) -> float:
    """``90``, ``"90s"``, ``"5m"``, ``"2h"``, ``"7d"`` → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m, 2h or 7d")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[(m.group(2) or "s").lower()]
    raise ValueError(f"expected a duration such as 30s, 5m, 2h or 7d, got {value!r}")


def parse_size(value: Any) -> int:
    """``1048576``, ``"10MiB"``, ``"512kb"`` → bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512KiB or 10MiB")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])
    raise ValueError(f"expected a size such as 512KiB or 10MiB, got {value!r}")


def format_duration(seconds: float) -> str:
    """Seconds as a person writes them, short: ``45`` → ``45s``, ``90`` → ``1m30s``,
    ``420`` → ``7m``, ``5400`` → ``1h30m``, ``86400`` → ``1d``, ``90000`` → ``1d1h``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 600:
        m, rest = divmod(s, 60)
        return f"{m}m{rest}s" if rest else f"{m}m"
    minutes = round(s / 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, m = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{m}m" if m else f"{hours}h"
    days, h = divmod(round(s / 3600), 24)
    return f"{days}d{h}h" if h else f"{days}d"
