"""Redis loses writes it had acknowledged: the relay notices and publishes those events again.

A failover to a replica that had not received them, a crash with ``appendfsync everysec``, a
restart without persistence: Redis comes back holding less than it took, while the relay's
cursor has passed the lost events. The publish script compares each stream's watermark with the
one the relay saw it take (its *mark*, committed with the cursor), and refuses to add anything
beyond a gap; the relay re-reads from what Redis still holds (decision 0011).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

import outbox
from outbox import MessagePriority
from outbox.projections.examples import user_directory
from outbox.relay.cursor import Cursor
from outbox.settings import Settings
from outbox.streams.keys import Keys
from tests.fixtures_projections import Runner
from tests.fixtures_relay import (
    OwnRedis,
    StartRelay,
    assert_exactly_once,
    emit_events,
    wait_until,
)

SERVICES = ("identity", "assets")
PRIORITIES = (MessagePriority.NORMAL, MessagePriority.NORMAL, MessagePriority.HIGH)


async def test_redis_restarted_empty_under_a_running_relay_gets_every_event_again(
    asyncpg_conn: asyncpg.Connection,
    volatile_redis: OwnRedis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    client = aioredis.Redis.from_url(volatile_redis.url)
    ids = await emit_events(asyncpg_conn, 300, services=SERVICES, priorities=PRIORITIES)
    async with start_relay(redis_streams_url=SecretStr(volatile_redis.url)) as relay:
        await assert_exactly_once(client, keys, ids, asyncpg_conn, SERVICES)
        volatile_redis.kill()
        volatile_redis.start()  # no AOF, no snapshot: every stream and watermark is gone
        await client.aclose()
        client = aioredis.Redis.from_url(volatile_redis.url)
        ids += await emit_events(asyncpg_conn, 100, services=SERVICES, priorities=PRIORITIES)
        await assert_exactly_once(client, keys, ids, asyncpg_conn, SERVICES)
        assert relay.status.last_error is not None
        assert "Redis lost published events" in relay.status.last_error
    await client.aclose()


async def test_a_relay_started_after_redis_lost_its_data_publishes_it_again(
    asyncpg_conn: asyncpg.Connection,
    volatile_redis: OwnRedis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    """The relay that saw the streams take the events is gone: its successor knows from the
    marks committed with the cursor."""
    keys = Keys(relay_settings.stream_prefix)
    client = aioredis.Redis.from_url(volatile_redis.url)
    redis_url = SecretStr(volatile_redis.url)
    ids = await emit_events(asyncpg_conn, 300, services=SERVICES, priorities=PRIORITIES)
    async with start_relay(redis_streams_url=redis_url):
        await assert_exactly_once(client, keys, ids, asyncpg_conn, SERVICES)
    volatile_redis.kill()
    volatile_redis.start()
    await client.aclose()
    client = aioredis.Redis.from_url(volatile_redis.url)
    ids += await emit_events(asyncpg_conn, 100, services=SERVICES, priorities=PRIORITIES)
    async with start_relay(redis_streams_url=redis_url):
        await assert_exactly_once(client, keys, ids, asyncpg_conn, SERVICES)
    await client.aclose()


async def _lose_all_but_the_first(
    conn: asyncpg.Connection, client: aioredis.Redis, keys: Keys, service: str, kept: int
) -> int:
    """Make Redis look as if it lost every write after the service's first ``kept`` events
    (cursor order): the entries of the others are deleted and each stream's watermark set back
    to the last event it keeps. Returns how many entries went."""
    rows = await conn.fetch(
        "SELECT txid, position FROM outbox_events WHERE stream = $1 ORDER BY txid, position",
        service,
    )
    cursors = [Cursor(row["txid"], row["position"]) for row in rows]
    cut = cursors[kept - 1]
    cursor_at = {c.position: c for c in cursors}
    lost = 0
    for stream in keys.streams_of(service):
        entries = await client.xrange(stream)
        held = [cursor_at[int(f[b"position"])] for _, f in entries]
        gone = [entry_id for (entry_id, _), c in zip(entries, held, strict=True) if c > cut]
        if gone:
            await client.xdel(stream, *gone)
            lost += len(gone)
        below = [c for c in held if c <= cut]
        if below:
            await client.set(keys.watermark(stream), str(max(below)))
        else:
            await client.delete(keys.watermark(stream))
    return lost


async def test_a_running_relay_fills_the_gap_when_redis_lost_its_last_writes(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only the newest writes are lost (a failover to a replica a little behind): the relay
    re-sends from the lowest watermark left, and only what is missing is added. Its status row
    counts the loss, and says the service is being published again only until it is done."""
    caplog.set_level(logging.INFO, logger="outbox.relay")
    keys = Keys(relay_settings.stream_prefix)
    ids = await emit_events(asyncpg_conn, 300, services=SERVICES, priorities=PRIORITIES)
    async with start_relay() as relay:
        await assert_exactly_once(redis_client, keys, ids, asyncpg_conn, SERVICES)
        # The relay has nothing to publish until the next events are emitted, so it does not
        # write to Redis while Redis "loses" the writes.
        lost = await _lose_all_but_the_first(asyncpg_conn, redis_client, keys, "identity", 101)
        assert lost == 150 - 101  # identity has every other of the 300 events
        ids += await emit_events(asyncpg_conn, 60, services=SERVICES, priorities=PRIORITIES)
        await assert_exactly_once(redis_client, keys, ids, asyncpg_conn, SERVICES)
        assert relay.status.last_error is not None
        assert "identity: Redis lost published events" in relay.status.last_error
        # Found once, or once per stream when the heartbeat's check ran between the two.
        assert 1 <= relay.status.redis_losses <= len(keys.streams_of("identity"))
        messages = [record.getMessage() for record in caplog.records]
        assert any("event=redis_losses_republished service=identity" in m for m in messages)
        assert not any("event=redis_losses_republished service=assets" in m for m in messages)

        async def status_row_says_so() -> bool:
            row = await asyncpg_conn.fetchrow(
                "SELECT redis_losses, republishing FROM relay_instances WHERE instance_id = $1",
                relay.status.instance_id,
            )
            return row is not None and row["redis_losses"] >= 1 and row["republishing"] == "{}"

        await wait_until(status_row_says_so, what="the loss counted, nothing left to publish again")


