"""The only module that runs APScheduler: periodic ticks and cron jobs on the loop.

Feed due times live in the store (so a restart resumes the schedule); APScheduler drives
the ticks that claim due feeds and prune old stories. Digest fire times are pure
arithmetic and live in ``monitor.core.schedule`` (``next_cron``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

Job = Callable[[], Awaitable[None]]


class Scheduler:
    def __init__(self) -> None:
        self._s = AsyncIOScheduler(timezone=UTC)

    def every(self, name: str, seconds: float, job: Job, *, start_now: bool = True) -> None:
        self._s.add_job(
            job,
            IntervalTrigger(seconds=seconds, timezone=UTC),
            id=name,
            name=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            replace_existing=True,
            # (APScheduler adds a job *paused* when given next_run_time=None)
            **({"next_run_time": datetime.now(UTC)} if start_now else {}),
        )

    def start(self) -> None:
        self._s.start()

    def stop(self) -> None:
        if self._s.running:
            self._s.shutdown(wait=False)
