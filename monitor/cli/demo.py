"""``monitor demo``: the real pipeline, offline, on bundled feeds.

A local HTTP server (127.0.0.1, random port) serves three real news feeds (a sample of
the 2026-02-17 snapshot, re-dated to "now") with ETags; a local Slack-compatible webhook
receiver stands in for Slack. The daemon's own runtime polls them three times:

1. first poll: a silent baseline (no alert storm from the backlog),
2. the feeds publish new items, among them the sanctions-deadline story from two sources:
   one alert per matching story cluster, delivered through the outbox,
3. a re-poll: 304s and known stories, so nothing is sent twice, and a third outlet
   carrying the story: an update ("now carried by 3 sources"), not a new alert.

``--keep`` then leaves it running: the daemon (``monitor run``'s own ``Daemon``) keeps
polling the demo feeds, plus a fourth one that answers 404, with its server and status
page on ``--listen`` (127.0.0.1:9464), until Ctrl-C. The state stays in the kept directory.
"""

from __future__ import annotations

import hashlib
import html
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from monitor.config import load_config
from monitor.core.model import Delivery

DATA = Path(__file__).parents[1] / "demo_data" / "feeds.json"


def find_rules() -> Path:
    """The example rules: ``rules/`` of the checkout (editable install) or beside the cwd."""
    for cand in (Path(__file__).resolve().parents[2] / "rules", Path.cwd() / "rules"):
        if (cand / "sanctions-deadline.yaml").exists():
            return cand
    raise FileNotFoundError("cannot find the example rules/ directory; run from the checkout")


def render_rss(name: str, feed: dict[str, Any], round_: int, now: datetime, base: str) -> bytes:
    items = []
    for it in feed["items"]:
        if it["round"] > round_:
            continue
        pub = format_datetime(now - timedelta(minutes=it["minutes_ago"]), usegmt=True)
        items.append(
            "<item>"
            f"<title>{html.escape(it['title'])}</title>"
            f"<link>{html.escape(it['link'])}</link>"
            f"<guid isPermaLink=\"false\">{html.escape(it['guid'])}</guid>"
            f"<pubDate>{pub}</pubDate>"
            f"<description>{html.escape(it['description'])}</description>"
            "</item>"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel>'
        f"<title>{html.escape(feed['title'])}</title><link>{base}/{name}</link>"
        f"<description>monitor demo feed</description>{''.join(items)}</channel></rss>"
    ).encode()


@dataclass
class DemoServer:
    feeds: dict[str, Any]
    now: datetime
    round: int = 1
    slack_messages: list[dict[str, Any]] = field(default_factory=list)
    hits: int = 0
    not_modified: int = 0
    runner: web.AppRunner | None = None
    base: str = ""
    _bodies: dict[tuple[str, int], bytes] = field(default_factory=dict)

    def body(self, name: str) -> bytes:
        key = (name, self.round)
        if key not in self._bodies:
            self._bodies[key] = render_rss(name, self.feeds[name], self.round, self.now, self.base)
        return self._bodies[key]

    async def feed(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.feeds:
            raise web.HTTPNotFound()
        self.hits += 1
        body = self.body(name)
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == etag:
            self.not_modified += 1
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, headers={"ETag": etag},
                            content_type="application/rss+xml", charset="utf-8")

    async def slack(self, request: web.Request) -> web.Response:
        payload = await request.json()
        if not isinstance(payload, dict) or not (payload.get("text") or payload.get("blocks")):
            return web.Response(status=400, text="invalid_payload")
        self.slack_messages.append(payload)
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/feeds/{name}.xml", self.feed)
        app.router.add_post("/slack/webhook", self.slack)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = next(a[1] for a in self.runner.addresses if isinstance(a, tuple))
        self.base = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


BROKEN_FEED = "retired-desk"  # a feed that moved away: 404 (``--keep`` only)


def write_config(tmp: Path, server: DemoServer, rules: Path, *, listen: str | None = None
                 ) -> Path:
    """The demo's config.yaml; with ``listen``, the one ``--keep`` runs the daemon with:
    its server on ``listen`` and one more feed, which fails."""
    names = [*server.feeds, *([BROKEN_FEED] if listen else [])]
    feeds = "\n".join(
        f"  - name: {name}\n    url: {server.base}/feeds/{name}.xml\n    tags: [news]"
        + ("\n    interval: 20s" if name == BROKEN_FEED else "")
        for name in names
    )
    server_conf = f"  listen: '{listen}'" if listen else "  enabled: false"
    text = f"""# written by `monitor demo`
feeds:
{feeds}
rules: {rules}
store: sqlite:///{tmp / 'monitor.db'}
channels:
  slack-news:
    type: slack
    webhook_url: {server.base}/slack/webhook
    rate: 50
  email-oncall:
    type: file
    path: {tmp / 'email-oncall.jsonl'}
  audit-file:
    type: file
    path: {tmp / 'alerts.jsonl'}
fetch:
  parse_in: thread
server:
{server_conf}
"""
    path = tmp / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def describe(d: Delivery, channels: list[str]) -> str:
    a = d.alert
    m = a.match
    head = "↳ update" if a.update else "🔔 ALERT"
    lines = [
        f"{head} [{m.severity.upper()}] rule={m.rule} → {', '.join(channels)}",
        f"    {a.story.title}",
        f"    {a.story.link}",
        f"    source: {a.story.feed}, published {a.story.published:%Y-%m-%d %H:%M} UTC"
        + (f"; carried by {a.sources} sources: {', '.join(a.source_names)}" if a.sources > 1
           else ""),
    ]
    if m.terms or m.actors:
        lines.append(f"    matched: {', '.join(m.terms)}"
                     + (f"; actors: {', '.join(m.actors)}" if m.actors else ""))
    return "\n".join(lines)


