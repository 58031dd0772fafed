"""Bytes computed in a forked copy of the process, while the event loop runs on.

The dedup snapshot (``StoryIndex.snapshot``) is one pass over the whole index: 0.3 s at
100,000 stories, 10 s at 570,000 (a 50,000-feed daemon), during which the loop would
stand still: no poll started or finished, lag and empty 10-second windows. A fork is a
copy-on-write image of the process at one instant: the child takes the snapshot of the
index as it was at the fork and writes it to a temporary file, while the parent goes
on polling and changing its own copy. The parent pays the fork (the page tables: tens of
milliseconds for gigabytes) and reading the file back, in a thread.

The child touches nothing another thread could hold (no logging, no store, no loop): it
resets the signals the loop handles, calls the function, writes, and leaves with
``os._exit``. Memory: pages the child reads are shared; ``marshal`` writes reference
counts, so up to the index's size is copied for the seconds the child lives.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from monitor.errors import MonitorError

#: Whether this platform can fork (not Windows).
CAN_FORK = hasattr(os, "fork")


class ForkFailed(MonitorError):
    """The forked child did not produce its bytes (it crashed, or was killed)."""


def _child(fn: Callable[[], bytes], fd: int) -> None:
    """In the child: never returns."""
    code = 1
    try:
        # a signal meant for the daemon must not reach the parent's loop through the
        # wake-up descriptor the child shares with it
        signal.set_wakeup_fd(-1)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        view = memoryview(fn())
        while view:
            view = view[os.write(fd, view):]
        code = 0
    finally:
        os._exit(code)


async def forked_bytes(fn: Callable[[], bytes], *, what: str = "snapshot") -> bytes:
    """``fn()`` run in a forked child; its bytes, read back in a thread. The loop runs
    meanwhile. Raises ``ForkFailed`` if the child fails; a cancelled caller kills it."""
    loop = asyncio.get_running_loop()
    fd, path = tempfile.mkstemp(prefix=f"monitor-{what}-")
    try:
        with warnings.catch_warnings():  # Python 3.12+: fork with threads running
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            _child(fn, fd)
        os.close(fd)
        fd = -1
        try:
            _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
        except BaseException:  # cancelled (the daemon stops): the child goes too
            # (the thread's waitpid, still running, reaps it)
            os.kill(pid, signal.SIGKILL)
            raise
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise ForkFailed(f"the {what} child exited with {code}")
        return await loop.run_in_executor(None, Path(path).read_bytes)
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(path)
