"""Pure rendering of an ``Alert`` for each channel kind: Slack Block Kit, email, JSON lines.

No I/O, no clock. Everything that comes from a feed (title, link, summary, feed name,
authors) is untrusted:

* Slack: ``&``, ``<`` and ``>`` are escaped, so feed text cannot open a link or a
  mention (``<!channel>``, ``<@U123>``, ``<http://evil|here>``); bare ``@channel``,
  ``@here`` and ``@everyone`` get a zero-width space after the ``@``; URL schemes get one
  after the ``:`` so feed text never becomes a clickable link. The only link in a message
  is the headline, and only when the story's link is ``http(s)``.
* Email: every header value from the feed is stripped of CR/LF and control characters
  before it reaches ``EmailMessage`` (which would raise on a newline); the HTML part is
  built with ``html.escape``; the Message-ID is derived from the alert key, so a retry
  keeps the same Message-ID.
* JSON lines: ``json.dumps`` (U+2028/U+2029 are escaped too, so line splitters agree).
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from email.header import Header
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from monitor.core.model import Alert


class MailPolicy(EmailPolicy):
    """``email.policy.SMTP`` (CRLF, RFC 2047), with two changes.

    * The Subject is folded by ``email.header.Header``: the standard folder can break
      the line straight after ``Subject:`` when an early word is long, and many clients
      then show the subject with a leading space.
    * ``cte_type`` is ``7bit``: bodies are quoted-printable or base64, so the bytes we
      hand the SMTP library are plain ASCII and reach any server unchanged, 8BITMIME or
      not.
    """

    def _subject(self, name: str, value: str) -> str:
        text = str(value)
        charset = "us-ascii" if text.isascii() else "utf-8"
        folded = Header(text, charset, maxlinelen=self.max_line_length or 78,
                        header_name=name).encode(linesep=self.linesep)
        if folded.startswith(self.linesep) and text.isascii():
            # one word too long for the first line: keep it there whole (a line may be
            # up to 998 characters) rather than leave "Subject:" bare
            folded = text[:998 - len(name) - 2]
        return f"{name}: {folded}{self.linesep}"

    def fold(self, name: str, value: str) -> str:
        if name.lower() == "subject":
            return self._subject(name, value)
        folded: str = super().fold(name, value)
        return folded

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower() == "subject":
            return self._subject(name, value).encode("ascii")
        return super().fold_binary(name, value)


#: The policy every message is built and sent with.
MAIL_POLICY = MailPolicy(linesep="\r\n", cte_type="7bit")

# Slack limits (https://api.slack.com/reference/block-kit/blocks)
SECTION_MAX = 3000
HEADER_MAX = 150
CONTEXT_MAX = 3000
FALLBACK_MAX = 3000
URL_MAX = 2000  # longer links are shown without a link
EXCERPT_SLACK = 300
DIGEST_MAX = 20  # stories listed in one Slack digest (2 blocks each, Slack allows 50)
#: Stories in one email digest: a longer digest goes as several messages ("part 1/2").
#: 100 headlines with their links is about what a reader scrolls through in one mail
#: (some 30-60 KB of HTML, far under any relay's size limit).
EMAIL_DIGEST_MAX = 100
EXCERPT_EMAIL = 1000
SUBJECT_MAX = 200

SEVERITY_EMOJI: dict[str, str] = {
    "info": ":information_source:",
    "low": ":large_blue_circle:",
    "medium": ":large_yellow_circle:",
    "high": ":large_orange_circle:",
    "critical": ":red_circle:",
    "warning": ":warning:",  # an operational notice (a feed failing or silent)
}
SEVERITY_SYMBOL: dict[str, str] = {  # for email (plain unicode)
    "info": "ℹ",
    "low": "🔵",
    "medium": "🟡",
    "high": "🟠",
    "critical": "🔴",
    "warning": "⚠",
}

_ZWSP = "\u200b"
_MENTION = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)
_SCHEME = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*):(?=//)")
_MAILTO = re.compile(r"\b(mailto|tel|slack):", re.IGNORECASE)
# bidi overrides and isolates can disguise text; they never belong in a headline
_BIDI = dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"), None)
_WS = re.compile(r"\s+")


# --------------------------------------------------------------------------- text helpers


def _space_controls(text: str, keep: str) -> str:
    out = []
    for c in text:
        if c in keep:
            out.append(c)
        elif unicodedata.category(c) in ("Cc", "Zl", "Zp"):
            out.append(" ")
        else:
            out.append(c)
    return "".join(out)


def clean_line(text: str) -> str:
    """One line of text: control and bidi-override characters removed, whitespace
    (including CR/LF) collapsed to single spaces. Safe to put into an email header."""
    return _WS.sub(" ", _space_controls(text.translate(_BIDI), "")).strip()


def header_text(text: str) -> str:
    """``clean_line`` for an email header: also breaks up any RFC 2047 encoded-word
    opener (``=?``), so that text from a feed is shown as it is, never decoded into
    something else (an encoded CR LF would otherwise become a header of its own)."""
    return clean_line(text).replace("=?", "=\u200b?")


def excerpt(text: str, limit: int) -> str:
    """At most ``limit`` characters, cut at a word boundary with an ellipsis."""
    text = _WS.sub(" ", text).strip()
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters: a hard cut with an ellipsis (``excerpt`` cuts at a
    word boundary, ``monitor.core.text.truncate`` too, for stored text)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def safe_url(url: str) -> str | None:
    """The URL when it is an absolute http(s) URL without whitespace, controls or
    user:password@ part, else None."""
    url = url.strip()
    if not url or len(url) > URL_MAX:
        return None
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zs", "Zl", "Zp") for c in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None:
        return None  # https://bank.example@evil.example/ is a phishing trick
    return url


def published_text(dt: datetime) -> str:
    """``2024-05-01 13:45 UTC``."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def new_source(alert: Alert) -> str:
    """The source that made this update: the story's feed, else the last source named."""
    if alert.story.feed:
        return alert.story.feed
    return alert.source_names[-1] if alert.source_names else ""


