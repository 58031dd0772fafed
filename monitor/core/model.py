"""Frozen, keyword-only dataclasses passed between the stages.

Names follow the flow of data (see DESIGN.md):

* ``FeedSpec``     a feed as configured (from config.yaml)
* ``FeedState``    a feed as stored (schedule, validators, failures)
* ``FetchResult``  what the fetcher saw: ``Fetched`` | ``NotModified`` | ``FetchFailed``
* ``ParsedFeed``   what parse + normalise made of the bytes: stories and any problem
* ``Story``        one normalised entry
* ``Match``        one rule that fired on a story, with the evidence (``Hit``)
* ``Alert``        what a notifier renders: story + match + cluster facts
* ``Delivery``     one outbox row: an alert for one channel, with its idempotency key

All datetimes are timezone-aware UTC. Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Severity = Literal["info", "low", "medium", "high", "critical"]
SEVERITIES: tuple[str, ...] = ("info", "low", "medium", "high", "critical")


@dataclass(frozen=True, kw_only=True, slots=True)
class FeedSpec:
    """A feed as configured."""

    name: str
    url: str
    interval: float  # seconds between polls when nothing else is known
    tags: tuple[str, ...] = ()
    alert_on_first_poll: bool = False
    # adaptive polling (``schedule.poll_interval``): the feed's hints and its learned
    # cadence move the interval within [min(min_interval, interval), max(max_interval,
    # interval)]; ``adaptive`` lets the learned cadence decide (hints apply either way)
    min_interval: float = 60.0
    max_interval: float = 3600.0
    adaptive: bool = True
    # seconds: an item published longer ago than this is recorded but never alerted on
    # (``defaults.max_age`` / the feed's ``max_age``); counted as "stale"
    max_age: float = 3 * 86400.0


@dataclass(frozen=True, kw_only=True, slots=True)
class FeedState:
    """A feed as stored: where to fetch it, validators, schedule and health."""

    name: str
    url: str  # current URL (a permanent redirect updates it)
    configured_url: str  # the URL in config.yaml (a config change resets ``url``)
    etag: str | None = None
    last_modified: str | None = None
    body_hash: str | None = None  # sha256 of the last 200 body: an identical body skips parsing
    last_polled: datetime | None = None
    next_poll: datetime | None = None
    last_success: datetime | None = None
    failures: int = 0  # consecutive failed polls (drives backoff)
    last_status: int | None = None
    last_error: str | None = None
    gone: bool = False  # the server answered 410 Gone
    baselined: bool = False  # the first poll (silent baseline) is done
    problem: str | None = None  # last bozo / parse warning, even on success
    polls: int = 0
    stories_seen: int = 0
    # what the feed says about itself (from its last parsed document, see FeedHints) and
    # the schedule decided from it at the last successful poll
    ttl: float | None = None  # seconds
    update_period: float | None = None  # seconds
    update_base: datetime | None = None
    cadence: float | None = None  # seconds between publications, learned
    poll_interval: float | None = None  # seconds, before jitter
    poll_reason: str | None = None  # why: "ttl 60m", "cadence ~7m", "interval 5m" …

    # health (see ``monitor.core.feedhealth``)
    failing_since: datetime | None = None  # the first failed poll of the current streak
    last_new_story: datetime | None = None  # the poll that last found a new story
    # publication times of the latest new stories, oldest first (at most
    # ``feedhealth.CADENCE_SAMPLES``): the feed's publishing cadence is read from them
    story_times: tuple[datetime, ...] = ()
    # the key of the operational notice (failing, silent) sent and not yet followed by
    # its recovery notice; None when the feed has none open
    notice: str | None = None
    # not stored: when the poll in hand was due (``Store.claim_due_feeds`` sets it, from
    # the ``next_poll`` its claim replaced). The next poll counts from it
    # (``schedule.next_poll``), and the claim's lag is measured against it
    due: datetime | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class FeedHints:
    """What one feed document says about how often to poll it, and what its entries
    show: read in the parse worker, kept on the feed's state (a 304 carries none)."""

    ttl: float | None = None  # seconds; RSS ``<ttl>`` is in minutes
    update_period: float | None = None  # seconds: sy:updatePeriod / sy:updateFrequency
    update_base: datetime | None = None  # sy:updateBase: when that schedule started
    cadence: float | None = None  # seconds between publications (schedule.learn_cadence)


@dataclass(frozen=True, kw_only=True, slots=True)
class Fetched:
    """A 200 response with its body."""

    url: str  # the URL requested
    final_url: str  # after redirects
    status: int
    body: bytes
    headers: dict[str, str]  # response headers (lower-case names)
    etag: str | None
    last_modified: str | None
    permanent_redirect: str | None = None  # new URL when every hop was 301/308


@dataclass(frozen=True, kw_only=True, slots=True)
class NotModified:
    """A 304: nothing changed since the validators we sent."""

    url: str
    etag: str | None
    last_modified: str | None
    permanent_redirect: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names (freshness)


@dataclass(frozen=True, kw_only=True, slots=True)
class FetchFailed:
    """Any failure; ``reason`` is readable by a person, ``retry_after`` in seconds."""

    url: str
    reason: str
    status: int | None = None
    retry_after: float | None = None
    gone: bool = False  # 410
    permanent_redirect: str | None = None
    # what went wrong, for metrics: "timeout" | "connection" | "tls" | "http" |
    # "too_large" | "redirect" | "invalid_url"
    kind: str = "connection"


FetchResult = Fetched | NotModified | FetchFailed


