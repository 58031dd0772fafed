"""Quiet hours per channel: the window (pure, an IANA zone, across midnight and DST
days), and dispatch holding alerts during it and sending them as one digest after it,
against the local Slack-compatible server and the file channel, on a fake clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.config import DeliveryConfig, FileChannel, QuietHours, SlackChannel, parse_config
from monitor.core.model import Alert, Delivery, FeedState, Match, Story
from monitor.core.schedule import last_quiet_window, quiet_window
from monitor.errors import ConfigError
from monitor.metrics import Metrics
from monitor.notify.base import Notifier
from monitor.notify.file import FileNotifier
from monitor.notify.slack import SlackNotifier
from monitor.shell.dispatch import Dispatcher
from monitor.store.base import StoredStory
from monitor.store.sqlite import SQLiteStore
from tests.clock import Clock
from tests.peers.slackserver import SlackServer

BERLIN = "Europe/Berlin"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- the window (pure) ----------------------------------------------------------------------


def test_a_window_across_midnight_in_berlin() -> None:
    # winter: Berlin is UTC+1, so 22:00–07:00 is 21:00–06:00 UTC
    win = (utc("2026-01-15 21:00"), utc("2026-01-16 06:00"))
    assert quiet_window(utc("2026-01-15 20:59"), "22:00", "07:00", BERLIN) is None
    assert quiet_window(utc("2026-01-15 21:00"), "22:00", "07:00", BERLIN) == win
    assert quiet_window(utc("2026-01-15 23:30"), "22:00", "07:00", BERLIN) == win  # 00:30
    assert quiet_window(utc("2026-01-16 05:59"), "22:00", "07:00", BERLIN) == win
    assert quiet_window(utc("2026-01-16 06:00"), "22:00", "07:00", BERLIN) is None
    assert last_quiet_window(utc("2026-01-16 06:00"), "22:00", "07:00", BERLIN) == win
    assert last_quiet_window(utc("2026-01-16 20:00"), "22:00", "07:00", BERLIN) == win
    # a window inside one day
    assert quiet_window(utc("2026-01-15 12:30"), "13:00", "14:00", BERLIN) == (
        utc("2026-01-15 12:00"), utc("2026-01-15 13:00"))


def test_a_window_on_dst_change_days() -> None:
    # 2026-03-29: clocks go forward at 02:00 CET; the night is an hour shorter
    spring = (utc("2026-03-28 21:00"), utc("2026-03-29 05:00"))  # 22:00 CET – 07:00 CEST
    assert quiet_window(utc("2026-03-29 01:30"), "22:00", "07:00", BERLIN) == spring
    assert quiet_window(utc("2026-03-29 04:59"), "22:00", "07:00", BERLIN) == spring
    assert quiet_window(utc("2026-03-29 05:00"), "22:00", "07:00", BERLIN) is None
    # the next evening starts in summer time: 22:00 CEST = 20:00 UTC
    assert quiet_window(utc("2026-03-29 20:00"), "22:00", "07:00", BERLIN) == (
        utc("2026-03-29 20:00"), utc("2026-03-30 05:00"))
    # 2026-10-25: clocks go back at 03:00 CEST; the night is an hour longer
    autumn = (utc("2026-10-24 20:00"), utc("2026-10-25 06:00"))  # 22:00 CEST – 07:00 CET
    assert quiet_window(utc("2026-10-25 05:30"), "22:00", "07:00", BERLIN) == autumn
    assert last_quiet_window(utc("2026-10-25 06:00"), "22:00", "07:00", BERLIN) == autumn
    # a window that starts in the hour the clocks skip starts when the clocks say
    assert quiet_window(utc("2026-03-29 01:30"), "02:30", "06:00", BERLIN) == (
        utc("2026-03-29 01:30"), utc("2026-03-29 04:00"))


def test_quiet_config_is_validated_with_a_location() -> None:
    def problems(quiet: str) -> list[str]:
        text = f"channels:\n  audit:\n    type: file\n    path: a.jsonl\n    quiet: {quiet}\n"
        with pytest.raises(ConfigError) as info:
            parse_config(text, "c.yaml", {})
        return [str(p) for p in info.value.problems]

    assert problems('{from: "25:00", to: "07:00"}') == [
        "c.yaml:5:19: channels.audit.quiet.from: '25:00' is not a time of day HH:MM "
        "(00:00 to 23:59)"]
    [tz] = problems('{from: "22:00", to: "07:00", tz: Europe/Berlln}')
    assert tz.startswith("c.yaml:5:45: channels.audit.quiet.tz: unknown time zone "
                         "'Europe/Berlln'"), tz
    [same] = problems('{from: "22:00", to: "22:00"}')
    assert same.startswith("c.yaml:5:12: channels.audit.quiet: from and to are both 22:00")
    [sev] = problems('{from: "22:00", to: "07:00", except_severity: [urgent]}')
    assert sev.startswith("c.yaml:5:59: channels.audit.quiet.except_severity.0:"), sev
    [extra] = problems('{from: "22:00", to: "07:00", timezone: UTC}')
    assert extra.startswith("c.yaml:5:"), extra
    # an unquoted 22:00 (YAML 1.1 reads 1320) is taken as meant
    cfg = parse_config("channels:\n  audit:\n    type: file\n    path: a.jsonl\n"
                       "    quiet: {from: 22:00, to: 07:00, tz: Europe/Berlin, "
                       "except_severity: critical}\n", "c.yaml", {})
    q = cfg.channels["audit"].quiet
    assert q == QuietHours.model_validate({"from": "22:00", "to": "07:00", "tz": BERLIN,
                                           "except_severity": ["critical"]})


# -- dispatch -------------------------------------------------------------------------------

QUIET = QuietHours.model_validate({"from": "22:00", "to": "07:00", "tz": BERLIN,
                                   "except_severity": ["critical"]})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "s.db") as s:
        yield s


class Queue:
    def __init__(self, store: SQLiteStore, clock: Clock) -> None:
        self.store, self.clock, self.n = store, clock, 0

    async def alerts(self, channel: str, n: int = 1, *, severity: str = "high") -> None:
        now = self.clock()
        ds, stories = [], []
        for _ in range(n):
            self.n += 1
            s = Story(id=f"s{self.n}", feed="bbc", title=f"Headline number {self.n}",
                      link=f"https://example.org/s{self.n}", published=now, first_seen=now)
            m = Match(rule="sanctions", severity=severity, channels=(channel,))
            ds.append(Delivery(key=f"a:s{self.n}:sanctions:{channel}", channel=channel,
                               created=now, alert=Alert(story=s, match=m, cluster=s.id)))
            stories.append(StoredStory(story=s, cluster=s.id))
        await self.store.save_poll(FeedState(name="bbc", url="http://x",
                                             configured_url="http://x"), stories, ds)


def dispatcher(store: SQLiteStore, notifiers: dict[str, Notifier], clock: Clock) -> Dispatcher:
    return Dispatcher(store, notifiers, DeliveryConfig(retry_min=10, retry_max=60), Metrics(),
                      clock, rates={ch: 100.0 for ch in notifiers},
                      quiet={ch: QUIET for ch in notifiers})


async def test_held_during_the_window_one_digest_after_and_critical_passes(
    store: SQLiteStore, slack_server: SlackServer
) -> None:
    clock = Clock(utc("2026-01-15 21:30"))  # 22:30 in Berlin
    q = Queue(store, clock)
    slack = SlackNotifier("slack", SlackChannel(type="slack", webhook_url=slack_server.webhook_url,
                                                rate=100))
    dsp = dispatcher(store, {"slack": slack}, clock)
    await q.alerts("slack", 3)
    await q.alerts("slack", severity="critical")
    r = await dsp.run_once()
    assert (r.sent, r.held, r.failed, r.retrying) == (1, 3, 0, 0)  # the critical one
    assert "Headline number 4" in json.dumps(slack_server.messages[0]["payload"])
    clock.now = utc("2026-01-16 02:00")  # 03:00 in Berlin: still quiet
    await q.alerts("slack", 2)
    r = await dsp.run_once()
    assert (r.sent, r.held) == (0, 2)
    rows = await store.deliveries(state="pending")
    assert len(rows) == 5 and {row.attempts for row in rows} == {0}  # held is no attempt
    assert {row.next_attempt for row in rows} == {utc("2026-01-16 06:00")}
    clock.now = utc("2026-01-16 05:59")
    assert (await dsp.run_once()).sent == 0
    clock.now = utc("2026-01-16 06:00")  # 07:00: the window is over
    r = await dsp.run_once()
    # 8.5 hours old, older than delivery.max_age: still the quiet digest, not "stale"
    assert (r.sent, r.quiet, r.stale) == (5, 5, 0)
    assert len(slack_server.messages) == 2
    digest = slack_server.messages[1]
    assert digest["text"] == "While you were away (22:00\u201307:00): 5 stories"
    body = json.dumps(digest["payload"])
    assert all(f"Headline number {i}" in body for i in (1, 2, 3, 5, 6))
    assert {row.state for row in await store.deliveries()} == {"sent"}
    # in the day, alerts go out one by one again
    clock.now = utc("2026-01-16 09:00")
    await q.alerts("slack")
    assert ((await dsp.run_once()).sent, len(slack_server.messages)) == (1, 3)
    await dsp.close()


async def test_a_window_across_the_dst_change_to_the_file_channel(
    store: SQLiteStore, tmp_path: Path
) -> None:
    clock = Clock(utc("2026-03-28 22:00"))  # 23:00 CET, the night the clocks go forward
    q = Queue(store, clock)
    audit = FileNotifier("audit", FileChannel(type="file", path="audit.jsonl"), tmp_path)
    dsp = dispatcher(store, {"audit": audit}, clock)
    await q.alerts("audit", 2)
    assert (await dsp.run_once()).held == 2
    clock.now = utc("2026-03-29 04:30")  # 06:30 CEST: still quiet
    await q.alerts("audit", 1)
    assert (await dsp.run_once()).held == 1
    assert not (tmp_path / "audit.jsonl").exists()
    clock.now = utc("2026-03-29 05:00")  # 07:00 CEST, an hour earlier in UTC than in winter
    r = await dsp.run_once()
    assert (r.sent, r.quiet) == (3, 3)
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert [json.loads(x)["title"] for x in lines] == [f"Headline number {i}" for i in (1, 2, 3)]
    await dsp.close()


async def test_a_long_queue_held_overnight_is_still_one_digest(
    store: SQLiteStore, slack_server: SlackServer
) -> None:
    """More held alerts than one claim takes: the end-of-window digest claims them all,
    and, as more than a Slack message lists (20), goes in parts that name every story."""
    clock = Clock(utc("2026-01-15 23:00"))
    q = Queue(store, clock)
    slack = SlackNotifier("slack", SlackChannel(type="slack", webhook_url=slack_server.webhook_url,
                                                rate=100))
    dsp = Dispatcher(store, {"slack": slack}, DeliveryConfig(batch=10, rollup_after=0),
                     Metrics(), clock, quiet={"slack": QUIET})
    await q.alerts("slack", 120)
    assert (await dsp.run_once()).held == 120
    clock.now = utc("2026-01-16 06:00") + timedelta(minutes=1)
    r = await dsp.run_once()
    assert (r.sent, r.quiet) == (120, 120)
    assert [m["text"] for m in slack_server.messages] == [
        f"While you were away (22:00\u201307:00): 120 stories · part {k}/6"
        for k in range(1, 7)]
    listed = json.dumps([m["payload"]["blocks"] for m in slack_server.messages])
    assert "more (see the audit log)" not in listed
    await dsp.close()
