"""The feed fetcher: the only module that does HTTP for feeds.

    async with Fetcher(user_agent="", connect_timeout=10, timeout=30, max_bytes=10 << 20,
                       max_redirects=5, concurrency=16, per_host=2) as fetcher:
        result = await fetcher.fetch(url, etag=state.etag, last_modified=state.last_modified)

``fetch`` returns a :data:`~monitor.core.model.FetchResult` and never raises for network or
HTTP problems:

* ``Fetched``      a 2xx with its (decompressed) body and lower-cased headers;
* ``NotModified``  a 304 to our conditional GET (``If-None-Match`` / ``If-Modified-Since``),
  with its lower-cased headers (its ``Cache-Control``/``Expires`` time the next poll);
* ``FetchFailed``  anything else, with a ``reason`` a person can read: ``HTTP 404 Not
  Found``, ``timed out after 30s``, ``response larger than 10.0 MiB cap``, ``redirect
  loop``, ``cannot connect to host:port: Connection refused``… (a URL in a reason is
  in its shown form: ``monitor.redact``, no credentials). A 410 sets ``gone``;
  a ``Retry-After`` (seconds or HTTP-date) on an error response sets ``retry_after``.

Redirects are followed by hand (so each hop is checked against the limits, loops are
caught and permanence is known): when every hop was a 301/308 the result carries
``permanent_redirect`` = the final URL, which the caller may store as the feed's new URL.

Limits: one shared ``aiohttp.ClientSession``; at most ``concurrency`` requests at once
(a semaphore, and the connector's pool size) and at most ``per_host`` in flight to one
host name (a semaphore per host). Both are taken per redirect hop, the host's first, so a
fetch queued behind a busy host holds no global slot. ``timeout`` bounds a whole fetch
(every hop and the body) from the moment its first request starts, not while it is
queued (aiohttp's own total timeout, set per hop to what is left of it, covers the body
too); ``connect_timeout`` bounds each TCP/TLS connect. ``max_bytes`` caps the
*decompressed* body while it streams; a Content-Length over the cap is refused before
reading, and a body of a declared length under the cap, not compressed, is read in one
go. No cookies are kept between fetches.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from monitor.core.model import Fetched, FetchFailed, FetchResult, NotModified
from monitor.core.schedule import parse_retry_after
from monitor.log import get_logger
from monitor.redact import display_url, redact_text

log = get_logger(__name__)

DEFAULT_USER_AGENT = "monitor/0.1 (+https://github.com/monitor; feed monitor)"
ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml, "
    "application/feed+json;q=0.9, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.8"
)
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
PERMANENT_STATUSES = frozenset({301, 308})
CHUNK = 64 * 1024


def human_size(n: int) -> str:
    """``10485760`` → ``10.0 MiB``; ``2048`` → ``2.0 KiB``; ``100`` → ``100 bytes``."""
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} bytes"


def _seconds(x: float) -> str:
    return f"{x:g}s"


def _response_now(headers: Mapping[str, str]) -> datetime:
    """The server's idea of now (its ``Date`` header), else the local clock."""
    date = headers.get("date")
    if date:
        try:
            when = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError):
            pass
        else:
            return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return datetime.now(UTC)


def _lower_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """Lower-case names; repeated headers are joined with ``, `` (RFC 9110 §5.3)."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _status_reason(status: int, reason: str | None) -> str:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = reason or ""
    return f"HTTP {status} {phrase}".rstrip()


def client_timeout(total: float, connect: float) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts for one request: ``total`` bounds it all (connect, headers and
    body), ``connect`` each TCP/TLS connect. Exact: aiohttp by default rounds a timeout
    of 5 s or more up to the next whole second (``ceil_threshold``), which would let a
    fetch with ``timeout: 30`` run for 31 s."""
    return aiohttp.ClientTimeout(total=total, sock_connect=connect, ceil_threshold=math.inf)


def _host_key(url: URL) -> str:
    return (url.host or "").lower()


