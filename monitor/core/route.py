"""Pure routing: matches on a story → outbox deliveries, with idempotency keys.

One alert per story cluster × rule × channel. Keys make replays harmless: the store
ignores a delivery whose key exists, so a crash and a re-poll send nothing twice.

* first alert:  ``a:{cluster}:{rule}:{channel}``
* cooldown re-alert (``cooldown > 0`` and the last alert is older than it):
  ``a:{cluster}:{rule}:{channel}:{epoch}``
* "carried by N sources" update of an earlier alert: ``u:{cluster}:{rule}:{channel}:{N}``,
  with ``parent_key`` the first alert's key so Slack threads it and email sets
  In-Reply-To. How often depends on whether the channel can edit its first message
  (``editable``: Slack with a bot token), decided here and nowhere else:

  - a channel that cannot edit (email, Slack webhook) gets an update at source-count
    milestones only (2, 3, 5, 10, 20, 50, 100), each a message of its own;
  - a channel that can edit gets one at every growth of the cluster: the first message
    is edited to show the count and the latest outlets, and the update's ``reply`` flag
    says whether it is also worth a thread reply: at ``REPLY_MILESTONES`` (2, 5, 10, 20,
    50, 100) or when the new story matched some of the rule's actors or terms that the
    alert it counts from did not (``novel``).

``plan`` is the entry point for one poll: the stories it found new, each with its
matches and cluster facts, plus the cluster's earlier alerts and ``now`` → the deliveries
to save. Every decision about alerting is taken here, once:

* silence (``silenced``): a feed's baseline poll, GUID churn, a story published more than
  the feed's ``max_age`` ago (``MAX_ALERT_AGE`` by default: "stale", counted by the
  pipeline), and a "new" story whose link is stored (an old story that left
  the dedup window) record the story without alerting;
* a story that starts its cluster gets first alerts; one joining a known cluster gets
  first alerts only for rules that had not alerted on it (or whose cooldown is over),
  and "carried by N" updates for those that had;
* earlier alerts of rules that are disabled now are ignored;
* a digest rule's delivery waits for the digest's next cron time (``next_attempt``), in
  the digest's time zone (``Match.digest_tz``: the rule's ``digest.tz``, else the
  config's ``digest.tz``, else UTC);
* a grouped rule's delivery (``group_by``) gets its group key (``group_key``), and
  ``schedule_groups`` gives it the group's next slot (``group_slot``), knowing the
  group's stored state: its deliveries due together go out as one message.

Grouping (Alertmanager's semantics, for news). A group is rule × channel × the story's
values of the rule's ``group_by`` labels (``actors``: the rule's actors that matched;
``tags``: the tags of the story's feed; ``feed``: the feed; ``rule``: the rule alone).

* A new group's first message goes out ``group_wait`` after its first match and carries
  everything of the group that matched meanwhile.
* Later matches are due at the group's next tick: its last message + k × ``group_interval``
  (the first tick after the match): one threaded follow-up per interval at most.
* A group that sent nothing for longer than ``repeat_interval`` is over: its next match
  starts a new group (``group_wait``, then a new top-level message). For news that is
  what "repeat" means: nothing is re-sent, a story line that went quiet and comes back
  is worth a fresh headline rather than a reply in a thread nobody reads any more.
* Grouped rules get no "carried by N sources" updates: the group's follow-ups are its
  updates.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from monitor.core.model import (
    Alert,
    Delivery,
    FeedSpec,
    FeedState,
    Grouping,
    GroupState,
    Match,
    Story,
)
from monitor.core.schedule import next_cron

# A story is "news" only while it is recent: an item published longer ago than this
# (a feed re-surfacing its archive) is remembered but never alerted on. The default of
# ``defaults.max_age``; a feed may set its own (``FeedSpec.max_age``).
MAX_ALERT_AGE = timedelta(days=3)
UPDATE_MILESTONES: tuple[int, ...] = (2, 3, 5, 10, 20, 50, 100)
# where a channel that edits its first message in place also replies in its thread
REPLY_MILESTONES: tuple[int, ...] = (2, 5, 10, 20, 50, 100)


def alert_key(cluster: str, rule: str, channel: str) -> str:
    return f"a:{cluster}:{rule}:{channel}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterFacts:
    """What routing needs to know about the story's cluster."""

    cluster: str
    sources: tuple[str, ...]  # distinct feeds carrying it, including this story's
    # the story started the cluster (dedup found nothing like it): nothing can have
    # alerted on it yet, so its earlier alerts are not looked up
    new: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Candidate:
    """A story first seen in this poll, with what dedup and matching found out."""

    story: Story
    facts: ClusterFacts
    matches: tuple[Match, ...] = ()
    link_known: bool = False  # its (canonical) link is stored already, under another id


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
    parents: Mapping[tuple[str, str], str] | None = None,
    editable: Collection[str] = (),
    matches: Iterable[Match] = (),
) -> list[Delivery]:
    """"Now carried by N sources" updates of earlier first alerts of this cluster.

    ``alerted`` are those first alerts (as created, with the source count they said). An
    update is due when the cluster's source count is above what the alert said: for a
    channel in ``editable`` at every growth, for the others at milestones only (see the
    module docstring); its key holds the count, so a replay or a story from a known
    source adds nothing. ``matches`` are the rules that fired on ``story`` itself: their
    actors and terms the alert did not have make the update ``novel`` (a reply).
    ``parents`` maps (rule, channel) to the key of the first alert the update threads
    under; by default the cluster's own first-alert key. After a merge that alert may be
    filed under the absorbed cluster's key."""
    n = len(facts.sources)
    fired = {m.rule: m for m in matches}
    out: list[Delivery] = []
    for a in alerted:
        if n <= a.sources or a.match.digest or a.match.group:
            continue  # nothing new to say (digests and groups are not updated)
        novel = _novel(a.match, fired.get(a.match.rule))
        for channel in a.match.channels:
            edits = channel in editable
            if not edits and n not in UPDATE_MILESTONES:
                continue
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
                        first_story=a.first_story or a.story,
                        reply=not edits or n in REPLY_MILESTONES or bool(novel),
                        novel=novel,
                    ),
                    created=now,
                    parent_key=(parents or {}).get((a.match.rule, channel))
                    or alert_key(facts.cluster, a.match.rule, channel),
                )
            )
    return out


