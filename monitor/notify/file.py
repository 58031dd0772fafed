"""File notifier: one JSON object per line (``render.json_line``), appended, flushed and
fsynced in a worker thread so the event loop never waits on the disk. Parent
directories are created. An I/O error is reported ``retry=True`` (a full disk or a
missing mount may heal). ``Sent.ref`` is None: a file has no threads."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from monitor.config import FileChannel
from monitor.core.model import Alert, SendFailed, SendResult, Sent
from monitor.log import get_logger
from monitor.notify.ratelimit import RateLimiter
from monitor.notify.render import DigestKind, Part, json_line

log = get_logger(__name__)


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


class FileNotifier:
    """Appends alerts to ``cfg.path`` (relative paths resolve against ``base_dir``)."""

    def __init__(self, name: str, cfg: FileChannel, base_dir: Path) -> None:
        self.name = name
        self.cfg = cfg
        p = Path(cfg.path).expanduser()
        self.path = p if p.is_absolute() else Path(base_dir) / p
        self.limiter = RateLimiter(cfg.rate, burst=cfg.rate)
        self._lock = asyncio.Lock()

    async def send(
        self,
        alert: Alert,
        *,
        thread_ref: str | None = None,
        key: str | None = None,
        attempt: int = 1,
        created: datetime | None = None,
    ) -> SendResult:
        return await self._write(json_line(alert))

    digest_max = None  # a file takes a digest of any length in one write

    async def send_digest(self, alerts: Sequence[Alert], *, key: str,
                          kind: DigestKind = "digest", heading: str | None = None,
                          thread_ref: str | None = None, part: Part | None = None,
                          attempt: int = 1, created: datetime | None = None) -> SendResult:
        """One line per collected alert, written together."""
        return await self._write("\n".join(json_line(a) for a in alerts))

    async def send_batch(self, alerts: Sequence[Alert]) -> SendResult:
        """One line per alert, appended with one write and one fsync."""
        return await self._write("\n".join(json_line(a) for a in alerts), n=len(alerts))

    async def _write(self, line: str, n: int = 1) -> SendResult:
        await self.limiter.acquire(n)
        try:
            async with self._lock:  # one writer at a time: lines never interleave
                await asyncio.to_thread(_append, self.path, line)
        except OSError as e:
            reason = f"file {self.path}: {e.strerror or type(e).__name__}"
            log.warning("notify.failed", channel=self.name, kind="file", reason=reason, retry=True)
            return SendFailed(reason=reason, retry=True)
        log.info("notify.sent", channel=self.name, kind="file", path=str(self.path), alerts=n)
        return Sent(ref=None)

    async def close(self) -> None:
        """Nothing to release: the file is opened per write."""
