"""The projection runtime's PostgreSQL side besides batch apply: consumer slots, heartbeats,
inbox pruning and reading events back from the outbox log."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from outbox.envelope import MessagePriority
from outbox.naming import DEFAULT_SCHEMA
from outbox.projections import queries
from outbox.projections.projection import Connection
from outbox.projections.tenants import NO_TENANTS, TenantView
from outbox.streams.codec import StreamMessage, decode_entry, encode_fields
from outbox.streams.keys import Keys


@dataclass
class Counters:
    """A consumer's counts since its last heartbeat."""

    processed: int = 0
    skipped: int = 0
    failures: int = 0
    dead_lettered: int = 0
    last_error: str | None = None

    def take(self) -> Counters:
        taken = Counters(
            self.processed, self.skipped, self.failures, self.dead_lettered, self.last_error
        )
        self.processed = self.skipped = self.failures = self.dead_lettered = 0
        self.last_error = None
        return taken


async def try_lock_consumer(db: Connection, projection: str, consumer: str) -> bool:
    """Hold ``consumer`` for this session (one live process per consumer name)."""
    return bool(await db.fetchval(queries.TRY_LOCK_CONSUMER.asyncpg_sql, projection, consumer))


async def register_consumer(
    db: Connection,
    projection: str,
    consumer: str,
    host: str,
    pid: int,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> None:
    await db.execute(
        queries.REGISTER_CONSUMER.in_schema(schema).asyncpg_sql, projection, consumer, host, pid
    )


async def heartbeat(
    db: Connection,
    projection: str,
    consumer: str,
    counters: Counters,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> None:
    q = queries.HEARTBEAT.in_schema(schema)
    await db.execute(
        q.asyncpg_sql,
        *q.asyncpg_args(
            {
                "projection": projection,
                "consumer": consumer,
                "processed": counters.processed,
                "skipped": counters.skipped,
                "failures": counters.failures,
                "dead_lettered": counters.dead_lettered,
                "last_error": counters.last_error[:2000] if counters.last_error else None,
            }
        ),
    )


async def consumer_stopped(
    db: Connection, projection: str, consumer: str, *, schema: str = DEFAULT_SCHEMA
) -> None:
    await db.execute(queries.CONSUMER_STOPPED.in_schema(schema).asyncpg_sql, projection, consumer)


async def prune_inbox(
    db: Connection, retention_s: int, limit: int = 10_000, *, schema: str = DEFAULT_SCHEMA
) -> int:
    """Delete inbox rows older than INBOX_RETENTION, in bounded batches; returns the count."""
    total = 0
    while True:
        status = await db.execute(
            queries.INBOX_PRUNE.in_schema(schema).asyncpg_sql, float(retention_s), limit
        )
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < limit:
            return total


def fields_from_row(row: Any, max_retries: int = 0) -> dict[str, str]:
    """The stream entry the relay writes for an outbox row (``SELECT *``), in Python; the relay
    has PostgreSQL encode the same (relay.queries.ENTRY_FIELDS, held equal by a test)."""
    return encode_fields(
        event_id=str(row["event_id"]),
        event_type=row["event_type"],
        service=row["stream"],
        source=row["source"],
        data_json=row["payload"],
        priority=MessagePriority(row["priority"]),
        occurred_at=row["occurred_at"],
        correlation_id=row["correlation_id"],
        position=row["position"],
        max_retries=max_retries,
        causation_id=row["causation_id"],
        user_id=row["user_id"],
        aggregate_id=row["aggregate_id"],
        dedup_key=row["dedup_key"],
        traceparent=row["traceparent"],
        headers_json=row["headers"],
        tenant_id=row["tenant_id"],
    )


def message_from_row(row: Any, keys: Keys) -> StreamMessage:
    """An outbox row as the message a consumer would have read (``id`` empty: no entry)."""
    key = keys.stream(row["stream"], MessagePriority(row["priority"]))
    return decode_entry(key, "", fields_from_row(row))


async def outbox_by_event_ids(
    db: Connection, event_ids: Sequence[str], *, schema: str = DEFAULT_SCHEMA
) -> list[Any]:
    query = queries.OUTBOX_BY_EVENT_IDS.in_schema(schema)
    return list(await db.fetch(query.asyncpg_sql, list(event_ids)))


async def outbox_unapplied(
    db: Connection,
    *,
    projection: str,
    service: str,
    priorities: Sequence[int],
    retention_s: int,
    until_s: float,
    limit: int,
    schema: str = DEFAULT_SCHEMA,
    tenants: TenantView = NO_TENANTS,
) -> list[Any]:
    q = queries.OUTBOX_UNAPPLIED.in_schema(schema)
    params = {
        "projection": projection,
        "service": service,
        "priorities": list(priorities),
        "retention_s": float(retention_s),
        "until_s": until_s,
        "limit": limit,
        **tenants.params([service]),
    }
    return list(await db.fetch(q.asyncpg_sql, *q.asyncpg_args(params)))


def fields_of_message(message: StreamMessage) -> dict[str, str]:
    """The entry fields of a decoded message (for a dead letter that can be replayed); its
    data and headers as stored when encrypted fields were opened (never their plaintext)."""
    data, headers = message.stored or (message.data, message.headers)
    return encode_fields(
        event_id=message.event_id,
        event_type=message.event_type,
        service=message.service,
        source=message.source,
        data_json=json.dumps(data, ensure_ascii=False, separators=(",", ":")),
        priority=message.priority,
        occurred_at=message.occurred_at or datetime.fromtimestamp(message.timestamp, UTC),
        correlation_id=message.correlation_id,
        position=message.position,
        max_retries=message.max_retries,
        causation_id=message.causation_id,
        user_id=message.user_id,
        aggregate_id=message.aggregate_id,
        dedup_key=message.dedup_key,
        traceparent=message.traceparent,
        headers_json=json.dumps(headers) if headers else None,
        tenant_id=message.tenant_id,
    )
