"""A batch's XACKs ride on the consumer's next XREADGROUP (one write, one round trip), and Redis
runs them before the read blocks: nothing applied stays pending while a consumer waits."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from outbox import EventSpec
from outbox.envelope import MessagePriority
from outbox.projections.projection import Projection
from outbox.settings import Settings
from outbox.streams.codec import StreamMessage
from outbox.streams.consumer import GroupConsumer
from outbox.streams.keys import Keys
from tests.fixtures_projections import (
    Runner,
    async_eq,
    configure,
    emit_events,
    poll,
    xadd_events,
)

#: The consumer's blocking read: far longer than the tests' polls, so an ack that waited for the
#: read to end would be seen pending.
LONG_BLOCK_MS = 8000
SOON_S = 3.0


async def _pending_count(redis: aioredis.Redis, stream: str, group: str) -> int:
    summary: Any = await redis.xpending(stream, group)
    return int(summary["pending"])


async def test_read_new_acks_first_then_blocks(redis_client: aioredis.Redis, keys: Keys) -> None:
    stream = keys.stream("identity")
    consumer = GroupConsumer(redis_client, "acks", "c1", {MessagePriority.NORMAL: [stream]})
    await consumer.ensure_groups()
    for i in range(3):
        await redis_client.xadd(stream, {"i": i})
    first = await consumer.read_new(10, 0)
    assert len(first) == 3
    assert await _pending_count(redis_client, stream, "acks") == 3

    # Nothing new: the read blocks, but the acks sent with it are already done.
    read = asyncio.create_task(
        consumer.read_new(10, LONG_BLOCK_MS, ack={stream: [entry.id for entry in first]})
    )
    await poll(lambda: async_eq(_pending_count(redis_client, stream, "acks"), 0), timeout_s=SOON_S)
    assert not read.done()
    new_id = (await redis_client.xadd(stream, {"i": 3})).decode()
    assert [entry.id for entry in await asyncio.wait_for(read, SOON_S)] == [new_id]
    assert await _pending_count(redis_client, stream, "acks") == 1


async def test_read_new_with_acks_recreates_a_deleted_group(
    redis_client: aioredis.Redis, keys: Keys
) -> None:
    """NOGROUP on the combined write is handled as on a plain read: the group is created again
    and the read retried (the XACKs, repeated, are harmless)."""
    stream = keys.stream("identity")
    consumer = GroupConsumer(redis_client, "acks", "c1", {MessagePriority.NORMAL: [stream]})
    await consumer.ensure_groups()
    await redis_client.xadd(stream, {"i": 0})
    first = await consumer.read_new(10, 0)
    await redis_client.xgroup_destroy(stream, "acks")
    again = await consumer.read_new(10, 0, ack={stream: [first[0].id]})
    # The new group starts from the stream's beginning (id 0), so the entry comes again.
    assert [entry.id for entry in again] == [first[0].id]


async def test_a_waiting_worker_has_acked_what_it_applied(
    projection_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    settings = configure(monkeypatch, PROJECTION_BLOCK_MS=str(LONG_BLOCK_MS))
    await asyncpg_conn.execute("CREATE TABLE acks_applied (event_id uuid PRIMARY KEY)")
    projection = Projection("acks_worker", streams=["identity"])

    @projection.on("record")
    async def record(event: StreamMessage, db: Any) -> None:
        await db.execute("INSERT INTO acks_applied VALUES ($1)", event.event_id)

    stream = keys.stream("identity")

    async def applied() -> int:
        return int(await asyncpg_conn.fetchval("SELECT count(*) FROM acks_applied"))

    async with running([projection], settings):
        for round_ in range(3):  # each batch is acked by the read that follows it
            events = await emit_events(
                database_url, [EventSpec("identity", "record", {"n": n}) for n in range(5)]
            )
            await xadd_events(redis_client, keys, events)
            await poll(lambda round_=round_: async_eq(applied(), 5 * (round_ + 1)))
            await poll(
                lambda: async_eq(_pending_count(redis_client, stream, "acks_worker"), 0),
                timeout_s=SOON_S,
            )
    assert await _pending_count(redis_client, stream, "acks_worker") == 0
