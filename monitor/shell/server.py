"""The operator's window: ``/healthz`` (JSON state), ``/readyz`` and ``/metrics``."""

from __future__ import annotations

import errno
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from monitor.errors import MonitorError
from monitor.log import get_logger
from monitor.metrics import Metrics

log = get_logger(__name__)

HealthFn = Callable[[], Awaitable[dict[str, Any]]]


class Server:
    def __init__(self, listen: str, metrics: Metrics, health: HealthFn) -> None:
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = int(port)
        self.metrics = metrics
        self.health = health
        self.ready = False
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
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
        log.info("server.listening", url=f"http://{self.host}:{self.port}/healthz")

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

    async def _readyz(self, request: web.Request) -> web.Response:
        return web.Response(text="ready" if self.ready else "starting",
                            status=200 if self.ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        resp = web.Response(body=self.metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp
