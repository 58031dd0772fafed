"""monitor.core.parse: bytes + headers → ParsedFeed (bozo handling, encodings, the seed story)."""

from __future__ import annotations

import html
import pickle
import re
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.core.model import ParsedFeed
from monitor.core.parse import describe_bozo, parse_feed
from tests.conftest import shared_path

NOW = datetime(2026, 2, 18, 12, 0, 0, tzinfo=UTC)
SEED_TITLE = (
    "Trump envoy Witkoff urged to take tough approach with Putin in make-or-break meeting "
    "to end Ukraine war before sanctions"
)

RSS = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel>
<title>Example &amp; Co</title><link>https://example.com/</link><language>en-GB</language>
<item><title>First</title><link>https://example.com/1?utm_source=rss</link>
<guid isPermaLink="false">abc-1</guid><pubDate>Tue, 17 Feb 2026 10:00:00 -0500</pubDate>
<description>&lt;p&gt;Hello &lt;b&gt;world&lt;/b&gt;&lt;/p&gt;</description></item>
<item><title>Second</title><link>/2</link></item>
</channel></rss>"""


def parse(body: bytes, headers: dict[str, str] | None = None, **kw: object) -> ParsedFeed:
    return parse_feed(body, headers or {}, feed=str(kw.get("feed", "ex")),
                      url=str(kw.get("url", "https://example.com/feed.xml")), now=NOW)


def test_valid_feed() -> None:
    p = parse(RSS, {"Content-Type": "application/rss+xml; charset=utf-8"})
    assert not p.failed and p.problem is None
    assert p.title == "Example & Co"
    assert p.link == "https://example.com/"
    first, second = p.stories
    assert first.id == "ex:abc-1" and first.guid == "abc-1"
    assert first.link == "https://example.com/1"
    assert first.summary == "Hello world"
    assert first.published == datetime(2026, 2, 17, 15, 0, tzinfo=UTC)
    assert first.lang == "en-gb"
    assert second.link == "https://example.com/2"  # resolved against the feed URL
    assert second.id == "https://example.com/2"
    assert second.published == NOW


def test_bozo_with_entries_keeps_stories_and_says_why() -> None:
    broken = RSS.replace(b"<title>Second</title>", b"<title>Second</titel>")
    p = parse(broken)
    assert not p.failed
    assert p.problem is not None
    assert p.problem.startswith("not well-formed XML at line 7, column 21")
    assert "mismatched tag" in p.problem
    assert [s.title for s in p.stories][:1] == ["First"]


def test_bozo_without_entries_fails_with_readable_reason() -> None:
    p = parse(b"<html><body><p>Not a feed<br></body></html>", {"content-type": "text/html"})
    assert p.failed and p.stories == ()
    assert p.problem and "Exception" not in p.problem and "<unknown>" not in p.problem
    p2 = parse(b"<?xml version='1.0'?><rss><channel><title>x</title></chan")
    assert p2.failed
    assert p2.problem is not None and p2.problem.startswith("not well-formed XML at line 1")


def test_empty_valid_feed_is_not_a_failure() -> None:
    p = parse(b'<?xml version="1.0"?><rss version="2.0"><channel><title>Quiet</title></channel></rss>')
    assert p == ParsedFeed(title="Quiet", link="", stories=())


def test_empty_body_and_non_feed_xml_fail() -> None:
    assert parse(b"").failed and parse(b"").problem == "empty body"
    assert parse(b"  \n").failed
    p = parse(b"<?xml version='1.0'?><config><x/></config>")
    assert p.failed and p.problem and "not an RSS" in p.problem
    assert "HTML page" not in p.problem


@pytest.mark.parametrize("ctype", ["text/html; charset=utf-8", "application/octet-stream"])
def test_an_html_page_instead_of_a_feed_says_so(ctype: str) -> None:
    # a site's home page (by its type, or by its first bytes): the usual wrong URL
    page = (b"<!DOCTYPE html>\n<html><head><title>News</title><link rel=alternate "
            b"type=application/rss+xml href=/feed></head><body><p>Hi<br></body></html>")
    p = parse(page, {"Content-Type": ctype})
    assert p.failed and p.problem and p.problem.startswith("not a feed: got an HTML page")
    assert "XML" not in p.problem  # the XML parser's complaint about HTML is noise


def test_a_feed_served_as_html_is_not_called_an_html_page() -> None:
    empty = b'<?xml version="1.0"?><rss version="2.0"><channel><title>Q</title></channel></rss>'
    p = parse(empty, {"Content-Type": "text/html"})
    assert "HTML page" not in (p.problem or "")


def test_never_fetches_or_opens_files(tmp_path: Path) -> None:
    secret = tmp_path / "feed.xml"
    secret.write_bytes(RSS)
    # A body that is a path or a URL is data, never opened or fetched.
    assert parse(str(secret).encode()).stories == ()
    assert parse(b"http://127.0.0.1:9/feed.xml").stories == ()


def test_charset_from_content_type_header() -> None:
    body = (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>Новости</title>'
        "<item><title>Путин и санкции</title><link>https://e.ru/1</link></item>"
        "</channel></rss>"
    ).encode("windows-1251")
    p = parse(body, {"Content-Type": "application/xml; charset=windows-1251"})
    assert p.problem is None
    assert p.title == "Новости"
    assert p.stories[0].title == "Путин и санкции"
    # The same bytes with no charset anywhere: decoded as something, flagged, not crashed.
    p2 = parse(body, {"Content-Type": "application/xml"})
    assert p2.stories and p2.stories[0].title != "Путин и санкции"


def test_header_charset_overrides_wrong_declaration() -> None:
    body = (
        '<?xml version="1.0" encoding="iso-8859-1"?><rss version="2.0"><channel><title>t</title>'
        "<item><title>Ελλάδα</title></item></channel></rss>"
    ).encode()
    p = parse(body, {"content-type": "application/rss+xml; charset=utf-8"})
    assert p.stories[0].title == "Ελλάδα"


def test_describe_bozo_plain_exception() -> None:
    assert describe_bozo(ValueError("boom")) == "ValueError: boom"
    assert describe_bozo(None)


def test_seed_story_text_comes_out_clean() -> None:
    article = shared_path("seeds", "sanctions-deadline-article.txt").read_text(encoding="utf-8")
    paras = [p.strip() for p in article.split("\n\n") if p.strip()]
    body_html = "".join(f"<p>{html.escape(p, quote=False)}</p>\n" for p in paras[1:])
    item = (
        f"<item><title>{SEED_TITLE}</title>"
        "<link>https://nypost.com/2025/08/05/us-news/witkoff-putin/?utm_source=rss&amp;utm_campaign=x</link>"
        "<guid isPermaLink=\"false\">nypost-3921</guid>"
        "<pubDate>Wed, 06 Aug 2025 01:12:00 +0000</pubDate>"
        f"<description><![CDATA[{body_html}]]></description>"
        f"<content:encoded><![CDATA[<div class='entry'>{body_html}"
        "<script>track()</script></div>]]></content:encoded></item>"
    )
    feed = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/">'
        f"<channel><title>NY Post</title><link>https://nypost.com/</link>{item}</channel></rss>"
    ).encode()
    p = parse(feed, {"content-type": "application/rss+xml; charset=UTF-8"}, feed="nypost")
    assert p.problem is None
    (s,) = p.stories
    assert s.title == SEED_TITLE
    assert s.id == "nypost:nypost-3921"
    assert s.link == "https://nypost.com/2025/08/05/us-news/witkoff-putin/"
    assert s.published == datetime(2025, 8, 6, 1, 12, tzinfo=UTC)
    for text in (s.summary, s.content):
        assert "he’s serious about ending his 41-month-old invasion" in text
        assert "Moscow’s leader" in text and "“Putin’s brain”" in text
        assert not re.search(r"</?[a-zA-Z][^>]*>", text)
        assert "&amp;" not in text and "&#" not in text and "track()" not in text
        assert "\n\n" in text  # paragraphs kept
        assert text.endswith("Leave a Reply\n\nYour email address will not be published. Required fields are marked *")


def test_result_and_function_are_picklable() -> None:
    p = parse(RSS)
    assert pickle.loads(pickle.dumps(p)) == p
    assert pickle.loads(pickle.dumps(parse_feed)) is parse_feed


def test_runs_in_a_process_pool() -> None:
    with ProcessPoolExecutor(max_workers=1) as pool:
        got = pool.submit(parse_feed, RSS, {}, feed="ex", url="https://example.com/feed.xml", now=NOW)
        assert got.result(timeout=30) == parse(RSS)


def test_error_line_is_the_documents_own_line() -> None:
    # feedparser prepends an XML declaration to documents without one; the reported
    # line must still be the line in the bytes we were given.
    body = b'<rss version="2.0"><channel>\n<title>x</title>\n<item><title>a</titel></item>\n</channel></rss>'
    p = parse(body)
    assert p.problem is not None and p.problem.startswith("not well-formed XML at line 3")
    p2 = parse(b'<?xml version="1.0"?>\n' + body)
    assert p2.problem is not None and p2.problem.startswith("not well-formed XML at line 4")


def test_xml_base_resolves_links_per_element() -> None:
    """feedparser's base resolution runs memoised (monitor.core.parse): nested and sibling
    xml:base values still resolve each entry's links against their own base."""
    from feedparser import mixin

    assert getattr(mixin.make_safe_absolute_uri, "memoised", False)
    body = b"""<?xml version="1.0"?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:base="https://a.example/news/">
  <title>t</title>
  <entry><id>1</id><title>one</title><link href="one.html"/></entry>
  <entry xml:base="https://b.example/x/"><id>2</id><title>two</title>
    <link href="two.html"/></entry>
  <entry xml:base="../old/"><id>3</id><title>three</title><link href="three.html"/></entry>
  <entry xml:base="javascript:alert(1)//"><id>4</id><title>four</title>
    <link href="four.html"/></entry>
</feed>"""
    for _ in range(2):  # the second parse answers from the cache: the same links
        links = [s.link for s in parse(body).stories]
        assert links == ["https://a.example/news/one.html", "https://b.example/x/two.html",
                         "https://a.example/old/three.html",
                         "https://a.example/news/four.html"]
