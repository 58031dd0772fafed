"""Pure: feed bytes + response headers → :class:`~monitor.core.model.ParsedFeed`.

feedparser never sees a URL or a file name: the body goes in as a ``BytesIO`` (a bare
``bytes`` or ``str`` argument would be tried as a path and, for ``str``, as a URL), the
HTTP response headers as ``response_headers`` (lower-cased names; ``Content-Type``'s
charset drives the decoding), and the feed URL as ``Content-Location`` so relative links
resolve against it. A missing ``Content-Type`` counts as ``application/xml`` (encoding
from the BOM / XML declaration, else UTF-8). feedparser's HTML sanitiser and its
rewriting of relative URIs *inside* HTML are off at parse time: only the text survives,
and :func:`monitor.core.text.html_to_text` sanitises the markup that needs it (a fifth of
feedparser's time went to sanitising markup that was plain tags) (entry/feed links are still resolved, by feedparser
against ``xml:base``/``Content-Location`` and again by :func:`canonical_link`).

Outcomes:

* well-formed feed → stories, ``problem=None`` (zero entries is fine: not a failure);
* "bozo" feed (broken XML, wrong encoding declaration …) that still yields entries →
  stories plus ``problem`` = a readable reason such as
  ``"not well-formed XML at line 3, column 2: mismatched tag"``;
* whatever the outcome but a failure, ``hints``: the feed's ``<ttl>`` (minutes),
  ``sy:updatePeriod``/``sy:updateFrequency``/``sy:updateBase`` and the cadence learned
  from its entries' publication times (:func:`feed_hints`); garbage values are left out;
* bozo with no entries (or only empty ones), an empty body, or a document that is not
  RSS/Atom/RDF → ``ParsedFeed(failed=True, problem=...)``; an HTML page (a site's home page, a login
  or error page) says so first: ``"not a feed: got an HTML page (served as text/html);
  is the URL the feed's own …?"``.

``parse_feed`` is a top-level function with plain, picklable arguments and result, so
the daemon may run it in a ``ProcessPoolExecutor`` or in threads. It never raises for
bad input.
"""

from __future__ import annotations

import codecs
import functools
import io
import re
import xml.sax
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import feedparser

from monitor.core.model import FeedHints, ParsedFeed, Story
from monitor.core.normalize import canonical_link, entry_published, normalize_entry
from monitor.core.schedule import learn_cadence
from monitor.core.text import html_to_text

__all__ = ["describe_bozo", "feed_hints", "parse_feed"]


def _memoise_base_resolution() -> None:
    """feedparser resolves ``xml:base`` at every element start, joining the current base
    with itself when the element has none (``make_safe_absolute_uri(base, base)``): a
    fifth of its parse time on an ordinary feed. The function is pure (strings in, a
    string out, against a constant scheme list), so the parser's module gets a memoised
    copy for ordinary URL lengths (a hostile feed's huge bases are not kept alive); the
    results are the same, and feedparser versions without it are left alone."""
    from feedparser import mixin

    original = getattr(mixin, "make_safe_absolute_uri", None)
    if original is None or getattr(original, "memoised", False):
        return
    cached = functools.lru_cache(maxsize=1024)(original)

    def make_safe_absolute_uri(base: Any, rel: Any = None) -> Any:
        if len(base or "") + len(rel or "") <= 2048:
            return cached(base, rel)
        return original(base, rel)

    make_safe_absolute_uri.memoised = True  # type: ignore[attr-defined]
    mixin.make_safe_absolute_uri = make_safe_absolute_uri


_memoise_base_resolution()


_BOMS = (codecs.BOM_UTF32_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF8, codecs.BOM_UTF16_BE,
         codecs.BOM_UTF16_LE)
_DECLS = tuple("<?xml".encode(enc) for enc in ("ascii", "utf-16-be", "utf-16-le", "utf-32-be",
                                                 "utf-32-le"))


def _prepends_declaration(body: bytes) -> bool:
    """feedparser re-encodes to UTF-8 and, when the document does not *start* with an XML
    declaration, prepends one plus a newline: SAX line numbers are then one too high."""
    for bom in _BOMS:
        if body.startswith(bom):
            body = body[len(bom):]
            break
    return not body.startswith(_DECLS)


