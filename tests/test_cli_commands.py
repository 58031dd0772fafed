"""`monitor alerts`, `monitor notify test` and `monitor once`'s account of alerts and
deliveries, run as a user runs them (a subprocess), against the local peers."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.cli.alerts import shown_states
from monitor.cli.once import print_once
from monitor.core.model import Alert, Delivery, Grouping, Match, Story
from monitor.shell.dispatch import DispatchResult
from monitor.shell.pipeline import PollOutcome
from monitor.store.base import DeliveryRecord, DeliveryStatus
from tests.feeds import BACKLOG, UNRELATED, Item, rss, seed_item
from tests.peers.feedserver import FeedServer
from tests.peers.slackserver import SlackServer
from tests.peers.smtpserver import SMTPServer
from tests.test_cli import monitor, workdir

__all__ = ["workdir"]  # the fixture, shared with test_cli

ROBOTS = "rules:\n  - name: robots\n    any: [robot]\n    channels: [audit-file]\n"


def _use_channel(workdir: Path, name: str, yaml: str) -> None:
    config = (workdir / "config.yaml").read_text()
    old = next(line for line in config.splitlines() if line.startswith(f"  {name}:"))
    (workdir / "config.yaml").write_text(config.replace(old, f"  {name}: {yaml}"))


# -- monitor alerts ----------------------------------------------------------------------


async def test_alerts_lists_sent_held_and_failed_with_the_peers_answer(
    workdir: Path, feed_server: FeedServer, slack_server: SlackServer
) -> None:
    # Slack refuses the token (failed); a digest rule holds the robots story until 08:00
    _use_channel(workdir, "slack-news", f"{{type: slack, token: xoxb-wrong, channel: '#news', "
                 f"base_url: '{slack_server.api_base_url}'}}")
    (workdir / "rules" / "robots.yaml").write_text(ROBOTS + "    digest: '0 8 * * *'\n")
    feed_server.set("/a.rss", rss([seed_item(), UNRELATED, *BACKLOG]))
    rc, out, err = await monitor("once", cwd=workdir)
    assert rc == 0, err

    rc, out, err = await monitor("alerts", "--json", cwd=workdir)
    assert rc == 0, err
    data = json.loads(out)
    rows = {(d["rule"], d["channel"]): d for d in data["deliveries"]}
    assert set(rows) == {("sanctions-deadline", "slack-news"),
                         ("sanctions-deadline", "email-oncall"),
                         ("sanctions-deadline", "audit-file"), ("robots", "audit-file")}
    failed = rows[("sanctions-deadline", "slack-news")]
    assert failed["state"] == "failed" and failed["attempts"] == 1
    assert "invalid_auth" in failed["answer"] and "Witkoff" in failed["headline"]
    assert failed["link"] == "https://news.example.org/witkoff-putin-sanctions"
    sent = rows[("sanctions-deadline", "audit-file")]
    assert sent["state"] == "sent" and sent["sent_at"] and sent["error"] is None
    held = rows[("robots", "audit-file")]
    assert held["state"] == "held" and held["attempts"] == 0 and "Humanoid" in held["headline"]
    assert datetime.fromisoformat(held["next_attempt"]).hour == 8
    assert data["counts"] == {"failed": 1, "sent": 2, "held": 1}
    assert "xoxb-wrong" not in out

    rc, out, _ = await monitor("alerts", "--status", "held", "--json", cwd=workdir)
    assert [d["rule"] for d in json.loads(out)["deliveries"]] == ["robots"]
    rc, out, _ = await monitor("alerts", "--status", "pending", "--json", cwd=workdir)
    assert [d["state"] for d in json.loads(out)["deliveries"]] == ["held"]
    rc, out, _ = await monitor("alerts", "--rule", "sanctions-deadline", "--channel",
                               "email-oncall", "--json", cwd=workdir)
    assert [d["channel"] for d in json.loads(out)["deliveries"]] == ["email-oncall"]

    rc, out, _ = await monitor("alerts", cwd=workdir)
    assert rc == 0
    assert "failed" in out and "peer: slack api: HTTP 200: invalid_auth" in out, out
    assert "held" in out and "due " in out and "Humanoid" in out
    assert "4 deliveries since" in out and "2 sent, 1 held, 1 failed" in out
    assert "monitor outbox retry" in out
    rc, out, _ = await monitor("alerts", "--status", "failed", cwd=workdir)
    assert rc == 0 and "1 delivery since" in out and "(status failed): 1 failed" in out, out
    rc, out, _ = await monitor("alerts", "--rule", "nope", cwd=workdir)
    assert rc == 0 and out.startswith("no deliveries since") and "(rule nope)" in out
    rc, _, err = await monitor("alerts", "--status", "lost", cwd=workdir)
    assert rc == 2 and "invalid choice" in err


async def test_alerts_needs_no_channel_secrets(workdir: Path, feed_server: FeedServer) -> None:
    feed_server.set("/a.rss", rss([seed_item(), *BACKLOG]))
    assert (await monitor("once", cwd=workdir))[0] == 0
    _use_channel(workdir, "slack-news", "{type: slack, token: '${UNSET_SLACK_TOKEN}', "
                 "channel: '#news'}")
    rc, out, err = await monitor("alerts", "--json", cwd=workdir)
    assert rc == 0, err
    assert {d["channel"] for d in json.loads(out)["deliveries"]} == {
        "slack-news", "email-oncall", "audit-file"}


def _record(key: str, *, state: str = "sent", ref: str | None = None, channel: str = "slack",
            digest: str | None = None, next_attempt: datetime | None = None,
            group: Grouping | None = None) -> DeliveryRecord:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    story = Story(id=key, feed="f", title=key, link="", published=now, first_seen=now)
    alert = Alert(story=story, match=Match(rule="r", severity="high", channels=(channel,),
                                           digest=digest, group=group), cluster=key)
    status = DeliveryStatus(id=1, key=key, channel=channel, state=state, attempts=1,
                            created=now, next_attempt=next_attempt, sent_at=None,
                            last_error=None, ref=ref)
    return DeliveryRecord(status=status, rule="r", alert=alert)


def test_states_shown_tell_rolled_up_digest_held_and_due() -> None:
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    records = [
        _record("alone", ref="ts-1"),
        _record("rolled-1", ref="ts-2"), _record("rolled-2", ref="ts-2"),
        _record("other-channel", ref="ts-1", channel="mail"),  # refs are per channel
        _record("digested", ref="ts-3", digest="0 8 * * *"),
        _record("grouped", ref="ts-4", group=Grouping(by=("actors",))),
        _record("file", ref=None), _record("file2", ref=None),  # a file has no refs
        _record("held", state="pending", next_attempt=now + timedelta(hours=1)),
        _record("due", state="pending", next_attempt=now),
        _record("gave-up", state="failed"),
    ]
    assert shown_states(records, now) == [
        "sent", "rolled up", "rolled up", "sent", "digest", "grouped", "sent", "sent", "held",
        "pending", "failed"]


# -- monitor notify test -----------------------------------------------------------------


async def test_notify_test_through_slack_and_its_refusal(
    workdir: Path, slack_server: SlackServer
) -> None:
    _use_channel(workdir, "slack-news", f"{{type: slack, token: '{slack_server.token}', "
                 f"channel: '#news', base_url: '{slack_server.api_base_url}'}}")
    rc, out, err = await monitor("notify", "test", "slack-news", cwd=workdir)
    assert rc == 0, err
    [msg] = slack_server.messages
    assert msg["channel"] == "#news"
    assert "monitor test message — if you see this, channel slack-news works" in msg["text"]
    assert out.startswith("slack-news (slack): OK") and f"{msg['ts']})" in out  # ref C…/ts

    _use_channel(workdir, "slack-news", f"{{type: slack, token: xoxb-wrong, channel: '#news', "
                 f"base_url: '{slack_server.api_base_url}'}}")
    rc, out, _ = await monitor("notify", "test", "slack-news", "--json", cwd=workdir)
    answer = json.loads(out)
    assert rc == 1 and answer["ok"] is False and answer["retry"] is False
    assert "invalid_auth" in answer["error"] and "xoxb-wrong" not in out
    rc, out, _ = await monitor("notify", "test", "slack-news", cwd=workdir)
    assert rc == 1 and "FAILED" in out and "invalid_auth" in out and "permanent" in out


async def test_notify_test_through_email_and_smtp_down(
    workdir: Path, smtp_server: SMTPServer
) -> None:
    _use_channel(workdir, "email-oncall", f"{{type: email, host: {smtp_server.host}, "
                 f"port: {smtp_server.port}, security: none, from: monitor@example.org, "
                 "to: [oncall@example.org]}")
    rc, out, err = await monitor("notify", "test", "email-oncall", "--json", cwd=workdir)
    assert rc == 0, err
    answer = json.loads(out)
    assert answer["ok"] is True and answer["ref"].startswith("<")
    [mail] = smtp_server.messages
    assert "monitor test message" in mail.message["Subject"]
    assert answer["ref"] == mail.message["Message-ID"]

    smtp_server.stop()
    rc, out, _ = await monitor("notify", "test", "email-oncall", cwd=workdir)
    assert rc == 1 and "FAILED" in out and f"{smtp_server.port}" in out
    assert "transient" in out


async def test_notify_test_through_a_file_and_unknown_channels(workdir: Path) -> None:
    rc, out, err = await monitor("notify", "test", "audit-file", cwd=workdir)
    assert rc == 0, err
    assert out.startswith("audit-file (file): OK")
    [line] = (workdir / "audit.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["severity"] == "info" and "channel audit-file works" in record["title"]

    rc, _, err = await monitor("notify", "test", "pager", cwd=workdir)
    assert rc == 1 and "unknown channel 'pager'" in err
    assert "audit-file, email-oncall, slack-news" in err


async def test_notify_test_needs_that_channels_secrets_only(workdir: Path) -> None:
    _use_channel(workdir, "slack-news", "{type: slack, token: '${UNSET_SLACK_TOKEN}', "
                 "channel: '#news'}")
    rc, _, err = await monitor("notify", "test", "audit-file", cwd=workdir)
    assert rc == 0, err
    rc, _, err = await monitor("notify", "test", "slack-news", cwd=workdir)
    assert rc == 1 and "UNSET_SLACK_TOKEN is not set" in err and "config.yaml:" in err, err


# -- monitor once: alerts apart from deliveries ------------------------------------------


async def test_once_counts_alerts_apart_from_deliveries_per_channel(
    workdir: Path, feed_server: FeedServer
) -> None:
    (workdir / "rules" / "robots.yaml").write_text(
        ROBOTS.replace("[audit-file]", "[audit-file, slack-news]"))
    titles = ["Robot vacuum maker files for bankruptcy in Delaware",
              "Surgeons trial a robot arm for knee operations in Leeds",
              "Warehouse robot fleet doubles at Ocado's new Bristol depot",
              "Robot umpires to call balls and strikes in minor league baseball"]
    robots = [Item(title=t, link=f"https://robots.example/{i}", guid=f"https://robots.example/{i}")
              for i, t in enumerate(titles)]
    feed_server.set("/a.rss", rss([seed_item(), *robots, *BACKLOG]))
    rc, out, err = await monitor("once", "--json", cwd=workdir)
    assert rc == 0, err
    data = json.loads(out)
    feeds = {f["feed"]: f for f in data["feeds"]}
    # 1 sanctions story × 3 channels + 4 robot stories × 2 channels
    assert (feeds["a"]["alerts"], feeds["a"]["deliveries"]) == (5, 11)
    assert data["alerts"] == {"fired": 5, "updates": 0}
    d = data["deliveries"]
    assert (d["queued"], d["sent"], d["retrying"], d["failed"]) == (11, 11, 0, 0)
    assert d["channels"] == {
        "audit-file": {"queued": 5, "sent": 5, "rolled_up": 0, "stale": 0, "grouped": 0,
                       "quiet": 0, "held": 0, "retrying": 0, "failed": 0},
        "email-oncall": {"queued": 1, "sent": 1, "rolled_up": 0, "stale": 0, "grouped": 0,
                         "quiet": 0, "held": 0, "retrying": 0, "failed": 0},
        "slack-news": {"queued": 5, "sent": 5, "rolled_up": 0, "stale": 0, "grouped": 0,
                       "quiet": 0, "held": 0, "retrying": 0, "failed": 0},
    }


def test_once_text_says_alerts_deliveries_and_what_each_channel_did(
    capsys: pytest.CaptureFixture[str],
) -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    story = Story(id="s", feed="wire", title="t", link="", published=now, first_seen=now)
    deliveries = []
    for i in range(116):
        s = replace(story, id=f"s{i}")
        for ch in ("slack", "email", "file"):
            m = Match(rule="burst", severity="high", channels=("slack", "email", "file"))
            deliveries.append(Delivery(key=f"{i}{ch}", channel=ch, created=now,
                                       alert=Alert(story=s, match=m, cluster=f"c{i}")))
    outcome = PollOutcome(feed="wire", result="new", stories=116, new=116, alerts=348,
                          deliveries=tuple(deliveries))
    slack = DispatchResult(sent=116, rolled_up=114)
    email = DispatchResult(sent=100, rolled_up=100, retrying=16)
    file = DispatchResult(sent=116)
    result = (DispatchResult(sent=116, rolled_up=114, by_channel={"slack": slack})
              + DispatchResult(sent=100, rolled_up=100, retrying=16, by_channel={"email": email})
              + DispatchResult(sent=116, by_channel={"file": file}))
    print_once([outcome], result)
    out = capsys.readouterr().out.splitlines()
    assert "alerts=116  deliveries=348" in out[0]
    assert out[1] == ("alerts: 116 (stories × rules that fired); 348 deliveries queued "
                      "over 3 channels")
    assert " ".join(out[2].split()) == (
        "email 116 queued, 100 sent (100 rolled up), 16 to retry, 0 failed")
    assert " ".join(out[4].split()) == (
        "slack 116 queued, 116 sent (114 rolled up), 0 to retry, 0 failed")
    assert out[5] == "deliveries: 332 sent (214 rolled up), 16 to retry, 0 failed"
