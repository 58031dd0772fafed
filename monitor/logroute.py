"""One log stream: the records of other libraries rendered as the project's events.

``setup_logging`` installs one handler on the root logger; ``route_foreign`` adds a filter
to it that turns every record not made by ``monitor.log.Logger`` (APScheduler, slack_sdk,
aiohttp, aiosmtplib, asyncio, Python warnings) into an event with fields, at a level that
suits it, so the text and JSON formatters render them like our own lines:

    scheduler.skipped job=poll                       (APScheduler's "maximum number of
                                                      running instances reached")
    scheduler.missed job=prune late=0:00:02
    scheduler.job_failed job=poll                    (with the traceback)
    slack.retrying handler=… status=429              (debug: slack_sdk says it at info)
    python.warning category=DeprecationWarning …
    aiohttp.log logger=aiohttp.client message="…"    (any other record: the library's name)

Every foreign line carries ``logger=`` (the JSON formatter has it on every line) and the
original text in ``message=``. With ``--log-format json`` uncaught exceptions (of the main
thread, other threads and unraisable ones) are logged too, so every line is JSON.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from types import TracebackType
from typing import Any

# Libraries whose records below these levels are noise at the default level. (Their
# records that pass are still rendered as events; --log-level debug does not lower these.)
LIBRARY_LEVELS: dict[str, int] = {
    "apscheduler": logging.WARNING,
    "aiohttp.access": logging.WARNING,
    "aiohttp.server": logging.WARNING,
    "asyncio": logging.WARNING,
    "aiosmtplib": logging.WARNING,
    "mail.log": logging.WARNING,  # aiosmtpd (tests, the demo)
    "watchfiles": logging.WARNING,
    "asyncpg": logging.WARNING,
    "urllib3": logging.WARNING,
}

_JOB_NAME = re.compile(r'job "([^"(]+?)(?: \(trigger:.*)?"')


def _job(record: logging.LogRecord) -> str:
    """The APScheduler job a record is about: its ``name`` (the first argument is the
    Job), else read from the text."""
    args = record.args if isinstance(record.args, tuple) else ()
    name = getattr(args[0], "name", None) if args else None
    if isinstance(name, str):
        return name
    m = _JOB_NAME.search(record.getMessage())
    return m.group(1) if m else "?"


def foreign_event(record: logging.LogRecord) -> tuple[str, int, dict[str, Any]]:
    """The event name, level and fields of another library's record."""
    name = record.name
    level = record.levelno
    try:
        message = record.getMessage()
    except Exception:  # a broken format string in a library: show what there is
        message = f"{record.msg!r} % {record.args!r}"
    top = name.split(".", 1)[0]
    fields: dict[str, Any] = {"logger": name}
    if top == "apscheduler":
        if "maximum number of running instances reached" in message:
            return "scheduler.skipped", logging.INFO, {**fields, "job": _job(record),
                                                      "why": "the previous run is still going"}
        if "was missed by" in message:
            late = message.rsplit("was missed by", 1)[1].strip()
            return "scheduler.missed", logging.INFO, {**fields, "job": _job(record), "late": late}
        if "raised an exception" in message:
            return "scheduler.job_failed", logging.ERROR, {**fields, "job": _job(record)}
        return "scheduler.log", level, {**fields, "message": message}
    if top == "slack_sdk" and message.startswith("A retry handler found"):
        m = re.search(r"found: (\w+)", message)
        status = re.search(r"status: (\d+)", message)
        out = {**fields, "handler": m.group(1) if m else "?"}
        if status:
            out["status"] = int(status.group(1))
        return "slack.retrying", logging.DEBUG, out
    if name == "py.warnings":
        category = re.search(r":\d+: (\w+): ", message)
        return "python.warning", logging.WARNING, {
            **fields, **({"category": category.group(1)} if category else {}),
            "message": message.strip()}
    if name == "aiohttp.access":
        return "http.access", min(level, logging.DEBUG), {**fields, "message": message}
    return f"{top}.log", level, {**fields, "message": message}


class ForeignRecords(logging.Filter):
    """Rewrites other libraries' records into events (see ``foreign_event``) and drops
    those whose new level is below ``threshold`` (a line demoted to debug)."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "fields"):
            return True  # one of ours (monitor.log.Logger)
        event, level, fields = foreign_event(record)
        record.msg, record.args = event, None
        record.fields = fields
        record.levelno, record.levelname = level, logging.getLevelName(level)
        return level >= self.threshold


_crash = logging.getLogger("monitor.crash")


def _log_uncaught(exc_type: type[BaseException], exc: BaseException,
                  tb: TracebackType | None, where: str) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    _crash.error("monitor.crashed", exc_info=(exc_type, exc, tb),
                 extra={"fields": {"where": where, "error": repr(exc)}})


def _excepthook(exc_type: type[BaseException], exc: BaseException,
                tb: TracebackType | None) -> None:
    _log_uncaught(exc_type, exc, tb, "main")


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback,
                  f"thread {args.thread.name if args.thread else '?'}")


def _unraisablehook(u: Any) -> None:
    exc = u.exc_value
    if exc is None:
        return
    _crash.error("python.unraisable", exc_info=(u.exc_type, exc, u.exc_traceback),
                 extra={"fields": {"error": repr(exc), "object": repr(u.object)[:200]}})


def route_foreign(handler: logging.Handler, *, threshold: int, json: bool) -> None:
    """Put every record through ``handler`` as an event: other libraries' records (see
    ``foreign_event``) and Python warnings; with ``json``, uncaught exceptions too."""
    for f in list(handler.filters):
        if isinstance(f, ForeignRecords):
            handler.removeFilter(f)
    handler.addFilter(ForeignRecords(threshold))
    for name, level in LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(max(level, threshold))
    logging.captureWarnings(True)
    if json:
        sys.excepthook = _excepthook
        threading.excepthook = _thread_excepthook
        sys.unraisablehook = _unraisablehook
    else:  # text: Python's own tracebacks, unless a test harness put its own hooks there
        if sys.excepthook is _excepthook:
            sys.excepthook = sys.__excepthook__
        if threading.excepthook is _thread_excepthook:
            threading.excepthook = threading.__excepthook__
        if sys.unraisablehook is _unraisablehook:
            sys.unraisablehook = sys.__unraisablehook__
