"""monitor.shell.fetch against a real local feed server (tests/peers/feedserver.py)."""

from __future__ import annotations

import asyncio
import gzip
import logging
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import pytest_asyncio

from monitor.core.model import Fetched, FetchFailed, NotModified
from monitor.shell.fetch import (
    DEFAULT_USER_AGENT,
    Fetcher,
    client_timeout,
    human_size,
)
from tests.conftest import shared_path
from tests.peers.feedserver import FeedServer

RSS = b"<?xml version='1.0'?><rss version='2.0'><channel><title>t</title></channel></rss>"
CAP = 256 * 1024


def make_fetcher(**kw: object) -> Fetcher:
    args: dict[str, object] = {
        "user_agent": "",
        "connect_timeout": 5.0,
        "timeout": 10.0,
        "max_bytes": CAP,
        "max_redirects": 5,
        "concurrency": 8,
        "per_host": 2,
    }
    args.update(kw)
    return Fetcher(**args)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def fetcher() -> AsyncIterator[Fetcher]:
    async with make_fetcher() as f:
        yield f


async def get(fetcher: Fetcher, url: str, etag: str | None = None,
              last_modified: str | None = None) -> Fetched | NotModified | FetchFailed:
    return await fetcher.fetch(url, etag=etag, last_modified=last_modified)


# -- 200, validators, 304 ---------------------------------------------------------------


async def test_200_returns_body_headers_and_validators(feed_server: FeedServer,
                                                       fetcher: Fetcher) -> None:
    lm = "Tue, 17 Feb 2026 10:00:00 GMT"
    feed_server.serve("/rss", RSS, last_modified=lm, headers={"X-Custom": "Yes"})
    r = await get(fetcher, feed_server.url("/rss"))
    assert isinstance(r, Fetched)
    assert r.status == 200 and r.body == RSS
    assert r.url == r.final_url == feed_server.url("/rss")
    assert r.headers["content-type"] == "application/rss+xml; charset=utf-8"
    assert r.headers["x-custom"] == "Yes"
    assert all(k == k.lower() for k in r.headers)
    assert r.etag is not None and r.etag == r.headers["etag"]
    assert r.last_modified == lm
    assert r.permanent_redirect is None
    sent = feed_server.last("/rss").headers
    assert "If-None-Match" not in sent and "If-Modified-Since" not in sent


async def test_etag_roundtrip_gives_304_then_200_after_change(feed_server: FeedServer,
                                                              fetcher: Fetcher) -> None:
    feed_server.serve("/rss", RSS, etag=True)
    url = feed_server.url("/rss")
    first = await get(fetcher, url)
    assert isinstance(first, Fetched) and first.etag
    second = await get(fetcher, url, etag=first.etag)
    assert isinstance(second, NotModified)
    assert second.etag == first.etag and second.url == url
    assert feed_server.last("/rss").headers["If-None-Match"] == first.etag
    feed_server.set("/rss", RSS.replace(b"<title>t", b"<title>changed"))
    third = await get(fetcher, url, etag=first.etag)
    assert isinstance(third, Fetched) and b"changed" in third.body
    assert third.etag != first.etag
    assert feed_server.hits("/rss") == 3


async def test_last_modified_roundtrip(feed_server: FeedServer, fetcher: Fetcher) -> None:
    feed_server.serve("/atom", RSS, etag=False,
                      last_modified=datetime(2026, 2, 17, 10, 0, tzinfo=UTC))
    url = feed_server.url("/atom")
    first = await get(fetcher, url)
    assert isinstance(first, Fetched) and first.etag is None and first.last_modified
    second = await get(fetcher, url, last_modified=first.last_modified)
    assert isinstance(second, NotModified)
    assert second.last_modified == first.last_modified and second.etag is None
    assert feed_server.last("/atom").headers["If-Modified-Since"] == first.last_modified
    feed_server.set("/atom", RSS + b" ")
    third = await get(fetcher, url, last_modified=first.last_modified)
    assert isinstance(third, Fetched) and third.last_modified != first.last_modified


