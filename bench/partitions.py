"""How fast do partitioned consumers apply events, against a consumer group?

The same ``--events`` user events (the ``user_directory`` example projection: inbox row and
upsert per event) are drained from a backlog twice, in one process: from the service's one
stream by ``PROCESSOR_WORKERS=2`` group consumers (per-aggregate order not kept), and from
``--partitions`` partitions, each owned by the process's member and applied by its own task in
order (decision 0014). Each run gets a fresh database and key prefix; the partitioned backlog
is written straight to the partition streams (the relay's routing is not what is measured). The
clock starts when the consumers register and stops when every event is in the inbox (polled
every 20 ms). Issue 21 (point 5) asks for the comparison, with no goal.

    python -m bench.partitions [--events 100000] [--partitions 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
import zlib
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench.common import check, scratch_database, write_result
from bench.projections import _events
from outbox.cli.heap import settle_for_batches
from outbox.partitioning import Partition
from outbox.projections.examples import user_directory
from outbox.projections.runner import run_projections
from outbox.settings import get_settings
from outbox.streams.codec import encode_event
from outbox.streams.keys import Keys


async def _fill(redis: aioredis.Redis, keys: Keys, count: int, partitions: int) -> None:
    events = _events(count)
    for start in range(0, len(events), 2000):
        async with redis.pipeline(transaction=False) as pipe:
            for event in events[start : start + 2000]:
                fields: dict[Any, Any] = encode_event(event, max_retries=3)
                if partitions:
                    index = zlib.crc32((event.aggregate_id or "").encode()) % partitions
                    stream = keys.stream("identity", partition=Partition(1, index))
                else:
                    stream = keys.stream("identity")
                pipe.xadd(stream, fields)
            await pipe.execute()


async def _drain(count: int, partitions: int) -> dict[str, float]:
    async with scratch_database("partitions") as url:
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        os.environ.update(
            DATABASE_URL=url, STREAM_PREFIX=prefix, PROCESSOR_WORKERS="2", PARTITION_LEASE_S="4"
        )
        get_settings.cache_clear()
        settings = get_settings()
        keys = Keys.for_settings(settings)
        redis = aioredis.Redis.from_url(settings.redis_streams_url.get_secret_value())
        db = await asyncpg.connect(url)
        try:
            if partitions:
                await db.execute(
                    "INSERT INTO stream_partitions (stream, partitions, epoch, history)"
                    " VALUES ('identity', $1, 1, $2::jsonb)",
                    partitions,
                    json.dumps([{"epoch": 1, "partitions": partitions}]),
                )
            await _fill(redis, keys, count, partitions)
            settle_for_batches()
            stop = asyncio.Event()
            cpu_started = time.process_time()
            task = asyncio.create_task(run_projections([user_directory], settings, stop=stop))
            while await db.fetchval("SELECT count(*) FROM projection_inbox") < count:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            finished = time.time()
            cpu = time.process_time() - cpu_started
            stop.set()
            await task
            started = await db.fetchval(
                "SELECT extract(epoch FROM min(started_at)) FROM projection_consumers"
            )
            return {
                "events_per_s": round(count / (finished - float(started))),
                "cpu_us_per_event": round(cpu / count * 1e6, 1),
            }
        finally:
            await db.close()
            await redis.delete(*[k async for k in redis.scan_iter(match=f"{prefix}:*")])
            await redis.aclose()


async def main(args: argparse.Namespace) -> None:
    rounds: list[dict[str, Any]] = []
    for index in range(args.rounds):
        order = [0, args.partitions] if index % 2 == 0 else [args.partitions, 0]
        result: dict[str, Any] = {}
        for partitions in order:
            name = "partitioned" if partitions else "group"
            result[name] = await _drain(args.events, partitions)
        result["ratio"] = round(
            result["partitioned"]["events_per_s"] / result["group"]["events_per_s"], 3
        )
        rounds.append(result)
        print(
            f"round {index + 1}: group {result['group']['events_per_s']:,} ev/s, "
            f"{args.partitions} partitions {result['partitioned']['events_per_s']:,} ev/s",
            flush=True,
        )
    group = statistics.median(r["group"]["events_per_s"] for r in rounds)
    partitioned = statistics.median(r["partitioned"]["events_per_s"] for r in rounds)
    write_result(
        "partitions",
        {
            "events": args.events,
            "partitions": args.partitions,
            "rounds": rounds,
            "median_events_per_s": {"group": group, "partitioned": partitioned},
            "ratio_of_medians": round(partitioned / group, 3),
        },
        [
            check(
                f"partitioned ({args.partitions}) / group consumers, events/s (no goal)",
                round(partitioned / group, 3),
                ">=",
                0,
            )
        ],
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
