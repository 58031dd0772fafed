"""The hostile-feed set (issue #11): what held when a running daemon was attacked with bad
feeds stays held.

Each hostile feed is checked at the component that must stop it, against the real local
feed server (tests/peers/feedserver.py) and the real parser:

* fetch: a server that never answers, a body trickled a byte at a time (no single read
  waits long: the whole-fetch timeout must fire), 200 MB with and without Content-Length,
  a gzip bomb (kilobytes on the wire, gigabytes inflated), a redirect loop. The server
  counts what it wrote, so "capped early" is checked as bytes, and the test process's
  Python allocations are traced, so "memory not spent" is checked as bytes too;
* parse: an HTML page, broken XML (truncated, a wrong encoding, garbage), billion laughs
  (and an external entity), 10,000 items, one entry with megabytes of title and summary.

Then all of them at once, with one good feed, through a real ``monitor run`` process: the
good feed alerts, ``/healthz`` answers and names each hostile feed's problem, the
process's memory stays bounded, and SIGTERM exits cleanly.

Bounds on time and memory here are generous anti-hang / anti-blow-up limits, not
performance assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from monitor.core.model import Fetched, FetchFailed, FetchResult, ParsedFeed
from monitor.core.normalize import MAX_CONTENT, MAX_SUMMARY, MAX_TITLE
from monitor.core.parse import parse_feed
from monitor.shell.fetch import Fetcher
from tests.feeds import rss as rss_of
from tests.feeds import seed_item
from tests.peers.feedserver import FeedServer

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 2, 17, 12, 0, tzinfo=UTC)
MiB = 1 << 20
CAP = 1 * MiB
RSS_TYPE = {"content-type": "application/rss+xml; charset=utf-8"}
T = TypeVar("T")

pytestmark = pytest.mark.timeout(60)


def make_fetcher(**kw: Any) -> Fetcher:
    args: dict[str, Any] = {
        "user_agent": "", "connect_timeout": 2.0, "timeout": 5.0, "max_bytes": CAP,
        "max_redirects": 5, "concurrency": 8, "per_host": 2,
    }
    args.update(kw)
    return Fetcher(**args)


async def fetch(url: str, **kw: Any) -> FetchResult:
    """One fetch with a fresh fetcher, bounded by a generous anti-hang limit."""
    async with make_fetcher(**kw) as f:
        return await asyncio.wait_for(f.fetch(url, etag=None, last_modified=None), 30)


async def traced(work: Awaitable[T]) -> tuple[T, int]:
    """Run ``work`` and return its result and the peak of Python allocations meanwhile."""
    tracemalloc.start()
    try:
        result = await work
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def item(i: int, *, title: str | None = None, description: str = "Body text.") -> str:
    return (f"<item><title>{title if title is not None else f'Story number {i}'}</title>"
            f"<link>https://news.example.org/{i}</link><guid>g-{i}</guid>"
            f"<description>{description}</description></item>")


def rss(items: list[str], *, encoding: str = "utf-8") -> bytes:
    return (f"<?xml version='1.0' encoding='{encoding}'?><rss version='2.0'><channel>"
            "<title>Hostile</title><link>https://news.example.org/</link>"
            + "".join(items) + "</channel></rss>").encode(encoding)


def parse(body: bytes, headers: dict[str, str] | None = None) -> ParsedFeed:
    return parse_feed(body, RSS_TYPE if headers is None else headers, feed="hostile",
                      url="https://news.example.org/feed", now=NOW)


# -- fetch: hang and trickle -----------------------------------------------------------------


async def test_a_server_that_never_answers_times_out(feed_server: FeedServer) -> None:
    feed_server.slow("/hang", 3600)
    r = await fetch(feed_server.url("/hang"), timeout=0.5)
    assert isinstance(r, FetchFailed) and r.reason == "timed out after 0.5s"


@pytest.mark.parametrize("content_length", [True, False])
async def test_a_trickled_body_hits_the_total_timeout(feed_server: FeedServer,
                                                      content_length: bool) -> None:
    # a byte every 20 ms: every read gets something long before any per-read timeout, so
    # only a deadline on the whole fetch ends it (the body alone would take ~10 s)
    body = rss([item(i) for i in range(3)])
    feed_server.trickle("/trickle", body, interval=0.02, content_length=content_length)
    r = await fetch(feed_server.url("/trickle"), timeout=0.6)
    assert isinstance(r, FetchFailed) and r.reason == "timed out after 0.6s"
    assert 0 < feed_server.sent("/trickle") < len(body)  # bytes did come; it never finished


# -- fetch: size ---------------------------------------------------------------------------


@pytest.mark.parametrize("content_length", [True, False])
async def test_200_mb_is_capped_early_and_not_held(feed_server: FeedServer,
                                                   caplog: pytest.LogCaptureFixture,
                                                   content_length: bool) -> None:
    feed_server.huge("/200mb", 200 * MiB, content_length=content_length)
    with caplog.at_level(logging.DEBUG, logger="monitor.shell.fetch"):
        r, peak = await traced(fetch(feed_server.url("/200mb")))
    assert isinstance(r, FetchFailed)
    assert r.reason == "response larger than 1.0 MiB cap" and r.status == 200
    [done] = [rec.fields for rec in caplog.records  # type: ignore[attr-defined]
              if rec.getMessage() == "fetch.done"]
    if content_length:
        assert done["bytes"] == 0  # refused on the declared length, before reading
    else:
        assert CAP < done["bytes"] <= CAP + 64 * 1024  # one chunk past the cap, no more
    # the server wrote what the sockets' buffers took before the hang-up, not 200 MB
    assert feed_server.sent("/200mb") < CAP + 48 * MiB
    assert peak < 4 * CAP + 16 * MiB  # the body was not kept


@pytest.mark.parametrize("content_length", [True, False])
async def test_a_gzip_bomb_is_capped_on_inflated_size(feed_server: FeedServer,
                                                      content_length: bool) -> None:
    # 2 GiB of spaces inflated from ~2 MB on the wire (only what the client reads is ever
    # made); with a Content-Length the whole bomb is made first, so it is smaller
    expanded = 64 * MiB if content_length else 2048 * MiB
    feed_server.gzip_bomb("/bomb", expanded, content_length=content_length)
    r, peak = await traced(fetch(feed_server.url("/bomb")))
    assert isinstance(r, FetchFailed) and r.reason == "response larger than 1.0 MiB cap"
    assert peak < 4 * CAP + 16 * MiB  # not inflated into memory
    if not content_length:
        # reading stopped early: a small part of the bomb was ever on the wire
        assert feed_server.expanded_sent("/bomb") < expanded // 4
        assert feed_server.sent("/bomb") < 1 * MiB


# -- fetch: redirects --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_loop_fails_at_once(feed_server: FeedServer, status: int) -> None:
    feed_server.redirect("/a", "/b", status)
    feed_server.redirect("/b", "/a", status)
    feed_server.redirect("/self", "/self", status)
    r = await fetch(feed_server.url("/a"))
    assert isinstance(r, FetchFailed) and r.reason == f"redirect loop at {feed_server.url('/a')}"
    assert (feed_server.hits("/a"), feed_server.hits("/b")) == (1, 1)
    r = await fetch(feed_server.url("/self"))
    assert isinstance(r, FetchFailed)
    assert r.reason == f"redirect loop at {feed_server.url('/self')}"
    assert feed_server.hits("/self") == 1


# -- parse: not a feed, broken XML ------------------------------------------------------------


HOME_PAGE = (b"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>News</title>"
             b"<link rel=alternate type=application/rss+xml href=/feed></head><body>"
             b"<h1>Top stories</h1><ul><li><a href=/a>One</a><li><a href=/b>Two</a></ul>"
             b"<p>Sign in<br><img src=x.png></body></html>")


async def test_an_html_page_is_a_clear_problem_not_zero_stories(feed_server: FeedServer) -> None:
    feed_server.serve("/page", HOME_PAGE, content_type="text/html; charset=utf-8")
    r = await fetch(feed_server.url("/page"))
    assert isinstance(r, Fetched)
    p = parse_feed(r.body, r.headers, feed="page", url=r.final_url, now=NOW)
    assert p.failed and p.stories == ()
    assert p.problem is not None
    assert p.problem.startswith("not a feed: got an HTML page (served as text/html)")
    # the same page served with a feed's type is recognised by its first bytes
    p = parse(HOME_PAGE)
    assert p.failed and p.problem and p.problem.startswith("not a feed: got an HTML page")


def test_a_truncated_feed_keeps_the_entries_before_the_cut() -> None:
    whole = rss([item(i) for i in range(5)])
    cut = whole[: whole.index(b"<item>", whole.index(b"g-3"))] + b"<item><title>Half"
    p = parse(cut)
    assert not p.failed
    assert [s.title for s in p.stories][:4] == [f"Story number {i}" for i in range(4)]
    assert p.problem is not None and p.problem.startswith("not well-formed XML at line 1")


def test_a_wrong_encoding_declaration_keeps_the_entries_and_says_so() -> None:
    body = rss([item(1, title="Caf\u00e9 news"), item(2)], encoding="latin-1").replace(
        b"encoding='latin-1'", b"encoding='utf-8'")
    p = parse(body)
    assert not p.failed and len(p.stories) == 2
    assert p.problem is not None and p.problem.startswith("character encoding:")
    assert p.stories[0].title.startswith("Caf")


@pytest.mark.parametrize("body", [
    b"\x00\x01\x02 binary \xff\xfe junk <<<",
    b"<?xml version='1.0'?><rss version='2.0'><channel><title>t</title></chan",
    b"<?xml version='1.0'?><rss version='2.0'><channel><item><title>a</b></item>",
])
def test_broken_xml_without_entries_fails_with_a_readable_problem(body: bytes) -> None:
    p = parse(body)
    assert p.failed and p.stories == ()
    assert p.problem is not None and p.problem.startswith("not well-formed XML at line ")
    assert "Exception" not in p.problem and "<unknown>" not in p.problem


# -- parse: entities ----------------------------------------------------------------------------


def _billion_laughs(levels: int = 9) -> bytes:
    decls = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, levels + 1)]
    top = f"&lol{levels};"
    return (f'<?xml version="1.0"?>\n<!DOCTYPE rss [\n {chr(10).join(decls)}\n]>\n'
            f'<rss version="2.0"><channel><title>{top}</title>'
            f"{item(1, title=top, description=top * 3)}{item(2, title='Plain')}"
            "</channel></rss>").encode()


def test_billion_laughs_is_not_expanded() -> None:
    body = _billion_laughs()  # 10**9 "lol"s if expanded: 3 GB
    assert len(body) < 2000
    started = time.monotonic()
    tracemalloc.start()
    try:
        p = parse(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 20  # anti-hang only
    assert peak < 32 * MiB
    assert [s.link for s in p.stories] == ["https://news.example.org/1",
                                           "https://news.example.org/2"]
    everything = " ".join(f"{s.title} {s.summary} {s.content}" for s in p.stories) + p.title
    assert "lollol" not in everything  # no entity was expanded, not even one level
    assert p.stories[1].title == "Plain"
    assert p.problem is not None  # the undefined-entity complaint is kept as the problem


def test_an_external_entity_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-7f3a", encoding="utf-8")
    body = (f'<?xml version="1.0"?>\n<!DOCTYPE rss [ <!ENTITY xxe SYSTEM "{secret.as_uri()}"> ]>'
            f"\n<rss version='2.0'><channel><title>&xxe;</title>"
            f"{item(1, title='&xxe;', description='&xxe;')}</channel></rss>").encode()
    p = parse(body)
    assert "TOP-SECRET" not in f"{p.title} {p.stories!r}"


# -- parse: volume -----------------------------------------------------------------------------


def test_ten_thousand_items_are_all_normalised() -> None:
    # no per-feed item cap in the product: every entry becomes a story
    body = rss([item(i) for i in range(10_000)])
    p = parse(body)
    assert not p.failed and p.problem is None
    assert len(p.stories) == 10_000
    assert len({s.id for s in p.stories}) == 10_000
    assert p.stories[-1].title == "Story number 9999"
    assert p.stories[-1].link == "https://news.example.org/9999"


def test_a_gigantic_title_and_summary_are_bounded() -> None:
    words = "word " * (1 * MiB)  # 5 MB
    body = rss([
        item(1, title="Headline " * (250 * 1024), description=words),  # ~2 MB title
        item(2, title="x" * (2 * MiB), description="<p>" + "y" * (5 * MiB) + "</p>"),  # no spaces
        f"<item><title>Content</title><link>https://news.example.org/c</link><guid>c</guid>"
        f"<content:encoded xmlns:content='http://purl.org/rss/1.0/modules/content/'>"
        f"<![CDATA[{'<b>bold</b> text ' * (400 * 1024)}]]></content:encoded></item>",  # ~7 MB
    ])
    started = time.monotonic()
    p = parse(body)
    assert time.monotonic() - started < 30  # anti-hang only
    assert not p.failed and len(p.stories) == 3
    for s in p.stories:
        assert len(s.title) <= MAX_TITLE
        assert len(s.summary) <= MAX_SUMMARY
        assert len(s.content) <= MAX_CONTENT
    assert p.stories[0].title.startswith("Headline Headline") and p.stories[0].title.endswith("…")
    assert p.stories[0].summary.startswith("word word")
    assert p.stories[2].content.startswith("bold text")


# -- all of them at once, through a real daemon ------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(cond: Callable[[], bool | Awaitable[bool]], what: str,
                limit: float = 30.0) -> None:
    """Wait for something the daemon must bring about (bounded; not a timing assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while True:
        got = cond()
        if not isinstance(got, bool):
            got = await got
        if got:
            return
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.1)