def message_key(alert: Alert) -> str:
    """A stable key for a message when the caller has no delivery key (cluster × rule ×
    update); not to be confused with the outbox's ``monitor.core.route.alert_key``."""
    part = f"update:{alert.sources}" if alert.update else "first"
    return f"{alert.cluster}\x1f{alert.match.rule}\x1f{part}"


# --------------------------------------------------------------------------- Slack


def slack_escape(text: str) -> str:
    """Escape untrusted text for Slack mrkdwn / plain_text: no links, no mentions."""
    text = _MENTION.sub(lambda m: "@" + _ZWSP + m.group(1), text)
    text = _SCHEME.sub(lambda m: m.group(1) + ":" + _ZWSP, text)
    text = _MAILTO.sub(lambda m: m.group(1) + ":" + _ZWSP, text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_fit(raw: str, budget: int) -> str:
    """Escape ``raw`` so that the result has at most ``budget`` characters, never
    cutting an entity or a neutralised mention in half."""
    esc = slack_escape(raw)
    if len(esc) <= budget:
        return esc
    lo, hi = 0, len(raw)
    while lo < hi:  # longest prefix of raw whose escape + "…" fits
        mid = (lo + hi + 1) // 2
        if len(slack_escape(raw[:mid])) + 1 <= budget:
            lo = mid
        else:
            hi = mid - 1
    return slack_escape(raw[:lo]) + "…"


def slack_url(url: str) -> str | None:
    """The story link made safe for ``<url|text>``: http(s) only; ``|``, ``<``, ``>``,
    quotes and spaces percent-encoded; ``&`` escaped as ``&amp;``."""
    ok = safe_url(url)
    if ok is None:
        return None
    ok = quote(ok, safe="/:?#[]!$&'()*+,;=%~-._")  # "@" too: no mention-lookalike
    return ok.replace("&", "&amp;")


def slack_link(url: str, title: str, budget: int) -> str:
    """``<url|title>`` (or just the escaped title when the URL is not http(s))."""
    title = clean_line(title) or "(untitled)"
    link = slack_url(url)
    if link is None or len(link) + 8 > budget:
        return _slack_fit(title, budget)
    return f"<{link}|{_slack_fit(title, budget - len(link) - 3)}>"


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


LATEST_OUTLETS = 5  # outlets named, newest first, on a first message edited in place


def slack_message(alert: Alert, *, latest: int | None = None) -> dict[str, Any]:
    """Slack Block Kit payload: ``{"text": fallback, "blocks": [...]}``.

    The same dict serves an incoming webhook and ``chat.postMessage``. ``latest``: name
    only that many sources, newest first ("carried by 5 sources · latest: …"), as the
    edited first message does.
    """
    story, match = alert.story, alert.match
    sev = match.severity.lower()
    emoji = SEVERITY_EMOJI.get(sev, ":bell:")
    title = clean_line(story.title) or "(untitled)"
    feed = clean_line(story.feed)

    if alert.update:
        src = clean_line(new_source(alert))
        plus = f" (+ {src})" if src else ""
        line = f"Now carried by {alert.sources} sources{plus}"
        if alert.novel:
            line += " · new: " + ", ".join(clean_line(x) for x in alert.novel)
        fallback = _slack_fit(f"{line}: {title}", FALLBACK_MAX)
        head = f":repeat: {_slack_fit(line, 500)}: "
        body = head + slack_link(story.link, title, SECTION_MAX - len(head))
        return {"text": fallback, "blocks": [{"type": "section", "text": _mrkdwn(body)}]}

    header = f"{emoji} {sev.upper()} · {clean_line(match.rule)}"
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _slack_fit(header, HEADER_MAX), "emoji": True},
        },
        {
            "type": "section",
            "text": _mrkdwn("*" + slack_link(story.link, title, SECTION_MAX - 2) + "*"),
        },
    ]
    meta = f"{feed} · {published_text(story.published)}"
    context = [_mrkdwn(_slack_fit(meta, CONTEXT_MAX))]
    if alert.sources > 1 and latest is not None:
        names = ", ".join(clean_line(n) for n in reversed(alert.source_names[-latest:]))
        carried = f"carried by {alert.sources} sources" + (f" · latest: {names}" if names else "")
        context.append(_mrkdwn(_slack_fit(carried, CONTEXT_MAX)))
    elif alert.sources > 1:
        names = ", ".join(clean_line(n) for n in alert.source_names)
        carried = f"carried by {alert.sources} sources" + (f": {names}" if names else "")
        context.append(_mrkdwn(_slack_fit(carried, CONTEXT_MAX)))
    blocks.append({"type": "context", "elements": context})

    facts: list[str] = [
        f"{emoji} *{_slack_fit(sev, 20)}* · rule *{_slack_fit(clean_line(match.rule), 200)}*"
    ]
    if match.terms:
        facts.append(
            "*Matched:* " + _slack_fit(", ".join(clean_line(t) for t in match.terms), 1000)
        )
    if match.actors:
        facts.append(
            "*Actors:* " + _slack_fit(", ".join(clean_line(a) for a in match.actors), 1000)
        )
    blocks.append({"type": "section", "text": _mrkdwn(clip("\n".join(facts), SECTION_MAX))})

    summary = excerpt(clean_line(story.summary or story.content), EXCERPT_SLACK)
    if summary:
        blocks.append({"type": "section", "text": _mrkdwn(_slack_fit(summary, SECTION_MAX))})

    fallback = _slack_fit(f"[{sev.upper()}] {title} ({feed})", FALLBACK_MAX)
    return {"text": fallback, "blocks": blocks}


