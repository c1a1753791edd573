"""Upcasting on every read path over a log of mixed schema versions: a rebuild, live projections
fed by the relay, the original document's client; a missing upcaster dead-letters the event."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

import outbox
from outbox import EventSpec
from outbox.projections.projection import Projection
from outbox.projections.rebuild import rebuild
from outbox.settings import Settings
from outbox.streams import RedisStreamsClient
from outbox.streams.codec import StreamMessage
from outbox.streams.dead_letter import DeadLetters
from outbox.streams.keys import Keys
from tests.fixtures_projections import Runner, async_eq, emit_events, poll
from tests.fixtures_relay import StartRelay


class UserV1(BaseModel):
    user_id: str
    name: str


class UserV2(BaseModel):
    user_id: str
    full_name: str


def _v1(n: int) -> EventSpec:
    return EventSpec("identity", "user_created", {"user_id": f"u{n}", "name": f"name {n}"})


def _v2(n: int) -> EventSpec:
    return EventSpec("identity", "user_created", {"user_id": f"u{n}", "full_name": f"name {n}"})


def _to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"user_id": data["user_id"], "full_name": data["name"]}


def _register_v2() -> None:
    outbox.register_schema("user_created", UserV2, version=2)
    outbox.register_upcaster("user_created", 1, _to_v2)


@pytest.fixture
async def users(asyncpg_conn: asyncpg.Connection) -> Projection:
    """A read model whose handler knows only the v2 shape; a second apply would fail (key)."""
    await asyncpg_conn.execute(
        "CREATE TABLE upcast_users (user_id text PRIMARY KEY, full_name text NOT NULL, "
        "version int NOT NULL)"
    )
    projection = Projection("upcast_users", streams=["identity"], tables=["upcast_users"])

    @projection.on("user_created")
    async def created(message: StreamMessage, db: Any) -> None:
        await db.execute(
            "INSERT INTO upcast_users VALUES ($1, $2, $3)",
            message.data["user_id"],
            message.data["full_name"],
            message.schema_version,
        )

    return projection


async def _emit_mixed(database_url: str, count: int) -> None:
    """``count`` v1 events written before v2 existed, then ``count`` v2 events."""
    outbox.register_schema("user_created", UserV1)
    await emit_events(database_url, [_v1(n) for n in range(count)])
    _register_v2()
    await emit_events(database_url, [_v2(n) for n in range(count, 2 * count)])


def _expected(count: int) -> list[tuple[str, str, int]]:
    return sorted((f"u{n}", f"name {n}", 2) for n in range(2 * count))


async def _users(conn: asyncpg.Connection) -> list[tuple[str, str, int]]:
    rows = await conn.fetch("SELECT user_id, full_name, version FROM upcast_users")
    return sorted((r["user_id"], r["full_name"], r["version"]) for r in rows)


async def test_emit_stamps_the_current_version_and_a_rebuild_reads_the_mixed_log_as_v2(
    database_url: str, asyncpg_conn: asyncpg.Connection, keys: Keys, users: Projection
) -> None:
    await _emit_mixed(database_url, 50)
    stored = await asyncpg_conn.fetch("SELECT headers FROM outbox_events ORDER BY position")
    assert [row["headers"] for row in stored] == [None] * 50 + ['{"schema_version": "2"}'] * 50
    # v2 is now current: emit() validates against its model.
    with pytest.raises(outbox.EventSchemaError, match=r"UserV2 \(version 2\)"):
        await emit_events(database_url, [_v1(999)])

    db = await asyncpg.connect(database_url)
    try:
        result = await rebuild(db, users, keys, batch_size=30)
        assert (result.events, result.applied, result.failed) == (100, 100, 0)
        assert await _users(asyncpg_conn) == _expected(50)
        await rebuild(db, users, keys, batch_size=7)  # again, in other batches: same result
    finally:
        await db.close()
    assert await _users(asyncpg_conn) == _expected(50)


async def test_a_rebuild_dead_letters_events_it_cannot_upcast_and_applies_the_rest(
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    users: Projection,
) -> None:
    await _emit_mixed(database_url, 5)
    outbox.upcasters.unregister("user_created", 1)  # v2 is current but 1 → 2 is missing
    db = await asyncpg.connect(database_url)
    try:
        letters = DeadLetters(redis_client, keys, 3600)
        result = await rebuild(db, users, keys, letters=letters)
    finally:
        await db.close()
    assert (result.events, result.applied, result.failed) == (10, 5, 5)
    assert await _users(asyncpg_conn) == sorted((f"u{n}", f"name {n}", 2) for n in range(5, 10))
    dead = await redis_client.xrange(keys.dead_letter)
    assert len(dead) == 5
    assert all(
        b"UpcastError: no upcaster from version 1 of identity/user_created" in f[b"error"]
        for _, f in dead
    )


async def test_live_projections_fed_by_the_relay_apply_mixed_versions_as_v2(
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    projection_settings: Settings,
    start_relay: StartRelay,
    running: Runner,
    users: Projection,
) -> None:
    await _emit_mixed(database_url, 40)
    async with start_relay(), running([users], projection_settings):
        await poll(lambda: async_eq(_users(asyncpg_conn), _expected(40)))
    assert await redis_client.xlen(keys.dead_letter) == 0


async def test_live_projections_dead_letter_an_event_without_its_upcaster_at_once(
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    projection_settings: Settings,
    start_relay: StartRelay,
    running: Runner,
    users: Projection,
) -> None:
    await _emit_mixed(database_url, 3)
    outbox.upcasters.unregister("user_created", 1)
    async with start_relay(), running([users], projection_settings):
        await poll(lambda: async_eq(redis_client.xlen(keys.dead_letter), 3))
        await poll(
            lambda: async_eq(_users(asyncpg_conn), [(f"u{n}", f"name {n}", 2) for n in range(3, 6)])
        )
    dead = await redis_client.xrange(keys.dead_letter)
    errors = [f[b"error"].decode() for _, f in dead]
    assert all("no upcaster from version 1 of identity/user_created" in e for e in errors)
    # The letter keeps the event as stored (v1, unversioned), ready to replay once fixed.
    stored = [json.loads(json.loads(f[b"payload"])["data"]) for _, f in dead]
    assert stored == [{"user_id": f"u{n}", "name": f"name {n}"} for n in range(3)]


async def test_the_client_consumes_upcast_data_and_dead_letters_what_it_cannot_upcast(
    settings: Settings, redis_client: aioredis.Redis, keys: Keys
) -> None:
    url = settings.redis_streams_url.get_secret_value()
    client = RedisStreamsClient(url, prefix=settings.stream_prefix)
    await client.initialize()
    try:
        await client.publish_message(
            "identity", "user_created", "identity", {"user_id": "u1", "name": "Ada"}
        )
        _register_v2()
        await client.publish_message(
            "identity", "user_created", "identity", {"user_id": "u2", "full_name": "Alan"}
        )
        messages = await client.consume_messages(["identity"], "c1", block_time=0)
        assert [(m.data, m.schema_version) for m in messages] == [
            ({"user_id": "u1", "full_name": "Ada"}, 2),
            ({"user_id": "u2", "full_name": "Alan"}, 2),
        ]
        outbox.upcasters.unregister("user_created", 1)
        await client.publish_message(
            "identity", "user_created", "identity", {"user_id": "u3", "full_name": "Grace"}
        )
        await redis_client.xadd(
            keys.stream("identity"),
            {
                "event_id": "0190a7c8-0000-7000-8000-000000000009",
                "event_type": "user_created",
                "service": "identity",
                "data": '{"user_id": "u4", "name": "Old"}',
                "priority": "normal",
                "correlation_id": "c",
            },
        )
        messages = await client.consume_messages(["identity"], "c1", block_time=0)
        assert [m.data["user_id"] for m in messages] == ["u3"]
        dead = await redis_client.xrange(keys.dead_letter)
        assert len(dead) == 1
        assert b"UpcastError: no upcaster from version 1" in dead[0][1][b"error"]
    finally:
        await client.close()
