"""A local Slack-compatible server (pytest plugin): fixture ``slack_server``.

A real ``aiohttp.web`` server on 127.0.0.1 (random port) that speaks the two ways
monitor posts to Slack:

* incoming webhooks: ``POST /webhook/<anything>`` with a JSON body; answers ``200 ok``
  like Slack (``400 invalid_payload`` for a bad body, ``404 no_service`` for
  ``/webhook/gone...``);
* the Web API: ``POST /api/chat.postMessage`` with ``Authorization: Bearer xoxb-...``;
  answers ``{"ok": true, "ts": "...", "channel": "C..."}``. A token other than
  ``slack_server.token`` → ``{"ok": false, "error": "invalid_auth"}``; a channel not in
  ``slack_server.channels`` → ``channel_not_found``.

Every payload is CHECKED like Slack would (valid JSON object, ``text`` or ``blocks``,
blocks a list of dicts with a ``type``, section/context text ≤ 3000 chars, header text
≤ 150 chars, at most 50 blocks); a bad payload is answered ``invalid_payload`` /
``invalid_blocks`` and recorded in ``.rejected``. Accepted messages are recorded in
``.messages`` as dicts: ``kind`` ("webhook" | "api"), ``channel``, ``text``, ``blocks``,
``thread_ts``, ``ts``, ``payload`` (the whole body).

Control:

* ``slack_server.fail_next(n, status=429, retry_after=1)`` answers the next ``n``
  requests with that status (429 carries ``Retry-After``; the Web API body is
  ``{"ok": false, "error": "ratelimited"}``); ``status=500`` for server errors;
* ``await slack_server.stop()`` closes the listener (connections are refused) and
  ``await slack_server.start()`` reopens it on the SAME port;
* ``slack_server.webhook_url`` (``http://127.0.0.1:PORT/webhook/T000/B000/secret``),
  ``slack_server.api_base_url`` (``http://127.0.0.1:PORT/api/``), ``slack_server.token``.
* ``slack_server.requests`` counts every request received (including failed ones).
* ``slack_server.delay = 2.0`` makes every answer wait that many seconds (a slow Slack).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

SECTION_MAX = 3000
HEADER_MAX = 150
MAX_BLOCKS = 50
DEFAULT_TOKEN = "xoxb-test-0000-secret"
DEFAULT_CHANNELS = ("#news", "C0NEWS", "#alerts")


def check_payload(body: Any) -> str | None:
    """What Slack would reject in this payload, or None when it is acceptable."""
    if not isinstance(body, dict):
        return "invalid_payload: not a JSON object"
    text, blocks = body.get("text"), body.get("blocks")
    if not text and not blocks:
        return "no_text"
    if text is not None and not isinstance(text, str):
        return "invalid_payload: text is not a string"
    if isinstance(text, str) and len(text) > 40000:
        return "msg_too_long"
    if blocks is None:
        return None
    if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
        return "invalid_blocks: blocks must be a list of at most 50"
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return f"invalid_blocks: block {i} has no type"
        problem = _check_block(block)
        if problem:
            return f"invalid_blocks: block {i}: {problem}"
    return None


def _check_text(obj: Any, limit: int, plain_only: bool = False) -> str | None:
    if not isinstance(obj, dict) or obj.get("type") not in ("plain_text", "mrkdwn"):
        return "text object needs type plain_text or mrkdwn"
    if plain_only and obj["type"] != "plain_text":
        return "must be plain_text"
    t = obj.get("text")
    if not isinstance(t, str) or not t:
        return "empty text"
    if len(t) > limit:
        return f"text longer than {limit}"
    return None


def _check_block(block: dict[str, Any]) -> str | None:
    kind = block["type"]
    if kind == "header":
        return _check_text(block.get("text"), HEADER_MAX, plain_only=True)
    if kind == "section":
        if "text" not in block and "fields" not in block:
            return "section needs text or fields"
        if "text" in block:
            p = _check_text(block["text"], SECTION_MAX)
            if p:
                return p
        for f in block.get("fields", []):
            p = _check_text(f, 2000)
            if p:
                return p
        return None
    if kind == "context":
        elements = block.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
            return "context needs 1-10 elements"
        for el in elements:
            p = _check_text(el, SECTION_MAX)
            if p:
                return p
        return None
    if kind == "divider":
        return None
    return f"unsupported block type {kind!r}"


class SlackServer:
    def __init__(self, token: str = DEFAULT_TOKEN, channels: tuple[str, ...] = DEFAULT_CHANNELS):
        self.token = token
        self.channels = set(channels)
        self.port = 0  # chosen by the OS on the first start(), kept afterwards
        self.messages: list[dict[str, Any]] = []
        self.rejected: list[tuple[str, Any]] = []
        self.requests = 0
        self.delay = 0.0
        self._fail: list[tuple[int, float | None]] = []
        self._ts = 1_700_000_000
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_post("/webhook/{rest:.*}", self._webhook)
        app.router.add_post("/api/chat.postMessage", self._post_message)
        self._app = app

    # -- control ---------------------------------------------------------------------

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook/T000/B000/secretpath"

    @property
    def api_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def running(self) -> bool:
        return self._runner is not None

    def fail_next(self, n: int, *, status: int = 429, retry_after: float | None = 1) -> None:
        """Answer the next ``n`` requests with ``status`` (429 with Retry-After)."""
        self._fail += [(status, retry_after)] * n

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(self._app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- handlers ----------------------------------------------------------------------

    def _failure(self, api: bool) -> web.Response | None:
        if not self._fail:
            return None
        status, retry_after = self._fail.pop(0)
        headers = {}
        if status == 429 and retry_after is not None:
            headers["Retry-After"] = str(
                int(retry_after) if retry_after == int(retry_after) else retry_after
            )
        if api:
            error = "ratelimited" if status == 429 else "internal_error"
            return web.json_response({"ok": False, "error": error}, status=status, headers=headers)
        text = "rate_limited" if status == 429 else "internal_error"
        return web.Response(status=status, text=text, headers=headers)

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw)
        except ValueError:
            return None

    async def _webhook(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        failed = self._failure(api=False)
        if failed is not None:
            return failed
        if request.match_info["rest"].startswith("gone"):
            return web.Response(status=404, text="no_service")
        body = await self._body(request)
        problem = check_payload(body)
        if problem:
            self.rejected.append((problem, body))
            return web.Response(status=400, text="invalid_payload")
        self.messages.append(
            {
                "kind": "webhook",
                "channel": None,
                "text": body.get("text"),
                "blocks": body.get("blocks"),
                "thread_ts": body.get("thread_ts"),
                "ts": None,
                "payload": body,
            }
        )
        return web.Response(text="ok")

    async def _post_message(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        failed = self._failure(api=True)
        if failed is not None:
            return failed
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return web.json_response({"ok": False, "error": "not_authed"})
        if auth[len("Bearer ") :] != self.token:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        body = await self._body(request)
        if not isinstance(body, dict):
            self.rejected.append(("invalid_json", body))
            return web.json_response({"ok": False, "error": "invalid_json"})
        channel = body.get("channel")
        if channel not in self.channels:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        problem = check_payload(body)
        if problem:
            self.rejected.append((problem, body))
            return web.json_response({"ok": False, "error": problem.split(":")[0]})
        self._ts += 1
        ts = f"{self._ts}.{len(self.messages):06d}"
        self.messages.append(
            {
                "kind": "api",
                "channel": channel,
                "text": body.get("text"),
                "blocks": body.get("blocks"),
                "thread_ts": body.get("thread_ts"),
                "ts": ts,
                "payload": body,
            }
        )
        return web.json_response({"ok": True, "ts": ts, "channel": "C0NEWS", "message": {}})


@pytest.fixture
async def slack_server() -> AsyncIterator[SlackServer]:
    server = SlackServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