def _novel(alerted: Match, now: Match | None) -> tuple[str, ...]:
    """The actors, then the terms, of ``now`` (the rule on a new story) that the alert's
    match did not have, in the rule's order."""
    if now is None:
        return ()
    seen = {x.casefold() for x in (*alerted.actors, *alerted.terms)}
    out: list[str] = []
    for x in (*now.actors, *now.terms):
        if x.casefold() not in seen:
            seen.add(x.casefold())
            out.append(x)
    return tuple(out)


def is_baseline(state: FeedState, spec: FeedSpec) -> bool:
    """A feed's first poll is a silent baseline: its backlog is recorded, not alerted on
    (unless the feed says ``alert_on_first_poll``)."""
    return not state.baselined and not spec.alert_on_first_poll


def silenced(c: Candidate, *, now: datetime, baseline: bool, churn: bool,
             max_age: timedelta = MAX_ALERT_AGE) -> str | None:
    """Why ``c`` is recorded without alerting, or None when it may alert. Checked before
    matching (a silent story need not be matched) and again by ``plan``. ``too-old``:
    published more than ``max_age`` ago (the feed's ``max_age``)."""
    if baseline:
        return "baseline"
    if churn:
        return "guid-churn"  # the feed re-issued known items under new ids
    if c.story.published < now - max_age:
        return "too-old"
    if c.facts.new and c.link_known and c.story.link:
        return "left-dedup-window"  # an old story (its link is stored) the index forgot
    return None


def needs_earlier(c: Candidate, *, edits: bool = False) -> bool:
    """Whether ``plan`` needs the earlier alerts of ``c``'s cluster: it joins a known
    cluster, and a rule fired on it or its source count is an update milestone (any
    count when some channel edits its first message: ``edits``)."""
    return not c.facts.new and (
        edits or bool(c.matches) or len(c.facts.sources) in UPDATE_MILESTONES
    )


def plan(
    *,
    candidates: Iterable[Candidate],
    earlier: Mapping[str, Sequence[Delivery]],
    enabled: Collection[str],
    now: datetime,
    baseline: bool = False,
    churn: bool = False,
    editable: Collection[str] = (),
    max_age: timedelta = MAX_ALERT_AGE,
) -> list[Delivery]:
    """The deliveries one poll queues, in story order (pure).

    ``candidates``: the poll's new stories, oldest first, with their matches and cluster
    facts. ``earlier``: cluster → its stored first alerts (as ``Store.cluster_alerts``),
    for every candidate with ``needs_earlier``. ``enabled``: the names of the rules in
    force. ``baseline`` / ``churn``: the whole poll is recorded without alerting.
    ``editable``: the channels that edit their first message in place (Slack bot).
    A digest rule's deliveries have ``next_attempt`` set to the digest's next time; a
    grouped rule's have their ``group`` set (``schedule_groups`` then places them)."""
    out: list[Delivery] = []
    for c in candidates:
        if silenced(c, now=now, baseline=baseline, churn=churn, max_age=max_age) is not None:
            continue
        if c.facts.new:
            out += route(c.story, c.matches, c.facts, now=now)
        elif needs_earlier(c, edits=bool(editable)):
            alerted = [d for d in earlier.get(c.facts.cluster, ())
                       if d.alert.match.rule in enabled]
            out += _follow_up(c, alerted, now=now, editable=editable)
    return [_digested(d, now) if d.alert.match.digest
            else replace(d, group=group_key(d.alert, d.channel)) if d.alert.match.group
            else d for d in out]