async def test_both_validators_sent(feed_server: FeedServer, fetcher: Fetcher) -> None:
    feed_server.serve("/rss", RSS, etag='"v1"')
    r = await get(fetcher, feed_server.url("/rss"), etag='"v1"',
                  last_modified="Tue, 17 Feb 2026 10:00:00 GMT")
    assert isinstance(r, NotModified)
    sent = feed_server.last("/rss").headers
    assert sent["If-None-Match"] == '"v1"'
    assert sent["If-Modified-Since"] == "Tue, 17 Feb 2026 10:00:00 GMT"


async def test_gzip_is_decompressed(feed_server: FeedServer, fetcher: Fetcher) -> None:
    body = RSS * 200
    feed_server.serve("/gz", body, gzip=True)
    r = await get(fetcher, feed_server.url("/gz"))
    assert isinstance(r, Fetched) and r.body == body
    assert r.headers["content-encoding"] == "gzip"
    assert "gzip" in feed_server.last("/gz").headers["Accept-Encoding"]


async def test_cap_applies_to_decompressed_bytes(feed_server: FeedServer) -> None:
    bomb = b"<rss>" + b" " * (4 * CAP)
    assert len(gzip.compress(bomb)) < CAP  # small on the wire, big once inflated
    feed_server.serve("/bomb", bomb, gzip=True)
    async with make_fetcher() as f:
        r = await get(f, feed_server.url("/bomb"))
    assert isinstance(r, FetchFailed)
    assert r.reason == "response larger than 256.0 KiB cap"


async def test_real_feed_file_is_served_with_its_type(feed_server: FeedServer,
                                                      fetcher: Fetcher) -> None:
    root = shared_path("corpora", "real-feeds")
    file = next(p for p in sorted(root.rglob("*.xml")) if 0 < p.stat().st_size < CAP)
    feed_server.serve_file("/real", file)
    r = await get(fetcher, feed_server.url("/real"))
    assert isinstance(r, Fetched) and r.body == file.read_bytes()
    assert r.headers["content-type"].startswith("application/xml")


async def test_real_feed_gzipped_fetches_and_parses(feed_server: FeedServer) -> None:
    # end to end with the next stage: body + headers go to parse as they came
    from monitor.core.parse import parse_feed

    file = shared_path("corpora", "real-feeds", "news-snapshot-2026-02-17", "bbc-news-top.xml")
    feed_server.serve_file("/bbc", file, gzip=True)
    async with make_fetcher(max_bytes=10 * 1024 * 1024) as f:
        r = await get(f, feed_server.url("/bbc"))
    assert isinstance(r, Fetched) and r.body == file.read_bytes()
    parsed = parse_feed(r.body, r.headers, feed="bbc", url=r.final_url,
                        now=datetime(2026, 2, 17, tzinfo=UTC))
    assert not parsed.failed and len(parsed.stories) > 5


async def test_user_agent_and_accept_are_sent(feed_server: FeedServer) -> None:
    feed_server.serve("/rss", RSS)
    async with make_fetcher() as f:
        await get(f, feed_server.url("/rss"))
    assert feed_server.last("/rss").headers["User-Agent"] == DEFAULT_USER_AGENT
    assert "application/rss+xml" in feed_server.last("/rss").headers["Accept"]
    async with make_fetcher(user_agent="acme-news/2.0 (+mailto:ops@acme.test)") as f:
        await get(f, feed_server.url("/rss"))
    assert feed_server.last("/rss").headers["User-Agent"] == "acme-news/2.0 (+mailto:ops@acme.test)"


async def test_fetch_done_is_logged_at_debug(feed_server: FeedServer, fetcher: Fetcher,
                                             caplog: pytest.LogCaptureFixture) -> None:
    feed_server.serve("/rss", RSS)
    with caplog.at_level(logging.DEBUG, logger="monitor.shell.fetch"):
        await get(fetcher, feed_server.url("/rss"))
    [rec] = [r for r in caplog.records if r.getMessage() == "fetch.done"]
    fields = rec.fields  # type: ignore[attr-defined]
    assert fields["status"] == 200 and fields["bytes"] == len(RSS)
    assert fields["url"] == feed_server.url("/rss") and isinstance(fields["ms"], int)


