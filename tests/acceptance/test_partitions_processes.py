"""Partitioned streams with real processes (decision 0014): 4 partitions, 3 ``outbox project``
processes, 20,000 events over 200 aggregates with versions; one consumer process SIGKILLed and
one added mid-run, the partition count changed from 4 to 8 mid-run. Every aggregate's events
must be applied in order and each exactly once. On the single Redis and on the 3-primary
cluster.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from outbox.relay.admin import request_partitions
from outbox.settings import Settings
from tests.fixtures_cluster import RedisTarget
from tests.fixtures_relay import StartRelay, wait_until
from tests.integration.test_partitions import emit_versions, epoch_started, versions
from tests.partition_probe import TABLES

ROOT = Path(__file__).resolve().parents[2]
AGGREGATES, VERSIONS = 200, 100


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _consumer(env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "outbox.cli.main", "project", "--consumer-name", name],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _members(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM projection_members WHERE heartbeat_at > now() - interval '3 s'"
        )
    )


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_every_aggregate_in_order_through_kills_joins_and_a_new_count(
    settings: Settings,
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_target: RedisTarget,
    start_relay: StartRelay,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    await asyncpg_conn.execute(TABLES)
    await request_partitions(database_url, "assets", 4)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "STREAM_PREFIX": settings.stream_prefix,
        "PROJECTION_MODULES": "tests.partition_probe",
        "PROJECTION_BLOCK_MS": "100",
        "PROCESSOR_WORKERS": "1",
        "PARTITION_LEASE_S": "2",
        "PROJECTION_HEARTBEAT_INTERVAL": "0.5",
        "SHUTDOWN_GRACE": "15",
        **redis_target.env(),
    }
    order = versions(AGGREGATES, VERSIONS, seed=21)
    assert len(order) == 20_000
    overrides = {
        "redis_streams_url": type(settings.redis_streams_url)(redis_target.url),
        "redis_cluster": "true" if redis_target.cluster else "auto",
    }
    async with start_relay(**overrides):
        processes.extend(_consumer(env, f"c{i}") for i in range(3))
        await wait_until(lambda: _members_at_least(asyncpg_conn, 3), what="3 members up")
        chunks = [order[i : i + 1000] for i in range(0, len(order), 1000)]
        for index, chunk in enumerate(chunks):
            await emit_versions(asyncpg_conn, chunk, per_tx=50)
            if index == 4:  # a consumer dies mid-run...
                processes[0].send_signal(signal.SIGKILL)
                processes[0].wait()
            if index == 7:  # ...and another joins
                processes.append(_consumer(env, "c3"))
            if index == 10:  # the partition count changes while events flow
                await request_partitions(database_url, "assets", 8)
                await wait_until(lambda: epoch_started(asyncpg_conn, 2), what="epoch 2")
            await asyncio.sleep(0.2)

        async def everything() -> bool:
            rows = await asyncpg_conn.fetch("SELECT version FROM partition_probe")
            return len(rows) == AGGREGATES and all(r["version"] == VERSIONS for r in rows)

        await wait_until(everything, timeout_s=180, what="every version applied")
    for process in processes[1:]:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for process in processes[1:]:
        assert process.wait(timeout=max(1, deadline - time.monotonic())) == 0
    violations = await asyncpg_conn.fetch("SELECT * FROM partition_violations")
    assert violations == []
    inbox = await asyncpg_conn.fetchrow(
        "SELECT count(*) AS rows, count(DISTINCT event_id) AS events FROM projection_inbox"
        " WHERE projection = 'aggregate_order'"
    )
    assert (inbox["rows"], inbox["events"]) == (len(order), len(order))
    epochs = await asyncpg_conn.fetch(
        "SELECT epoch, count(*) AS partitions, bool_and(drained) AS drained"
        " FROM projection_partitions GROUP BY epoch ORDER BY epoch"
    )
    assert [(r["epoch"], r["partitions"], r["drained"]) for r in epochs] == [
        (1, 4, True),
        (2, 8, False),
    ]
    # Partitions changed hands (the killed process's were taken over, the new one got some).
    moved = await asyncpg_conn.fetchval(
        "SELECT count(*) FROM projection_partitions WHERE epoch = 1 AND fence >= 2"
    )
    assert moved >= 1


async def _members_at_least(conn: asyncpg.Connection, count: int) -> bool:
    return await _members(conn) >= count
