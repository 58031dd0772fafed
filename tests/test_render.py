"""render.py: Slack Block Kit, email and JSON lines; injection, escaping and limits."""

from __future__ import annotations

import email
import email.policy
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.core.model import Alert, Match, Story
from monitor.notify.render import (
    HEADER_MAX,
    SECTION_MAX,
    email_message,
    json_line,
    message_id,
    slack_escape,
    slack_message,
    slack_url,
)
from tests.conftest import shared_path
from tests.peers.slackserver import check_payload

INJECT = "<!channel> click <http://evil|here> @here"


def alert(
    title: str = "Acme breach",
    link: str = "https://example.com/a",
    *,
    summary: str = "Summary text.",
    feed: str = "example",
    update: bool = False,
    sources: int = 1,
    names: tuple[str, ...] = (),
    terms: tuple[str, ...] = ("breach",),
    actors: tuple[str, ...] = ("Acme",),
    severity: str = "critical",
) -> Alert:
    story = Story(
        id="s1",
        feed=feed,
        title=title,
        link=link,
        summary=summary,
        published=datetime(2024, 5, 1, 13, 45, 30, tzinfo=UTC),
        first_seen=datetime(2024, 5, 1, 13, 50, tzinfo=UTC),
    )
    match = Match(rule="r", severity=severity, channels=("c",), terms=terms, actors=actors)
    return Alert(
        story=story, match=match, cluster="cl", sources=sources, source_names=names, update=update
    )


def all_slack_text(msg: dict[str, Any]) -> str:
    return str(msg["text"]) + "\n" + json.dumps(msg["blocks"], ensure_ascii=False)


def live_tokens(text: str) -> list[str]:
    """Everything Slack would treat as a link or mention: ``<...>`` spans and bare
    ``@channel/@here/@everyone``."""
    spans = re.findall(r"<[^>]*>", text)
    bare = re.findall(r"@(?:channel|here|everyone)\b", text, re.IGNORECASE)
    return spans + bare


def mail(a: Alert, thread_ref: str | None = None, key: str | None = "k1") -> Any:
    msg = email_message(
        a,
        sender="monitor@example.org",
        to=["ops@example.org"],
        thread_ref=thread_ref,
        message_id_domain="example.org",
        key=key,
    )
    # what a receiver sees: serialise with SMTP policy, parse back
    return email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)


# --------------------------------------------------------------------------- Slack


def test_slack_message_shape() -> None:
    a = alert(sources=3, names=("bbc", "reuters", "ap"))
    msg = slack_message(a)
    assert check_payload(msg) is None
    text = all_slack_text(msg)
    assert "<https://example.com/a|Acme breach>" in text
    assert ":red_circle:" in text and "CRITICAL" in text
    assert "example · 2024-05-01 13:45 UTC" in text
    assert "carried by 3 sources: bbc, reuters, ap" in text
    assert "*Matched:* breach" in text and "*Actors:* Acme" in text
    assert "Summary text." in text
    assert "Acme breach" in msg["text"]


def test_single_source_has_no_carried_by() -> None:
    assert "carried by" not in all_slack_text(slack_message(alert()))


def test_slack_update_is_short() -> None:
    msg = slack_message(alert(update=True, sources=4, names=("a", "b", "c", "example")))
    assert check_payload(msg) is None
    assert len(msg["blocks"]) == 1
    assert "Now carried by 4 sources (+ example)" in msg["text"]
    assert "<https://example.com/a|Acme breach>" in msg["blocks"][0]["text"]["text"]


def test_slack_injection_in_every_feed_field() -> None:
    a = alert(
        title=INJECT,
        summary=INJECT + " <@U123> <#C1> @everyone &amp;",
        feed=INJECT,
        names=(INJECT, "<@U999>"),
        sources=2,
        terms=("<!here>",),
        actors=("@channel",),
        link="https://example.com/a",
    )
    msg = slack_message(a)
    text = all_slack_text(msg)
    spans = live_tokens(text)
    assert len(spans) == 1 and spans[0] == f"<https://example.com/a|{_headline(msg)}>"
    assert live_tokens(_headline(msg)) == []
    assert "&lt;!channel&gt;" in text
    assert "&amp;amp;" in text  # a pre-escaped entity in the feed stays literal text
    assert "http://evil" not in text  # no bare URL Slack would auto-link


def _headline(msg: dict[str, Any]) -> str:
    m = re.search(r"<https://example\.com/a\|([^>]*)>", msg["blocks"][1]["text"]["text"])
    assert m
    return m.group(1)


def test_slack_fallback_text_is_escaped_too() -> None:
    msg = slack_message(alert(title=INJECT))
    assert live_tokens(msg["text"]) == []


