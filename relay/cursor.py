"""The gap-safe cursor ``(txid, position)`` and the PostgreSQL store that reads after it.

Positions are handed out when a row is inserted, but rows become visible when their transaction
commits, in another order: reading ``WHERE position > last`` skips rows of a transaction that
commits late with lower positions. The relay therefore reads only rows whose transaction is
older than every running one that may write to this database (``txid < horizon``,
:data:`relay.queries.HORIZON`: transactions of other databases are passed over, decision 0019,
and so are long ones of this database once deferred, :mod:`relay.deferral`, decision 0020),
in ``(txid, position)`` order, strictly after the stored cursor. Once such a row is seen, every row
that sorts before it is already committed (or never will be), so the set of events below any
cursor the relay has seen never changes again; that is what makes re-reading harmless and
publishing idempotent (see :mod:`streams.publish`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import asyncpg

from outbox.naming import DEFAULT_SCHEMA, in_schema
from outbox.partitioning import Partitioning
from outbox.preflight import CONNECTION_ERRORS
from outbox.relay import deferral, queries
from outbox.relay.errors import (
    DatabaseMismatchError,
    DatabaseUnavailableError,
    DeferralStateError,
)

#: How long a transaction must have been running before the batch read asks whether it is of
#: another database (relay.queries.HORIZON): emitters' transactions are shorter, and asking
#: costs about as much again as the read. A transaction of another database therefore holds
#: the relay back for 20-40 ms after it begins, then never again.
FOREIGN_AFTER_S = 0.02
#: The largest xid8: with no reference yet, every running transaction is asked about.
ASK_EVERY = (1 << 64) - 1
#: How long a transaction of this database must have been running before the relay defers it
#: (RELAY_DEFER_AFTER_MS): it holds every service's events back that long at most.
DEFER_AFTER_S = 0.25


class Cursor(NamedTuple):
    """Where a service's relay stands: the last event published, in cursor order.

    Tuples compare element-wise, so ``Cursor`` order is exactly the relay's read order.
    """

    txid: int
    position: int

    def __str__(self) -> str:
        return f"{self.txid}:{self.position}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """Read ``"<txid>:<position>"`` (the watermark and status format)."""
        txid, sep, position = text.partition(":")
        if not sep:
            raise ValueError(f"not a cursor: {text!r}")
        return cls(int(txid), int(position))


START = Cursor(0, 0)


class Stored(NamedTuple):
    """A service's row of ``relay_cursors``: its cursor, and ``marks``, the watermark each of
    its streams was seen to take when that cursor was committed (stream key → cursor)."""

    cursor: Cursor
    marks: dict[str, Cursor]


#: One outbox row as the relay reads it (an asyncpg Record or any mapping with these keys):
#: ``stream``, ``txid``, ``position``, ``priority`` and ``fields``, the stream entry's
#: ``[field, value, …]`` as a JSON array (relay.queries.ENTRY_FIELDS); optionally
#: ``occurred_s``, ``traceparent`` and ``tracestate``.
OutboxRow = Mapping[str, Any]


def cursor_of(row: OutboxRow) -> Cursor:
    return Cursor(row["txid"], row["position"])


class OutboxStore(Protocol):
    """What the relay needs from PostgreSQL (one connection, used by one task)."""

    async def load(self, services: Sequence[str]) -> dict[str, Stored]:
        """The stored cursor and marks of each service."""
        ...

    async def fetch(
        self,
        cursors: Mapping[str, Cursor],
        limit: int,
        partitions: Mapping[str, int] | None = None,
    ) -> dict[str, list[OutboxRow]]:
        """Up to ``limit`` committed events per service after its cursor, in cursor order, each
        with its stream entry's fields and its partition among the service's ``partitions``
        (1 when not given)."""
        ...

    async def partitionings(self, services: Sequence[str]) -> dict[str, Partitioning]:
        """Each service's epoch and partition count (epoch 0 for one without a row)."""
        ...

    async def start_epoch(self, service: str, cursor: Cursor) -> Partitioning | None:
        """Start the epoch asked for, after ``cursor``; None when none is asked for."""
        ...

    async def advance(
        self, cursors: Mapping[str, Cursor], marks: Mapping[str, Mapping[str, Cursor]]
    ) -> None:
        """Store the cursors, each with its service's ``marks`` (never moving a cursor back)."""
        ...

    async def next_txid(self) -> int:
        """The database's next transaction id now: every txid the relay has read is below it."""
        ...

    async def source_id(self) -> str:
        """The outbox's source id (``outbox_source``), recorded beside each stream's watermark."""
        ...

    async def close(self) -> None: ...