@dataclass(frozen=True, kw_only=True, slots=True)
class Story:
    """One feed entry, normalised.

    ``id`` is stable and global: the entry's guid when it is a URL/URN/tag URI, the guid
    scoped by feed (``feed:guid``) otherwise, else the canonical link, else
    ``sha256:`` of title+link. ``link`` is canonical (tracking parameters removed).
    """

    id: str
    feed: str
    title: str
    link: str
    summary: str = ""  # plain text
    content: str = ""  # plain text of the full content, when the feed carries it
    published: datetime  # UTC; falls back to first_seen
    first_seen: datetime
    authors: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    lang: str | None = None
    guid: str | None = None
    feed_tags: tuple[str, ...] = ()  # the configured tags of the feed it came from


@dataclass(frozen=True, kw_only=True, slots=True)
class ParsedFeed:
    """What parsing + normalising one body produced."""

    title: str
    link: str
    stories: tuple[Story, ...]
    problem: str | None = None  # bozo reason, if feedparser flagged one
    failed: bool = False  # True when nothing usable came out (then ``problem`` says why)
    hints: FeedHints = field(default_factory=FeedHints)  # ttl, sy:*, learned cadence


@dataclass(frozen=True, kw_only=True, slots=True)
class Hit:
    """Where a term matched: field name and character offsets in that field's text."""

    term: str
    field: str
    start: int
    end: int
    text: str  # the matched text as it appears


GroupLabel = Literal["rule", "actors", "tags", "feed"]
GROUP_LABELS: tuple[str, ...] = ("rule", "actors", "tags", "feed")


@dataclass(frozen=True, kw_only=True, slots=True)
class Grouping:
    """A rule's opt-in grouping (Alertmanager's ``group_by`` and timers, in seconds).

    A group is the rule × channel × the story's values of ``by``. Its first message goes
    out ``wait`` after the group's first match, carrying everything that matched
    meanwhile; later matches go as one threaded follow-up per ``interval``; a group
    quiet (nothing sent) for longer than ``repeat`` starts over with a new top-level
    message."""

    by: tuple[str, ...]  # of GROUP_LABELS
    wait: float = 30.0
    interval: float = 300.0
    repeat: float = 4 * 3600.0


@dataclass(frozen=True, kw_only=True, slots=True)
class GroupState:
    """A group as stored: what routing and dispatch need to place its next message."""

    group: str  # the group key (``route.group_key``)
    last_sent: datetime | None = None  # when its last message went out
    ref: str | None = None  # that message's thread root (Slack ts, email Message-ID)
    pending_since: datetime | None = None  # the oldest unsent delivery's ``created``


@dataclass(frozen=True, kw_only=True, slots=True)
class Match:
    """A rule that fired on a story, and why."""

    rule: str
    severity: str
    channels: tuple[str, ...]
    terms: tuple[str, ...] = ()  # the rule's terms that matched
    actors: tuple[str, ...] = ()  # actor names that matched
    hits: tuple[Hit, ...] = ()
    cooldown: float = 0.0  # seconds; 0 = once per story cluster forever
    digest: str | None = None  # cron expression when the rule collects into a digest
    group: Grouping | None = None  # the rule groups its alerts (``group_by``)
    digest_tz: str | None = None  # the IANA time zone the cron line is read in (None: UTC)


@dataclass(frozen=True, kw_only=True, slots=True)
class Alert:
    """Everything a notifier needs to render one alert."""

    story: Story
    match: Match
    cluster: str  # story cluster id
    sources: int = 1  # distinct sources carrying the cluster
    source_names: tuple[str, ...] = ()
    update: bool = False  # a later update of an earlier alert (new source, "carried by N")
    # an update's first alert's headline: mail threads the update under that subject
    first_title: str | None = None
    # an update's first alert's story: a channel that edits the first message in place
    # (Slack bot) re-renders it from this, with the current source count
    first_story: Story | None = None
    # an update: whether it is worth a message of its own (a thread reply, a mail, a
    # webhook post): at a milestone source count, or when ``novel`` is not empty. False:
    # only the first message is edited (channels that can edit; decided in core/route.py)
    reply: bool = True
    # an update: the rule's actors and terms that matched this story but not the first
    novel: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Delivery:
    """One outbox row. ``key`` = cluster × rule × channel (× update number)."""

    key: str
    channel: str
    alert: Alert
    created: datetime
    parent_key: str | None = None  # for updates: the first alert's key (thread / In-Reply-To)
    id: int | None = None  # assigned by the store
    attempts: int = 0
    next_attempt: datetime | None = None
    # the parent's reference: Slack "<channel ID>/<ts>" (a bare ts in rows stored before
    # refs carried the channel), email Message-ID
    thread_ref: str | None = None
    # when `monitor outbox retry` put it back after it failed: retries are given up
    # ``give_up_after`` from here, not from ``created``
    requeued: datetime | None = None
    # a grouped rule's delivery: its group key (rule × channel × group_by values); the
    # group's due deliveries go out as one message
    group: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Sent:
    """The peer accepted the message; ``ref`` identifies it for threading."""

    ref: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SendFailed:
    """The peer refused or could not be reached; ``retry`` says whether to try again."""

    reason: str
    retry: bool
    retry_after: float | None = None
    #: the peer said "too many requests" (HTTP 429): the channel pauses for
    #: ``retry_after``; the alert itself did not fail and its backoff does not grow
    rate_limited: bool = False


SendResult = Sent | SendFailed


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterInfo:
    """A story cluster as stored."""

    id: str
    first_story: str
    title: str
    first_seen: datetime
    last_seen: datetime
    sources: tuple[str, ...] = ()
    members: tuple[str, ...] = field(default_factory=tuple)
