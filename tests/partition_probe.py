"""A projection that checks per-aggregate order (the partition tests, PROJECTION_MODULES).

``aggregate_order`` reads ``assets``' ``version_bumped`` events, ``{"version": n}`` with the
aggregate id, and records in ``partition_probe`` the last version applied per aggregate. A
version that is not the last one plus one is an order violation, kept in
``partition_violations`` (the handler does not fail: the test counts them at the end).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from outbox.projections.projection import Projection, register
from outbox.streams.codec import StreamMessage

TABLES = """
CREATE TABLE IF NOT EXISTS partition_probe (aggregate_id text PRIMARY KEY, version int NOT NULL);
CREATE TABLE IF NOT EXISTS partition_violations (
    aggregate_id text NOT NULL, last_version int, version int NOT NULL, consumer text
);
"""

aggregate_order = register(
    Projection("aggregate_order", streams=["assets"], tables=["partition_probe"])
)


@aggregate_order.on_batch("version_bumped")
async def bumped(events: Sequence[StreamMessage], db: Any) -> None:
    for event in events:
        version = int(event.data["version"])
        last = await db.fetchval(
            "SELECT version FROM partition_probe WHERE aggregate_id = $1 FOR UPDATE",
            event.aggregate_id,
        )
        if (last or 0) + 1 != version:
            await db.execute(
                "INSERT INTO partition_violations (aggregate_id, last_version, version)"
                " VALUES ($1, $2, $3)",
                event.aggregate_id,
                last,
                version,
            )
        await db.execute(
            "INSERT INTO partition_probe (aggregate_id, version) VALUES ($1, $2)"
            " ON CONFLICT (aggregate_id) DO UPDATE SET version = EXCLUDED.version",
            event.aggregate_id,
            version,
        )
