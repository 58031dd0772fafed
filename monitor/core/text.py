"""Pure HTML → plain text, for story titles, summaries and content.

``html_to_text`` reads HTML like the stdlib ``html.parser`` would: tags are dropped, the contents of
``script``/``style``/``template``/embedded objects are dropped entirely, block elements
(``p``, ``div``, headings, lists, tables …) become paragraph breaks, ``br``/``li``/``tr``
line breaks and table cells spaces, character
references are decoded, whitespace is collapsed and the result is NFC-normalised.

Speed: most feed HTML is a sequence of plain tags whose
attribute values hold no ``<``/``>``. Such markup is reduced by a few compiled-regex
passes (comments, paragraph tags, line tags, cells, every other tag) and one
``html.unescape``; this gives exactly what the ``html.parser`` walk gives. Anything else —
``script``/``style`` and the other skipped elements, CDATA, declarations, processing
instructions, a stray ``<``, unusual tag syntax — is first cleaned by feedparser's HTML
sanitiser (as feedparser would at parse time: script/applet/style and their content,
elements off its allow-list, comments), then takes the ``html.parser`` walk. On plain
tags the sanitiser changes no text, so it is not paid for there.

Feeds often escape their HTML twice (``&amp;amp;``, ``&lt;b&gt;``); when the decoded text
still looks like escaped markup or entities, it is decoded once more (only once: a
literal ``&amp;`` written on purpose by a third escaping level survives as ``&``).

Typographic characters (curly quotes, dashes, non-Latin scripts) are kept as they are;
only control characters and zero-width noise are removed.
"""

from __future__ import annotations

import html
import re
import unicodedata
from html.parser import HTMLParser

from feedparser.sanitizer import _sanitize_html

__all__ = ["clean_text", "html_to_text", "truncate"]

# Elements whose whole content is dropped (not text a reader would see).
_SKIP = frozenset(
    {"script", "style", "applet", "template", "noscript", "iframe", "object", "embed", "svg", "math",
     "head", "title", "select", "textarea", "button", "canvas", "audio", "video", "map"}
)
# Elements that are paragraphs of their own (a blank line before and after) …
_PARA = frozenset(
    {"address", "article", "aside", "blockquote", "caption", "details", "dialog", "div", "dl",
     "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
     "header", "hgroup", "hr", "main", "nav", "ol", "p", "pre", "section", "summary", "table",
     "ul"}
)
# … elements that start a new line …
_LINE = frozenset({"br", "li", "tr", "dt", "dd"})
# … and cells, separated by a space.
_CELL = frozenset({"td", "th"})
# Images (and their alt text: photo captions, tracking pixels) contribute nothing.
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
     "source", "track", "wbr"}
)

# Control characters except \t \n; zero-width and bidi-embedding noise is kept out too,
# but RLM/LRM (used in RTL text) and ZWJ/ZWNJ (needed by Persian/Urdu, emoji) are kept.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2060\ufeff\ufffe\uffff]")
_BLANK_LINES = re.compile(r"\n{3,}")
_ENTITY_BODY = r"(?:[a-zA-Z][a-zA-Z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6});"
_ENTITY = re.compile("&" + _ENTITY_BODY)
_BARE_AMP = re.compile("&(?!" + _ENTITY_BODY + ")")
_TAG = re.compile(r"<\s*/?\s*[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?\s*>")
# Signs of a second level of escaping: an entity or an escaped tag in the decoded text.
_ESCAPED = re.compile(
    r"&(?:[a-zA-Z][a-zA-Z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6});"
    r"|<\s*/?\s*[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?\s*>"
)


