"""`make bench`: run every ``benchmarks/bench_*.py`` and print one table, each figure beside its baseline.

Each benchmark module defines ``run(ctx: benchmarks.common.Context) -> list[Row]``. Figures are medians or
percentiles of repeated runs on this (shared, noisy) machine; they are reported, never asserted by tests.
Usage: ``python scripts/bench.py [NAME ...]`` runs only the modules whose name contains one of NAME. A module that
fails is reported (its traceback on stderr) and the others still run: the table shows what was measured, and the
exit status is 1.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import Context, print_table  # noqa: E402


def main(argv: list[str]) -> int:
    names = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
    if argv:
        names = [n for n in names if any(a in n for a in argv)]
    rows, failed = [], []
    with Context() as ctx:
        for name in names:
            module = importlib.import_module(f"benchmarks.{name}")
            print(f"running {name} ...", file=sys.stderr, flush=True)
            try:
                rows.extend(module.run(ctx))
            except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
                traceback.print_exc()
                failed.append(name)
    print_table(rows)
    if failed:
        print(f"FAILED (no rows): {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