def slack_edit(alert: Alert) -> dict[str, Any]:
    """The first alert's message as ``chat.update`` rewrites it for an update: the first
    story and rule, with the cluster's current source count and its latest outlets."""
    first = replace(alert, story=alert.first_story or alert.story, update=False, novel=())
    return slack_message(first, latest=LATEST_OUTLETS)


#: What a message listing many alerts is: a rule's ``digest``, a ``rollup`` (a channel's
#: queue was longer than its rate could send promptly), ``stale`` (alerts that could
#: not be delivered while they were news), a ``group``'s message (a rule's ``group_by``:
#: its first message or a threaded follow-up), or ``quiet`` (what a channel held during
#: its quiet hours).
DigestKind = Literal["digest", "rollup", "stale", "group", "quiet"]


def group_heading(alerts: Sequence[Alert], label: str, *, more: bool = False) -> str:
    """A group's message: "rule · Snowden: 7 stories", a follow-up "rule · Snowden: 3 more"."""
    n = len(alerts)
    name = clean_line(alerts[0].match.rule)
    if label:
        name += f" · {clean_line(label)}"
    if more:
        return f"{name}: {n} more"
    return f"{name}: {n} " + ("story" if n == 1 else "stories")


def quiet_heading(alerts: Sequence[Alert], window: str) -> str:
    """What a channel held during its quiet hours: "While you were away (22:00–07:00):
    12 stories"."""
    n = len(alerts)
    return f"While you were away ({clean_line(window)}): {n} " + ("story" if n == 1 else "stories")


