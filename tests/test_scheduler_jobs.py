"""The scheduler's jobs on a real AsyncIOScheduler: a stop that cancels a running job is
not reported as a failure; a job that raises still is."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from monitor.shell.scheduler import Scheduler


async def _run_until_started(job_started: asyncio.Event, s: Scheduler) -> asyncio.Task[object]:
    s.start()
    await asyncio.wait_for(job_started.wait(), 10)
    # the job's own task, as APScheduler created it
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()
             and "run_coroutine_job" in repr(t.get_coro())]
    assert len(tasks) == 1, tasks
    return tasks[0]


async def test_a_job_cancelled_by_the_stop_is_not_a_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    started = asyncio.Event()

    async def heartbeat() -> None:
        started.set()
        await asyncio.sleep(60)  # a store call stuck behind a busy store

    s = Scheduler()
    s.every("heartbeat", 5, heartbeat)
    with caplog.at_level(logging.DEBUG):
        task = await _run_until_started(started, s)
        s.stop()
        task.cancel()  # what the loop's runner does to what is left at exit
        await asyncio.gather(task, return_exceptions=True)
    messages = [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], messages
    assert any("scheduler.cancelled" in m for m in messages), messages


async def test_a_job_that_raises_is_still_reported(caplog: pytest.LogCaptureFixture) -> None:
    started = asyncio.Event()

    async def broken() -> None:
        started.set()
        await asyncio.sleep(0.05)
        raise ZeroDivisionError("job bug")

    s = Scheduler()
    s.every("prune", 5, broken)
    with caplog.at_level(logging.DEBUG):
        task = await _run_until_started(started, s)
        await asyncio.gather(task, return_exceptions=True)
        s.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and errors[0].exc_info is not None
    assert errors[0].exc_info[0] is ZeroDivisionError



async def test_stop_cancels_every_run_going_on_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """APScheduler's executor cancels the runs going on at shutdown (a dedup snapshot's
    forked child is then killed, a heartbeat's store call given up): no error is logged."""
    started = {"dedup-snapshot": asyncio.Event(), "heartbeat": asyncio.Event()}
    ended: list[str] = []

    def job(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            started[name].set()
            await asyncio.sleep(30)
            ended.append(name)
        return run

    s = Scheduler()
    for name in started:
        s.every(name, 5, job(name))
    with caplog.at_level(logging.DEBUG):
        s.start()
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started.values())), 10)
        s.stop()
        for _ in range(100):
            if sum("scheduler.cancelled" in r.getMessage() for r in caplog.records) == 2:
                break
            await asyncio.sleep(0.01)
    assert ended == []
    assert sum("scheduler.cancelled" in r.getMessage() for r in caplog.records) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
