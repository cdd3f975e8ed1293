"""`make bench`: run every ``benchmarks/bench_*.py`` and print one table, each figure beside its baseline.

Each benchmark module defines ``run(ctx: benchmarks.common.Context) -> list[Row]``. Figures are medians or
percentiles of repeated runs on this (shared, noisy) machine; they are reported, never asserted by tests.
Usage: ``python scripts/bench.py [NAME ...]`` runs only the modules whose name contains one of NAME.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import Context, print_table  # noqa: E402


def main(argv: list[str]) -> int:
    names = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
    if argv:
        names = [n for n in names if any(a in n for a in argv)]
    rows = []
    with Context() as ctx:
        for name in names:
            module = importlib.import_module(f"benchmarks.{name}")
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows.extend(module.run(ctx))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
