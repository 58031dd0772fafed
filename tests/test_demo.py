"""`monitor demo` runs the real pipeline offline and its alerts are the expected ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from monitor.demo import run_demo


async def test_demo_alerts_on_the_seed_story_once(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc = await run_demo(keep=str(tmp_path / "demo"), as_json=True)
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert rc == 0
    rounds = {r["round"]: r for r in out["rounds"]}
    assert all(f["result"] == "baseline" for f in rounds[1]["feeds"])
    assert rounds[1]["sent"] == 0
    assert all(f["result"] == "not-modified" for f in rounds[3]["feeds"])
    assert rounds[3]["sent"] == 0
    seed = [e for e in out["delivered"] if e["rule"] == "sanctions-deadline"]
    assert sorted(e["channel"] for e in seed) == ["audit-file", "email-oncall", "slack-news"]
    assert all("Witkoff" in e["title"] and e["round"] == 2 for e in seed)
    assert out["slack_messages"] == len([e for e in out["delivered"]
                                         if e["channel"] == "slack-news"])
    audit = (tmp_path / "demo" / "alerts.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(audit) == len([e for e in out["delivered"] if e["channel"] == "audit-file"])
