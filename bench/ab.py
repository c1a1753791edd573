"""Relay speed of this checkout against another one (an earlier revision), runs interleaved.

    git worktree add /tmp/outbox-base <revision> && make -C /tmp/outbox-base setup
    python -m bench.ab --base /tmp/outbox-base [--runs 3] [--emit-repeats 1]

Runs ``bench.relay`` (drain, latency and emit cost; no long-transaction runs) alternately in
the other checkout and in this one, each with its own virtualenv (``.venv``), ``--runs`` times
each, other first. Writes bench/results/relay_ab.json: every run's figures and, per figure, the
median and the range of each side. The check per figure: this checkout's median is no worse
than the worst run of the other, i.e. any difference is within the noise of its runs. Both
checkouts' bench/results/relay.json are left as they were.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import check, write_result

HERE = Path(__file__).resolve().parents[1]

#: (name, path in relay.json, better when higher)
FIGURES = (
    ("drain_events_per_s", ("drain", "events_per_s"), True),
    ("latency_p50_ms", ("latency", "entry_id_ms", "p50"), False),
    ("latency_p99_ms", ("latency", "entry_id_ms", "p99"), False),
    ("emit_ratio", ("emit", "ratio"), True),
)


def run(checkout: Path, extra: list[str]) -> dict[str, Any]:
    """One bench.relay run in ``checkout``; its figures."""
    results = checkout / "bench" / "results" / "relay.json"
    kept = results.read_text() if results.exists() else None
    try:
        subprocess.run(
            [str(checkout / ".venv" / "bin" / "python"), "-m", "bench.relay", *extra],
            cwd=checkout,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        measured = json.loads(results.read_text())
    finally:
        if kept is not None:
            results.write_text(kept)
    figures: dict[str, Any] = {"code": measured["code"]}
    for name, path, _ in FIGURES:
        value: Any = measured
        for key in path:
            value = value[key]
        figures[name] = value
    return figures


def main(args: argparse.Namespace) -> None:
    base = Path(args.base).resolve()
    extra = ["--foreign-seconds", "0", "--emit-repeats", str(args.emit_repeats)]
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "this": []}
    for n in range(args.runs):
        for side, checkout in (("base", base), ("this", HERE)):
            figures = run(checkout, extra)
            runs[side].append(figures)
            print(f"run {n + 1} {side}: {figures}", file=sys.stderr)
    summary: dict[str, Any] = {}
    checks = []
    for name, _, higher_better in FIGURES:
        sides = {side: [r[name] for r in runs[side]] for side in runs}
        summary[name] = {
            side: {"median": statistics.median(v), "min": min(v), "max": max(v)}
            for side, v in sides.items()
        }
        worst_base = min(sides["base"]) if higher_better else max(sides["base"])
        checks.append(
            check(
                f"{name}: median of this checkout vs the worst of {base.name}'s runs "
                f"({worst_base})",
                statistics.median(sides["this"]),
                ">=" if higher_better else "<=",
                worst_base,
            )
        )
    write_result(
        "relay_ab",
        {"base": str(base), "runs": runs, "summary": summary, "arguments": extra},
        checks,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the other checkout (with its .venv)")
    parser.add_argument("--runs", type=int, default=3, help="runs per side")
    parser.add_argument(
        "--emit-repeats", type=int, default=1, help="emit-ratio pairs per run (their median)"
    )
    main(parser.parse_args())
