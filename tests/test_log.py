"""Structured logs: fields rendered as key=value or JSON, secrets never printed."""

from __future__ import annotations

import json
import logging

import pytest

from monitor.log import JsonFormatter, TextFormatter, get_logger, redact


def record(caplog: pytest.LogCaptureFixture, fmt: logging.Formatter) -> str:
    return fmt.format(caplog.records[-1])


def test_fields_and_redaction(caplog: pytest.LogCaptureFixture) -> None:
    secret = "https://hooks.slack.com/services/T0/B0/verysecret"
    redact(secret, "hunter2pw")
    log = get_logger("monitor.test")
    with caplog.at_level(logging.INFO, logger="monitor.test"):
        log.info("feed.polled", feed="bbc news", status=304, ms=41.23456,
                 error=f"POST {secret} failed; password hunter2pw")
    text = record(caplog, TextFormatter())
    assert " feed.polled " in text and 'feed="bbc news"' in text and "status=304" in text
    assert "ms=41.235" in text
    assert "verysecret" not in text and "hunter2pw" not in text and "***" in text
    data = json.loads(record(caplog, JsonFormatter()))
    assert data["event"] == "feed.polled" and data["status"] == 304 and data["feed"] == "bbc news"
    assert "verysecret" not in json.dumps(data) and "hunter2pw" not in json.dumps(data)


def test_redact_url_hides_only_the_password() -> None:
    from monitor.log import redact_url

    assert redact_url("postgresql://u:s3cret@db:5432/x?schema=a") == "postgresql://u:***@db:5432/x?schema=a"
    assert redact_url("postgresql://u@db/x") == "postgresql://u@db/x"
    assert redact_url("sqlite:///var/lib/monitor/monitor.db") == "sqlite:///var/lib/monitor/monitor.db"
    assert redact_url("postgresql://:pw@db/x") == "postgresql://:***@db/x"
    # urllib cannot read this one (a port that is not a number): still no password shown
    assert redact_url("postgresql://u:pw@db:notaport/x") == "postgresql://u:***@db:notaport/x"
    assert "p@ss" not in redact_url("postgresql://u:p@ss@db/x")


def test_json_lines_stay_json_when_a_masked_url_ends_before_an_escaped_quote() -> None:
    rec = logging.LogRecord("monitor.x", logging.INFO, __file__, 1, "feed.polled", None, None)
    rec.fields = {"title": 'see https://a.example/x?sig=abc"', "n": 3,  # type: ignore[attr-defined]
                  "url": "http://user:pw@host/p?token=zz&q=1"}
    line = JsonFormatter().format(rec)
    data = json.loads(line)  # raised before: the masking ate the backslash of \"
    assert data["title"] == 'see https://a.example/x?sig=***"'
    assert data["url"] == "http://***@host/p?token=***&q=1" and data["n"] == 3
    assert "abc" not in line and "pw" not in line and "zz" not in line
