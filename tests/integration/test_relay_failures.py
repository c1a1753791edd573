"""The relay rides out Redis restarts, dropped PostgreSQL connections and refused streams, and
shares services out through leases."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from outbox.settings import Settings
from outbox.streams.keys import Keys
from tests.fixtures_relay import (
    OwnRedis,
    StartRelay,
    assert_exactly_once,
    emit_events,
    published,
    wait_until,
)

SERVICES = ("identity", "assets", "automation", "network")


async def _emit_slowly(database_url: str, count: int, pause_s: float) -> list[str]:
    conn = await asyncpg.connect(database_url)
    ids: list[str] = []
    try:
        while len(ids) < count:
            ids += await emit_events(conn, 50, services=SERVICES, per_tx=10)
            await asyncio.sleep(pause_s)
    finally:
        await conn.close()
    return ids


@pytest.mark.slow
async def test_redis_killed_and_restarted_mid_run(
    asyncpg_conn: asyncpg.Connection,
    own_redis: OwnRedis,
    start_relay: StartRelay,
    relay_settings: Settings,
    database_url: str,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    client = aioredis.Redis.from_url(own_redis.url)
    async with start_relay(redis_streams_url=SecretStr(own_redis.url)) as relay:
        emitting = asyncio.create_task(_emit_slowly(database_url, 2000, 0.05))

        async def some_published() -> bool:
            return relay.status.published_count >= 300

        await wait_until(some_published, what="a first part published")
        own_redis.kill()

        async def backing_off() -> bool:
            return relay.status.last_error is not None

        await wait_until(backing_off, what="the relay to notice")
        await asyncio.sleep(0.5)  # an outage, not a synchronisation
        own_redis.start()  # AOF with fsync always: nothing acknowledged is lost
        ids = await emitting
        await assert_exactly_once(client, keys, ids, asyncpg_conn, SERVICES)
    await client.aclose()


@pytest.mark.slow
async def test_relay_connections_terminated_mid_run(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
    database_url: str,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    async with start_relay() as relay:
        emitting = asyncio.create_task(_emit_slowly(database_url, 2000, 0.02))
        for round_ in range(4):

            async def progressed(target: int = 300 * (round_ + 1)) -> bool:
                return relay.status.published_count >= target

            await wait_until(progressed, what="progress between terminations")
            terminated = await asyncpg_conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name LIKE 'outbox-relay %' AND datname = current_database()"
            )
            assert terminated >= 1
        ids = await emitting
        await assert_exactly_once(redis_client, keys, ids, asyncpg_conn, SERVICES)


async def test_a_refused_stream_stops_only_its_service_until_repaired(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    await redis_client.set(keys.stream("assets"), "not a stream")
    await emit_events(asyncpg_conn, 200, services=("identity", "assets"))
    async with start_relay() as relay:

        async def identity_done() -> bool:
            return await redis_client.xlen(keys.stream("identity")) == 100

        await wait_until(identity_done, what="identity published")

        async def reported() -> bool:
            row = await asyncpg_conn.fetchrow(
                "SELECT stream_errors FROM relay_instances WHERE instance_id = $1",
                relay.status.instance_id,
            )
            return row is not None and "assets" in json.loads(row["stream_errors"])

        await wait_until(reported, what="the refusal in the status row")
        row = await asyncpg_conn.fetchrow(
            "SELECT stream_errors FROM relay_instances WHERE instance_id = $1",
            relay.status.instance_id,
        )
        assert "WRONGTYPE" in json.loads(row["stream_errors"])["assets"]
        assert await redis_client.get(keys.stream("assets")) == b"not a stream"
        # identity keeps flowing while assets is stopped.
        await emit_events(asyncpg_conn, 50, services=("identity",))
        await wait_until(
            lambda: _xlen_is(redis_client, keys.stream("identity"), 150), what="more identity"
        )

        await redis_client.delete(keys.stream("assets"))
        await wait_until(
            lambda: _xlen_is(redis_client, keys.stream("assets"), 100), what="assets resumed"
        )

        async def cleared() -> bool:
            return "assets" not in relay.status.stream_errors

        await wait_until(cleared, what="the error cleared")


async def _xlen_is(client: aioredis.Redis, stream: str, count: int) -> bool:
    return int(await client.xlen(stream)) == count


async def test_leases_share_services_out_and_move_when_a_relay_stops(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    ids = await emit_events(asyncpg_conn, 400, services=SERVICES)
    async with start_relay() as first:
        async with start_relay() as second:

            async def shared() -> bool:
                a, b = first.leases.held, second.leases.held
                return bool(a) and bool(b) and not a & b and a | b == set(SERVICES)

            await wait_until(shared, what="services shared between two relays")
        # The second relay stopped: the first takes everything over.

        async def taken_over() -> bool:
            return first.leases.held == set(SERVICES)

        await wait_until(taken_over, timeout_s=10, what="takeover")
        more = await emit_events(asyncpg_conn, 100, services=SERVICES)
        await assert_exactly_once(redis_client, keys, ids + more, asyncpg_conn, SERVICES)


@pytest.mark.slow
async def test_redis_out_of_memory_is_reported_and_nothing_is_lost(
    asyncpg_conn: asyncpg.Connection,
    own_redis: OwnRedis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    """With noeviction, a full Redis refuses writes (OOM): the relay says so and backs off;
    once memory is available again it publishes everything, once, in order."""
    keys = Keys(relay_settings.stream_prefix)
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set(
            "maxmemory", "1"
        )  # below what is already used: every write is refused
        ids = await emit_events(asyncpg_conn, 200, services=SERVICES)
        async with start_relay(redis_streams_url=SecretStr(own_redis.url)) as relay:

            async def reported() -> bool:
                row = await asyncpg_conn.fetchrow(
                    "SELECT stream_errors, last_error FROM relay_instances WHERE instance_id = $1",
                    relay.status.instance_id,
                )
                if row is None:
                    return False
                text = (row["last_error"] or "") + row["stream_errors"]
                return "OOM" in text or "out of memory" in text.lower()

            await wait_until(reported, what="OOM in the relay's status row")
            assert await published(client, keys, SERVICES) == []

            await client.config_set("maxmemory", "0")
            await assert_exactly_once(client, keys, ids, asyncpg_conn, SERVICES)
    finally:
        await client.aclose()


async def test_status_rows_of_relays_silent_for_a_day_are_forgotten(
    asyncpg_conn: asyncpg.Connection, start_relay: StartRelay
) -> None:
    await asyncpg_conn.execute(
        "INSERT INTO relay_instances (instance_id, host, pid, heartbeat_at)"
        " VALUES ('long-gone', 'h', 1, now() - interval '2 days'),"
        "        ('recent', 'h', 2, now() - interval '1 hour')"
    )
    async with start_relay():

        async def forgotten() -> bool:
            rows = await asyncpg_conn.fetch("SELECT instance_id FROM relay_instances")
            return "long-gone" not in {r["instance_id"] for r in rows}

        await wait_until(forgotten, what="the day-old status row deleted")
    remaining = {
        r["instance_id"]
        for r in await asyncpg_conn.fetch("SELECT instance_id FROM relay_instances")
    }
    assert "recent" in remaining
