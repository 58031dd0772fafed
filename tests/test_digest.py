"""Digests: messages accepted by the local Slack-compatible and SMTP peers, cron lines read
in a time zone, and digests longer than one message split into parts."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.config import (
    DeliveryConfig,
    EmailChannel,
    FileChannel,
    SlackChannel,
    parse_config,
)
from monitor.core.model import Alert, Delivery, FeedState, Match, SendResult, Sent, Story
from monitor.core.route import Candidate, ClusterFacts, plan
from monitor.core.rules.match import compile_rules
from monitor.core.rules.model import RuleSet
from monitor.core.schedule import next_cron
from monitor.errors import ConfigError, RulesError
from monitor.metrics import Metrics
from monitor.notify.email import EmailNotifier
from monitor.notify.file import FileNotifier
from monitor.notify.render import EMAIL_DIGEST_MAX
from monitor.notify.slack import SlackNotifier
from monitor.shell.dispatch import Dispatcher
from monitor.shell.rulefiles import load_rules
from monitor.store.codec import match_from_dict, match_to_dict
from monitor.store.sqlite import SQLiteStore
from tests.clock import Clock
from tests.peers.slackserver import SlackServer
from tests.peers.smtpserver import SMTPServer

NOW = datetime(2026, 2, 17, 12, 0, tzinfo=UTC)
M = Match(rule="robots", severity="low", channels=("x",), digest="0 * * * *")


def alerts(n: int) -> list[Alert]:
    return [
        Alert(story=Story(id=f"s{i}", feed="bbc", title=f"<!channel> Robot story {i}",
                          link=f"https://example.org/{i}", published=NOW, first_seen=NOW),
              match=M, cluster=f"s{i}")
        for i in range(n)
    ]


async def test_slack_digest_is_one_valid_message(slack_server: SlackServer) -> None:
    n = SlackNotifier("s", SlackChannel(type="slack", webhook_url=slack_server.webhook_url,
                                        rate=100))
    try:
        assert isinstance(await n.send_digest(alerts(30), key="k"), Sent)
    finally:
        await n.close()
    (msg,) = slack_server.messages
    assert slack_server.rejected == []
    text = str(msg["blocks"])
    assert "Robot story 0" in text and "and 10 more" in text
    assert "<!channel>" not in text


async def test_email_digest_lists_every_story(smtp_server: SMTPServer) -> None:
    n = EmailNotifier("e", EmailChannel.model_validate({
        "type": "email", "host": "127.0.0.1", "port": smtp_server.port, "security": "none",
        "from": "m@example.org", "to": ["o@example.org"]}))
    assert isinstance(await n.send_digest(alerts(3), key="k"), Sent)
    (mail,) = smtp_server.messages
    assert "digest robots: 3 stories" in mail.message["Subject"]
    body = mail.message.get_body(("plain",)).get_content()
    assert all(f"Robot story {i}" in body for i in range(3))


async def test_file_digest_writes_one_line_per_story(tmp_path: Path) -> None:
    n = FileNotifier("f", FileChannel(type="file", path="d.jsonl", rate=100), tmp_path)
    assert isinstance(await n.send_digest(alerts(3), key="k"), Sent)
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 3


# -- digests in local time ---------------------------------------------------------------


def test_a_berlin_digest_fires_at_eight_local_in_winter_and_in_summer() -> None:
    """Routed at 12:05 UTC, "0 8 * * 1-5" in Europe/Berlin: the next weekday 08:00 in
    Berlin, which is 07:00 UTC in winter (CET) and 06:00 UTC in summer (CEST)."""
    berlin = Match(rule="morning", severity="low", channels=("slack",), digest="0 8 * * 1-5",
                   digest_tz="Europe/Berlin")

    def due(now: datetime) -> datetime | None:
        story = Story(id="s", feed="bbc", title="t", link="https://example.org/s",
                      published=now, first_seen=now)
        c = Candidate(story=story, facts=ClusterFacts(cluster="c", sources=("bbc",), new=True),
                      matches=(berlin,))
        (d,) = plan(candidates=[c], earlier={}, enabled=frozenset({"morning"}), now=now)
        return d.next_attempt

    # Tuesday 17 February 2026 (CET) → Wednesday 08:00 Berlin = 07:00 UTC
    assert due(datetime(2026, 2, 17, 12, 5, tzinfo=UTC)) == datetime(2026, 2, 18, 7, tzinfo=UTC)
    # Tuesday 16 June 2026 (CEST) → Wednesday 08:00 Berlin = 06:00 UTC
    assert due(datetime(2026, 6, 16, 12, 5, tzinfo=UTC)) == datetime(2026, 6, 17, 6, tzinfo=UTC)
    # Friday evening → Monday; across the change to summer time (29 March 2026)
    assert due(datetime(2026, 3, 27, 18, tzinfo=UTC)) == datetime(2026, 3, 30, 6, tzinfo=UTC)
    # 06:30 UTC on a winter weekday is 07:30 in Berlin: that very morning
    assert due(datetime(2026, 2, 17, 6, 30, tzinfo=UTC)) == datetime(2026, 2, 17, 7, tzinfo=UTC)
    # the same rule without a zone reads the line in UTC
    utc = replace(berlin, digest_tz=None)
    assert next_cron(utc.digest or "", datetime(2026, 2, 17, 12, 5, tzinfo=UTC)) == datetime(
        2026, 2, 18, 8, tzinfo=UTC)


def _rules(tmp_path: Path, body: str, **kw: Any) -> RuleSet:
    (tmp_path / "r.yaml").write_text(body, encoding="utf-8")
    return load_rules(tmp_path, channels={"slack"}, **kw)


def test_a_rules_digest_takes_a_time_zone_or_the_configs(tmp_path: Path) -> None:
    rule = "rules:\n  - name: x\n    any: [Iran]\n    channels: [slack]\n"
    (r,) = _rules(tmp_path, rule + '    digest: {cron: "0 8 * * 1-5", tz: Europe/Berlin}\n').rules
    assert (r.digest, r.digest_tz) == ("0 8 * * 1-5", "Europe/Berlin")
    (r,) = _rules(tmp_path, rule + '    digest: "0 8 * * *"\n').rules
    assert (r.digest, r.digest_tz) == ("0 8 * * *", None)
    # the config's digest.tz is the default; a rule's own zone wins
    (r,) = _rules(tmp_path, rule + '    digest: "0 8 * * *"\n',
                  default_digest_tz="America/New_York").rules
    assert r.digest_tz == "America/New_York"
    (r,) = _rules(tmp_path, rule + '    digest: {cron: "0 8 * * *", tz: Asia/Tokyo}\n',
                  default_digest_tz="America/New_York").rules
    assert r.digest_tz == "Asia/Tokyo"
    (r,) = _rules(tmp_path, rule, default_digest_tz="America/New_York").rules
    assert (r.digest, r.digest_tz) == (None, None)  # no digest, no zone
    # the zone reaches the alert, and the outbox
    (m,) = compile_rules(_rules(tmp_path, rule + '    digest: {cron: "0 8 * * *", '
                                'tz: Europe/Berlin}\n')).match(
        Story(id="s", feed="f", title="Iran talks", link="", published=NOW, first_seen=NOW))
    assert m.digest_tz == "Europe/Berlin"
    assert match_from_dict(match_to_dict(m)) == m


def test_a_bad_digest_zone_is_located(tmp_path: Path) -> None:
    rule = ("rules:\n  - name: x\n    any: [Iran]\n    channels: [slack]\n"
            '    digest: {cron: "0 8 * * 1-5", tz: Europe/Atlantis}\n')
    with pytest.raises(RulesError) as e:
        _rules(tmp_path, rule)
    (p,) = e.value.problems
    assert (p.line, p.column) == (5, 39)
    assert p.message.startswith("rule \"x\": digest: tz: unknown time zone 'Europe/Atlantis'")
    with pytest.raises(RulesError) as e:
        _rules(tmp_path, rule.replace("0 8 * * 1-5", "0 8 * *").replace("Atlantis", "Paris"))
    (p,) = e.value.problems
    assert (p.line, p.column) == (5, 20)
    assert p.message.startswith("rule \"x\": digest: bad cron line '0 8 * *'")
    with pytest.raises(ConfigError) as ce:
        parse_config("digest:\n  tz: Mars/Olympus\n", "config.yaml", env={})
    (p,) = ce.value.problems
    assert str(p).startswith("config.yaml:2:7:") and "unknown time zone 'Mars/Olympus'" in str(p)
    assert parse_config("digest: {tz: Europe/Berlin}\n", "c.yaml", env={}).digest.tz == (
        "Europe/Berlin")


# -- a digest longer than one message is split -------------------------------------------


def _digest_deliveries(n: int, channel: str) -> list[Delivery]:
    return [Delivery(key=f"a:s{i}:robots:{channel}", channel=channel, alert=a, created=NOW,
                     next_attempt=NOW)
            for i, a in enumerate(alerts(n))]


async def _queue(store: SQLiteStore, ds: list[Delivery]) -> None:
    await store.save_poll(FeedState(name="bbc", url="http://x", configured_url="http://x"),
                          [], ds)


def _dispatcher(store: SQLiteStore, notifiers: dict[str, Any], clock: Clock) -> Dispatcher:
    return Dispatcher(store, notifiers, DeliveryConfig(retry_min=10, retry_max=60),
                      Metrics(), clock, rates={ch: 100.0 for ch in notifiers})


async def test_a_45_story_slack_digest_goes_as_three_parts(
    tmp_path: Path, slack_server: SlackServer
) -> None:
    n = SlackNotifier("s", SlackChannel(type="slack", webhook_url=slack_server.webhook_url,
                                        rate=100))
    async with SQLiteStore(tmp_path / "s.db") as store:
        await _queue(store, _digest_deliveries(45, "s"))
        dsp = _dispatcher(store, {"s": n}, Clock(NOW))
        r = await dsp.run_once()
        await dsp.close()
        assert (r.sent, r.retrying, r.failed) == (45, 0, 0)
        assert {d.state for d in await store.deliveries()} == {"sent"}
    assert slack_server.rejected == []
    headers = [m["blocks"][0]["text"]["text"] for m in slack_server.messages]
    assert [h.split(" · ", 1)[1] for h in headers] == [
        "robots · 20 stories · part 1/3", "robots · 20 stories · part 2/3",
        "robots · 5 stories · part 3/3"]
    texts = [str(m["blocks"]) for m in slack_server.messages]
    assert "Robot story 19" in texts[0] and "Robot story 20" in texts[1]
    assert "Robot story 44" in texts[2] and "more" not in "".join(texts)  # nothing left out


async def test_a_failed_part_is_retried_alone_and_no_part_goes_twice(
    tmp_path: Path, slack_server: SlackServer
) -> None:
    class FailsSecondPart(SlackNotifier):
        calls = 0

        async def send_digest(self, alerts: Sequence[Alert], **kw: Any) -> SendResult:
            FailsSecondPart.calls += 1
            if FailsSecondPart.calls == 2:
                slack_server.fail_next(1, status=500)  # the peer fails part 2 of 3
            return await super().send_digest(alerts, **kw)

    n = FailsSecondPart("s", SlackChannel(type="slack", webhook_url=slack_server.webhook_url,
                                          rate=100))
    clock = Clock(NOW)
    async with SQLiteStore(tmp_path / "s.db") as store:
        await _queue(store, _digest_deliveries(45, "s"))
        dsp = _dispatcher(store, {"s": n}, clock)
        r = await dsp.run_once()
        assert (r.sent, r.retrying, r.failed) == (20, 25, 0)  # part 1 went; 2 and 3 wait
        states = Counter(d.state for d in await store.deliveries(limit=100))
        assert states == {"sent": 20, "pending": 25}
        assert len(slack_server.messages) == 1
        clock.advance(minutes=10)
        r = await dsp.run_once()
        await dsp.close()
        assert (r.sent, r.retrying, r.failed) == (25, 0, 0)
    # every story exactly once: the retry sends what was left, split anew
    listed = [int(i) for m in slack_server.messages
              for i in re.findall(r"Robot story (\d+)", str(m["blocks"]))]
    assert sorted(listed) == list(range(45))
    headers = [m["blocks"][0]["text"]["text"] for m in slack_server.messages]
    assert [h.split(" · ", 1)[1] for h in headers] == [
        "robots · 20 stories · part 1/3", "robots · 20 stories · part 1/2",
        "robots · 5 stories · part 2/2"]


async def test_an_email_digest_is_split_above_its_size(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    n = EmailNotifier("e", EmailChannel.model_validate({
        "type": "email", "host": "127.0.0.1", "port": smtp_server.port, "security": "none",
        "from": "m@example.org", "to": ["o@example.org"], "rate": 100}))
    async with SQLiteStore(tmp_path / "s.db") as store:
        await _queue(store, _digest_deliveries(EMAIL_DIGEST_MAX + 30, "e"))
        dsp = _dispatcher(store, {"e": n}, Clock(NOW))
        r = await dsp.run_once()
        await dsp.close()
        assert r.sent == EMAIL_DIGEST_MAX + 30
    subjects = [m.message["Subject"] for m in smtp_server.messages]
    assert subjects == [f"[LOW] digest robots: {EMAIL_DIGEST_MAX} stories (part 1/2)",
                        "[LOW] digest robots: 30 stories (part 2/2)"]
    ids = {m.message["Message-ID"] for m in smtp_server.messages}
    assert len(ids) == 2
