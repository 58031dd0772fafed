"""Slack notifier: an incoming webhook or a bot token (``chat.postMessage``).

Errors map to ``SendFailed`` as the Notifier protocol says: 429 → retry with the
``Retry-After`` seconds; 5xx, connection errors and timeouts → retry; ``invalid_auth``,
``channel_not_found``, ``not_in_channel``, other 4xx (webhook ``invalid_payload``,
``no_service``, 404...) → do not retry. slack-sdk's own retry handlers are replaced by a
single immediate retry on a dropped keep-alive connection (the outbox does the real
retrying, with backoff). Reasons never contain the webhook URL or the token.

``RateLimiter`` (an async token bucket) spaces bursts to ``cfg.rate`` messages per
second per channel; the email and file notifiers use it too.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from monitor.core.model import Alert, SendFailed, SendResult, Sent
from monitor.core.schedule import parse_retry_after
from monitor.log import get_logger, scrub
from monitor.notify.ratelimit import RateLimiter
from monitor.notify.render import DigestKind, slack_digest, slack_message

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

    def __init__(self, name: str, cfg: SlackChannel) -> None:
        self.name = name
        self.cfg = cfg
        self.limiter = RateLimiter(cfg.rate)
        self._session: aiohttp.ClientSession | None = None
        self._webhook: AsyncWebhookClient | None = None
        self._web: AsyncWebClient | None = None
        self._secrets = [s for s in (cfg.webhook_url, cfg.token) if s]
        if cfg.webhook_url:
            # the path of a webhook URL is the secret part; scrub it on its own too
            path = cfg.webhook_url.split("://", 1)[-1].partition("/")[2]
            if len(path) >= 4:
                self._secrets.append(path)

    @property
    def kind(self) -> str:
        return "webhook" if self.cfg.webhook_url else "bot"

    def _scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return scrub(text)

    def _clients(self) -> tuple[AsyncWebhookClient | None, AsyncWebClient | None]:
        # created lazily: an aiohttp session belongs to the running loop
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                total=self.cfg.timeout, connect=min(10.0, self.cfg.timeout)))
            self._webhook = self._web = None
        if self.cfg.webhook_url and self._webhook is None:
            self._webhook = AsyncWebhookClient(
                self.cfg.webhook_url,
                timeout=max(1, round(self.cfg.timeout)),
                session=self._session,
                retry_handlers=quick_retry(),
            )
        if self.cfg.token and self._web is None:
            kwargs: dict[str, Any] = {}
            if self.cfg.base_url:
                kwargs["base_url"] = self.cfg.base_url
            self._web = AsyncWebClient(
                token=self.cfg.token,
                timeout=max(1, round(self.cfg.timeout)),
                session=self._session,
                retry_handlers=quick_retry(),
                **kwargs,
            )
        return self._webhook, self._web

    async def send(self, alert: Alert, *, thread_ref: str | None = None) -> SendResult:
        return await self._post(slack_message(alert), thread_ref if alert.update else None)

    async def send_digest(self, alerts: Sequence[Alert], *, key: str,
                          kind: DigestKind = "digest", heading: str | None = None,
                          thread_ref: str | None = None) -> SendResult:
        return await self._post(slack_digest(alerts, kind=kind, heading=heading), thread_ref)

    async def _post(self, payload: dict[str, Any], thread_ts: str | None) -> SendResult:
        await self.limiter.acquire()
        try:
            webhook, web = self._clients()
            if webhook is not None:
                result = await self._send_webhook(webhook, payload)
            else:
                assert web is not None
                result = await self._send_api(web, payload, thread_ts)
        except SlackApiError as e:
            result = self._api_failure(e)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            result = SendFailed(reason="slack: timed out", retry=True)
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

    async def _send_webhook(
        self, client: AsyncWebhookClient, payload: dict[str, Any]
    ) -> SendResult:
        # a webhook cannot reply in a thread: an update goes as a new (short) message
        resp = await client.send_dict({**payload, "unfurl_links": False, "unfurl_media": False})
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
        self, client: AsyncWebClient, payload: dict[str, Any], thread_ts: str | None
    ) -> SendResult:
        assert self.cfg.channel is not None
        extra: dict[str, Any] = {}
        if thread_ts:
            extra = {"thread_ts": thread_ts, "reply_broadcast": False}
        resp = await client.chat_postMessage(
            channel=self.cfg.channel,
            text=payload["text"],
            blocks=payload["blocks"],
            unfurl_links=False,
            unfurl_media=False,
            username=self.cfg.username,
            icon_emoji=self.cfg.icon_emoji,
            **extra,
        )
        ts = resp.get("ts")
        return Sent(ref=str(ts) if ts else None)

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
