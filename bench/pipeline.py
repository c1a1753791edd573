"""The whole pipeline under load: emit → relay → Redis → projection, end to end.

16 connections emit as fast as they can for ``--seconds`` (one event per transaction, the
"bench" service) while ``outbox relay`` and ``outbox project`` run as their own processes, as
deployed. Reports the emit rate, end-to-end latency from the emitter's COMMIT returning to the
projection's transaction committing the event into its read model (a NOTIFY sent in that
transaction is delivered at its commit), p50/p99, and the backlog left at the end.

Where each end is stamped matters at this load (decision 0008, "Pipeline latency"):
- the notification is stamped by ``bench.pipeline_listener``, a process of its own: in this
  process's event loop it would wait behind the 16 emitters (about 0.8 ms at p50, measured);
- the commit is stamped when ``COMMIT`` returns to the emitter, which that same busy loop also
  delays: the latency is measured from the moment the application learns of its commit;
- ``from_commit_sent_latency_ms`` measures from just before the ``COMMIT`` was sent instead, an
  upper bound: it adds the COMMIT's own round trip.

The same emitters are first run with nothing else running, for the ratio. Goal (issue 6):
p50 <= 5 ms, p99 <= 25 ms, emit rate >= 90% of the baseline.

The latency is also split at the XADD, to show which half to work on: the relay's (commit → XADD)
and the projection's (XADD → projected). The XADD time is the entry id's millisecond (Redis's
clock, the same host's as the emitters'), taken as the middle of that millisecond, so each half is
good to about ±0.5 ms.

    python -m bench.pipeline [--seconds 20] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import asyncpg
import redis.asyncio as aioredis

from bench.common import (
    Entries,
    check,
    emit_flat_out,
    percentile,
    scratch_database,
    write_result,
    xadd_ms,
)
from outbox.settings import get_settings
from outbox.streams.keys import Keys

ROOT = Path(__file__).resolve().parents[1]


@contextlib.asynccontextmanager
async def pipeline(url: str, prefix: str) -> AsyncIterator[None]:
    """``outbox relay`` and ``outbox project`` (the probe projection) as separate processes."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "STREAM_PREFIX": prefix,
        "PROJECTION_MODULES": "bench.pipeline_probe",
        "RELAY_TRIM_INTERVAL_S": "0",
        "PROCESSOR_WORKERS": os.environ.get("PROCESSOR_WORKERS", "2"),
    }
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "outbox.cli.main",
            command,
            cwd=ROOT,
            env=env,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for command in ("relay", "project")
    ]
    try:
        yield
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            await asyncio.wait_for(process.wait(), 60)


@contextlib.asynccontextmanager
async def notifications(url: str, applied: dict[str, float]) -> AsyncIterator[None]:
    """Fill ``applied`` (event id → when its projection committed) from bench.pipeline_listener.

    The stamps are taken in the listener's own process: this one's event loop is busy with the
    emitters, and a notification waiting here would add that wait to the measured latency.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.pipeline_listener",
        url,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    stdin, stdout = process.stdin, process.stdout
    if stdin is None or stdout is None:
        raise RuntimeError("bench.pipeline_listener was started without pipes")
    if await asyncio.wait_for(stdout.readline(), 60) != b"ready\n":
        raise RuntimeError("bench.pipeline_listener did not start")

    async def read() -> None:
        async for line in stdout:
            stamp, _, payload = line.decode().rstrip("\n").partition(" ")
            at = float(stamp)
            for event_id in payload.split(","):
                applied.setdefault(event_id, at)

    reader = asyncio.create_task(read())
    try:
        yield
    finally:
        stdin.close()
        await asyncio.wait_for(process.wait(), 60)
        await reader


async def wait_ready(url: str, committed: dict[str, float], applied: dict[str, float]) -> None:
    """One event through the whole pipeline: relay and projection are up and connected."""
    deadline = time.monotonic() + 60
    warm: dict[str, float] = {}
    await emit_flat_out(url, 1, 0.05, committed=warm)
    while not set(warm) <= set(applied):
        if time.monotonic() > deadline:
            raise TimeoutError("the pipeline did not start within 60 s")
        await asyncio.sleep(0.05)
    committed.clear()


async def xadd_times(redis: aioredis.Redis, stream: str) -> dict[str, float]:
    """When the relay added each event to ``stream``: the middle of its entry id's millisecond."""
    added: dict[str, float] = {}
    start = "-"
    while True:
        entries = cast(Entries, await redis.xrange(stream, min=start, count=10_000))
        for entry_id, fields in entries:
            added[fields[b"event_id"].decode()] = xadd_ms(entry_id.decode()) / 1000
        if len(entries) < 10_000:
            return added
        start = "(" + entries[-1][0].decode()


