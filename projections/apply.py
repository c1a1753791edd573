"""Apply a batch of events to a projection exactly once in effect (DESIGN.md invariant 5).

One PostgreSQL transaction per batch:

1. ``INSERT … SELECT unnest(event_ids) ON CONFLICT DO NOTHING RETURNING event_id`` records the
   whole batch in the inbox in one statement and tells which events are new;
2. handlers run for the new events only, in the given order (a run of consecutive events
   whose types share one ``on_batch`` handler goes to it in one call), each event's encrypted
   fields opened (:mod:`outbox.encryption`) and the event upcast to the current version of its
   schema first (:mod:`outbox.upcasting`; a failed decryption or upcast fails the event like
   its handler would);
3. commit; the caller XACKs afterwards.

Fast path first: the whole batch in one transaction without savepoints. If a handler raises,
that transaction rolls back and the batch is applied again on the slow path: one savepoint per
event, so only the failing events are left out (their inbox rows are released) while the others
commit. Events later in the batch with the same ``aggregate_id`` as a failed one are deferred,
so one aggregate's events are never applied out of order. Connection failures and other
infrastructure errors are not handler failures: they propagate as :class:`TransientError` and the
batch is retried whole.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from time import perf_counter

import asyncpg

from outbox import tracing
from outbox.context import caused_by
from outbox.encryption import ENCRYPTED_HEADER, open_message
from outbox.naming import DEFAULT_SCHEMA
from outbox.projections import queries
from outbox.projections.projection import Connection, Projection
from outbox.streams.codec import StreamMessage
from outbox.upcasting import upcasters

log = logging.getLogger("outbox.projections.apply")

_TRANSIENT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "53300",  # too_many_connections
}


class TransientError(Exception):
    """The database failed, not the handler (connection lost, deadlock…); retry the batch."""


def is_transient(error: BaseException) -> bool:
    if isinstance(error, (OSError, ConnectionError, asyncpg.InterfaceError)):
        return True
    if isinstance(error, asyncpg.PostgresConnectionError):
        return True
    sqlstate = getattr(error, "sqlstate", None)
    return isinstance(error, asyncpg.PostgresError) and sqlstate in _TRANSIENT_SQLSTATES


@dataclass
class Outcome:
    """What happened to each event of a batch."""

    applied: list[StreamMessage] = field(default_factory=list)
    skipped: list[StreamMessage] = field(default_factory=list)  # no handler for the type
    duplicates: list[StreamMessage] = field(default_factory=list)  # already in the inbox
    failed: list[tuple[StreamMessage, BaseException]] = field(default_factory=list)
    deferred: list[StreamMessage] = field(default_factory=list)  # behind a failed aggregate
    #: (event type, seconds) of each handler call of the batch's one-transaction path.
    handler_seconds: list[tuple[str, float]] = field(default_factory=list)

    @property
    def done(self) -> list[StreamMessage]:
        """Events that need no further delivery (to be acked)."""
        return [*self.applied, *self.skipped, *self.duplicates]


async def _claim(
    db: Connection,
    projection: Projection,
    messages: Sequence[StreamMessage],
    take_lock: bool,
    schema: str,
) -> tuple[list[StreamMessage], list[StreamMessage]]:
    """Record ``messages`` in the inbox; return (new, duplicates), both in the given order."""
    event_ids = [message.event_id for message in messages]
    distinct = len(set(event_ids))
    query = (queries.INBOX_CLAIM_LOCKED if take_lock else queries.INBOX_CLAIM).in_schema(schema)
    row = await db.fetchrow(query.asyncpg_sql, projection.name, ",".join(event_ids), distinct)
    if row["claimed"] == distinct and distinct == len(messages):
        return list(messages), []  # the usual case: every event is new and none repeats
    new_ids = set(row["new_ids"] or ()) if row["claimed"] < distinct else set(event_ids)
    fresh: list[StreamMessage] = []
    duplicates: list[StreamMessage] = []
    for message in messages:
        if message.event_id in new_ids:
            new_ids.discard(message.event_id)  # a second copy in the same batch is a duplicate
            fresh.append(message)
        else:
            duplicates.append(message)
    return fresh, duplicates


def _handling(
    projection: Projection, event_type: str, messages: Sequence[StreamMessage], traced: bool
) -> AbstractContextManager[None]:
    """Around one handler call: its span, and for a call on one event that event as the cause
    of whatever the handler emits (a call on several sets no cause: the handler says which
    event caused what with ``outbox.caused_by``; docs/tracing.md)."""
    if traced:
        return _traced_handling(projection, event_type, messages)
    return caused_by(messages[0]) if len(messages) == 1 else nullcontext()


@contextmanager
def _traced_handling(
    projection: Projection, event_type: str, messages: Sequence[StreamMessage]
) -> Iterator[None]:
    with tracing.handling(projection.name, event_type, messages):
        if len(messages) == 1:
            with caused_by(messages[0]):
                yield
        else:
            yield


def _readable(message: StreamMessage) -> None:
    """Bring a message a handler will see to what it reads: encrypted fields opened, then
    upcast (DecryptError, UpcastError fail the event as its handler would). A message with
    nothing encrypted costs one dict lookup."""
    if ENCRYPTED_HEADER in message.headers:
        open_message(message)
    if upcasters.active:
        upcasters.upcast(message)


async def _run_handlers(
    db: Connection,
    projection: Projection,
    fresh: Sequence[StreamMessage],
    outcome: Outcome,
    traced: bool,
) -> None:
    index = 0
    while index < len(fresh):
        message = fresh[index]
        batch_handler = projection.batch_handlers.get(message.event_type)
        if batch_handler is not None:
            end = index + 1
            # One call covers consecutive events whose types share this handler function.
            while end < len(fresh) and (
                projection.batch_handlers.get(fresh[end].event_type) is batch_handler
            ):
                end += 1
            for each in fresh[index:end]:
                _readable(each)
            started = perf_counter()
            with _handling(projection, message.event_type, fresh[index:end], traced):
                await batch_handler(fresh[index:end], db)
            outcome.handler_seconds.append((message.event_type, perf_counter() - started))
            outcome.applied.extend(fresh[index:end])
            index = end
            continue
        handler = projection.handlers.get(message.event_type)
        if handler is not None:
            _readable(message)
            started = perf_counter()
            with _handling(projection, message.event_type, (message,), traced):
                await handler(message, db)
            outcome.handler_seconds.append((message.event_type, perf_counter() - started))
            outcome.applied.append(message)
        else:
            outcome.skipped.append(message)
        index += 1


async def apply_batch(
    db: Connection,
    projection: Projection,
    messages: Sequence[StreamMessage],
    *,
    take_lock: bool = True,
    schema: str = DEFAULT_SCHEMA,
) -> Outcome:
    """Apply ``messages`` (in order) in one transaction on ``db``; see the module doc.
    ``schema`` is the one the inbox is in (OUTBOX_SCHEMA)."""
    if not messages:
        return Outcome()
    # Asked once per batch: without an SDK provider each handler call costs only its cause.
    traced = tracing.enabled()
    with tracing.projection_batch(projection.name, messages):
        return await _apply_batch(db, projection, messages, take_lock, schema, traced)


async def _apply_batch(
    db: Connection,
    projection: Projection,
    messages: Sequence[StreamMessage],
    take_lock: bool,
    schema: str,
    traced: bool,
) -> Outcome:
    try:
        return await _fast_path(db, projection, messages, take_lock, schema, traced)
    except TransientError:
        raise
    except Exception as error:
        if is_transient(error):
            raise TransientError(str(error)) from error
        log.info(
            "event=batch_fallback projection=%s events=%d error=%r",
            projection.name,
            len(messages),
            error,
        )
    try:
        return await _slow_path(db, projection, messages, take_lock, schema, traced)
    except TransientError:
        raise
    except Exception as error:
        if is_transient(error):
            raise TransientError(str(error)) from error
        raise


async def _fast_path(
    db: Connection,
    projection: Projection,
    messages: Sequence[StreamMessage],
    take_lock: bool,
    schema: str,
    traced: bool,
) -> Outcome:
    outcome = Outcome()
    async with db.transaction():
        fresh, outcome.duplicates = await _claim(db, projection, messages, take_lock, schema)
        await _run_handlers(db, projection, fresh, outcome, traced)
    return outcome


async def _slow_path(
    db: Connection,
    projection: Projection,
    messages: Sequence[StreamMessage],
    take_lock: bool,
    schema: str,
    traced: bool,
) -> Outcome:
    outcome = Outcome()
    async with db.transaction():
        fresh, outcome.duplicates = await _claim(db, projection, messages, take_lock, schema)
        failed_aggregates: set[str] = set()
        for message in fresh:
            if message.aggregate_id is not None and message.aggregate_id in failed_aggregates:
                outcome.deferred.append(message)
                continue
            try:
                async with db.transaction():  # SAVEPOINT: a failure undoes this event only
                    if projection.handles(message.event_type):
                        _readable(message)
                        with _handling(projection, message.event_type, (message,), traced):
                            applied = await projection.apply_one(message, db)
                    else:
                        applied = False
            except Exception as error:
                if is_transient(error):
                    raise TransientError(str(error)) from error
                outcome.failed.append((message, error))
                if message.aggregate_id is not None:
                    failed_aggregates.add(message.aggregate_id)
                continue
            (outcome.applied if applied else outcome.skipped).append(message)
        released = [m.event_id for m, _ in outcome.failed] + [m.event_id for m in outcome.deferred]
        if released:
            release = queries.INBOX_RELEASE.in_schema(schema)
            await db.execute(release.asyncpg_sql, projection.name, released)
    return outcome
