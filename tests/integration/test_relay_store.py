"""The relay's PostgreSQL store: what each poll costs the database."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from outbox.naming import in_schema
from outbox.projections.store import fields_from_row
from outbox.relay import queries
from outbox.relay.cursor import START, PgOutboxStore
from outbox.streams.codec import decode_entry
from tests.fixtures_relay import emit_events


async def test_the_batch_query_is_planned_once_not_at_every_poll(
    asyncpg_conn: asyncpg.Connection, database_url: str
) -> None:
    """Left to itself PostgreSQL re-plans FETCH_BATCH at every poll (a custom plan, about 125 µs
    of the backend's CPU): its generic estimate assumes ten services per ``unnest``. The relay's
    connection asks for the generic plan, so polls after the first reuse it."""
    await emit_events(asyncpg_conn, 30, services=("identity", "assets"), per_tx=3)
    store = PgOutboxStore(database_url, "test-relay-store", max_retries=3)
    try:
        cursors = {"identity": START, "assets": START}
        for _ in range(12):
            batches = await store.fetch(cursors, 500)
            assert sum(len(rows) for rows in batches.values()) == 30
        conn = await store._connection()
        plans = await conn.fetchrow(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
            in_schema(queries.FETCH_BATCH, "public"),  # as the store runs it
        )
    finally:
        await store.close()
    assert plans is not None
    assert plans["custom_plans"] == 0
    assert plans["generic_plans"] == 12


# Rows as a service may store them: every optional field present, absent or empty, each
# priority, and text that JSON must escape (quotes, backslashes, control characters, non-ASCII,
# U+2028) in the payload, the headers and the plain text columns.
_TRICKY = 'q"uote \\back\\slash \n\t\r\x01 Zoë 日本 \u2028 😀'
_ROWS: list[dict[str, Any]] = [
    {"priority": 1, "payload": {"user_id": 1}},
    {
        "priority": 3,
        "payload": {"text": _TRICKY, "nested": [1, 2.5, None, True], "big": 10**30},
        "headers": {"tenant": _TRICKY},
        "correlation_id": _TRICKY,
        "causation_id": "cmd-7",
        "user_id": "admin",
        "aggregate_id": "user-7",
        "dedup_key": "user-7-created",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    },
    {
        "priority": 0,
        "payload": {},
        "headers": {},
        "causation_id": "",
        "user_id": "",
        "dedup_key": "",
    },
    {"priority": 2, "payload": {"blob": "x" * 300_000}, "aggregate_id": _TRICKY},
]


async def test_fetched_fields_are_the_codecs_entry(
    asyncpg_conn: asyncpg.Connection, database_url: str
) -> None:
    """PostgreSQL encodes each entry (relay.queries.ENTRY_FIELDS); streams.codec writes the same
    entry in Python for everything else. The two must agree field for field and in order."""
    for i, row in enumerate(_ROWS):
        await asyncpg_conn.execute(
            """INSERT INTO outbox_events (event_id, stream, event_type, source, priority, payload,
                   headers, correlation_id, causation_id, user_id, aggregate_id, dedup_key,
                   traceparent)
               VALUES ($1, 'identity', 'user_created', 'identity-api', $2, $3::jsonb,
                   $4::jsonb, $5, $6, $7, $8, $9, $10)""",
            uuid.uuid4(),
            row["priority"],
            json.dumps(row["payload"]),
            None if "headers" not in row else json.dumps(row["headers"]),
            row.get("correlation_id", f"corr-{i}"),
            row.get("causation_id"),
            row.get("user_id"),
            row.get("aggregate_id"),
            row.get("dedup_key"),
            row.get("traceparent"),
        )
    stored = await asyncpg_conn.fetch("SELECT * FROM outbox_events ORDER BY txid, position")
    store = PgOutboxStore(database_url, "test-relay-store", max_retries=7)
    try:
        fetched = (await store.fetch({"identity": START}, 500))["identity"]
    finally:
        await store.close()
    assert [r["position"] for r in fetched] == [r["position"] for r in stored]
    for row, got in zip(stored, fetched, strict=True):
        flat = json.loads(got["fields"])
        assert all(isinstance(value, str) for value in flat)
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        assert len(fields) * 2 == len(flat)  # no field twice
        expected = fields_from_row(row, max_retries=7)
        assert list(fields) == list(expected)
        # Same instant, possibly other digits (PostgreSQL's numeric text vs Python's float repr).
        assert float(fields.pop("timestamp")) == float(expected.pop("timestamp"))
        assert fields == expected
        message = decode_entry("s", "1-0", {k.encode(): v.encode() for k, v in fields.items()})
        assert message.occurred_at == row["occurred_at"]
        assert message.data == json.loads(row["payload"])
