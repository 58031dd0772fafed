"""Issue #14, a scheduler that keeps its schedule: poll slots bounded by concurrency and
refilled as polls finish, first polls spread over the interval, due-anchored next polls,
feed specs cached per configuration, ticks and skipped ticks counted.

The daemon tests run a real ``Daemon`` against the local feed server; every wait is
bounded and waits for something the daemon must bring about (no timing assertion).
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.config import Config, load_config
from monitor.core.model import FeedState
from monitor.core.schedule import (
    FIRST_PASS_SHARE,
    NEW_FEED_SPREAD,
    OVERDUE_SPREAD,
    auto_concurrency,
    first_anchor,
    initial_poll,
    next_poll,
    spread_window,
)
from monitor.metrics import Metrics
from monitor.shell.daemon import Daemon, Runtime, poll_slots
from monitor.shell.scheduler import Scheduler
from monitor.store.base import Instance
from monitor.store.open import open_store
from tests.peers.feedserver import FeedServer
from tests.test_daemon import ROOT, until

pytestmark = pytest.mark.timeout(120)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def write_config(tmp_path: Path, feeds: dict[str, str], *, interval: str,
                 fetch: str = "parse_in: thread") -> Path:
    if not (tmp_path / "rules").exists():
        shutil.copytree(ROOT / "rules", tmp_path / "rules")
    lines = "\n".join(f"  - {{name: {n}, url: '{u}', interval: {interval}}}"
                      for n, u in feeds.items())
    path = tmp_path / "config.yaml"
    path.write_text(f"""
feeds:
{lines}
defaults: {{jitter: 0}}
rules: rules
store: sqlite:///state.db
channels:
  slack-news: {{type: file, path: alerts.jsonl}}
  email-oncall: {{type: file, path: email.jsonl}}
  audit-file: {{type: file, path: audit.jsonl}}
