"""``emit()``: write events in the caller's own PostgreSQL transaction (DESIGN.md invariant 1).

emit() never opens, commits or rolls back a transaction and never touches Redis: the event exists
if and only if the caller's transaction commits. Every check runs before anything is sent, so a
rejected event leaves the transaction usable. One event is one statement (one round trip);
emit_many() writes a batch in one statement too.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, cast, overload

from outbox import queries, tracing
from outbox.context import (
    current_causation_id,
    current_correlation_id,
    current_tenant_id,
    new_correlation_id,
)
from outbox.encryption import encrypted_fields, seal
from outbox.envelope import Event, MessagePriority, uuid7
from outbox.errors import (
    DedupKeyOfAnotherTenantError,
    InvalidEventError,
    NotInTransactionError,
    PayloadTooLargeError,
    UnsupportedTransactionError,
)
from outbox.settings import emit_settings
from outbox.upcasting import upcasters
from outbox.validation import (
    check_event_type,
    check_headers,
    check_identifier,
    check_service,
    check_tenant_id,
    schemas,
    serialise_data,
)


class AsyncpgConnection(Protocol):
    """The part of an asyncpg ``Connection`` (or pool proxy) that emit() uses."""

    def is_in_transaction(self) -> bool: ...

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...


if TYPE_CHECKING:
    # Only for type checkers: at run time emit() imports neither SQLAlchemy nor asyncpg, so a
    # service on raw asyncpg needs no SQLAlchemy, and one on SQLAlchemy + psycopg no asyncpg.
    from opentelemetry.trace import Span
    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session

SyncTransaction: TypeAlias = "Session | Connection"
AsyncTransaction: TypeAlias = "AsyncSession | AsyncConnection | AsyncpgConnection"
Row = Mapping[Any, Any]


@dataclass(frozen=True, slots=True)
class EventSpec:
    """The arguments of one emit(), for emit_many()."""

    service: str
    event_type: str
    data: Mapping[str, Any]
    priority: MessagePriority | str | int = MessagePriority.NORMAL
    correlation_id: str | None = None
    causation_id: str | None = None
    user_id: str | int | None = None
    aggregate_id: str | int | uuid.UUID | None = None
    dedup_key: str | None = None
    headers: Mapping[str, str] | None = None
    tenant_id: str | None = None


class _Prepared:
    """A checked event: the column values to insert and the data to return."""

    __slots__ = ("data", "headers", "params", "priority")

    def __init__(
        self,
        spec: EventSpec,
        max_payload_bytes: int,
        correlation_id: str,
        causation_id: str | None,
        trace_context: tuple[str | None, str | None],
        tenant_id: str | None,
    ) -> None:
        service = check_service(spec.service)
        event_type = check_event_type(spec.event_type)
        self.priority = MessagePriority.parse(spec.priority)
        self.data, payload = serialise_data(spec.data)
        # A character is at most 4 UTF-8 bytes: encode only when the limit could be near.
        if len(payload) * 4 > max_payload_bytes:
            size = len(payload.encode("utf-8"))
            if size > max_payload_bytes:
                raise PayloadTooLargeError(size, max_payload_bytes)
        schemas.validate(service, event_type, self.data)
        self.headers = check_headers(spec.headers)
        if upcasters.active:
            upcasters.stamp(service, event_type, self.headers)
        event_id = uuid7()
        aggregate_id = check_identifier("aggregate_id", spec.aggregate_id)
        if encrypted_fields.active:
            # Sealed after validation (the schema sees the plaintext); the limit holds for
            # what is stored.
            sealed = seal(service, event_type, str(event_id), self.data, self.headers, aggregate_id)
            if sealed is not None:
                payload = serialise_data(sealed)[1]
                size = len(payload.encode("utf-8"))
                if size > max_payload_bytes:
                    raise PayloadTooLargeError(size, max_payload_bytes)
        # A traceparent given in the headers is the caller's own propagation: stored as given,
        # with the tracestate given beside it. Otherwise the emit span's context is stored, its
        # tracestate (rarely any) in the headers: entries and CloudEvents carry them already.
        traceparent = self.headers.get("traceparent")
        if traceparent is None:
            traceparent, tracestate = trace_context
            if tracestate and "tracestate" not in self.headers:
                self.headers["tracestate"] = tracestate
        self.params: dict[str, Any] = {
            "event_id": event_id,
            "stream": service,
            "event_type": event_type,
            "source": service,
            "aggregate_id": aggregate_id,
            "priority": int(self.priority),
            "payload": payload,
            "headers": json.dumps(self.headers, ensure_ascii=False) if self.headers else None,
            "correlation_id": check_identifier("correlation_id", spec.correlation_id)
            or correlation_id,
            "causation_id": check_identifier("causation_id", spec.causation_id) or causation_id,
            "user_id": check_identifier("user_id", spec.user_id),
            "traceparent": check_identifier("traceparent", traceparent),
            "dedup_key": check_identifier("dedup_key", spec.dedup_key),
            "tenant_id": tenant_id if spec.tenant_id is None else check_tenant_id(spec.tenant_id),
        }

    def written(self, row: Row) -> Event:
        """The event as written, with the position and time PostgreSQL gave it."""
        p = self.params
        return Event(
            event_id=p["event_id"],
            service=p["stream"],
            event_type=p["event_type"],
            data=self.data,
            priority=self.priority,
            occurred_at=row["occurred_at"],
            correlation_id=p["correlation_id"],
            source=p["source"],
            causation_id=p["causation_id"],
            user_id=p["user_id"],
            aggregate_id=p["aggregate_id"],
            dedup_key=p["dedup_key"],
            traceparent=p["traceparent"],
            headers=self.headers,
            position=row["position"],
            tenant_id=p["tenant_id"],
        )


def _prepare_all(specs: Iterable[EventSpec], limit: int, span: Span | None) -> list[_Prepared]:
    """Check every event; the defaults come from the context: correlation, causation and
    tenant ids (:mod:`outbox.context`) and the trace context (``span``'s, see
    :mod:`outbox.tracing`)."""
    correlation_id = current_correlation_id() or new_correlation_id()
    causation_id = current_causation_id()
    tenant_id = current_tenant_id()
    trace_context = tracing.emit_context(span)
    prepared = [
        _Prepared(spec, limit, correlation_id, causation_id, trace_context, tenant_id)
        for spec in specs
    ]
    seen: set[tuple[str, str]] = set()
    for item in prepared:
        key = (item.params["stream"], item.params["dedup_key"])
        if key[1] is not None:
            if key in seen:
                raise InvalidEventError(
                    f"dedup key {key[1]!r} appears twice for stream {key[0]!r} in one "
                    "emit_many() call"
                )
            seen.add(key)
    return prepared


def _insert(prepared: Sequence[_Prepared], schema: str) -> tuple[queries.Query, dict[str, Any]]:
    if len(prepared) == 1:
        return queries.INSERT_EVENT.in_schema(schema), prepared[0].params
    columns = prepared[0].params.keys()
    return (
        queries.INSERT_EVENTS.in_schema(schema),
        {name: [p.params[name] for p in prepared] for name in columns},
    )


def _missing(prepared: Sequence[_Prepared], inserted: Sequence[Row]) -> dict[str, Any] | None:
    """Parameters to look up the events skipped as duplicates, or None if all were written."""
    if len(inserted) == len(prepared):
        return None
    written = {row["event_id"] for row in inserted}
    skipped = [p.params for p in prepared if p.params["event_id"] not in written]
    return {
        "streams": [p["stream"] for p in skipped],
        "dedup_keys": [p["dedup_key"] for p in skipped],
    }


def _stored_event(row: Row) -> Event:
    return Event(
        event_id=row["event_id"],
        service=row["stream"],
        event_type=row["event_type"],
        data=json.loads(row["payload"]),
        priority=MessagePriority(row["priority"]),
        occurred_at=row["occurred_at"],
        correlation_id=row["correlation_id"],
        source=row["source"],
        causation_id=row["causation_id"],
        user_id=row["user_id"],
        aggregate_id=row["aggregate_id"],
        dedup_key=row["dedup_key"],
        traceparent=row["traceparent"],
        headers=json.loads(row["headers"]) if row["headers"] else {},
        position=row["position"],
        tenant_id=row["tenant_id"],
    )


def _results(
    prepared: Sequence[_Prepared], inserted: Sequence[Row], existing: Sequence[Row]
) -> list[Event]:
    if len(prepared) == 1 and inserted:
        return [prepared[0].written(inserted[0])]
    written = {row["event_id"]: row for row in inserted}
    stored = {(row["stream"], row["dedup_key"]): row for row in existing}
    events = []
    for item in prepared:
        row = written.get(item.params["event_id"])
        if row is not None:
            events.append(item.written(row))
            continue
        found = stored[(item.params["stream"], item.params["dedup_key"])]
        if found["tenant_id"] != item.params["tenant_id"]:
            raise DedupKeyOfAnotherTenantError(
                f"dedup key {item.params['dedup_key']!r} of service {item.params['stream']!r} "
                "is stored already for another tenant; nothing of that event is returned. "
                "Roll the transaction back, and put the tenant id in tenants' dedup keys"
            )
        events.append(_stored_event(found))
    return events


def _write_sync(tx: SyncTransaction, prepared: list[_Prepared], schema: str) -> list[Event]:
    query, params = _insert(prepared, schema)
    inserted = [row._mapping for row in tx.execute(query.sqlalchemy, params)]
    existing: list[Row] = []
    lookup = _missing(prepared, inserted)
    if lookup is not None:
        result = tx.execute(queries.SELECT_BY_DEDUP_KEYS.in_schema(schema).sqlalchemy, lookup)
        existing = [row._mapping for row in result]
    return _results(prepared, inserted, existing)


async def _write_async(
    tx: AsyncTransaction, prepared: list[_Prepared], schema: str, kind: int
) -> list[Event]:
    query, params = _insert(prepared, schema)
    lookup_query = queries.SELECT_BY_DEDUP_KEYS.in_schema(schema)
    inserted: Sequence[Row]
    existing: Sequence[Row] = []
    if kind == _SQLALCHEMY_ASYNC:
        session = cast("AsyncSession | AsyncConnection", tx)
        inserted = [row._mapping for row in await session.execute(query.sqlalchemy, params)]
        lookup = _missing(prepared, inserted)
        if lookup is not None:
            result = await session.execute(lookup_query.sqlalchemy, lookup)
            existing = [row._mapping for row in result]
    else:
        conn = cast(AsyncpgConnection, tx)
        inserted = await conn.fetch(query.asyncpg_sql, *query.asyncpg_args(params))
        lookup = _missing(prepared, inserted)
        if lookup is not None:
            existing = await conn.fetch(
                lookup_query.asyncpg_sql, *lookup_query.asyncpg_args(lookup)
            )
    return _results(prepared, inserted, existing)


# What kind of handle a class is, found once per class: a dictionary lookup per emit instead of
# isinstance checks (a runtime-checkable Protocol check costs ~10 µs per emit).
_SYNC, _SQLALCHEMY_ASYNC, _ASYNCPG = 0, 1, 2
_KINDS: dict[type, int] = {}


def _classify(cls: type) -> int | None:
    """The kind of handle ``cls`` is, or None. A handle's library is necessarily imported
    already, so this looks only at the modules in ``sys.modules`` and imports nothing new."""
    if "asyncpg" in sys.modules:
        import asyncpg
        from asyncpg.pool import PoolConnectionProxy

        if issubclass(cls, (asyncpg.Connection, PoolConnectionProxy)):
            return _ASYNCPG
    if "sqlalchemy.ext.asyncio" in sys.modules:
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

        if issubclass(cls, (AsyncSession, AsyncConnection)):
            return _SQLALCHEMY_ASYNC
    if "sqlalchemy" in sys.modules:
        from sqlalchemy import Connection
        from sqlalchemy.orm import Session

        if issubclass(cls, (Session, Connection)):
            return _SYNC
    return None


def _kind(tx: object) -> int:
    """The kind of handle ``tx`` is; raise for anything emit() cannot write through."""
    kind = _KINDS.get(type(tx))
    if kind is None:
        kind = _classify(type(tx))
        if kind is None:
            raise UnsupportedTransactionError(
                "emit() needs a SQLAlchemy Session, Connection, AsyncSession or "
                f"AsyncConnection, or an asyncpg Connection; got {type(tx).__name__}"
            )
        _KINDS[type(tx)] = kind
    if kind == _ASYNCPG and not tx.is_in_transaction():  # type: ignore[attr-defined]
        raise NotInTransactionError(
            "emit() was given an asyncpg connection outside a transaction; use "
            "`async with conn.transaction():` so the event commits with your data"
        )
    return kind


async def _emit_many_async(
    tx: AsyncTransaction,
    prepared: list[_Prepared],
    schema: str,
    kind: int,
    span: Span | None,
) -> list[Event]:
    if span is None:
        return await _write_async(tx, prepared, schema, kind) if prepared else []
    with tracing.emitting(span):
        events = await _write_async(tx, prepared, schema, kind) if prepared else []
        tracing.emitted(span, events)
    return events


async def _emit_one_async(
    tx: AsyncTransaction,
    prepared: list[_Prepared],
    schema: str,
    kind: int,
    span: Span | None,
) -> Event:
    return (await _emit_many_async(tx, prepared, schema, kind, span))[0]


def _emit_sync(
    tx: SyncTransaction, prepared: list[_Prepared], schema: str, span: Span | None
) -> list[Event]:
    if span is None:
        return _write_sync(tx, prepared, schema) if prepared else []
    with tracing.emitting(span):
        events = _write_sync(tx, prepared, schema) if prepared else []
        tracing.emitted(span, events)
    return events


def _prepare_traced(specs: Iterable[EventSpec], limit: int) -> tuple[list[_Prepared], Span | None]:
    """The checked events and their ``outbox.emit`` span (None when tracing is off), which the
    write ends; a rejected event ends it here, with the error."""
    span = tracing.start_emit()
    try:
        return _prepare_all(specs, limit, span), span
    except BaseException as error:
        tracing.failed(span, error)
        raise


@overload
def emit_many(tx: SyncTransaction, events: Iterable[EventSpec]) -> list[Event]: ...
@overload
def emit_many(
    tx: AsyncTransaction, events: Iterable[EventSpec]
) -> Coroutine[Any, Any, list[Event]]: ...
def emit_many(
    tx: SyncTransaction | AsyncTransaction, events: Iterable[EventSpec]
) -> list[Event] | Coroutine[Any, Any, list[Event]]:
    """Write several events in one statement, in the caller's transaction.

    Every event is checked first; if one is invalid nothing is sent. Returns the events in the
    order given; an event whose dedup key is already stored comes back as the stored event.
    With an async handle, await the result.
    """
    kind = _kind(tx)
    settings = emit_settings()
    prepared, span = _prepare_traced(events, settings.max_payload_bytes)
    if kind != _SYNC:
        return _emit_many_async(tx, prepared, settings.outbox_schema, kind, span)  # type: ignore[arg-type]
    return _emit_sync(tx, prepared, settings.outbox_schema, span)  # type: ignore[arg-type]


@overload
def emit(
    tx: SyncTransaction,
    *,
    service: str,
    event_type: str,
    data: Mapping[str, Any],
    priority: MessagePriority | str | int = ...,
    correlation_id: str | None = ...,
    causation_id: str | None = ...,
    user_id: str | int | None = ...,
    aggregate_id: str | int | uuid.UUID | None = ...,
    dedup_key: str | None = ...,
    headers: Mapping[str, str] | None = ...,
    tenant_id: str | None = ...,
) -> Event: ...
@overload
def emit(
    tx: AsyncTransaction,
    *,
    service: str,
    event_type: str,
    data: Mapping[str, Any],
    priority: MessagePriority | str | int = ...,
    correlation_id: str | None = ...,
    causation_id: str | None = ...,
    user_id: str | int | None = ...,
    aggregate_id: str | int | uuid.UUID | None = ...,
    dedup_key: str | None = ...,
    headers: Mapping[str, str] | None = ...,
    tenant_id: str | None = ...,
) -> Coroutine[Any, Any, Event]: ...
def emit(
    tx: SyncTransaction | AsyncTransaction,
    *,
    service: str,
    event_type: str,
    data: Mapping[str, Any],
    priority: MessagePriority | str | int = MessagePriority.NORMAL,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    user_id: str | int | None = None,
    aggregate_id: str | int | uuid.UUID | None = None,
    dedup_key: str | None = None,
    headers: Mapping[str, str] | None = None,
    tenant_id: str | None = None,
) -> Event | Coroutine[Any, Any, Event]:
    """Write one event in the caller's transaction and return it (with ``event_id``).

    ``tx`` is a SQLAlchemy ``Session`` or ``Connection`` (returns the event), or an
    ``AsyncSession``, ``AsyncConnection`` or asyncpg ``Connection`` (returns an awaitable).
    ``correlation_id`` defaults to the current context's (see ``CorrelationIdMiddleware``, and
    ``caused_by``, which a projection handler runs in), else a new id; ``causation_id`` defaults
    to the event being handled, if any. With OpenTelemetry, an ``outbox.emit`` span is made in
    the current context and the event stores its ``traceparent``/``tracestate``
    (docs/tracing.md). If ``dedup_key`` is already stored for this service, the stored event
    is returned and nothing is written. ``tenant_id`` defaults to the current
    :func:`~outbox.context.tenant_scope`'s, else none (docs/tenancy.md). Invalid input raises
    :class:`~outbox.errors.InvalidEventError` before anything is sent.
    """
    kind = _kind(tx)
    spec = EventSpec(
        service,
        event_type,
        data,
        priority,
        correlation_id,
        causation_id,
        user_id,
        aggregate_id,
        dedup_key,
        headers,
        tenant_id,
    )
    settings = emit_settings()
    prepared, span = _prepare_traced([spec], settings.max_payload_bytes)
    if kind != _SYNC:
        return _emit_one_async(tx, prepared, settings.outbox_schema, kind, span)  # type: ignore[arg-type]
    return _emit_sync(tx, prepared, settings.outbox_schema, span)[0]  # type: ignore[arg-type]
