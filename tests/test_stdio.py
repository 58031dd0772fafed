"""Output piped to a slow reader arrives whole, even under ``PYTHONUNBUFFERED=1``.

CI once got the first 64 KiB of ``monitor rules test --json --all`` and exit code 0: with
unbuffered stdio, a write to a full pipe interrupted by a signal returned early and the
rest was dropped. These tests interrupt such a write on purpose."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import pytest

from monitor.cli.stdio import reliable

PAYLOAD = "".join(f'{{"line": {i}, "text": "{"é" * 40}"}}\n' for i in range(4000))  # ~400 KB


def _write_interrupted(wrap: Callable[[TextIO], TextIO]) -> bytes:
    """Write PAYLOAD through an unbuffered-stdio-like stream into a pipe that nobody reads
    until a signal has interrupted the blocked write; return what came out."""
    r, w = os.pipe()
    raw = io.FileIO(w, "w", closefd=True)
    unbuffered = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    stream = wrap(unbuffered)
    interrupted = threading.Event()
    got: list[bytes] = []

    def drain() -> None:
        interrupted.wait(10)
        while chunk := os.read(r, 1 << 16):
            got.append(chunk)
        os.close(r)

    old = signal.signal(signal.SIGALRM, lambda *_: interrupted.set())
    reader = threading.Thread(target=drain)
    reader.start()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # lands while the write is blocked
        stream.write(PAYLOAD)
        stream.flush()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        interrupted.set()
        stream.close()
        unbuffered.close()  # closes the descriptor: the reader sees the end
        reader.join(10)
    return b"".join(got)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX interval timers")
def test_a_signal_during_a_blocked_write_loses_nothing() -> None:
    assert _write_interrupted(reliable) == PAYLOAD.encode()


def test_buffered_streams_are_left_alone() -> None:
    s = io.TextIOWrapper(io.BufferedWriter(io.FileIO(os.devnull, "w")), encoding="utf-8")
    assert reliable(s) is s
    s.close()
    other = io.StringIO()
    assert reliable(other) is other  # type: ignore[arg-type]


def test_the_command_line_writes_through_a_buffer_under_unbuffered_python(tmp_path: Path) -> None:
    code = ("import sys; from monitor.cli.main import main; "
            "sys.argv = ['monitor', '--version']; "
            "import monitor.cli.main as m; m.make_stdio_reliable(); "
            "print(type(sys.stdout.buffer).__name__, type(sys.stderr.buffer).__name__, "
            "sys.stdout.line_buffering)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=tmp_path,
                         check=True, timeout=60)
    assert out.stdout.split() == ["BufferedWriter", "BufferedWriter", "True"]
