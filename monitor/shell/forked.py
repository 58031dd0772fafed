"""Bytes computed in a forked copy of the process, while the event loop runs on.

The dedup snapshot (``StoryIndex.snapshot``) is one pass over the whole index: 0.3 s at
100,000 stories, 10 s at 570,000 (a 50,000-feed daemon), during which the loop would
stand still: no poll started or finished, lag and empty 10-second windows. A fork is a
copy-on-write image of the process at one instant: the child takes the snapshot of the
index as it was at the fork and writes it to a temporary file, while the parent goes
on polling and changing its own copy. The parent pays the fork (the page tables: tens of
milliseconds for gigabytes) and reading the file back, in a thread.

The child touches nothing another thread could hold (no logging, no store, no loop, no
garbage collection that could run finalizers): it resets the signals the daemon
handles, calls the function, writes, and leaves with ``os._exit``. The signals are
blocked across the fork, so one meant for the daemon cannot reach the child's copy of
the loop's wake-up descriptor first. The file is unlinked before the fork: whatever
ends the parent, nothing is left in the temporary directory. Memory: pages the child
reads are shared; ``marshal`` writes reference counts, so up to the index's size is
copied for the seconds the child lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import tempfile
import warnings
from collections.abc import Callable

from monitor.errors import MonitorError

#: Whether this platform can fork (not Windows).
CAN_FORK = hasattr(os, "fork")
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP} if CAN_FORK else set()


class ForkFailed(MonitorError):
    """The forked child did not produce its bytes (it crashed, or was killed)."""


def _child(fn: Callable[[], bytes], fd: int) -> None:
    """In the child: never returns."""
    code = 1
    try:
        gc.disable()  # no finalizer of the parent's objects runs here
        # a signal meant for the daemon must not reach the parent's loop through the
        # wake-up descriptor the child shares with it (blocked until now)
        signal.set_wakeup_fd(-1)
        for s in _SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        view = memoryview(fn())
        while view:
            view = view[os.write(fd, view):]
        code = 0
    finally:
        os._exit(code)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    parts, at = [], 0
    while at < size:
        chunk = os.pread(fd, min(size - at, 1 << 30), at)
        if not chunk:
            break
        parts.append(chunk)
        at += len(chunk)
    return b"".join(parts)


def _pidfd(pid: int) -> int | None:
    """A descriptor of the child (Linux): a signal through it never reaches another
    process that took its pid after it was reaped."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


async def forked_bytes(fn: Callable[[], bytes], *, what: str = "snapshot") -> bytes:
    """``fn()`` run in a forked child; its bytes, read back in a thread. The loop runs
    meanwhile. Raises ``ForkFailed`` if the child fails; a cancelled caller kills it."""
    loop = asyncio.get_running_loop()
    fd, path = tempfile.mkstemp(prefix=f"monitor-{what}-")
    os.unlink(path)  # only the descriptor is left: nothing to clean up, whatever happens
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            with warnings.catch_warnings():  # Python 3.12+: fork with threads running
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:
                _child(fn, fd)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        pidfd = _pidfd(pid)
        try:
            _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
        except BaseException:  # cancelled (the daemon stops): the child goes too
            with contextlib.suppress(OSError):
                if pidfd is not None:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            # reaped here, at once after SIGKILL, unless the executor's waitpid (which may
            # never have started) got there first
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)  # noqa: ASYNC222
            raise
        finally:
            if pidfd is not None:
                os.close(pidfd)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise ForkFailed(f"the {what} child exited with {code}")
        return await loop.run_in_executor(None, _read_all, fd)
    finally:
        os.close(fd)
