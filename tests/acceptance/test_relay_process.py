"""The real ``outbox relay`` process: SIGKILLed over and over, SIGTERMed, taken over."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from outbox.envelope import MessagePriority
from outbox.relay.cursor import Cursor
from outbox.settings import Settings
from outbox.streams.keys import Keys
from tests.fixtures_cluster import RedisTarget
from tests.fixtures_relay import cursor_order_ok, emit_events, published, wait_until

SERVICES = ("identity", "assets", "automation", "network")
OUTBOX = str(Path(sys.executable).parent / "outbox")


class RelayProcesses:
    """Starts ``outbox relay`` processes for one test and makes sure none outlives it."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": settings.database_url.get_secret_value(),
            "REDIS_STREAMS_URL": settings.redis_streams_url.get_secret_value(),
            "STREAM_PREFIX": settings.stream_prefix,
            "RELAY_HEARTBEAT_INTERVAL_S": "0.2",
            "RELAY_RETRY_MIN_S": "0.05",
            "RELAY_RETRY_MAX_S": "0.5",
        }
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp_path / f"relay-{len(self.started)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [OUTBOX, "relay", *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.started.append(process)
        return process

    def log(self, index: int) -> str:
        return (self.tmp_path / f"relay-{index}.log").read_text()

    def kill_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def relays(settings: Settings, tmp_path: Path) -> Iterator[RelayProcesses]:
    processes = RelayProcesses(settings, tmp_path)
    yield processes
    processes.kill_all()


async def _status(conn: asyncpg.Connection, instance: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM relay_instances WHERE instance_id = $1", instance
    )
    return row


async def _verify_exactly_once(
    conn: asyncpg.Connection, client: aioredis.Redis, keys: Keys, ids: list[str]
) -> None:
    counts = Counter(await published(client, keys, SERVICES))
    duplicates = {event_id: n for event_id, n in counts.items() if n > 1}
    assert not duplicates
    assert set(counts) == set(ids)
    for service in SERVICES:
        for stream in keys.streams_of(service):
            assert await cursor_order_ok(conn, client, stream)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_relay_sigkilled_at_random_moments_publishes_everything_once(
    asyncpg_conn: asyncpg.Connection,
    redis_target: RedisTarget,
    settings: Settings,
    relays: RelayProcesses,
    database_url: str,
) -> None:
    """On the single Redis and on the 3-primary cluster."""
    redis_client = redis_target.client
    relays.env.update(redis_target.env())
    keys = redis_target.keys(settings.stream_prefix)
    total, rate_per_s = 50_000, 2_000
    rng = random.Random(3)

    async def emit_steadily() -> list[str]:
        conn = await asyncpg.connect(database_url)
        ids: list[str] = []
        start = time.monotonic()
        try:
            while len(ids) < total:
                ids += await emit_events(
                    conn, 100, services=SERVICES, priorities=tuple(MessagePriority), per_tx=50
                )
                ahead_s = len(ids) / rate_per_s - (time.monotonic() - start)
                await asyncio.sleep(max(0.0, ahead_s))
        finally:
            await conn.close()
        return ids

    emitting = asyncio.create_task(emit_steadily())
    kills = 0
    while kills < 20 or not emitting.done():
        process = relays.start()
        await asyncio.sleep(rng.uniform(0.4, 1.6))
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    ids = await emitting
    assert kills >= 20
    # Something was published before the final run, by the relays that were killed.
    assert await published(redis_client, keys, SERVICES)

    final = relays.start("--instance-id", "final")

    async def all_published() -> bool:
        row = await _status(asyncpg_conn, "final")
        done = len(await published(redis_client, keys, SERVICES)) >= len(ids)
        return done and row is not None and len(row["streams"]) == len(SERVICES)

    await wait_until(all_published, timeout_s=90, what="every event published")
    final.send_signal(signal.SIGTERM)
    assert final.wait(timeout=20) == 0
    await _verify_exactly_once(asyncpg_conn, redis_client, keys, ids)


@pytest.mark.slow
async def test_sigterm_finishes_the_batch_commits_the_cursor_and_exits_0(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    settings: Settings,
    relays: RelayProcesses,
) -> None:
    keys = Keys(settings.stream_prefix)
    ids = await emit_events(asyncpg_conn, 20_000, services=SERVICES, per_tx=500)
    process = relays.start("--instance-id", "graceful", "--batch-size", "200")

    async def publishing() -> bool:
        return len(await published(redis_client, keys, SERVICES[:1])) > 0

    await wait_until(publishing, what="publishing under way")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    assert "event=relay_stopped" in relays.log(0)

    status = await _status(asyncpg_conn, "graceful")
    assert status is not None
    assert status["stopped_at"] is not None
    assert status["streams"] == []
    # The cursor of every service is exactly where publishing stopped: the highest watermark
    # of its streams. Nothing was left published-but-uncommitted.
    cursors = {
        row["stream"]: Cursor(row["txid"], row["position"])
        for row in await asyncpg_conn.fetch("SELECT stream, txid, position FROM relay_cursors")
    }
    for service in SERVICES:
        marks = [await redis_client.get(keys.watermark(s)) for s in keys.streams_of(service)]
        highest = max((Cursor.parse(m.decode()) for m in marks if m), default=Cursor(0, 0))
        assert cursors[service] == highest
    # The leases went with the session; a new relay picks up where this one stopped.
    relays.start("--instance-id", "second")

    async def all_published() -> bool:
        return len(await published(redis_client, keys, SERVICES)) >= len(ids)

    await wait_until(all_published, timeout_s=60, what="the rest published")
    await _verify_exactly_once(asyncpg_conn, redis_client, keys, ids)


@pytest.mark.slow
async def test_a_killed_relays_services_are_taken_over_within_seconds(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    settings: Settings,
    relays: RelayProcesses,
) -> None:
    keys = Keys(settings.stream_prefix)
    ids = await emit_events(asyncpg_conn, 400, services=SERVICES)
    first = relays.start("--instance-id", "first")

    async def holds(instance: str, count: int) -> bool:
        row = await _status(asyncpg_conn, instance)
        return row is not None and len(row["streams"]) == count

    await wait_until(lambda: holds("first", 4), what="the first relay holding everything")
    relays.start("--instance-id", "second")

    async def shared() -> bool:
        return await holds("first", 2) and await holds("second", 2)

    await wait_until(shared, what="services shared two and two")
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = time.monotonic()
    await wait_until(lambda: holds("second", 4), timeout_s=5, what="takeover")
    assert time.monotonic() - killed_at < 5
    ids += await emit_events(asyncpg_conn, 400, services=SERVICES)

    async def all_published() -> bool:
        return len(await published(redis_client, keys, SERVICES)) >= len(ids)

    await wait_until(all_published, what="everything published")
    await _verify_exactly_once(asyncpg_conn, redis_client, keys, ids)