# -- network failures -------------------------------------------------------------------


async def test_slow_server_times_out(feed_server: FeedServer) -> None:
    feed_server.slow("/slow", 30)
    async with make_fetcher(timeout=0.3) as f:
        r = await get(f, feed_server.url("/slow"))
    assert isinstance(r, FetchFailed)
    assert r.reason == "timed out after 0.3s" and r.status is None


@pytest.mark.parametrize("content_length", [True, False])
async def test_stalled_body_times_out(feed_server: FeedServer, content_length: bool) -> None:
    # headers arrive at once, the body stalls: the timeout covers reading the body too,
    # read in one go (a declared length) or streamed (chunked)
    feed_server.slow("/stall", 30, body=RSS, mid_body=True, content_length=content_length)
    async with make_fetcher(timeout=0.3) as f:
        r = await get(f, feed_server.url("/stall"))
    assert isinstance(r, FetchFailed) and r.reason == "timed out after 0.3s"


@pytest.mark.parametrize("total", [5.3, 30.0, 299.7])
async def test_timeouts_are_exact_not_rounded_up(total: float) -> None:
    # aiohttp rounds a timeout of 5 s or more up to the next whole second unless told
    # not to: `timeout: 30` could then run for 31 s. Checked on aiohttp's own timer
    from aiohttp.helpers import TimeoutHandle

    loop = asyncio.get_running_loop()
    t = client_timeout(total, 10.0)
    assert t.total == total and t.sock_connect == 10.0
    handle = TimeoutHandle(loop, t.total, ceil_threshold=t.ceil_threshold).start()
    default = TimeoutHandle(loop, t.total).start()  # what aiohttp does by default
    assert handle is not None and default is not None
    try:
        assert handle.when() - loop.time() <= total  # started before now: at most total
        assert default.when() == int(default.when())  # rounded: what this guards against
    finally:
        handle.cancel()
        default.cancel()


async def test_dropped_connection_fails(feed_server: FeedServer, fetcher: Fetcher) -> None:
    feed_server.drop("/drop")
    r = await get(fetcher, feed_server.url("/drop"))
    assert isinstance(r, FetchFailed)
    assert r.reason == ("response body incomplete: Not enough data to satisfy content length"
                        " header (received 24 of 10000 bytes)")


async def test_connect_timeout(blackhole_port: int) -> None:
    async with make_fetcher(connect_timeout=0.3, timeout=20) as f:
        r = await get(f, f"http://127.0.0.1:{blackhole_port}/rss")
    assert isinstance(r, FetchFailed)
    assert r.reason == "connect timed out after 0.3s" and r.status is None


async def test_total_timeout_during_connect_is_reported_as_total(blackhole_port: int) -> None:
    async with make_fetcher(connect_timeout=20, timeout=0.3) as f:
        r = await get(f, f"http://127.0.0.1:{blackhole_port}/rss")
    assert isinstance(r, FetchFailed) and r.reason == "timed out after 0.3s"


async def test_connection_refused(unused_tcp_port: int, fetcher: Fetcher) -> None:
    r = await get(fetcher, f"http://127.0.0.1:{unused_tcp_port}/rss")
    assert isinstance(r, FetchFailed)
    assert r.reason.startswith(f"cannot connect to 127.0.0.1:{unused_tcp_port}")
    assert r.status is None


async def test_unsupported_url(fetcher: Fetcher) -> None:
    r = await get(fetcher, "ftp://example.invalid/feed")
    assert isinstance(r, FetchFailed) and "unsupported URL" in r.reason


# -- size cap -----------------------------------------------------------------------------


