"""Delivery under pressure, through a real ``monitor run`` process and the local
Slack-compatible peer: kill -9 in the middle of a send, and a storm of 429s.

* kill -9 while the peer holds a request (accepted, not yet answered): after a restart
  the alert is sent again once its claim runs out (a claim lasts about as long as the
  worst case of sending it, not minutes), so at most that one message repeats, and no
  alert is lost.
* a 429 storm (every request answered 429 with ``Retry-After: 1`` for several seconds):
  the channel pauses for exactly that second each time, without counting against the
  alerts or growing their backoff, and every alert is delivered exactly once afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.feeds import BACKLOG, Item, rss, seed_item
from tests.peers.feedserver import FeedServer
from tests.peers.slackserver import SlackServer
from tests.peers.smtpserver import SMTPServer
from tests.test_daemon import ROOT, DaemonProc, free_port, until, wait_polls

pytestmark = pytest.mark.timeout(180)


def config(feeds: FeedServer, slack: SlackServer, port: int, *, timeout: float) -> str:
    return f"""
feeds:
  - {{name: world, url: '{feeds.url("/world.rss")}', interval: 0.3s}}
defaults: {{jitter: 0}}
rules: rules
store: sqlite:///state.db
channels:
  slack-news:
    type: slack
    token: ${{TEST_SLACK_TOKEN}}
    channel: "{next(iter(slack.channels))}"
    base_url: {slack.api_base_url}
    rate: 100
    timeout: {timeout}s
  email-oncall: {{type: file, path: email.jsonl}}
  audit-file: {{type: file, path: alerts.jsonl}}