async def connect(url: str, application_name: str) -> asyncpg.Connection:
    """A relay connection. Its writes (cursors, status) skip the WAL flush wait: a cursor lost
    in a crash only makes the relay re-read events that the watermark then skips."""
    try:
        return await asyncpg.connect(
            url,
            timeout=10,
            server_settings={
                "application_name": application_name,
                "synchronous_commit": "off",
                # The batch query's cost estimate grows with the outbox; past jit_above_cost
                # PostgreSQL would JIT-compile every poll (hundreds of ms, measured on the
                # monitor's backlog count) for a query that takes a few ms.
                "jit": "off",
                # FETCH_BATCH is prepared once but, left to itself, planned again at every poll:
                # PostgreSQL keeps choosing a custom plan (its generic estimate assumes ten
                # services per unnest). The generic plan is the same index scan per service,
                # whatever the parameters, and saves about 125 µs of the backend's CPU per poll
                # (303 → 177 µs a call, measured). Every statement on this connection is a
                # lookup by key or that scan, so no plan here depends on the values.
                "plan_cache_mode": "force_generic_plan",
            },
        )
    except CONNECTION_ERRORS as error:
        raise DatabaseUnavailableError(f"cannot connect to PostgreSQL: {error}") from error


#: What the relay asks of the schema (outbox/preflight.py): its cursors, its batch read and
#: its status row.
RELAY_STATEMENTS = (
    queries.LOAD_CURSORS,
    queries.FETCH_BATCH,
    queries.FETCH_BATCH_ROUTED,
    queries.ADVANCE_CURSORS,
    queries.WRITE_STATUS,
    queries.LOAD_PARTITIONINGS,
    queries.DEFERRAL_TICK,
    queries.LOAD_SOURCE,
)


def relay_statements(schema: str) -> tuple[str, ...]:
    """:data:`RELAY_STATEMENTS` with the outbox tables in ``schema``."""
    return tuple(in_schema(text, schema) for text in RELAY_STATEMENTS)


def beyond(next_txid: int, marks: Mapping[str, Cursor]) -> dict[str, Cursor]:
    """Those of ``marks`` at or beyond ``next_txid``, the database's next transaction id: every
    txid the relay read from this database was below it, so they were not taken on it."""
    return {key: mark for key, mark in sorted(marks.items()) if mark.txid >= next_txid}


def _check_taken_here(row: Mapping[str, Any]) -> None:
    """Refuse a stored cursor, or a watermark stored with it, at or beyond the database's next
    transaction id (:func:`beyond`): the database is not the one the cursor was taken on
    (restored from a dump, recreated). Reading on would skip every event up to there."""
    marks = {key: Cursor.parse(mark) for key, mark in json.loads(row["marks"]).items()}
    cursor = Cursor(row["txid"], row["position"])
    ahead = [f"cursor {cursor}"] if cursor.txid >= row["xmax"] else []
    ahead += [f"watermark of {key} {mark}" for key, mark in beyond(row["xmax"], marks).items()]
    if ahead:
        raise DatabaseMismatchError(
            f"service {row['stream']!r}: {', '.join(ahead)} stored in relay_cursors is at or "
            f"beyond this database's next transaction id {row['xmax']}: the database is not the "
            "one the relay published from (restored from a dump, or recreated), and reading on "
            "would skip its events up to there. See docs/operations.md, 'A database restored or "
            "replaced'."
        )


