"""A real local HTTP feed server for tests and benches: the ``feed_server`` fixture.

It is an ``aiohttp.web`` server on 127.0.0.1 (random port) whose paths are programmed
by the test; every request is logged. Loaded as a pytest plugin by tests/conftest.py.

    async def test_poll(feed_server):
        feed_server.serve("/rss", b"<rss>...</rss>", etag=True)
        url = feed_server.url("/rss")                # http://127.0.0.1:PORT/rss
        ...                                          # fetch it
        feed_server.set("/rss", b"<rss>new</rss>")   # change it between polls (new ETag)
        assert feed_server.hits("/rss") == 2
        assert feed_server.last("/rss").headers["If-None-Match"] == '"..."'

Programming a path (each call replaces what the path did before):

``serve(path, body, *, content_type=RSS, etag=True, last_modified=None, gzip=False, headers=None)``
    200 with ``body``. ``etag=True`` sends a strong ETag derived from the body (a ``str``
    is sent as is, ``False`` sends none); ``last_modified`` (``str`` HTTP-date or aware
    ``datetime``) sends Last-Modified. A matching ``If-None-Match`` (which wins, as in
    RFC 9110) or ``If-Modified-Since`` gets a 304. ``gzip=True`` gzips the body when the
    client accepts gzip.
``set(path, body, *, last_modified=None)``
    new body for a served path; the ETag follows the body, and Last-Modified (if any)
    moves one minute forward unless given, so validators from the old body stop matching.
``serve_file(path, file, *, content_type=None, **serve_kw)``
    serve a file (e.g. from ../shared/corpora/real-feeds); type guessed from the suffix.
``slow(path, seconds, body=b"<rss/>", *, mid_body=False, content_length=True)``
    wait ``seconds`` before answering, or (``mid_body=True``) after sending the headers
    and half the body (chunked with ``content_length=False``); the wait ends early when
    the server shuts down.
``gate(path, body=b"<rss/>") -> asyncio.Event``
    hold every request until the test sets the returned event.
``drop(path)``
    send headers and half a body (Content-Length promises more), then close the socket.
``huge(path, n_bytes, *, content_length=True)``
    stream ``n_bytes`` of filler in 64 KiB chunks; without Content-Length it is chunked.
    The bytes written before the client went away are counted in ``sent(path)``.
``trickle(path, body, *, interval, content_length=True)``
    send the headers at once, then ``body`` one byte every ``interval`` seconds (chunked
    with ``content_length=False``), so no single read waits long; ``sent(path)`` counts.
``gzip_bomb(path, expanded, *, content_length=False)``
    a gzip-encoded body (``Content-Encoding: gzip``, whatever the client accepts) that
    inflates to ``expanded`` bytes (an RSS start, then spaces), compressed as it streams,
    so a bomb of gigabytes costs the server only what the client reads.
    ``sent(path)`` counts the compressed bytes written, ``expanded_sent(path)`` what they
    inflate to. ``content_length=True`` compresses it all first (keep ``expanded`` small).
``redirect(path, to, status=301)``
    redirect to ``to`` (a path, a relative reference or an absolute URL); two paths
    redirecting to each other make a loop.
``status(path, code, headers=None, body=b"")``
    answer ``code`` (429, 404, 410, 500, 503, …) with these headers (e.g. Retry-After).

Any other path is a 404.

The ``blackhole_port`` fixture is a 127.0.0.1 port whose listen backlog is full, so a new
TCP connect to it hangs (the kernel drops the SYN): use it to test connect timeouts.

Observing:

``requests``                    every request: ``RecordedRequest(path, method, headers, query)``,
                                headers case-insensitive (``CIMultiDict``)
``hits(path)`` / ``last(path)`` number of requests to a path / the latest one
``sent(path)``                  body bytes written to a ``huge``/``trickle``/``gzip_bomb``
                                path (all requests), whether or not the client read them
``max_active(path=None)``       the most requests ever in flight at once (to a path, or all)
``wait_active(n, path=None)``   await until ``n`` requests are in flight at once
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip as gzipmod
import hashlib
import mimetypes
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from multidict import CIMultiDict

RSS = "application/rss+xml; charset=utf-8"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SUFFIX_TYPES = {
    ".rss": "application/rss+xml",
    ".atom": "application/atom+xml",
    ".rdf": "application/rdf+xml",
    ".xml": "application/xml",
    ".json": "application/feed+json",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordedRequest:
    path: str
    method: str
    headers: CIMultiDict[str]
    query: str = ""


@dataclass(kw_only=True, slots=True)
class _Served:
    body: bytes
    content_type: str
    etag: bool | str
    last_modified: datetime | None
    gzip: bool
    headers: dict[str, str] = field(default_factory=dict)

    def etag_value(self) -> str | None:
        if self.etag is True:
            return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'
        return self.etag or None


def _http_date(when: datetime) -> str:
    return format_datetime(when, usegmt=True)


def _parse_date(value: str) -> datetime | None:
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None


def _etag_matches(header: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 §13.1.2): ``W/`` prefixes are ignored; ``*`` matches."""
    def bare(t: str) -> str:
        t = t.strip()
        return t[2:] if t.startswith("W/") else t

    return any(c.strip() == "*" or bare(c) == bare(etag) for c in header.split(","))


