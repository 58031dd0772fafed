"""The parse pool's deadline, against real spawned worker processes (and threads): a job
that never ends is abandoned and its worker killed and replaced; the jobs beside it and
after it complete; the pipeline records the feed's failure and backs it off.

No timing assertions: deadlines are short so that the tests are quick, and the bounds
are only there so that a regression hangs nobody's CI.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from monitor.core.prepare import Job, Prepared, Progress
from monitor.errors import MonitorError
from monitor.metrics import Metrics
from monitor.shell.parsepool import (
    FAILPOINTS,
    JobTimedOut,
    ParsePool,
    Processes,
    Threads,
    WorkerDied,
    run_job,
)
from tests.clock import T0, Clock
from tests.feeds import BACKLOG, Item, rss
from tests.peers.feedserver import FeedServer

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 2.0
pytestmark = pytest.mark.timeout(120)


def job(feed: str) -> Job:
    items = [Item(title=f"{feed} story {i}", link=f"https://{feed}.example/{i}",
                  guid=f"{feed}-{i}") for i in range(3)]
    return Job(body=rss(items, now=T0), headers={}, feed=feed, feed_tags=(),
               url=f"https://{feed}.example/rss", now=T0)


def crash_or_run(j: Job, progress: Progress | None) -> Prepared:
    """A job function for the worker processes: feeds named crash* kill their worker."""
    if j.feed.startswith("crash"):
        os._exit(3)
    return run_job(j, progress)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def hang_feeds(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # read by the worker processes, which the pool spawns after this
    monkeypatch.setenv(FAILPOINTS, "prepare-hang:stuck,prepare-hang:stuck2")
    yield


@pytest.fixture
async def pool(hang_feeds: None) -> AsyncIterator[ParsePool]:
    p = ParsePool(Processes(2), timeout=DEADLINE, metrics=Metrics())
    yield p
    p.shutdown()


async def test_a_job_past_its_deadline_is_abandoned_and_its_worker_replaced(
    pool: ParsePool,
) -> None:
    backend = pool.backend
    assert isinstance(backend, Processes)
    # a first job starts a worker
    assert len((await pool(job("warm"))).stories) == 3
    stuck = asyncio.ensure_future(pool(job("stuck")))
    await asyncio.sleep(0.2)
    pids = {w.proc.pid for w in backend._busy}
    # the jobs of other feeds run beside it, on the other worker, and complete
    others = await asyncio.wait_for(asyncio.gather(*(pool(job(f"f{i}")) for i in range(4))), 60)
    assert [len(p.stories) for p in others] == [3, 3, 3, 3]
    with pytest.raises(JobTimedOut) as caught:
        await asyncio.wait_for(stuck, DEADLINE + 30)
    e = caught.value
    assert e.feed == "stuck" and e.killed
    # it says which item it was stuck on
    assert 'at entry 1 of 3, "stuck story 0" (id https://stuck.example/stuck-0)' in str(e)
    assert "exceeded its 2 s deadline" in str(e) and "killed and replaced" in str(e)
    # the killed worker is gone (SIGKILL: it ignored SIGTERM)
    for _ in range(100):
        if not any(_alive(p) for p in pids):
            break
        await asyncio.sleep(0.1)
    assert not any(_alive(p) for p in pids)
    # later jobs work, on a new worker
    assert len((await asyncio.wait_for(pool(job("after")), 60)).stories) == 3
    assert pool.timed_out == 1 and pool.replaced == 1
    body, reasons = pool.health()
    assert reasons == ["parse worker replaced after a job exceeded its 2 s deadline in the "
                       "last 15 min (feed stuck)"]
    assert body["timed_out"] == 1 and body["workers_replaced"] == 1
    assert body["recent"][0]["feed"] == "stuck" and "entry 1 of 3" in body["recent"][0]["detail"]
    assert pool.metrics is not None
    reg = pool.metrics.registry
    assert reg.get_sample_value("monitor_parse_timeouts_total", {"feed": "stuck"}) == 1
    assert reg.get_sample_value("monitor_parse_workers_replaced_total",
                                {"reason": "timeout"}) == 1


async def test_two_stuck_jobs_on_two_workers_do_not_stop_a_third_feed(pool: ParsePool) -> None:
    # every worker pinned: the next job waits for a worker, not for ever
    stuck = [asyncio.ensure_future(pool(job(f))) for f in ("stuck", "stuck2")]
    await asyncio.sleep(0.2)
    normal = await asyncio.wait_for(pool(job("normal")), DEADLINE + 60)
    assert len(normal.stories) == 3
    for s in stuck:
        with pytest.raises(JobTimedOut):
            await asyncio.wait_for(s, 30)
    _, reasons = pool.health()
    assert reasons == ["2 parse workers replaced after jobs exceeded their 2 s deadline in "
                       "the last 15 min (feed stuck, stuck2)"]


async def test_a_cancelled_job_kills_its_worker_and_shutdown_kills_the_rest(
    pool: ParsePool,
) -> None:
    backend = pool.backend
    assert isinstance(backend, Processes)
    first = asyncio.ensure_future(pool(job("stuck")))
    await asyncio.sleep(0.2)
    second = asyncio.ensure_future(pool(job("stuck2")))
    for _ in range(300):  # both busy (the second worker has to start)
        if len(backend._busy) == 2:
            break
        await asyncio.sleep(0.05)
    first_pid, second_pid = sorted((w.feed or "", w.proc.pid) for w in backend._busy)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len((await asyncio.wait_for(pool(job("next")), 60)).stories) == 3
    pool.shutdown()  # kills the busy worker too: it never answers SIGTERM
    with pytest.raises(MonitorError, match="shut down"):
        await asyncio.wait_for(second, 30)
    assert pool.replaced == 0  # a shutdown is no incident
    for _ in range(100):
        if not _alive(first_pid[1]) and not _alive(second_pid[1]):
            break
        await asyncio.sleep(0.1)
    assert not _alive(first_pid[1]) and not _alive(second_pid[1])


async def test_a_worker_that_dies_is_replaced_and_its_job_tried_once_more() -> None:
    pool = ParsePool(Processes(1, fn=crash_or_run), timeout=30.0, metrics=Metrics())
    try:
        with pytest.raises(WorkerDied, match=r"died .*exit code 3"):
            await asyncio.wait_for(pool(job("crash")), 60)
        assert pool.replaced == 2  # the job, and its second try
        assert len((await asyncio.wait_for(pool(job("fine")), 60)).stories) == 3
        _, reasons = pool.health()
        assert reasons == ["2 parse worker(s) died and were replaced in the last 15 min "
                           "(feed crash)"]
    finally:
        pool.shutdown()


async def test_in_threads_a_job_past_its_deadline_is_abandoned_and_reported_stuck() -> None:
    from concurrent.futures import ThreadPoolExecutor

    release = threading.Event()

    def hang(j: Job, progress: Progress | None) -> Prepared:
        if j.feed == "stuck":
            release.wait(60)
        return run_job(j, progress)

    executors: list[ThreadPoolExecutor] = []

    def make() -> ThreadPoolExecutor:
        executors.append(ThreadPoolExecutor(1))
        return executors[-1]

    pool = ParsePool(Threads(make, fn=hang), timeout=0.5)
    try:
        with pytest.raises(JobTimedOut, match="could not be stopped"):
            await asyncio.wait_for(pool(job("stuck")), 30)
        # a fresh executor: the next job does not queue behind the stuck thread
        assert len(executors) == 2
        assert len((await asyncio.wait_for(pool(job("other")), 30)).stories) == 3
        body, reasons = pool.health()
        assert body["stuck"][0]["feed"] == "stuck"
        assert any("parse thread(s) stuck" in r and "fetch.parse_in: process" in r
                   for r in reasons), reasons
        release.set()
        for _ in range(100):
            if not pool.health()[0]["stuck"]:
                break
            await asyncio.sleep(0.05)
        assert pool.health()[0]["stuck"] == []
    finally:
        release.set()
        pool.shutdown()
        for ex in executors:
            ex.shutdown(wait=True)


async def test_the_pipeline_fails_the_feed_and_backs_it_off(
    tmp_path: Path, feed_server: FeedServer, hang_feeds: None
) -> None:
    from monitor.config import load_config
    from monitor.core.schedule import TIMEOUT_BACKOFF
    from monitor.shell.daemon import Runtime

    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    feed_server.serve("/ok.rss", rss(BACKLOG, now=T0))
    feed_server.serve("/stuck.rss", rss(BACKLOG, now=T0))
    (tmp_path / "config.yaml").write_text(f"""
