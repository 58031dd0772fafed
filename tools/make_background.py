"""Regenerate ``monitor/core/dedup/background.py``: the frozen background word table.

    pip install wordfreq            # only for this script; monitor does not depend on it
    python tools/make_background.py > monitor/core/dedup/background.py

The story index blends the IDF it counts over its window with a fixed background table,
so that the first headlines of a story do not make its own key word look common (see
``monitor/core/dedup/index.py``). The table is English word frequencies from ``wordfreq``
(Robyn Speer et al., data CC BY-SA 4.0, built from Wikipedia, subtitles, news, books, web
text and social media up to 2021): far larger and broader than any headline set we
could ship, and news-heavy enough for names of the day's actors. Words are put through
the index's own normalisation and stemming, and frequencies of words that share a stem
are added. Words rarer than Zipf 3.0 (one in a million words) are left out: at the
background size the index uses, their document frequency rounds to nothing.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict

from wordfreq import get_frequency_dict  # type: ignore[import-not-found]

from monitor.core.dedup.features import normalize_title, title_tokens

MIN_ZIPF = 3.0


def main() -> int:
    freq: dict[str, float] = defaultdict(float)
    for word, f in get_frequency_dict("en").items():
        toks = title_tokens(normalize_title(word))
        if len(toks) == 1:
            freq[toks[0]] += f
    buckets: dict[int, list[str]] = defaultdict(list)
    for tok, f in freq.items():
        z = round((math.log10(f) + 9) * 10)
        if z >= MIN_ZIPF * 10:
            buckets[z].append(tok)
    out = sys.stdout
    out.write('"""Background word frequencies for the story index (generated, do not edit).\n\n')
    out.write("Made by ``tools/make_background.py`` from wordfreq's English list (data CC BY-SA\n")
    out.write("4.0, Robyn Speer et al.); see that script for how and why. ``ZIPF[token]`` is the\n")
    out.write("Zipf frequency (log10 of occurrences per billion words) of a normalised, stemmed\n")
    out.write(f'token, for tokens of Zipf {MIN_ZIPF} and more.\n"""\n\n')
    out.write("from __future__ import annotations\n\n")
    out.write("_BUCKETS: dict[int, str] = {\n")
    for z in sorted(buckets, reverse=True):
        words = " ".join(sorted(buckets[z]))
        out.write(f"    {z}: (\n")
        line = ""
        for w in words.split(" "):
            if len(line) + len(w) + 1 > 80:
                out.write(f'        "{line} "\n')
                line = ""
            line = f"{line} {w}" if line else w
        out.write(f'        "{line}"\n    ),\n')
    out.write("}\n\n")
    out.write("ZIPF: dict[str, float] = {\n")
    out.write("    w: z / 10.0 for z, words in _BUCKETS.items() for w in words.split()\n}\n")
    out.write(f"MIN_ZIPF = {MIN_ZIPF}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
