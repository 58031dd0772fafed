"""The only module that runs APScheduler: periodic ticks and cron jobs on the loop.

Feed due times live in the store (so a restart resumes the schedule); APScheduler drives
the ticks that claim due feeds and prune old stories. Digest fire times are pure
arithmetic and live in ``monitor.core.schedule`` (``next_cron``).

A job never runs twice at once, and a tick that comes while the previous run is still
going is skipped here rather than by APScheduler with a warning each time, and never
silently: every tick is counted, ran or skipped (``on_tick``: the daemon's
``monitor_scheduler_ticks_total{job, result}``), the first skip of a run is logged at
info (``scheduler.skipped``; the next ones at debug), and a run that goes on for
``SLOW_AFTER`` intervals (at least a minute) is reported once, at warning
(``scheduler.slow``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from monitor.log import get_logger

log = get_logger(__name__)

Job = Callable[[], Awaitable[None]]
#: told of every tick: (job name, "ran" or "skipped")
OnTick = Callable[[str, str], None]

SLOW_AFTER = 10  # intervals a run may last before it is reported (at least 60 s)


def _ignore(_job: str, _result: str) -> None:
    pass


def _guarded(name: str, seconds: float, job: Job, on_tick: OnTick = _ignore) -> Job:
    """``job``, run at most once at a time: a call while a run is going returns at once,
    counted as skipped."""
    started: float | None = None
    skipped = 0
    warned = False

    async def run() -> None:
        nonlocal started, skipped, warned
        if started is not None:
            skipped += 1
            on_tick(name, "skipped")
            running = time.monotonic() - started
            (log.info if skipped == 1 else log.debug)(
                "scheduler.skipped", job=name, running_s=running, skipped=skipped,
                why="the previous run is still going")
            if not warned and running >= max(60.0, SLOW_AFTER * seconds):
                warned = True
                log.warning("scheduler.slow", job=name, running_s=running, every_s=seconds,
                            note="its next runs are skipped until this one ends")
            return
        started, skipped, warned = time.monotonic(), 0, False
        on_tick(name, "ran")
        try:
            await job()
        except asyncio.CancelledError:
            # the daemon is stopping (the loop cancels what is left): not a failure, and
            # APScheduler, which catches BaseException, would log it as one with a
            # traceback (``scheduler.job_failed`` for a heartbeat cut off by the stop)
            log.debug("scheduler.cancelled", job=name)
        finally:
            started = None

    return run


class Scheduler:
    """Periodic jobs on the running loop; ``on_tick`` is told of every tick of each."""

    def __init__(self, on_tick: OnTick = _ignore) -> None:
        self._s = AsyncIOScheduler(timezone=UTC)
        self._on_tick = on_tick

    def every(self, name: str, seconds: float, job: Job, *, start_now: bool = True) -> None:
        self._s.add_job(
            _guarded(name, seconds, job, self._on_tick),
            IntervalTrigger(seconds=seconds, timezone=UTC),
            id=name,
            name=name,
            max_instances=2,  # the second returns at once (see _guarded): no warning
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
