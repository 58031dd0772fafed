"""Regenerate monitor/demo_data/feeds.json from the shared 2026-02-17 news snapshot.

    python tools/make_demo_data.py ../shared/corpora/real-feeds/news-snapshot-2026-02-17

Items keep their real title, link, guid and description; their times become "minutes
ago" so the demo serves fresh-looking feeds whenever it runs. Round 2 adds the seed
story (../shared/seeds/sanctions-deadline-article.txt) to two feeds under different
headlines, as wire stories appear.
"""

from __future__ import annotations

import calendar
import json
import sys
from pathlib import Path

import feedparser

FEEDS = {
    "world-wire": ("bbc-news-top.xml", "BBC News - World (sample)"),
    "global-desk": ("aljazeera-all.xml", "Al Jazeera (sample)"),
    "americas-desk": ("cbsnews-world.xml", "CBS News - World (sample)"),
}
ROUND1 = 8
ROUND2 = 3


def main(snapshot: Path, seed: Path, out: Path) -> None:
    data: dict[str, object] = {"feeds": {}}
    feeds: dict[str, object] = {}
    for name, (fname, title) in FEEDS.items():
        d = feedparser.parse((snapshot / fname).read_bytes())
        entries = [e for e in d.entries if e.get("published_parsed")][: ROUND1 + ROUND2]
        newest = max(calendar.timegm(e.published_parsed) for e in entries)
        items = []
        for i, e in enumerate(entries):
            age = (newest - calendar.timegm(e.published_parsed)) // 60
            items.append(
                {
                    "round": 2 if i < ROUND2 else 1,
                    "title": e.title,
                    "link": e.link,
                    "guid": e.get("id") or e.link,
                    "description": e.get("summary", ""),
                    # round-2 items are "just published"
                    "minutes_ago": int(age) + (0 if i < ROUND2 else 30),
                }
            )
        feeds[name] = {"title": title, "source": f"real-feeds/news-snapshot-2026-02-17/{fname}",
                       "items": items}
    lines = seed.read_text(encoding="utf-8").splitlines()
    headline = lines[0].strip()
    body = [p.strip() for p in lines[1:] if p.strip()][3:-5]  # drop byline and page chrome
    html = "".join(f"<p>{p}</p>" for p in body)
    feeds["world-wire"]["items"].insert(0, {  # type: ignore[index]
        "round": 2,
        "title": headline,
        "link": "https://example.org/world/2026/witkoff-putin-sanctions-deadline?utm_source=rss",
        "guid": "https://example.org/world/2026/witkoff-putin-sanctions-deadline",
        "description": html,
        "minutes_ago": 2,
    })
    feeds["americas-desk"]["items"].insert(0, {  # type: ignore[index]
        "round": 2,
        "title": "Witkoff urged to take tough approach with Putin in make-or-break meeting "
        "before sanctions - Reuters",
        "link": "https://wire.example.net/witkoff-putin-meeting-sanctions",
        "guid": "wire-2026-0806-witkoff",
        "description": "<p>" + " ".join(body[:3]) + "</p>",
        "minutes_ago": 1,
    })
    feeds["global-desk"]["items"].insert(0, {  # type: ignore[index]
        "round": 3,
        "title": "Trump envoy Witkoff urged to take tougher approach with Putin in "
        "make-or-break meeting before sanctions | Al Jazeera",
        "link": "https://syndication.example.com/2026/witkoff-putin-meeting",
        "guid": "synd-witkoff-putin",
        "description": "<p>" + body[0] + "</p>",
        "minutes_ago": 0,
    })
    data["feeds"] = feeds
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    snap = Path(sys.argv[1] if len(sys.argv) > 1 else
                "../shared/corpora/real-feeds/news-snapshot-2026-02-17")
    main(snap, snap.parents[2] / "seeds" / "sanctions-deadline-article.txt",
         Path(__file__).resolve().parents[1] / "monitor" / "demo_data" / "feeds.json")
