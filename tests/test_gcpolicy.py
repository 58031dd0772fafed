"""The daemon's garbage-collector policy (``monitor.shell.gcpolicy``): what survives a full
collection is frozen, a sweep thaws and collects it, pauses are counted."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import ClassVar

import pytest

from monitor.metrics import Metrics
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
