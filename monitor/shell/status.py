"""The status page: ``GET /``, one read-only HTML page for a person.

Server-rendered with Jinja2 (``monitor/templates/status.html``, autoescaped), no
JavaScript, refreshing itself every ``REFRESH`` seconds. It shows what ``/healthz``
says (``Runtime.health()``) and what the store knows:

* the feeds and their health: state, last success, consecutive failures, next poll and
  the problem in words;
* the recent alerts, one row per story × rule, with the state of each channel's
  delivery and the peer's error for those that failed or are being retried;
* the rules with their hits over 24 h and 7 days (``Store.rule_hits``);
* the channels: their recent deliveries sent, retrying and failed, and the last error;
* why the daemon is degraded, the rule (or config) reload error if any, and the version.

It never shows a secret: a feed URL goes through ``Config.display``, every error text
through ``Config.redact`` and the log's ``scrub``; the page is escaped by the template.

``status_view`` (pure: data in, a plain dict out) builds what the template shows;
``StatusPage.render`` gathers the data and renders it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import jinja2

from monitor import __version__
from monitor.config import Config
from monitor.core.model import FeedState
from monitor.core.rules.model import RuleSet
from monitor.log import scrub
from monitor.store.base import DeliveryStatus

if TYPE_CHECKING:
    from monitor.shell.daemon import Runtime

REFRESH = 30  # seconds between the page's own reloads
RECENT_DELIVERIES = 500  # outbox rows read for the alerts and channel tables
RECENT_ALERTS = 30  # alert rows shown
DAY = timedelta(days=1)
WEEK = timedelta(days=7)

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("monitor", "templates"),
    autoescape=True,  # every value is text to show, never markup
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def when(t: datetime | None, now: datetime) -> dict[str, str] | None:
    """A time as the page shows it: relative ("4 min ago", "in 20 s") with the exact
    UTC time beside it (``iso``, for the ``<time>`` element and its tooltip)."""
    if t is None:
        return None
    secs = (t - now).total_seconds()
    n = abs(secs)
    if n < 1:
        amount = "now"
    elif n < 90:
        amount = f"{n:.0f} s"
    elif n < 90 * 60:
        amount = f"{n / 60:.0f} min"
    elif n < 36 * 3600:
        amount = f"{n / 3600:.0f} h"
    else:
        amount = f"{n / 86400:.0f} d"
    text = amount if amount == "now" else (f"in {amount}" if secs > 0 else f"{amount} ago")
    return {"text": text, "iso": t.strftime("%Y-%m-%d %H:%M:%S UTC")}


@dataclass(frozen=True, kw_only=True, slots=True)
class StatusData:
    """What the page is built from, gathered in one go."""

    now: datetime
    health: Mapping[str, Any]  # ``Runtime.health()``
    feeds: Sequence[FeedState]
    deliveries: Sequence[DeliveryStatus]  # newest first
    rules: RuleSet
    hits_day: Mapping[str, int]
    hits_week: Mapping[str, int]


def _feed_state(f: FeedState | None) -> str:
    if f is None or (f.polls == 0 and f.last_polled is None):
        return "waiting"
    if f.gone:
        return "gone"
    if f.failures:
        return "failing"
    return "ok"


def feed_rows(config: Config, feeds: Iterable[FeedState], now: datetime,
              clean: Callable[[str], str]) -> list[dict[str, Any]]:
    """One row per configured feed, in the config's order."""
    stored = {f.name: f for f in feeds}
    rows = []
    for spec in config.feed_specs():
        f = stored.get(spec.name)
        problem = (f.last_error if f and f.failures else None) or (f.problem if f else None)
        rows.append({
            "name": spec.name,
            "url": config.display(spec.url),
            "state": _feed_state(f),
            "last_success": when(f.last_success if f else None, now),
            "failures": f.failures if f else 0,
            "next_poll": None if f is None or f.gone else when(f.next_poll, now),
            "status": f.last_status if f else None,
            "problem": clean(problem) if problem else None,
        })
    return rows


def _delivery(d: DeliveryStatus, now: datetime, clean: Callable[[str], str]) -> dict[str, Any]:
    state = d.state
    if state == "pending" and d.attempts:
        state = "retrying"
    return {
        "channel": d.channel,
        "state": state,
        "attempts": d.attempts,
        "when": when(d.sent_at or d.next_attempt, now),
        "error": clean(d.last_error) if d.last_error and d.state != "sent" else None,
    }


def _group(d: DeliveryStatus) -> tuple[str, ...]:
    """The alert a delivery belongs to: its key without the channel (see route.py:
    ``a:{cluster}:{rule}:{channel}[:{epoch}]``, ``u:…:{N}``)."""
    kind = "u" if d.parent_key else "a"
    prefix = f"{kind}:{d.cluster}:{d.rule}:{d.channel}"
    if d.key.startswith(prefix):
        return (kind, d.cluster, d.rule, d.key[len(prefix):])
    return ("key", d.key)  # an older row or a merged cluster: a group of its own