class _TextExtractor(HTMLParser):
    """Collects the visible text of an HTML fragment."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            if tag not in _VOID:
                self._skip_depth += 1
            return
        self._open(tag)

    def _open(self, tag: str) -> None:
        if tag in _PARA:
            self.parts.append("\n\n")
        elif tag in _LINE:
            self.parts.append("\n")
        elif tag in _CELL:
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <br/>, <p/>, <script/>: never opens a skipped region.
        if tag not in _SKIP:
            self._open(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            if tag not in _VOID and self._skip_depth:
                self._skip_depth -= 1
            return
        if tag in _PARA:
            self.parts.append("\n\n")
        elif tag in _CELL:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self.parts.append(data)

    # CDATA sections (``<![CDATA[...]]>`` inside HTML) arrive here as "CDATA[..."
    def unknown_decl(self, data: str) -> None:
        if data.startswith("CDATA[") and not self._skip_depth:
            self.parts.append(data[6:])


def _unwrap_cdata(markup: str) -> str:
    """Each ``<![CDATA[…]]>`` section replaced by its content as escaped text: one linear
    scan (a pattern would rescan the rest of the text from every opener that has no
    closer, and a hostile feed can repeat openers at will)."""
    out: list[str] = []
    pos = 0
    while True:
        start = markup.find("<![CDATA[", pos)
        if start < 0:
            break
        end = markup.find("]]>", start + 9)
        if end < 0:
            break  # no closer after this opener: none after a later one either
        out.append(markup[pos:start])
        out.append(html.escape(markup[start + 9 : end], quote=False))
        pos = end + 3
    if not out:
        return markup
    out.append(markup[pos:])
    return "".join(out)


def _sanitize(markup: str) -> str:
    """feedparser's HTML sanitiser: drops script/applet/style with their content and any
    element outside its allow-list, keeping the text; comments and declarations go.
    A CDATA section is literal text: it is kept as such (escaped), not as markup."""
    if "<![CDATA[" in markup:
        markup = _unwrap_cdata(markup)
    try:
        return str(_sanitize_html(markup, "utf-8", "text/html"))
    except Exception:  # never let odd input escape; the walk below is lenient
        return markup


_WS = "[ \t\n\r\f]"
# An attribute as html.parser reads it, restricted to values without "<" or ">" (so a
# matched tag never contains another tag, and the passes below cannot overlap).
_ATTR = (
    f"{_WS}+[a-zA-Z_:@][-a-zA-Z0-9_:.@]*"
    f"(?:{_WS}*={_WS}*(?:\"[^\"<>]*\"|'[^'<>]*'|[^ \t\n\r\f\"'=<>`]+))?"
)
_END = f"(?=[ \t\n\r\f/>])(?:{_ATTR})*{_WS}*/?>"  # after a start tag's name


def _names(names: frozenset[str]) -> str:
    return "|".join(sorted(names, key=lambda n: (-len(n), n)))


# html.parser ends a comment at r"--\s*>" (Unicode whitespace); spelled out, so that the
# same comment syntax holds inside the ASCII-flagged token pattern below.
_UNICODE_WS = "".join(c for c in map(chr, range(0x3001)) if c.isspace())
_COMMENT = f"<!--.*?--[{re.escape(_UNICODE_WS)}]*>"
_FAST_COMMENT = re.compile(_COMMENT, re.S)
# Paragraph elements: start, end and self-closing tags all give a paragraph break.
_FAST_PARA = re.compile(
    f"<(?:{_names(_PARA - _SKIP)}){_END}|</(?:{_names(_PARA - _SKIP)}){_WS}*>", re.I | re.A
)
# Line elements: the start (or self-closing) tag gives a line break; the end tag nothing.
_FAST_LINE = re.compile(f"<(?:{_names(_LINE - _SKIP)}){_END}", re.I | re.A)
_FAST_CELL = re.compile(
    f"<(?:{_names(_CELL)}){_END}|</(?:{_names(_CELL)}){_WS}*>", re.I | re.A
)
# Every other tag, except the skipped elements (their content needs the real walk).
_FAST_OTHER = re.compile(
    f"<(?!(?:{_names(_SKIP)})[ \t\n\r\f/>])[a-zA-Z][-.a-zA-Z0-9:_]*{_END}"
    f"|</(?!(?:{_names(_SKIP)})[ \t\n\r\f>])[a-zA-Z][-.a-zA-Z0-9:_]*{_WS}*>",
    re.I | re.A,
)

# Validation: comments, then any plain start/end tag except the skipped elements.
_UNCLOSED = re.compile(r"<[^>]*(?:<|\Z)")  # a "<" whose span holds another "<", or never ends
_FAST_TOKEN = re.compile(f"{_COMMENT}|{_FAST_OTHER.pattern}", re.I | re.A | re.S)


def _extract(markup: str) -> str:
    """The text of ``markup``, by regex passes when it is plain tags, else by html.parser."""
    # Each "<" must start a span "<…>" without another "<" (or be a comment): then every
    # tag a pass below matches is one of those spans, intact — the passes replace whole
    # spans by text without "<"/">", so none can make up a tag by joining pieces. A span
    # no pass recognises leaves its "<" behind, and the html.parser walk takes over.
    if "<!--" in markup:
        if "<" in _FAST_TOKEN.sub("", markup):
            return _extract_slow(markup)
        text = _FAST_COMMENT.sub("", markup)
    elif _UNCLOSED.search(markup):
        return _extract_slow(markup)
    else:
        text = markup
    text = _FAST_PARA.sub("\n\n", text)
    text = _FAST_LINE.sub("\n", text)
    text = _FAST_CELL.sub(" ", text)
    text = _FAST_OTHER.sub("", text)
    if "<" in text:
        return _extract_slow(markup)
    # Every "&" starts a complete ";"-terminated reference inside one text run (see
    # _protect_amps), so decoding after the tags are gone equals decoding run by run.
    return html.unescape(text) if "&" in text else text


def _extract_slow(markup: str) -> str:
    """The ``html.parser`` walk, over markup first sanitised the way feedparser does it
    (feedparser's own sanitiser is off at parse time: it costs a fifth of the parse, and
    the fast path above takes plain markup, where it changes no text)."""
    markup = _sanitize(markup)
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # html.parser is lenient, but never let odd input escape
        return re.sub(r"<[^>]*>", " ", markup)
    return "".join(parser.parts)


def clean_text(text: str, *, single_line: bool = False) -> str:
    """Normalise plain text: NFC, no control characters, collapsed whitespace.

    ``single_line`` folds every line break into a space (titles); otherwise paragraphs
    are kept, separated by one blank line at most.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub("", text)  # (tabs are whitespace below, as they were spaces)
    if single_line:
        return " ".join(text.split())
    # Each line's whitespace collapsed (str.split() and re's \s agree on what whitespace
    # is); lines joined by one line break, by a blank line where blank lines came between.
    text = "\n".join([" ".join(line.split()) for line in text.split("\n")])
    return _BLANK_LINES.sub("\n\n", text).strip("\n") if "\n\n\n" in text else text.strip("\n")


