"""The example read models converge whatever order their events arrive in.

With PROCESSOR_WORKERS > 1, the consumers of one group may apply an aggregate's events in any
order. The user directory and the asset inventory must end as the fold of the events in outbox
order, for every order of delivery; here every permutation is applied one event at a time
(the worst case: no batch sorts them) against the real tables.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from outbox.envelope import MessagePriority
from outbox.projections.examples.assets import delete_assets, upsert_assets
from outbox.projections.examples.users import delete_users, upsert_users
from outbox.streams.codec import StreamMessage

Handler = Callable[[Sequence[StreamMessage], Any], Awaitable[None]]


def _message(event_type: str, position: int, data: dict[str, Any]) -> StreamMessage:
    return StreamMessage(
        id=f"{position}-0",
        stream="test",
        event_type=event_type,
        service="test",
        data=data,
        priority=MessagePriority.NORMAL,
        timestamp=datetime.now(UTC).timestamp(),
        retry_count=0,
        max_retries=3,
        correlation_id="c",
        event_id=f"00000000-0000-7000-8000-{position:012d}",
        position=position,
    )


def _fold(events: Sequence[StreamMessage], field: str) -> tuple[str | None, bool]:
    """(the data field as of the last upsert, deleted?) in outbox order."""
    value: str | None = None
    deleted = False
    for event in sorted(events, key=lambda e: e.position or 0):
        if event.event_type.endswith("_deleted"):
            deleted = True
        else:
            value, deleted = event.data[field], False
    return value, deleted


USERS = [
    _message("user_created", 10, {"user_id": "u1", "email": "a@example.com"}),
    _message("user_updated", 20, {"user_id": "u1", "email": "b@example.com"}),
    _message("user_deleted", 30, {"user_id": "u1"}),
    _message("user_created", 40, {"user_id": "u1", "email": "c@example.com"}),
]
ASSETS = [
    _message("asset_created", 11, {"asset_id": "a1", "hostname": "h1"}),
    _message("asset_updated", 21, {"asset_id": "a1", "hostname": "h2"}),
    _message("asset_deleted", 31, {"asset_id": "a1"}),
    _message("asset_updated", 41, {"asset_id": "a1", "hostname": "h3"}),
]


async def _converges(
    conn: asyncpg.Connection,
    events: list[StreamMessage],
    handlers: dict[str, Handler],
    table: str,
    field: str,
) -> None:
    # Every non-empty prefix in outbox order (so "deleted last" is covered), each delivered in
    # every possible order.
    checked = 0
    for length in range(1, len(events) + 1):
        subset = events[:length]
        expected = _fold(subset, field)
        for order in itertools.permutations(subset):
            await conn.execute(f"TRUNCATE {table}")
            for event in order:
                await handlers[event.event_type]([event], conn)
            row = await conn.fetchrow(f"SELECT {field}, deleted FROM {table}")
            assert row is not None
            assert (row[field], row["deleted"]) == expected, [e.position for e in order]
            checked += 1
    assert checked == 1 + 2 + 6 + 24


@pytest.mark.parametrize("kind", ["users", "assets"])
async def test_every_delivery_order_ends_as_the_fold(
    asyncpg_conn: asyncpg.Connection, kind: str
) -> None:
    if kind == "users":
        handlers: dict[str, Handler] = {
            "user_created": upsert_users,
            "user_updated": upsert_users,
            "user_deleted": delete_users,
        }
        await _converges(asyncpg_conn, USERS, handlers, "directory_users", "email")
    else:
        handlers = {
            "asset_created": upsert_assets,
            "asset_updated": upsert_assets,
            "asset_deleted": delete_assets,
        }
        await _converges(asyncpg_conn, ASSETS, handlers, "inventory_assets", "hostname")
