"""``make bench``: run every bench/bench_*.py module's ``run()`` and print one JSON document.

    python -m bench              # all benchmarks
    python -m bench dedup rules  # only those whose module name contains a word given

Each module runs in a fresh interpreter, so that one benchmark's memory peak, heap and
imports do not show up in the next one's figures.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def run_one(name: str) -> object:
    mod = importlib.import_module(f"bench.{name}")
    return mod.run()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one"]:  # the child: one module, its JSON on stdout
        print(json.dumps(run_one(argv[1]), ensure_ascii=False))
        return 0
    names = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    if argv:
        names = [n for n in names if any(a in n for a in argv)]
    results: dict[str, object] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    root = Path(__file__).resolve().parents[1]
    for name in names:
        t0 = time.perf_counter()
        print(f"# running {name} ...", file=sys.stderr, flush=True)
        child = subprocess.run([sys.executable, "-m", "bench", "--one", name], cwd=root,
                               stdout=subprocess.PIPE, text=True, check=False)
        if child.returncode != 0:
            print(f"# {name} failed (exit {child.returncode})", file=sys.stderr, flush=True)
            results[name.removeprefix("bench_")] = {"failed": f"exit {child.returncode}"}
            continue
        results[name.removeprefix("bench_")] = json.loads(child.stdout)
        print(f"# {name} took {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2, ensure_ascii=False))
    return 1 if any(isinstance(v, dict) and "failed" in v for v in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
