"""``make bench``: run every bench/bench_*.py module's ``run()`` and print one JSON document.

    python -m bench              # all benchmarks
    python -m bench dedup rules  # only those whose module name contains a word given
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    names = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    if argv:
        names = [n for n in names if any(a in n for a in argv)]
    results: dict[str, object] = {
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for name in names:
        mod = importlib.import_module(f"bench.{name}")
        t0 = time.perf_counter()
        print(f"# running {name} ...", file=sys.stderr, flush=True)
        out = mod.run()
        results[name.removeprefix("bench_")] = out
        print(f"# {name} took {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
