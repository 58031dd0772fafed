"""Golden cases for monitor.core.normalize (links, ids, text, dates) and monitor.core.text."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitor.core.normalize import (
    MAX_CONTENT,
    TRACKING_PARAMS,
    canonical_link,
    normalize_entry,
    story_id,
)
from monitor.core.text import html_to_text, truncate

NOW = datetime(2026, 2, 18, 12, 0, 0, tzinfo=UTC)


def norm(entry: dict[str, Any], **kw: Any) -> Any:
    kw.setdefault("feed", "bbc")
    kw.setdefault("feed_tags", ("news",))
    kw.setdefault("base_url", "https://www.bbc.co.uk/news/rss.xml")
    kw.setdefault("now", NOW)
    return normalize_entry(entry, **kw)


# --- canonical_link ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/a?utm_source=rss&utm_medium=feed&id=3", "https://example.com/a?id=3"),
        ("https://example.com/a?id=3&fbclid=abc&gclid=x&b=2", "https://example.com/a?id=3&b=2"),
        ("https://example.com/a?z=1&a=2&m=3", "https://example.com/a?z=1&a=2&m=3"),  # order kept
        ("https://www.bbc.co.uk/news/x?at_medium=RSS&at_campaign=KARANGA", "https://www.bbc.co.uk/news/x"),
        ("https://www.theguardian.com/p?CMP=share_btn_tw", "https://www.theguardian.com/p"),
        ("https://www.nytimes.com/s.html?smid=tw-share&smtyp=cur", "https://www.nytimes.com/s.html"),
        ("https://x.org/p?mc_cid=1&mc_eid=2&_ga=3&yclid=4&igshid=5", "https://x.org/p"),
        ("https://x.org/p?ocid=msn&cmpid=rss&s_cid=a&ito=b&spm=c.d", "https://x.org/p"),
        ("https://x.org/p?ref=hn&ref_src=twsrc%5Etfw&q=ok", "https://x.org/p?q=ok"),
        ("https://www.aljazeera.com/news/a?traffic_source=rss", "https://www.aljazeera.com/news/a"),
        ("https://www.dw.com/en/x/a-759?maca=en-rss-en-all-1573-rdf", "https://www.dw.com/en/x/a-759"),
        ("https://x.org/p?UTM_Source=Feed&Q=Keep", "https://x.org/p?Q=Keep"),
        ("https://x.org/p?q=a%20b&utm_source=x", "https://x.org/p?q=a%20b"),  # encoding kept
        ("https://example.com/a#section-2", "https://example.com/a"),
        ("HTTPS://Example.COM:443/Path/Case", "https://example.com/Path/Case"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("http://example.com:8080/a", "http://example.com:8080/a"),
        ("https://example.com", "https://example.com/"),
        ("  https://example.com/a \n", "https://example.com/a"),
        ("https://example.com/a?", "https://example.com/a"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("", ""),
        ("javascript:alert(1)", ""),
        ("mailto:news@example.com", "mailto:news@example.com"),
        ("tag:example.com,2026:1", "tag:example.com,2026:1"),
    ],
)
def test_canonical_link(url: str, expected: str) -> None:
    assert canonical_link(url) == expected


@pytest.mark.parametrize(
    ("url", "base", "expected"),
    [
        ("/news/1?utm_campaign=x", "https://www.bbc.co.uk/news/rss.xml", "https://www.bbc.co.uk/news/1"),
        ("story.html", "https://example.com/feeds/rss.xml", "https://example.com/feeds/story.html"),
        ("../a", "https://example.com/feeds/rss.xml", "https://example.com/a"),
        ("//cdn.example.com/x", "https://example.com/", "https://cdn.example.com/x"),
        ("https://other.org/x", "https://example.com/", "https://other.org/x"),
    ],
)
def test_canonical_link_relative(url: str, base: str, expected: str) -> None:
    assert canonical_link(url, base) == expected


@pytest.mark.parametrize(
    "weird",
    ["http://", "http://host:notaport/x", "http://[bad", "::::", "%%%", "http://a b.com/",
     "\x00http://x", "http://ex ample.com/?utm_source=1#", "?utm_source=x"],
)
def test_canonical_link_never_raises(weird: str) -> None:
    out = canonical_link(weird)
    assert isinstance(out, str)
    assert "utm_source" not in out or "[" in weird


def test_tracking_list_is_documented() -> None:
    for name in ("fbclid", "gclid", "mc_cid", "mc_eid", "ocid", "cmpid", "cmp", "smid", "ref",
                 "ref_src", "_ga", "yclid", "igshid", "s_cid", "ito", "spm"):
        assert name in TRACKING_PARAMS


# --- ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("guid", "expected"),
    [
        ("https://www.bbc.com/news/articles/c1#0", "https://www.bbc.com/news/articles/c1#0"),
        ("http://example.com/?p=123", "http://example.com/?p=123"),
        ("urn:uuid:1225c695-cfb8-4ebb-aaaa-80da344efa6a", "urn:uuid:1225c695-cfb8-4ebb-aaaa-80da344efa6a"),
        ("tag:example.org,2003:3.2397", "tag:example.org,2003:3.2397"),
        ("1225c695-cfb8-4ebb-aaaa-80da344efa6a", "1225c695-cfb8-4ebb-aaaa-80da344efa6a"),
        ("12345", "bbc:12345"),
        ("post-99", "bbc:post-99"),
        ("example.com/1", "bbc:example.com/1"),
    ],
)
def test_story_id_from_guid(guid: str, expected: str) -> None:
    s = norm({"id": guid, "title": "T", "link": "https://example.com/x"})
    assert s.id == expected
    assert s.guid == guid


def test_story_id_without_guid_is_canonical_link() -> None:
    s = norm({"title": "T", "link": "https://example.com/x?utm_source=rss#c"})
    assert s.id == "https://example.com/x"
    assert s.guid is None


def test_story_id_without_guid_or_link_hashes_title() -> None:
    s = norm({"title": "Only a title"})
    digest = hashlib.sha256(b"Only a title\n").hexdigest()[:32]
    assert s.id == "sha256:" + digest
    assert story_id(feed="f", guid=None, link="", title="Only a title") == s.id
    assert len(s.id) == len("sha256:") + 32


def test_entry_without_title_link_or_summary_is_none() -> None:
    assert norm({"id": "x", "published_parsed": time.gmtime(0)}) is None
    assert norm({"title": "  ", "link": "", "summary": ""}) is None


# --- text ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("Tom &amp; Jerry", "Tom & Jerry"),
        ("AT&amp;amp;T wins", "AT&T wins"),  # double-encoded
        ("&lt;b&gt;Bold&lt;/b&gt; move", "Bold move"),  # escaped markup in a title
        ("<b>Bold</b> <i>and <u>nested</u></i>", "Bold and nested"),
        ("Before<script>alert('x')</script>After", "BeforeAfter"),
        ("a<style>p{color:red}</style> b", "a b"),
        ("It’s “quoted” — 5 €", "It’s “quoted” — 5 €"),
        ("It&#8217;s &ldquo;quoted&rdquo; &mdash; 5&nbsp;&euro;", "It’s “quoted” — 5 €"),
        ("x<![CDATA[inside]]>y", "xinsidey"),
        ("  lots \n\n of\t space  ", "lots of space"),
        ("Cafe\u0301", "Café"),  # NFC
        ("line<br>break", "line break"),
        ("<p>one</p><p>two</p>", "one two"),
        ("1 < 2 and 3 > 2", "1 < 2 and 3 > 2"),
        ("R&D and AT&T", "R&D and AT&T"),
        ("<img src=x onerror=alert(1) alt=\"a photo\">Caption", "Caption"),
        ("", ""),
    ],
)
def test_html_to_text_single_line(html: str, expected: str) -> None:
    assert html_to_text(html, single_line=True) == expected


@pytest.mark.parametrize(
    ("text", "plain", "expected"),
    [
        ("Plain this&nothing", True, "Plain this&nothing"),  # not "this¬hing"
        ("Banks&regulators &copy; 2026", False, "Banks&regulators © 2026"),
        ("Banks&amp;regulators &lt;i&gt;x", False, "Banks&regulators x"),
        ("a < b &amp; c", True, "a < b & c"),  # &amp; in plain text = double escaping
        ("raw <b>markup</b> in a plain field", True, "raw markup in a plain field"),
        ("It&#8217;s", True, "It’s"),
    ],
)
def test_bare_ampersands_are_text(text: str, plain: bool, expected: str) -> None:
    assert html_to_text(text, single_line=True, plain=plain) == expected


def test_plain_title_detail_respected() -> None:
    s = norm({"title": "Q&A: this&nothing", "title_detail": {"type": "text/plain"},
              "summary": "P&G &not; <i>x</i>", "summary_detail": {"type": "text/html"}})
    assert s.title == "Q&A: this&nothing"
    assert s.summary == "P&G ¬ x"


def test_html_to_text_keeps_paragraphs() -> None:
    html = "<div><p>First   para.</p>\n\n\n<p>Second <a href='x'>link</a>.</p><ul><li>a</li><li>b</li></ul></div>"
    assert html_to_text(html) == "First para.\n\nSecond link.\n\na\nb"


def test_truncate_on_word_boundary() -> None:
    text = "word " * 100
    out = truncate(text, 52)
    assert len(out) <= 52
    assert out.endswith("…")
    assert not out[:-1].endswith(" ")
    assert truncate("short", 52) == "short"


def test_title_summary_content_plain_text() -> None:
    s = norm(
        {
            "title": "Witkoff&#8217;s <em>make-or-break</em> trip &amp; sanctions",
            "link": "https://example.com/a",
            "summary": "<p>Trump&rsquo;s deadline<script>evil()</script> is <b>Friday</b>.</p>",
            "content": [
                {"value": "<p>short</p>"},
                {"value": "<p>The <strong>longest</strong> body.</p><p>Two paras.</p>"},
            ],
        }
    )
    assert s.title == "Witkoff’s make-or-break trip & sanctions"
    assert s.summary == "Trump’s deadline is Friday."
    assert s.content == "The longest body.\n\nTwo paras."


def test_long_content_is_truncated() -> None:
    body = "<p>" + ("lorem ipsum " * 5000) + "</p>"
    s = norm({"title": "T", "content": [{"value": body}]})
    assert len(s.content) <= MAX_CONTENT
    assert s.content.endswith("…")
    assert s.summary and len(s.summary) <= 1000  # borrowed from the content


def test_title_borrowed_from_summary_when_missing() -> None:
    s = norm({"summary": "<p>A toot without a title, about sanctions.</p>", "link": "https://m.example/1"})
    assert s.title == "A toot without a title, about sanctions."


# --- dates --------------------------------------------------------------------------------


def _parsed(s: str) -> time.struct_time:
    # what feedparser gives: a UTC struct_time
    return datetime.fromisoformat(s).astimezone(UTC).timetuple()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("published_parsed", "2026-02-17T18:55:33+00:00", datetime(2026, 2, 17, 18, 55, 33, tzinfo=UTC)),
        ("published_parsed", "2026-02-17T10:00:00-08:00", datetime(2026, 2, 17, 18, 0, tzinfo=UTC)),
        ("updated_parsed", "2026-02-18T01:30:00+05:30", datetime(2026, 2, 17, 20, 0, tzinfo=UTC)),
        ("created_parsed", "2026-02-16T23:00:00+09:00", datetime(2026, 2, 16, 14, 0, tzinfo=UTC)),
    ],
)
def test_dates_to_utc(key: str, value: str, expected: datetime) -> None:
    s = norm({"title": "T", key: _parsed(value)})
    assert s.published == expected
    assert s.published.tzinfo is UTC
    assert s.first_seen == NOW


def test_published_preferred_over_updated() -> None:
    s = norm({"title": "T", "updated_parsed": _parsed("2026-02-18T00:00:00+00:00"),
              "published_parsed": _parsed("2026-02-17T00:00:00+00:00")})
    assert s.published == datetime(2026, 2, 17, tzinfo=UTC)


def test_missing_or_broken_date_is_now() -> None:
    assert norm({"title": "T"}).published == NOW
    assert norm({"title": "T", "published_parsed": (2026, 13, 45, 0, 0, 0, 0, 0, 0)}).published == NOW
    assert norm({"title": "T", "published_parsed": "yesterday"}).published == NOW


def test_future_dates_clamped_to_now() -> None:
    soon = NOW + timedelta(hours=20)  # clock skew within a day is kept
    s = norm({"title": "T", "published_parsed": soon.timetuple()})
    assert s.published == soon
    far = NOW + timedelta(days=3)
    assert norm({"title": "T", "published_parsed": far.timetuple()}).published == NOW


def test_naive_now_rejected() -> None:
    with pytest.raises(ValueError):
        normalize_entry({"title": "T"}, feed="f", feed_tags=(), base_url="", now=datetime(2026, 1, 1))


# --- authors, tags, lang -------------------------------------------------------------------


def test_authors_tags_lang_feed_tags() -> None:
    s = norm(
        {
            "title": "T",
            "link": "/news/1",
            "author": "Kim Barker",
            "authors": [{"name": "Kim Barker"}, {"name": " Oleksandra &amp; Co "}, {"email": "x@y"}],
            "tags": [{"term": " Ukraine "}, {"term": "ukraine"}, {"term": "Russia"}, {"term": ""}],
            "title_detail": {"language": "en_GB"},
        },
        lang="fr",
    )
    assert s.link == "https://www.bbc.co.uk/news/1"
    assert s.authors == ("Kim Barker", "Oleksandra & Co")
    assert s.tags == ("Ukraine", "Russia")
    assert s.lang == "en-gb"
    assert s.feed_tags == ("news",)
    assert s.feed == "bbc"


def test_author_string_and_feed_lang_fallback() -> None:
    s = norm({"title": "T", "author": "desk@example.com (News Desk)"}, lang="en-US")
    assert s.authors == ("desk@example.com (News Desk)",)
    assert s.lang == "en-us"
    assert norm({"title": "T"}).lang is None


def test_every_field_is_str() -> None:
    s = norm({"title": "T", "link": "https://e.com/", "summary": "S", "id": "1",
              "tags": [{"term": "a"}], "authors": [{"name": "n"}]})
    for value in (s.id, s.feed, s.title, s.link, s.summary, s.content, s.guid, *s.tags, *s.authors):
        assert type(value) is str


# --- fast paths give what the general paths give -----------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/a;p=1?x=1",  # ";params" kept by urljoin
        "https://example.com/a;?x=1",  # empty ";" dropped by urljoin
        "https://example.com/a?#frag",
        "HTTPS://Example.COM:443/a?utm_source=x&id=3#top",
        "http:///no-host",  # no host: joined onto the base's host
        "http:relative",
        "//example.com/protocol-relative",
        "ftp://example.com/f",
        "/path?q=1",
        "https://[::1]:8443/v6",
        "https://[bad/host",
        "https://example.com:abc/p",
    ],
)
@pytest.mark.parametrize(
    "base", ["https://www.bbc.co.uk/news/rss.xml", "http://example.org/", "http://[bad/", ""]
)
def test_canonical_link_skips_urljoin_only_where_it_changes_nothing(url: str, base: str) -> None:
    from urllib.parse import urljoin

    try:
        joined = urljoin(base, url) if base else url
    except ValueError:
        expected = url.strip()
    else:
        expected = canonical_link(joined)
    assert canonical_link(url, base) == expected


def test_feedparser_aliases_kept() -> None:
    from feedparser.util import FeedParserDict

    # "description" falls back to "subtitle"; "updated_parsed" to "published_parsed".
    entry = FeedParserDict(
        title="T", subtitle="<p>From the subtitle</p>",
        published_parsed=time.struct_time((2026, 2, 31, 10, 0, 0, 0, 1, 0)),  # invalid day
        created_parsed=time.struct_time((2026, 2, 17, 10, 0, 0, 0, 1, 0)),
        tags=[FeedParserDict(label="Lbl")], authors=[FeedParserDict(name="A &amp; B")],
        content=[FeedParserDict(value="<b>body</b>", type="text/html")],
    )
    s = norm(entry)
    assert s.summary == "From the subtitle"
    assert s.published == datetime(2026, 2, 17, 10, 0, tzinfo=UTC)
    assert (s.tags, s.authors, s.content) == (("Lbl",), ("A & B",), "body")
    # A plain dict has no aliases: no summary, so it borrows the content.
    assert norm(dict(entry)).summary == "body"


@pytest.mark.parametrize(
    ("markup", "expected"),
    [
        # unclosed <object>: the sanitiser drops the element, not the text after it
        ('safe<object classid="clsid:C932BA85-4374-101B-A56C-00AA003668DC"> description',
         "safe description"),
        ("<applet code='x'>hidden</applet>shown", "shown"),
        ("sa<!-- -- nonwhitespace >fe<script>alert(1);</script>", "safe"),
        ("safe<!--", "safe"),
        ("<p onclick='evil()'>a <b>bold</b> move</p><style>p{}</style>", "a bold move"),
        ("<p>x <![CDATA[AT&T <3]]> y</p>", "x AT&T <3 y"),  # CDATA is literal text
    ],
)
def test_hostile_markup_is_sanitised_before_it_becomes_text(markup: str, expected: str) -> None:
    """feedparser's sanitiser is off at parse time; the slow path applies it."""
    assert html_to_text(markup, single_line=True) == expected


@pytest.mark.parametrize(
    ("markup", "expected"),
    [
        ("a<![CDATA[<b>]]>c", "a&lt;b&gt;c"),
        ("<![CDATA[x]]><![CDATA[y]]>", "xy"),
        ("<![CDATA[<![CDATA[inner]]>]]>", "&lt;![CDATA[inner]]>"),  # the first closer ends it
        ("keep <![CDATA[open" * 3, "keep <![CDATA[open" * 3),  # openers without a closer
        ("<![CDATA[a]]> then <![CDATA[unclosed", "a then <![CDATA[unclosed"),
    ],
)
def test_cdata_sections_become_escaped_text(markup: str, expected: str) -> None:
    from monitor.core.text import _unwrap_cdata

    assert _unwrap_cdata(markup) == expected


def test_many_cdata_openers_without_a_closer_are_plain_text() -> None:
    """A hostile feed repeating ``<![CDATA[`` (it is linear: bench/ times such things)."""
    markup = "<p>" + "<![CDATA[x" * 5000 + "</p>"
    assert html_to_text(markup, single_line=True) == "<![CDATA[x" * 5000
