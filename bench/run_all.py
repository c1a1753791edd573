"""``make bench``: run every benchmark in turn and write a markdown summary.

Each benchmark writes bench/results/<name>.json; this collects them into bench/results/SUMMARY.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
# In the order they should run; a benchmark whose module is absent is skipped.
BENCHMARKS = ["emit", "emit_floor", "relay", "projections", "monitor", "pipeline"]


def _summary_rows(name: str, result: dict[str, Any]) -> list[str]:
    rows = []
    for item in result.get("checks", []):
        met = "yes" if item["met"] else "**no**"
        rows.append(
            f"| {name} | {item['measure']} | {item['value']:g}{item['unit']} | {item['goal']} "
            f"| {met} |"
        )
    return rows


def _host_line(result: dict[str, Any]) -> str:
    machine = result.get("machine", {})
    cal = machine.get("calibration", {})
    code = result.get("code", {})
    revision = (
        f" (code {code['commit'][:10]}{', modified' if code.get('modified') else ''})"
        if code.get("commit")
        else ""
    )
    if not cal:
        return f"- {result['benchmark']}: {result.get('at', '?')}{revision}"
    return (
        f"- {result['benchmark']} at {result.get('at', '?')}{revision}: "
        f"`sum(range(1000))` {cal['python_sum_range_1000_us']} µs, "
        f"PostgreSQL `SELECT 1` {cal['postgres_select_1']['wall_us_p50']} µs "
        f"({cal['postgres_select_1']['client_cpu_us']} µs client CPU), "
        f"Redis `PING` {cal['redis_ping']['wall_us_p50']} µs"
    )


def write_summary(names: list[str]) -> None:
    """bench/results/SUMMARY.md from the results of ``names`` that exist."""
    rows: list[str] = []
    hosts: list[str] = []
    for name in names:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        rows.extend(_summary_rows(name, result))
        hosts.append(_host_line(result))
    lines = [
        "# Benchmark results",
        "",
        "The issues' goals beside what `make bench` measured; every figure is in",
        "`bench/results/<name>.json`, and docs/benchmarks.md explains them.",
        "",
        "| benchmark | measure | measured | goal | met |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "How fast the host was (hosted VMs vary by 2x from day to day; compare figures across",
        "runs only with these beside them):",
        "",
        *hosts,
    ]
    (RESULTS / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print(f"summary: {RESULTS / 'SUMMARY.md'}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="rewrite SUMMARY.md from the results already in bench/results, run nothing",
    )
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    names = [name for name in BENCHMARKS if (BENCH / f"{name}.py").exists()]
    if args.summary_only:
        write_summary(names)
        return 0
    failed = []
    for name in names:
        print(f"== bench/{name}.py", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}"], cwd=BENCH.parent)
        print(f"== bench/{name}.py exit {code} in {time.monotonic() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    write_summary([name for name in names if name not in failed])
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
