"""A projection worker applies its batches on one PostgreSQL connection that it keeps from batch
to batch (handing a connection back to the pool costs a reset round trip per batch), and gets a
new one when that connection is lost."""

from __future__ import annotations

from typing import Any

import asyncpg
import redis.asyncio as aioredis

from outbox import EventSpec
from outbox.projections.projection import Projection
from outbox.settings import Settings
from outbox.streams.codec import StreamMessage
from outbox.streams.keys import Keys
from tests.fixtures_projections import (
    Runner,
    async_eq,
    emit_events,
    group_settled,
    poll,
    xadd_events,
)


def _session_projection(name: str) -> Projection:
    """Records, per event, its backend and how many batches that session has applied so far (a
    session-level setting, which a connection reset would clear)."""
    projection = Projection(name, streams=["identity"])

    @projection.on("record")
    async def record(event: StreamMessage, db: Any) -> None:
        await db.execute(
            "INSERT INTO session_applied (event_id, backend, session_batches) VALUES ($1,"
            " pg_backend_pid(), set_config('outbox_test.batches',"
            " (coalesce(nullif(current_setting('outbox_test.batches', true), ''), '0')::int + 1)"
            "::text, false)::int)",
            event.event_id,
        )

    return projection


async def _create_read_model(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "CREATE TABLE session_applied ("
        " event_id uuid PRIMARY KEY, backend int NOT NULL, session_batches int NOT NULL)"
    )


async def _deliver_one_by_one(
    database_url: str, redis: aioredis.Redis, keys: Keys, conn: asyncpg.Connection, count: int
) -> None:
    """``count`` events, each XADDed only after the one before was applied: one per batch."""
    query = "SELECT count(*) FROM session_applied WHERE event_id = $1"
    for n in range(count):
        events = await emit_events(database_url, [EventSpec("identity", "record", {"n": n})])
        await xadd_events(redis, keys, events)
        event_id = events[0].event_id
        await poll(lambda event_id=event_id: async_eq(conn.fetchval(query, event_id), 1))


async def test_batches_share_one_connection_that_is_not_reset_between_them(
    projection_settings: Settings,
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    await _create_read_model(asyncpg_conn)
    async with running([_session_projection("session_kept")], projection_settings):
        await _deliver_one_by_one(database_url, redis_client, keys, asyncpg_conn, 5)
    rows = await asyncpg_conn.fetch("SELECT backend, session_batches FROM session_applied")
    assert len({row["backend"] for row in rows}) == 1
    # Each batch found the count the batch before it left: no reset in between.
    assert sorted(row["session_batches"] for row in rows) == [1, 2, 3, 4, 5]


async def test_a_worker_whose_connection_was_terminated_applies_on_a_new_one(
    projection_settings: Settings,
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    await _create_read_model(asyncpg_conn)
    async with running([_session_projection("session_lost")], projection_settings):
        await _deliver_one_by_one(database_url, redis_client, keys, asyncpg_conn, 2)
        first = await asyncpg_conn.fetchval("SELECT min(backend) FROM session_applied")
        assert await asyncpg_conn.fetchval("SELECT pg_terminate_backend($1)", first)
        await _deliver_one_by_one(database_url, redis_client, keys, asyncpg_conn, 2)
        stream = keys.stream("identity")
        await poll(lambda: group_settled(redis_client, stream, "session_lost"))
    rows = await asyncpg_conn.fetch(
        "SELECT backend, session_batches FROM session_applied ORDER BY session_batches, backend"
    )
    assert len(rows) == 4
    later = [row for row in rows if row["backend"] != first]
    assert len(later) == 2, rows  # the two later events went to a new session
    assert sorted(row["session_batches"] for row in later) == [1, 2]
    assert await redis_client.xlen(keys.dead_letter) == 0
