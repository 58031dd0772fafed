"""How a command reports what stopped it: plain text for people (unchanged), or, with
``--log-format json``, one JSON log line per problem, so a log shipper reads every line.

    config.invalid  file=… line=… column=… message=…    one per problem of config.yaml
    rules.invalid   file=… line=… column=… message=…    one per problem of the rule files
    store.failed    kind=full path=… error=… fix=…      the database failed (see StoreError)
    command.failed  error=…                             any other MonitorError
    usage.invalid   error=… usage=…                     the command line itself
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from monitor.errors import ConfigError, MonitorError, Problem, ProblemsError, RulesError, StoreError
from monitor.log import get_logger

log = get_logger("monitor.cli")


def problems_event(e: ProblemsError) -> str:
    if isinstance(e, RulesError):
        return "rules.invalid"
    return "config.invalid" if isinstance(e, ConfigError) else "problems"


def log_problems(event: str, problems: Iterable[Problem], **extra: object) -> None:
    """One error line per located problem (``--log-format json``)."""
    for p in problems:
        fields: dict[str, object] = {"file": p.path, "line": p.line, "column": p.column,
                                     "message": p.message}
        fix = getattr(p, "fix", None)
        if fix:
            fields["fix"] = fix
        log.error(event, **fields, **extra)


def report_error(e: MonitorError, *, as_json: bool) -> None:
    """What ``monitor`` prints when a command stops on ``e``: text on stderr as before,
    or JSON log lines."""
    if isinstance(e, ProblemsError):
        if as_json:
            log_problems(problems_event(e), e.problems)
        else:
            print(str(e), file=sys.stderr)
        return
    if as_json:
        if isinstance(e, StoreError):
            from monitor.shell.trouble import store_fields

            log.error("store.failed", **store_fields(e))
        else:
            log.error("command.failed", error=str(e))
    else:
        print(f"error: {e}", file=sys.stderr)


def say_error(message: str, *, as_json: bool) -> None:
    """A command's own complaint (no such story, nothing to test): as it was, or JSON."""
    if as_json:
        log.error("command.failed", error=message)
    else:
        print(message, file=sys.stderr)


def json_requested(argv: Iterable[str]) -> bool:
    """Whether the command line asks for JSON logs (read before argparse, whose own usage
    errors must then be JSON too)."""
    args = list(argv)
    for i, a in enumerate(args):
        if a == "--log-format=json" or (a == "--log-format" and args[i + 1:i + 2] == ["json"]):
            return True
    return False
