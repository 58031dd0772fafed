"""Build one notifier per configured channel."""

from __future__ import annotations

from monitor.config import Config, EmailChannel, FileChannel, SlackChannel
from monitor.errors import MonitorError
from monitor.log import redact
from monitor.notify.base import Notifier
from monitor.notify.email import EmailNotifier
from monitor.notify.file import FileNotifier
from monitor.notify.slack import SlackNotifier


def build_notifiers(config: Config) -> dict[str, Notifier]:
    """``{channel name: notifier}``. Registers the channels' secrets with the log
    redactor. Relative file paths (a file channel's ``path``, an email channel's
    ``ca_file``) resolve against the config file's directory."""
    if config.unresolved_channels:  # loaded for a command that only reads the store
        raise MonitorError(
            "cannot send: the secrets of channel(s) "
            f"{', '.join(sorted(config.unresolved_channels))} were not resolved")
    out: dict[str, Notifier] = {}
    for name, ch in config.channels.items():
        if isinstance(ch, SlackChannel):
            redact(ch.webhook_url, ch.token)
            out[name] = SlackNotifier(name, ch)
        elif isinstance(ch, EmailChannel):
            redact(ch.password)
            out[name] = EmailNotifier(name, ch, base_dir=config.resolve("."))
        elif isinstance(ch, FileChannel):
            out[name] = FileNotifier(name, ch, base_dir=config.resolve("."))
    return out