def split_at_xadd(
    committed: dict[str, float], added: dict[str, float], applied: dict[str, float]
) -> dict[str, dict[str, float]]:
    """p50/p99 of commit → XADD and XADD → projected over the events that went all the way."""
    through = [e for e in committed if e in added and e in applied]
    if not through:
        return {}
    relay = [(added[e] - committed[e]) * 1000 for e in through]
    projection = [(applied[e] - added[e]) * 1000 for e in through]
    return {
        name: {"p50": percentile(values, 0.50), "p99": percentile(values, 0.99)}
        for name, values in (("commit_to_xadd", relay), ("xadd_to_projected", projection))
    }


async def main(seconds: float, connections: int) -> None:
    settings = get_settings()
    prefix = f"pipe{uuid.uuid4().hex[:6]}"
    redis = aioredis.Redis.from_url(settings.redis_streams_url.get_secret_value())
    async with scratch_database("pipeline") as url:
        setup = await asyncpg.connect(url)
        await setup.execute("CREATE TABLE bench_probe (key text PRIMARY KEY, version bigint)")

        # The baseline stamps its events as the measured run does, so that both runs cost the
        # emitting process the same.
        baseline = await emit_flat_out(url, connections, seconds, committed={}, sent={})
        await setup.execute("TRUNCATE outbox_events")

        applied: dict[str, float] = {}
        committed: dict[str, float] = {}
        sent: dict[str, float] = {}
        async with notifications(url, applied), pipeline(url, prefix):
            await wait_ready(url, committed, applied)
            rate = await emit_flat_out(url, connections, seconds, committed=committed, sent=sent)
            end = time.time()
            # Backlog the moment the emitters stop: not yet projected.
            backlog_at_end = sum(1 for e in committed if e not in applied)
            drain_deadline = time.monotonic() + 120
            while set(committed) - set(applied) and time.monotonic() < drain_deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            drained_s = time.time() - end
        unpublished = await setup.fetchval(
            "SELECT count(*) FROM outbox_events e LEFT JOIN relay_cursors c USING (stream)"
            " WHERE c.stream IS NULL OR (e.txid, e.position) > (c.txid, c.position)"
        )
        await setup.close()
    added = await xadd_times(redis, Keys(prefix).stream("bench"))
    keys = [k async for k in redis.scan_iter(match=f"*{prefix}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()

    latencies = [(applied[e] - t) * 1000 for e, t in committed.items() if e in applied]
    from_sent = [(applied[e] - t) * 1000 for e, t in sent.items() if e in applied]
    write_result(
        "pipeline",
        {
            "seconds": seconds,
            "connections": connections,
            "events": len(committed),
            "emit_rate_alone_per_s": round(baseline),
            "emit_rate_with_pipeline_per_s": round(rate),
            "emit_rate_ratio": round(rate / baseline, 3),
            "end_to_end_latency_ms": {
                "p50": percentile(latencies, 0.50),
                "p90": percentile(latencies, 0.90),
                "p99": percentile(latencies, 0.99),
                "max": round(max(latencies), 2),
                "mean": round(statistics.mean(latencies), 2),
            },
            "from_commit_sent_latency_ms": {
                "p50": percentile(from_sent, 0.50),
                "p99": percentile(from_sent, 0.99),
            },
            "latency_split_at_xadd_ms": split_at_xadd(committed, added, applied),
            "backlog_when_emitters_stopped": backlog_at_end,
            "drained_after_s": round(drained_s, 2),
            "never_projected": len(committed) - len(latencies),
            "unpublished_at_end": unpublished,
        },
        [
            check(
                f"emit rate with relay and projections / alone ({round(rate)} / "
                f"{round(baseline)} tx/s)",
                round(rate / baseline, 3),
                ">=",
                0.9,
            ),
            *(
                check(
                    f"commit returned → projected, {name} (from the COMMIT sent: "
                    f"{percentile(from_sent, q)} ms)",
                    percentile(latencies, q),
                    "<=",
                    goal,
                    " ms",
                )
                for name, q, goal in (("p50", 0.50, 5), ("p99", 0.99, 25))
            ),
            check("events never projected", len(committed) - len(latencies), "<=", 0),
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.connections))
