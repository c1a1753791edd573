"""The relay's PostgreSQL store: what each poll costs the database."""

from __future__ import annotations

import asyncpg

from relay import queries
from relay.cursor import START, PgOutboxStore
from tests.fixtures_relay import emit_events


async def test_the_batch_query_is_planned_once_not_at_every_poll(
    asyncpg_conn: asyncpg.Connection, database_url: str
) -> None:
    """Left to itself PostgreSQL re-plans FETCH_BATCH at every poll (a custom plan, about 125 µs
    of the backend's CPU): its generic estimate assumes ten services per ``unnest``. The relay's
    connection asks for the generic plan, so polls after the first reuse it."""
    await emit_events(asyncpg_conn, 30, services=("identity", "assets"), per_tx=3)
    store = PgOutboxStore(database_url, "test-relay-store")
    try:
        cursors = {"identity": START, "assets": START}
        for _ in range(12):
            batches = await store.fetch(cursors, 500)
            assert sum(len(rows) for rows in batches.values()) == 30
        conn = await store._connection()
        plans = await conn.fetchrow(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
            queries.FETCH_BATCH,
        )
    finally:
        await store.close()
    assert plans is not None
    assert plans["custom_plans"] == 0
    assert plans["generic_plans"] == 12