fetch: {{{fetch}}}
server: {{enabled: false}}
""", encoding="utf-8")
    return path


def sample(m: Metrics, name: str, **labels: str) -> float:
    value = m.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# -- the daemon ----------------------------------------------------------------------------


async def test_polls_in_flight_reach_concurrency_and_never_exceed_it(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """24 slow feeds, 4 slots: the server sees exactly 4 polls at once at most, and 4 at
    some point (the slots fill); the lag and claims are measured."""
    feeds = {f"f{i}": feed_server.url(f"/f{i}.rss") for i in range(24)}
    for i in range(24):
        feed_server.slow(f"/f{i}.rss", 0.3)
    config = load_config(write_config(tmp_path, feeds, interval="1s",
                                      fetch="parse_in: thread, concurrency: 4, per_host: 64"))
    daemon = Daemon(config, tick=0.05)
    running = asyncio.ensure_future(daemon.run())
    try:
        await until(lambda: all(feed_server.hits(f"/f{i}.rss") >= 2 for i in range(24)),
                    "every feed polled twice", limit=60)
        assert daemon.rt is not None
        m = daemon.rt.metrics
    finally:
        daemon.stop()
        await asyncio.wait_for(running, 30)
    assert feed_server.max_active() == 4  # reached, never exceeded
    assert sample(m, "monitor_poll_slots") == 4
    assert sample(m, "monitor_poll_lag_seconds_count") >= 48
    claimed = sum(sample(m, "monitor_feeds_claimed_total", trigger=t) for t in ("tick", "refill"))
    assert claimed >= 48
    assert sample(m, "monitor_feed_claims_total", trigger="refill") >= 1
    assert sample(m, "monitor_polls_in_flight") <= 4


async def test_a_freed_slot_is_refilled_without_waiting_for_the_tick(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """Six overdue feeds, two slots and a one-hour tick: the one tick at start claims
    two; as they finish, the others are claimed and polled with no other tick."""
    names = [f"g{i}" for i in range(6)]
    gates = {n: feed_server.gate(f"/{n}.rss") for n in names}
    urls = {n: feed_server.url(f"/{n}.rss") for n in names}
    path = write_config(tmp_path, urls, interval="1h",
                        fetch="parse_in: thread, concurrency: 2, per_host: 64")
    config = load_config(path)
    # another instance heartbeats in the store: a start then leaves the overdue feeds as
    # they are (they are that instance's to poll too), so all six are due at the tick
    now = datetime.now(UTC)
    async with open_store(config.store_url) as store:
        await store.add_feeds([FeedState(name=n, url=u, configured_url=u,
                                         next_poll=now - timedelta(minutes=10))
                               for n, u in urls.items()])
        await store.heartbeat(Instance(id="peer", host="elsewhere", pid=1, version="x",
                                       started=now, heartbeat=now), now, dead_after=None)
    daemon = Daemon(config, tick=3600.0)
    running = asyncio.ensure_future(daemon.run())
    try:
        await asyncio.wait_for(feed_server.wait_active(2), 30)
        for gate in gates.values():
            gate.set()
        await until(lambda: all(feed_server.hits(f"/{n}.rss") == 1 for n in names),
                    "every feed polled once", limit=30)
        assert daemon.rt is not None
        m = daemon.rt.metrics
        assert sample(m, "monitor_scheduler_ticks_total", job="poll", result="ran") == 1
        assert sample(m, "monitor_feed_claims_total", trigger="refill") >= 1
        assert sample(m, "monitor_feeds_claimed_total", trigger="tick") == 2
        assert sample(m, "monitor_feeds_claimed_total", trigger="refill") == 4
        # they were ten minutes overdue: the lag says so
        assert sample(m, "monitor_poll_lag_seconds_bucket", le="300.0") == 0
        assert sample(m, "monitor_poll_lag_seconds_bucket", le="600.0") == 0
        assert sample(m, "monitor_poll_lag_seconds_count") == 6
    finally:
        daemon.stop()
        await asyncio.wait_for(running, 30)
    assert feed_server.max_active() == 2  # (gated: a third poll would have shown here)


async def test_feed_specs_are_cached_per_configuration_and_follow_a_reload(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.serve("/a.rss", b"<rss/>")
    feed_server.serve("/b.rss", b"<rss/>")
    path = write_config(tmp_path, {"a": feed_server.url("/a.rss")}, interval="1h")
    async with Runtime(load_config(path), config_path=path) as rt:
        specs = rt.specs()
        assert list(specs) == ["a"]
        assert rt.specs() is specs  # not rebuilt while the configuration is the same
        write_config(tmp_path, {"a": feed_server.url("/a.rss"),
                                "b": feed_server.url("/b.rss")}, interval="30m")
        assert await rt.reload("test") is True
        after = rt.specs()
        assert after is not specs and list(after) == ["a", "b"]
        assert after["a"].interval == 1800.0
        assert rt.specs() is after


async def test_a_skipped_tick_is_counted_and_said(caplog: pytest.LogCaptureFixture) -> None:
    """A run that outlasts its interval: the ticks meanwhile are skipped, counted, and
    the first skip is said at info."""
    counts: dict[tuple[str, str], int] = {}
    release = asyncio.Event()
    started = asyncio.Event()

    def on_tick(job: str, result: str) -> None:
        counts[(job, result)] = counts.get((job, result), 0) + 1

    async def slow() -> None:
        started.set()
        await release.wait()

    caplog.set_level(logging.DEBUG, logger="monitor.shell.scheduler")
    s = Scheduler(on_tick=on_tick)
    s.every("slow", 0.05, slow)
    s.start()
    try:
        await asyncio.wait_for(started.wait(), 10)
        await until(lambda: counts.get(("slow", "skipped"), 0) >= 3, "skipped ticks")
        release.set()
        ran = counts[("slow", "ran")]
        await until(lambda: counts[("slow", "ran")] > ran, "a run after the release")
    finally:
        s.stop()
    skips = [r for r in caplog.records if r.getMessage() == "scheduler.skipped"]
    assert skips and skips[0].levelno == logging.INFO
    assert all(r.levelno == logging.DEBUG for r in skips[1:])


# -- pure: the spread, the anchor, auto concurrency -----------------------------------------


def test_spread_window_rule() -> None:
    # a few feeds: the least window (soon, not all in one second)
    assert spread_window(interval=300, least=30, backlog=1, rate=8) == 30
    assert spread_window(interval=300, least=30, backlog=100, rate=8) == 30
    # more than the least window's worth: the time they take, up to the interval
    assert spread_window(interval=300, least=30, backlog=800, rate=8) == 100
    assert spread_window(interval=300, least=30, backlog=50_000, rate=167) == 50_000 / 167
    assert spread_window(interval=300, least=30, backlog=50_000, rate=150) == 300
    assert spread_window(interval=300, least=30, backlog=10**6, rate=8) == 300
    # never beyond the interval, even the least window
    assert spread_window(interval=10, least=30, backlog=1, rate=8) == 10
    assert spread_window(interval=300, least=30, backlog=10, rate=float("inf")) == 30


def test_a_big_first_pass_is_spread_evenly_over_most_of_the_interval() -> None:
    """50,000 new feeds (auto concurrency: 334 slots, 167 polls/s): first polls over the
    first four fifths of the 5 minutes (FIRST_PASS_SHARE: room to run late and still end
    within the interval), about as many in each tenth of that; one feed added: within
    30 s."""
    n, interval = 50_000, 300.0
    rate = auto_concurrency([interval] * n) / 2.0
    firsts = [initial_poll(now=NOW, interval=interval, key=f"feed-{i}", last_polled=None,
                           next_poll=None, backlog=n, rate=rate) for i in range(n)]
    offsets = [(t - NOW).total_seconds() for t in firsts]
    span = FIRST_PASS_SHARE * interval
    assert min(offsets) >= 0 and max(offsets) < span and max(offsets) > 0.99 * span
    bins = [0] * 10
    for o in offsets:
        bins[int(o / span * 10)] += 1
    assert min(bins) > 0.9 * n / 10 and max(bins) < 1.1 * n / 10, bins
    one = initial_poll(now=NOW, interval=interval, key="added", last_polled=None,
                       next_poll=None, backlog=1, rate=rate)
    assert NOW <= one < NOW + timedelta(seconds=NEW_FEED_SPREAD)
    # a restart with the same 50,000 overdue: spread over the interval too
    over = [initial_poll(now=NOW, interval=interval, key=f"feed-{i}", last_polled=None,
                         next_poll=NOW - timedelta(hours=1), backlog=n, rate=rate)
            for i in range(0, n, 50)]
    assert max(over) - NOW > timedelta(seconds=0.9 * interval)
    # and a few overdue ones within the least window for overdue feeds
    few = initial_poll(now=NOW, interval=interval, key="x", last_polled=None,
                       next_poll=NOW - timedelta(hours=1), backlog=3, rate=rate)
    assert NOW <= few < NOW + timedelta(seconds=OVERDUE_SPREAD)


def test_next_poll_counts_from_the_due_time_so_lag_does_not_bunch() -> None:
    due = NOW
    kw = {"interval": 300.0, "failures": 0, "retry_after": None, "backoff_max": 3600.0,
          "jitter": 0.0, "key": "k"}
    # on time or late by less than half the interval: the feed keeps its place
    for lag in (0.0, 1.0, 60.0, 149.0):
        assert next_poll(now=due + timedelta(seconds=lag), due=due, **kw) == (  # type: ignore[arg-type]
            due + timedelta(seconds=300))
    # later than that: still at its place, a cycle on, at least half an interval away
    for lag, at in ((150.0, 300.0), (200.0, 600.0), (450.0, 600.0), (451.0, 900.0),
                    (1000.0, 1200.0)):
        got = next_poll(now=due + timedelta(seconds=lag), due=due, **kw)  # type: ignore[arg-type]
        assert got == due + timedelta(seconds=at), lag
        assert got - (due + timedelta(seconds=lag)) >= timedelta(seconds=150)
    # failures back off from now; a floor and Retry-After count from now
    assert next_poll(now=due + timedelta(seconds=10), due=due, **{**kw, "failures": 1}) == (  # type: ignore[arg-type]
        due + timedelta(seconds=310))
    assert next_poll(now=due + timedelta(seconds=100), due=due, floor=300.0, **kw) == (  # type: ignore[arg-type]
        due + timedelta(seconds=400))
    assert next_poll(now=due + timedelta(seconds=100), due=due, retry_after=600.0,
                     **{k: v for k, v in kw.items() if k != "retry_after"}) == (  # type: ignore[arg-type]
        due + timedelta(seconds=700))


def test_due_anchored_polls_keep_their_spread_through_a_busy_moment() -> None:
    """1,000 feeds spread over 5 minutes; for three cycles every poll waits for a slot
    (lag up to 2 minutes, growing with its place): then the polls run on time again, and
    the due times are as spread as before, each feed at its place."""
    interval = 300.0
    dues = {f"f{i}": NOW + timedelta(seconds=i * interval / 1000) for i in range(1000)}
    start = dict(dues)
    for cycle in range(5):
        busy = cycle < 3
        for name, due in dues.items():
            lag = (120.0 * int(name[1:]) / 1000) if busy else 0.5
            dues[name] = next_poll(now=due + timedelta(seconds=lag), due=due,
                                   interval=interval, failures=0, retry_after=None,
                                   backoff_max=3600.0, jitter=0.0, key=name)
    for name, due in dues.items():
        assert due == start[name] + timedelta(seconds=5 * interval)


def test_a_first_pass_slower_than_the_interval_leaves_no_bunch() -> None:
    """1,000 feeds due over one 5-minute interval, but the first pass takes 2.5 times as
    long (polled in due order at 1,000 per 750 s, so the last ones 450 s late): from
    then on every poll is on time, at the place its first due time gave it: the polls
    of any minute of the next cycles are as many as of any other."""
    interval = 300.0
    start = {f"f{i}": NOW + timedelta(seconds=i * interval / 1000) for i in range(1000)}
    dues = {}
    for i, (name, due) in enumerate(start.items()):
        polled = NOW + timedelta(seconds=i * 0.75)
        dues[name] = next_poll(now=polled, due=due, interval=interval, failures=0,
                               retry_after=None, backoff_max=3600.0, jitter=0.0, key=name)
        assert dues[name] - polled >= timedelta(seconds=interval / 2)
    for name, due in dues.items():
        assert (due - start[name]).total_seconds() % interval == 0  # its place kept
    # the second cycle onwards: polls per minute even (the first pass ended at 750 s)
    for name, due in dues.items():
        while due < NOW + timedelta(seconds=900):
            due += timedelta(seconds=interval)
        dues[name] = due
    per_minute = Counter(int((d - NOW).total_seconds() // 60) for d in dues.values())
    assert sorted(per_minute) == [15, 16, 17, 18, 19]
    assert min(per_minute.values()) >= 190 and max(per_minute.values()) <= 210


@pytest.mark.parametrize("jitter", [0.0, 0.1])
def test_a_compressed_first_pass_leaves_the_next_cycles_even(jitter: float) -> None:
    """10,000 new feeds, 60 s interval: the first pass is spread over 48 s and its polls
    run up to 5 s late; each feed's next poll counts from ``first_anchor``, the ones
    after from their due time. From the first pass's end on, every 2-s window holds
    about the mean number of polls (no gap where the first pass ended, no burst), the
    first poll of every feed is within the interval, and each feed's second poll comes
    at least half an interval after its first and at most 1.25 intervals."""
    n, interval = 10_000, 60.0
    rate = auto_concurrency([interval] * n) / 2.0
    kw = {"interval": interval, "failures": 0, "retry_after": None, "backoff_max": 3600.0,
          "jitter": jitter}
    polls: list[float] = []
    for i in range(n):
        key = f"feed-{i}"
        due = initial_poll(now=NOW, interval=interval, key=key, last_polled=None,
                           next_poll=None, backlog=n, rate=rate)
        now = due + timedelta(seconds=5.0 * i / n)  # late, more so towards the end
        first = (now - NOW).total_seconds()
        assert first < interval
        polls.append(first)
        nxt = next_poll(now=now, key=key, due=first_anchor(due=due, key=key,
                                                           interval=interval),
                        **kw)  # type: ignore[arg-type]
        gap = (nxt - now).total_seconds()
        assert interval / 2 <= gap <= 1.25 * interval, (key, gap)
        for _ in range(4):  # the next cycles, on time
            polls.append((nxt - NOW).total_seconds())
            nxt = next_poll(now=nxt, key=key, due=nxt, **kw)  # type: ignore[arg-type]
    end_of_first = max(polls[::5])
    windows = Counter(int(t // 2) for t in polls if end_of_first <= t < 4 * interval)
    counts = [windows.get(w, 0) for w in range(int(end_of_first // 2) + 1, int(4 * interval // 2))]
    mean = sum(counts) / len(counts)
    assert abs(mean - n / interval * 2) < 0.05 * mean  # the steady rate
    assert min(counts) > 0.75 * mean and max(counts) < 1.25 * mean, (min(counts), max(counts))


def _overrun(first_rate: float, later_rate: float, cycles: int = 8,
             n: int = 10_000, interval: float = 60.0) -> tuple[list[float], list[float]]:
    """An instance that baselines ``first_rate`` new feeds a second and polls
    ``later_rate`` known ones, always the most overdue first (the claim order), on the
    real schedule: every poll's time, and each feed's gap from its first poll to its
    second (seconds)."""
    import heapq

    kw = {"interval": interval, "failures": 0, "retry_after": None, "backoff_max": 3600.0,
          "jitter": 0.1}
    rate = auto_concurrency([interval] * n) / 2.0
    due_heap = [(initial_poll(now=NOW, interval=interval, key=f"feed-{i}", last_polled=None,
                              next_poll=None, backlog=n, rate=rate), f"feed-{i}", True)
                for i in range(n)]
    heapq.heapify(due_heap)
    end = NOW + timedelta(seconds=cycles * interval)
    polls: list[float] = []
    firsts: dict[str, datetime] = {}
    gaps: list[float] = []
    t = NOW
    while due_heap:
        due, key, first = heapq.heappop(due_heap)
        t = max(t, due)
        if t >= end:
            break
        polls.append((t - NOW).total_seconds())
        if first:
            firsts[key] = t
        elif key in firsts:
            gaps.append((t - firsts.pop(key)).total_seconds())
        anchor = first_anchor(due=due, key=key, interval=interval) if first else due
        heapq.heappush(due_heap, (next_poll(now=t, key=key, due=anchor, **kw),  # type: ignore[arg-type]
                                  key, False))
        t += timedelta(seconds=1 / (first_rate if first else later_rate))
    return polls, gaps


def _cycle_windows(polls: list[float], cycle: int, interval: float = 60.0) -> list[int]:
    windows = Counter(int(p // 10) for p in polls)
    per = int(interval // 10)
    return [windows.get(w, 0) for w in range(cycle * per, (cycle + 1) * per)]


@pytest.mark.parametrize("first_rate", [60.0, 100.0, 140.0])
def test_a_first_pass_slower_than_the_interval_leaves_even_cycles_after_it(
        first_rate: float) -> None:
    """10,000 new feeds, 60 s interval, spread over 48 s, but the instance baselines
    only ``first_rate`` feeds a second (the first pass takes 71-167 s, as on a loaded
    machine) while it polls known feeds at 500 a second. The feeds that came due
    meanwhile wait, and the late ones go a cycle on, each at its own place of the grid:
    two cycles after the first pass, every 10-s window holds the mean within 10 %, and
    so on (polls that followed the slow first pass's pace instead kept a wave of up to
    twice the mean, cycle after cycle). Each feed's second poll is at least half an
    interval after its first (less the jitter), and at most an interval after the
    first pass's end."""
    polls, gaps = _overrun(first_rate, 500.0)
    first_pass = 10_000 / first_rate
    settled = math.ceil(first_pass / 60.0) + 2
    for cycle in range(settled, 8):
        counts = _cycle_windows(polls, cycle)
        mean = sum(counts) / len(counts)
        assert abs(mean - 10_000 / 6) < 0.05 * mean, (cycle, mean)
        assert 0.9 * mean <= min(counts) and max(counts) <= 1.1 * mean, (cycle, counts)
    assert len(gaps) == 10_000
    # the feeds that came due during the first pass wait for its end (their dues are
    # later than the first polls'): a second poll waits at most that long, and a cycle
    assert min(gaps) >= 0.9 * 30.0, min(gaps)
    assert max(gaps) <= max(2 * 60.0, first_pass + 60.0) * 1.1, (max(gaps), first_pass)