delivery: {{retry_min: 0.2s, retry_max: 0.5s, rollup_after: 0, batch: 5}}
fetch: {{parse_in: thread}}
server: {{listen: '127.0.0.1:{port}'}}
"""


@pytest.fixture
async def daemon(tmp_path: Path, feed_server: FeedServer, slack_server: SlackServer
                 ) -> AsyncIterator[DaemonProc]:
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    feed_server.serve("/world.rss", rss(BACKLOG))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config(feed_server, slack_server, free_port(), timeout=2),
                   encoding="utf-8")
    os.environ["TEST_SLACK_TOKEN"] = slack_server.token
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    yield d
    if d.proc is not None and d.proc.returncode is None:
        d.proc.kill()
        await d.proc.wait()
    os.environ.pop("TEST_SLACK_TOKEN", None)


STORIES = [
    seed_item(),
    Item(title="Iran enrichment talks stall as IAEA inspectors are turned away",
         link="https://news.example.org/iran-iaea", guid="iran-iaea",
         description="Iran's nuclear programme: uranium enrichment talks stalled."),
    Item(title="Netanyahu and Hezbollah trade threats as ceasefire frays in Lebanon",
         link="https://news.example.org/hezbollah", guid="hezbollah",
         description="Hezbollah disarmament talks; Israel strikes; ceasefire."),
]


def top_level(slack: SlackServer) -> Counter[str]:
    """Top-level messages per story link (thread replies and edits left out)."""
    out: Counter[str] = Counter()
    for m in slack.messages:
        if m.get("thread_ts"):
            continue
        for it in STORIES:
            if it.link in str(m["payload"]):
                out[it.link] += 1
    return out


async def test_kill_9_during_a_send_repeats_at_most_the_message_in_flight(
    daemon: DaemonProc, feed_server: FeedServer, slack_server: SlackServer
) -> None:
    await daemon.start()
    await wait_polls(feed_server, "/world.rss", 2)  # the backlog: remembered silently
    slack_server.answer_late(1, 60)  # the first post is accepted, then held unanswered
    feed_server.set("/world.rss", rss([*STORIES, *BACKLOG]))
    await until(lambda: len(slack_server.messages) >= 1, "the first post to reach Slack")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)  # while the peer holds that request
    await daemon.proc.wait()
    daemon.close_log()
    held = top_level(slack_server)
    assert sum(held.values()) == 1

    await daemon.start()  # the held claim runs out (about 30 s here), then it is retried
    await until(lambda: set(top_level(slack_server)) == {it.link for it in STORIES}
                and len(slack_server.messages) >= len(STORIES),
                "every story's alert", limit=120)
    await asyncio.sleep(1.0)  # (anything that would repeat more has had its chance)
    counts = top_level(slack_server)
    assert set(counts) == {it.link for it in STORIES}  # none lost
    repeated = {link: n for link, n in counts.items() if n > 1}
    assert set(repeated) <= set(held) and all(n == 2 for n in repeated.values()), counts
    assert await daemon.stop() == 0


async def test_a_429_storm_pauses_the_channel_and_loses_nothing(
    daemon: DaemonProc, feed_server: FeedServer, slack_server: SlackServer
) -> None:
    await daemon.start()
    await wait_polls(feed_server, "/world.rss", 2)
    slack_server.fail_next(6, status=429, retry_after=1)  # about six seconds of storm
    feed_server.set("/world.rss", rss([*STORIES, *BACKLOG]))
    await until(lambda: set(top_level(slack_server)) == {it.link for it in STORIES},
                "every story's alert after the storm", limit=60)
    await asyncio.sleep(1.0)
    counts = top_level(slack_server)
    assert all(n == 1 for n in counts.values()), counts  # each exactly once
    # one request per Retry-After during the storm, not one per alert nor a hammering
    assert slack_server.requests <= 6 + 3 * len(STORIES)
    log = daemon.logtext()
    assert log.count("channel.paused") == 6
    assert "delivery.failed" not in log and "delivery.retry" not in log
    assert await daemon.stop() == 0


def _word(i: int, k: int) -> str:
    """A made-up word, far (in spelling) from every other one here."""
    import hashlib

    h = hashlib.sha256(f"{i}:{k}".encode()).digest()
    return "".join("bcdfghjklmnpqrstvwxz"[b % 20] + "aeiou"[b % 5] for b in h[:4])


async def test_a_burst_of_200_matches_is_bounded_per_channel_and_loses_nothing(
    tmp_path: Path, feed_server: FeedServer, slack_server: SlackServer,
    smtp_server: SMTPServer
) -> None:
    """One poll brings 200 new stories that match one rule. Slack (2 messages/s) and
    email (1/s) get a few roll-ups ("burst: 50 new stories"), not 200 messages each; the
    file channel (no pacing) gets all 200 lines; every delivery is accounted sent."""
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    (tmp_path / "rules" / "burst.yaml").write_text(
        "rules:\n  - name: burst\n    any: [zephyrine]\n"
        "    channels: [slack-news, email-oncall, audit-file]\n", encoding="utf-8")
    feed_server.serve("/world.rss", rss(BACKLOG))
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config(feed_server, slack_server, port, timeout=5)
                   .replace("rate: 100", "rate: 2")
                   .replace("email-oncall: {type: file, path: email.jsonl}",
                            f"email-oncall: {{type: email, host: 127.0.0.1, port: "
                            f"{smtp_server.port}, security: none, from: m@example.org, "
                            f"to: [ops@example.org], rate: 1}}")
                   .replace("rollup_after: 0, batch: 5", "rollup_after: 5s, batch: 50"),
                   encoding="utf-8")
    os.environ["TEST_SLACK_TOKEN"] = slack_server.token
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    burst = [Item(title=f"Zephyrine {' '.join(_word(i, k) for k in range(5))}",
                  link=f"https://wire.example.org/{i}", guid=f"burst-{i}")
             for i in range(200)]
    try:
        await d.start()
        await wait_polls(feed_server, "/world.rss", 2)
        feed_server.set("/world.rss", rss([*burst, *BACKLOG]))

        def lines() -> list[str]:
            p = tmp_path / "alerts.jsonl"
            return p.read_text(encoding="utf-8").splitlines() if p.exists() else []

        def outbox() -> dict[tuple[str, str], int]:
            import sqlite3

            con = sqlite3.connect(tmp_path / "state.db")
            try:
                rows = con.execute("SELECT channel, state, count(*) FROM deliveries "
                                   "GROUP BY channel, state").fetchall()
            finally:
                con.close()
            return {(c, s): n for c, s, n in rows}

        await until(lambda: outbox() == {("slack-news", "sent"): 200,
                                         ("email-oncall", "sent"): 200,
                                         ("audit-file", "sent"): 200},
                    "all 600 deliveries sent", limit=120)
        assert len(lines()) == 200  # the file channel: one line per alert
        slack = slack_server.in_channel(next(iter(slack_server.channels)))
        assert 1 <= len(slack) <= 20, len(slack)  # roll-ups, not 200 messages
        assert all("burst:" in m["text"] and "new stories" in m["text"] for m in slack)
        assert 1 <= len(smtp_server.messages) <= 20, len(smtp_server.messages)
        # every story is named (linked) by a roll-up, none only counted
        named = {f"https://wire.example.org/{i}" for i in range(200)
                 if any(f"https://wire.example.org/{i}|" in json.dumps(m["payload"])
                        for m in slack)}
        assert len(named) == 200
        assert not any("more (see the audit log)" in json.dumps(m["payload"]) for m in slack)
        # and `monitor alerts` accounts for every story on every channel
        import sys

        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "monitor", "--config", str(cfg), "alerts", "--since", "1h",
            "--limit", "1000", "--json", stdout=asyncio.subprocess.PIPE, cwd=str(ROOT))
        stdout, _ = await cli.communicate()
        assert cli.returncode == 0
        listed = json.loads(stdout)["deliveries"]
        assert len(listed) == 600
        by_channel: dict[str, set[str]] = {}
        for row in listed:
            assert row["state"] in ("rolled up", "sent"), row
            by_channel.setdefault(row["channel"], set()).add(row["link"])
        assert {ch: len(links) for ch, links in by_channel.items()} == {
            "slack-news": 200, "email-oncall": 200, "audit-file": 200}
        assert {r["state"] for r in listed if r["channel"] == "slack-news"} == {"rolled up"}
        assert await d.stop() == 0
    finally:
        if d.proc is not None and d.proc.returncode is None:
            d.proc.kill()
            await d.proc.wait()
        os.environ.pop("TEST_SLACK_TOKEN", None)
