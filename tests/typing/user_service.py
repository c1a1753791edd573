"""A service as a user writes it against the public API, checked with ``mypy --strict``
(tests/unit/test_public_api_types.py). Never run: it only has to type-check.

It imports only the public names: ``outbox`` (emit, configure, the envelope and errors),
``outbox.streams`` (the original document's client) and ``outbox.projections``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import outbox
from outbox import EventSpec, MessagePriority
from outbox.projections import Projection, register
from outbox.streams import RedisStreamsClient, StreamMessage, create_streams_client, publish_event


class AssetCreated(BaseModel):
    asset_id: uuid.UUID
    hostname: str


outbox.register_schema("asset_created", AssetCreated)
settings: outbox.EmitSettings = outbox.configure(schema="outbox", max_payload_bytes=65536)


def create_sync(session: Session, hostname: str) -> uuid.UUID:
    event: outbox.Event = outbox.emit(
        session,
        service="assets",
        event_type="asset_created",
        data=AssetCreated(asset_id=uuid.uuid4(), hostname=hostname).model_dump(mode="json"),
        priority=MessagePriority.HIGH,
        aggregate_id=hostname,
    )
    return event.event_id


def create_many(connection: Connection) -> list[int | None]:
    events = outbox.emit_many(
        connection,
        [EventSpec("assets", "asset_scanned", {"n": n}, priority="low") for n in range(3)],
    )
    return [event.position for event in events]


async def create_async(session: AsyncSession) -> str:
    event = await outbox.emit(
        session, service="assets", event_type="asset_deleted", data={"asset_id": "a1"}
    )
    return event.correlation_id


async def create_raw(pool: asyncpg.Pool) -> datetime:
    async with pool.acquire() as conn, conn.transaction():
        with outbox.correlation_scope("job-42") as correlation_id:
            # asyncpg ships no type hints, so its connection is Any: name the result's type.
            event: outbox.Event = await outbox.emit(
                conn,
                service="assets",
                event_type="asset_updated",
                data={"asset_id": "a1"},
                dedup_key=f"{correlation_id}:a1",
            )
    return event.occurred_at


def rejected(session: Session) -> str | None:
    try:
        outbox.emit(session, service="Assets!", event_type="x", data={})
    except outbox.InvalidEventError as error:
        return str(error)
    return None


async def publish_directly() -> list[str]:
    client: RedisStreamsClient = await create_streams_client()
    try:
        entry_id: str = await publish_event(
            client, "assets", "asset_created", {"asset_id": "a1"}, MessagePriority.CRITICAL
        )
        messages: list[StreamMessage] = await client.consume_messages(
            ["assets"], consumer_name="assets-worker-1", batch_size=10
        )
        for message in messages:
            await client.acknowledge_message(message.stream, "assets_processors", message.id)
        return [entry_id, *(m.event_type for m in messages)]
    finally:
        await client.close()


index = register(Projection("asset_index", streams=["assets"], tables=["assets.asset_index"]))


@index.on("asset_created")
async def indexed(event: StreamMessage, db: Any) -> None:
    await db.execute(
        "INSERT INTO assets.asset_index (id, hostname) VALUES ($1, $2)",
        event.data["asset_id"],
        event.data["hostname"],
    )


@index.on_batch("asset_scanned")
async def scanned(events: Sequence[StreamMessage], db: Any) -> None:
    await db.executemany(
        "UPDATE assets.asset_index SET scans = scans + 1 WHERE id = $1",
        [(event.aggregate_id,) for event in events],
    )
