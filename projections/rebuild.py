"""``outbox projections rebuild NAME``: reset a read model and replay it from the outbox log.

Hand-over to live consumption without loss or double apply:

1. The rebuild takes the projection's advisory lock exclusively (session level). Live batches
   take it shared inside their transaction, before touching the inbox, so while the rebuild runs
   they wait and apply nothing.
2. In one transaction: mark the checkpoint ``rebuilding``, empty the read model (``on_reset``
   or TRUNCATE of its tables) and delete the projection's inbox rows.
3. Replay every event of the projection's services from ``outbox_events`` in position order,
   in batches, through the same inbox + handler code as live consumption.
4. Mark the checkpoint ``live`` and release the lock. Waiting live batches then find the
   replayed events in the inbox and skip them; events the replay did not see (committed after
   it read past them) are still unacked in the stream, or not yet relayed, and are applied live.

Every event the group acked before the rebuild was committed in the outbox, so the replay sees
it. Events already pruned from the outbox cannot be replayed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from outbox import audit
from outbox.errors import ConfigurationError
from outbox.naming import DEFAULT_SCHEMA
from outbox.projections import queries
from outbox.projections.apply import apply_batch
from outbox.projections.projection import Connection, Projection
from outbox.projections.store import fields_of_message, message_from_row
from outbox.projections.tenants import NO_TENANTS, TenantView
from outbox.queries import Query
from outbox.streams.codec import StreamMessage
from outbox.streams.dead_letter import DeadLetters, dead_letter_fields
from outbox.streams.keys import Keys

log = logging.getLogger("outbox.projections.rebuild")

Progress = Callable[[int, int], None]

REPLAY_BATCH = 2000


@dataclass(frozen=True)
class RebuildResult:
    events: int
    applied: int
    skipped: int
    failed: int
    through_position: int


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


async def _failed(
    name: str, message: StreamMessage, error: BaseException, letters: DeadLetters | None
) -> None:
    log.error(
        "event=rebuild_event_failed projection=%s event_id=%s error=%r",
        name,
        message.event_id,
        error,
    )
    if letters is not None:
        await letters.add(
            dead_letter_fields(
                source_stream=message.stream,
                group=name,
                entry_id="",
                attempts=1,
                error=f"rebuild: {error.__class__.__name__}: {error}",
                payload=fields_of_message(message),
                consumer="rebuild",
            )
        )


async def rebuild(
    db: Connection,
    projection: Projection,
    keys: Keys,
    *,
    progress: Progress | None = None,
    batch_size: int = REPLAY_BATCH,
    letters: DeadLetters | None = None,
    schema: str = DEFAULT_SCHEMA,
    actor: audit.Actor | None = None,
    tenants: TenantView = NO_TENANTS,
) -> RebuildResult:
    """Rebuild ``projection`` on connection ``db`` (see the module doc).

    An event whose handler fails is left out and, given ``letters``, dead-lettered so it can be
    replayed once the handler is fixed; the later events of its aggregate are still applied,
    in order. Given ``actor``, the audit log gets a ``started`` row in the transaction that
    empties the read model and a ``finished`` one in the transaction that puts it live again
    (``failed``, with the counts so far, when the replay raises).

    ``tenants``: which events the deployment's streams carry (projections/tenants.py); only
    those are replayed, as live consumption sees them. A tenant's process (TENANT_ID) cannot
    rebuild: a projection's read model, inbox and rebuild status are shared by every process of
    it, so emptying them for one tenant would undo every other's.
    """
    name = projection.name
    if tenants.tenant is not None:
        raise ConfigurationError(
            f"projection {name!r} cannot be rebuilt as tenant {tenants.tenant!r}: its read "
            "model, inbox and status are shared by every tenant's process; rebuild it without "
            "TENANT_ID (docs/tenancy.md)"
        )

    async def record(stage: str, counts: dict[str, int], **details: object) -> None:
        if actor is not None:
            await audit.record(
                db,
                "projections.rebuild",
                actor,
                target=name,
                counts=counts,
                details={"stage": stage, **details},
                schema=schema,
            )

    def sql(query: Query) -> Query:
        return query.in_schema(schema)

    await db.execute(queries.LOCK_PROJECTION.asyncpg_sql, name)
    try:
        async with db.transaction():
            await db.execute(sql(queries.START_REBUILD).asyncpg_sql, name)
            if projection.reset_handler is not None:
                await projection.reset_handler(db)
            elif projection.tables:
                await db.execute(
                    "TRUNCATE " + ", ".join(_quote(table) for table in projection.tables)
                )
            status = await db.execute(sql(queries.INBOX_RESET).asyncpg_sql, name)
            await record(
                "started",
                {"inbox_rows_deleted": int(status.split()[-1])},
                tables=list(projection.tables),
            )
        selection = {"streams": projection.streams, **tenants.params(projection.streams)}
        q = sql(queries.OUTBOX_EXTENT)
        extent = await db.fetchrow(q.asyncpg_sql, *q.asyncpg_args(selection))
        total, until = int(extent["events"]), int(extent["max_position"])
        log.info("event=rebuild_started projection=%s events=%d", name, total)
        after = done = applied = skipped = failed = 0
        if progress:
            progress(0, total)
        try:
            while True:
                q = sql(queries.OUTBOX_PAGE)
                rows = await db.fetch(
                    q.asyncpg_sql,
                    *q.asyncpg_args(
                        {**selection, "after": after, "until": until, "limit": batch_size}
                    ),
                )
                if not rows:
                    break
                pending = [message_from_row(row, keys) for row in rows]
                while pending:
                    # The exclusive lock is ours (same session): no shared lock per batch.
                    outcome = await apply_batch(
                        db, projection, pending, take_lock=False, schema=schema
                    )
                    applied += len(outcome.applied)
                    skipped += len(outcome.skipped)
                    for message, error in outcome.failed:
                        failed += 1
                        await _failed(name, message, error, letters)
                    # Events held behind a failed event of their aggregate: that one is left out
                    # (dead-lettered) now, as live consumption does once its retries are spent, so
                    # they are applied after it, in order. Dropping them would lose them for good:
                    # replaying the dead letter brings back only the failed event.
                    pending = outcome.deferred
                after = int(rows[-1]["position"])
                done += len(rows)
                if progress:
                    progress(done, total)
        except Exception as error:
            # What was applied so far stays applied (each batch is its own transaction).
            counts = {"events": done, "applied": applied, "skipped": skipped, "failed": failed}
            try:
                await record("failed", counts, error=f"{error.__class__.__name__}: {error}")
            except audit.AuditError as not_recorded:
                log.error("event=rebuild_not_audited projection=%s error=%s", name, not_recorded)
            raise
        finish = sql(queries.FINISH_REBUILD)
        counts = {"events": done, "applied": applied, "skipped": skipped, "failed": failed}
        async with db.transaction():
            await db.execute(
                finish.asyncpg_sql,
                *finish.asyncpg_args({"projection": name, "position": after, "events": done}),
            )
            await record("finished", counts, through_position=after)
        log.info(
            "event=rebuild_finished projection=%s events=%d applied=%d skipped=%d failed=%d",
            name,
            done,
            applied,
            skipped,
            failed,
        )
        return RebuildResult(done, applied, skipped, failed, after)
    finally:
        await db.execute(queries.UNLOCK_PROJECTION.asyncpg_sql, name)
