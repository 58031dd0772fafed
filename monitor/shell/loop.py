"""The event loop the commands run on.

uvloop (libuv) where it is installed: the daemon is mostly sockets and timers, and uvloop
runs them for about half the CPU of the standard loop (a poll answered 304 is mostly
event-loop and HTTP work). ``MONITOR_EVENT_LOOP=asyncio`` chooses the standard loop,
``uvloop`` insists on uvloop, ``auto`` (the default) takes uvloop when it is there.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from monitor.errors import MonitorError

T = TypeVar("T")
CHOICES = ("auto", "uvloop", "asyncio")


def loop_factory(choice: str | None = None) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """(name, factory) for ``choice`` (default: ``$MONITOR_EVENT_LOOP`` or ``auto``)."""
    choice = (choice or os.environ.get("MONITOR_EVENT_LOOP") or "auto").strip().lower()
    if choice not in CHOICES:
        raise MonitorError(
            f"MONITOR_EVENT_LOOP={choice!r}: expected one of {', '.join(CHOICES)}"
        )
    if choice == "asyncio":
        return "asyncio", None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise MonitorError(
                "MONITOR_EVENT_LOOP=uvloop but uvloop is not installed (pip install uvloop)"
            ) from None
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], *, choice: str | None = None) -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    try:
        _, factory = loop_factory(choice)
    except BaseException:
        main.close()  # never started: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