#: Which message of a digest split on story boundaries: (k, n) for "part k/n".
Part = tuple[int, int]


def part_text(part: Part | None) -> str:
    return f"part {part[0]}/{part[1]}" if part is not None and part[1] > 1 else ""


def _with_part(heading: str, part: Part | None) -> str:
    return f"{heading} · {part_text(part)}" if part_text(part) else heading


def digest_heading(alerts: Sequence[Alert], kind: DigestKind = "digest",
                   part: Part | None = None) -> str:
    """The one-line heading of a message listing ``alerts`` (``part`` of a longer digest)."""
    return _with_part(_digest_heading(alerts, kind), part)


def _digest_heading(alerts: Sequence[Alert], kind: DigestKind) -> str:
    n = len(alerts)
    stories = "story" if n == 1 else "stories"
    rule = clean_line(alerts[0].match.rule)
    if kind == "rollup":
        return f"{rule}: {n} new {stories}"
    if kind == "stale":
        return (f"While monitor could not deliver: {n} "
                + ("alert" if n == 1 else "alerts") + " held back")
    return f"Digest · {rule} · {n} {stories}"


def slack_digest(alerts: Sequence[Alert], *, limit: int = DIGEST_MAX,
                 kind: DigestKind = "digest", heading: str | None = None,
                 part: Part | None = None) -> dict[str, Any]:
    """One Block Kit message listing the stories a digest rule collected (or a roll-up,
    the alerts held back while the channel was down, a group's message, what quiet hours
    held: ``kind``). ``heading`` replaces the kind's default heading; ``part`` (k, n)
    when it is the k-th of n messages of one digest ("part 1/3" in the heading)."""
    first = alerts[0].match
    sev = first.severity.lower()
    emoji = {"stale": ":hourglass:", "quiet": ":crescent_moon:"}.get(
        kind, SEVERITY_EMOJI.get(sev, ":bell:"))
    n = len(alerts)
    heading = _with_part(heading, part) if heading else digest_heading(alerts, kind, part)
    header = f"{emoji} {heading}"
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _slack_fit(header, HEADER_MAX), "emoji": True},
        }
    ]
    for a in alerts[:limit]:
        title = clean_line(a.story.title) or "(untitled)"
        meta = f"{clean_line(a.story.feed)} · {published_text(a.story.published)}"
        if a.sources > 1:
            meta += f" · {a.sources} sources"
        if kind in ("stale", "quiet"):
            meta = f"{clean_line(a.match.rule)} · {meta}"
        line = "• " + slack_link(a.story.link, title, SECTION_MAX - 400)
        blocks.append({"type": "section", "text": _mrkdwn(line)})
        blocks.append({"type": "context", "elements": [_mrkdwn(_slack_fit(meta, CONTEXT_MAX))]})
    if n > limit:
        blocks.append({"type": "context",
                       "elements": [_mrkdwn(f"… and {n - limit} more (see the audit log)")]})
    if kind == "digest":
        heading = heading.replace(" · ", ": ", 1)  # "Digest: rule · 3 stories"
    fallback = _slack_fit(heading, FALLBACK_MAX)
    return {"text": fallback, "blocks": blocks}


# --------------------------------------------------------------------------- email


