"""``monitor notify test CHANNEL``: one clearly marked test message through a configured
channel, and the peer's answer.

The first thing to run after setting up Slack or email. The message is an ``info`` alert
about a fixed, fake story ("monitor test message — if you see this, channel X works"),
rendered and sent exactly as real alerts are (same notifier, same rendering), but it
does not go through the outbox: nothing is stored, nothing is retried. Exit 0 when the
peer accepted it (its reference is printed: Slack ``ts``, email Message-ID), 1 when it
refused or could not be reached (its reason is printed, and whether it is worth trying
again). Only this channel's secrets are needed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from monitor.core.model import Alert, Match, SendFailed, SendResult, Story

TEST_LINK = "https://example.com/monitor-notify-test"


def add_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    notify = sub.add_parser("notify", help="channel tools").add_subparsers(
        dest="notify_cmd", required=True)
    p = notify.add_parser(
        "test", help="send a test message through a channel and show the peer's answer",
        description="Sends one clearly marked test message (severity info, a fixed fake "
        "story) through CHANNEL as configured, and prints the peer's answer: the message "
        "reference when it was accepted (exit 0), the reason when not (exit 1). Nothing is "
        "stored or retried. Needs that channel's secrets only.")
    add_common(p)
    p.add_argument("channel", metavar="CHANNEL", help="a channel named in the config")


def test_alert(channel: str, now: datetime) -> Alert:
    """The test message: an info alert about a fake story, unique per second (so that a
    mail server does not take a second test for a duplicate of the first)."""
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    story = Story(
        id=f"monitor-test:{stamp}",
        feed="monitor",
        title=f"monitor test message — if you see this, channel {channel} works",
        link=TEST_LINK,
        summary=(f"Sent by `monitor notify test {channel}` at {now:%Y-%m-%d %H:%M:%S} UTC. "
                 "This is not news; nothing to do."),
        published=now,
        first_seen=now,
    )
    match = Match(rule="monitor-test", severity="info", channels=(channel,))
    return Alert(story=story, match=match, cluster=f"monitor-test-{stamp}",
                 source_names=("monitor",))


async def cmd_notify_test(args: argparse.Namespace) -> int:
    from monitor.cli.main import _print_json
    from monitor.config import find_config, load_config, secrets_of
    from monitor.errors import ConfigError, MonitorError
    from monitor.log import redact, scrub
    from monitor.notify.registry import build_notifier

    path = find_config(args.config)
    config = load_config(path, channel_secrets=False)
    redact(*secrets_of(config))
    name = args.channel
    if name not in config.channels:
        raise MonitorError(f"unknown channel {name!r}; the config has: "
                           f"{', '.join(sorted(config.channels)) or 'no channels'}")
    if name in config.unresolved_channels:
        # the channel's own unset variables, located (not those of the other channels)
        try:
            load_config(path, channel_secrets=True)
        except ConfigError as e:
            mine = [p for p in e.problems if f"channels.{name}." in p.message]
            raise ConfigError(mine or list(e.problems),
                              f"cannot send through {name!r}: its secrets are not set") from e
    kind = getattr(config.channels[name], "type", "?")
    notifier = build_notifier(config, name)
    try:
        outcome: SendResult = await notifier.send(test_alert(name, datetime.now(UTC)))
    except Exception as e:  # a notifier bug: still an answer for the user
        outcome = SendFailed(reason=f"notifier error: {e!r}", retry=False)
    finally:
        await notifier.close()
    if isinstance(outcome, SendFailed):
        reason = config.redact(scrub(outcome.reason))
        if args.json:
            _print_json({"channel": name, "type": kind, "ok": False, "ref": None,
                         "error": reason, "retry": outcome.retry,
                         "retry_after": outcome.retry_after})
        else:
            hint = ("transient: the peer may recover, try again later" if outcome.retry
                    else "permanent: fix the channel's configuration")
            print(f"{name} ({kind}): FAILED: {reason} ({hint})")
        return 1
    if args.json:
        _print_json({"channel": name, "type": kind, "ok": True, "ref": outcome.ref,
                     "error": None, "retry": None, "retry_after": None})
    else:
        ref = f" (ref {outcome.ref})" if outcome.ref else ""
        print(f"{name} ({kind}): OK: the peer accepted the test message{ref}")
    return 0
