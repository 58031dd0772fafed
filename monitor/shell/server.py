"""The operator's window: ``/`` (the status page), ``/healthz`` (JSON state),
``/readyz`` and ``/metrics``.

With ``server.auth`` set, ``/`` and ``/metrics`` answer 401 unless the request carries
its bearer token (``Authorization: Bearer …``) or its user and password (basic auth),
compared in constant time; ``/healthz`` and ``/readyz`` stay open for probes. The config
refuses a non-loopback ``listen`` without auth (``config._server_problems``), and so
does ``start`` (a config built in code).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from monitor.config import ServerAuth, loopback_host
from monitor.errors import MonitorError
from monitor.log import get_logger
from monitor.metrics import Metrics

log = get_logger(__name__)

HealthFn = Callable[[], Awaitable[dict[str, Any]]]
PageFn = Callable[[], Awaitable[str]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# (ready, the checks by name: {"ok": bool, "detail": str})
ReadyFn = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               expected.encode("utf-8", "surrogatepass"))


def authorized(header: str | None, auth: ServerAuth) -> bool:
    """Does an ``Authorization`` header carry ``auth``'s token (Bearer) or its user and
    password (Basic)? Each credential is compared in constant time."""
    scheme, _, value = (header or "").strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and auth.token is not None:
        return _same(value, auth.token)
    if scheme.lower() == "basic" and auth.user is not None and auth.password is not None:
        try:
            user, colon, password = base64.b64decode(value, validate=True).decode(
                "utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        # both compared, whatever the first says
        return bool(colon) & _same(user, auth.user) & _same(password, auth.password)
    return False


class Server:
    def __init__(self, listen: str, metrics: Metrics, health: HealthFn, *,
                 page: PageFn | None = None, auth: ServerAuth | None = None,
                 ready: ReadyFn | None = None) -> None:
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = int(port)
        self.metrics = metrics
        self.health = health
        self.page = page
        self.auth = auth
        self.ready = False  # started; then ``ready_checks`` decide, when given
        self.ready_checks = ready
        self._runner: web.AppRunner | None = None

    def _guarded(self, handler: Handler) -> Handler:
        auth = self.auth
        if auth is None:
            return handler

        async def guarded(request: web.Request) -> web.StreamResponse:
            if authorized(request.headers.get("Authorization"), auth):
                return await handler(request)
            resp = web.Response(status=401, text="401: credentials required (server.auth)\n")
            if auth.user is not None:
                resp.headers.add("WWW-Authenticate", 'Basic realm="monitor", charset="UTF-8"')
            if auth.token is not None:
                resp.headers.add("WWW-Authenticate", 'Bearer realm="monitor"')
            return resp

        return guarded

    async def start(self) -> None:
        if self.auth is None and not loopback_host(self.host):
            raise MonitorError(f"refusing to serve the status page and /metrics on "
                               f"{self.host}:{self.port} without server.auth")
        app = web.Application()
        if self.page is not None:
            app.router.add_get("/", self._guarded(self._page))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._guarded(self._metrics))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as e:  # the port is taken (another instance?), or no such address
            await self._runner.cleanup()
            self._runner = None
            hint = ("; another instance may use it: give each its own port, or "
                    "server: {enabled: false}") if e.errno == errno.EADDRINUSE else ""
            raise MonitorError(f"cannot listen on {self.host}:{self.port} (server.listen): "
                               f"{e.strerror or e}{hint}") from e
        # the real port when 0 was asked for
        for addr in self._runner.addresses:
            if isinstance(addr, tuple) and len(addr) >= 2:
                self.port = int(addr[1])
                break
        log.info("server.listening", url=f"http://{self.host}:{self.port}/",
                 auth="required" if self.auth else "none")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        body = await self.health()
        status = 200 if body.get("status") in ("ok", "degraded") else 503
        return web.Response(
            text=json.dumps(body, indent=2, default=str),
            status=status,
            content_type="application/json",
        )

    async def _page(self, request: web.Request) -> web.Response:
        assert self.page is not None
        resp = web.Response(text=await self.page(), content_type="text/html", charset="utf-8")
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
        return resp

    async def _readyz(self, request: web.Request) -> web.Response:
        """200 when ready, else 503, with the checks as JSON (the failing ones named)."""
        if not self.ready:
            ok, checks = False, {"started": {"ok": False, "detail": "starting"}}
        elif self.ready_checks is None:
            ok, checks = True, {"started": {"ok": True, "detail": "running"}}
        else:
            ok, checks = await self.ready_checks()
        body: dict[str, Any] = {"ready": ok, "checks": checks}
        if not ok:
            body["failing"] = [name for name, c in checks.items() if not c.get("ok")]
        return web.Response(text=json.dumps(body, indent=2, default=str),
                            status=200 if ok else 503, content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        """The Prometheus exposition, rendered off the event loop: with per-feed series
        at 20,000 feeds it takes a second or more of CPU, which on the loop would hold
        every poll back for as long (prometheus_client collects under its own locks)."""
        resp = web.Response(body=await asyncio.to_thread(self.metrics.render))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp
