"""Feed health end to end (#13): `monitor run` as a real process, a feed that 404s for
longer than ``health.feed_failing_after`` gives exactly one operational notice on the
health channel (the file channel), then exactly one recovery notice when it is back."""

from __future__ import annotations

import pytest

from tests.feeds import rss
from tests.test_daemon import Setup, file_alerts, health, setup, until, wait_polls

__all__ = ["setup"]  # the fixture, shared with test_daemon
pytestmark = pytest.mark.timeout(120)


async def test_a_failing_feed_gives_one_notice_then_one_recovery(setup: Setup) -> None:
    d, feeds, tmp = setup.daemon, setup.feeds, setup.tmp
    config = d.config.read_text()
    config = config.replace("fetch:\n  parse_in: thread\n",
                            "fetch:\n  parse_in: thread\n  backoff_max: 0.5s\n")
    d.config.write_text(config + "health:\n  channel: audit-file\n  feed_failing_after: 1s\n")
    feeds.status("/wire.rss", 404)
    await d.start()

    def ops() -> list[str]:
        return [a["rule"] for a in file_alerts(tmp) if a["rule"].startswith("monitor:")]

    await until(lambda: ops() == ["monitor:feed-failing"], "the failing notice")
    await wait_polls(feeds, "/wire.rss", 4)  # still failing: nothing more
    assert ops() == ["monitor:feed-failing"]
    h = await health(setup.port)
    assert h is not None and [f["feed"] for f in h["feeds"]["failing"]] == ["wire"]

    feeds.serve("/wire.rss", rss([]))
    await until(lambda: len(ops()) >= 2, "the recovery notice")
    await wait_polls(feeds, "/wire.rss", 4)
    assert await d.stop() == 0
    assert ops() == ["monitor:feed-failing", "monitor:feed-recovered"]
    notice = next(a for a in file_alerts(tmp) if a["rule"] == "monitor:feed-failing")
    assert notice["feed"] == "wire" and "HTTP 404" in notice["title"]
    assert setup.slack.messages == [] and setup.smtp.messages == []  # not a news alert
    log = d.logtext()
    assert "ops.queued" in log and "feed.recovered" in log
