"""Pure: one feedparser entry → one :class:`~monitor.core.model.Story`.

Rules (the contract the rest of the pipeline relies on):

* **id** — the entry's guid when it looks globally unique (an ``http(s)://`` URL, a
  ``urn:`` or ``tag:`` URI, or a bare UUID); a feed-local guid (``"12345"``) is scoped as
  ``f"{feed}:{guid}"``; without a guid, the canonical link; without both,
  ``"sha256:" + sha256(title + "\\n" + link)[:32]``. ``Story.guid`` keeps the raw guid.
* **link** — :func:`canonical_link`: resolved against the feed URL, scheme/host
  lower-cased, default port, fragment and tracking parameters (:data:`TRACKING_PARAMS`,
  :data:`TRACKING_PREFIXES`) removed, other parameters kept in their original order and
  spelling. ``javascript:``/``data:``/``vbscript:`` links become ``""``.
* **title / summary / content** — plain text (:func:`monitor.core.text.html_to_text`): tags
  dropped, script/style contents dropped, entities decoded (also one level of double
  escaping), whitespace collapsed, NFC. The title is one line (max :data:`MAX_TITLE`
  characters); an entry without a title borrows the start of its summary/content. The
  summary comes from ``summary``/``description`` (or, when absent, the first
  :data:`SUMMARY_FROM_CONTENT` characters of the content), max :data:`MAX_SUMMARY`; content is the plain text of the longest
  ``content[*].value``, cut at :data:`MAX_CONTENT` characters on a word boundary.
* **published** — ``published_parsed``, else ``updated_parsed``, else ``created_parsed``
  (feedparser gives UTC), as a timezone-aware UTC datetime; when there is none it is
  ``now``. A date more than :data:`FUTURE_SLACK` ahead of ``now`` is a publisher's clock
  or time-zone error and is clamped to ``now`` (it would otherwise sort first forever).
  ``first_seen`` is always ``now``.
* **authors** — ``authors[*].name`` (else ``author``), **tags** — ``tags[*].term``; both
  cleaned, stripped, de-duplicated case-insensitively in order. **lang** — the entry's
  language (``language``, or the ``xml:lang`` of its title/summary/content), else the
  ``lang`` passed by the caller (the feed's language), lower-cased, ``_`` → ``-``.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, cast
from urllib.parse import unquote_plus, urljoin, urlparse, urlsplit, urlunsplit

from feedparser.util import FeedParserDict

from monitor.core.model import Story
from monitor.core.text import clean_text, html_to_text, truncate

__all__ = [
    "FUTURE_SLACK",
    "MAX_CONTENT",
    "MAX_SUMMARY",
    "MAX_TITLE",
    "TRACKING_PARAMS",
    "TRACKING_PREFIXES",
    "canonical_link",
    "entry_published",
    "normalize_entry",
    "story_id",
]

MAX_TITLE = 500
MAX_SUMMARY = 5_000
MAX_CONTENT = 20_000
SUMMARY_FROM_CONTENT = 1_000  # an entry with content but no summary: its first words
FUTURE_SLACK = timedelta(days=1)

#: Query parameters removed from links (compared case-insensitively). They identify a
#: campaign, a click or a share, never the document.
TRACKING_PARAMS: frozenset[str] = frozenset(
    {
        # ad-click identifiers
        "fbclid", "gclid", "gclsrc", "dclid", "gbraid", "wbraid", "msclkid", "yclid",
        "igshid", "twclid", "ttclid", "li_fat_id", "epik",
        # e-mail / newsletter platforms
        "mc_cid", "mc_eid", "mkt_tok", "oly_anon_id", "oly_enc_id", "vero_id", "vero_conv",
        "_hsenc", "_hsmi", "__hssc", "__hstc", "__hsfp", "hsctatracking",
        # analytics cookies passed in links
        "_ga", "_gl", "_ke",
        # publishers' own campaign codes
        "ocid",  # Microsoft/MSN
        "cmpid", "cmp",  # many (e.g. Guardian CMP=share_btn_tw)
        "smid", "smtyp",  # New York Times shares
        "s_cid", "s_kwcid",  # Adobe SiteCatalyst
        "ito",  # Independent, BBC internal promos
        "icid", "intcmp", "int_cmp",  # internal campaign ids
        "xtor",  # AT Internet (Le Monde, France 24, …)
        "wt.mc_id", "wt_mc_id", "wt.mc_ev",  # Webtrends
        "spm", "scm",  # Alibaba
        "ns_mchannel", "ns_source", "ns_campaign", "ns_linkname", "ns_fee",  # comScore
        "sr_share", "share_source", "rss_source",
        "ref", "ref_src", "ref_url", "referrer", "referer",  # share/referrer markers
        "cid_source", "ncid", "sref", "taid",
        "traffic_source",  # Al Jazeera (traffic_source=rss)
        "maca",  # Deutsche Welle (maca=en-rss-en-all-1573-rdf)
    }
)
#: Parameter-name prefixes removed (compared case-insensitively).
TRACKING_PREFIXES: tuple[str, ...] = (
    "utm_",  # Google Analytics (utm_source, utm_medium, utm_campaign, utm_term, utm_content, …)
    "at_",  # AT Internet / Piano (BBC at_medium, at_campaign, at_link_id, …)
    "pk_",  # Piwik/Matomo
    "mtm_",  # Matomo
    "hsa_",  # HubSpot ads
    "itm_",  # internal tracking (itm_source, itm_medium)
)

_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21}
_UNSAFE_SCHEMES = frozenset({"javascript", "data", "vbscript", "file"})
_UUID = re.compile(
    r"^(?:urn:uuid:|\{)?[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\}?$",
    re.IGNORECASE,
)
_GLOBAL_GUID = re.compile(r"^(?:https?://[^\s/]+|urn:[a-z0-9][a-z0-9-]*:|tag:[^\s,]+,)", re.I)


# Mappings whose ``get`` is plain ``dict.get`` for every key read here except the aliased
# ones: FeedParserDict maps "description", "updated_parsed" (and others in its keymap, plus
# "category", "enclosures", "license", "updated") to other keys; those keep ``.get``.
_DICT_TYPES: frozenset[type] = frozenset({dict, FeedParserDict})
_Getter = Callable[[str], Any]


def _getter(m: Mapping[str, Any]) -> _Getter:
    """``m.get``, as the C-level ``dict.get`` when ``m`` is a dict or a FeedParserDict
    (whose Python-level ``get`` resolves aliases first: several times slower)."""
    if type(m) in _DICT_TYPES:
        return cast(_Getter, dict.get.__get__(m))
    return m.get


def _get(m: Mapping[str, Any], key: str) -> Any:
    """``m.get(key)`` for a key FeedParserDict does not alias (see :func:`_getter`)."""
    return dict.get(m, key) if type(m) in _DICT_TYPES else m.get(key)  # type: ignore[call-overload]


def _is_tracking(name: str) -> bool:
    key = unquote_plus(name).strip().lower()
    return key in TRACKING_PARAMS or key.startswith(TRACKING_PREFIXES)


def canonical_link(url: str, base_url: str = "") -> str:
    """The canonical form of a story link (see the module docstring); never raises.

    >>> canonical_link("HTTPS://Example.COM:443/a?utm_source=x&id=3&fbclid=y#top")
    'https://example.com/a?id=3'
    """
    try:
        return _canonical(url, base_url)
    except (ValueError, TypeError, AttributeError):
        return url.strip() if isinstance(url, str) else ""


def _canonical(url: str, base_url: str) -> str:
    url = "".join(url.split()) if any(c in url for c in "\t\r\n") else url.strip()
    if not url:
        return ""
    parts = urlsplit(url)
    if base_url and not (
        parts.netloc and parts.scheme in ("http", "https") and ";" not in url
        and _base_ok(base_url.strip())
    ):
        # (an absolute http(s) URL with a host and no ";params": urljoin would only rebuild
        # it from its own parts, dropping an empty "?" or "#", which changes nothing below)
        url = urljoin(base_url.strip(), url)
        parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in _UNSAFE_SCHEMES:
        return ""
    query = "&".join(
        p for p in parts.query.split("&") if p and not _is_tracking(p.partition("=")[0])
    )
    if scheme not in ("http", "https", "ftp") or not parts.netloc:
        return urlunsplit((scheme, parts.netloc, parts.path, query, ""))
    host = (parts.hostname or "").rstrip(".")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # "host:abc" — keep what was written
        port = None
        host = parts.netloc.rpartition("@")[2].lower()
    netloc = host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc = f"{host}:{port}"
    if "@" in parts.netloc:
        netloc = parts.netloc.rpartition("@")[0] + "@" + netloc
    path = parts.path or "/"
    return urlunsplit((scheme, netloc, path, query, ""))


@lru_cache(maxsize=256)
def _base_ok(base: str) -> bool:
    """Does ``urljoin`` accept ``base`` (an unparsable one makes every join raise)?"""
    try:
        urlparse(base)
    except ValueError:
        return False
    return True


def story_id(*, feed: str, guid: str | None, link: str, title: str) -> str:
    """The stable global id of a story (see the module docstring)."""
    if guid:
        if _UUID.match(guid) or _GLOBAL_GUID.match(guid):
            return guid
        return f"{feed}:{guid}"
    if link:
        return link
    digest = hashlib.sha256(f"{title}\n{link}".encode()).hexdigest()
    return "sha256:" + digest[:32]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _is_plain(detail: Any) -> bool:
    """Did feedparser find this value to be plain text (not HTML)?"""
    return isinstance(detail, Mapping) and _get(detail, "type") == "text/plain"


def entry_published(entry: Mapping[str, Any]) -> datetime | None:
    """The entry's publication time as the feed writes it (UTC), or None when it has
    none that can be read: ``published``, else ``updated``, else ``created``."""
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        # ("updated_parsed" is aliased by FeedParserDict: it falls back to "published_parsed")
        t = entry.get(key) if key == "updated_parsed" else _get(entry, key)
        if not isinstance(t, (time.struct_time, tuple)) or len(t) < 6:
            continue
        try:
            return datetime(t[0], t[1], t[2], t[3], t[4], min(t[5], 59), tzinfo=UTC)
        except (ValueError, TypeError, OverflowError):
            continue
    return None


def _when(entry: Mapping[str, Any], now: datetime) -> datetime:
    when = entry_published(entry)
    if when is None or when > now + FUTURE_SLACK:
        return now
    return when


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for v in values:
        key = v.casefold()
        if v and key not in seen:
            seen.add(key)
            out.append(v)
    return tuple(out)


def _authors(entry: Mapping[str, Any]) -> tuple[str, ...]:
    names: list[str] = []
    for a in _get(entry, "authors") or ():
        if isinstance(a, Mapping):
            names.append(html_to_text(_text(_get(a, "name")), single_line=True, plain=True))
    if not any(names):
        names.append(html_to_text(_text(_get(entry, "author")), single_line=True, plain=True))
    return _unique(n[:200] for n in names)


def _tags(entry: Mapping[str, Any]) -> tuple[str, ...]:
    terms: list[str] = []
    for t in _get(entry, "tags") or ():
        if isinstance(t, Mapping):
            term = _text(_get(t, "term")) or _text(_get(t, "label"))
            terms.append(html_to_text(term, single_line=True, plain=True)[:200])
    return _unique(terms)


def _lang(entry: Mapping[str, Any], fallback: str | None) -> str | None:
    candidates: list[Any] = [_get(entry, "language")]
    for key in ("title_detail", "summary_detail"):
        detail = _get(entry, key)
        if isinstance(detail, Mapping):
            candidates.append(_get(detail, "language"))
    candidates.append(fallback)
    for c in candidates:
        if isinstance(c, str) and c.strip():
            return c.strip().replace("_", "-").lower()[:35]
    return None


def _content(entry: Mapping[str, Any]) -> str:
    best, plain = "", False
    for c in _get(entry, "content") or ():
        if isinstance(c, Mapping):
            value = _text(_get(c, "value"))
            if len(value) > len(best):
                best, plain = value, _is_plain(c)
    if not best:
        return ""
    if len(best) > MAX_CONTENT * 20:  # never feed megabytes to the HTML parser
        best = best[: MAX_CONTENT * 20]
    return truncate(html_to_text(best, plain=plain), MAX_CONTENT)


def normalize_entry(
    entry: Mapping[str, Any],
    *,
    feed: str,
    feed_tags: tuple[str, ...] = (),
    base_url: str = "",
    now: datetime,
    lang: str | None = None,
) -> Story | None:
    """One feedparser entry → a :class:`Story`, or ``None`` when it has neither a title,
    a link nor a summary (nothing to show or to match).

    ``now`` is timezone-aware; it is ``first_seen`` and the fallback for ``published``.
    ``lang`` is the feed's language, used when the entry states none.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    get = _getter(entry)
    raw_title = _text(get("title"))
    raw_link = _text(get("link"))
    # ("description" is aliased by FeedParserDict — to "summary", then "subtitle")
    raw_summary = _text(get("summary")) or _text(entry.get("description"))
    if not (raw_title.strip() or raw_link.strip() or raw_summary.strip()):
        return None

    content = _content(entry)
    summary = truncate(
        html_to_text(raw_summary[: MAX_SUMMARY * 20], plain=_is_plain(get("summary_detail"))),
        MAX_SUMMARY,
    )
    if not summary and content:
        summary = truncate(content, SUMMARY_FROM_CONTENT)
    title = html_to_text(raw_title, single_line=True, plain=_is_plain(get("title_detail")))
    if not title and summary:
        title = truncate(clean_text(summary, single_line=True), 200)
    title = truncate(title, MAX_TITLE)

    link = canonical_link(raw_link, base_url)
    raw_guid = _text(get("id")).strip() or None
    return Story(
        id=story_id(feed=feed, guid=raw_guid, link=link, title=title),
        feed=feed,
        title=title,
        link=link,
        summary=summary,
        content=content,
        published=_when(entry, now),
        first_seen=now,
        authors=_authors(entry),
        tags=_tags(entry),
        lang=_lang(entry, lang),
        guid=raw_guid,
        feed_tags=tuple(feed_tags),
    )
