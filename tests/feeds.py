"""Build small RSS documents for tests, and the seed story as a feed item."""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

SEED_TITLE = (
    "Trump envoy Witkoff urged to take tough approach with Putin in make-or-break meeting "
    "to end Ukraine war before sanctions"
)
_SEED = Path(__file__).resolve().parents[2] / "shared" / "seeds" / "sanctions-deadline-article.txt"


def seed_text() -> str:
    """The seed article's body (the bundled demo copy when ../shared is absent)."""
    if _SEED.exists():
        lines = _SEED.read_text(encoding="utf-8").splitlines()[1:]
        return "\n".join(line for line in lines if line.strip())
    import json

    data = json.loads((Path(__file__).resolve().parents[1] / "monitor" / "demo_data" /
                       "feeds.json").read_text(encoding="utf-8"))
    item = data["feeds"]["world-wire"]["items"][0]
    return str(item["description"])


@dataclass(frozen=True)
class Item:
    title: str
    link: str
    guid: str | None = None
    description: str = ""
    published: datetime | None = None


def rss(items: list[Item], *, title: str = "Test feed", now: datetime | None = None) -> bytes:
    now = now or datetime.now(UTC)
    out = []
    for i, it in enumerate(items):
        pub = it.published or (now - timedelta(minutes=i))
        guid = f"<guid>{html.escape(it.guid)}</guid>" if it.guid else ""
        out.append(
            f"<item><title>{html.escape(it.title)}</title><link>{html.escape(it.link)}</link>"
            f"{guid}<pubDate>{format_datetime(pub, usegmt=True)}</pubDate>"
            f"<description>{html.escape(it.description)}</description></item>"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        f"<title>{html.escape(title)}</title><link>http://example.org/</link>"
        f"<description>test</description>{''.join(out)}</channel></rss>"
    ).encode()


def seed_item(link: str = "https://news.example.org/witkoff-putin-sanctions") -> Item:
    body = "".join(f"<p>{html.escape(p)}</p>" for p in seed_text().splitlines())
    return Item(title=SEED_TITLE, link=link, guid=link, description=body)


BACKLOG = [
    Item(title="US civil rights leader Jesse Jackson dies aged 84",
         link="https://www.bbc.co.uk/news/articles/c1", guid="https://www.bbc.co.uk/news/c1"),
    Item(title="Rescuers search for 10 missing skiers after California avalanche",
         link="https://www.bbc.co.uk/news/articles/c2", guid="https://www.bbc.co.uk/news/c2"),
    Item(title="Nine arrested in France over death of far-right student",
         link="https://www.bbc.co.uk/news/articles/c3", guid="https://www.bbc.co.uk/news/c3"),
]
UNRELATED = Item(
    title="Humanoid robots perform advanced martial arts at Chinese New Year gala",
    link="https://www.aljazeera.com/news/robots", guid="https://www.aljazeera.com/news/robots",
    description="Robots performed at the gala; no sanctions or deadlines were involved.",
)