@pytest.mark.parametrize("content_length", [True, False])
async def test_huge_body_over_cap(feed_server: FeedServer, fetcher: Fetcher,
                                  content_length: bool) -> None:
    feed_server.huge("/huge", 50 * CAP, content_length=content_length)
    r = await get(fetcher, feed_server.url("/huge"))
    assert isinstance(r, FetchFailed)
    assert r.reason == "response larger than 256.0 KiB cap" and r.status == 200


@pytest.mark.parametrize("content_length", [True, False])
async def test_body_exactly_at_cap_is_accepted(feed_server: FeedServer, fetcher: Fetcher,
                                               content_length: bool) -> None:
    feed_server.huge("/edge", CAP, content_length=content_length)
    r = await get(fetcher, feed_server.url("/edge"))
    assert isinstance(r, Fetched) and len(r.body) == CAP


def test_human_size() -> None:
    assert human_size(10 * 1024 * 1024) == "10.0 MiB"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(100) == "100 bytes"


# -- redirects ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", [301, 308])
async def test_permanent_redirect_is_reported(feed_server: FeedServer, fetcher: Fetcher,
                                              code: int) -> None:
    feed_server.serve("/new", RSS)
    feed_server.redirect("/old", "/new", status=code)
    r = await get(fetcher, feed_server.url("/old"))
    assert isinstance(r, Fetched) and r.body == RSS
    assert r.url == feed_server.url("/old")
    assert r.final_url == r.permanent_redirect == feed_server.url("/new")


async def test_chain_of_permanent_redirects(feed_server: FeedServer, fetcher: Fetcher) -> None:
    feed_server.serve("/c", RSS)
    feed_server.redirect("/a", feed_server.url("/b"), status=301)
    feed_server.redirect("/b", "c", status=308)  # relative reference
    r = await get(fetcher, feed_server.url("/a"))
    assert isinstance(r, Fetched) and r.permanent_redirect == feed_server.url("/c")


@pytest.mark.parametrize("code", [302, 303, 307])
async def test_temporary_redirect_is_not_permanent(feed_server: FeedServer, fetcher: Fetcher,
                                                   code: int) -> None:
    feed_server.serve("/new", RSS)
    feed_server.redirect("/tmp", "/new", status=code)
    r = await get(fetcher, feed_server.url("/tmp"))
    assert isinstance(r, Fetched)
    assert r.final_url == feed_server.url("/new") and r.permanent_redirect is None


async def test_mixed_chain_is_not_permanent(feed_server: FeedServer, fetcher: Fetcher) -> None:
    feed_server.serve("/c", RSS)
    feed_server.redirect("/a", "/b", status=301)
    feed_server.redirect("/b", "/c", status=302)
    r = await get(fetcher, feed_server.url("/a"))
    assert isinstance(r, Fetched) and r.permanent_redirect is None


async def test_redirect_then_304_keeps_validators(feed_server: FeedServer,
                                                  fetcher: Fetcher) -> None:
    feed_server.serve("/new", RSS, etag='"e1"')
    feed_server.redirect("/old", "/new", status=301)
    r = await get(fetcher, feed_server.url("/old"), etag='"e1"')
    assert isinstance(r, NotModified)
    assert r.etag == '"e1"' and r.permanent_redirect == feed_server.url("/new")
    assert feed_server.last("/new").headers["If-None-Match"] == '"e1"'


async def test_redirect_loop(feed_server: FeedServer, fetcher: Fetcher) -> None:
    feed_server.redirect("/a", "/b")
    feed_server.redirect("/b", "/a")
    r = await get(fetcher, feed_server.url("/a"))
    assert isinstance(r, FetchFailed) and r.reason.startswith("redirect loop")
    assert feed_server.hits("/a") == 1 and feed_server.hits("/b") == 1


async def test_too_many_redirects(feed_server: FeedServer) -> None:
    for i in range(5):
        feed_server.redirect(f"/r{i}", f"/r{i + 1}", status=302)
    feed_server.serve("/r5", RSS)
    async with make_fetcher(max_redirects=4) as f:
        r = await get(f, feed_server.url("/r0"))
    assert isinstance(r, FetchFailed)
    assert r.reason == "too many redirects (more than 4)"
    assert feed_server.hits("/r5") == 0
    async with make_fetcher(max_redirects=5) as f:
        ok = await get(f, feed_server.url("/r0"))
    assert isinstance(ok, Fetched)