def _looks_like_html(body: bytes, headers: Mapping[str, str]) -> bool:
    """An HTML page (a site's home page, a login or error page) where a feed was expected."""
    head = bytes(body[:1024]).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<?xml", b"<rss", b"<feed", b"<rdf")):
        return False  # a feed (or some XML) whatever its Content-Type says
    if head.startswith((b"<!doctype html", b"<html")):
        return True
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    return ctype in ("text/html", "application/xhtml+xml")


def _html_problem(headers: Mapping[str, str]) -> str:
    """The problem of an HTML page where a feed was expected: said first, with the hint."""
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    served = f" (served as {ctype})" if ctype and ctype != "application/xml" else ""
    return (f"not a feed: got an HTML page{served}; is the URL the feed's own "
            "(often …/feed, …/rss or …/atom.xml)?")


def describe_bozo(exc: BaseException | None, *, line_offset: int = 0) -> str:
    """A person-readable reason for feedparser's ``bozo_exception``.

    ``line_offset`` corrects the line number of an XML error (see ``parse_feed``).
    """
    if exc is None:
        return "feed is malformed (no reason given)"
    if isinstance(exc, xml.sax.SAXParseException):
        where = f"line {max((exc.getLineNumber() or 1) - line_offset, 1)}"
        col = exc.getColumnNumber()
        if col is not None and col >= 0:
            where += f", column {col}"
        return f"not well-formed XML at {where}: {exc.getMessage()}"
    name = type(exc).__name__
    message = str(exc).strip() or name
    if isinstance(exc, feedparser.CharacterEncodingOverride):
        return f"character encoding: {message}"
    if isinstance(exc, feedparser.CharacterEncodingUnknown):
        return f"unknown character encoding: {message}"
    if isinstance(exc, feedparser.NonXMLContentType):
        return f"not served as XML: {message}"
    if isinstance(exc, feedparser.UndeclaredNamespace):
        return f"undeclared XML namespace: {message}"
    if isinstance(exc, xml.sax.SAXException):
        return f"XML error: {message}"
    return f"{name}: {message}"


ENTITY_PROBLEM = ("the feed declares XML entities (<!ENTITY> in its DOCTYPE), which are "
                  "not expanded: an entity-expansion attack (\"billion laughs\") or a "
                  "broken feed")
_PROLOG = 64 * 1024  # a DOCTYPE comes before the root element: its start is enough


def _declares_entities(body: bytes) -> bool:
    """Does the document's prolog declare entities (``<!ENTITY``, any encoding that keeps
    ASCII as ASCII; UTF-16 too)?"""
    head = bytes(body[:_PROLOG])
    return b"<!ENTITY" in head or "<!ENTITY".encode("utf-16-le") in head


def _headers(headers: Mapping[str, str], url: str) -> dict[str, str]:
    out = {str(k).lower(): str(v) for k, v in headers.items()}
    # Without a Content-Type feedparser would assume ISO-8859-1 and flag the feed (as soon
    # as any header is given); the XML declaration / BOM / UTF-8 is the better default.
    out.setdefault("content-type", "application/xml")
    if url and "content-location" not in out:
        out["content-location"] = url
    return out


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


_NUMBER = re.compile(r"\s*\+?([0-9]{1,12}(?:\.[0-9]+)?)\s*")
#: sy:updatePeriod values (RSS 1.0 Syndication module); a month and a year are nominal
SY_PERIODS = {"hourly": 3600.0, "daily": 86400.0, "weekly": 7 * 86400.0,
              "monthly": 30 * 86400.0, "yearly": 365 * 86400.0}


def _positive(value: Any) -> float | None:
    """A positive number written in a feed (``"60"``, ``" 15 "``), else None: negative,
    zero, non-numeric and absurdly long values are garbage."""
    m = _NUMBER.fullmatch(value) if isinstance(value, str) else None
    number = float(m.group(1)) if m else 0.0
    return number if number > 0 else None