def message_id(key: str, domain: str) -> str:
    """``<hex@domain>`` derived from ``key``: the same key always gives the same id."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]
    dom = re.sub(r"[^A-Za-z0-9.\-]", "", domain) or "monitor.invalid"
    return f"<{digest}@{dom}>"


def email_subject(alert: Alert) -> str:
    sev = header_text(alert.match.severity).upper()
    # an update keeps its first alert's subject, so that mail clients that thread by
    # subject as well as by In-Reply-To (Gmail) put it under the alert
    headline = (alert.first_title or alert.story.title) if alert.update else alert.story.title
    title = clip(header_text(headline) or "(untitled)", SUBJECT_MAX)
    subject = f"[{sev}] {title}"
    return f"Re: {subject}" if alert.update else subject


def _facts(alert: Alert) -> list[tuple[str, str]]:
    story, match = alert.story, alert.match
    rows = [
        ("Source", clean_line(story.feed)),
        ("Published", published_text(story.published)),
        ("Rule", f"{clean_line(match.rule)} ({clean_line(match.severity)})"),
    ]
    if match.terms:
        rows.append(("Matched", ", ".join(clean_line(t) for t in match.terms)))
    if match.actors:
        rows.append(("Actors", ", ".join(clean_line(a) for a in match.actors)))
    if alert.sources > 1:
        names = ", ".join(clean_line(n) for n in alert.source_names)
        rows.append(("Carried by", f"{alert.sources} sources" + (f": {names}" if names else "")))
    return rows


def email_text(alert: Alert) -> str:
    story = alert.story
    title = clean_line(story.title) or "(untitled)"
    link = safe_url(story.link)
    lines: list[str] = []
    if alert.update:
        src = clean_line(new_source(alert))
        lines += [f"Now carried by {alert.sources} sources" + (f" (+ {src})" if src else ""), ""]
    lines.append(title)
    if link:
        lines.append(link)
    lines.append("")
    lines += [f"{k}: {v}" for k, v in _facts(alert)]
    summary = excerpt(clean_line(story.summary or story.content), EXCERPT_EMAIL)
    if summary and not alert.update:
        lines += ["", summary]
    return "\n".join(lines) + "\n"


def email_html(alert: Alert) -> str:
    e = html.escape
    story = alert.story
    title = clean_line(story.title) or "(untitled)"
    link = safe_url(story.link)
    sev = clean_line(alert.match.severity).lower()
    symbol = SEVERITY_SYMBOL.get(sev, "")
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8"></head><body>']
    if alert.update:
        src = clean_line(new_source(alert))
        line = f"Now carried by {alert.sources} sources" + (f" (+ {src})" if src else "")
        parts.append(f"<p><em>{e(line)}</em></p>")
    head = f'<a href="{e(link, quote=True)}">{e(title)}</a>' if link else e(title)
    parts.append(f"<h2>{e(symbol)} {head}</h2>")
    parts.append("<table>")
    for k, v in _facts(alert):
        parts.append(f'<tr><th align="left">{e(k)}</th><td>{e(v)}</td></tr>')
    parts.append("</table>")
    summary = excerpt(clean_line(story.summary or story.content), EXCERPT_EMAIL)
    if summary and not alert.update:
        parts.append(f"<p>{e(summary)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def email_message(
    alert: Alert,
    *,
    sender: str,
    to: Sequence[str],
    thread_ref: str | None,
    message_id_domain: str,
    key: str | None = None,
    date: datetime | None = None,
) -> EmailMessage:
    """A multipart/alternative (text + HTML) message with injection-safe headers.

    ``key`` (the delivery's idempotency key) makes the Message-ID deterministic so a
    retried delivery keeps it; without it, a key is derived from the alert.
    ``thread_ref`` (the first alert's Message-ID) sets In-Reply-To / References.
    ``date`` is the Date header (the caller's clock; render never reads it).
    """
    msg = EmailMessage(policy=MAIL_POLICY)
    msg["Subject"] = email_subject(alert)
    msg["From"] = clean_line(sender)  # an address: =? may be part of it
    msg["To"] = ", ".join(clean_line(t) for t in to)
    msg["Message-ID"] = message_id(key if key is not None else message_key(alert), message_id_domain)
    if date is not None:
        msg["Date"] = format_datetime(date if date.tzinfo else date.replace(tzinfo=UTC))
    ref = header_text(thread_ref or "").replace(" ", "")
    if ref:
        msg["In-Reply-To"] = ref
        msg["References"] = ref
    msg["X-Monitor-Rule"] = header_text(alert.match.rule)
    msg["X-Monitor-Severity"] = header_text(alert.match.severity)
    msg["X-Monitor-Cluster"] = header_text(alert.cluster)
    msg.set_content(email_text(alert))
    msg.add_alternative(email_html(alert), subtype="html")
    return msg


def email_digest(
    alerts: Sequence[Alert],
    *,
    sender: str,
    to: Sequence[str],
    message_id_domain: str,
    key: str,
    date: datetime | None = None,
    kind: DigestKind = "digest",
    heading: str | None = None,
    thread_ref: str | None = None,
    part: Part | None = None,
) -> EmailMessage:
    """One multipart message listing the stories a digest rule collected (or a roll-up,
    the alerts held back while the channel was down, a group's message, what quiet hours
    held: ``kind``). ``heading`` replaces the kind's default heading; ``thread_ref`` (a
    group's first message's Message-ID) sets In-Reply-To / References; ``part`` (k, n)
    when it is the k-th of n messages of one digest ("(part 1/3)" in the subject)."""
    first = alerts[0].match
    n = len(alerts)
    msg = EmailMessage(policy=MAIL_POLICY)
    heading = _with_part(heading, part) if heading else digest_heading(alerts, kind, part)
    of = f" ({part_text(part)})" if part_text(part) else ""
    if kind == "digest":
        subject = (f"[{first.severity.upper()}] digest {first.rule}: {n} "
                   + ("story" if n == 1 else "stories") + of)
    else:
        subject = f"[{first.severity.upper()}] {heading}"
    msg["Subject"] = header_text(subject)
    msg["From"] = clean_line(sender)  # an address: =? may be part of it
    msg["To"] = ", ".join(clean_line(t) for t in to)
    msg["Message-ID"] = message_id(key, message_id_domain)
    if date is not None:
        msg["Date"] = format_datetime(date if date.tzinfo else date.replace(tzinfo=UTC))
    ref = header_text(thread_ref or "").replace(" ", "")
    if ref:
        msg["In-Reply-To"] = ref
        msg["References"] = ref
    msg["X-Monitor-Rule"] = header_text(first.rule)
    title_line = (f"Digest of rule {clean_line(first.rule)}: {n} stories{of}"
                  if kind == "digest" else heading)
    text_lines = [title_line, ""]
    items = []
    for a in alerts:
        title = clean_line(a.story.title) or "(untitled)"
        when = published_text(a.story.published)
        where = f"{a.story.feed}, {when}"
        if kind in ("stale", "quiet"):
            where = f"{clean_line(a.match.rule)}: {where}"
        text_lines += [f"- {title}", f"  {where}", f"  {a.story.link}", ""]
        url = safe_url(a.story.link)
        head = (f'<a href="{html.escape(url, quote=True)}">{html.escape(title)}</a>' if url
                else html.escape(title))
        items.append(f"<li>{head}<br><small>{html.escape(clean_line(where))}</small></li>")
    msg.set_content("\n".join(text_lines))
    msg.add_alternative(
        f"<html><body><h3>{html.escape(title_line)}</h3>"
        f"<ul>{''.join(items)}</ul></body></html>",
        subtype="html",
    )
    return msg


# --------------------------------------------------------------------------- JSON lines


def alert_record(alert: Alert) -> dict[str, Any]:
    story, match = alert.story, alert.match
    published = story.published if story.published.tzinfo else story.published.replace(tzinfo=UTC)
    return {
        "rule": match.rule,
        "severity": match.severity,
        "title": story.title,
        "link": story.link,
        "feed": story.feed,
        "story": story.id,
        "published": published.astimezone(UTC).isoformat(),
        "terms": list(match.terms),
        "actors": list(match.actors),
        "cluster": alert.cluster,
        "sources": alert.sources,
        "source_names": list(alert.source_names),
        "update": alert.update,
        # an update: the headline of the first alert it follows up
        **({"first_title": alert.first_title or story.title} if alert.update else {}),
        # an operational notice (rule "monitor:…"): what happened and what to do
        **({"details": story.summary} if match.rule.startswith("monitor:") else {}),
    }


def json_line(alert: Alert) -> str:
    """One JSON object on one line (no trailing newline)."""
    text = json.dumps(alert_record(alert), ensure_ascii=False, separators=(",", ":"))
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
