"""``monitor feeds`` and the stale/problem parts of ``monitor once``, as a user runs them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.feeds import BACKLOG, Item, rss, seed_item
from tests.peers.feedserver import FeedServer
from tests.test_cli import monitor, workdir
from tests.test_hostile_feeds import _billion_laughs

__all__ = ["workdir"]  # the fixture, shared with test_cli


def _add_feed(workdir: Path, line: str) -> None:
    config = (workdir / "config.yaml").read_text()
    (workdir / "config.yaml").write_text(config.replace("defaults:", f"{line}\ndefaults:", 1))


async def test_feeds_table_and_json(workdir: Path, feed_server: FeedServer) -> None:
    # a: fine, with two items published 10 days ago among its news; dead: 404; bomb: the
    # entity-expansion feed; later: configured, never polled
    feed_server.serve("/bomb.rss", _billion_laughs())
    seed = seed_item()
    old = [Item(title=seed.title, link=seed.link, guid=seed.guid, description=seed.description,
                published=datetime.now(UTC) - timedelta(days=10)),
           Item(title="An old story", link="https://news.example.org/old", guid="old-1",
                published=datetime.now(UTC) - timedelta(days=5))]
    feed_server.set("/a.rss", rss([*old, *BACKLOG]))
    _add_feed(workdir, f"  - {{name: bomb, url: '{feed_server.url('/bomb.rss')}'}}")
    rc, out, _ = await monitor("once", cwd=workdir)
    assert rc == 0, out
    lines = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "stale=2" in lines["a"] and "stale=0" in lines["dead"]
    assert "problem: the feed declares XML entities" in lines["bomb"]
    assert "stale: 2 new items published more than max_age ago" in out

    feed_server.set("/a.rss", rss([seed_item("https://news.example.org/other"), *BACKLOG]))
    rc, out, _ = await monitor("once", "--json", cwd=workdir)
    data = json.loads(out)
    assert data["stale"] == 0 and {f["feed"]: f["stale"] for f in data["feeds"]}["a"] == 0

    _add_feed(workdir, f"  - {{name: later, url: '{feed_server.url('/later.rss')}'}}")
    rc, out, err = await monitor("feeds", "--json", cwd=workdir)
    assert rc == 0, err
    rows = {r["name"]: r for r in json.loads(out)["feeds"]}
    assert list(rows) == ["a", "dead", "bomb", "later"]  # config order
    assert rows["a"]["state"] == "ok" and rows["a"]["problem"] is None
    assert rows["a"]["last_success"] and rows["a"]["next_poll"] and rows["a"]["last_new_story"]
    assert rows["dead"]["state"] == "failing" and "404" in rows["dead"]["problem"]
    assert rows["dead"]["failures"] == 2 and rows["dead"]["last_success"] is None
    assert rows["bomb"]["state"] == "ok" and "entities" in rows["bomb"]["problem"]
    assert rows["later"]["state"] == "new"

    rc, out, _ = await monitor("feeds", cwd=workdir)
    assert rc == 0
    head, *body, total = out.splitlines()
    assert head.split() == ["FEED", "STATE", "LAST", "SUCCESS", "NEXT", "POLL", "CADENCE",
                            "LAST", "NEW", "STORY", "PROBLEM"]
    table = {line.split()[0]: line for line in body}
    assert table["dead"].split()[1] == "failing×2" and "HTTP 404" in table["dead"]
    assert table["a"].split()[1] == "ok" and "ago)" in table["a"]
    assert "declares XML entities" in table["bomb"]
    assert table["later"].split()[1] == "new"
    assert total == "4 feeds: 1 failing, 1 new, 2 ok"


async def test_feeds_needs_no_channel_secret_and_shows_none(workdir: Path,
                                                            feed_server: FeedServer) -> None:
    feed_server.status("/a.rss", 401)
    config = (workdir / "config.yaml").read_text()
    config = config.replace(f"url: '{feed_server.url('/a.rss')}'",
                            "url: 'http://reader:${FEED_PASSWORD}@"
                            f"{feed_server.url('/a.rss').removeprefix('http://')}'")
    config = config.replace("  audit-file: {type: file, path: audit.jsonl}",
                            "  audit-file: {type: file, path: audit.jsonl}\n"
                            "  ops: {type: slack, webhook_url: '${OPS_HOOK}'}\n"
                            "health: {channel: ops}")
    (workdir / "config.yaml").write_text(config)
    env = {"FEED_PASSWORD": "hunter2-secret", "OPS_HOOK": "https://hooks.example/T/B/x"}
    rc, out, err = await monitor("once", cwd=workdir, env=env)
    assert rc == 2, out + err  # every feed failed
    rc, out, err = await monitor("feeds", "--json", cwd=workdir,
                                 env={"FEED_PASSWORD": "hunter2-secret"})  # no OPS_HOOK
    assert rc == 0, err
    assert "hunter2-secret" not in out
    rows = {r["name"]: r for r in json.loads(out)["feeds"]}
    assert rows["a"]["state"] == "failing" and "401" in rows["a"]["problem"]
