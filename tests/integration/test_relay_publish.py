"""The relay publishes committed events to the right streams, with every envelope field, once."""

from __future__ import annotations

import json
from collections import Counter

import asyncpg
import redis.asyncio as aioredis

import outbox
from outbox.envelope import MessagePriority
from outbox.relay.cursor import Cursor
from outbox.settings import Settings
from outbox.streams.codec import decode_entry, to_cloudevent
from outbox.streams.keys import Keys
from tests.fixtures_relay import (
    StartRelay,
    cursor_order_ok,
    emit_events,
    published,
    wait_until,
)

SERVICES = ("identity", "assets", "automation")
PRIORITIES = tuple(MessagePriority)


async def test_every_event_reaches_its_priority_stream_once_in_cursor_order(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    relay_settings: Settings,
    start_relay: StartRelay,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    ids = await emit_events(asyncpg_conn, 3000, services=SERVICES, priorities=PRIORITIES, per_tx=37)
    async with start_relay(relay_batch_size=200):

        async def done() -> bool:
            return len(await published(redis_client, keys, SERVICES)) >= len(ids)

        await wait_until(done, what="all events published")

    ids_published = await published(redis_client, keys, SERVICES)
    assert Counter(ids_published) == Counter(ids)
    for service in SERVICES:
        # LOW and NORMAL share the plain stream; HIGH and CRITICAL have their own.
        low_normal = {f[b"priority"] for _, f in await redis_client.xrange(keys.stream(service))}
        assert low_normal == {b"low", b"normal"}
        for priority in (MessagePriority.HIGH, MessagePriority.CRITICAL):
            entries = await redis_client.xrange(keys.stream(service, priority))
            assert entries
            assert {f[b"priority"] for _, f in entries} == {priority.label.encode()}
            assert {f[b"service"] for _, f in entries} == {service.encode()}
        for stream in keys.streams_of(service):
            assert await cursor_order_ok(asyncpg_conn, redis_client, stream)


async def test_entries_carry_the_whole_envelope(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    relay_settings: Settings,
    start_relay: StartRelay,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    async with asyncpg_conn.transaction():
        event = await outbox.emit(
            asyncpg_conn,
            service="identity",
            event_type="user_created",
            data={"user_id": 7, "name": "Zoë"},
            priority="high",
            correlation_id="corr-1",
            causation_id="cause-1",
            user_id="admin",
            aggregate_id="user-7",
            dedup_key="user-7-created",
            headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        )
    stream = keys.stream("identity", MessagePriority.HIGH)
    async with start_relay():

        async def done() -> bool:
            return bool(await redis_client.xlen(stream))

        await wait_until(done, what="the event")
    [(entry_id, fields)] = await redis_client.xrange(stream)
    message = decode_entry(stream, entry_id.decode(), fields)
    assert message.event_id == str(event.event_id)
    assert message.data == {"user_id": 7, "name": "Zoë"}
    assert message.priority is MessagePriority.HIGH
    assert (message.correlation_id, message.causation_id) == ("corr-1", "cause-1")
    assert (message.user_id, message.aggregate_id, message.dedup_key) == (
        "admin",
        "user-7",
        "user-7-created",
    )
    assert message.traceparent == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert message.occurred_at == event.occurred_at
    assert message.position == event.position
    assert to_cloudevent(fields)["id"] == str(event.event_id)


async def test_text_that_json_must_escape_arrives_unchanged(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    relay_settings: Settings,
    start_relay: StartRelay,
) -> None:
    """PostgreSQL encodes the entry as JSON and the publish script decodes it with cjson
    (docs/decisions/0010-entries-encoded-by-postgresql.md): every character must survive both."""
    keys = Keys(relay_settings.stream_prefix)
    printable = 'q"uote \\back\\slash / Zoë 日本 😀 \\u0041 {"x": 1}'
    data = {"text": printable + " \n\t\r\x01\x1f \u2028\u2029", "nested": [None, True, 1.5]}
    async with asyncpg_conn.transaction():
        event = await outbox.emit(
            asyncpg_conn,
            service="identity",
            event_type="user_created",
            data=data,
            correlation_id=printable,
            causation_id=printable,
            user_id=printable,
            aggregate_id=printable,
            dedup_key=printable,
            headers={"note": printable},
        )
    stream = keys.stream("identity")
    async with start_relay():

        async def done() -> bool:
            return bool(await redis_client.xlen(stream))

        await wait_until(done, what="the event")
    [(entry_id, fields)] = await redis_client.xrange(stream)
    for name in ("correlation_id", "causation_id", "user_id", "aggregate_id", "dedup_key"):
        assert fields[name.encode()] == printable.encode()
    message = decode_entry(stream, entry_id.decode(), fields)
    assert message.data == data
    assert message.headers == {"note": printable}
    assert message.event_id == str(event.event_id)


async def test_watermark_and_cursor_agree_after_a_graceful_stop(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    relay_settings: Settings,
    start_relay: StartRelay,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    await emit_events(asyncpg_conn, 500, services=("identity",))
    async with start_relay() as relay:

        async def done() -> bool:
            return await redis_client.xlen(keys.stream("identity")) == 500

        await wait_until(done, what="500 entries")
        published = (await redis_client.get(keys.watermark(keys.stream("identity")))).decode()

        async def reported() -> bool:
            # A running relay's heartbeat reports the cursor it has published up to.
            cursors = await asyncpg_conn.fetchval(
                "SELECT cursors FROM relay_instances WHERE instance_id = $1",
                relay.status.instance_id,
            )
            return cursors is not None and json.loads(cursors) == {"identity": published}

        await wait_until(reported, what="the heartbeat's cursor")
    row = await asyncpg_conn.fetchrow("SELECT txid, position FROM relay_cursors")
    assert row is not None
    mark = await redis_client.get(keys.watermark(keys.stream("identity")))
    assert mark is not None
    assert Cursor.parse(mark.decode()) == Cursor(row["txid"], row["position"])
    status = await asyncpg_conn.fetchrow(
        "SELECT * FROM relay_instances WHERE instance_id = $1", relay.status.instance_id
    )
    assert status is not None
    assert status["published_count"] == 500
    assert status["stopped_at"] is not None
    assert status["streams"] == []
    assert json.loads(status["cursors"]) == {"identity": str(Cursor(row["txid"], row["position"]))}


async def test_pg_notify_wakes_an_idle_relay(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    relay_settings: Settings,
    start_relay: StartRelay,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    stream = keys.stream("identity")
    await emit_events(asyncpg_conn, 1, services=("identity",))
    # Every idle wait is 60 s: only the notification can make the second event appear quickly.
    async with start_relay(relay_poll_min_ms=60_000.0, relay_poll_max_ms=60_000.0):

        async def first() -> bool:
            return int(await redis_client.xlen(stream)) == 1

        await wait_until(first, what="the first event")
        await emit_events(asyncpg_conn, 1, services=("identity",))
        await asyncpg_conn.execute("SELECT pg_notify($1, '')", relay_settings.relay_notify_channel)

        async def second() -> bool:
            return int(await redis_client.xlen(stream)) == 2

        await wait_until(second, timeout_s=5, what="the notified event")