async def test_redirect_to_other_scheme(feed_server: FeedServer, fetcher: Fetcher) -> None:
    feed_server.redirect("/ftp", "ftp://example.invalid/feed.xml", status=302)
    r = await get(fetcher, feed_server.url("/ftp"))
    assert isinstance(r, FetchFailed)
    assert r.reason == "redirect to unsupported URL 'ftp://example.invalid/feed.xml'"


async def test_redirect_without_location(feed_server: FeedServer, fetcher: Fetcher) -> None:
    feed_server.status("/bad", 301)
    r = await get(fetcher, feed_server.url("/bad"))
    assert isinstance(r, FetchFailed)
    assert r.reason == "HTTP 301 Moved Permanently without Location"


# -- HTTP errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"),
    [(404, "HTTP 404 Not Found"), (500, "HTTP 500 Internal Server Error"),
     (403, "HTTP 403 Forbidden")],
)
async def test_http_errors(feed_server: FeedServer, fetcher: Fetcher, code: int,
                           reason: str) -> None:
    feed_server.status("/e", code)
    r = await get(fetcher, feed_server.url("/e"))
    assert isinstance(r, FetchFailed)
    assert (r.status, r.reason, r.gone, r.retry_after) == (code, reason, False, None)


async def test_410_is_gone(feed_server: FeedServer, fetcher: Fetcher) -> None:
    feed_server.status("/gone", 410)
    r = await get(fetcher, feed_server.url("/gone"))
    assert isinstance(r, FetchFailed) and r.gone and r.status == 410
    assert r.reason == "HTTP 410 Gone"


@pytest.mark.parametrize("code", [429, 503])
async def test_retry_after_seconds(feed_server: FeedServer, fetcher: Fetcher, code: int) -> None:
    feed_server.status("/busy", code, headers={"Retry-After": "120"})
    r = await get(fetcher, feed_server.url("/busy"))
    assert isinstance(r, FetchFailed) and r.status == code and r.retry_after == 120.0


@pytest.mark.parametrize("code", [429, 503])
async def test_retry_after_http_date(feed_server: FeedServer, fetcher: Fetcher,
                                     code: int) -> None:
    # measured from the response's own Date header, so the test does not depend on the clock
    server_now = datetime(2026, 2, 17, 12, 0, 0, tzinfo=UTC)
    feed_server.status("/busy", code, headers={
        "Date": format_datetime(server_now, usegmt=True),
        "Retry-After": format_datetime(server_now + timedelta(minutes=10), usegmt=True),
    })
    r = await get(fetcher, feed_server.url("/busy"))
    assert isinstance(r, FetchFailed) and r.retry_after == 600.0


async def test_unparsable_retry_after_is_ignored(feed_server: FeedServer,
                                                 fetcher: Fetcher) -> None:
    feed_server.status("/busy", 429, headers={"Retry-After": "soon-ish"})
    r = await get(fetcher, feed_server.url("/busy"))
    assert isinstance(r, FetchFailed) and r.retry_after is None
    assert r.reason == "HTTP 429 Too Many Requests"


# -- concurrency -------------------------------------------------------------------------


async def test_per_host_limit_really_limits(feed_server: FeedServer) -> None:
    gate = feed_server.gate("/held")
    async with make_fetcher(per_host=2, concurrency=10) as f:
        tasks = [asyncio.create_task(get(f, feed_server.url("/held"))) for _ in range(6)]
        await feed_server.wait_active(2, "/held")  # the limit is reached...
        gate.set()  # ...then everything is let through: the rest run at most 2 at a time
        results = await asyncio.gather(*tasks)
    assert all(isinstance(r, Fetched) for r in results)
    assert feed_server.hits("/held") == 6
    assert feed_server.max_active("/held") == 2


