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
