"""Deferred transactions (decision 0020): a long write transaction of the outbox's own database
holds no service's events; its own events are published once, after its commit, behind every
event already published.

Each test first shows the transaction really is running and deferred (in relay_deferred) while
later events arrive, then ends it and checks every event arrived exactly once, in cursor order.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import asyncpg
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

import outbox
from outbox.relay import deferral, queries
from outbox.relay.cursor import ASK_EVERY, Cursor, PgOutboxStore
from outbox.relay.errors import DatabaseMismatchError
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

#: Short, so the tests do not wait a quarter of a second for each deferral.
DEFER_MS = 100.0


async def _deferred(conn: asyncpg.Connection) -> list[int]:
    rows: list[int] = await conn.fetchval("SELECT txids FROM relay_deferred")
    return rows


async def _count_published(client: aioredis.Redis, keys: Keys, services: tuple[str, ...]) -> int:
    return len(await published(client, keys, services))


async def test_a_long_transaction_is_deferred_and_its_events_follow_its_commit(
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    services = ("identity", "assets")
    async with open_write_transaction(database_url) as (held, xid):
        early = await outbox.emit(held, service="identity", event_type="early", data={"n": 0})
        async with start_relay(relay_defer_after_ms=DEFER_MS):
            later = await emit_events(asyncpg_conn, 200, services=services, per_tx=20)
            # Published while the older transaction still runs: it no longer holds them.
            await wait_until(
                lambda: _has(redis_client, keys, services, len(later)), what="the later events"
            )
            assert await _deferred(asyncpg_conn) == [xid]
            late = await outbox.emit(held, service="identity", event_type="late", data={"n": 1})
            more = await emit_events(asyncpg_conn, 20, services=services, per_tx=5)
            await held.execute("COMMIT")
            total = len(later) + len(more) + 2
            await wait_until(
                lambda: _has(redis_client, keys, services, total), what="the deferred events"
            )
            await wait_until(lambda: _none_deferred(asyncpg_conn), what="the restamp")
        found = await published(redis_client, keys, services)
        mine = [str(early.event_id), str(late.event_id)]
        assert Counter(found) == Counter([*later, *more, *mine])
        identity = await published(redis_client, keys, ("identity",))
        # After every event published before its commit, in its emit order.
        assert identity.index(mine[0]) < identity.index(mine[1])
        assert all(identity.index(e) < identity.index(mine[0]) for e in later if e in identity)
        # Its rows moved to one transaction of the relay's, above its own txid.
        txids = await asyncpg_conn.fetch(
            "SELECT DISTINCT txid::text::bigint AS t FROM outbox_events WHERE event_id = ANY($1)",
            [early.event_id, late.event_id],
        )
        assert len(txids) == 1
        assert txids[0]["t"] > xid
        for service in services:
            assert await cursor_order_ok(asyncpg_conn, redis_client, keys.stream(service))


async def _has(client: aioredis.Redis, keys: Keys, services: tuple[str, ...], n: int) -> bool:
    return await _count_published(client, keys, services) >= n


async def _is_deferred(conn: asyncpg.Connection, xid: int) -> bool:
    return xid in await _deferred(conn)


async def _none_deferred(conn: asyncpg.Connection) -> bool:
    return await _deferred(conn) == []


async def test_a_writer_that_waited_for_a_deferred_transaction_comes_after_it(
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    """Per aggregate: a long job holds an aggregate's row lock; a short request that updates the
    same aggregate waits for it (its transaction id taken before the wait), then commits after
    it. Its event is published after the job's, though its txid is lower than any the job's rows
    could be moved to after the job ended."""
    keys = Keys(relay_settings.stream_prefix)
    await asyncpg_conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, v int)")
    await asyncpg_conn.execute("INSERT INTO accounts VALUES (1, 0)")
    request = await asyncpg.connect(database_url)
    try:
        async with (
            open_write_transaction(database_url) as (job, xid),
            start_relay(relay_defer_after_ms=DEFER_MS),
        ):
            await job.execute("UPDATE accounts SET v = v + 1 WHERE id = 1")
            first = await outbox.emit(
                job, service="identity", event_type="job", data={}, aggregate_id="account-1"
            )
            later = await emit_events(asyncpg_conn, 20, per_tx=5)
            await wait_until(lambda: _has(redis_client, keys, ("identity",), 20), what="later")
            assert await _deferred(asyncpg_conn) == [xid]
            await request.execute("BEGIN")
            request_xid = int(await request.fetchval("SELECT pg_current_xact_id()::text"))
            waiting = asyncio.create_task(
                request.execute("UPDATE accounts SET v = v + 10 WHERE id = 1")
            )

            async def request_waits() -> bool:
                return bool(
                    await asyncpg_conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND backend_xid::text = $1",
                        str(request_xid),
                    )
                )

            await wait_until(request_waits, what="the request to wait for the job's lock")
            last = await outbox.emit(
                job, service="identity", event_type="job", data={}, aggregate_id="account-1"
            )
            await job.execute("COMMIT")
            await waiting
            after = await outbox.emit(
                request,
                service="identity",
                event_type="request",
                data={},
                aggregate_id="account-1",
            )
            await request.execute("COMMIT")
            assert xid < request_xid
            await wait_until(lambda: _has(redis_client, keys, ("identity",), 23), what="all")
        found = await published(redis_client, keys, ("identity",))
        assert Counter(found) == Counter(
            [*later, str(first.event_id), str(last.event_id), str(after.event_id)]
        )
        order = [e for e in found if e not in later]
        assert order == [str(first.event_id), str(last.event_id), str(after.event_id)]
        assert await cursor_order_ok(asyncpg_conn, redis_client, keys.stream("identity"))
    finally:
        await request.close()


async def test_a_rolled_back_subtransaction_and_a_rolled_back_transaction_publish_nothing(
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    async with (
        open_write_transaction(database_url) as (kept, kept_xid),
        open_write_transaction(database_url) as (dropped, dropped_xid),
        start_relay(relay_defer_after_ms=DEFER_MS),
    ):
        first = await outbox.emit(kept, service="identity", event_type="kept", data={})
        await kept.execute("SAVEPOINT s")
        await outbox.emit(kept, service="identity", event_type="rolled_back", data={})
        await kept.execute("ROLLBACK TO SAVEPOINT s")
        last = await outbox.emit(kept, service="identity", event_type="kept", data={})
        await outbox.emit(dropped, service="identity", event_type="dropped", data={})
        later = await emit_events(asyncpg_conn, 30, per_tx=10)
        await wait_until(lambda: _has(redis_client, keys, ("identity",), 30), what="later")
        assert sorted(await _deferred(asyncpg_conn)) == sorted([kept_xid, dropped_xid])
        await dropped.execute("ROLLBACK")
        await kept.execute("COMMIT")
        await wait_until(lambda: _has(redis_client, keys, ("identity",), 32), what="the kept")
        await wait_until(lambda: _none_deferred(asyncpg_conn), what="both resolved")
        more = await emit_events(asyncpg_conn, 5, per_tx=5)
        await wait_until(lambda: _has(redis_client, keys, ("identity",), 37), what="after")
    found = await published(redis_client, keys, ("identity",))
    assert Counter(found) == Counter([*later, str(first.event_id), str(last.event_id), *more])
    assert await cursor_order_ok(asyncpg_conn, redis_client, keys.stream("identity"))


async def test_a_prepared_transaction_of_this_database_is_deferred(
    own_postgres: OwnPostgres,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    """Two-phase commit: prepared, it stays in every snapshot until COMMIT PREPARED, and the
    relay passes over it once deferred; its event is published after COMMIT PREPARED."""
    url = own_postgres.create_database("outbox")
    keys = Keys(relay_settings.stream_prefix)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "BEGIN; INSERT INTO outbox_events (event_id, stream, event_type, source, payload,"
            " correlation_id) VALUES (gen_random_uuid(), 'identity', 'prepared', 'identity',"
            " '{}', 'c'); PREPARE TRANSACTION 'own_2pc'"
        )
        xid = int(
            await conn.fetchval(
                "SELECT transaction::text FROM pg_prepared_xacts WHERE gid = 'own_2pc'"
            )
        )
        settings = {"database_url": SecretStr(url), "relay_defer_after_ms": DEFER_MS}
        async with start_relay(**settings):
            later = await emit_events(conn, 40, per_tx=10)
            await wait_until(lambda: _has(redis_client, keys, ("identity",), 40), what="later")
            assert await _deferred(conn) == [xid]
            await conn.execute("COMMIT PREPARED 'own_2pc'")
            await wait_until(lambda: _has(redis_client, keys, ("identity",), 41), what="it")
            await wait_until(lambda: _none_deferred(conn), what="the restamp")
        found = await published(redis_client, keys, ("identity",))
        assert len(found) == len(set(found)) == 41
        assert found[:40] == later
        assert await cursor_order_ok(conn, redis_client, keys.stream("identity"))
    finally:
        if await conn.fetchval("SELECT count(*) FROM pg_prepared_xacts"):
            await conn.execute("ROLLBACK PREPARED 'own_2pc'")
        await conn.close()


async def test_a_read_while_a_deferral_is_in_doubt_reads_nothing(
    database_url: str, asyncpg_conn: asyncpg.Connection
) -> None:
    """Between a deferral's number and its commit, every read returns nothing (its
    transactions may have ended after its check); committed, reads go on."""
    await emit_events(asyncpg_conn, 3, per_tx=3)
    store = PgOutboxStore(database_url, "test-deferral", max_retries=3, defer_after_s=None)
    deferrer = await asyncpg.connect(database_url)
    try:
        assert len((await store.fetch({"identity": Cursor(0, 0)}, 10)).get("identity", [])) == 3
        await deferrer.execute("BEGIN")
        await deferrer.execute(queries.LOCK_DEFERRED)
        number = await deferrer.fetchval(queries.BEGIN_DEFERRAL)
        assert await store.fetch({"identity": Cursor(0, 0)}, 10) == {}
        await deferrer.fetchval(queries.DEFER, [], number)
        assert await store.fetch({"identity": Cursor(0, 0)}, 10) == {}  # not committed yet
        await deferrer.execute("COMMIT")
        assert len((await store.fetch({"identity": Cursor(0, 0)}, 10)).get("identity", [])) == 3
    finally:
        await deferrer.close()
        await store.close()


async def test_a_deferral_that_died_half_way_is_settled(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    """A number taken and never committed (the deferring relay died) leaves reads in doubt;
    the relay settles it after SETTLE_AFTER_S and publishes."""
    keys = Keys(relay_settings.stream_prefix)
    await asyncpg_conn.fetchval(queries.BEGIN_DEFERRAL)  # a deferral that never commits
    ids = await emit_events(asyncpg_conn, 10, per_tx=10)
    async with start_relay(relay_defer_after_ms=DEFER_MS) as relay:
        polls = Polls(relay)
        await polls.wait_for_one_more()
        assert await published(redis_client, keys, ("identity",)) == []
        await wait_until(
            lambda: _has(redis_client, keys, ("identity",), 10),
            timeout_s=deferral.SETTLE_AFTER_S + 10,
            what="the settled relay",
        )
    assert await published(redis_client, keys, ("identity",)) == ids


async def test_a_deferred_transaction_is_kept_from_prune_until_restamped(
    database_url: str, asyncpg_conn: asyncpg.Connection
) -> None:
    """Its rows, ended but not yet moved, are behind the cursor and unpublished."""
    from outbox.relay.prune import prune

    old = "now() - interval '30 days'"
    await asyncpg_conn.execute(
        "INSERT INTO outbox_events (event_id, stream, event_type, source, payload,"
        f" correlation_id, occurred_at) VALUES (gen_random_uuid(), 'identity', 'x', 'identity',"
        f" '{{}}', 'c', {old})"
    )
    xid = await asyncpg_conn.fetchval("SELECT txid FROM outbox_events")
    await asyncpg_conn.execute(
        "INSERT INTO relay_cursors (stream, txid, position) VALUES ('identity', $1, 1 << 60)",
        xid,
    )
    await asyncpg_conn.execute("UPDATE relay_deferred SET txids = ARRAY[$1::xid8]", xid)
    assert (await prune(database_url, timedelta(days=1))).deleted == 0
    await asyncpg_conn.execute("UPDATE relay_deferred SET txids = '{}'")
    assert (await prune(database_url, timedelta(days=1))).deleted == 1


async def test_a_cursor_beyond_the_databases_transactions_is_refused(
    database_url: str, asyncpg_conn: asyncpg.Connection
) -> None:
    """A database restored from a dump, or recreated: its transaction counter is behind the
    stored cursor, and reading on would skip its events up to there."""
    await asyncpg_conn.execute(
        "INSERT INTO relay_cursors (stream, txid, position) VALUES ('identity', $1, 7)",
        ASK_EVERY - 1,
    )
    store = PgOutboxStore(database_url, "test-deferral", max_retries=3)
    try:
        with pytest.raises(DatabaseMismatchError, match="restored from a dump"):
            await store.load(["identity"])
    finally:
        await store.close()
    await asyncpg_conn.execute(
        "UPDATE relay_cursors SET txid = '5', marks = $1::jsonb",
        f'{{"s:identity:events": "{ASK_EVERY - 1}:9"}}',
    )
    store = PgOutboxStore(database_url, "test-deferral", max_retries=3)
    try:
        with pytest.raises(DatabaseMismatchError, match="watermark of s:identity:events"):
            await store.load(["identity"])
    finally:
        await store.close()


async def test_two_relays_on_one_service_with_long_transactions_publish_each_event_once(
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    """Without leases both relays read every service, defer and restamp: still once each."""
    keys = Keys(relay_settings.stream_prefix)
    services = ("identity", "assets")
    expected: list[str] = []
    async with (
        start_relay(exclusive=False, relay_defer_after_ms=DEFER_MS),
        start_relay(exclusive=False, relay_defer_after_ms=DEFER_MS),
    ):
        for round_ in range(4):
            async with open_write_transaction(database_url) as (held, xid):
                for n in range(3):
                    event = await outbox.emit(
                        held, service=services[n % 2], event_type="held", data={"r": round_}
                    )
                    expected.append(str(event.event_id))
                    expected += await emit_events(asyncpg_conn, 20, services=services, per_tx=4)
                    if n == 0:
                        await wait_until(
                            lambda: _is_deferred(asyncpg_conn, xid), what="the deferral"
                        )
                await held.execute("COMMIT")
        await wait_until(
            lambda: _has(redis_client, keys, services, len(expected)), what="every event"
        )
        await wait_until(lambda: _none_deferred(asyncpg_conn), what="every restamp")
    found = await published(redis_client, keys, services)
    assert Counter(found) == Counter(expected)
    for service in services:
        assert await cursor_order_ok(asyncpg_conn, redis_client, keys.stream(service))


async def test_watermarks_beyond_the_database_are_refused(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    """Redis holds a watermark this database cannot have written (an asynchronous replica
    promoted before it received the last commits, whose txids it will hand out again): the
    relay stops publishing and says why, instead of letting the watermark skip new events."""
    keys = Keys(relay_settings.stream_prefix)
    stream = keys.stream("identity")
    first = await emit_events(asyncpg_conn, 5, per_tx=5)
    async with start_relay() as relay:
        await wait_until(lambda: _has(redis_client, keys, ("identity",), 5), what="the first")
        await redis_client.set(keys.watermark(stream), f"{ASK_EVERY - 10}:1")

        async def refused() -> bool:
            return "beyond this database's next transaction id" in (relay.status.last_error or "")

        await wait_until(refused, what="the refusal")
        refused_at = relay.status.last_error_at
        later = await emit_events(asyncpg_conn, 5, per_tx=5)

        async def refused_again() -> bool:
            return relay.status.last_error_at != refused_at and await refused()

        await wait_until(refused_again, what="a round after the new events, refused too")
    assert await published(redis_client, keys, ("identity",)) == first
    assert later
