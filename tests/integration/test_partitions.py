"""Partitioned streams in one process (decision 0014): routing by aggregate, one owner per
partition, the fence, the epoch barrier. The multi-process runs with kills are in
tests/acceptance/test_partitions_processes.py."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

import outbox
from outbox.partitioning import Partition, Partitioning
from outbox.projections.runner import run_projections
from outbox.relay.admin import request_partitions
from outbox.settings import Settings
from outbox.streams.keys import Keys
from tests.fixtures_projections import configure
from tests.fixtures_relay import StartRelay, wait_until
from tests.partition_probe import TABLES, aggregate_order


def versions(aggregates: int, per_aggregate: int, seed: int = 5) -> list[tuple[str, int]]:
    """Every aggregate's versions 1..per_aggregate, interleaved at random across aggregates."""
    rng = random.Random(seed)
    left = {f"agg-{a}": 1 for a in range(aggregates)}
    order: list[tuple[str, int]] = []
    while left:
        aggregate = rng.choice(sorted(left))
        order.append((aggregate, left[aggregate]))
        left[aggregate] += 1
        if left[aggregate] > per_aggregate:
            del left[aggregate]
    return order


async def emit_versions(
    conn: asyncpg.Connection, order: list[tuple[str, int]], per_tx: int = 40
) -> None:
    for start in range(0, len(order), per_tx):
        async with conn.transaction():
            await outbox.emit_many(
                conn,
                [
                    outbox.EventSpec(
                        "assets", "version_bumped", {"version": v}, aggregate_id=aggregate
                    )
                    for aggregate, v in order[start : start + per_tx]
                ],
            )


@pytest.fixture
async def probe_tables(asyncpg_conn: asyncpg.Connection) -> None:
    await asyncpg_conn.execute(TABLES)


@contextlib.asynccontextmanager
async def consumers(settings: Settings, stem: str) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_projections([aggregate_order], settings, stop=stop, consumer_stem=stem)
    )
    try:
        yield stop
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0


async def applied(conn: asyncpg.Connection, aggregates: int, per_aggregate: int) -> bool:
    rows = await conn.fetch("SELECT version FROM partition_probe")
    return len(rows) == aggregates and all(r["version"] == per_aggregate for r in rows)


async def epoch_started(conn: asyncpg.Connection, epoch: int) -> bool:
    """The relay started ``epoch`` (a request made before that would be replaced by the next:
    the latest count asked for wins)."""
    found = await conn.fetchval("SELECT epoch FROM stream_partitions WHERE stream = 'assets'")
    return found == epoch


