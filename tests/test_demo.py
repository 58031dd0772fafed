"""`monitor demo` runs the real pipeline offline and its alerts are the expected ones."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from monitor.cli.demo import run_demo
from tests.test_daemon import ROOT, free_port, until


async def test_demo_alerts_on_the_seed_story_once(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc = await run_demo(keep=str(tmp_path / "demo"), as_json=True)
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert rc == 0
    rounds = {r["round"]: r for r in out["rounds"]}
    assert all(f["result"] == "baseline" for f in rounds[1]["feeds"])
    assert rounds[1]["sent"] == 0
    r3 = {f["feed"]: f for f in rounds[3]["feeds"]}
    assert r3["world-wire"]["result"] == r3["americas-desk"]["result"] == "not-modified"
    assert r3["global-desk"]["new"] == 1
    seed = [e for e in out["delivered"] if e["rule"] == "sanctions-deadline"]
    first = [e for e in seed if not e["update"]]
    assert sorted(e["channel"] for e in first) == ["audit-file", "email-oncall", "slack-news"]
    assert all("Witkoff" in e["title"] and e["round"] == 2 for e in first)
    # the third outlet is an update of the same alert, not a new one
    updates = [e for e in out["delivered"] if e["update"]]
    assert sorted(e["channel"] for e in updates) == ["audit-file", "email-oncall", "slack-news"]
    assert all(e["round"] == 3 and e["sources"] == 3 for e in updates)
    assert rounds[3]["sent"] == len(updates)
    assert out["slack_messages"] == len([e for e in out["delivered"]
                                         if e["channel"] == "slack-news"])
    audit = (tmp_path / "demo" / "alerts.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(audit) == len([e for e in out["delivered"] if e["channel"] == "audit-file"])


async def test_demo_keep_leaves_the_daemon_and_its_status_page_up(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor", "demo", "--keep", str(tmp_path / "kept"),
        "--listen", listen, cwd=str(ROOT),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    page: list[str] = []

    async def fetch() -> None:
        try:
            async with aiohttp.ClientSession() as s, s.get(f"http://{listen}/") as r:
                if r.status == 200:
                    page.append(await r.text())
        except aiohttp.ClientError:
            pass

    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 60
        while not page and loop.time() < end and proc.returncode is None:
            await fetch()
            await asyncio.sleep(0.2)
        assert page, "the status page never answered"
        assert 'data-feed="retired-desk"' in page[0] and "sanctions-deadline" in page[0]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    await until(lambda: proc.returncode is not None, "the demo's exit")
    assert proc.returncode == 0, out.decode()
    assert f"status page: http://{listen}/" in out.decode()
    assert (tmp_path / "kept" / "monitor.db").exists()