@pytest.mark.parametrize(
    "link",
    [
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "ftp://example.com/x",
        "//example.com/x",
        "https://exa mple.com/x",
        "",
    ],
)
def test_slack_non_http_link_is_not_linked(link: str) -> None:
    msg = slack_message(alert(link=link))
    text = all_slack_text(msg)
    assert live_tokens(text) == []
    assert "Acme breach" in text


def test_link_with_userinfo_is_not_linked() -> None:
    msg = slack_message(alert(link="https://bank.example@evil.example/login"))
    assert live_tokens(all_slack_text(msg)) == []


def test_slack_link_cannot_break_out() -> None:
    url = slack_url("https://example.com/a?x=1&y=2|<!channel>>")
    assert url is not None
    assert not set("|<> ") & set(url)
    assert "&amp;" in url
    msg = slack_message(alert(link="https://example.com/a?q=|@here>x", title="T"))
    spans = live_tokens(all_slack_text(msg))
    assert len(spans) == 1 and spans[0].endswith("|T>")
    assert spans[0].count("|") == 1


def test_slack_escape_neutralises_mentions() -> None:
    out = slack_escape("@channel @Here @everyone a@heresy <b>")
    assert re.findall(r"@(?:channel|here|everyone)\b", out, re.IGNORECASE) == []
    assert "a@heresy" in out
    assert "&lt;b&gt;" in out


def test_slack_limits_with_long_and_escaped_text() -> None:
    title = "<&>" * 5000  # escapes to 5x the length
    a = alert(
        title=title,
        summary="x " * 10_000,
        terms=tuple("t" * 50 for _ in range(200)),
        severity="critical" * 40,
        feed="f" * 5000,
    )
    msg = slack_message(a)
    assert check_payload(msg) is None
    for block in msg["blocks"]:
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= HEADER_MAX
        texts = [block["text"]] if "text" in block else block.get("elements", [])
        for t in texts:
            assert len(t["text"]) <= SECTION_MAX
            # truncation never leaves half an entity
            assert not re.search(r"&(?!amp;|lt;|gt;)", t["text"])
    assert len(msg["text"]) <= SECTION_MAX


def test_non_latin_titles() -> None:
    title = "Землетрясение в Токио — 東京で地震 — زلزال 🌋"
    msg = slack_message(alert(title=title))
    assert title in _headline(msg)
    m = mail(alert(title=title))
    assert m["Subject"] == f"[CRITICAL] {title}"
    assert title in m.get_body(("plain",)).get_content()
    rec = json.loads(json_line(alert(title=title)))
    assert rec["title"] == title


# --------------------------------------------------------------------------- email


def test_email_headers_cannot_be_injected() -> None:
    a = alert(title="Hello\r\nBcc: x@y\r\n\r\nbody", feed="f\nX-Evil: 1")
    m = mail(a, thread_ref="<abc@example.org>\r\nBcc: z@y")
    assert m["Bcc"] is None and m["X-Evil"] is None
    assert m["Subject"] == "[CRITICAL] Hello Bcc: x@y body"
    assert m["In-Reply-To"] == "<abc@example.org>Bcc:z@y"  # one header, no new line
    assert [k for k in m if k.lower() == "bcc"] == []


def test_email_addresses_are_kept_as_written() -> None:
    # "=?" may be part of an address's local part: only feed text gets it broken up
    m = email_message(alert(), sender="we=?ird@example.org", to=["a=?b@example.org"],
                      thread_ref=None, message_id_domain="example.org", key="k")
    assert str(m["From"]) == "we=?ird@example.org" and str(m["To"]) == "a=?b@example.org"


def test_email_bidi_and_controls_are_removed_from_subject() -> None:
    m = mail(alert(title="pay\u202eefil\x00\x1b[31m"))
    assert m["Subject"] == "[CRITICAL] payefil [31m"


def test_email_is_multipart_alternative_with_escaped_html() -> None:
    a = alert(title='<script>alert("x")</script> & co', summary="<iframe src=x></iframe>")
    m = mail(a)
    assert m.get_content_type() == "multipart/alternative"
    html = m.get_body(("html",)).get_content()
    plain = m.get_body(("plain",)).get_content()
    assert "<script" not in html and "<iframe" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in html
    assert '<a href="https://example.com/a">' in html
    assert '<script>alert("x")</script> & co' in plain  # plain text is not markup
    assert m["From"] == "monitor@example.org" and m["To"] == "ops@example.org"


