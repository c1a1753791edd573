"""``user_directory``: the current users, from identity events."""

from __future__ import annotations

from collections.abc import Sequence

from outbox.projections.examples import queries
from outbox.projections.examples.common import latest, upsert_rows, version
from outbox.projections.projection import Connection, Projection
from outbox.streams.codec import StreamMessage

user_directory = Projection(
    "user_directory",
    streams=["identity"],
    tables=["directory_users"],
    doc="One row per user (tombstoned on delete), from identity events.",
)


def _user_id(message: StreamMessage) -> str:
    return str(message.data.get("user_id") or message.aggregate_id)


@user_directory.on_batch("user_created")
@user_directory.on_batch("user_updated")
async def upsert_users(events: Sequence[StreamMessage], db: Connection) -> None:
    await db.execute(queries.UPSERT_USERS, upsert_rows(events, _user_id, ("email", "name", "role")))


@user_directory.on_batch("user_deleted")
async def delete_users(events: Sequence[StreamMessage], db: Connection) -> None:
    rows = latest(events, _user_id)
    await db.execute(queries.DELETE_USERS, [_user_id(m) for m in rows], [version(m) for m in rows])
