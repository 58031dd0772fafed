"""Digest messages are accepted by the local Slack-compatible and SMTP peers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from monitor.config import EmailChannel, FileChannel, SlackChannel
from monitor.core.model import Alert, Match, Sent, Story
from monitor.notify.email import EmailNotifier
from monitor.notify.file import FileNotifier
from monitor.notify.slack import SlackNotifier
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
