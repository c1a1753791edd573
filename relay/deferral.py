"""Deferred transactions: a long write transaction of the outbox's own database holds no
service's events (docs/decisions/0020-deferred-transactions.md).

The horizon (:data:`relay.queries.HORIZON`) may pass over a running transaction only if no row
it writes can then be skipped. A transaction of another database writes none (decision 0019).
One of this database that has run ``RELAY_DEFER_AFTER_MS`` is *deferred*: recorded in
``relay_deferred`` (one row), after which every read leaves its rows out and the horizon passes
over it, up to a *cap* the relay raises every DEFERRED_TICK_S while every deferred transaction
still runs: the oldest other transaction running then. When one ends, a relay *restamps* its
rows: moves them, in one statement, to the key just below the cap (a txid and new positions in
their order). No read passed the cap, so they sort after every event already published; every
transaction that ends after them was running at the last raise or began later, so they sort
before it. The cursor ``(txid, position)``, the Redis watermarks and re-publishing after a Redis
loss are unchanged.

A deferral must not race the end of the transaction it defers: a read that saw it end before
the deferral committed would read its rows under their first txid, and the restamp would
publish them again. So a deferral takes a number from ``relay_deferral_seq`` (which is not
transactional) *before* the statement that checks, in its own snapshot, that the transaction
still runs, and commits that number as ``generation`` with the deferral. Every read compares
the two (:data:`relay.queries.DEFERRAL_STATE`): a read whose snapshot does not show every
deferral begun reads nothing. Deferrals and restamps lock the row, so numbers commit in order;
one that died between its statements is settled by the next (or by :func:`settle`).

Each step is its own transaction with ``synchronous_commit`` on: the relay's connection
otherwise commits asynchronously (relay/cursor.py). A prepared transaction survives a crash
that a deferral or a raise of the cap might not, which would leave its rows behind a cursor;
a restamp lost after its rows were published would be done again with new positions, and
publish them a second time.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

import asyncpg

from outbox.naming import in_schema
from outbox.relay import queries
from outbox.relay.errors import DeferralStateError

log = logging.getLogger("outbox.relay.deferral")

#: How often the store ticks while a transaction is deferred: each tick raises the cap, so a
#: read waits this long at most behind it.
DEFERRED_TICK_S = 0.005
#: How long a read may find a deferral in doubt before the relay settles it: a live deferral
#: takes a few milliseconds; longer means one died between its two statements.
SETTLE_AFTER_S = 1.0


class Restamped(NamedTuple):
    """What one restamp did: the deferred transactions that had ended, rows moved per service."""

    ended: tuple[int, ...]
    moved: dict[str, int]


class XmaxHistory:
    """Snapshot xmaxes the store saw, with when: ``before(age)`` is the newest one seen at least
    ``age`` seconds ago, so every transaction below it has been running at least that long."""

    def __init__(self, keep_s: float) -> None:
        self._keep_s = keep_s
        self._seen: deque[tuple[float, int]] = deque()

    def add(self, now: float, xmax: int) -> None:
        self._seen.append((now, xmax))
        # Keep the newest sample older than keep_s, drop what is older still.
        while len(self._seen) > 1 and now - self._seen[1][0] >= self._keep_s:
            self._seen.popleft()

    def before(self, now: float, age_s: float, default: int) -> int:
        found = default
        for seen_at, xmax in self._seen:
            if now - seen_at < age_s:
                break
            found = xmax
        return found


async def _locked(conn: asyncpg.Connection, schema: str) -> asyncpg.Record:
    """Inside a transaction: commit synchronously, and take the deferral row's lock; the row."""
    await conn.execute("SET LOCAL synchronous_commit TO on")
    state: asyncpg.Record | None = await conn.fetchrow(in_schema(queries.LOCK_DEFERRED, schema))
    if state is None:
        raise DeferralStateError(schema, "it has no row")
    return state


async def defer(conn: asyncpg.Connection, schema: str, txids: Sequence[int]) -> list[int]:
    """Defer those of ``txids`` that still run; return the deferred set after. With no
    ``txids``, settle the generation after a deferral that died half-way."""
    async with conn.transaction():
        await _locked(conn, schema)
        number = await conn.fetchval(in_schema(queries.BEGIN_DEFERRAL, schema))
        deferred: list[int] = await conn.fetchval(
            in_schema(queries.DEFER, schema), list(txids), number
        )
    added = sorted(set(deferred) & set(txids))
    if added:
        log.warning(
            "event=relay_deferred txids=%s deferred=%d schema=%s",
            ",".join(map(str, added)),
            len(deferred),
            schema,
        )
    elif not txids:
        log.info("event=relay_deferral_settled generation=%d schema=%s", number, schema)
    return deferred


async def restamp(conn: asyncpg.Connection, schema: str) -> Restamped:
    """Move the rows of every deferred transaction that has ended to the key just below the
    cap (:data:`relay.queries.RESTAMP`)."""
    async with conn.transaction():
        state = await _locked(conn, schema)
        row = await conn.fetchrow(
            in_schema(queries.RESTAMP, schema), restamp_txid(schema, state["cap"], state["txids"])
        )
    done = Restamped(tuple(row["ended"]), json.loads(row["moved"]))
    if done.ended:
        log.warning(
            "event=relay_restamped txids=%s rows=%d services=%s schema=%s",
            ",".join(map(str, done.ended)),
            sum(done.moved.values()),
            ",".join(sorted(done.moved)),
            schema,
        )
    return done


def restamp_txid(schema: str, cap: int | None, deferred: Sequence[int]) -> int:
    """The txid a restamp gives the rows: the highest below the cap that is not deferred (a
    deferred txid's rows are left out of every read). Every read stopped below the cap, and
    no transaction below it still runs that is not deferred, so no row of that txid can appear
    after the restamp's but its own."""
    if cap is None:
        raise DeferralStateError(schema, f"deferred transactions {list(deferred)} without a cap")
    txid = cap - 1
    while txid in deferred:
        txid -= 1
    return txid


async def raise_cap(conn: asyncpg.Connection, schema: str) -> None:
    """Raise the cap while every deferred transaction still runs (:data:`RAISE_CAP`)."""
    await conn.execute(in_schema(queries.RAISE_CAP, schema))


async def settle(conn: asyncpg.Connection, schema: str) -> None:
    """End a doubt left by a deferral that died between its statements."""
    await defer(conn, schema, ())
