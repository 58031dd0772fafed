"""Operational notices about feeds: what ``core.feedhealth`` decides, queued and said.

After each poll the pipeline asks ``review`` for the feed's state and the notices due
(feed failing for ``health.feed_failing_after``, silent, recovered) and saves both in one
transaction (``save_state``): a notice is an outbox delivery to ``health.channel``, so
the dispatcher sends it like an alert, retried, once (its key names the streak).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from monitor.config import Config
from monitor.core.feedhealth import HealthSettings, notice_kind
from monitor.core.feedhealth import review as decide
from monitor.core.model import Delivery, FeedState
from monitor.log import get_logger, scrub
from monitor.metrics import Metrics

log = get_logger(__name__)


def health_settings(config: Config) -> HealthSettings:
    """``health:`` of the config, for the pure decisions."""
    h = config.health
    return HealthSettings(channel=h.channel, failing_after=h.feed_failing_after,
                          silent_factor=h.silent_after_factor, silent_min=h.silent_after_min)


def shown_error(config: Config, state: FeedState) -> str:
    """The feed's last error as a notice, ``monitor feeds`` or /healthz may show it."""
    if not state.last_error:  # every poll that succeeds: no secret to look for
        return ""
    return config.redact(scrub(state.last_error))


def review(config: Config, state: FeedState, now: datetime) -> tuple[FeedState, list[Delivery]]:
    """The feed's state after the poll and the notices due now (see ``core.feedhealth``)."""
    return decide(state, health_settings(config), now=now, shown_error=shown_error(config, state))


def queued(inserted: Sequence[Delivery], metrics: Metrics) -> None:
    """Say which notices the store took (a replayed one is not inserted again)."""
    for d in inserted:
        kind = notice_kind(d.key)
        metrics.ops_notices.labels(kind).inc()
        log.warning("ops.queued", feed=d.alert.story.feed, kind=kind, channel=d.channel,
                    key=d.key, notice=d.alert.story.title[:200])
