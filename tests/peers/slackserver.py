"""A local Slack-compatible server (pytest plugin): fixture ``slack_server``.

A real ``aiohttp.web`` server on 127.0.0.1 (random port) that speaks the two ways
monitor posts to Slack:

* incoming webhooks: ``POST /webhook/<anything>`` with a JSON body; answers ``200 ok``
  like Slack (``400 invalid_payload`` for a bad body, ``404 no_service`` for
  ``/webhook/gone...``);
* the Web API, with ``Authorization: Bearer xoxb-...`` (a token other than
  ``slack_server.token`` → ``{"ok": false, "error": "invalid_auth"}``):

  - ``POST chat.postMessage`` answers ``{"ok": true, "ts": "...", "channel": "C..."}``
    (the channel's ID: ``#news`` is ``C0NEWS``, ``#alerts`` is ``C0ALERTS``); a channel
    not in ``slack_server.channels`` → ``channel_not_found``;
  - ``POST chat.update`` (``channel`` must be an ID, ``ts`` a message of it, else
    ``channel_not_found`` / ``message_not_found``) replaces the message's text and
    blocks; every edit is recorded in ``.updates`` and counted in the message's
    ``edits``;
  - ``GET conversations.history`` (channel ID; ``oldest``, ``latest``, ``inclusive``,
    ``limit``, ``cursor``, ``include_all_metadata``): the channel's top-level messages,
    newest first, as Slack gives them (``metadata`` only with ``include_all_metadata``);
  - ``GET conversations.replies`` (channel ID, ``ts`` of the parent; same paging): the
    parent and its replies, oldest first;
  - both need the ``channels:history`` scope: ``slack_server.scopes`` (all by default)
    without it → ``{"ok": false, "error": "missing_scope", "needed": ...}``.

  ``metadata`` (``chat.postMessage``, ``chat.update``) is checked like Slack does: an
  object with an alphanumeric/underscore ``event_type`` and an object ``event_payload``
  (else ``invalid_metadata_format``).

Every payload is CHECKED like Slack would (valid JSON object, ``text`` or ``blocks``,
blocks a list of dicts with a ``type``, section/context text ≤ 3000 chars, header text
≤ 150 chars, at most 50 blocks); a bad payload is answered ``invalid_payload`` /
``invalid_blocks`` and recorded in ``.rejected``. Accepted messages are recorded in
``.messages`` as dicts: ``kind`` ("webhook" | "api"), ``channel``, ``text``, ``blocks``,
``channel_id``, ``thread_ts``, ``ts`` (wall-clock time, like Slack's), ``payload`` (the
whole body), ``metadata``, ``edits`` (how many times chat.update changed it).

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
* ``slack_server.answer_late(n, delay)``: the next ``n`` posts (webhook or
  ``chat.postMessage``) are ACCEPTED and recorded at once, and answered only ``delay``
  seconds later (after the client's timeout: an ambiguous outcome for the client);
  ``slack_server.drop_after_accept(n)``: the next ``n`` ``chat.postMessage`` calls are
  recorded and their connection closed without an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

SECTION_MAX = 3000
HEADER_MAX = 150
MAX_BLOCKS = 50
DEFAULT_TOKEN = "xoxb-test-0000-secret"
DEFAULT_CHANNELS = ("#news", "C0NEWS", "#alerts")
ALL_SCOPES = frozenset({"chat:write", "channels:history", "groups:history"})
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9_]{1,255}$")


def channel_id(name: str) -> str:
    """The ID the peer gives a channel: ``C0NEWS`` stays, ``#news`` → ``C0NEWS``."""
    if re.fullmatch(r"[CGD][A-Z0-9]{5,}", name):
        return name
    return "C0" + re.sub(r"[^A-Za-z0-9]", "", name).upper()