def _follow_up(c: Candidate, alerted: Sequence[Delivery], *, now: datetime,
               editable: Collection[str] = ()) -> list[Delivery]:
    """A story joining a cluster that may have alerted: first alerts only for the rules
    that had not fired on it (e.g. ``min_sources`` just reached) or whose cooldown is
    over, and updates for those that had."""
    last: dict[tuple[str, str], datetime] = {}
    for d in alerted:
        k = (d.alert.match.rule, d.channel)
        last[k] = max(last.get(k, d.created), d.created)
    out = route(c.story, c.matches, c.facts, now=now, last_alerts=last)
    parents: dict[tuple[str, str], str] = {}
    for d in alerted:  # oldest first: an update threads under the very first alert
        if d.parent_key is None:
            parents.setdefault((d.alert.match.rule, d.channel), d.key)
    return out + updates(c.story, _update_bases(alerted), c.facts, now=now, parents=parents,
                         editable=editable, matches=c.matches)


def _update_bases(alerted: Sequence[Delivery]) -> list[Alert]:
    """Per rule, its latest alert (the source count an update counts from), carrying the
    headline and story of the rule's very first one: updates thread under that (and edit
    it), whichever later alert (a cooldown's) they count from."""
    latest = {d.alert.match.rule: d.alert for d in alerted}
    firsts: dict[str, Alert] = {}
    for d in alerted:  # oldest first
        firsts.setdefault(d.alert.match.rule, d.alert)
    return [
        replace(a, first_title=firsts[r].first_title or firsts[r].story.title,
                first_story=firsts[r].first_story or firsts[r].story)
        for r, a in latest.items()
    ]


def _digested(d: Delivery, now: datetime) -> Delivery:
    """A digest rule's alert waits in the outbox for the digest's next fire time."""
    cron = d.alert.match.digest
    if not cron:
        return d
    return replace(d, next_attempt=next_cron(cron, now, d.alert.match.digest_tz) or now)


# --------------------------------------------------------------------------- grouping


def group_values(alert: Alert) -> tuple[tuple[str, str], ...]:
    """The story's values of its rule's ``group_by`` labels (``rule`` is implied: every
    group is one rule's), as (label, value) pairs in the rule's order."""
    g = alert.match.group
    out: list[tuple[str, str]] = []
    for label in g.by if g else ():
        if label == "actors":
            out.append((label, ", ".join(sorted(set(alert.match.actors)))))
        elif label == "tags":
            out.append((label, ", ".join(sorted(set(alert.story.feed_tags)))))
        elif label == "feed":
            out.append((label, alert.story.feed))
    return tuple(out)


def group_key(alert: Alert, channel: str) -> str:
    """``g:{rule}:{channel}:{label=value&...}``: the same for every story of the group."""
    values = "&".join(f"{k}={v}" for k, v in group_values(alert))
    return f"g:{alert.match.rule}:{channel}:{values}"


def group_label(alert: Alert) -> str:
    """The group's values as a reader sees them ("Snowden", "Snowden · bbc"); empty for
    a group of the whole rule."""
    return " · ".join(v or f"no {k}" for k, v in group_values(alert))


def _in_episode(g: Grouping, state: GroupState | None, at: datetime) -> bool:
    """The group sent a message, and not longer than ``repeat`` before ``at``."""
    return (state is not None and state.last_sent is not None
            and (at - state.last_sent).total_seconds() <= g.repeat)


def group_slot(g: Grouping, state: GroupState | None, now: datetime) -> datetime:
    """When a delivery of a group, created at ``now``, is due (see the module's
    docstring): a new group's first message ``wait`` after its first match (the oldest
    pending one's, if the group is already waiting); in a group that sent within
    ``repeat``, its next tick, last message + k × ``interval``."""
    if not _in_episode(g, state, now):
        start = now
        if state is not None and state.pending_since is not None and (
            state.last_sent is None or state.pending_since > state.last_sent
        ):
            start = min(now, state.pending_since)
        return start + timedelta(seconds=g.wait)
    assert state is not None and state.last_sent is not None
    interval = max(g.interval, 1e-3)
    ticks = max(1, math.ceil((now - state.last_sent).total_seconds() / interval))
    return state.last_sent + timedelta(seconds=ticks * interval)


def group_thread(
    g: Grouping, state: GroupState | None, created: datetime
) -> tuple[bool, str | None]:
    """For a group's message whose oldest delivery was created at ``created``: whether
    it is a follow-up (the group sent within ``repeat`` before) and the reference to
    thread it under (None: a new top-level message, or a peer that cannot thread)."""
    if not _in_episode(g, state, created):
        return False, None
    assert state is not None
    return True, state.ref


def schedule_groups(
    deliveries: Sequence[Delivery], states: Mapping[str, GroupState], *, now: datetime
) -> list[Delivery]:
    """``deliveries`` with each grouped one due at its group's slot (pure). ``states``:
    group key → its stored state (``Store.group_states``); a group not in it is new."""
    return [replace(d, next_attempt=group_slot(d.alert.match.group, states.get(d.group), now))
            if d.group and d.alert.match.group else d for d in deliveries]