def alert_rows(deliveries: Sequence[DeliveryStatus], now: datetime,
               clean: Callable[[str], str], limit: int = RECENT_ALERTS) -> list[dict[str, Any]]:
    """The recent alerts, newest first: one row per story × rule (× update), with the
    delivery on each channel."""
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for d in deliveries:
        g = _group(d)
        row = groups.get(g)
        if row is None:
            if len(groups) >= limit:
                continue
            row = groups[g] = {
                "created": when(d.created, now),
                "title": clean(d.title) if d.title else f"(story {d.cluster})",
                "rule": d.rule,
                # (not "update": a template's ``row.update`` would be the dict's method)
                "is_update": d.parent_key is not None,
                "deliveries": [],
            }
        row["deliveries"].append(_delivery(d, now, clean))
    for row in groups.values():
        row["deliveries"].sort(key=lambda x: x["channel"])
        states = {x["state"] for x in row["deliveries"]}
        row["state"] = next((s for s in ("failed", "retrying", "pending") if s in states),
                            "sent")
    return list(groups.values())


def channel_rows(config: Config, deliveries: Sequence[DeliveryStatus], now: datetime,
                 clean: Callable[[str], str]) -> list[dict[str, Any]]:
    """Each configured channel (and any the outbox still names) over the recent
    deliveries: how many were sent, are being retried, failed for good; its state is
    that of its latest attempt."""
    names = list(config.channels) + sorted({d.channel for d in deliveries} - set(config.channels))
    rows = []
    for name in names:
        mine = [d for d in deliveries if d.channel == name]
        tried = sorted((d for d in mine if d.attempts), reverse=True,
                       key=lambda d: d.sent_at or d.next_attempt or d.created)
        latest = tried[0] if tried else None
        failing = latest is not None and latest.state != "sent"
        last_error = next((d.last_error for d in tried if d.last_error and d.state != "sent"),
                          None)
        ch = config.channels.get(name)
        rows.append({
            "name": name,
            "type": ch.type if ch is not None else "not configured",
            "state": "failing" if failing else ("ok" if latest else "idle"),
            "sent": sum(d.state == "sent" for d in mine),
            "retrying": sum(d.state == "pending" and d.attempts > 0 for d in mine),
            "pending": sum(d.state == "pending" and d.attempts == 0 for d in mine),
            "failed": sum(d.state == "failed" for d in mine),
            "last_sent": when(max((d.sent_at for d in mine if d.sent_at), default=None), now),
            "last_error": clean(last_error) if last_error else None,
        })
    return rows


def rule_rows(config: Config, rules: RuleSet, day: Mapping[str, int],
              week: Mapping[str, int]) -> list[dict[str, Any]]:
    return [{
        "name": r.name,
        "enabled": r.enabled,
        "severity": r.severity,
        "channels": ", ".join(r.channels or config.defaults.channels),
        "digest": r.digest,
        "where": r.where.rpartition("/")[2],
        "day": day.get(r.name, 0),
        "week": week.get(r.name, 0),
    } for r in rules.rules]


def problems(health: Mapping[str, Any], clean: Callable[[str], str]) -> dict[str, Any]:
    """Why the daemon is not ``ok``, and the last reload's error (rules, or the whole
    config where the daemon reloads it) with when it happened."""
    errors = []
    for part in ("config", "rules"):
        info = health.get(part)
        if isinstance(info, Mapping) and info.get("error"):
            errors.append({"what": part, "error": clean(str(info["error"])),
                           "at": info.get("error_at")})
    return {
        "reasons": [clean(str(r)) for r in health.get("reasons", ())],
        "reload_errors": errors,
    }


def status_view(config: Config, data: StatusData, *, version: str = __version__,
                refresh: int = REFRESH) -> dict[str, Any]:
    """Everything the template shows (pure: data in, plain values out)."""

    def clean(text: str) -> str:
        return scrub(config.redact(text))

    health = data.health
    outbox = health.get("outbox")
    pending = outbox.get("pending") if isinstance(outbox, Mapping) else None
    return {
        "status": str(health.get("status", "unknown")),
        "version": version,
        "refresh": refresh,
        "now": when(data.now, data.now),
        "pending": pending,
        **problems(health, clean),
        "feeds": feed_rows(config, data.feeds, data.now, clean),
        "alerts": alert_rows(data.deliveries, data.now, clean),
        "rules": rule_rows(config, data.rules, data.hits_day, data.hits_week),
        "channels": channel_rows(config, data.deliveries, data.now, clean),
        "recent": len(data.deliveries),
    }


def render(view: Mapping[str, Any]) -> str:
    return _ENV.get_template("status.html").render(**view)


class StatusPage:
    """``GET /`` of a running daemon."""

    def __init__(self, runtime: Runtime, *, refresh: int = REFRESH) -> None:
        self.rt = runtime
        self.refresh = refresh

    async def gather(self) -> StatusData:
        rt = self.rt
        now = rt.clock()
        health = await rt.health()
        return StatusData(
            now=now,
            health=health,
            feeds=await rt.store.get_feeds(),
            deliveries=await rt.store.deliveries(limit=RECENT_DELIVERIES),
            rules=rt.pipeline.rules.ruleset,
            hits_day=await rt.store.rule_hits(now - DAY),
            hits_week=await rt.store.rule_hits(now - WEEK),
        )

    async def render(self) -> str:
        data = await self.gather()
        return render(status_view(self.rt.config, data, refresh=self.refresh))
