"""``outbox projections rebuild``: equals the live result, and hands over to live consumers."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from outbox import EventSpec
from outbox.projections.examples import user_directory
from outbox.projections.projection import Projection
from outbox.projections.rebuild import rebuild
from outbox.settings import Settings
from outbox.streams.codec import StreamMessage
from outbox.streams.dead_letter import DeadLetters
from outbox.streams.keys import Keys
from tests.acceptance.test_projections_crash import _events, expected_users, read_models
from tests.fixtures_projections import Runner, emit_events, poll, xadd_events


async def _inbox(conn: asyncpg.Connection) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT count(*), count(DISTINCT event_id) FROM projection_inbox "
        "WHERE projection = 'user_directory'"
    )
    assert row is not None
    return int(row[0]), int(row[1])


async def test_rebuild_equals_live_and_hands_over_without_loss_or_double_apply(
    projection_settings: Settings,
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    specs = [spec for spec in _events(6000, seed=5) if spec.service == "identity"]
    first = await emit_events(database_url, specs[: len(specs) // 2])
    await xadd_events(redis_client, keys, first)
    async with running([user_directory], projection_settings):
        await poll(lambda: _count_is(asyncpg_conn, len(first)))
        live_users = (await read_models(asyncpg_conn))[0]
        assert live_users == expected_users(first)

        # Rebuild while live consumption continues and more events flow.
        second = await emit_events(database_url, specs[len(specs) // 2 :])
        feeder = asyncio.create_task(xadd_events(redis_client, keys, second, chunk=100))
        seen: list[tuple[int, int]] = []
        db = await asyncpg.connect(database_url)
        try:
            result = await rebuild(
                db, user_directory, keys, batch_size=500, progress=lambda d, t: seen.append((d, t))
            )
        finally:
            await db.close()
        await feeder
        assert result.events >= len(first)
        assert seen[-1][0] == seen[-1][1] == result.events
        await poll(lambda: _count_is(asyncpg_conn, len(specs)), timeout_s=30)
    assert (await read_models(asyncpg_conn))[0] == expected_users(first + second)
    assert await _inbox(asyncpg_conn) == (len(specs), len(specs))
    status = await asyncpg_conn.fetchrow("SELECT * FROM projection_checkpoints")
    assert status is not None
    assert status["status"] == "live"

    # A rebuild alone reproduces the live result exactly.
    live = await read_models(asyncpg_conn)
    db = await asyncpg.connect(database_url)
    try:
        await rebuild(db, user_directory, keys)
    finally:
        await db.close()
    assert await read_models(asyncpg_conn) == live
    assert await _inbox(asyncpg_conn) == (len(specs), len(specs))


async def _count_is(conn: asyncpg.Connection, expected: int) -> bool:
    return (await _inbox(conn))[0] == expected


async def test_rebuild_applies_events_held_behind_a_failed_one_in_order(
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
) -> None:
    """A failing event is dead-lettered; the later events of its aggregate are still applied,
    after it and in order, in its batch and in the batches after it."""
    await asyncpg_conn.execute("CREATE TABLE rebuild_steps (seq serial, aggregate text, n int)")
    projection = Projection("steps", streams=["identity"], tables=["rebuild_steps"])

    @projection.on("step")
    async def step(message: StreamMessage, db: Any) -> None:
        if message.data["fail"]:
            raise ValueError(f"step {message.data['n']} fails")
        await db.execute(
            "INSERT INTO rebuild_steps (aggregate, n) VALUES ($1, $2)",
            message.aggregate_id,
            message.data["n"],
        )

    # Replay batches of 4: a1 0, 1 (fails), 2, 3 | a1 4, 5, a2 0, 1 | a2 2 … 5.
    specs = [
        EventSpec(
            "identity",
            "step",
            {"n": n, "fail": aggregate == "a1" and n == 1},
            aggregate_id=aggregate,
        )
        for aggregate in ("a1", "a2")
        for n in range(6)
    ]
    await emit_events(database_url, specs)
    db = await asyncpg.connect(database_url)
    try:
        result = await rebuild(
            db, projection, keys, batch_size=4, letters=DeadLetters(redis_client, keys, 3600)
        )
    finally:
        await db.close()

    assert (result.events, result.applied, result.failed) == (12, 11, 1)
    rows = await asyncpg_conn.fetch("SELECT aggregate, n FROM rebuild_steps ORDER BY seq")
    order = {a: [r["n"] for r in rows if r["aggregate"] == a] for a in ("a1", "a2")}
    assert order == {"a1": [0, 2, 3, 4, 5], "a2": [0, 1, 2, 3, 4, 5]}
    letters = await redis_client.xrange(keys.dead_letter)
    assert len(letters) == 1
    assert b"step 1 fails" in letters[0][1][b"error"]
    inbox = await asyncpg_conn.fetchval(
        "SELECT count(*) FROM projection_inbox WHERE projection = 'steps'"
    )
    assert inbox == 11