async def test_lost_events_of_a_stream_with_nothing_new_are_published_again(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    """No batch goes to the stream that lost events, so the publish script never sees it: the
    relay's heartbeat compares every stream's watermark with its mark."""
    keys = Keys(relay_settings.stream_prefix)
    ids = await emit_events(asyncpg_conn, 300, services=SERVICES, priorities=PRIORITIES)
    async with start_relay() as relay:
        await assert_exactly_once(redis_client, keys, ids, asyncpg_conn, SERVICES)
        lost = await _lose_all_but_the_first(asyncpg_conn, redis_client, keys, "assets", 51)
        assert lost == 150 - 51
        # No event is emitted from here on.
        await assert_exactly_once(redis_client, keys, ids, asyncpg_conn, SERVICES)
        assert relay.status.last_error is not None
        assert "assets: Redis lost published events" in relay.status.last_error


async def test_a_projection_applies_each_event_once_when_redis_loses_everything(
    asyncpg_conn: asyncpg.Connection,
    volatile_redis: OwnRedis,
    start_relay: StartRelay,
    running: Runner,
    projection_settings: Settings,
) -> None:
    """End to end: the relay publishes everything again into the empty Redis, the consumers
    re-create their group, and the inbox skips the events they had applied."""
    url = SecretStr(volatile_redis.url)

    async def create_users(first: int, count: int) -> None:
        specs = [
            outbox.EventSpec(
                service="identity",
                event_type="user_created",
                data={"user_id": f"u{i}", "email": f"u{i}@example.com"},
            )
            for i in range(first, first + count)
        ]
        async with asyncpg_conn.transaction():
            await outbox.emit_many(asyncpg_conn, specs)

    def applied(count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            done = await asyncpg_conn.fetchval(
                "SELECT count(*) FROM projection_inbox WHERE projection = 'user_directory'"
            )
            return bool(done == count)

        return check

    await create_users(0, 200)
    async with (
        start_relay(redis_streams_url=url),
        running(
            [user_directory], projection_settings.model_copy(update={"redis_streams_url": url})
        ),
    ):
        await wait_until(applied(200), what="the first 200 users applied")
        volatile_redis.kill()
        volatile_redis.start()
        await create_users(200, 100)
        await wait_until(applied(300), what="all 300 users applied")
        client = aioredis.Redis.from_url(volatile_redis.url)
        keys = Keys(projection_settings.stream_prefix)

        async def republished() -> bool:
            return await client.xlen(keys.stream("identity")) == 300

        # Every event is in the new Redis once, the 200 it lost among them.
        await wait_until(republished, what="the lost events published again")
        await client.aclose()
    assert await asyncpg_conn.fetchval("SELECT count(*) FROM directory_users") == 300
    rows, distinct = await asyncpg_conn.fetchrow(
        "SELECT count(*), count(DISTINCT event_id) FROM projection_inbox"
        " WHERE projection = 'user_directory'"
    )
    assert rows == distinct == 300
