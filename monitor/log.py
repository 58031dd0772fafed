"""Structured logs: one event name plus fields, rendered as ``key=value`` text or JSON lines.

    from monitor.log import get_logger
    log = get_logger(__name__)
    log.info("feed.polled", feed="bbc", status=304, new=0, ms=41)

Values registered with ``redact()`` (webhook URLs, tokens, passwords, credentials in URLs)
are replaced by ``***`` in every rendered line, whatever field or message they hide in,
and so are the user info and credential-named query values of any URL in a line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from monitor.redact import display_url, redact_text

_SECRETS: set[str] = set()


def redact(*values: str | None) -> None:
    """Never print these values (secrets from the config)."""
    for v in values:
        if v and len(v) >= 4:
            _SECRETS.add(v)


def scrub(text: str) -> str:
    """``text`` with every registered secret as ``***`` and every URL in it shown with
    its credentials masked (``monitor.redact``): the last line of defence."""
    return redact_text(text, _SECRETS)


def redact_url(url: str) -> str:
    """``url`` as it may be shown, the user name kept (store URLs in messages and logs):
    ``postgresql://u:***@db/x``; see ``monitor.redact.display_url``."""
    return display_url(url, _SECRETS, keep_user=True)


class Logger:
    """A thin wrapper over ``logging.Logger`` that takes fields as keyword arguments."""

    __slots__ = ("_log",)

    def __init__(self, log: logging.Logger) -> None:
        self._log = log

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._log.isEnabledFor(level):
            exc = fields.pop("exc_info", None)
            self._log.log(level, event, extra={"fields": fields}, exc_info=exc)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    @property
    def debugging(self) -> bool:
        """Whether ``debug`` lines are written: a hot path skips building their fields
        when they are not."""
        return self._log.isEnabledFor(logging.DEBUG)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)


def get_logger(name: str) -> Logger:
    return Logger(logging.getLogger(name))


def _value(v: Any) -> str:
    if isinstance(v, float):
        v = round(v, 3)
    s = str(v)
    if s == "" or any(c in s for c in " \"=\n\t"):
        s = json.dumps(s, ensure_ascii=False)
    return s


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        parts = [f"{ts}Z", record.levelname.lower().ljust(7), record.getMessage()]
        parts += [f"{k}={_value(v)}" for k, v in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return scrub(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        for k, v in fields.items():
            out[k] = v if isinstance(v, int | float | bool | None) else scrub(str(v))
        out["event"] = scrub(out["event"])
        if record.exc_info:
            out["exc"] = scrub(self.formatException(record.exc_info))
        # each value is scrubbed before encoding: scrubbing the encoded line could cut
        # an escape (a URL that ends right before an escaped quote) and break the JSON
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    from monitor.logroute import route_foreign  # other libraries' records, as events

    route_foreign(handler, threshold=root.level, json=fmt == "json")
