"""Helpers shared by the example projections."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from outbox.streams.codec import StreamMessage

#: Outbox positions rank above every time in µs (until the year 148,000): a service that moves
#: from direct XADD (no position: its events are ranked by time) to ``outbox.emit()`` updates
#: what it published before (docs/migrating.md).
OUTBOX_VERSION_BASE = 1 << 62


def version(message: StreamMessage) -> int:
    """Order of an event for last-writer-wins: its outbox position (else its time in µs)."""
    if message.position is not None:
        return OUTBOX_VERSION_BASE + message.position
    return int(message.timestamp * 1_000_000)


def occurred_at(message: StreamMessage) -> datetime:
    return message.occurred_at or datetime.fromtimestamp(message.timestamp, UTC)


def text(value: Any) -> str | None:
    return None if value is None else str(value)


def latest(
    messages: Sequence[StreamMessage], key: Callable[[StreamMessage], str]
) -> list[StreamMessage]:
    """The newest event per key: one statement may not update a row twice (ON CONFLICT)."""
    newest: dict[str, StreamMessage] = {}
    for message in messages:
        ident = key(message)
        current = newest.get(ident)
        if current is None or version(current) < version(message):
            newest[ident] = message
    return list(newest.values())


def upsert_rows(
    messages: Sequence[StreamMessage], key: Callable[[StreamMessage], str], fields: Sequence[str]
) -> str:
    """``[[key, data[field] …, version], …]`` for the newest event per key, as one JSON text for
    ``json_array_elements`` (cheaper than an array parameter per column: see queries.py)."""
    return json.dumps(
        [
            [key(m), *[text(m.data.get(name)) for name in fields], version(m)]
            for m in latest(messages, key)
        ]
    )