class _Failure(Exception):
    """Internal: a fetch that ends as ``FetchFailed`` (not raised out of ``fetch``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _describe(exc: BaseException, *, connect_timeout: float, timeout: float,
              expired: bool) -> str:
    """A readable reason for a network-level exception (``expired``: the whole-fetch
    deadline has passed, so a timeout is reported against ``timeout``)."""
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError on 3.11
        if isinstance(exc, aiohttp.ConnectionTimeoutError) and not expired:
            return f"connect timed out after {_seconds(connect_timeout)}"
        return f"timed out after {_seconds(timeout)}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"DNS lookup failed for {exc.host}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate error for {exc.host}: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
        return f"cannot connect to {exc.host}:{exc.port}: {err}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected before the response was complete"
    if isinstance(exc, aiohttp.ClientPayloadError):
        # aiohttp chains the parser's error (e.g. ContentLengthError) as the cause
        inner = exc.__cause__
        detail = getattr(inner, "message", None) or str(inner or exc)
        return f"response body incomplete: {detail}".rstrip(".")
    if isinstance(exc, aiohttp.InvalidURL):
        return f"invalid URL: {exc}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"bad response: {exc.message}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _kind(exc: BaseException) -> str:
    """``FetchFailed.kind`` of a network-level exception."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "tls"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid_url"
    return "connection"


def _redirect_target(current: URL, resp: aiohttp.ClientResponse) -> URL:
    """Where a 3xx points, resolved against the current URL (fragment dropped)."""
    location = resp.headers.get("Location")
    if not location:
        raise _Failure(f"{_status_reason(resp.status, resp.reason)} without Location")
    try:
        target = current.join(URL(location))
    except ValueError as exc:
        raise _Failure(f"invalid redirect Location {display_url(location)!r}") from exc
    if target.scheme not in ("http", "https") or not target.host:
        raise _Failure(f"redirect to unsupported URL {display_url(location)!r}")
    return target.with_fragment(None)


