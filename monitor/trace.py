"""The part of a correlation trace that never went through the outbox: events published
directly with ``RedisStreamsClient.publish_message`` / ``publish_event`` or by the original
library. They exist only in Redis, so the trace searches the newest :data:`SCAN_ENTRIES`
entries of each stream (XREVRANGE pages) for their correlation id; older ones are not found.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg

from outbox.monitor import queries
from outbox.naming import DEFAULT_SCHEMA, in_schema
from outbox.streams.codec import MalformedEntryError, StreamMessage, decode_entry, is_marker
from outbox.streams.connection import RedisClient, reply_text

#: Entries searched per stream, newest first.
SCAN_ENTRIES = 10_000
PAGE = 1000


async def direct_events(
    redis: RedisClient, keys: Iterable[str], correlation_id: str, limit: int
) -> list[StreamMessage]:
    """Messages of ``correlation_id`` without an outbox position, oldest first."""
    found: list[StreamMessage] = []
    for key in keys:
        end = "+"
        scanned = 0
        while scanned < SCAN_ENTRIES:
            page: Any = await redis.xrevrange(key, max=end, min="-", count=PAGE)
            if not page:
                break
            for raw_id, fields in page:
                entry_id = reply_text(raw_id)
                if fields.get("position") or fields.get("correlation_id") != correlation_id:
                    continue
                try:
                    message = decode_entry(key, entry_id, fields)
                except MalformedEntryError:
                    continue
                if not is_marker(message):
                    found.append(message)
            scanned += len(page)
            if len(page) < PAGE:
                break
            end = f"({reply_text(page[-1][0])}"
    found.sort(key=lambda m: (m.timestamp, m.stream, m.id))
    return found[:limit]


async def applied_by(
    conn: asyncpg.Connection, event_ids: list[str], schema: str = DEFAULT_SCHEMA
) -> dict[str, list[str]]:
    """The projections that applied each of ``event_ids``."""
    if not event_ids:
        return {}
    rows = await conn.fetch(in_schema(queries.APPLIED_BY, schema), event_ids)
    return {str(row["event_id"]): list(row["applied_by"]) for row in rows}
