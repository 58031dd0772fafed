"""Pure feed-health decisions: is a feed failing, silent, back; is a notice due now.

The shell (``monitor.shell.ops``) calls ``review`` after every poll with the feed's new
state and saves what it returns, the state and the notices, in the poll's transaction:
a notice is an outbox delivery like any alert, so it is durable, retried, and never
sent twice (its key is derived from the streak it is about).

A feed's *condition* (``condition``), as ``monitor feeds`` shows it:

* ``new``     never polled successfully, and not failing either (not polled yet);
* ``gone``    the server answered 410 Gone (the feed is not polled any more);
* ``failing`` its last poll failed (``failures`` > 0);
* ``silent``  polls succeed, but no new story for far longer than the feed's usual
  cadence: more than ``max(silent_after_factor × cadence, silent_after_min)`` since the
  last new story (a feed whose cadence is not known yet is never silent);
* ``ok``      otherwise.

Notices (``review``), to ``health.channel`` only (none without it; the state is kept
all the same):

* ``ops:feed-failing:<feed>:<streak start>:<channel>`` once a feed has been failing for
  ``feed_failing_after`` (a feed that answered 410 Gone at once: it is not polled again);
* ``ops:feed-silent:<feed>:<last new story>:<channel>`` once a feed is silent;
* ``ops:feed-recovered:<feed>:<the notice's key>`` when the feed with an open notice
  is back (a failing feed's first successful poll, a silent feed's first new story),
  threaded under the notice (``parent_key``) when it went to the same channel.

One notice is open at a time: a silent feed that starts failing has said it is in
trouble already; its recovery notice comes once it is ``ok``.

A notice is an ``Alert`` whose rule is ``monitor:<kind>`` (``is_operational``), whose
story is the notice's text (title: what happened; summary: the details), with no link.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Literal

from monitor.core.model import Alert, Delivery, FeedState, Match, Story

Condition = Literal["new", "ok", "failing", "silent", "gone"]

OPS_RULE_PREFIX = "monitor:"
CADENCE_SAMPLES = 32  # publication times kept per feed
CADENCE_MIN_GAPS = 3  # a cadence needs at least this many gaps between publications
# publications this close to the previous one are one burst (a newsletter posting ten
# items at once publishes once, not ten times)
BURST = timedelta(minutes=15)


@dataclass(frozen=True, kw_only=True, slots=True)
class HealthSettings:
    """``health:`` of config.yaml, in seconds."""

    channel: str | None = None  # where notices go; None: none are sent
    failing_after: float = 3600.0
    silent_factor: float = 6.0
    silent_min: float = 6 * 3600.0


def is_operational(alert: Alert) -> bool:
    """An operational notice (``monitor:feed-failing`` …), not a news alert."""
    return alert.match.rule.startswith(OPS_RULE_PREFIX)


# -- cadence ------------------------------------------------------------------------------


def cadence(times: Iterable[datetime]) -> float | None:
    """The feed's usual time between publications, in seconds; None when not known.

    The median gap between publications, robust to a few odd ones (a late correction,
    a weekend): times within ``BURST`` of the previous kept one are one publication;
    at least ``CADENCE_MIN_GAPS`` gaps are needed.

    Not ``schedule.learn_cadence``, on purpose: the poll interval's cadence counts the
    open gap since the newest entry (a feed that went quiet is polled less), which would
    make a silent feed's cadence grow with its silence and never look silent; this one
    is the feed's habit while it publishes, which silence is measured against.
    """
    events: list[datetime] = []
    for t in sorted(times):
        if not events or t - events[-1] >= BURST:
            events.append(t)
    gaps = [(b - a).total_seconds() for a, b in pairwise(events)]
    if len(gaps) < CADENCE_MIN_GAPS:
        return None
    return float(statistics.median(gaps))


def remember_news(state: FeedState, published: Sequence[datetime], *, now: datetime) -> FeedState:
    """The state after a poll that found new stories published at ``published``: the
    last new story is now, and their times (none later than now) join the samples."""
    if not published:
        return state
    samples = sorted({*state.story_times, *(min(t, now) for t in published)})
    return replace(state, last_new_story=now,
                   story_times=tuple(samples[-CADENCE_SAMPLES:]))


# -- condition ----------------------------------------------------------------------------


def silent_after(state: FeedState, settings: HealthSettings) -> float | None:
    """Seconds without a new story after which the feed is silent (None: never)."""
    c = cadence(state.story_times)
    if c is None:
        return None
    return max(settings.silent_factor * c, settings.silent_min)


def condition(state: FeedState, settings: HealthSettings, *, now: datetime) -> Condition:
    """See the module docstring."""
    if state.gone:
        return "gone"
    if state.failures:
        return "failing"
    if state.last_success is None:
        return "new"
    limit = silent_after(state, settings)
    if (limit is not None and state.last_new_story is not None
            and (now - state.last_new_story).total_seconds() > limit):
        return "silent"
    return "ok"


def failing_long(state: FeedState, settings: HealthSettings, *, now: datetime) -> bool:
    """Failing for at least ``failing_after`` (gone: at once, it is not polled again)."""
    if state.gone:
        return True
    if not state.failures:
        return False
    since = state.failing_since or state.last_polled
    return since is not None and (now - since).total_seconds() >= settings.failing_after


# -- notices ------------------------------------------------------------------------------


def notice_kind(key: str) -> str:
    """``feed-failing`` of ``ops:feed-failing:...``."""
    return key.split(":", 2)[1] if key.count(":") >= 2 else ""


def _ts(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ") if dt else "-"


def _words(seconds: float) -> str:
    """``3h 20m``, ``2d 4h``, ``45m``, ``30s``: a duration as a person reads it."""
    s = round(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] * bool(d) + [f"{h}h"] * bool(h) + [f"{m}m"] * bool(m and not d)
    return " ".join(parts) or f"{s}s"


def duration_words(seconds: float | None) -> str:
    return "-" if seconds is None else _words(seconds)


def _notice(key: str, channel: str, feed: str, rule: str, severity: str, title: str,
            details: str, now: datetime, parent_key: str | None = None) -> Delivery:
    story = Story(id=key, feed=feed, title=title, link="", summary=details,
                  published=now, first_seen=now)
    match = Match(rule=f"{OPS_RULE_PREFIX}{rule}", severity=severity, channels=(channel,))
    return Delivery(key=key, channel=channel, created=now, parent_key=parent_key,
                    alert=Alert(story=story, match=match, cluster=key))


def review(
    state: FeedState, settings: HealthSettings, *, now: datetime, shown_error: str | None = None,
) -> tuple[FeedState, list[Delivery]]:
    """The feed's state (its open ``notice``) and the notices due now, after a poll.

    ``shown_error``: the feed's last error as it may be shown (redacted by the caller);
    default ``state.last_error``. Without ``settings.channel`` nothing is due and the
    state is returned as it is.
    """
    channel = settings.channel
    if channel is None:
        return state, []
    name = state.name
    error = shown_error if shown_error is not None else (state.last_error or "")
    cond = condition(state, settings, now=now)
    if state.notice is not None:
        kind = notice_kind(state.notice)
        was = "failing" if kind == "feed-failing" else "silent"
        # a failing feed is back at its first successful poll (silent or not: that is
        # the next question); a silent one at its first new story
        back = not (state.failures or state.gone) if was == "failing" else cond in ("ok", "new")
        if not back:
            return state, []  # one open notice at a time
        what = ("polls succeed again" if was == "failing"
                else "new stories are coming in again")
        parent = state.notice if state.notice.endswith(f":{channel}") else None
        d = _notice(f"ops:feed-recovered:{name}:{state.notice}", channel, name,
                    "feed-recovered", "info",
                    f"monitor: feed {name!r} has recovered ({what})",
                    f"Feed {name!r} is back to normal at {_ts(now)}: {what}.", now, parent)
        return replace(state, notice=None), [d]
    if failing_long(state, settings, now=now):
        since = state.failing_since or state.last_polled
        how = "is gone (HTTP 410)" if state.gone else "is failing"
        span = f" for {_words((now - since).total_seconds())}" if since and not state.gone else ""
        last_ok = (f"Last successful poll: {_ts(state.last_success)}." if state.last_success
                   else "It has never been polled successfully.")
        key = f"ops:feed-failing:{name}:{_ts(since)}:{channel}"
        d = _notice(key, channel, name, "feed-failing", "warning",
                    f"monitor: feed {name!r} {how}{span}: {error}".rstrip(": "),
                    f"Feed {name!r} {how}{span} ({state.failures} failed poll"
                    f"{'' if state.failures == 1 else 's'} in a row since {_ts(since)}). "
                    f"Last error: {error or 'unknown'}. {last_ok} No news from it reaches "
                    "you meanwhile.", now)
        return replace(state, notice=key), [d]
    if cond == "silent":
        limit = silent_after(state, settings) or 0.0
        quiet = (now - state.last_new_story).total_seconds() if state.last_new_story else 0.0
        key = f"ops:feed-silent:{name}:{_ts(state.last_new_story)}:{channel}"
        d = _notice(key, channel, name, "feed-silent", "warning",
                    f"monitor: feed {name!r} is silent: no new story for {_words(quiet)}",
                    f"Feed {name!r} answers, but its last new story came {_words(quiet)} ago "
                    f"({_ts(state.last_new_story)}); it usually publishes every "
                    f"{duration_words(cadence(state.story_times))} (silent after "
                    f"{_words(limit)}). The feed may have moved or stopped updating.", now)
        return replace(state, notice=key), [d]
    return state, []


# -- channels ---------------------------------------------------------------------------


def ops_target(channel: str, health_channel: str | None, fallback: str | None) -> str | None:
    """Where a notice about ``channel`` goes: ``health.channel``, or ``health.fallback``
    when the broken channel is the health channel itself; None when neither can carry
    it (no health channel, or no fallback other than the broken channel)."""
    target = fallback if channel == health_channel else health_channel
    return target if target is not None and target != channel else None


def channel_review(
    channel: str, *, failing: bool, recovered: bool, open_notice: str | None,
    since: datetime | None, error: str, health_channel: str | None, fallback: str | None,
    now: datetime,
) -> tuple[str | None, list[Delivery]]:
    """The channel's open notice and the notices due now, after one of its sends.

    ``failing``: its deliveries keep failing (``ChannelHealth.failing``); ``recovered``:
    its last send went through. One "failing" notice per streak (its key names the
    streak's start), then one "recovered" notice threaded under it, both to
    ``ops_target``; nothing when there is no target (the channel's state is still shown
    in /healthz)."""
    target = ops_target(channel, health_channel, fallback)
    if open_notice is not None:
        if not recovered:
            return open_notice, []
        parent = open_notice if open_notice.endswith(f":{target}") else None
        if target is None:
            return None, []
        d = _notice(f"ops:channel-recovered:{channel}:{open_notice}", target, "monitor",
                    "channel-recovered", "info",
                    f"monitor: channel {channel!r} delivers again",
                    f"Channel {channel!r} delivered a message at {_ts(now)}. Alerts it could "
                    "not deliver meanwhile were retried, or are listed as failed by "
                    f"`monitor alerts --channel {channel} --status failed`; "
                    f"`monitor outbox retry --channel {channel}` sends those again.",
                    now, parent)
        return None, [d]
    if not failing or target is None:
        return None, []
    key = f"ops:channel-failing:{channel}:{_ts(since)}:{target}"
    d = _notice(key, target, "monitor", "channel-failing", "warning",
                f"monitor: channel {channel!r} is failing: {error}".rstrip(": "),
                f"Deliveries to channel {channel!r} keep failing since {_ts(since)}. Last "
                f"error: {error or 'unknown'}. Alerts for it wait in the outbox (retried) or "
                "are marked failed; once the cause is fixed (a revoked token, a changed "
                f"webhook, the SMTP settings), `monitor outbox retry --channel {channel}` "
                "sends the failed ones again.", now)
    return key, [d]