class Fetcher:
    """Fetches feeds over one shared ``aiohttp.ClientSession``; use with ``async with``."""

    def __init__(
        self,
        *,
        user_agent: str,
        connect_timeout: float,
        timeout: float,
        max_bytes: int,
        max_redirects: int,
        concurrency: int,
        per_host: int,
    ) -> None:
        self.user_agent = user_agent.strip() or DEFAULT_USER_AGENT
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.concurrency = max(1, concurrency)
        self.per_host = max(1, per_host)
        self._global = asyncio.Semaphore(self.concurrency)
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": self.user_agent, "Accept": ACCEPT},
            timeout=client_timeout(self.timeout, self.connect_timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
            max_field_size=16 * 1024,
            max_line_size=16 * 1024,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _host_semaphore(self, url: URL) -> asyncio.Semaphore:
        key = _host_key(url)
        sem = self._hosts.get(key)
        if sem is None:
            sem = self._hosts[key] = asyncio.Semaphore(self.per_host)
        return sem

    async def fetch(
        self, url: str, *, etag: str | None, last_modified: str | None
    ) -> FetchResult:
        """GET ``url`` conditionally; never raises for network or HTTP problems."""
        if self._session is None:
            raise RuntimeError("Fetcher used outside 'async with'")
        started = time.monotonic()
        result, status, size = await self._fetch(url, etag=etag, last_modified=last_modified)
        if not log.debugging:
            return result
        ms = round((time.monotonic() - started) * 1000)
        shown = display_url(url)  # (the log formatter also masks the config's secrets)
        if isinstance(result, FetchFailed):
            log.debug("fetch.done", url=shown, status=status, bytes=size, ms=ms, reason=result.reason)
        else:
            log.debug("fetch.done", url=shown, status=status, bytes=size, ms=ms)
        return result

    async def _fetch(
        self, url: str, *, etag: str | None, last_modified: str | None
    ) -> tuple[FetchResult, int | None, int]:
        """The redirect loop; returns (result, last status seen, body bytes read)."""
        assert self._session is not None
        headers: dict[str, str] = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        try:
            current = URL(url)
            if current.scheme not in ("http", "https") or not current.host:
                return FetchFailed(url=url, reason=f"unsupported URL: {display_url(url)!r}",
                                   kind="invalid_url"), None, 0
        except ValueError as exc:
            return FetchFailed(url=url, reason=redact_text(f"invalid URL: {exc}"),
                               kind="invalid_url"), None, 0
        loop = asyncio.get_running_loop()
        deadline: float | None = None  # starts with the first request, not while queued
        status: int | None = None
        seen = {str(current)}
        hops = 0
        all_permanent = True
        try:
            while True:
                # Slots are taken per hop, host first then global, and released before the
                # next hop: a fetch queued behind a busy host holds no global slot, and no
                # fetch waits for a slot while holding one.
                async with self._host_semaphore(current), self._global:
                    if deadline is None:
                        deadline = loop.time() + self.timeout
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise TimeoutError
                    async with (
                        self._session.get(
                            current,
                            headers=headers,
                            allow_redirects=False,
                            timeout=client_timeout(remaining, self.connect_timeout),
                        ) as resp,
                    ):
                        status = resp.status
                        if status not in REDIRECT_STATUSES:
                            moved = str(current) if hops and all_permanent else None
                            result, size = await self._final(
                                url, current, resp, etag, last_modified, moved
                            )
                            return result, status, size
                        target = _redirect_target(current, resp)
                if str(target) in seen:
                    raise _Failure(f"redirect loop at {display_url(str(target))}")
                hops += 1
                if hops > self.max_redirects:
                    raise _Failure(f"too many redirects (more than {self.max_redirects})")
                all_permanent = all_permanent and status in PERMANENT_STATUSES
                seen.add(str(target))
                current = target
        except _Failure as exc:
            return FetchFailed(url=url, reason=exc.reason, status=status, kind="redirect"), status, 0
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            expired = deadline is not None and loop.time() >= deadline - 0.001
            reason = _describe(
                exc, connect_timeout=self.connect_timeout, timeout=self.timeout, expired=expired
            )
            return FetchFailed(url=url, reason=redact_text(reason), kind=_kind(exc)), status, 0

    async def _final(
        self,
        url: str,
        final: URL,
        resp: aiohttp.ClientResponse,
        etag: str | None,
        last_modified: str | None,
        moved: str | None,
    ) -> tuple[FetchResult, int]:
        """Turn the last (non-redirect) response into a result."""
        status = resp.status
        headers = _lower_headers(resp.headers)
        if status == 304:
            return (
                NotModified(
                    url=url,
                    etag=headers.get("etag", etag),
                    last_modified=headers.get("last-modified", last_modified),
                    permanent_redirect=moved,
                    headers=headers,  # Cache-Control / Expires / Date: the next poll's time
                ),
                0,
            )
        if not 200 <= status < 300:
            retry_after = None
            if "retry-after" in headers:
                retry_after = parse_retry_after(headers["retry-after"], now=_response_now(headers))
            return (
                FetchFailed(
                    url=url,
                    reason=_status_reason(status, resp.reason),
                    status=status,
                    retry_after=retry_after,
                    gone=status == 410,
                    permanent_redirect=moved,
                    kind="http",
                ),
                0,
            )
        cap = self.max_bytes
        too_big = f"response larger than {human_size(cap)} cap"
        if resp.content_length is not None and resp.content_length > cap:
            return FetchFailed(url=url, reason=too_big, status=status, permanent_redirect=moved,
                               kind="too_large"), 0
        if resp.content_length is not None and headers.get("content-encoding", "identity") in (
            "identity", ""
        ):
            # a declared length, under the cap, of the bytes themselves (no decompression
            # that could inflate them): aiohttp reads exactly that many, in one go
            body = await resp.read()
            return (
                Fetched(
                    url=url,
                    final_url=str(final),
                    status=status,
                    body=body,
                    headers=headers,
                    etag=headers.get("etag"),
                    last_modified=headers.get("last-modified"),
                    permanent_redirect=moved,
                ),
                len(body),
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(CHUNK):
            size += len(chunk)
            if size > cap:
                resp.close()  # drop the connection rather than drain the rest
                return (
                    FetchFailed(url=url, reason=too_big, status=status, permanent_redirect=moved,
                                kind="too_large"),
                    size,
                )
            chunks.append(chunk)
        return (
            Fetched(
                url=url,
                final_url=str(final),
                status=status,
                body=b"".join(chunks),
                headers=headers,
                etag=headers.get("etag"),
                last_modified=headers.get("last-modified"),
                permanent_redirect=moved,
            ),
            size,
        )
