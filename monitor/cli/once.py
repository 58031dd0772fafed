"""What ``monitor once`` reports: alerts apart from deliveries.

An *alert* is a story × rule that fired (its "now carried by N sources" updates counted
apart); a *delivery* is an alert for one channel. One poll that fires 116 alerts on a rule
with 3 channels queues 348 deliveries; each channel then reports what became of its own:
sent one by one, rolled up into a per-rule summary, in a group's message, in a quiet-hours
digest, in a "while monitor could not deliver" summary (stale), held until the channel's
quiet hours end, to retry, or failed for good.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from monitor.shell.dispatch import DispatchResult
from monitor.shell.pipeline import PollOutcome


def alert_counts(outcomes: Sequence[PollOutcome]) -> tuple[int, int]:
    """(alerts, updates): the distinct stories × rules that fired, and their updates."""
    firsts = {(d.alert.story.id, d.alert.match.rule)
              for o in outcomes for d in o.deliveries if not d.alert.update}
    updates = {(d.alert.story.id, d.alert.match.rule, d.alert.sources)
               for o in outcomes for d in o.deliveries if d.alert.update}
    return len(firsts), len(updates)


def _feed_alerts(o: PollOutcome) -> int:
    return len({(d.alert.story.id, d.alert.match.rule) for d in o.deliveries
                if not d.alert.update})


def once_report(outcomes: Sequence[PollOutcome], result: DispatchResult) -> dict[str, Any]:
    """``monitor once --json``."""
    queued = Counter(d.channel for o in outcomes for d in o.deliveries)
    alerts, updates = alert_counts(outcomes)
    channels: dict[str, dict[str, int]] = {}
    for ch in sorted(set(queued) | set(result.by_channel)):
        r = result.by_channel.get(ch, DispatchResult())
        channels[ch] = {"queued": queued.get(ch, 0), **r.counts()}
    feeds = []
    for o in outcomes:
        d = o.to_dict()
        d["alerts"] = _feed_alerts(o)
        d["deliveries"] = len(o.deliveries)
        feeds.append(d)
    return {
        "feeds": feeds,
        # new items published more than their feed's max_age ago: recorded, not alerted on
        "stale": sum(o.stale for o in outcomes),
        "alerts": {"fired": alerts, "updates": updates},
        "deliveries": {"queued": sum(queued.values()), **result.counts(),
                       "channels": channels},
    }


def print_once(outcomes: Sequence[PollOutcome], result: DispatchResult) -> None:
    report = once_report(outcomes, result)
    for o, f in zip(outcomes, report["feeds"], strict=True):
        extra = f" error: {o.error}" if o.error else ""
        extra += f" problem: {o.problem}" if o.problem else ""
        print(f"{o.feed:<24} {o.result:<13} entries={o.stories:<4} new={o.new:<4} "
              f"alerts={f['alerts']:<4} deliveries={f['deliveries']:<4} stale={o.stale}{extra}")
    a, d = report["alerts"], report["deliveries"]
    updates = f" and {a['updates']} update{'' if a['updates'] == 1 else 's'}" if a["updates"] else ""
    print(f"alerts: {a['fired']} (stories × rules that fired){updates}; "
          f"{d['queued']} deliveries queued over {len(d['channels'])} channel"
          f"{'' if len(d['channels']) == 1 else 's'}")
    for ch, c in d["channels"].items():
        print(f"  {ch:<22} {_counts(c, queued=True)}")
    print(f"deliveries: {_counts(d)}")
    if report["stale"]:
        print(f"stale: {report['stale']} new item{'' if report['stale'] == 1 else 's'} "
              "published more than max_age ago (defaults.max_age, or the feed's): recorded, "
              "not alerted on")


def _counts(c: dict[str, Any], *, queued: bool = False) -> str:
    parts = [f"{c['queued']} queued"] if queued else []
    sent = f"{c['sent']} sent"
    inner = [f"{c['rolled_up']} rolled up"] if c["rolled_up"] else []
    inner += [f"{c['grouped']} in group messages"] if c["grouped"] else []
    inner += [f"{c['quiet']} in a quiet-hours digest"] if c["quiet"] else []
    inner += [f"{c['stale']} in a catch-up summary"] if c["stale"] else []
    if inner:
        sent += f" ({', '.join(inner)})"
    parts.append(sent)
    parts += [f"{c['held']} held for quiet hours"] if c["held"] else []
    parts += [f"{c['retrying']} to retry", f"{c['failed']} failed"]
    return ", ".join(parts)
