"""The capacity benchmark's arithmetic (``bench/bench_capacity.py``): the fetch scaling
rule, quantiles from a Prometheus histogram, 10-second windows, /metrics parsing, the
SQLite store's size in use."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

from bench.bench_capacity import (
    bucket_quantile,
    fetch_settings,
    parse_metrics,
    sqlite_used_bytes,
    window_stats,
)


def test_the_fetch_rule_scales_the_defaults_to_one_and_a_half_times_the_demand() -> None:
    assert fetch_settings(50000, 300)["concurrency"] == 256  # 167 polls/s needed
    assert fetch_settings(50000, 300)["per_host"] == 32
    assert fetch_settings(2000, 60)["concurrency"] == 64
    assert fetch_settings(100, 300)["concurrency"] == 16  # never below the defaults


def test_bucket_quantile_interpolates_within_the_bucket_as_prometheus_does() -> None:
    cum = {0.5: 50.0, 1.0: 90.0, 5.0: 100.0, math.inf: 100.0}
    assert bucket_quantile(cum, 0.5) == 0.5
    assert bucket_quantile(cum, 0.7) == 0.75  # 20 of the 40 in (0.5, 1]
    assert bucket_quantile(cum, 0.99) == 1.0 + 4.0 * 0.9
    assert bucket_quantile({0.5: 0.0, math.inf: 0.0}, 0.5) is None
    # past the last finite bucket: its bound, as histogram_quantile says
    assert bucket_quantile({1.0: 10.0, math.inf: 20.0}, 0.9) == 1.0


def test_window_stats_counts_whole_windows_and_flags_the_empty_ones() -> None:
    times = [0.5, 1.0, 2.0, 11.0, 25.0, 26.0, 27.0, 28.0, 45.0]
    got = window_stats(times, 0.0, 40.0)  # windows of 3, 1, 4 and 0 polls (45.0 is out)
    assert (got["windows"], got["min"], got["max"]) == (4, 0, 4)
    assert got["mean"] == 2.0 and got["min_over_mean"] == 0.0
    assert got["below_half_mean"] == 1  # only the empty one: 1 is not below 2 / 2
    assert window_stats(times, 0.0, 5.0) == {"windows": 0}


def test_parse_metrics_reads_labelled_samples_of_the_names_asked() -> None:
    text = ('# HELP x\nmonitor_store_queries_total{op="save_poll"} 12.0\n'
            'monitor_store_queries_total{op="claim_due_feeds"} 3.0\n'
            'monitor_poll_lag_seconds_bucket{le="+Inf"} 7.0\nother 1\n')
    got = parse_metrics(text, {"monitor_store_queries_total"})
    assert got == [("monitor_store_queries_total", {"op": "save_poll"}, 12.0),
                   ("monitor_store_queries_total", {"op": "claim_due_feeds"}, 3.0)]
    (lag,) = parse_metrics(text, {"monitor_poll_lag_seconds_bucket"})
    assert math.isinf(float(lag[1]["le"]))


def test_sqlite_used_bytes_counts_pages_in_use_not_freed_ones(tmp_path: Path) -> None:
    """Store growth counts the pages holding data (committed, WAL included): rows that a
    rewrite deleted leave free pages that the file keeps but the data does not."""
    db = tmp_path / "monitor.db"
    assert sqlite_used_bytes(db) == 0.0  # not created yet
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("CREATE TABLE t (x BLOB)")
    empty = sqlite_used_bytes(db)
    con.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                "WHERE i < 2000) INSERT INTO t SELECT randomblob(1000) FROM n")
    full = sqlite_used_bytes(db)  # committed to the WAL, not checkpointed yet
    assert full - empty >= 2000 * 1000
    con.execute("DELETE FROM t")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    files = sum(p.stat().st_size for p in tmp_path.glob("monitor.db*"))
    assert sqlite_used_bytes(db) < empty + 10 * 4096 < files
    con.close()
