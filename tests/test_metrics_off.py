"""``Metrics(collect=False)`` (``monitor once``): every metric the daemon updates exists
and takes every update the code makes, doing nothing; nothing renders."""

from __future__ import annotations

import subprocess
import sys

import pytest

from monitor.metrics import OFF, Metrics


def test_every_metric_of_the_daemon_exists_switched_off() -> None:
    on, off = Metrics(), Metrics(collect=False)
    names = {k for k, v in vars(on).items() if hasattr(v, "_name")}  # prometheus metrics
    assert names and names == {k for k, v in vars(off).items() if v is OFF}


def test_updates_do_nothing_and_nothing_renders() -> None:
    m = Metrics(collect=False)
    m.polls.labels("f", "ok").inc()
    m.feed_failures.labels("f").set(3)
    m.fetch_seconds.observe(0.2)
    m.feed_failures.remove("f")
    assert m.registry is None
    with pytest.raises(RuntimeError):
        m.render()
    assert b"monitor_polls_total" in Metrics().render()


def test_switched_off_metrics_do_not_import_prometheus() -> None:
    code = ("import sys; from monitor.metrics import Metrics; Metrics(collect=False); "
            "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