def check_metadata(meta: Any) -> str | None:
    """What Slack would reject in a message's ``metadata``, or None."""
    if isinstance(meta, str):  # form-encoded callers send it as JSON text
        try:
            meta = json.loads(meta)
        except ValueError:
            return "invalid_metadata_format: not JSON"
    if not isinstance(meta, dict) or set(meta) - {"event_type", "event_payload"}:
        return "invalid_metadata_format: expected {event_type, event_payload}"
    if not isinstance(meta.get("event_type"), str) or not _EVENT_TYPE.match(meta["event_type"]):
        return "invalid_metadata_format: event_type must be alphanumeric"
    if not isinstance(meta.get("event_payload"), dict):
        return "invalid_metadata_format: event_payload must be an object"
    return None


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
        self.updates: list[dict[str, Any]] = []  # every accepted chat.update
        self.scopes: set[str] = set(ALL_SCOPES)
        self.history_calls = 0  # conversations.history + conversations.replies
        self.requests = 0
        self.delay = 0.0
        self._late: list[float] = []
        self._drop = 0
        self._stopping = asyncio.Event()
        self._fail: list[tuple[int, float | None]] = []
        self._ts = 0  # microseconds of the last ts given
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_post("/webhook/{rest:.*}", self._webhook)
        app.router.add_post("/api/chat.postMessage", self._post_message)
        app.router.add_post("/api/chat.update", self._update)
        app.router.add_route("*", "/api/conversations.history", self._history)
        app.router.add_route("*", "/api/conversations.replies", self._replies)
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

    def answer_late(self, n: int, delay: float) -> None:
        """Accept and record the next ``n`` posts, then answer each ``delay`` s late."""
        self._late += [delay] * n

    def drop_after_accept(self, n: int) -> None:
        """Accept and record the next ``n`` ``chat.postMessage`` calls, then close the
        connection without answering (a connection dropped mid-request)."""
        self._drop += n

    def in_channel(self, channel: str = "#news") -> list[dict[str, Any]]:
        """The top-level messages of a channel (by name or ID), oldest first."""
        cid = channel_id(channel)
        return [m for m in self.messages if m["channel_id"] == cid and m["thread_ts"] is None]

    def thread(self, ts: str) -> list[dict[str, Any]]:
        """The replies under the message ``ts``, oldest first."""
        return [m for m in self.messages if m["thread_ts"] == ts]

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._stopping = asyncio.Event()
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
            self._stopping.set()  # late answers still waiting give up now
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
                "channel_id": None,
                "text": body.get("text"),
                "blocks": body.get("blocks"),
                "thread_ts": body.get("thread_ts"),
                "ts": None,
                "payload": body,
            }
        )
        await self._maybe_late()
        return web.Response(text="ok")

    async def _maybe_late(self) -> None:
        """After recording a post: answer late when ``answer_late`` asked for it."""
        if self._late:
            delay = self._late.pop(0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def _next_ts(self) -> str:
        """A message ts like Slack's: the wall-clock time in µs, unique and increasing."""
        self._ts = max(self._ts + 1, int(time.time() * 1_000_000))
        return f"{self._ts // 1_000_000}.{self._ts % 1_000_000:06d}"

    def _auth(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return web.json_response({"ok": False, "error": "not_authed"})
        if auth[len("Bearer ") :] != self.token:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        return None

    def _ids(self) -> set[str]:
        return {channel_id(c) for c in self.channels}

    async def _params(self, request: web.Request) -> dict[str, str]:
        """Arguments of a read method: query string, form or JSON body."""
        params = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                body = await self._body(request)
                if isinstance(body, dict):
                    params.update({k: str(v) for k, v in body.items()})
            else:
                params.update({k: str(v) for k, v in (await request.post()).items()})
        return params

    def _message_view(self, m: dict[str, Any], metadata: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "message", "ts": m["ts"], "text": m["text"],
                               "bot_id": "B0MONITOR"}
        if m["blocks"] is not None:
            out["blocks"] = m["blocks"]
        if m["thread_ts"] is not None:
            out["thread_ts"] = m["thread_ts"]
        replies = [r for r in self.messages if r["thread_ts"] == m["ts"]]
        if replies:
            out.update(thread_ts=m["ts"], reply_count=len(replies))
        if m["edits"]:
            out["edited"] = {"user": "U0MONITOR", "ts": m["edited_ts"]}
        if metadata and m["metadata"] is not None:
            out["metadata"] = m["metadata"]
        return out

    async def _read(self, request: web.Request, replies: bool) -> web.Response:
        self.requests += 1
        self.history_calls += 1
        failed = self._failure(api=True)
        if failed is not None:
            return failed
        denied = self._auth(request)
        if denied is not None:
            return denied
        if not self.scopes & {"channels:history", "groups:history"}:
            return web.json_response({"ok": False, "error": "missing_scope",
                                      "needed": "channels:history,groups:history",
                                      "provided": ",".join(sorted(self.scopes))})
        p = await self._params(request)
        cid = p.get("channel", "")
        if cid not in self._ids():
            return web.json_response({"ok": False, "error": "channel_not_found"})
        try:
            limit = int(p.get("limit") or 100)
            start = int(p.get("cursor") or 0)
            oldest = float(p.get("oldest") or 0)
            latest = float(p["latest"]) if p.get("latest") else float("inf")
        except ValueError:
            return web.json_response({"ok": False, "error": "invalid_arguments"})
        inclusive = p.get("inclusive", "").lower() in ("1", "true")
        metadata = p.get("include_all_metadata", "").lower() in ("1", "true")

        def within(m: dict[str, Any]) -> bool:
            t = float(m["ts"])
            if inclusive:
                return oldest <= t <= latest
            return oldest < t < latest

        mine = [m for m in self.messages if m["channel_id"] == cid]
        if replies:
            parent = p.get("ts", "")
            if not any(m["ts"] == parent for m in mine):
                return web.json_response({"ok": False, "error": "thread_not_found"})
            # the parent always comes first, then its replies in the window, oldest first
            found = [m for m in mine if m["ts"] == parent]
            found += [m for m in mine if m["thread_ts"] == parent and within(m)]
        else:
            found = [m for m in mine if m["thread_ts"] is None and within(m)]
            found.sort(key=lambda m: float(m["ts"]), reverse=True)  # newest first
        limit = max(1, min(limit, 999))
        page = found[start : start + limit]
        more = start + limit < len(found)
        return web.json_response({
            "ok": True,
            "messages": [self._message_view(m, metadata) for m in page],
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        })

    async def _history(self, request: web.Request) -> web.Response:
        return await self._read(request, replies=False)

    async def _replies(self, request: web.Request) -> web.Response:
        return await self._read(request, replies=True)

    async def _update(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        failed = self._failure(api=True)
        if failed is not None:
            return failed
        denied = self._auth(request)
        if denied is not None:
            return denied
        body = await self._body(request)
        if not isinstance(body, dict):
            self.rejected.append(("invalid_json", body))
            return web.json_response({"ok": False, "error": "invalid_json"})
        cid, ts = body.get("channel"), body.get("ts")
        if cid not in self._ids():  # chat.update takes the channel's ID, not its name
            return web.json_response({"ok": False, "error": "channel_not_found"})
        target = next((m for m in self.messages if m["channel_id"] == cid and m["ts"] == ts),
                      None)
        if target is None:
            return web.json_response({"ok": False, "error": "message_not_found"})
        problem = check_payload(body)
        if problem is None and "metadata" in body:
            problem = check_metadata(body["metadata"])
        if problem:
            self.rejected.append((problem, body))
            return web.json_response({"ok": False, "error": problem.split(":")[0]})
        target.update(text=body.get("text"), blocks=body.get("blocks"),
                      edits=target["edits"] + 1, edited_ts=self._next_ts())
        if "metadata" in body:
            target["metadata"] = body["metadata"]
        self.updates.append({"channel_id": cid, "ts": ts, "text": body.get("text"),
                             "blocks": body.get("blocks"), "payload": body})
        return web.json_response({"ok": True, "channel": cid, "ts": ts, "text": body.get("text"),
                                  "message": self._message_view(target, False)})

    async def _post_message(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        failed = self._failure(api=True)
        if failed is not None:
            return failed
        denied = self._auth(request)
        if denied is not None:
            return denied
        body = await self._body(request)
        if not isinstance(body, dict):
            self.rejected.append(("invalid_json", body))
            return web.json_response({"ok": False, "error": "invalid_json"})
        channel = body.get("channel")
        if channel not in self.channels and channel not in self._ids():
            return web.json_response({"ok": False, "error": "channel_not_found"})
        cid = channel_id(channel)
        problem = check_payload(body)
        if problem is None and "metadata" in body:
            problem = check_metadata(body["metadata"])
        thread_ts = body.get("thread_ts")
        if problem is None and thread_ts is not None and not any(
            m["channel_id"] == cid and m["ts"] == thread_ts for m in self.messages
        ):
            problem = "thread_not_found"
        if problem:
            self.rejected.append((problem, body))
            return web.json_response({"ok": False, "error": problem.split(":")[0]})
        ts = self._next_ts()
        meta = body.get("metadata")
        self.messages.append(
            {
                "kind": "api",
                "channel": channel,
                "channel_id": cid,
                "text": body.get("text"),
                "blocks": body.get("blocks"),
                "thread_ts": thread_ts,
                "ts": ts,
                "payload": body,
                "metadata": json.loads(meta) if isinstance(meta, str) else meta,
                "edits": 0,
                "edited_ts": None,
            }
        )
        await self._maybe_late()
        if self._drop and request.transport is not None:
            self._drop -= 1
            request.transport.close()  # taken, but the answer never leaves
        return web.json_response({"ok": True, "ts": ts, "channel": cid, "message": {}})


@pytest.fixture
async def slack_server() -> AsyncIterator[SlackServer]:
    server = SlackServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