class PgOutboxStore:
    """:class:`OutboxStore` on one asyncpg connection, made on first use and after a failure.

    ``max_retries`` is the value every entry carries in its ``max_retries`` field (MAX_RETRIES);
    ``schema`` is the one the outbox tables are in (OUTBOX_SCHEMA). ``route_paths``: a relay
    with routing rules reads each row's event type and the payload values at these paths
    (:data:`queries.FETCH_BATCH_ROUTED`); None, the plain batch query. ``defer_after_s``: the
    age at which a transaction of this database is deferred (RELAY_DEFER_AFTER_MS); None never
    defers (every long transaction holds the relay until it ends, as before decision 0020).
    """

    def __init__(
        self,
        url: str,
        application_name: str,
        max_retries: int,
        schema: str = DEFAULT_SCHEMA,
        route_paths: Sequence[str] | None = None,
        defer_after_s: float | None = DEFER_AFTER_S,
    ) -> None:
        self._route_paths = None if route_paths is None else list(route_paths)
        self._url = url
        self._schema = schema
        self._application_name = application_name
        self._max_retries = str(max_retries)
        self._conn: asyncpg.Connection | None = None
        self._defer_after_s = defer_after_s
        # Snapshot xmaxes seen at each tick: one FOREIGN_AFTER_S old is HORIZON's $7, one
        # defer_after_s old tells which transactions have run long enough to defer.
        self._xmaxes = deferral.XmaxHistory(max(FOREIGN_AFTER_S, defer_after_s or 0.0))
        self._ticked: float | None = None
        self._running_since = ASK_EVERY
        # Transactions found to be of another database (never deferred; bounded, see _tick).
        self._foreign: set[int] = set()
        self._doubt_since: float | None = None
        #: How many transactions were deferred at the last tick (by any relay).
        self.deferred = 0

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect(self._url, self._application_name)
        return self._conn

    async def _call(self, method: str, query: str, *args: Any) -> Any:
        conn = await self._connection()
        try:
            return await getattr(conn, method)(in_schema(query, self._schema), *args)
        except CONNECTION_ERRORS as error:
            await self._drop()
            raise DatabaseUnavailableError(f"PostgreSQL connection lost: {error}") from error

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def load(self, services: Sequence[str]) -> dict[str, Stored]:
        rows = await self._call("fetch", queries.LOAD_CURSORS, list(services))
        for row in rows:
            _check_taken_here(row)
        found = {
            row["stream"]: Stored(
                Cursor(row["txid"], row["position"]),
                {key: Cursor.parse(mark) for key, mark in json.loads(row["marks"]).items()},
            )
            for row in rows
        }
        return {service: found.get(service, Stored(START, {})) for service in services}

    async def fetch(
        self,
        cursors: Mapping[str, Cursor],
        limit: int,
        partitions: Mapping[str, int] | None = None,
    ) -> dict[str, list[OutboxRow]]:
        services = list(cursors)
        counts = partitions or {}
        args = (
            services,
            [cursors[s].txid for s in services],
            [cursors[s].position for s in services],
            limit,
            self._max_retries,
            [counts.get(s, 1) for s in services],
            await self._tick(),
        )
        if self._route_paths is None:
            rows = await self._call("fetch", queries.FETCH_BATCH, *args)
        else:
            rows = await self._call("fetch", queries.FETCH_BATCH_ROUTED, *args, self._route_paths)
        batches: dict[str, list[OutboxRow]] = {}
        for row in rows:  # already in cursor order per service (FETCH_BATCH's ORDER BY)
            batches.setdefault(row["stream"], []).append(row)
        return batches

    async def _tick(self) -> int:
        """HORIZON's $7, a snapshot xmax at least FOREIGN_AFTER_S old: transactions below it
        have been running that long. Every FOREIGN_AFTER_S (one small statement), also the
        deferral's work (decision 0020): restamp the deferred transactions that have ended,
        defer this database's transactions that have run defer_after_s, settle a doubt that
        lasts. None of it runs while no transaction is that old and none is deferred."""
        now = time.monotonic()
        every = deferral.DEFERRED_TICK_S if self.deferred else FOREIGN_AFTER_S
        if self._ticked is not None and now - self._ticked < every:
            return self._running_since
        long_ago = (
            0
            if self._defer_after_s is None
            else self._xmaxes.before(now, self._defer_after_s, default=0)
        )
        row = await self._call("fetchrow", queries.DEFERRAL_TICK, long_ago)
        if row is None:
            raise DeferralStateError(self._schema, "it has no row")
        self._xmaxes.add(now, row["xmax"])
        self._ticked = now
        self._running_since = self._xmaxes.before(now, FOREIGN_AFTER_S, default=ASK_EVERY)
        self.deferred = row["deferred"]
        if row["ended"]:
            await self._in_transaction(deferral.restamp)
        elif row["deferred"]:
            await self._in_transaction(deferral.raise_cap)
        old = [x for x in row["old"] if x not in self._foreign]
        if old:
            own: list[int] = await self._call("fetchval", queries.OWN_TRANSACTIONS, old)
            if len(self._foreign) > 10_000:
                self._foreign.clear()
            self._foreign.update(set(old) - set(own))
            if own:
                self.deferred = len(await self._in_transaction(deferral.defer, own))
        if row["in_doubt"]:
            self._doubt_since = self._doubt_since or now
            if now - self._doubt_since >= deferral.SETTLE_AFTER_S:
                await self._in_transaction(deferral.settle)
                self._doubt_since = None
        else:
            self._doubt_since = None
        return self._running_since

    async def _in_transaction(self, step: Any, *args: Any) -> Any:
        """Run a :mod:`relay.deferral` step on the connection, as :meth:`_call` runs a query."""
        conn = await self._connection()
        try:
            return await step(conn, self._schema, *args)
        except CONNECTION_ERRORS as error:
            await self._drop()
            raise DatabaseUnavailableError(f"PostgreSQL connection lost: {error}") from error

    async def advance(
        self, cursors: Mapping[str, Cursor], marks: Mapping[str, Mapping[str, Cursor]]
    ) -> None:
        if not cursors:
            return
        services = list(cursors)
        await self._call(
            "execute",
            queries.ADVANCE_CURSORS,
            services,
            [cursors[s].txid for s in services],
            [cursors[s].position for s in services],
            [
                json.dumps({key: str(mark) for key, mark in marks.get(s, {}).items()})
                for s in services
            ],
        )

    async def next_txid(self) -> int:
        xmax: int = await self._call("fetchval", queries.SNAPSHOT_XMAX)
        return xmax

    async def source_id(self) -> str:
        source: str | None = await self._call("fetchval", queries.LOAD_SOURCE)
        if source is None:
            raise DatabaseMismatchError(
                f"{self._schema}.outbox_source has no row: the outbox has no source id to record "
                "beside its streams' watermarks. It is made by migration 0012; put one back with "
                f"INSERT INTO {self._schema}.outbox_source (id) VALUES (true)"
            )
        return source

    async def partitionings(self, services: Sequence[str]) -> dict[str, Partitioning]:
        rows = await self._call("fetch", queries.LOAD_PARTITIONINGS, list(services))
        found = {row["stream"]: Partitioning.from_row(row) for row in rows}
        return {service: found.get(service, Partitioning()) for service in services}

    async def start_epoch(self, service: str, cursor: Cursor) -> Partitioning | None:
        row = await self._call(
            "fetchrow", queries.START_EPOCH, service, cursor.txid, cursor.position
        )
        return None if row is None else Partitioning.from_row(row)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=2)
            except CONNECTION_ERRORS:
                conn.terminate()
