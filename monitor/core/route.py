"""Pure routing: matches on a story → outbox deliveries, with idempotency keys.

One alert per story cluster × rule × channel. Keys make replays harmless: the store
ignores a delivery whose key exists, so a crash and a re-poll send nothing twice.

* first alert:  ``a:{cluster}:{rule}:{channel}``
* cooldown re-alert (``cooldown > 0`` and the last alert is older than it):
  ``a:{cluster}:{rule}:{channel}:{epoch}``
* "carried by N sources" update of an earlier alert, at source-count milestones only
  (2, 3, 5, 10, 20, 50, 100): ``u:{cluster}:{rule}:{channel}:{N}``, with ``parent_key``
  the first alert's key so Slack threads it and email sets In-Reply-To.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from monitor.core.model import Alert, Delivery, Match, Story

UPDATE_MILESTONES: tuple[int, ...] = (2, 3, 5, 10, 20, 50, 100)


def alert_key(cluster: str, rule: str, channel: str) -> str:
    return f"a:{cluster}:{rule}:{channel}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterFacts:
    """What routing needs to know about the story's cluster."""

    cluster: str
    sources: tuple[str, ...]  # distinct feeds carrying it, including this story's


def route(
    story: Story,
    matches: Iterable[Match],
    facts: ClusterFacts,
    *,
    now: datetime,
    last_alerts: Mapping[tuple[str, str], datetime] | None = None,
) -> list[Delivery]:
    """First alerts (and cooldown re-alerts) for the rules that fired on ``story``.

    ``last_alerts`` maps (rule, channel) → when this cluster last alerted for them (from
    the store). A rule that already alerted on the cluster is silent here; the
    "carried by N sources" update comes from ``updates``. Pure.
    """
    last_alerts = last_alerts or {}
    out: list[Delivery] = []
    for m in matches:
        for channel in m.channels:
            first = alert_key(facts.cluster, m.rule, channel)
            last = last_alerts.get((m.rule, channel))
            alert = Alert(
                story=story,
                match=m,
                cluster=facts.cluster,
                sources=len(facts.sources),
                source_names=facts.sources,
            )
            if last is None:
                out.append(Delivery(key=first, channel=channel, alert=alert, created=now))
            elif m.cooldown > 0 and (now - last).total_seconds() >= m.cooldown:
                # derived from the previous alert, so that concurrent polls (or instances)
                # that saw the same one make the same key and the store keeps one
                key = f"{first}:{int(last.timestamp())}"
                out.append(Delivery(key=key, channel=channel, alert=alert, created=now))
    return out


def updates(
    story: Story,
    alerted: Iterable[Alert],
    facts: ClusterFacts,
    *,
    now: datetime,
) -> list[Delivery]:
    """"Now carried by N sources" updates of earlier first alerts of this cluster.

    ``alerted`` are those first alerts (as created, with the source count they said). An
    update is due when the cluster's source count is a milestone above what the alert
    said; its key holds the count, so a replay or a story from a known source adds
    nothing."""
    n = len(facts.sources)
    if n not in UPDATE_MILESTONES:
        return []
    out: list[Delivery] = []
    for a in alerted:
        if n <= a.sources or a.match.digest:
            continue  # nothing new to say (digests are not updated)
        for channel in a.match.channels:
            out.append(
                Delivery(
                    key=f"u:{facts.cluster}:{a.match.rule}:{channel}:{n}",
                    channel=channel,
                    alert=Alert(
                        story=story,
                        match=a.match,
                        cluster=facts.cluster,
                        sources=n,
                        source_names=facts.sources,
                        update=True,
                        first_title=a.first_title or a.story.title,
                    ),
                    created=now,
                    parent_key=alert_key(facts.cluster, a.match.rule, channel),
                )
            )
    return out
