"""Build one notifier per configured channel.

Each kind's module is imported when a channel of that kind is configured: slack_sdk,
aiosmtplib and the TLS setup cost a start that has no such channel nothing.
"""

from __future__ import annotations

from collections.abc import Collection

from monitor.config import Config, EmailChannel, FileChannel, SlackChannel
from monitor.errors import MonitorError
from monitor.log import redact
from monitor.notify.base import Notifier


def build_notifiers(config: Config, names: Collection[str] | None = None) -> dict[str, Notifier]:
    """``{channel name: notifier}`` (only the channels ``names`` when given: a reload
    builds the channels added or changed). Registers the channels' secrets with the log
    redactor. Relative file paths (a file channel's ``path``, an email channel's
    ``ca_file``) resolve against the config file's directory."""
    if config.unresolved_channels:  # loaded for a command that only reads the store
        raise MonitorError(
            "cannot send: the secrets of channel(s) "
            f"{', '.join(sorted(config.unresolved_channels))} were not resolved")
    return {name: build_notifier(config, name) for name in config.channels
            if names is None or name in names}


def build_notifier(config: Config, name: str) -> Notifier:
    """The notifier of one configured channel (``monitor notify test``): the other
    channels' secrets need not be resolved. Registers its secrets with the log redactor."""
    if name in config.unresolved_channels:
        raise MonitorError(f"cannot send: the secrets of channel {name!r} were not resolved")
    ch = config.channels[name]
    if isinstance(ch, SlackChannel):
        from monitor.notify.slack import SlackNotifier

        redact(ch.webhook_url, ch.token)
        return SlackNotifier(name, ch)
    if isinstance(ch, EmailChannel):
        from monitor.notify.email import EmailNotifier

        redact(ch.password)
        return EmailNotifier(name, ch, base_dir=config.resolve("."))
    assert isinstance(ch, FileChannel)
    from monitor.notify.file import FileNotifier

    return FileNotifier(name, ch, base_dir=config.resolve("."))
