"""Slack notifier: an incoming webhook or a bot token (``chat.postMessage``).

Errors map to ``SendFailed`` as the Notifier protocol says: 429 → retry with the
``Retry-After`` seconds; 5xx, connection errors and timeouts → retry; ``invalid_auth``,
``channel_not_found``, ``not_in_channel``, other 4xx (webhook ``invalid_payload``,
``no_service``, 404...) → do not retry. slack-sdk's own retry handlers are replaced by a
single immediate retry on a dropped keep-alive connection (the outbox does the real
retrying, with backoff). Reasons never contain the webhook URL or the token.

A timeout after the request was sent is AMBIGUOUS: Slack may have accepted the message.

* Bot mode: every message carries its delivery key in ``metadata`` (``event_type``
  ``monitor_alert``, ``event_payload`` ``{"key": ...}``). Before any retry (``attempt``
  > 1, or a connection dropped mid-request) the key is looked for in the channel's
  recent history (``conversations.history``, or ``conversations.replies`` for a thread
  reply; from a little before the delivery was created, at most ``HISTORY_PAGES``
  pages): found, it counts as sent with that message's ts, and nothing is repeated.
  A lookup that cannot be made (no ``channels:history`` / ``groups:history`` scope,
  warned once; channel ID unknown) falls back to a plain resend; one that fails
  transiently (429, 5xx, timeout) asks for a retry later, which looks again.
* Webhook mode (no history to read): each ambiguous timeout doubles the next attempt's
  timeout (capped at ``WEBHOOK_TIMEOUT_CAP``); after ``MAX_AMBIGUOUS`` of them the next
  attempt is final: if it times out too, the delivery fails (not retried) with a reason
  saying so. A message thus reaches the channel at most ``MAX_AMBIGUOUS + 1`` times.
  The count lives in memory (a restart starts it again).

Updates in bot mode edit the first message (``chat.update``: current source count and
latest outlets) and post a thread reply only when the update's ``reply`` flag says so
(decided in ``monitor.core.route``). ``Sent.ref`` is ``"<channel ID>/<ts>"``; a bare ts
(stored before refs carried the channel) means the configured channel.

``RateLimiter`` (an async token bucket) spaces bursts to ``cfg.rate`` messages per
second per channel; the email and file notifiers use it too.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from monitor.config import SlackChannel
from monitor.core.feedhealth import is_operational
from monitor.core.model import Alert, SendFailed, SendResult, Sent
from monitor.core.schedule import parse_retry_after
from monitor.log import get_logger, scrub
from monitor.notify.ratelimit import RateLimiter
from monitor.notify.render import (
    DIGEST_MAX,
    DigestKind,
    Part,
    message_key,
    slack_digest,
    slack_edit,
    slack_message,
)

log = get_logger(__name__)


# Web API errors that will not heal by themselves (anything not listed: see _api_failure)
PERMANENT_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "missing_scope",
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "msg_too_long",
        "no_text",
        "invalid_blocks",
        "invalid_arguments",
        "invalid_json",
        "restricted_action",
        "ekm_access_denied",
        "team_access_not_granted",
    }
)
TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)

EVENT_TYPE = "monitor_alert"  # metadata event_type of every message the bot posts
HISTORY_PAGES = 5  # at most this many pages of history per lookup ...
HISTORY_PAGE = 200  # ... of this many messages
HISTORY_MARGIN = 300.0  # seconds before the delivery's creation the lookup starts
MAX_AMBIGUOUS = 2  # webhook: ambiguous timeouts before the next attempt is final
WEBHOOK_TIMEOUT_CAP = 120.0  # seconds: the longest a webhook retry waits for an answer
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{5,}$")


def make_ref(channel: str | None, ts: str) -> str:
    """``Sent.ref`` of a bot message: ``"C123/1700000000.000100"`` (bare ts without ID)."""
    return f"{channel}/{ts}" if channel else ts


#: Ends the ref of a message that lists several alerts (a roll-up, a digest, a group, a
#: catch-up): an update of one of its stories never rewrites it (``chat.update`` would
#: replace the whole list by one story); it replies in its thread, at milestones only.
SUMMARY_MARK = "#summary"


def split_ref(ref: str) -> tuple[str | None, str]:
    """``(channel ID or None, ts)`` of a ``Sent.ref``; a bare ts (refs stored before
    they carried the channel) has no channel: the configured one is meant."""
    ref = ref.removesuffix(SUMMARY_MARK)
    channel, sep, ts = ref.rpartition("/")
    return (channel or None, ts) if sep else (None, ref)


class _Lookup:
    """What a history lookup found: ``ref`` (the message is there), ``retry`` (the
    lookup failed transiently: retry later rather than risk a repeat) or neither."""

    __slots__ = ("ref", "retry")

    def __init__(self, ref: str | None = None, retry: SendFailed | None = None) -> None:
        self.ref = ref
        self.retry = retry


def quick_retry() -> list[AsyncRetryHandler]:
    """One immediate retry when a pooled keep-alive connection turns out dead (never on
    a timeout: that would double the wait; never on HTTP statuses: the outbox retries)."""
    return [
        AsyncConnectionErrorRetryHandler(
            max_retry_count=1,
            interval_calculator=FixedValueRetryIntervalCalculator(0.0),
            error_types=[aiohttp.ServerDisconnectedError, aiohttp.ClientOSError],
        )
    ]


class SlackNotifier:
    """Posts alerts to one Slack channel (webhook or bot token)."""

    digest_max = DIGEST_MAX  # stories per digest message; a longer digest is split

    def __init__(self, name: str, cfg: SlackChannel) -> None:
        self.name = name
        self.cfg = cfg
        self.limiter = RateLimiter(cfg.rate)
        self._session: aiohttp.ClientSession | None = None
        self._webhook: AsyncWebhookClient | None = None
        self._web: AsyncWebClient | None = None  # reads and edits (safe to repeat)
        self._poster: AsyncWebClient | None = None  # chat.postMessage: no SDK retry
        self._secrets = [s for s in (cfg.webhook_url, cfg.token) if s]
        if cfg.webhook_url:
            # the path of a webhook URL is the secret part; scrub it on its own too
            path = cfg.webhook_url.split("://", 1)[-1].partition("/")[2]
            if len(path) >= 4:
                self._secrets.append(path)
        # the configured channel's ID: the channel itself when it is one, else learned
        # from chat.postMessage's answer (history and chat.update need the ID)
        self._channel_id: str | None = (
            cfg.channel if cfg.channel and _CHANNEL_ID.match(cfg.channel) else None)
        self._scope_warned = False
        self._ambiguous: dict[str, int] = {}  # webhook: delivery key → ambiguous timeouts
        self._shown: OrderedDict[str, int] = OrderedDict()  # edited ref → source count

    @property
    def kind(self) -> str:
        return "webhook" if self.cfg.webhook_url else "bot"

    def _scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return scrub(text)

    def _clients(self) -> tuple[AsyncWebhookClient | None, AsyncWebClient | None]:
        # created lazily: an aiohttp session belongs to the running loop. Each request
        # runs under its own asyncio.timeout (see _timed): the session's total is only
        # the longest any request may take
        if self._session is None or self._session.closed:
            longest = max(self.cfg.timeout, WEBHOOK_TIMEOUT_CAP)
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                total=longest, connect=min(10.0, self.cfg.timeout)))
            self._webhook = self._web = self._poster = None
        timeout = max(1, round(max(self.cfg.timeout, WEBHOOK_TIMEOUT_CAP)))
        if self.cfg.webhook_url and self._webhook is None:
            self._webhook = AsyncWebhookClient(
                self.cfg.webhook_url,
                timeout=timeout,
                session=self._session,
                retry_handlers=quick_retry(),
            )
        if self.cfg.token and self._web is None:
            kwargs: dict[str, Any] = {}
            if self.cfg.base_url:
                kwargs["base_url"] = self.cfg.base_url
            self._web = AsyncWebClient(
                token=self.cfg.token, timeout=timeout, session=self._session,
                retry_handlers=quick_retry(), **kwargs,
            )
            # a post whose connection dropped mid-request may have arrived: it is
            # repeated only after a look at the history (see _send_api)
            self._poster = AsyncWebClient(
                token=self.cfg.token, timeout=timeout, session=self._session,
                retry_handlers=[], **kwargs,
            )
        return self._webhook, self._web

    async def send(
        self,
        alert: Alert,
        *,
        thread_ref: str | None = None,
        key: str | None = None,
        attempt: int = 1,
        created: datetime | None = None,
    ) -> SendResult:
        """``key``: the delivery's idempotency key (bot mode: in the message's metadata;
        webhook: counts its ambiguous timeouts); ``attempt``: 1 for the first try;
        ``created``: when the delivery was queued (the history lookup starts there)."""
        key = key or f"{self.name}\x1f{message_key(alert)}"
        # an update, or an operational notice's recovery, goes in its first message's thread
        thread = thread_ref if alert.update or is_operational(alert) else None
        in_summary = bool(thread) and str(thread).endswith(SUMMARY_MARK)
        if alert.update and not alert.reply and (self.cfg.webhook_url or not thread
                                                 or in_summary):
            # an update that only edits the first message: a webhook cannot edit,
            # without the first message's ref there is nothing to edit, and a message
            # listing several stories is not rewritten for one of them
            log.info("notify.skipped", channel=self.name, kind=self.kind, key=key,
                     why="an edit-only update of a message this channel cannot edit")
            return Sent(ref=None)
        if alert.update and thread and self.cfg.token and not in_summary:
            edited = await self._call(lambda web: self._edit(web, alert, thread))
            if not alert.reply or (isinstance(edited, SendFailed) and edited.retry):
                return edited
            # a permanent edit failure (message deleted, too old to edit) does not
            # hold back the reply; _call logged it
        return await self._call(
            lambda web: self._send_api(web, slack_message(alert), thread, key=key,
                                       attempt=attempt, created=created),
            webhook_payload=slack_message(alert), key=key,
        )

    async def send_digest(self, alerts: Sequence[Alert], *, key: str,
                          kind: DigestKind = "digest", heading: str | None = None,
                          thread_ref: str | None = None, part: Part | None = None,
                          attempt: int = 1, created: datetime | None = None) -> SendResult:
        payload = slack_digest(alerts, kind=kind, heading=heading, part=part)
        result = await self._call(
            lambda web: self._send_api(web, payload, thread_ref, key=key, attempt=attempt,
                                       created=created),
            webhook_payload=payload, key=key,
        )
        if isinstance(result, Sent) and result.ref and not result.ref.endswith(SUMMARY_MARK):
            return Sent(ref=result.ref + SUMMARY_MARK)
        return result

    async def _call(
        self,
        api: Callable[[AsyncWebClient], Awaitable[SendResult]],
        *,
        webhook_payload: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> SendResult:
        """One paced request to Slack: ``webhook_payload`` through the webhook in
        webhook mode, else ``api(web client)``; every failure mapped to ``SendFailed``."""
        await self.limiter.acquire()
        try:
            webhook, web = self._clients()
            if webhook is not None:
                assert webhook_payload is not None and key is not None
                result = await self._send_webhook(webhook, webhook_payload, key)
            else:
                assert web is not None
                result = await api(web)
        except SlackApiError as e:
            result = self._api_failure(e)
        except aiohttp.ConnectionTimeoutError:
            result = SendFailed(reason="slack: timed out connecting", retry=True)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            result = SendFailed(
                reason="slack: timed out (the message may have arrived: the retry looks "
                "for it in the channel's history first)", retry=True)
        except (aiohttp.ClientError, OSError) as e:
            result = SendFailed(
                reason=self._scrub(f"slack: connection failed: {type(e).__name__}: {e}"), retry=True
            )
        except SlackClientError as e:
            result = SendFailed(reason=self._scrub(f"slack: client error: {e}"), retry=False)
        if isinstance(result, SendFailed):
            log.warning(
                "notify.failed",
                channel=self.name,
                kind=self.kind,
                reason=result.reason,
                retry=result.retry,
                retry_after=result.retry_after,
            )
        else:
            log.info("notify.sent", channel=self.name, kind=self.kind, ref=result.ref)
        return result

    async def _timed(self, seconds: float, call: Awaitable[Any]) -> Any:
        """Await ``call`` (a coroutine) for at most ``seconds``: TimeoutError after."""
        async with asyncio.timeout(seconds):
            return await call

    async def _send_webhook(
        self, client: AsyncWebhookClient, payload: dict[str, Any], key: str
    ) -> SendResult:
        # a webhook cannot reply in a thread: an update goes as a new (short) message.
        # A timeout after sending may have delivered it: each one doubles the next
        # attempt's timeout, and after MAX_AMBIGUOUS the next attempt is final
        seen = self._ambiguous.get(key, 0)
        timeout = min(self.cfg.timeout * 2**seen, max(self.cfg.timeout, WEBHOOK_TIMEOUT_CAP))
        try:
            resp = await self._timed(timeout, client.send_dict(
                {**payload, "unfurl_links": False, "unfurl_media": False}))
        except aiohttp.ConnectionTimeoutError:
            raise  # never reached Slack: not ambiguous
        except (TimeoutError, aiohttp.ServerTimeoutError):
            seen += 1
            if seen > MAX_AMBIGUOUS:
                self._ambiguous.pop(key, None)
                return SendFailed(
                    reason=f"slack webhook: timed out after sending, {seen} times (the last "
                    f"after {timeout:g} s); it may have arrived up to {seen} times; not "
                    "retried, to bound repeats (a webhook cannot look at the channel)",
                    retry=False)
            self._ambiguous[key] = seen
            if len(self._ambiguous) > 10_000:  # keys of deliveries long gone
                self._ambiguous.pop(next(iter(self._ambiguous)))
            nxt = min(self.cfg.timeout * 2**seen, max(self.cfg.timeout, WEBHOOK_TIMEOUT_CAP))
            final = " (the last try)" if seen == MAX_AMBIGUOUS else ""
            return SendFailed(
                reason=f"slack webhook: timed out after {timeout:g} s, after sending (it may "
                f"have arrived): ambiguous {seen} of {MAX_AMBIGUOUS}; the retry waits "
                f"{nxt:g} s{final}", retry=True)
        self._ambiguous.pop(key, None)
        status, body = resp.status_code, (resp.body or "").strip()
        if 200 <= status < 300:
            return Sent(ref=None)
        reason = self._scrub(f"slack webhook: HTTP {status}: {body[:200]}")
        if status == 429:
            return SendFailed(
                reason=reason, retry=True, retry_after=parse_retry_after(_header(resp.headers), now=datetime.now(UTC)),
                rate_limited=True,
            )
        return SendFailed(reason=reason, retry=status >= 500 or status == 408)

    async def _send_api(
        self,
        client: AsyncWebClient,
        payload: dict[str, Any],
        thread_ref: str | None,
        *,
        key: str,
        attempt: int,
        created: datetime | None,
    ) -> SendResult:
        """Post (a thread reply when ``thread_ref``), unless an earlier attempt did."""
        assert self.cfg.channel is not None and self._poster is not None
        thread_channel, thread_ts = split_ref(thread_ref) if thread_ref else (None, None)
        if attempt > 1:  # an earlier attempt may have reached Slack: look first
            found = await self._lookup(client, key, created, thread_channel, thread_ts)
            if found.ref is not None:
                return Sent(ref=found.ref)
            if found.retry is not None:
                return found.retry
        extra: dict[str, Any] = {}
        if thread_ts:
            extra = {"thread_ts": thread_ts, "reply_broadcast": False}
        post = self._poster
        channel = thread_channel or self.cfg.channel

        async def once() -> Any:
            return await self._timed(self.cfg.timeout, post.chat_postMessage(
                channel=channel,
                text=payload["text"],
                blocks=payload["blocks"],
                unfurl_links=False,
                unfurl_media=False,
                username=self.cfg.username,
                icon_emoji=self.cfg.icon_emoji,
                metadata={"event_type": EVENT_TYPE, "event_payload": {"key": key}},
                **extra,
            ))

        try:
            resp = await once()
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
            if isinstance(e, aiohttp.ClientConnectorError):
                raise  # never connected: nothing was sent
            # the connection dropped: a dead keep-alive connection (nothing sent), or
            # mid-request (maybe sent). One immediate retry, after a look at the history
            found = await self._lookup(client, key, created, thread_channel, thread_ts)
            if found.ref is not None:
                return Sent(ref=found.ref)
            if found.retry is not None:
                return found.retry
            resp = await once()
        ts, cid = resp.get("ts"), resp.get("channel")
        if cid and not thread_channel and self._channel_id is None:
            self._channel_id = str(cid)
        return Sent(ref=make_ref(str(cid) if cid else None, str(ts)) if ts else None)

    async def _lookup(
        self,
        client: AsyncWebClient,
        key: str,
        created: datetime | None,
        thread_channel: str | None,
        thread_ts: str | None,
    ) -> _Lookup:
        """Look for the message carrying ``key`` in the channel's history (in the thread
        of ``thread_ts`` for a reply), from a little before ``created``."""
        channel = thread_channel or self._channel_id
        if channel is None:
            log.warning("slack.lookup_skipped", channel=self.name, key=key,
                        why="the channel's ID is not known yet (configure channel as its ID, "
                        "e.g. C0123ABCD, to look before the first post of this run)",
                        fallback="resend")
            return _Lookup()
        since = (created or datetime.now(UTC)).timestamp() - HISTORY_MARGIN
        args: dict[str, Any] = {"channel": channel, "oldest": f"{since:.6f}",
                                "limit": HISTORY_PAGE, "include_all_metadata": True}
        try:
            cursor: str | None = None
            for _ in range(HISTORY_PAGES):
                if thread_ts:
                    resp = await self._timed(self.cfg.timeout, client.conversations_replies(
                        ts=thread_ts, cursor=cursor, **args))
                else:
                    resp = await self._timed(self.cfg.timeout, client.conversations_history(
                        cursor=cursor, **args))
                for m in resp.get("messages") or ():
                    meta = m.get("metadata") if isinstance(m, dict) else None
                    if (isinstance(meta, dict) and meta.get("event_type") == EVENT_TYPE
                            and isinstance(meta.get("event_payload"), dict)
                            and meta["event_payload"].get("key") == key and m.get("ts")):
                        ref = make_ref(channel, str(m["ts"]))
                        log.info("slack.found_in_history", channel=self.name, key=key, ref=ref)
                        return _Lookup(ref=ref)
                cursor = (resp.get("response_metadata") or {}).get("next_cursor") or None
                if not cursor:
                    return _Lookup()
            log.warning("slack.lookup_incomplete", channel=self.name, key=key,
                        pages=HISTORY_PAGES, fallback="resend")
            return _Lookup()
        except SlackApiError as e:
            failed = self._api_failure(e)
            data = getattr(e.response, "data", None)
            error = str(data.get("error", "")) if isinstance(data, dict) else ""
            if error == "missing_scope":
                if not self._scope_warned:
                    self._scope_warned = True
                    log.warning("slack.history_scope_missing", channel=self.name,
                                needed="channels:history (public) or groups:history (private)",
                                fallback="resend: a slow answer may cause a repeat")
                return _Lookup()
            if failed.retry:
                log.warning("slack.lookup_failed", channel=self.name, key=key,
                            error=failed.reason, fallback="retry later")
                return _Lookup(retry=replace(
                    failed, reason=f"{failed.reason} (looking for an earlier attempt)"))
            log.warning("slack.lookup_failed", channel=self.name, key=key,
                        error=failed.reason, fallback="resend")
            return _Lookup()
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            reason = self._scrub(f"slack: looking for an earlier attempt failed: "
                                 f"{type(e).__name__}: {e}".rstrip(": "))
            log.warning("slack.lookup_failed", channel=self.name, key=key, error=reason,
                        fallback="retry later")
            return _Lookup(retry=SendFailed(reason=reason, retry=True))

    async def _edit(self, client: AsyncWebClient, alert: Alert, thread_ref: str) -> SendResult:
        """Rewrite the first message: the current source count and the latest outlets.
        An edit older than one already made (a retry overtaken) is skipped."""
        channel, ts = split_ref(thread_ref)
        channel = channel or self._channel_id or self.cfg.channel
        assert channel is not None
        ref = make_ref(channel, ts)
        if self._shown.get(ref, 0) > alert.sources:
            return Sent(ref=ref)
        payload = slack_edit(alert)
        await self._timed(self.cfg.timeout, client.chat_update(
            channel=channel, ts=ts, text=payload["text"], blocks=payload["blocks"]))
        self._shown[ref] = max(alert.sources, self._shown.get(ref, 0))
        self._shown.move_to_end(ref)
        if len(self._shown) > 10_000:
            self._shown.popitem(last=False)
        log.info("notify.edited", channel=self.name, ref=ref, sources=alert.sources)
        return Sent(ref=ref)

    def _api_failure(self, e: SlackApiError) -> SendFailed:
        resp = e.response
        status = int(getattr(resp, "status_code", 0) or 0)
        data = getattr(resp, "data", None)
        error = str(data.get("error", "")) if isinstance(data, dict) else ""
        reason = self._scrub(f"slack api: HTTP {status}: {error or 'unexpected response'}")
        if status == 429 or error == "ratelimited":
            headers = getattr(resp, "headers", None) or {}
            return SendFailed(
                reason=reason, retry=True, retry_after=parse_retry_after(_header(headers), now=datetime.now(UTC)),
                rate_limited=True,
            )
        if status >= 500 or error in TRANSIENT_ERRORS:
            return SendFailed(reason=reason, retry=True)
        if error in PERMANENT_ERRORS or 400 <= status < 500:
            return SendFailed(reason=reason, retry=False)
        # an unknown error code on a 200: Slack documents these as permanent for the call
        return SendFailed(reason=reason, retry=False)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
        self._webhook = self._web = None


def _header(headers: Any) -> str | None:
    for k, v in dict(headers).items():
        if str(k).lower() == "retry-after":
            return str(v)
    return None
