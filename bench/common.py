"""Shared plumbing of the benchmarks: a scratch database, JSON output, machine facts."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import timeit
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import redis

import outbox
from outbox.migrations import runner
from outbox.settings import get_settings
from outbox.streams.codec import entry_ms

# What XRANGE returns (redis-py types it loosely): [(id, fields)].
Entries = list[tuple[bytes, dict[bytes, bytes]]]
# What XREAD / XREADGROUP return: [(stream, entries)].
ReadReply = list[tuple[bytes, Entries]]

RESULTS = Path(__file__).resolve().parent / "results"


def _admin_url() -> str:
    return get_settings().libpq_url()


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@asynccontextmanager
async def scratch_database(prefix: str) -> AsyncIterator[str]:
    """A freshly migrated database, dropped afterwards; yields its libpq URL."""
    name = f"bench_{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(_with_database(_admin_url(), "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = _with_database(_admin_url(), name)
        migration_url = "postgresql+psycopg://" + url.split("://", 1)[1]
        await asyncio.to_thread(runner.upgrade, migration_url)
        await asyncio.to_thread(runner.upgrade_examples, migration_url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def machine() -> dict[str, Any]:
    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip()
        except OSError:
            return "unknown"

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "postgres": version(["psql", "--version"]),
        "redis": version(["redis-server", "--version"]),
    }


def code_revision() -> dict[str, Any]:
    """Which code a result came from: the commit, and whether files other than bench/results
    differed from it (a probe on a modified tree)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=RESULTS.parent.parent, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")
    except OSError:
        return {"commit": "unknown", "modified": None}
    return {"commit": commit or "unknown", "modified": bool(changed) if commit else None}


def _round_trip_us(call: Callable[[], object], times: int = 300) -> dict[str, float]:
    """Median wall and mean client CPU of one call, in µs."""
    for _ in range(20):
        call()
    walls = []
    cpu_start = time.process_time()
    for _ in range(times):
        start = time.perf_counter()
        call()
        walls.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu_start
    return {
        "wall_us_p50": round(statistics.median(walls) * 1e6, 1),
        "client_cpu_us": round(cpu / times * 1e6, 1),
    }


@cache
def calibration() -> dict[str, Any]:
    """How fast this host is right now, so figures from different hosts or days compare.

    Hosted VMs differ by 2x from day to day; the same code then gives half the events/s. These
    three figures scale with what the benchmarks spend their time on: Python bytecode, and
    round trips (system calls) to PostgreSQL and Redis.
    """
    loop_us = min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6
    settings = get_settings()
    with psycopg.connect(_with_database(_admin_url(), "postgres"), autocommit=True) as conn:
        pg = _round_trip_us(lambda: conn.execute("SELECT 1").fetchone())
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    client = redis.Redis.from_url(settings.redis_streams_url.get_secret_value(), password=password)
    try:
        rd = _round_trip_us(client.ping)
    finally:
        client.close()
    return {
        "python_sum_range_1000_us": round(loop_us, 2),
        "postgres_select_1": pg,
        "redis_ping": rd,
    }


def process_cpu_s(*names: str) -> dict[str, float]:
    """CPU seconds so far of every process whose name starts with one of ``names``, from /proc.

    Children that have exited and been reaped count too (``cutime``/``cstime``: PostgreSQL's
    postmaster reaps its backends), so a difference of two readings covers connections opened
    and closed in between. Linux only; empty elsewhere.
    """
    totals = dict.fromkeys(names, 0.0)
    tick = os.sysconf("SC_CLK_TCK")
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        for name in names:
            if comm.startswith(name):
                totals[name] += sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick
    return totals


def xadd_ms(entry_id: str) -> float:
    """When Redis added an entry, in Unix milliseconds, from its id (``<ms>-<seq>``): the id
    holds the millisecond truncated, so the middle of it, good to ±0.5 ms."""
    return entry_ms(entry_id) + 0.5


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank, rounded to 2 decimals."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def check(measure: str, value: float, goal: str, target: float, unit: str = "") -> dict[str, Any]:
    """One goal of an issue, as measured: ``goal`` is ``">="`` or ``"<="``."""
    met = value >= target if goal == ">=" else value <= target
    return {
        "measure": measure,
        "value": value,
        "goal": f"{goal} {target:g}{unit}",
        "unit": unit,
        "met": met,
    }


def write_result(name: str, result: dict[str, Any], checks: list[dict[str, Any]]) -> None:
    """Print the result as JSON and keep a copy in bench/results/<name>.json.

    ``checks`` (from :func:`check`) are the issue's goals beside what was measured; ``make bench``
    collects them into bench/results/SUMMARY.md.
    """
    result = {
        "benchmark": name,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code": code_revision(),
        "machine": {**machine(), "calibration": calibration()},
        "checks": checks,
        **result,
    }
    text = json.dumps(result, indent=2, default=str)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(text + "\n")
    print(text)


async def emit_flat_out(
    url: str,
    connections: int,
    seconds: float,
    *,
    service: str = "bench",
    committed: dict[str, float] | None = None,
    sent: dict[str, float] | None = None,
) -> float:
    """Emit one event per transaction on each connection, as fast as it goes, for ``seconds``.

    Returns events/s. ``committed`` (if given) gets each event's time when its COMMIT returned,
    ``sent`` the time just before the COMMIT went out. A ratio compares two runs, so give both
    runs the same arguments: the stamps cost the emitting process CPU too.
    """
    conns = [await asyncpg.connect(url) for _ in range(connections)]
    counts = [0] * connections

    async def emitter(index: int, conn: asyncpg.Connection, deadline: float) -> None:
        n = 0
        while time.perf_counter() < deadline:
            async with conn.transaction():
                event = await outbox.emit(
                    conn,
                    service=service,
                    event_type="probe",
                    data={"key": f"{index}-{n % 100}", "n": n},
                )
                if sent is not None:
                    sent[str(event.event_id)] = time.time()
            if committed is not None:
                committed[str(event.event_id)] = time.time()
            n += 1
        counts[index] = n

    try:
        start = time.perf_counter()
        await asyncio.gather(*(emitter(i, c, start + seconds) for i, c in enumerate(conns)))
        return sum(counts) / (time.perf_counter() - start)
    finally:
        for conn in conns:
            await conn.close()