def _w3c_date(value: Any) -> datetime | None:
    """``sy:updateBase`` (W3C-DTF: ``2002-05-01T00:00:00Z``, ``2017-06-21T11:33:12-07:00``,
    ``2002-05-01``) in UTC, or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def feed_hints(meta: Mapping[str, Any], entries: Sequence[Mapping[str, Any]], *,
               now: datetime) -> FeedHints:
    """What a parsed document says about how often to poll it (see ``FeedHints``).

    feedparser exposes ``<ttl>`` as ``feed.ttl`` and the Syndication module (whatever
    prefix the feed binds to its namespace: ``sy:``, ``syn:``) as ``feed.sy_updateperiod``,
    ``feed.sy_updatefrequency`` and ``feed.sy_updatebase``, all as the text written.
    ``sy:updatePeriod`` defaults to daily and ``sy:updateFrequency`` to 1 (times per
    period) when only the other is given; an unknown period drops the hint, a garbage
    frequency counts as 1. Deutsche Welle writes ``sy:updateFequency``: read too.
    """
    ttl = _positive(meta.get("ttl"))
    period_text = _str(meta.get("sy_updateperiod")).strip().lower()
    freq_text = meta.get("sy_updatefrequency") or meta.get("sy_updatefequency")
    update_period = None
    if period_text or freq_text:
        period = SY_PERIODS.get(period_text or "daily")
        if period is not None:
            update_period = period / (_positive(freq_text) or 1.0)
    times = [t for t in (entry_published(e) for e in entries) if t is not None]
    return FeedHints(
        ttl=ttl * 60 if ttl is not None else None,
        update_period=update_period,
        update_base=_w3c_date(meta.get("sy_updatebase")) if update_period else None,
        cadence=learn_cadence(times, now=now),
    )


def parse_feed(
    body: bytes,
    headers: Mapping[str, str],
    *,
    feed: str,
    feed_tags: tuple[str, ...] = (),
    url: str = "",
    now: datetime,
) -> ParsedFeed:
    """Parse one fetched body and normalise its entries (see the module docstring)."""
    if not body or not body.strip():
        return ParsedFeed(title="", link="", stories=(), problem="empty body", failed=True)
    hdrs = _headers(headers, url)
    try:
        result = feedparser.parse(
            io.BytesIO(bytes(body)),
            response_headers=hdrs,
            sanitize_html=False,  # our text extraction sanitises where it is needed
            resolve_relative_uris=False,  # links inside HTML: we keep only its text
        )
    except Exception as e:  # feedparser bug on hostile input: a result, not a crash
        return ParsedFeed(
            title="", link="", stories=(), problem=f"feedparser failed: {describe_bozo(e)}",
            failed=True,
        )

    meta = result.get("feed") or {}
    entries = result.get("entries") or []
    problem = None
    if result.get("bozo"):
        offset = 1 if _prepends_declaration(body) else 0
        problem = describe_bozo(result.get("bozo_exception"), line_offset=offset)
    if _declares_entities(body):
        # never expanded (feedparser's parser does not): the entries that use them keep
        # the bare references; a person should know the feed tries, and why it looks odd
        problem = (f"{ENTITY_PROBLEM}" + (f"; {problem}" if problem else ""))
    base = url or _str(meta.get("link"))
    title = html_to_text(_str(meta.get("title")), single_line=True)
    link = canonical_link(_str(meta.get("link")), url)

    if not entries:
        if problem or not result.get("version"):
            if _looks_like_html(body, hdrs):
                problem = _html_problem(hdrs)  # the XML parser's complaint is noise here
            problem = problem or "not an RSS, Atom or RDF feed (no feed root element found)"
            return ParsedFeed(title=title, link=link, stories=(), problem=problem, failed=True)
        return ParsedFeed(title=title, link=link, stories=(),
                          hints=feed_hints(meta, entries, now=now))

    lang = _str(meta.get("language")) or hdrs.get("content-language") or None
    stories: list[Story] = []
    seen: set[str] = set()
    for entry in entries:
        story = normalize_entry(
            entry, feed=feed, feed_tags=feed_tags, base_url=base, now=now, lang=lang
        )
        if story is not None and story.id not in seen:  # a repeated guid: first one wins
            seen.add(story.id)
            stories.append(story)
    if problem and not stories:
        # broken XML whose recovered entries were all empty: nothing usable came out,
        # which is a failure like a bozo feed with no entries, not a quiet success
        return ParsedFeed(title=title, link=link, stories=(), problem=problem, failed=True)
    return ParsedFeed(title=title, link=link, stories=tuple(stories), problem=problem,
                      hints=feed_hints(meta, entries, now=now))