async def serve_demo(tmp: Path, server: DemoServer, listen: str,
                     say: Callable[[str], None]) -> None:
    """Run the daemon on the demo's state until SIGINT/SIGTERM (``--keep``)."""
    from monitor.shell.daemon import Daemon

    config = load_config(write_config(tmp, server, find_rules(), listen=listen))
    host, _, port = listen.rpartition(":")
    say(f"\nthe daemon keeps running on the demo's state in {tmp}, polling the feeds and "
        f"{BROKEN_FEED}, which answers 404;\nstatus page: http://{host or '127.0.0.1'}:{port}/"
        "  (/healthz, /metrics beside it). Ctrl-C to stop.")
    await Daemon(config).run()


async def run_demo(*, keep: str | None = None, as_json: bool = False,
                   serve: str | None = None) -> int:
    """The demo; ``keep`` keeps its files (in that directory, or, when empty, a new
    temporary one); ``serve`` (a listen address) then runs the daemon on them until a
    signal, its status page on that address."""
    from monitor.shell.daemon import Runtime

    feeds = json.loads(DATA.read_text(encoding="utf-8"))["feeds"]
    now = datetime.now(UTC).replace(microsecond=0)
    server = DemoServer(feeds=feeds, now=now)
    tmp = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="monitor-demo-"))
    kept = keep is not None or serve is not None
    tmp.mkdir(parents=True, exist_ok=True)
    out = sys.stdout
    events: list[dict[str, Any]] = []

    def say(text: str) -> None:
        if not as_json:
            print(text, file=out, flush=True)

    delivered: dict[tuple[str, str, bool], list[Delivery]] = {}

    def on_sent(d: Delivery) -> None:
        events.append({"round": server.round, "channel": d.channel, "rule": d.alert.match.rule,
                       "title": d.alert.story.title, "feed": d.alert.story.feed,
                       "update": d.alert.update, "sources": d.alert.sources})
        delivered.setdefault((d.alert.cluster, d.alert.match.rule, d.alert.update), []).append(d)

    await server.start()
    rounds: list[dict[str, Any]] = []
    try:
        config = load_config(write_config(tmp, server, find_rules()))
        say(f"monitor demo: {len(feeds)} feeds served from {server.base}, "
            f"rules from {config.rules_path}, state in {tmp}")
        async with Runtime(config) as rt:
            rt.on_sent.append(on_sent)
            titles = {
                1: "first poll: a silent baseline of what the feeds already carry",
                2: "the feeds publish new stories",
                3: "poll again: one more outlet picks up the story, nothing is sent twice",
            }
            for r in (1, 2, 3):
                server.round = r
                say(f"\n── round {r}: {titles[r]}")
                outcomes = await rt.poll_all()
                delivered.clear()
                sent = await rt.drain()
                for ds in delivered.values():
                    say(describe(ds[0], sorted(d.channel for d in ds)))
                for o in outcomes:
                    say(f"   {o.feed:<14} {o.result:<12} entries={o.stories:<3} new={o.new:<3}"
                        f" queued={o.alerts}")
                say(f"   delivered {sent.sent}, retrying {sent.retrying}, failed {sent.failed}")
                rounds.append({"round": r, "feeds": [o.to_dict() for o in outcomes],
                               "sent": sent.sent})
        alerts = [e for e in events if not e["update"]]
        distinct = len({(e["title"], e["rule"]) for e in alerts})
        say(f"\n{distinct} alert(s) delivered ({len(alerts)} messages over "
            f"{len({e['channel'] for e in alerts})} channels), "
            f"{len(events) - len(alerts)} update(s); "
            f"{len(server.slack_messages)} Slack message(s) received by the local webhook; "
            f"{server.not_modified} conditional poll(s) answered 304.")
        if kept:
            say(f"state and audit log kept in {tmp} (config.yaml, monitor.db, alerts.jsonl)")
        else:
            say("run `monitor demo --keep [DIR]` to keep the state, config and audit log, "
                "and the daemon with its status page running")
        if as_json:
            print(json.dumps({"rounds": rounds, "delivered": events,
                              "slack_messages": len(server.slack_messages),
                              "dir": str(tmp)}, indent=2, ensure_ascii=False))
        if serve is not None:
            await serve_demo(tmp, server, serve, say)
        return 0 if alerts else 1
    finally:
        await server.stop()
        if not kept:
            shutil.rmtree(tmp, ignore_errors=True)
