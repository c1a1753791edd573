"""emit() against the real PostgreSQL: every kind of transaction handle, commit, rollback,
savepoints, dedup keys, bad input, and many concurrent emitters."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

import outbox
from outbox import EventSpec, MessagePriority
from outbox.errors import (
    EventSchemaError,
    InvalidEventError,
    InvalidNameError,
    NotInTransactionError,
    PayloadNotSerializableError,
    PayloadTooLargeError,
    UnknownPriorityError,
    UnsupportedTransactionError,
)
from outbox.settings import Settings

pytestmark = pytest.mark.usefixtures("settings")

KINDS = ["asyncpg", "async_session", "async_connection", "session", "connection"]


class Tx:
    """One open transaction of a given kind, with the handle emit() receives."""

    def __init__(self, handle: Any, is_async: bool) -> None:
        self.handle = handle
        self.is_async = is_async

    async def emit(self, **kwargs: Any) -> outbox.Event:
        result = outbox.emit(self.handle, **kwargs)
        return await result if self.is_async else result  # type: ignore[no-any-return]

    async def emit_many(self, specs: list[EventSpec]) -> list[outbox.Event]:
        result = outbox.emit_many(self.handle, specs)
        return await result if self.is_async else result  # type: ignore[no-any-return]

    async def rolled_back_savepoint(self, work: Callable[[], Awaitable[Any]]) -> None:
        """Run ``work`` inside a savepoint (the handle's own API) and roll the savepoint back."""
        if isinstance(self.handle, asyncpg.Connection):
            savepoint = self.handle.transaction()
            await savepoint.start()
            await work()
            await savepoint.rollback()
        elif self.is_async:
            nested = await self.handle.begin_nested()
            await work()
            await nested.rollback()
        else:
            nested = self.handle.begin_nested()
            await work()
            nested.rollback()

    async def scalar(self, sql: str) -> Any:
        if isinstance(self.handle, asyncpg.Connection):
            return await self.handle.fetchval(sql)
        if self.is_async:
            return (await self.handle.execute(sa.text(sql))).scalar()
        return self.handle.execute(sa.text(sql)).scalar()


TxFactory = Callable[[], AbstractAsyncContextManager[Tx]]


@pytest.fixture(params=KINDS)
def transaction(
    request: pytest.FixtureRequest,
    asyncpg_conn: asyncpg.Connection,
    async_engine: AsyncEngine,
    sync_engine: sa.Engine,
) -> Callable[..., AbstractAsyncContextManager[Tx]]:
    """``async with transaction(commit=True|False) as tx``: a transaction of each kind."""
    kind = request.param

    @asynccontextmanager
    async def open_tx(commit: bool = True) -> AsyncIterator[Tx]:
        if kind == "asyncpg":
            tr = asyncpg_conn.transaction()
            await tr.start()
            try:
                yield Tx(asyncpg_conn, True)
            except BaseException:
                await tr.rollback()
                raise
            await (tr.commit() if commit else tr.rollback())
        elif kind == "async_session":
            async with AsyncSession(async_engine) as session:
                yield Tx(session, True)
                await (session.commit() if commit else session.rollback())
        elif kind == "async_connection":
            async with async_engine.connect() as conn:
                yield Tx(conn, True)
                await (conn.commit() if commit else conn.rollback())
        elif kind == "session":
            with Session(sync_engine) as session:
                yield Tx(session, False)
                session.commit() if commit else session.rollback()
        else:
            with sync_engine.connect() as conn:
                yield Tx(conn, False)
                conn.commit() if commit else conn.rollback()

    return open_tx


async def stored(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM outbox_events ORDER BY position")


async def test_commit_stores_the_event(
    transaction: TxFactory, asyncpg_conn: asyncpg.Connection
) -> None:
    async with transaction() as tx:
        event = await tx.emit(
            service="identity",
            event_type="user_created",
            data={"user_id": "123", "email": "user@example.com"},
            priority=MessagePriority.HIGH,
            user_id="admin",
            aggregate_id=123,
            causation_id="cmd-1",
            correlation_id="req-123",
            headers={"tenant": "acme"},
        )
        assert isinstance(event.event_id, uuid.UUID)
        assert event.position is not None
    rows = await stored(asyncpg_conn)
    assert len(rows) == 1
    row = rows[0]
    assert row["event_id"] == event.event_id
    assert row["position"] == event.position
    assert row["occurred_at"] == event.occurred_at
    assert (row["stream"], row["event_type"], row["source"]) == (
        "identity",
        "user_created",
        "identity",
    )
    assert json.loads(row["payload"]) == {"user_id": "123", "email": "user@example.com"}
    assert row["priority"] == int(MessagePriority.HIGH)
    assert (row["user_id"], row["aggregate_id"], row["causation_id"]) == ("admin", "123", "cmd-1")
    assert row["correlation_id"] == "req-123"
    assert json.loads(row["headers"]) == {"tenant": "acme"}
    assert row["dedup_key"] is None
    # The row carries the id of the transaction that wrote it (the relay's gap-safe cursor).
    assert row["txid"] is not None


async def test_rollback_leaves_nothing(
    transaction: TxFactory, asyncpg_conn: asyncpg.Connection
) -> None:
    async with transaction(commit=False) as tx:
        await tx.emit(service="identity", event_type="user_created", data={"n": 1})
        assert await tx.scalar("SELECT count(*) FROM outbox_events") == 1
    assert await stored(asyncpg_conn) == []


async def test_rolled_back_savepoint_drops_only_its_event(
    transaction: TxFactory, asyncpg_conn: asyncpg.Connection
) -> None:
    async with transaction() as tx:
        await tx.emit(service="identity", event_type="kept", data={})
        await tx.rolled_back_savepoint(
            lambda: tx.emit(service="identity", event_type="dropped", data={})
        )
        await tx.emit(service="identity", event_type="also_kept", data={})
    assert [r["event_type"] for r in await stored(asyncpg_conn)] == ["kept", "also_kept"]


async def test_existing_dedup_key_returns_the_stored_event(
    transaction: TxFactory, asyncpg_conn: asyncpg.Connection
) -> None:
    async with transaction() as tx:
        first = await tx.emit(
            service="assets", event_type="asset_created", data={"v": 1}, dedup_key="asset-9"
        )
    async with transaction() as tx:
        again = await tx.emit(
            service="assets", event_type="asset_created", data={"v": 2}, dedup_key="asset-9"
        )
        other_stream = await tx.emit(
            service="identity", event_type="asset_created", data={"v": 3}, dedup_key="asset-9"
        )
    assert again.event_id == first.event_id
    assert again.data == {"v": 1}
    assert again.position == first.position
    assert other_stream.event_id != first.event_id
    assert len(await stored(asyncpg_conn)) == 2


async def test_emit_many_is_one_batch_with_dedup(
    transaction: TxFactory, asyncpg_conn: asyncpg.Connection
) -> None:
    async with transaction() as tx:
        existing = await tx.emit(service="network", event_type="scan", data={}, dedup_key="s-1")
    specs = [
        EventSpec("network", "scan", {"i": i}, dedup_key=f"s-{i}" if i % 2 else None)
        for i in range(1, 6)
    ]
    async with transaction() as tx:
        events = await tx.emit_many(specs)
        assert await tx.emit_many([]) == []
    assert next(e.event_id for e in events) == existing.event_id
    assert [e.data for e in events] == [{}, {"i": 2}, {"i": 3}, {"i": 4}, {"i": 5}]
    rows = await stored(asyncpg_conn)
    assert len(rows) == 5
    # One statement: every event of the batch was written by the same transaction.
    assert len({r["txid"] for r in rows[1:]}) == 1


BAD_INPUTS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"data": {"x": {1, 2}}}, PayloadNotSerializableError, "data.x"),
    ({"data": {"x": float("nan")}}, PayloadNotSerializableError, "data.x"),
    ({"data": {"x": "a\x00b"}}, PayloadNotSerializableError, "NUL"),
    ({"data": {"x": "y" * 2000}}, PayloadTooLargeError, "over the limit of 1024 bytes"),
    ({"priority": "urgent"}, UnknownPriorityError, "unknown priority"),
    ({"service": ""}, InvalidNameError, "invalid service"),
    ({"service": "identity:events"}, InvalidNameError, "invalid service"),
    ({"event_type": "User Created"}, InvalidNameError, "invalid event type"),
    ({"event_type": "audited", "data": {"who": 3}}, EventSchemaError, "Audited"),
    ({"user_id": ""}, InvalidNameError, "user_id"),
]


