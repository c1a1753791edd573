"""Redis Sentinel: a primary, its replica and three sentinels of the machine's ``redis-server``.

The relay, the projections, the monitor and the original document's client find the primary
through the sentinels (``REDIS_STREAMS_URL=redis+sentinel://…`` or ``REDIS_SENTINELS``) and follow
it through a failover under load: every event ends up once in its stream, in order, and once in
the read model; what the new primary had not received is published again from the outbox.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import asyncpg
import pytest
import redis.exceptions
from pydantic import SecretStr

import outbox
from outbox.projections.examples import user_directory
from outbox.settings import Settings
from outbox.streams import RedisStreamsClient
from outbox.streams.connection import client_from_url, parse_sentinel_url
from outbox.streams.keys import Keys
from tests.fixtures_cluster import SentinelServers
from tests.fixtures_monitor import MonitorFactory
from tests.fixtures_projections import Runner
from tests.fixtures_relay import StartRelay, cursor_order_ok, published, wait_until

pytestmark = pytest.mark.slow


def test_the_sentinel_url_says_where_the_sentinels_are() -> None:
    sentinels, master, options = parse_sentinel_url(
        "rediss+sentinel://app:s%40cret@h1:26379,h2:26380/orders/3?sentinel_password=x"
    )
    assert sentinels == [("h1", 26379), ("h2", 26380)]
    assert master == "orders"
    assert options == {
        "db": 3,
        "username": "app",
        "password": "s@cret",
        "ssl": True,
        "sentinel_password": "x",
    }
    composed = Settings(
        redis_streams_url=SecretStr("redis://:pw@ignored:6379/2"),
        redis_sentinels="h1:26379,h2:26379",
        redis_sentinel_master="orders",
    ).redis_url()
    assert composed == "redis+sentinel://:pw@h1:26379,h2:26379/orders/2"


def _on(servers: SentinelServers) -> dict[str, Any]:
    return {"redis_streams_url": SecretStr(servers.url), "redis_password": None}


def _wait_new_primary(servers: SentinelServers, old_port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if servers.primary_port() != old_port:
                return
        except Exception:  # a sentinel busy electing: ask again
            pass
        time.sleep(0.1)
    raise AssertionError("the sentinels did not fail over")


@pytest.mark.parametrize("how", ["sentinel_failover", "kill_primary"])
async def test_a_primary_failover_under_load_loses_and_repeats_nothing(
    sentinel_servers: SentinelServers,
    relay_settings: Settings,
    start_relay: StartRelay,
    running: Runner,
    asyncpg_conn: asyncpg.Connection,
    how: str,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    settings = relay_settings.model_copy(
        update={**_on(sentinel_servers), "projection_block_ms": 100}
    )
    client = client_from_url(sentinel_servers.url, cluster=False, socket_timeout=5)
    ids: list[str] = []

    async def emit_steadily(rounds: int) -> None:
        for _ in range(rounds):
            async with asyncpg_conn.transaction():
                events = await outbox.emit_many(
                    asyncpg_conn,
                    [
                        outbox.EventSpec(
                            "identity", "user_created", {"user_id": f"u{len(ids) + i}"}
                        )
                        for i in range(10)
                    ],
                )
            ids.extend(str(e.event_id) for e in events)
            await asyncio.sleep(0.02)

    try:
        async with start_relay(**_on(sentinel_servers)), running([user_directory], settings):
            await emit_steadily(20)
            old = sentinel_servers.primary_port()
            writer = asyncio.create_task(emit_steadily(80))
            await asyncio.sleep(0.3)
            if how == "sentinel_failover":
                sentinel_servers.sentinel_client().execute_command(
                    "SENTINEL", "FAILOVER", "mymaster"
                )
            else:
                sentinel_servers.primary.kill()
            await asyncio.to_thread(_wait_new_primary, sentinel_servers, old)
            await writer

            async def all_published() -> bool:
                # The observer asks the sentinels too: right after a failover some of them
                # still flag the old primary as down and answer "no master"; ask again.
                try:
                    return set(await published(client, keys, ("identity",))) >= set(ids)
                except redis.exceptions.ConnectionError:
                    return False

            await wait_until(all_published, timeout_s=60, what="every event on the new primary")

            async def projected() -> bool:
                count = await asyncpg_conn.fetchval("SELECT count(*) FROM directory_users")
                return bool(count == len(ids))

            await wait_until(projected, timeout_s=60, what="every event in the read model")
        assert Counter(await published(client, keys, ("identity",))) == Counter(ids)
        for stream in keys.streams_of("identity"):
            assert await cursor_order_ok(asyncpg_conn, client, stream)
        inbox = await asyncpg_conn.fetchval("SELECT count(*) FROM projection_inbox")
        assert inbox == len(ids)
    finally:
        await client.aclose()


async def test_monitor_and_the_documents_client_through_the_sentinels(
    sentinel_servers: SentinelServers,
    settings: Settings,
    monitor_server: MonitorFactory,
) -> None:
    async with RedisStreamsClient(sentinel_servers.url, prefix=settings.stream_prefix) as streams:
        entry = await outbox.streams.publish_event(streams, "assets", "asset_created", {"a": 1})
        messages = await streams.consume_messages(["assets"], "w1", block_time=100)
        assert [m.id for m in messages] == [entry]
        assert await streams.acknowledge_message("assets", "assets_processors", entry)
    async with monitor_server(**_on(sentinel_servers), refresh_interval_s=0.2) as live:
        ready = await live.http.get("/ready")
        assert ready.status_code == 200, ready.text
        snapshot = (await live.http.get("/api/snapshot")).json()
        keys = Keys(settings.stream_prefix)
        (stream,) = [s for s in snapshot["streams"] if s["key"] == keys.stream("assets")]
        assert stream["length"] == 1
