"""The daemon's garbage-collector policy (``monitor.shell.gcpolicy``): what survives a full
collection is frozen, a sweep thaws and collects it, pauses are counted."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import ClassVar

import pytest

from monitor.metrics import Metrics
from monitor.shell import gcpolicy
from monitor.shell.gcpolicy import GcPolicy


class _Cycle:
    freed: ClassVar[list[str]] = []

    def __init__(self, name: str) -> None:
        self.name = name
        self.me = self  # a reference cycle: only the collector frees it

    def __del__(self) -> None:
        _Cycle.freed.append(self.name)


@pytest.fixture
def policy() -> Iterator[GcPolicy]:
    gc.unfreeze()
    p = GcPolicy(Metrics())
    p.install()
    try:
        yield p
    finally:
        p.uninstall()
        gc.collect()


def _metric(m: Metrics, name: str, generation: str) -> float:
    assert m.registry is not None
    value = m.registry.get_sample_value(name, {"generation": generation})
    return 0.0 if value is None else value


def test_a_full_collection_freezes_what_survived_it_and_is_counted(policy: GcPolicy) -> None:
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gc.get_freeze_count() > 0
    assert policy.collections[2] >= 1 and policy.seconds[2] > 0
    assert policy.metrics is not None
    assert _metric(policy.metrics, "monitor_gc_collections_total", "2") >= 1
    assert _metric(policy.metrics, "monitor_gc_seconds_total", "2") > 0
    assert policy.take_max() > 0 and policy.take_max() == 0.0


def test_a_cycle_that_dies_frozen_waits_for_the_sweep(policy: GcPolicy) -> None:
    _Cycle.freed.clear()
    c = _Cycle("frozen")
    gc.collect()  # alive: survives, and is frozen with everything else
    del c
    gc.collect()
    assert _Cycle.freed == []  # frozen: a full collection does not see it
    out = policy.sweep()
    assert _Cycle.freed == ["frozen"]
    assert out["freed"] >= 1 and out["frozen"] > 0
    assert gc.get_freeze_count() > 0  # what is alive is frozen again


def test_a_cycle_that_dies_young_is_collected_as_ever(policy: GcPolicy) -> None:
    _Cycle.freed.clear()
    gc.collect()
    c = _Cycle("young")
    del c
    gc.collect()
    assert _Cycle.freed == ["young"]


def test_uninstall_thaws_and_stops_freezing() -> None:
    gc.unfreeze()
    p = GcPolicy()
    p.install()
    p.install()  # once only
    gc.collect()
    assert gc.get_freeze_count() > 0
    p.uninstall()
    p.uninstall()
    assert gc.get_freeze_count() == 0
    assert p._callback not in gc.callbacks
    gc.collect()
    assert gc.get_freeze_count() == 0


@pytest.fixture
def collector() -> Iterator[None]:
    """The test process's collector as it was, whatever a test did to it."""
    enabled, threshold = gc.isenabled(), gc.get_threshold()
    try:
        yield
    finally:
        gcpolicy.resume()
        gc.unfreeze()
        gc.set_threshold(*threshold)
        (gc.enable if enabled else gc.disable)()


def test_a_one_shot_start_collects_nothing_then_freezes_what_it_built(collector: None) -> None:
    """``monitor once`` as the process: no collection while it starts; once started,
    what the start built is frozen, and young cycles are collected again (less often)."""
    gc.unfreeze()
    gcpolicy.pause_for_start()
    assert not gc.isenabled()
    built = _Cycle("built at start")
    gc.collect(0)  # explicit collections still work: only the automatic ones are off
    assert gc.get_freeze_count() == 0
    gcpolicy.started()
    assert gc.isenabled() and gc.get_threshold() == gcpolicy.ONE_SHOT_THRESHOLD
    assert gc.get_freeze_count() > 0
    _Cycle.freed.clear()
    del built
    young = _Cycle("young")
    del young
    gc.collect()
    assert _Cycle.freed == ["young"]  # the start's objects are out of every collection
    gcpolicy.started()  # a second call changes nothing
    assert gc.isenabled()


def test_started_without_a_pause_leaves_the_callers_collector_alone(collector: None) -> None:
    """``cmd_once`` called in-process (a test, a library): no freeze, no new thresholds."""
    gc.unfreeze()
    before = gc.get_threshold()
    gcpolicy.started()
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before and gc.isenabled()
    gc.disable()  # a caller that turned it off itself: pause_for_start does not own that
    gcpolicy.pause_for_start()
    gcpolicy.started()
    assert not gc.isenabled() and gc.get_freeze_count() == 0


def test_a_start_that_fails_gets_its_collector_back(collector: None) -> None:
    gcpolicy.pause_for_start()
    assert not gc.isenabled()
    gcpolicy.resume()
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gcpolicy.resume()  # nothing paused: nothing to do
    assert gc.isenabled()
