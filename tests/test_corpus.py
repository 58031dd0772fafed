"""Every file of the shared corpora through parse_feed: no exception, unicode only, no markup
in titles, bozo feeds flagged (not dropped); sanitisation; golden checks on real feeds.

The corpora live beside the repository (../shared/corpora); without them these tests skip.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import feedparser
import pytest

from monitor.core.model import ParsedFeed, Story
from monitor.core.parse import parse_feed
from tests.conftest import CORPORA, shared_path

NOW = datetime(2026, 2, 18, 12, 0, 0, tzinfo=UTC)
FEED_URL = "https://feeds.example.org/feed.xml"
SUFFIXES = {".xml", ".rdf", ".json", ".rss", ".atom"}

# SOURCES.md: these encode behaviour newer than feedparser 6.0.x.
NEWER_THAN_6_0 = {
    "wellformed/atom/entry_link_no_href_link_priority.xml",
    "wellformed/atom/entry_link_rel_enclosure_no_href.xml",
    "wellformed/atom10/entry_link_no_href_link_priority.xml",
    "wellformed/atom10/entry_link_rel_enclosure_no_href.xml",
    *(f"wellformed/itunes/itunes_{where}_explicit_{v}.xml"
      for where in ("channel", "item") for v in ("false", "no", "true")),
}

TAG = re.compile(r"<\s*/?\s*[a-zA-Z][a-zA-Z0-9:-]*(?:\s[^<>]*)?/?\s*>")
DANGEROUS = re.compile(r"<\s*/?\s*(?:script|iframe|object|embed|applet|style|meta|link|form|frame)\b", re.I)
ON_ATTR = re.compile(r"<[^>]*\son[a-z]+\s*=", re.I)


def _files(folder: str) -> list[Path]:
    root = CORPORA / folder
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


def _ids(paths: list[Path], folder: str) -> list[str]:
    return [p.relative_to(CORPORA / folder).as_posix() for p in paths]


def _head_text(body: bytes) -> str:
    """The start of a document as text, whatever its encoding (BOM or ``<?`` byte pattern)."""
    head = body[:4096]
    for bom, enc in ((codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF32_LE, "utf-32-le"),
                     (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_BE, "utf-16-be"),
                     (codecs.BOM_UTF16_LE, "utf-16-le")):
        if head.startswith(bom):
            return head[len(bom):].decode(enc, "replace")
    for pattern, enc in ((b"\x00\x00\x00<", "utf-32-be"), (b"<\x00\x00\x00", "utf-32-le"),
                         (b"\x00<\x00?", "utf-16-be"), (b"<\x00?\x00", "utf-16-le"),
                         (b"\x4c\x6f\xa7\x94", "cp037")):
        if head.startswith(pattern):
            return head.decode(enc, "replace")
    return head.decode("latin-1")


def corpus_headers(path: Path, body: bytes) -> dict[str, str]:
    """The HTTP headers a corpus file asks for (``Header:`` lines, or JSON ``__TEST__``)."""
    if path.suffix == ".json":
        # "__TEST__" holds the comment as one line; this corpus' only JSON file has no Header.
        return {"Content-Type": "application/json"}
    text = _head_text(body)
    start, end = text.find("<!--"), text.find("-->")
    if start < 0 or end < start:
        return {}
    headers: dict[str, str] = {}
    for m in re.finditer(r"^\s*Header:\s*([^:\r\n]+):\s*(.*?)\s*$", text[start:end], re.M):
        headers[m.group(1).strip()] = m.group(2)
    return headers


def check_story(s: Story) -> None:
    for f in fields(Story):
        value = getattr(s, f.name)
        if f.name in ("published", "first_seen"):
            assert isinstance(value, datetime) and value.utcoffset() is not None
            assert value.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
        elif f.name in ("authors", "tags", "feed_tags"):
            assert isinstance(value, tuple) and all(type(v) is str for v in value), f.name
        elif f.name in ("lang", "guid"):
            assert value is None or type(value) is str, f.name
        else:
            assert type(value) is str, f.name
    assert not TAG.search(s.title), s.title
    assert s.id


def run_file(path: Path) -> tuple[ParsedFeed, Any]:
    body = path.read_bytes()
    headers = corpus_headers(path, body)
    parsed = parse_feed(body, headers, feed="corpus", feed_tags=("t",), url=FEED_URL, now=NOW)
    assert isinstance(parsed, ParsedFeed)
    assert type(parsed.title) is str and type(parsed.link) is str
    for s in parsed.stories:
        check_story(s)
    # What feedparser alone says about the same bytes: bozo ⇒ we report it; entries ⇒ kept.
    raw = feedparser.parse(_bytes_io(body), response_headers=_lower(headers))
    if raw.get("bozo") or parsed.failed:
        assert parsed.problem, "bozo feed without a problem"
    usable = [e for e in raw.entries if e.get("title") or e.get("link") or e.get("summary")]
    if usable:
        assert not parsed.failed
        assert 0 < len(parsed.stories) <= len(usable)
    assert len({s.id for s in parsed.stories}) == len(parsed.stories)
    return parsed, raw


def _bytes_io(body: bytes) -> Any:
    import io

    return io.BytesIO(body)


def _lower(headers: dict[str, str]) -> dict[str, str]:
    out = {k.lower(): v for k, v in headers.items()}
    out.setdefault("content-type", "application/xml")  # as parse_feed does
    return out


FP_FILES = _files("feedparser-tests")
REAL_FILES = _files("real-feeds")


def _fp_params() -> list[Any]:
    params = []
    for path, rel in zip(FP_FILES, _ids(FP_FILES, "feedparser-tests"), strict=True):
        marks = [pytest.mark.xfail(strict=False, reason="newer than feedparser 6.0.x")] if rel in NEWER_THAN_6_0 else []
        params.append(pytest.param(path, id=rel, marks=marks))
    return params


@pytest.mark.shared
def test_corpora_present() -> None:
    shared_path("corpora", "feedparser-tests", "SOURCES.md")
    shared_path("corpora", "real-feeds", "SOURCES.md")
    assert len(FP_FILES) > 2000
    assert len(REAL_FILES) > 50


@pytest.mark.shared
@pytest.mark.parametrize("path", _fp_params())
def test_feedparser_corpus_file(path: Path) -> None:
    parsed, _ = run_file(path)
    rel = path.relative_to(CORPORA / "feedparser-tests").as_posix()
    if rel.startswith("wellformed/sanitize/"):
        for s in parsed.stories:
            for text in (s.title, s.summary, s.content, *s.authors, *s.tags):
                assert not DANGEROUS.search(text), text
                assert not ON_ATTR.search(text), text
                assert "javascript:" not in s.link.lower()


@pytest.mark.shared
@pytest.mark.parametrize("path", REAL_FILES, ids=_ids(REAL_FILES, "real-feeds"))
def test_real_feed_file(path: Path) -> None:
    parsed, raw = run_file(path)
    if raw.entries:
        assert parsed.stories


@pytest.mark.shared
def test_sanitize_corpus_strips_script_content() -> None:
    folder = shared_path("corpora", "feedparser-tests", "wellformed", "sanitize")
    leaked = []
    for path in sorted(folder.glob("*.xml")):
        body = path.read_bytes()
        parsed = parse_feed(body, corpus_headers(path, body), feed="s", url=FEED_URL, now=NOW)
        for s in parsed.stories:
            for text in (s.title, s.summary, s.content):
                if DANGEROUS.search(text) or ON_ATTR.search(text) or "alert(" in text:
                    leaked.append((path.name, text))
    assert leaked == []


def _real(*parts: str) -> ParsedFeed:
    path = shared_path("corpora", "real-feeds", *parts)
    return parse_feed(path.read_bytes(), {}, feed=parts[-1], url=FEED_URL, now=NOW)


@pytest.mark.shared
@pytest.mark.parametrize(
    ("name", "title", "link", "published", "feed_title"),
    [
        ("bbc-news-top.xml", "US civil rights leader Jesse Jackson dies aged 84",
         "https://www.bbc.com/news/articles/cp81l0e1eg5o",  # at_medium/at_campaign dropped
         datetime(2026, 2, 17, 18, 55, 33, tzinfo=UTC), "BBC News"),
        ("aljazeera-all.xml", "Stephen Colbert says CBS barred interview with Texas Democratic candidate",
         "https://www.aljazeera.com/news/2026/2/18/stephen-colbert-says-cbs-barred-his-interview-with-texas-senate-candidate",
         datetime(2026, 2, 18, 1, 51, tzinfo=UTC), None),
        ("npr-world.xml", "U.S. releases new details on alleged secret Chinese nuclear test",
         "https://www.npr.org/2026/02/17/nx-s1-5716046/u-s-releases-new-details-on-alleged-secret-chinese-nuclear-test",
         datetime(2026, 2, 17, 18, 56, 24, tzinfo=UTC), "NPR Topics: World"),
        ("dw-rdf-all.rdf", "France arrests nine in right-wing activist's death",
         "https://www.dw.com/en/france-arrests-nine-in-right-wing-activist-s-death/a-75995188",
         datetime(2026, 2, 18, 0, 15, tzinfo=UTC), "Deutsche Welle"),
    ],
)
def test_news_snapshot_golden(
    name: str, title: str, link: str, published: datetime, feed_title: str | None
) -> None:
    parsed = _real("news-snapshot-2026-02-17", name)
    assert parsed.problem is None and not parsed.failed
    first = parsed.stories[0]
    assert first.title == title
    assert first.link == link
    assert first.published == published
    if feed_title:
        assert parsed.title == feed_title


@pytest.mark.shared
def test_news_snapshot_details() -> None:
    bbc = _real("news-snapshot-2026-02-17", "bbc-news-top.xml").stories[0]
    assert bbc.id == "https://www.bbc.com/news/articles/cp81l0e1eg5o#0"  # a URL guid is global
    assert bbc.summary == ("Tributes poured in from politicians who described Jackson as an "
                           "agent of change and transformative leader.")
    aj = _real("news-snapshot-2026-02-17", "aljazeera-all.xml").stories[0]
    assert "Monday's broadcast" in aj.summary  # &#039; decoded
    npr = _real("news-snapshot-2026-02-17", "npr-world.xml").stories[0]
    assert npr.authors == ("Geoff Brumfiel",)
    assert npr.content.startswith("At a event in Washington D.C.")  # image alt text dropped
    assert "npr-rss-pixel" not in npr.content
    dw = _real("news-snapshot-2026-02-17", "dw-rdf-all.rdf").stories[0]
    assert dw.lang == "en" and dw.tags == ("News",)


@pytest.mark.shared
def test_windows_1251_russian() -> None:
    parsed = _real("miniflux", "encoding_WINDOWS-1251.xml")
    assert parsed.problem is None
    first = parsed.stories[0]
    assert first.title == "Цитата #17703"
    assert first.summary.startswith("xxx: есть у кого жаба программер\nxxx: кот немного пхп знает?")
    assert first.lang == "ru"
    assert first.published == datetime(2018, 3, 21, 7, 27, 32, tzinfo=UTC)  # +0300 → UTC
    oren = _real("node-feedparser", "iconv.xml")
    assert oren.title.startswith("Новости Оренбурга")


@pytest.mark.shared
def test_gb2312_chinese() -> None:
    parsed = _real("rss-parser", "encoding-gb2312.xml")
    assert parsed.title == "新闻国内"
    assert parsed.stories[0].title == "习近平为何如此强调崇尚英雄？"
    assert all(re.search(r"[\u4e00-\u9fff]", s.title) for s in parsed.stories)


@pytest.mark.shared
def test_urdu_rtl() -> None:
    parsed = _real("miniflux", "urdu_UTF8.xml")
    assert parsed.title.startswith("BBC News اردو")
    first = parsed.stories[0]
    assert re.search(r"[\u0600-\u06ff]{3,}", first.title)
    assert first.lang == "ur"


@pytest.mark.shared
def test_iso_8859_1_without_declaration_is_flagged_not_dropped() -> None:
    parsed = _real("miniflux", "no_encoding_ISO-8859-1.xml")
    assert parsed.problem and not parsed.failed
    assert len(parsed.stories) == 9  # of 10 items, one is empty (no title, link or text)
    uol = _real("rss-parser", "uolNoticias.rss")
    assert uol.problem and "windows-1252" in uol.problem
    assert "simulações" in uol.stories[0].title


@pytest.mark.shared
def test_broken_declaration_fails_readably() -> None:
    parsed = _real("edge-cases", "broken-xmldecl-prefixed-rss-dylanharris.xml")
    assert parsed.failed and parsed.stories == ()
    assert parsed.problem is not None and parsed.problem.startswith("not well-formed XML at line")