async def get_health(port: int) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=3)
        ) as r:
            data: dict[str, Any] = await r.json()
            return data
    except (TimeoutError, aiohttp.ClientError):
        return None


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def family(pid: int) -> set[int]:
    """The process and its children (the parse workers)."""
    out = {pid}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out |= {int(x) for x in (task / "children").read_text().split()}
    return out


# what each hostile feed must be reported as, by /healthz (a substring of its error)
HOSTILE = {
    "hang": "timed out after 2s",
    "trickle": "timed out after 2s",
    "huge-declared": "response larger than 8.0 MiB cap",
    "huge-chunked": "response larger than 8.0 MiB cap",
    "gzip-bomb": "response larger than 8.0 MiB cap",
    "redirect-loop": "redirect loop at ",
    "html": "not a feed: got an HTML page",
    "garbage": "not well-formed XML at line 1",
    "billion-laughs": None,  # entries survive: polled, not failing
    "truncated": None,
    "ten-thousand": None,
    "gigantic": None,
}


@pytest.fixture
async def hostile_daemon(tmp_path: Path, feed_server: FeedServer) -> AsyncIterator[
        tuple[asyncio.subprocess.Process, int, Path]]:
    fs = feed_server
    fs.serve("/good.rss", rss_of([]))
    fs.slow("/hang", 3600)
    fs.trickle("/trickle", rss([item(i) for i in range(3)]), interval=0.05)
    fs.huge("/huge-declared", 200 * MiB, content_length=True)
    fs.huge("/huge-chunked", 200 * MiB, content_length=False)
    fs.gzip_bomb("/gzip-bomb", 1024 * MiB)
    fs.redirect("/redirect-loop", "/redirect-loop-2")
    fs.redirect("/redirect-loop-2", "/redirect-loop")
    fs.serve("/html", HOME_PAGE, content_type="text/html; charset=utf-8")
    fs.serve("/garbage", b"\x00\x01\x02 binary \xff\xfe junk <<<")
    fs.serve("/billion-laughs", _billion_laughs())
    whole = rss([item(i) for i in range(5)])
    fs.serve("/truncated", whole[: whole.index(b"<item>", whole.index(b"g-3"))])
    fs.serve("/ten-thousand", rss([item(i) for i in range(10_000)]))
    fs.serve("/gigantic", rss([item(1, title="Headline " * (250 * 1024),
                                    description="word " * MiB)]))
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    port = free_port()
    feeds = "\n".join(
        f"  - {{name: {name}, url: '{fs.url('/' + name)}', interval: 1s}}" for name in HOSTILE)
    (tmp_path / "config.yaml").write_text(f"""
feeds:
  - {{name: good, url: '{fs.url('/good.rss')}', interval: 0.5s}}
{feeds}
defaults: {{jitter: 0}}
rules: rules
store: sqlite:///state.db
channels:
  slack-news: {{type: file, path: alerts.jsonl}}
  email-oncall: {{type: file, path: email.jsonl}}
  audit-file: {{type: file, path: audit.jsonl}}
fetch:
  timeout: 2s
  connect_timeout: 1s
  max_bytes: 8MiB
  per_host: 16  # all on one local server: as if each were on a host of its own
  parse_in: process
  parse_workers: 2
delivery: {{retry_min: 0.2s, retry_max: 0.5s}}
server: {{listen: '127.0.0.1:{port}'}}
""", encoding="utf-8")
    log = (tmp_path / "daemon.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor", "run", "--config", str(tmp_path / "config.yaml"),
        "--log-level", "debug", stdout=log, stderr=log, cwd=str(ROOT),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield proc, port, tmp_path
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
async def test_a_daemon_fed_every_hostile_feed_keeps_alerting_and_stays_small(
    hostile_daemon: tuple[asyncio.subprocess.Process, int, Path], feed_server: FeedServer,
) -> None:
    proc, port, tmp = hostile_daemon
    fs = feed_server
    peak = {"kib": 0}

    def sample() -> None:
        for pid in family(proc.pid):
            peak["kib"] = max(peak["kib"], rss_kib(pid))

    async def polled_all() -> bool:
        sample()
        assert proc.returncode is None, (tmp / "daemon.log").read_text()[-3000:]
        return all(fs.hits("/" + name) >= 1 for name in HOSTILE) and fs.hits("/good.rss") >= 2

    # the good feed's baseline, and every hostile feed tried at least once
    await until(polled_all, "a poll of every feed")
    fs.set("/good.rss", rss_of([seed_item()]))

    def alerts() -> str:
        p = tmp / "alerts.jsonl"
        return p.read_text(encoding="utf-8") if p.exists() else ""

    async def alerted() -> bool:
        sample()
        return "Witkoff" in alerts()

    await until(alerted, "the good feed's alert while the hostile feeds are polled")

    async def all_reported() -> bool:
        sample()
        h = await get_health(port)
        if h is None:
            return False
        errors = {f["feed"]: f["error"] for f in h["feeds"]["failing"]}
        return all(name in errors for name, want in HOSTILE.items() if want)

    await until(all_reported, "/healthz to list every failing hostile feed")
    h = await get_health(port)
    assert h is not None and h["status"] == "degraded"
    errors = {f["feed"]: f["error"] for f in h["feeds"]["failing"]}
    for name, want in HOSTILE.items():
        if want:
            assert want in errors[name], (name, errors[name])
        else:
            assert name not in errors, (name, errors[name])  # its entries were taken
    assert "good" not in errors
    # the feeds whose entries survive were taken, with the problem said where there is one
    log = tmp / "daemon.log"

    def polled(name: str, *expect: str) -> bool:
        lines = [line for line in log.read_text(encoding="utf-8").splitlines()
                 if f"feed.polled feed={name} status=200" in line]
        return any(all(e in line for e in expect) for line in lines)

    await until(lambda: polled("ten-thousand", "entries=10000"), "the 10,000 items taken")
    assert polled("truncated", "entries=4", 'problem="not well-formed XML at line 1')
    assert polled("billion-laughs", "entries=2", "undefined entity")
    assert polled("gigantic", "entries=1")
    # every hostile feed is polled again since (the daemon keeps at it, and stays up)
    seen = {name: fs.hits("/" + name) for name in HOSTILE}

    def again() -> bool:
        sample()
        return all(fs.hits("/" + n) > seen[n] for n in HOSTILE)

    await until(again, "another round of polls")
    assert await get_health(port) is not None
    assert alerts().count("Witkoff") >= 1
    assert len([line for line in alerts().splitlines() if line.strip()]) == 1  # once
    assert 0 < peak["kib"] < 600 * 1024, f"peak RSS {peak['kib']} KiB"

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert "daemon.stopped" in log.read_text(encoding="utf-8")