@pytest.fixture
def fast(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return configure(
        monkeypatch,
        PROJECTION_BLOCK_MS="100",
        PROCESSOR_WORKERS="2",
        PARTITION_LEASE_S="2",
        RETRY_BASE_DELAY_MS="20",
        RETRY_MAX_DELAY_MS="100",
    )


@pytest.mark.usefixtures("probe_tables")
async def test_each_aggregate_in_order_across_consumers_of_four_partitions(
    fast: Settings,
    start_relay: StartRelay,
    asyncpg_conn: asyncpg.Connection,
    database_url: str,
    redis_client: aioredis.Redis,
) -> None:
    await request_partitions(database_url, "assets", 4)
    order = versions(40, 50)
    await emit_versions(asyncpg_conn, order)
    keys = Keys.for_settings(fast)
    async with start_relay(), consumers(fast, "a"), consumers(fast, "b"):
        await wait_until(
            lambda: applied(asyncpg_conn, 40, 50), timeout_s=60, what="every version applied"
        )
    assert await asyncpg_conn.fetch("SELECT * FROM partition_violations") == []
    assert await asyncpg_conn.fetchval(
        "SELECT count(*) FROM projection_inbox WHERE projection = 'aggregate_order'"
    ) == len(order)
    # The events went to the four partition streams of epoch 1, none to the service's stream.
    lengths = [
        await redis_client.xlen(keys.stream("assets", partition=Partition(1, p))) for p in range(4)
    ]
    assert sum(lengths) == len(order)
    assert all(lengths)
    assert await redis_client.xlen(keys.stream("assets")) == 0
    # Each partition was owned by one consumer; both runners took some.
    owners = await asyncpg_conn.fetch(
        "SELECT partition, fence, checkpoints FROM projection_partitions"
        " WHERE projection = 'aggregate_order' ORDER BY partition"
    )
    assert [r["partition"] for r in owners] == [0, 1, 2, 3]


@pytest.mark.usefixtures("probe_tables")
async def test_changing_the_count_mid_run_never_reorders_an_aggregate(
    fast: Settings,
    start_relay: StartRelay,
    asyncpg_conn: asyncpg.Connection,
    database_url: str,
) -> None:
    """4 partitions, then 8 while events flow and two runners consume: the 8 partitions of the
    new epoch are consumed only once the 4 of the old one are drained."""
    order = versions(30, 60, seed=9)
    first, second = order[:900], order[900:]
    await request_partitions(database_url, "assets", 4)
    async with start_relay(), consumers(fast, "a"), consumers(fast, "b"):
        await emit_versions(asyncpg_conn, first)
        await wait_until(lambda: epoch_started(asyncpg_conn, 1), what="epoch 1 started")
        await request_partitions(database_url, "assets", 8)
        await wait_until(lambda: epoch_started(asyncpg_conn, 2), what="epoch 2 started")
        await emit_versions(asyncpg_conn, second)
        await wait_until(
            lambda: applied(asyncpg_conn, 30, 60), timeout_s=90, what="every version applied"
        )
    assert await asyncpg_conn.fetch("SELECT * FROM partition_violations") == []
    row = await asyncpg_conn.fetchrow("SELECT * FROM stream_partitions WHERE stream = 'assets'")
    partitioning = Partitioning.from_row(dict(row))  # type: ignore[arg-type]
    assert (partitioning.epoch, partitioning.partitions) == (2, 8)
    assert dict(partitioning.counts) == {1: 4, 2: 8}
    drained = await asyncpg_conn.fetch(
        "SELECT epoch, bool_and(drained) AS all_drained FROM projection_partitions"
        " GROUP BY epoch ORDER BY epoch"
    )
    assert [(r["epoch"], r["all_drained"]) for r in drained] == [(1, True), (2, False)]


@pytest.mark.usefixtures("probe_tables")
async def test_partitioning_a_service_waits_for_its_stream_to_be_drained(
    fast: Settings,
    start_relay: StartRelay,
    asyncpg_conn: asyncpg.Connection,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From the service's one stream (read by one consumer, so in order) to 4 partitions: the
    partitions are consumed only once the group on the old stream has everything."""
    one = configure(monkeypatch, PROCESSOR_WORKERS="1")
    order = versions(20, 60, seed=3)
    async with start_relay(), consumers(one, "a"):
        await emit_versions(asyncpg_conn, order[:700])
        await request_partitions(database_url, "assets", 4)
        await wait_until(lambda: epoch_started(asyncpg_conn, 1), what="epoch 1 started")
        await emit_versions(asyncpg_conn, order[700:])
        await wait_until(
            lambda: applied(asyncpg_conn, 20, 60), timeout_s=90, what="every version applied"
        )
    assert await asyncpg_conn.fetch("SELECT * FROM partition_violations") == []


@pytest.mark.usefixtures("probe_tables")
async def test_a_stale_owners_batch_is_refused(
    fast: Settings, asyncpg_conn: asyncpg.Connection, database_url: str
) -> None:
    """An owner whose lease ran out and whose partition was taken over cannot commit: the
    fence check in its batch transaction refuses it and rolls back."""
    from outbox.projections import queries

    await asyncpg_conn.execute(
        "INSERT INTO projection_partitions (projection, stream, epoch, partition, owner, fence,"
        " lease_until) VALUES ('aggregate_order', 'assets', 1, 0, 'old', 1, now() - interval '1 s')"
    )
    claim = queries.CLAIM_PARTITION
    rows = await asyncpg_conn.fetch(
        claim.asyncpg_sql,
        *claim.asyncpg_args(
            {
                "owner": "new",
                "lease_s": 10.0,
                "projection": "aggregate_order",
                "service": "assets",
                "epoch": 1,
                "partition": 0,
            }
        ),
    )
    assert rows[0]["fence"] == 2
    check = queries.CHECK_FENCE
    args: dict[str, Any] = {
        "projection": "aggregate_order",
        "service": "assets",
        "epoch": 1,
        "partition": 0,
    }
    async with asyncpg_conn.transaction():
        stale = await asyncpg_conn.fetch(
            check.asyncpg_sql, *check.asyncpg_args({**args, "owner": "old", "fence": 1})
        )
        current = await asyncpg_conn.fetch(
            check.asyncpg_sql, *check.asyncpg_args({**args, "owner": "new", "fence": 2})
        )
    assert stale == []
    assert len(current) == 1


@pytest.mark.usefixtures("probe_tables")
async def test_the_monitor_shows_each_partitions_owner_and_lag(
    fast: Settings,
    start_relay: StartRelay,
    asyncpg_conn: asyncpg.Connection,
    database_url: str,
    monitor_server: Any,
) -> None:
    await request_partitions(database_url, "assets", 4)
    await emit_versions(asyncpg_conn, versions(20, 10))
    async with start_relay(), consumers(fast, "a"), monitor_server(refresh_interval_s=0.2) as live:
        await wait_until(lambda: applied(asyncpg_conn, 20, 10), what="every version applied")

        async def shown() -> bool:
            rows = (await live.http.get("/api/snapshot")).json()["partitions"]
            return len(rows) == 4 and all(
                r["owner"] == "a-0" and r["lag_entries"] == 0 for r in rows
            )

        await wait_until(shown, what="the monitor showing the owners and no lag")
        snapshot = (await live.http.get("/api/snapshot")).json()
        keys = {s["key"] for s in snapshot["streams"]}
        assert Keys.for_settings(fast).stream("assets", partition=Partition(1, 2)) in keys
        published = {r["stream"]: r["published"] for r in snapshot["outbox"]["streams"]}
        assert published["assets"] == 200


def test_the_partitions_command(
    settings: Settings, capsys: pytest.CaptureFixture[str], database_url: str
) -> None:
    from outbox.cli.main import main

    assert main(["partitions", "list"]) == 0
    assert "no partitioned service" in capsys.readouterr().out
    assert main(["partitions", "set", "assets", "4"]) == 0
    assert "4 partitions asked for" in capsys.readouterr().out
    assert main(["partitions", "list"]) == 0
    assert "assets\tepoch=0\tpartitions=1, 4 asked for" in capsys.readouterr().out
    assert main(["partitions", "set", "assets", "2000"]) == 2
    assert "partitions must be 1 to 1024" in capsys.readouterr().err
    assert main(["partitions", "set", "Bad Name", "4"]) == 2
