"""No committed event is lost or repeated, whatever order concurrent transactions commit in."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import asyncpg
import pytest
import redis.asyncio as aioredis

import outbox
from outbox.envelope import MessagePriority
from outbox.settings import Settings
from outbox.streams.keys import Keys
from tests.fixtures_relay import StartRelay, cursor_order_ok, published, wait_until

SERVICES = ("identity", "assets", "automation")


async def _emitters(
    database_url: str, *, emitters: int, transactions: int, seed: int
) -> tuple[set[str], set[str]]:
    """Concurrent emitters: random delays, some transactions held open for seconds, some rolled
    back. Returns (committed event ids, rolled-back event ids)."""
    committed: set[str] = set()
    rolled_back: set[str] = set()
    start = asyncio.Event()

    class Rollback(Exception):
        pass

    async def emitter(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        conn = await asyncpg.connect(database_url)
        await start.wait()
        try:
            for _ in range(transactions):
                ids: list[str] = []
                roll_back = rng.random() < 0.15
                try:
                    async with conn.transaction():
                        for _ in range(rng.randint(1, 3)):
                            event = await outbox.emit(
                                conn,
                                service=rng.choice(SERVICES),
                                event_type="thing_happened",
                                data={"emitter": index},
                                priority=rng.choice(list(MessagePriority)),
                            )
                            ids.append(str(event.event_id))
                        # Hold some transactions open long enough for the relay to publish many
                        # later-started ones meanwhile.
                        if rng.random() < 0.04:
                            await asyncio.sleep(rng.uniform(1.0, 2.5))
                        else:
                            await asyncio.sleep(rng.uniform(0, 0.02))
                        if roll_back:
                            raise Rollback
                except Rollback:
                    rolled_back.update(ids)
                else:
                    committed.update(ids)
        finally:
            await conn.close()

    tasks = [asyncio.create_task(emitter(i)) for i in range(emitters)]
    await asyncio.sleep(0.05)
    start.set()  # release every emitter together
    await asyncio.gather(*tasks)
    return committed, rolled_back


async def _check(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    committed: set[str],
    rolled_back: set[str],
) -> None:
    async def all_published() -> bool:
        return set(await published(redis_client, keys, SERVICES)) >= committed

    await wait_until(all_published, timeout_s=30, what="every committed event")
    counts = Counter(await published(redis_client, keys, SERVICES))
    assert set(counts) == committed
    assert not set(counts) & rolled_back
    assert max(counts.values()) == 1
    for service in SERVICES:
        for stream in keys.streams_of(service):
            assert await cursor_order_ok(asyncpg_conn, redis_client, stream)


@pytest.mark.slow
async def test_concurrent_emitters_with_late_commits_and_rollbacks(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    relay_settings: Settings,
    start_relay: StartRelay,
    database_url: str,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    async with start_relay(relay_batch_size=50):
        committed, rolled_back = await _emitters(database_url, emitters=32, transactions=25, seed=1)
        assert rolled_back
        await _check(asyncpg_conn, redis_client, keys, committed, rolled_back)


@pytest.mark.slow
async def test_two_relays_without_leases_publish_each_event_once(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    relay_settings: Settings,
    start_relay: StartRelay,
    database_url: str,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    async with (
        start_relay(exclusive=False, relay_batch_size=7),
        start_relay(exclusive=False, relay_batch_size=13),
    ):
        committed, rolled_back = await _emitters(database_url, emitters=16, transactions=20, seed=2)
        await _check(asyncpg_conn, redis_client, keys, committed, rolled_back)
