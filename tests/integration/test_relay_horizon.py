"""The relay's horizon (decision 0019): a transaction that cannot write to the outbox's database
never holds the relay back; one that can still does while it is young (and always with
RELAY_DEFER_AFTER_MS=0: older ones are deferred, tests/integration/test_relay_deferral.py), and
its events arrive once it commits.

Each test first proves the situation is real: the statement snapshot's xmin is held back by the
open transaction, exactly what stalled the relay before.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

import outbox
from outbox.relay.cursor import ASK_EVERY
from outbox.relay.queries import HORIZON
from outbox.settings import Settings
from outbox.streams.keys import Keys
from tests.fixtures_postgres import OwnPostgres
from tests.fixtures_relay import (
    Polls,
    StartRelay,
    cursor_order_ok,
    emit_events,
    open_write_transaction,
    published,
    wait_until,
)


async def _xmin_and_horizon(conn: asyncpg.Connection) -> tuple[int, int]:
    """The snapshot's xmin and the relay's horizon, asking about every running transaction."""
    row = await conn.fetchrow(
        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin,"
        f" h.horizon::text::bigint AS horizon"
        f" FROM {HORIZON.replace('$7', '$1')} AS h(horizon, deferred)",
        ASK_EVERY,
    )
    assert row is not None
    return row["xmin"], row["horizon"]


@pytest.fixture
async def other_database() -> AsyncIterator[str]:
    """Another database of the same server, for a foreign transaction."""
    name = f"outbox_foreign_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(Settings().libpq_url().rsplit("/", 1)[0] + "/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Settings().libpq_url().rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_a_write_transaction_in_another_database_does_not_hold_the_relay(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
    other_database: str,
) -> None:
    """One open before the relay starts, and one that begins while it runs (asked about once
    it has run FOREIGN_AFTER_S): neither holds the events emitted beside it."""
    keys = Keys(relay_settings.stream_prefix)
    services = ("identity", "assets")

    async def published_count(n: int) -> bool:
        return len(await published(redis_client, keys, services)) >= n

    async with open_write_transaction(other_database) as (_, foreign_xid):
        ids = await emit_events(asyncpg_conn, 300, services=services, per_tx=30)
        xmin, horizon = await _xmin_and_horizon(asyncpg_conn)
        assert xmin <= foreign_xid < horizon  # held back before, passed over now
        async with start_relay():
            # While the foreign transaction is still open.
            await wait_until(lambda: published_count(len(ids)), timeout_s=15, what="events past it")
            async with open_write_transaction(other_database) as (_, second_xid):
                more = await emit_events(asyncpg_conn, 100, services=services, per_tx=10)
                xmin, horizon = await _xmin_and_horizon(asyncpg_conn)
                assert xmin == foreign_xid < second_xid < horizon
                await wait_until(
                    lambda: published_count(len(ids) + len(more)),
                    timeout_s=15,
                    what="events past one that began while the relay ran",
                )
        found = await published(redis_client, keys, services)
        assert Counter(found) == Counter(ids + more)
        assert await cursor_order_ok(asyncpg_conn, redis_client, keys.stream("identity"))


async def test_without_deferral_a_write_transaction_in_this_database_holds_the_relay(
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    """It may still write an event (this one does, after the later ones committed): passing it
    over without deferring it would skip that event for ever. RELAY_DEFER_AFTER_MS=0 never
    defers, so it holds for as long as it runs."""
    keys = Keys(relay_settings.stream_prefix)
    stream = keys.stream("identity")
    # Committed before the held transaction began: the relay publishes it, which shows that it
    # polled while the held one was open and the later events committed.
    marker = await emit_events(asyncpg_conn, 1, services=("assets",))
    held = await asyncpg.connect(database_url)
    tx = held.transaction()
    await tx.start()
    await held.execute("CREATE TEMP TABLE held_open (n int)")  # has an xid, no event yet
    xid = int(await held.fetchval("SELECT pg_current_xact_id()::text"))
    later = await emit_events(asyncpg_conn, 50, per_tx=10)
    async with start_relay(relay_defer_after_ms=0) as relay:
        polls = Polls(relay)
        xmin, horizon = await _xmin_and_horizon(asyncpg_conn)
        assert xmin == horizon == xid

        async def marker_published() -> bool:
            return await published(redis_client, keys, ("assets",)) == marker

        await wait_until(marker_published, what="the event committed before")
        await polls.wait_for_one_more()
        assert await published(redis_client, keys, ("identity",)) == []
        late = await outbox.emit(held, service="identity", event_type="late", data={})
        await tx.commit()

        async def all_published() -> bool:
            return len(await published(redis_client, keys, ("identity",))) >= 51

        await wait_until(all_published, what="the held transaction's and the later events")
    await held.close()
    found = await published(redis_client, keys, ("identity",))
    assert Counter(found) == Counter([*later, str(late.event_id)])
    assert found[0] == str(late.event_id)  # the lowest txid: first in cursor order
    assert await cursor_order_ok(asyncpg_conn, redis_client, stream)


async def test_prepared_transactions_of_another_database_do_not_hold_and_of_this_one_do(
    own_postgres: OwnPostgres,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    """Two-phase commit on a server of the test's own (max_prepared_transactions > 0); without
    deferral (RELAY_DEFER_AFTER_MS=0), which test_relay_deferral covers."""
    outbox_url = own_postgres.create_database("outbox")
    other_url = own_postgres.create_database("other", migrated=False)
    keys = Keys(relay_settings.stream_prefix)
    other = await asyncpg.connect(other_url)
    conn = await asyncpg.connect(outbox_url)
    try:
        await other.execute("CREATE TABLE t (n int)")
        await other.execute("BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'foreign_2pc'")
        foreign_xid = int(
            await other.fetchval(
                "SELECT transaction::text FROM pg_prepared_xacts WHERE gid = 'foreign_2pc'"
            )
        )
        first = await emit_events(conn, 40, per_tx=10)
        xmin, horizon = await _xmin_and_horizon(conn)
        assert xmin <= foreign_xid < horizon
        settings = {"database_url": SecretStr(outbox_url), "relay_defer_after_ms": 0}
        async with start_relay(**settings) as relay:
            polls = Polls(relay)

            async def count_is(n: int) -> bool:
                return len(await published(redis_client, keys, ("identity",))) >= n

            await wait_until(lambda: count_is(40), what="events past a foreign prepared one")
            # A prepared transaction of this database may commit an event: it holds.
            await conn.execute(
                "BEGIN; INSERT INTO outbox_events (event_id, stream, event_type, source, payload,"
                " correlation_id) VALUES (gen_random_uuid(), 'identity', 'prepared', 'identity',"
                " '{}', 'c'); PREPARE TRANSACTION 'own_2pc'"
            )
            own_xid = int(
                await conn.fetchval(
                    "SELECT transaction::text FROM pg_prepared_xacts WHERE gid = 'own_2pc'"
                )
            )
            second = await emit_events(conn, 20, per_tx=10)
            xmin, horizon = await _xmin_and_horizon(conn)
            assert xmin == foreign_xid < horizon == own_xid
            await polls.wait_for_one_more()
            assert len(await published(redis_client, keys, ("identity",))) == 40
            await conn.execute("COMMIT PREPARED 'own_2pc'")
            await wait_until(lambda: count_is(61), what="the prepared event and the rest")
        found = await published(redis_client, keys, ("identity",))
        assert len(found) == len(set(found)) == 61
        assert set(first + second) < set(found)
    finally:
        await other.execute("ROLLBACK PREPARED 'foreign_2pc'")
        await other.close()
        await conn.close()