async def test_per_host_limit_with_slow_server(feed_server: FeedServer) -> None:
    feed_server.slow("/slow", 0.1)
    async with make_fetcher(per_host=1, concurrency=10) as f:
        results = await asyncio.gather(*(get(f, feed_server.url("/slow")) for _ in range(4)))
    assert all(isinstance(r, Fetched) for r in results)
    assert feed_server.max_active("/slow") == 1


async def test_without_a_tight_limit_requests_overlap(feed_server: FeedServer) -> None:
    # the control for the tests above: the server does see parallel requests
    gate = feed_server.gate("/gate")
    async with make_fetcher(per_host=6, concurrency=10) as f:
        tasks = [asyncio.create_task(get(f, feed_server.url("/gate"))) for _ in range(6)]
        await feed_server.wait_active(6, "/gate")
        gate.set()
        results = await asyncio.gather(*tasks)
    assert all(isinstance(r, Fetched) for r in results)
    assert feed_server.max_active("/gate") == 6


async def test_global_concurrency_limit(feed_server: FeedServer) -> None:
    gates = [feed_server.gate("/g1"), feed_server.gate("/g2")]
    async with make_fetcher(per_host=10, concurrency=3) as f:
        urls = [feed_server.url(p) for p in ("/g1", "/g2") * 4]
        tasks = [asyncio.create_task(get(f, u)) for u in urls]
        await feed_server.wait_active(3)
        for g in gates:
            g.set()
        results = await asyncio.gather(*tasks)
    assert all(isinstance(r, Fetched) for r in results)
    assert feed_server.max_active() == 3


async def test_redirect_chain_on_one_host_with_per_host_1(feed_server: FeedServer) -> None:
    # each hop releases the host slot before the next one takes it: no self-deadlock
    feed_server.serve("/c", RSS)
    feed_server.redirect("/a", "/b", status=302)
    feed_server.redirect("/b", "/c", status=302)
    async with make_fetcher(per_host=1, concurrency=1) as f:
        results = await asyncio.gather(*(get(f, feed_server.url("/a")) for _ in range(3)))
    assert all(isinstance(r, Fetched) for r in results)
    assert feed_server.max_active() == 1


def other_host_url(feed_server: FeedServer, path: str) -> str:
    """The same server under another host name (``localhost``), or skip."""
    try:
        infos = socket.getaddrinfo("localhost", None, socket.AF_INET)
    except OSError:
        pytest.skip("localhost does not resolve")
    if not any(i[4][0] == "127.0.0.1" for i in infos):
        pytest.skip("localhost is not 127.0.0.1 here")
    return feed_server.url(path).replace("127.0.0.1", "localhost")


async def test_busy_host_does_not_block_other_hosts(feed_server: FeedServer) -> None:
    other = other_host_url(feed_server, "/free")
    gate = feed_server.gate("/busy")
    feed_server.serve("/free", RSS)
    async with make_fetcher(per_host=1, concurrency=2) as f:
        busy = [asyncio.create_task(get(f, feed_server.url("/busy"))) for _ in range(3)]
        await feed_server.wait_active(1, "/busy")
        # two fetches queue behind the busy host, yet they hold no global slot
        free = await asyncio.wait_for(get(f, other), 10)
        assert isinstance(free, Fetched)
        gate.set()
        assert all(isinstance(r, Fetched) for r in await asyncio.gather(*busy))
    assert feed_server.max_active("/busy") == 1


async def test_cross_host_redirect(feed_server: FeedServer, fetcher: Fetcher) -> None:
    other = other_host_url(feed_server, "/there")
    feed_server.serve("/there", RSS)
    feed_server.redirect("/here", other, status=308)
    r = await get(fetcher, feed_server.url("/here"))
    assert isinstance(r, Fetched) and r.permanent_redirect == other == r.final_url


async def test_fetch_outside_context_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError):
        await make_fetcher().fetch("http://127.0.0.1/", etag=None, last_modified=None)
