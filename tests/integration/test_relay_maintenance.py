"""Trimming keeps every entry a group still needs; outbox pruning keeps unpublished rows."""

from __future__ import annotations

import time
from datetime import timedelta

import asyncpg
import redis.asyncio as aioredis

from outbox.relay.maintenance import trim_stream
from outbox.relay.prune import prune
from outbox.settings import Settings
from outbox.streams.keys import Keys
from tests.fixtures_relay import StartRelay, emit_events, published, wait_until


async def _fill(client: aioredis.Redis, stream: str, count: int) -> list[bytes]:
    return [await client.xadd(stream, {"n": str(n)}) for n in range(count)]


async def _ids(client: aioredis.Redis, stream: str) -> list[bytes]:
    return [entry_id for entry_id, _ in await client.xrange(stream)]


async def test_trim_keeps_pending_and_undelivered_entries(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    stream = Keys(stream_prefix).stream("identity")
    ids = await _fill(redis_client, stream, 30)
    await redis_client.xgroup_create(stream, "fast", id="0")
    await redis_client.xgroup_create(stream, "slow", id="0")
    # fast: reads 20, acks all; slow: reads 15, acks the first 5 and the 10th only.
    fast = await redis_client.xreadgroup("fast", "c1", {stream: ">"}, count=20)
    await redis_client.xack(stream, "fast", *[i for i, _ in fast[0][1]])
    slow = await redis_client.xreadgroup("slow", "c1", {stream: ">"}, count=15)
    slow_ids = [i for i, _ in slow[0][1]]
    await redis_client.xack(stream, "slow", *slow_ids[:5], slow_ids[9])

    result = await trim_stream(redis_client, stream, retention_s=0, exact=True)

    # slow's smallest pending entry is the 6th: everything from it on stays.
    assert result.trimmed == 5
    assert await _ids(redis_client, stream) == ids[5:]
    assert result.minid == ids[5].decode()


async def test_trim_with_nothing_pending_keeps_what_the_slowest_group_was_not_delivered(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    stream = Keys(stream_prefix).stream("identity")
    ids = await _fill(redis_client, stream, 10)
    await redis_client.xgroup_create(stream, "g", id="0")
    read = await redis_client.xreadgroup("g", "c1", {stream: ">"}, count=4)
    await redis_client.xack(stream, "g", *[i for i, _ in read[0][1]])
    await trim_stream(redis_client, stream, retention_s=0, exact=True)
    assert await _ids(redis_client, stream) == ids[4:]


async def test_trim_keeps_entries_younger_than_the_retention(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    stream = Keys(stream_prefix).stream("identity")
    now_ms = int(time.time() * 1000)
    old = [
        await redis_client.xadd(stream, {"n": "old"}, id=f"{now_ms - 600_000}-{n}") for n in (1, 2)
    ]
    new = await _fill(redis_client, stream, 3)
    assert len(old) == 2
    # No group: retention alone decides. A group that acked everything does not trim the young.
    await redis_client.xgroup_create(stream, "g", id="$")
    result = await trim_stream(redis_client, stream, retention_s=60, exact=True)
    assert result.trimmed == 2
    assert await _ids(redis_client, stream) == new


async def test_dead_letters_are_trimmed_by_age_only(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    dead_letter = Keys(stream_prefix).dead_letter
    now_ms = int(time.time() * 1000)
    await redis_client.xadd(dead_letter, {"n": "expired"}, id=f"{now_ms - 90_000_000}-0")
    fresh = await redis_client.xadd(dead_letter, {"n": "fresh"})
    await redis_client.xgroup_create(dead_letter, "replayer", id="0")  # never reads
    result = await trim_stream(
        redis_client, dead_letter, retention_s=86_400, honour_groups=False, exact=True
    )
    assert result.trimmed == 1
    assert await _ids(redis_client, dead_letter) == [fresh]


async def test_trim_leaves_a_missing_or_foreign_key_alone(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    keys = Keys(stream_prefix)
    await redis_client.set(keys.stream("assets"), "x")
    assert (await trim_stream(redis_client, keys.stream("assets"), retention_s=0)).trimmed == 0
    assert (await trim_stream(redis_client, keys.stream("none"), retention_s=0)).trimmed == 0
    assert await redis_client.get(keys.stream("assets")) == b"x"


async def test_prune_deletes_only_old_published_rows(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    relay_settings: Settings,
    start_relay: StartRelay,
    database_url: str,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    await emit_events(asyncpg_conn, 300, services=("identity",))
    async with start_relay():

        async def done() -> bool:
            return len(await published(redis_client, keys, ("identity",))) == 300

        await wait_until(done, what="identity published")
    # Unpublished: a service no relay has read, and identity rows after its cursor.
    await emit_events(asyncpg_conn, 50, services=("assets",))
    await emit_events(asyncpg_conn, 20, services=("identity",))
    await asyncpg_conn.execute("UPDATE outbox_events SET occurred_at = now() - interval '8 days'")
    # Young and published: kept.
    await asyncpg_conn.execute(
        "UPDATE outbox_events SET occurred_at = now() WHERE position IN "
        "(SELECT position FROM outbox_events WHERE stream = 'identity' ORDER BY position LIMIT 10)"
    )
    seen: list[int] = []
    totals = await prune(
        database_url, timedelta(days=7), chunk_size=64, progress=lambda p: seen.append(p.deleted)
    )
    assert totals.deleted == 290
    assert len(seen) > 1  # in several chunks
    counts = dict(
        await asyncpg_conn.fetch("SELECT stream, count(*) FROM outbox_events GROUP BY stream")
    )
    assert counts == {"assets": 50, "identity": 30}
