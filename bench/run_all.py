"""``make bench``: run every benchmark in turn and write a markdown summary.

Each benchmark writes bench/results/<name>.json; this collects them into bench/results/SUMMARY.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
# In the order they should run; a benchmark whose module is absent is skipped.
BENCHMARKS = ["emit", "relay", "projections", "monitor", "pipeline"]


def _summary_rows(name: str, result: dict[str, object]) -> list[str]:
    rows = []
    for key, value in result.items():
        if key in ("benchmark", "at", "machine"):
            continue
        rows.append(f"| {name} | {key} | `{json.dumps(value, default=str)[:300]}` |")
    return rows


def main() -> int:
    RESULTS.mkdir(exist_ok=True)
    failed = []
    lines = ["# Benchmark results", "", "| benchmark | figure | value |", "|---|---|---|"]
    for name in BENCHMARKS:
        if not (BENCH / f"{name}.py").exists():
            continue
        print(f"== bench/{name}.py", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}"], cwd=BENCH.parent)
        print(f"== bench/{name}.py exit {code} in {time.monotonic() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
            continue
        result = json.loads((RESULTS / f"{name}.json").read_text())
        lines.extend(_summary_rows(name, result))
    (RESULTS / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print(f"summary: {RESULTS / 'SUMMARY.md'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