class Audited(BaseModel):
    who: str


@pytest.mark.parametrize(("override", "error", "message"), BAD_INPUTS)
async def test_bad_input_raises_before_sending_and_transaction_stays_usable(
    transaction: TxFactory,
    asyncpg_conn: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    override: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    monkeypatch.setenv("OUTBOX_MAX_PAYLOAD_BYTES", "1024")
    outbox.get_settings.cache_clear()
    outbox.register_schema("audited", Audited)
    try:
        kwargs: dict[str, Any] = {"service": "identity", "event_type": "user_created", "data": {}}
        kwargs.update(override)
        async with transaction() as tx:
            with pytest.raises(error, match=message):
                await tx.emit(**kwargs)
            # Nothing reached PostgreSQL, so the transaction is not aborted.
            await tx.emit(service="identity", event_type="user_created", data={"ok": True})
            with pytest.raises(error):
                await tx.emit_many([EventSpec("identity", "fine", {}), EventSpec(**kwargs)])
    finally:
        outbox.schemas.unregister("audited")
    rows = await stored(asyncpg_conn)
    assert [json.loads(r["payload"]) for r in rows] == [{"ok": True}]


async def test_errors_are_typed() -> None:
    assert issubclass(PayloadTooLargeError, InvalidEventError)
    assert issubclass(InvalidEventError, ValueError)


async def test_asyncpg_outside_a_transaction_is_refused(asyncpg_conn: asyncpg.Connection) -> None:
    with pytest.raises(NotInTransactionError, match="outside a transaction"):
        await outbox.emit(asyncpg_conn, service="identity", event_type="x", data={})
    assert await stored(asyncpg_conn) == []


@pytest.mark.parametrize("handle", [None, "postgresql://x", object()])
async def test_unsupported_handles(handle: object) -> None:
    with pytest.raises(UnsupportedTransactionError, match="got"):
        outbox.emit(handle, service="identity", event_type="x", data={})  # type: ignore[call-overload]


async def test_pool_connection_proxy(database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn, conn.transaction():
            event = await outbox.emit(conn, service="ai", event_type="ai_model_updated", data={})
        assert await pool.fetchval("SELECT event_id FROM outbox_events") == event.event_id
    finally:
        await pool.close()


async def test_correlation_id_from_context_else_new(asyncpg_conn: asyncpg.Connection) -> None:
    async with asyncpg_conn.transaction():
        with outbox.correlation_scope("req-42"):
            inside = await outbox.emit(asyncpg_conn, service="identity", event_type="a", data={})
            explicit = await outbox.emit(
                asyncpg_conn, service="identity", event_type="b", data={}, correlation_id="mine"
            )
        outside_1 = await outbox.emit(asyncpg_conn, service="identity", event_type="c", data={})
        outside_2 = await outbox.emit(asyncpg_conn, service="identity", event_type="d", data={})
    assert inside.correlation_id == "req-42"
    assert explicit.correlation_id == "mine"
    assert outside_1.correlation_id != outside_2.correlation_id
    uuid.UUID(outside_1.correlation_id)


async def test_traceparent_from_the_active_span(asyncpg_conn: asyncpg.Connection) -> None:
    context = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    async with asyncpg_conn.transaction():
        untraced = await outbox.emit(asyncpg_conn, service="identity", event_type="a", data={})
        with trace.use_span(NonRecordingSpan(context)):
            traced = await outbox.emit(asyncpg_conn, service="identity", event_type="b", data={})
    assert untraced.traceparent is None
    assert traced.traceparent == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    row = await asyncpg_conn.fetchrow(
        "SELECT traceparent FROM outbox_events WHERE event_id = $1", traced.event_id
    )
    assert row is not None
    assert row["traceparent"] == traced.traceparent


async def _concurrently(count: int, work: Callable[[int], Awaitable[None]]) -> None:
    """Run ``work`` ``count`` times at once, released together by one event."""
    start = asyncio.Event()

    async def one(i: int) -> None:
        await start.wait()
        await work(i)

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    await asyncio.sleep(0)
    start.set()
    await asyncio.gather(*tasks)


async def test_32_concurrent_emitters_store_each_event_once(
    database_url: str, asyncpg_conn: asyncpg.Connection
) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(32)]
    per_emitter = 25
    try:

        async def emitter(i: int) -> None:
            conn = conns[i]
            for n in range(per_emitter):
                async with conn.transaction():
                    await outbox.emit(
                        conn,
                        service="automation",
                        event_type="automation_started",
                        data={"emitter": i, "n": n},
                        aggregate_id=f"{i}-{n}",
                    )
                    # Everyone also races for the same dedup keys: each is stored once.
                    await outbox.emit(
                        conn,
                        service="automation",
                        event_type="automation_scheduled",
                        data={"by": i},
                        dedup_key=f"shared-{n}",
                    )

        await _concurrently(32, emitter)
    finally:
        for conn in conns:
            await conn.close()
    rows = await stored(asyncpg_conn)
    started = [json.loads(r["payload"]) for r in rows if r["event_type"] == "automation_started"]
    assert len(started) == 32 * per_emitter
    assert {(d["emitter"], d["n"]) for d in started} == {
        (i, n) for i in range(32) for n in range(per_emitter)
    }
    scheduled = [r["dedup_key"] for r in rows if r["event_type"] == "automation_scheduled"]
    assert sorted(scheduled) == sorted(f"shared-{n}" for n in range(per_emitter))
    assert len({r["event_id"] for r in rows}) == len(rows)


async def test_concurrent_same_dedup_key_in_open_transactions(database_url: str) -> None:
    """The second emitter waits for the first transaction and then gets its stored event."""
    first_conn = await asyncpg.connect(database_url)
    second_conn = await asyncpg.connect(database_url)
    try:
        first_tx = first_conn.transaction()
        await first_tx.start()
        first = await outbox.emit(
            first_conn, service="identity", event_type="a", data={"who": 1}, dedup_key="k"
        )
        async with second_conn.transaction():
            pending = asyncio.ensure_future(
                outbox.emit(
                    second_conn, service="identity", event_type="a", data={"who": 2}, dedup_key="k"
                )
            )
            # The second INSERT blocks on the first transaction's unique-index entry.
            deadline = asyncio.get_running_loop().time() + 10
            while not await first_conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            ):
                assert asyncio.get_running_loop().time() < deadline, "second emit never waited"
                await asyncio.sleep(0.01)
            assert not pending.done()
            await first_tx.commit()
            second = await pending
        assert second.event_id == first.event_id
        assert second.data == {"who": 1}
    finally:
        await first_conn.close()
        await second_conn.close()


async def test_max_payload_setting_is_read(settings: Settings) -> None:
    assert settings.max_payload_bytes == 1024 * 1024
