"""How fast do projections apply events exactly once (inbox row + read-model upsert)?

Fills a stream with ``--events`` user events in the relay's entry format, then measures the
``user_directory`` example projection draining it: one worker, PROCESSOR_WORKERS=2 workers (one
process), and a naive consumer (one transaction and one XACK per event, over
``--naive-events``). Each run gets a fresh database and key prefix. Goal (issue 4): >= 40,000
events/s for one process and >= 10x the naive consumer.

    python -m bench.projections [--events 200000] [--naive-events 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench.common import scratch_database, write_result
from outbox.envelope import Event, MessagePriority, uuid7
from outbox.settings import get_settings
from projections.examples import user_directory
from projections.runner import run_projections
from streams.codec import decode_entry, encode_event
from streams.keys import Keys

UPSERT_ONE = """
INSERT INTO directory_users AS u (user_id, email, name, role, deleted, version, updated_at)
VALUES ($1, $2, $3, NULL, false, $4, now())
ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, name = EXCLUDED.name,
       version = EXCLUDED.version, updated_at = now()
 WHERE u.version < EXCLUDED.version
"""


def _events(count: int) -> list[Event]:
    now = datetime.now(UTC)
    return [
        Event(
            event_id=uuid7(),
            service="identity",
            event_type="user_created" if i % 4 == 0 else "user_updated",
            data={"user_id": f"u{i % 10_000}", "email": f"u{i}@example.com", "name": f"N{i}"},
            priority=MessagePriority.NORMAL,
            occurred_at=now,
            correlation_id="bench",
            source="identity",
            aggregate_id=f"u{i % 10_000}",
            position=i + 1,
        )
        for i in range(count)
    ]


async def _fill(redis: aioredis.Redis, keys: Keys, events: list[Event]) -> None:
    for start in range(0, len(events), 2000):
        async with redis.pipeline(transaction=False) as pipe:
            for event in events[start : start + 2000]:
                fields: dict[Any, Any] = encode_event(event, max_retries=3)
                pipe.xadd(keys.stream("identity"), fields)
            await pipe.execute()


async def _inbox(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM projection_inbox"))


async def _projection_rate(events: list[Event], workers: int) -> float:
    async with scratch_database("projections") as url:
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        os.environ.update(DATABASE_URL=url, STREAM_PREFIX=prefix, PROJECTION_BLOCK_MS="50")
        get_settings.cache_clear()
        settings = get_settings()
        keys = Keys(prefix)
        redis = aioredis.Redis.from_url(settings.redis_streams_url.get_secret_value())
        db = await asyncpg.connect(url)
        try:
            await _fill(redis, keys, events)
            stop = asyncio.Event()
            started = time.perf_counter()
            task = asyncio.create_task(
                run_projections([user_directory], settings, stop=stop, workers=workers)
            )
            while await _inbox(db) < len(events):  # noqa: ASYNC110 - polling the database
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
            stop.set()
            await task
            return len(events) / elapsed
        finally:
            await db.close()
            await redis.delete(*[k async for k in redis.scan_iter(match=f"{prefix}:*")])
            await redis.aclose()


async def _naive_rate(events: list[Event]) -> float:
    """One transaction (inbox + upsert) and one XACK per event."""
    async with scratch_database("naive") as url:
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        keys = Keys(prefix)
        stream = keys.stream("identity")
        redis = aioredis.Redis.from_url(get_settings().redis_streams_url.get_secret_value())
        db = await asyncpg.connect(url)
        try:
            await _fill(redis, keys, events)
            await redis.xgroup_create(stream, "naive", id="0")
            started = time.perf_counter()
            done = 0
            while done < len(events):
                response = await redis.xreadgroup("naive", "c", {stream: ">"}, count=10)
                for _, entries in response:
                    for entry_id, fields in entries:
                        message = decode_entry(stream, entry_id.decode(), fields)
                        async with db.transaction():
                            new = await db.fetchval(
                                "INSERT INTO projection_inbox (projection, event_id) "
                                "VALUES ('naive', $1) ON CONFLICT DO NOTHING RETURNING event_id",
                                message.event_id,
                            )
                            if new is not None:
                                await db.execute(
                                    UPSERT_ONE,
                                    message.data["user_id"],
                                    message.data["email"],
                                    message.data["name"],
                                    message.position,
                                )
                        await redis.xack(stream, "naive", entry_id)
                        done += 1
            return len(events) / (time.perf_counter() - started)
        finally:
            await db.close()
            await redis.delete(*[k async for k in redis.scan_iter(match=f"{prefix}:*")])
            await redis.aclose()


async def main(events: int, naive_events: int) -> None:
    batch = _events(events)
    one = await _projection_rate(batch, workers=1)
    two = await _projection_rate(batch, workers=2)
    naive = await _naive_rate(_events(naive_events))
    write_result(
        "projections",
        {
            "events": events,
            "naive_events": naive_events,
            "batch_size": get_settings().projection_batch_size,
            "events_per_s": {
                "one_worker": round(one),
                "processor_workers_2": round(two),
                "naive_per_event_tx": round(naive),
            },
            "speedup_vs_naive": round(one / naive, 1),
            "goal": ">= 40000 ev/s for one process, >= 10x naive",
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--naive-events", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.naive_events))
