"""The projection bench/pipeline.py runs: a small read model, and a NOTIFY per batch.

The notification is delivered when the projection's transaction commits, so the benchmark learns
the moment each event became visible in the read model, not when the handler ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from outbox.projections.projection import Projection, register
from outbox.streams.codec import StreamMessage

CHANNEL = "pipeline_probe"
_IDS_PER_NOTIFY = 200  # 36-character ids; a payload holds at most 8000 bytes

probe = register(Projection("pipeline_probe", streams=["bench"], tables=["bench_probe"]))


@probe.on_batch("probe")
async def apply(events: Sequence[StreamMessage], db: Any) -> None:
    # One statement (one round trip): the upsert and the notifications of its ids.
    newest = {m.data["key"]: m.position or 0 for m in events}
    ids = [m.event_id for m in events]
    chunks = [",".join(ids[i : i + _IDS_PER_NOTIFY]) for i in range(0, len(ids), _IDS_PER_NOTIFY)]
    await db.execute(
        """
        WITH upserted AS (
            INSERT INTO bench_probe AS p (key, version)
            SELECT * FROM unnest($1::text[], $2::bigint[])
            ON CONFLICT (key) DO UPDATE SET version = EXCLUDED.version
             WHERE p.version < EXCLUDED.version)
        SELECT pg_notify($3, chunk) FROM unnest($4::text[]) AS chunk
        """,
        list(newest),
        list(newest.values()),
        CHANNEL,
        chunks,
    )