@pytest.mark.parametrize("link", ["javascript:alert(1)", "data:text/html,x", 'https://e.com/"><b>'])
def test_email_links_only_http(link: str) -> None:
    html = mail(alert(link=link)).get_body(("html",)).get_content()
    if link.startswith("https"):
        assert '<a href="https://e.com/&quot;&gt;&lt;b&gt;">' in html
    else:
        assert "<a " not in html and "javascript:" not in html.split("</h2>")[0].split("<h2>")[0]


def test_email_message_id_is_deterministic_and_threads() -> None:
    first = mail(alert(), key="cl|r|mail")
    again = mail(alert(), key="cl|r|mail")
    other = mail(alert(), key="cl|r|mail2")
    assert first["Message-ID"] == again["Message-ID"] != other["Message-ID"]
    assert first["Message-ID"] == message_id("cl|r|mail", "example.org")
    assert first["In-Reply-To"] is None
    upd = mail(alert(update=True, sources=2), thread_ref=str(first["Message-ID"]), key="u")
    assert upd["In-Reply-To"] == first["Message-ID"]
    assert upd["References"] == first["Message-ID"]
    assert upd["Subject"] == "Re: [CRITICAL] Acme breach"
    # another outlet's headline: the subject stays the first alert's (threads in Gmail too)
    other_upd = mail(replace(alert(update=True, sources=3, title="Acme: data of millions leaked"),
                             first_title="Acme breach"), thread_ref=str(first["Message-ID"]))
    assert other_upd["Subject"] == "Re: [CRITICAL] Acme breach"
    assert "Acme: data of millions leaked" in other_upd.get_body(("plain",)).get_content()
    assert "Now carried by 2 sources" in upd.get_body(("plain",)).get_content()
    derived = mail(alert(), key=None)
    assert derived["Message-ID"] == mail(alert(), key=None)["Message-ID"]


def test_email_long_subject_is_truncated_and_folded() -> None:
    m = mail(alert(title="word " * 500))
    subject = str(m["Subject"])
    assert len(subject) < 260 and subject.endswith("…")
    raw = email_message(
        alert(title="слово " * 100),
        sender="a@b.c",
        to=["d@e.f"],
        thread_ref=None,
        message_id_domain="b.c",
    ).as_bytes()
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


# --------------------------------------------------------------------------- JSON lines


def test_json_line_fields() -> None:
    line = json_line(alert(title="a\nb\u2028c", sources=2, names=("x", "y")))
    assert "\n" not in line and "\u2028" not in line
    rec = json.loads(line)
    assert rec["title"] == "a\nb\u2028c"
    assert rec["published"] == "2024-05-01T13:45:30+00:00"
    assert rec["terms"] == ["breach"] and rec["actors"] == ["Acme"]
    assert rec["sources"] == 2 and rec["source_names"] == ["x", "y"]
    assert {"rule", "severity", "link", "feed", "cluster", "update"} <= set(rec)


# --------------------------------------------------------------------------- corpus


def _raw_markup(path: Path) -> list[str]:
    """The unsanitised text of every element in a feedparser sanitize test file (the
    escaped HTML that a feed would carry: what feedparser itself would clean)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return []
    out = [el.text for el in root.iter() if el.text and el.text.strip()]
    out += [v for el in root.iter() for v in el.attrib.values()]
    return out


DANGEROUS = re.compile(r"<\s*(script|iframe|object|embed|style|img|a|form|svg|meta|link)\b", re.I)


@pytest.mark.shared
def test_sanitize_corpus_never_reaches_output_as_markup() -> None:
    folder = shared_path("corpora", "feedparser-tests", "wellformed", "sanitize")
    files = sorted(
        p
        for p in folder.glob("*.xml")
        if re.search(r"script|iframe|object|embed|onclick|style|javascript", p.name)
    )
    assert len(files) > 20
    checked = 0
    for path in files:
        for raw in _raw_markup(path):
            a = alert(title=raw, summary=raw, feed=raw[:100], link=raw.strip())
            msg = slack_message(a)
            assert check_payload(msg) is None, path.name
            slack = all_slack_text(msg)
            assert not DANGEROUS.search(slack), path.name
            # the only live span is an http(s) headline link (never javascript:)
            for span in live_tokens(slack):
                assert re.fullmatch(r"<https?://[^|<>\s@]+\|[^<>|]*>", span), path.name
            m = mail(a)
            html = m.get_body(("html",)).get_content()
            body = html.split("<body>", 1)[1]
            body = re.sub(r'<a href="https?://[^"<>]*">', "", body)  # our headline link
            assert not DANGEROUS.search(body), path.name
            for header in ("Subject", "From", "To", "Message-ID"):
                assert "\n" not in str(m[header] or "")
            rec = json.loads(json_line(a))
            assert rec["title"] == raw
            checked += 1
    assert checked > 50