def test_first_anchor_only_moves_a_place_back_by_a_fifth_at_most() -> None:
    for i in range(200):
        key = f"k{i}"
        back = NOW - first_anchor(due=NOW, key=key, interval=300.0)
        assert timedelta(0) <= back <= timedelta(seconds=(1 - FIRST_PASS_SHARE) * 300.0)
    assert first_anchor(due=NOW, key="k", interval=0.0) == NOW


def test_auto_concurrency_rule(tmp_path: Path, feed_server: FeedServer) -> None:
    assert auto_concurrency([]) == 16
    assert auto_concurrency([300.0] * 1000) == 16  # 6.7 in flight needed: the floor
    assert auto_concurrency([300.0] * 50_000) == 334  # ceil(2 × 166.7)
    assert auto_concurrency([60.0] * 10_000) == 334
    assert auto_concurrency([1.0] * 10_000) == 1024  # the ceiling
    assert auto_concurrency([300.0] * 2400 + [60.0] * 600) == 36  # 2 × (8 + 10)
    # the config: auto by default (per feed interval, else the default interval); a number
    # is used as it is
    feeds = {f"f{i}": feed_server.url(f"/f{i}.rss") for i in range(3000)}
    cfg: Config = load_config(write_config(tmp_path, feeds, interval="60s"))
    assert cfg.fetch.concurrency == "auto" and poll_slots(cfg) == 100
    fixed = load_config(write_config(tmp_path, feeds, interval="60s",
                                     fetch="concurrency: 7"))
    assert poll_slots(fixed) == 7
