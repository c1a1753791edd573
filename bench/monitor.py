"""Cost of one monitor snapshot with 50 streams x 4 consumer groups.

Fills a scratch database and a private Redis key prefix with 50 services (events in the outbox,
entries on their streams, 4 groups each with some delivered-but-pending entries and some lag),
then times ``Collector.collect()``: wall time and the monitor's own CPU time per snapshot, and
counts the Redis round trips (packed sends on the connection) and PostgreSQL queries of each.
Goal (issue 5): <= 50 ms of monitor time, a fixed number of pipelined Redis round trips, no SCAN.

    python -m bench.monitor [--services 50] [--groups 4] [--snapshots 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

import outbox
from bench.common import check, percentile, scratch_database, write_result
from outbox.cli.heap import freeze_startup_heap
from outbox.monitor.collector import Collector
from outbox.settings import get_settings
from outbox.streams.codec import encode_event
from outbox.streams.keys import Keys


class CountingConnection(Connection):
    """A real Redis connection that counts what it sends: one packed send is one round trip."""

    sends = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        await super().send_packed_command(command, check_health)


async def command_counts(client: aioredis.Redis) -> dict[str, int]:
    """Calls per command so far, as the Redis server counts them (INFO commandstats)."""
    stats: dict[str, Any] = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


async def fill(
    conn: asyncpg.Connection,
    r: aioredis.Redis,
    keys: Keys,
    services: int,
    groups: int,
    per_stream: int,
) -> None:
    for s in range(services):
        service = f"svc{s:02d}"
        async with conn.transaction():
            events = await outbox.emit_many(
                conn,
                [outbox.EventSpec(service, "thing_happened", {"n": i}) for i in range(per_stream)],
            )
        stream = keys.stream(service)
        pipe = r.pipeline(transaction=False)
        for event in events[: per_stream // 2]:  # half published, half still in the outbox
            fields: dict[Any, Any] = encode_event(event, max_retries=3)
            pipe.xadd(stream, fields)
        await pipe.execute()
        for g in range(groups):
            group = f"projection{g}"
            await r.xgroup_create(stream, group, "0")
            await r.xreadgroup(group, f"{group}-worker-0", {stream: ">"}, count=2 + g)
            await r.xreadgroup(group, f"{group}-worker-1", {stream: ">"}, count=1)


async def main(services: int, groups: int, snapshots: int, per_stream: int) -> None:
    base = get_settings()
    prefix = f"benchmon{uuid.uuid4().hex[:6]}"
    async with scratch_database("monitor") as url:
        settings = base.model_copy(update={"stream_prefix": prefix, "monitor_services": ""})
        r = aioredis.Redis.from_url(
            base.redis_streams_url.get_secret_value(),
            decode_responses=True,
            connection_class=CountingConnection,
        )
        pool = await asyncpg.create_pool(
            url, min_size=1, max_size=2, server_settings={"jit": "off"}
        )
        queries = 0

        def count_query(_: Any) -> None:
            nonlocal queries
            queries += 1

        try:
            async with pool.acquire() as conn:
                await fill(conn, r, Keys(prefix), services, groups, per_stream)
            async with pool.acquire() as conn:
                conn.add_query_logger(count_query)
            collector = Collector(settings, pool, r)
            await collector.collect()  # warm-up: connections, prepared statements
            freeze_startup_heap()  # as `outbox monitor` does once it has started
            walls, cpus, sends, pg_queries = [], [], [], []
            before = await command_counts(r)
            for _ in range(snapshots):
                CountingConnection.sends = 0
                queries = 0
                cpu, wall = time.process_time(), time.perf_counter()
                snapshot = await collector.collect()
                walls.append((time.perf_counter() - wall) * 1000)
                cpus.append((time.process_time() - cpu) * 1000)
                sends.append(CountingConnection.sends)
                pg_queries.append(queries)
            after = await command_counts(r)
            # Server-wide counts (the machine is otherwise quiet); the INFO of command_counts
            # itself is the one call that is not the monitor's.
            per_snapshot = {
                name: round((after[name] - before.get(name, 0)) / snapshots, 1)
                for name in after
                if after[name] > before.get(name, 0) and name != "info|commandstats"
            }
            assert not any(name.startswith("scan") for name in per_snapshot), per_snapshot
            groups_seen = sum(len(s["groups"]) for s in snapshot["streams"])
        finally:
            await pool.close()
            keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await r.delete(*keys)
            await r.aclose()

    write_result(
        "monitor",
        {
            "services": services,
            "groups_per_stream": groups,
            "groups_seen": groups_seen,
            "snapshots": snapshots,
            "snapshot_wall_ms": {
                "p50": percentile(walls, 0.5),
                "p95": percentile(walls, 0.95),
                "mean": round(statistics.mean(walls), 2),
            },
            "snapshot_monitor_cpu_ms": {
                "p50": percentile(cpus, 0.5),
                "p95": percentile(cpus, 0.95),
                "mean": round(statistics.mean(cpus), 2),
            },
            "redis_round_trips_per_snapshot": sorted(set(sends)),
            "postgres_queries_per_snapshot": sorted(set(pg_queries)),
            "redis_commands_per_snapshot": per_snapshot,
        },
        [
            check(
                f"monitor CPU per snapshot, p95 ({services} streams x {groups} groups)",
                percentile(cpus, 0.95),
                "<=",
                50,
                " ms",
            ),
            check("Redis round trips per snapshot (most seen)", max(sends), "<=", 2, ""),
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--snapshots", type=int, default=50)
    parser.add_argument("--per-stream", type=int, default=40)
    args = parser.parse_args()
    asyncio.run(main(args.services, args.groups, args.snapshots, args.per_stream))
