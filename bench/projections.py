"""How fast do projections apply events exactly once (inbox row + read-model upsert)?

Fills a stream with ``--events`` user events in the relay's entry format, then measures the
``user_directory`` example projection draining it: one worker, PROCESSOR_WORKERS=2 workers (one
process), and a naive consumer (one transaction and one XACK per event, over
``--naive-events``). Each run gets a fresh database and key prefix. Goal (issue 4): >= 40,000
events/s for one process and >= 10x the naive consumer.

How the drain is timed: the backlog is written first and the events' Python objects are dropped
(the runtime runs in this process, and 200k live objects would slow its garbage collector).
The clock starts when the consumers register (``projection_consumers.started_at``, written
right before their first XREADGROUP, so pool and group set-up are not counted) and stops when
Redis reports the group caught up: nothing left to deliver (``lag`` 0) and nothing pending,
i.e. every entry acked after its transaction committed (XINFO GROUPS, polled every 5 ms; no
query on the database while it drains). ``cpu_us_per_event`` is this process's CPU time
(``time.process_time``) over the same drain divided by the events: the consumer's own cost,
which the other processes on a shared machine disturb far less than the wall-clock rate.

    python -m bench.projections [--events 200000] [--naive-events 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg
import redis.asyncio as aioredis

from bench.common import ReadReply, check, scratch_database, write_result
from outbox.cli.heap import settle_for_batches
from outbox.envelope import Event, MessagePriority, uuid7
from outbox.projections.examples import user_directory
from outbox.projections.runner import run_projections
from outbox.settings import get_settings
from outbox.streams.codec import decode_entry, encode_event
from outbox.streams.keys import Keys

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


async def _caught_up(redis: aioredis.Redis, stream: str, group: str) -> bool:
    """Every entry delivered to ``group`` and acked (Redis 7.0 XINFO GROUPS ``lag``)."""
    for info in await redis.xinfo_groups(stream):
        if info["name"].decode() == group:
            return bool(info["lag"] == 0 and info["pending"] == 0)
    return False


async def _projection_rate(count: int, workers: int) -> dict[str, float]:
    """Drain ``count`` pre-filled events; events/s and consumer CPU µs per event."""
    async with scratch_database("projections") as url:
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        os.environ.update(DATABASE_URL=url, STREAM_PREFIX=prefix)
        get_settings.cache_clear()
        settings = get_settings()
        keys = Keys(prefix)
        stream = keys.stream("identity")
        redis = aioredis.Redis.from_url(settings.redis_streams_url.get_secret_value())
        db = await asyncpg.connect(url)
        try:
            await _fill(redis, keys, _events(count))
            settle_for_batches()  # as `outbox project` does once it has started
            stop = asyncio.Event()
            cpu_started = time.process_time()
            task = asyncio.create_task(
                run_projections([user_directory], settings, stop=stop, workers=workers)
            )
            while not await _caught_up(redis, stream, user_directory.name):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            finished = time.time()
            cpu = time.process_time() - cpu_started
            stop.set()
            await task
            started = await db.fetchval(
                "SELECT extract(epoch FROM min(started_at)) FROM projection_consumers"
            )
            applied = await db.fetchval("SELECT count(*) FROM projection_inbox")
            if applied != count:
                raise RuntimeError(f"{applied} of {count} events in the inbox")
            return {
                "events_per_s": count / (finished - float(started)),
                "cpu_us_per_event": cpu / count * 1e6,
            }
        finally:
            await db.close()
            await redis.delete(*[k async for k in redis.scan_iter(match=f"{prefix}:*")])
            await redis.aclose()


async def _naive_rate(count: int) -> dict[str, float]:
    """One transaction (inbox + upsert) and one XACK per event."""
    async with scratch_database("naive") as url:
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        keys = Keys(prefix)
        stream = keys.stream("identity")
        redis = aioredis.Redis.from_url(get_settings().redis_streams_url.get_secret_value())
        db = await asyncpg.connect(url)
        try:
            await _fill(redis, keys, _events(count))
            await redis.xgroup_create(stream, "naive", id="0")
            gc.collect()
            started = time.perf_counter()
            cpu_started = time.process_time()
            done = 0
            while done < count:
                response = cast(
                    ReadReply, await redis.xreadgroup("naive", "c", {stream: ">"}, count=10)
                )
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
            return {
                "events_per_s": count / (time.perf_counter() - started),
                "cpu_us_per_event": (time.process_time() - cpu_started) / count * 1e6,
            }
        finally:
            await db.close()
            await redis.delete(*[k async for k in redis.scan_iter(match=f"{prefix}:*")])
            await redis.aclose()


async def main(events: int, naive_events: int) -> None:
    one = await _projection_rate(events, workers=1)
    two = await _projection_rate(events, workers=2)
    naive = await _naive_rate(naive_events)
    write_result(
        "projections",
        {
            "events": events,
            "naive_events": naive_events,
            "batch_size": get_settings().projection_batch_size,
            "timing": "registration of the consumers to all acked (XINFO GROUPS), see docstring",
            "events_per_s": {
                "one_worker": round(one["events_per_s"]),
                "processor_workers_2": round(two["events_per_s"]),
                "naive_per_event_tx": round(naive["events_per_s"]),
            },
            "consumer_cpu_us_per_event": {
                "one_worker": round(one["cpu_us_per_event"], 1),
                "processor_workers_2": round(two["cpu_us_per_event"], 1),
                "naive_per_event_tx": round(naive["cpu_us_per_event"], 1),
            },
            "speedup_vs_naive": round(one["events_per_s"] / naive["events_per_s"], 1),
        },
        [
            check(
                "exactly-once apply, one process", round(one["events_per_s"]), ">=", 40_000, " ev/s"
            ),
            check(
                f"one process vs naive ({round(naive['events_per_s'])} ev/s)",
                round(one["events_per_s"] / naive["events_per_s"], 1),
                ">=",
                10,
                "x",
            ),
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--naive-events", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.naive_events))