class FeedServer:
    """The object the ``feed_server`` fixture yields; see the module docstring."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.base = ""
        self._routes: dict[str, Handler] = {}
        self._served: dict[str, _Served] = {}
        self._active: dict[str, int] = {}
        self._max_active: dict[str, int] = {}
        self._total_active = 0
        self._total_max = 0
        self._sent: dict[str, int] = {}
        self._expanded: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base = f"http://{host}:{port}"

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on this server."""
        return self.base + (path if path.startswith("/") else "/" + path)

    # -- programming paths ---------------------------------------------------------------

    def serve(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str = RSS,
        etag: bool | str = True,
        last_modified: str | datetime | None = None,
        gzip: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        lm = _parse_date(last_modified) if isinstance(last_modified, str) else last_modified
        self._served[path] = _Served(
            body=body, content_type=content_type, etag=etag, last_modified=lm, gzip=gzip,
            headers=dict(headers or {}),
        )
        self._routes[path] = self._serve_handler(path)

    def set(self, path: str, body: bytes, *, last_modified: str | datetime | None = None) -> None:
        served = self._served[path]
        served.body = body
        if last_modified is not None:
            served.last_modified = (
                _parse_date(last_modified) if isinstance(last_modified, str) else last_modified
            )
        elif served.last_modified is not None:
            served.last_modified += timedelta(minutes=1)
        self._routes[path] = self._serve_handler(path)

    def serve_file(self, path: str, file: Path, *, content_type: str | None = None,
                   **serve_kw: object) -> None:
        ctype = content_type or _SUFFIX_TYPES.get(file.suffix.lower())
        if ctype is None:
            ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        self.serve(path, file.read_bytes(), content_type=ctype, **serve_kw)  # type: ignore[arg-type]

    def slow(self, path: str, seconds: float, body: bytes = b"<rss/>", *,
             mid_body: bool = False, content_length: bool = True) -> None:
        async def pause() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)

        async def handler(request: web.Request) -> web.StreamResponse:
            if not mid_body:
                await pause()
                return web.Response(body=body, content_type="application/rss+xml")
            resp = web.StreamResponse(headers={"Content-Type": "application/rss+xml"})
            if content_length:
                resp.content_length = len(body)
            else:
                resp.enable_chunked_encoding()
            await resp.prepare(request)
            half = len(body) // 2
            try:
                await resp.write(body[:half])
                await pause()
                await resp.write(body[half:])
                await resp.write_eof()
            except (ConnectionError, RuntimeError):
                pass  # the client gave up waiting
            return resp

        self._routes.pop(path, None)
        self._served.pop(path, None)
        self._routes[path] = handler

    def gate(self, path: str, body: bytes = b"<rss/>") -> asyncio.Event:
        event = asyncio.Event()

        async def handler(request: web.Request) -> web.StreamResponse:
            opened = asyncio.ensure_future(event.wait())
            closing = asyncio.ensure_future(self._closing.wait())
            await asyncio.wait({opened, closing}, return_when=asyncio.FIRST_COMPLETED)
            opened.cancel()
            closing.cancel()
            return web.Response(body=body, content_type="application/rss+xml")

        self._served.pop(path, None)
        self._routes[path] = handler
        return event

    def drop(self, path: str) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "application/rss+xml"})
            resp.content_length = 10_000
            await resp.prepare(request)
            await resp.write(b"<rss><channel><title>cut")
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError  # aiohttp treats this as "client went away"

        self._served.pop(path, None)
        self._routes[path] = handler

    def huge(self, path: str, n_bytes: int, *, content_length: bool = True) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "application/rss+xml"})
            if content_length:
                resp.content_length = n_bytes
            else:
                resp.enable_chunked_encoding()
            await resp.prepare(request)
            chunk = b"x" * 65536
            sent = 0
            try:
                while sent < n_bytes:
                    piece = chunk[: min(len(chunk), n_bytes - sent)]
                    await resp.write(piece)
                    sent += len(piece)
                    self._sent[path] = self._sent.get(path, 0) + len(piece)
                await resp.write_eof()
            except (ConnectionError, RuntimeError):
                pass  # the client gave up (as it should, over its cap)
            return resp

        self._served.pop(path, None)
        self._routes[path] = handler

    def trickle(self, path: str, body: bytes, *, interval: float,
                content_length: bool = True) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "application/rss+xml"})
            if content_length:
                resp.content_length = len(body)
            else:
                resp.enable_chunked_encoding()
            await resp.prepare(request)
            try:
                for i in range(len(body)):
                    await resp.write(body[i:i + 1])
                    self._sent[path] = self._sent.get(path, 0) + 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), interval)
                    if self._closing.is_set():
                        break
                else:
                    await resp.write_eof()
            except (ConnectionError, RuntimeError):
                pass  # the client gave up (as it should, at its total timeout)
            return resp

        self._served.pop(path, None)
        self._routes[path] = handler

    def gzip_bomb(self, path: str, expanded: int, *, content_length: bool = False) -> None:
        head = b"<?xml version='1.0'?><rss version='2.0'><channel><title>"
        block = b" " * (1 << 20)

        def pieces() -> Iterator[tuple[bytes, int]]:
            """(compressed bytes, how many bytes they inflate to), as the stream goes."""
            z = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip member
            out = z.compress(head)
            done = pending = len(head)
            while done < expanded:
                raw = block[: min(len(block), expanded - done)]
                out += z.compress(raw)
                done += len(raw)
                pending += len(raw)
                if out:
                    yield out, pending
                    out, pending = b"", 0
            yield out + z.flush(), pending

        async def handler(request: web.Request) -> web.StreamResponse:
            headers = {"Content-Type": "application/rss+xml", "Content-Encoding": "gzip"}
            if content_length:
                whole = list(pieces())
                body = b"".join(c for c, _ in whole)
                self._sent[path] = self._sent.get(path, 0) + len(body)
                self._expanded[path] = self._expanded.get(path, 0) + expanded
                return web.Response(body=body, headers=headers)
            resp = web.StreamResponse(headers=headers)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            try:
                for compressed, inflated in pieces():
                    await resp.write(compressed)
                    self._sent[path] = self._sent.get(path, 0) + len(compressed)
                    self._expanded[path] = self._expanded.get(path, 0) + inflated
                    # a write below the transport's high-water mark does not yield: let the
                    # client read (and hang up) before compressing the next megabyte
                    await asyncio.sleep(0)
                    if self._closing.is_set():
                        break
                else:
                    await resp.write_eof()
            except (ConnectionError, RuntimeError):
                pass  # the client gave up (as it should, over its cap)
            return resp

        self._served.pop(path, None)
        self._routes[path] = handler

    def redirect(self, path: str, to: str, status: int = 301) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(status=status, headers={"Location": to})

        self._served.pop(path, None)
        self._routes[path] = handler

    def status(self, path: str, code: int, headers: dict[str, str] | None = None,
               body: bytes = b"") -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(status=code, headers=headers or {}, body=body)

        self._served.pop(path, None)
        self._routes[path] = handler

    # -- observing -----------------------------------------------------------------------

    def hits(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == path)

    def last(self, path: str) -> RecordedRequest:
        for r in reversed(self.requests):
            if r.path == path:
                return r
        raise LookupError(f"no request to {path}")

    def sent(self, path: str) -> int:
        return self._sent.get(path, 0)

    def expanded_sent(self, path: str) -> int:
        return self._expanded.get(path, 0)

    def max_active(self, path: str | None = None) -> int:
        return self._total_max if path is None else self._max_active.get(path, 0)

    async def wait_active(self, n: int, path: str | None = None) -> None:
        def enough() -> bool:
            return (self._total_active if path is None else self._active.get(path, 0)) >= n

        async with self._changed:
            await self._changed.wait_for(enough)

    # -- internals -----------------------------------------------------------------------

    def _serve_handler(self, path: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            served = self._served[path]
            etag = served.etag_value()
            lm = served.last_modified
            headers = dict(served.headers)
            if etag:
                headers["ETag"] = etag
            if lm is not None:
                headers["Last-Modified"] = _http_date(lm)
            inm = request.headers.get("If-None-Match")
            ims = request.headers.get("If-Modified-Since")
            if inm is not None:
                if etag and _etag_matches(inm, etag):
                    return web.Response(status=304, headers=headers)
            elif ims is not None and lm is not None:
                since = _parse_date(ims)
                if since is not None and lm.replace(microsecond=0) <= since:
                    return web.Response(status=304, headers=headers)
            body = served.body
            if served.gzip and "gzip" in request.headers.get("Accept-Encoding", ""):
                body = gzipmod.compress(body)
                headers["Content-Encoding"] = "gzip"
            headers["Content-Type"] = served.content_type
            return web.Response(body=body, headers=headers)

        return handler

    async def _bump(self, path: str, delta: int) -> None:
        async with self._changed:
            self._active[path] = self._active.get(path, 0) + delta
            self._total_active += delta
            self._max_active[path] = max(self._max_active.get(path, 0), self._active[path])
            self._total_max = max(self._total_max, self._total_active)
            self._changed.notify_all()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests.append(
            RecordedRequest(path=path, method=request.method,
                            headers=CIMultiDict(request.headers), query=request.query_string)
        )
        handler = self._routes.get(path)
        if handler is None:
            return web.Response(status=404, text="not found")
        await self._bump(path, +1)
        try:
            return await handler(request)
        finally:
            await self._bump(path, -1)


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    """A local port where TCP connects hang (listen backlog 0, already filled)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port: int = server.getsockname()[1]
    fillers: list[socket.socket] = []
    for _ in range(3):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(("127.0.0.1", port))
        fillers.append(c)
    try:
        yield port
    finally:
        for c in fillers:
            c.close()
        server.close()


@pytest_asyncio.fixture
async def feed_server() -> AsyncIterator[FeedServer]:
    """A fresh :class:`FeedServer` on 127.0.0.1 (random port), closed after the test."""
    server = FeedServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()