def _protect_amps(markup: str) -> str:
    """Escape every ``&`` that does not start a ``;``-terminated character reference.

    HTML5 decodes some legacy names without the ``;`` ("this&nothing" → "this¬hing",
    "Banks&regulators" → "Banks®ulators"); in feed text those are always plain ampersands.
    """
    return _BARE_AMP.sub("&amp;", markup) if "&" in markup else markup


def html_to_text(markup: str, *, single_line: bool = False, plain: bool = False) -> str:
    """The visible text of an HTML fragment.

    ``plain=True`` says the source declared it plain text (feedparser's
    ``text/plain``): only character references are decoded, unless it evidently
    carries markup anyway (then it is treated as HTML).

    >>> html_to_text("<p>Tom &amp; Jerry&#8217;s <b>show</b></p><script>x()</script>")
    'Tom & Jerry’s show'
    """
    if not markup:
        return ""
    if "<" not in markup and "&" not in markup:
        return clean_text(markup, single_line=single_line)
    if plain and not _TAG.search(markup):
        text = _ENTITY.sub(_unescape_match, markup)
    else:
        text = _extract(_protect_amps(markup))
    if ("&" in text or "<" in text) and _ESCAPED.search(text):  # double-escaped: &amp;amp; or &lt;p&gt;
        text = _extract(_protect_amps(text))
    return clean_text(text, single_line=single_line)


def _unescape_match(m: re.Match[str]) -> str:
    return html.unescape(m.group(0))


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters, at a word boundary, with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 0)]
    space = cut.rfind(" ", max(len(cut) - 200, 0))
    if space > 0:
        cut = cut[:space]
    return cut.rstrip() + "…"
