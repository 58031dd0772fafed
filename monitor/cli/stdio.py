"""Standard output that never drops what it was given.

Under ``PYTHONUNBUFFERED=1`` (or ``python -u``), which CI runners and many service
managers set, ``sys.stdout`` is a text layer written straight through to a raw
``FileIO``. A raw write may be partial: a write to a full pipe that a signal
interrupts returns after the first 64 KiB, and the text layer does not write the
rest. ``monitor rules test --json`` piped into ``jq`` then printed half a JSON document
and still exited 0. A ``BufferedWriter`` between the two writes until everything is
out; with ``line_buffering`` every line still leaves at once, as unbuffered output does.
"""

from __future__ import annotations

import io
import sys
from typing import TextIO


def reliable(stream: TextIO) -> TextIO:
    """``stream``, or a line-buffered copy of it over a ``BufferedWriter`` when it writes
    straight to a raw file (where a partial write would lose the rest)."""
    if not isinstance(stream, io.TextIOWrapper) or not isinstance(stream.buffer, io.FileIO):
        return stream
    stream.flush()
    # a FileIO of our own on the same descriptor, never closing it: the old stream (still
    # ``sys.__stdout__``) may be closed or collected without taking ours with it
    raw = io.FileIO(stream.fileno(), "w", closefd=False)
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding=stream.encoding,
                            errors=stream.errors, newline=None, line_buffering=True,
                            write_through=False)


def make_stdio_reliable() -> None:
    """Apply :func:`reliable` to ``sys.stdout`` and ``sys.stderr`` (the process's own
    streams only: the command line calls this, never a library user)."""
    sys.stdout = reliable(sys.stdout)
    sys.stderr = reliable(sys.stderr)