feeds:
  - {{name: ok, url: '{feed_server.url("/ok.rss")}', interval: 60s}}
  - {{name: stuck, url: '{feed_server.url("/stuck.rss")}', interval: 60s}}
rules: rules
store: sqlite:///state.db
channels:
  slack-news: {{type: file, path: alerts.jsonl}}
  email-oncall: {{type: file, path: email.jsonl}}
  audit-file: {{type: file, path: audit.jsonl}}
fetch: {{parse_in: process, parse_workers: 2, parse_timeout: {DEADLINE}s}}
server: {{enabled: false}}
""", encoding="utf-8")
    clock = Clock()
    async with Runtime(load_config(tmp_path / "config.yaml"), clock=clock) as rt:
        out = {o.feed: o for o in await asyncio.wait_for(rt.poll_all(), 90)}
        assert out["ok"].result == "baseline" and out["ok"].new == 3
        assert out["stuck"].result == "failed"
        assert out["stuck"].error is not None and "2 s deadline" in out["stuck"].error
        states = {f.name: f for f in await rt.store.get_feeds()}
        st = states["stuck"]
        assert st.failures == 1 and st.last_error == out["stuck"].error
        assert st.next_poll is not None
        assert st.next_poll >= clock.now + timedelta(seconds=TIMEOUT_BACKOFF * DEADLINE)
        h = await rt.health()
        assert h["status"] == "degraded"
        assert ("parse worker replaced after a job exceeded its 2 s deadline in the last "
                "15 min (feed stuck)") in h["reasons"]
        assert h["parse"]["timed_out"] == 1
        assert h["feeds"]["failing"][0]["feed"] == "stuck"
        assert "entry 1 of" in h["feeds"]["failing"][0]["error"]


def test_the_hang_failpoint_is_only_a_test_aid(monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor.shell.parsepool import _failpoints

    monkeypatch.delenv(FAILPOINTS, raising=False)
    assert _failpoints() == set()
    monkeypatch.setenv(FAILPOINTS, "prepare-hang:a, prepare-hang:b,other:c,prepare-hang:")
    assert _failpoints() == {"a", "b"}


def test_a_feed_whose_job_timed_out_waits_ten_deadlines_doubling() -> None:
    from monitor.core.schedule import TIMEOUT_BACKOFF, timeout_backoff

    assert TIMEOUT_BACKOFF == 10.0
    wait = [timeout_backoff(deadline=30.0, interval=60.0, failures=f, backoff_max=6 * 3600.0)
            for f in (1, 2, 3, 10)]
    assert wait == [300.0, 600.0, 1200.0, 6 * 3600.0]
    # a long interval wins; a backoff_max shorter than one wait does not shorten it
    assert timeout_backoff(deadline=30.0, interval=3600.0, failures=1,
                           backoff_max=6 * 3600.0) == 3600.0
    assert timeout_backoff(deadline=30.0, interval=60.0, failures=1, backoff_max=60.0) == 300.0
