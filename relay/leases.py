"""Leases: which relay publishes which service, through PostgreSQL advisory locks.

Each relay keeps one session connection. On it the relay holds a *presence* lock for its whole
life and one *lease* lock per service it publishes. A relay that dies loses its session, and
PostgreSQL releases every lock of that session at once, so another relay takes the services
over on its next heartbeat (docs/decisions/0003-relay-leases.md). Services are shared out
evenly: each relay takes at most ``ceil(services / live relays)``, counting live relays by their
presence locks, and gives back what it holds above that share so a newly started relay gets work.

A lease makes one relay the normal publisher of a service; it is not what keeps events unique.
Two relays on one service (a session dropped while its relay still runs, or leases turned off)
publish nothing twice because the publish itself is idempotent (:mod:`streams.publish`).

The same session carries the relay's status row and its LISTEN for an explicit wake-up.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import asyncpg

from outbox.naming import DEFAULT_SCHEMA, in_schema
from outbox.preflight import CONNECTION_ERRORS
from outbox.relay import queries
from outbox.relay.cursor import connect
from outbox.relay.errors import LeaseLostError
from outbox.relay.status import RelayStatus

log = logging.getLogger("outbox.relay.leases")


def fair_share(services: int, live_relays: int) -> int:
    """How many services one of ``live_relays`` relays should hold."""
    return math.ceil(services / max(1, live_relays))


class Leases(Protocol):
    """The lease boundary as the daemon sees it."""

    @property
    def held(self) -> frozenset[str]: ...

    async def rebalance(self) -> tuple[set[str], set[str]]:
        """Take free services up to this relay's share; return (acquired, held above share)."""
        ...

    async def release(self, services: Iterable[str]) -> None: ...

    async def write_status(self, status: RelayStatus) -> None: ...

    async def forget_old_instances(self) -> None:
        """Delete the status rows of relays silent for a day."""
        ...

    async def close(self) -> None:
        """Release every lease and end the session."""
        ...


class LeaseSession:
    """:class:`Leases` on one asyncpg session connection (advisory locks, status, LISTEN).

    ``exclusive=False`` (tests and emergencies only) takes no locks and relays every service;
    the idempotent publish still keeps every event unique.
    """

    def __init__(
        self,
        url: str,
        instance_id: str,
        *,
        exclusive: bool = True,
        notify_channel: str = "",
        on_notify: Callable[[], None] | None = None,
        rng: random.Random | None = None,
        schema: str = DEFAULT_SCHEMA,
    ) -> None:
        self._url = url
        self._schema = schema
        self._presence_space = queries.presence_lock_space(schema)
        self._instance_id = instance_id
        self._exclusive = exclusive
        self._notify_channel = notify_channel
        self._on_notify = on_notify
        self._rng = rng or random.Random()
        self._conn: asyncpg.Connection | None = None
        self._held: set[str] = set()

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._held.clear()
        conn = await connect(self._url, f"outbox-relay {self._instance_id}")
        try:
            if self._exclusive:
                await conn.fetchval(queries.TRY_LOCK, self._presence_space, self._instance_id)
            if self._notify_channel:
                await conn.add_listener(self._notify_channel, self._notified)
        except CONNECTION_ERRORS as error:
            conn.terminate()
            raise LeaseLostError(f"lease session failed: {error}") from error
        self._conn = conn
        return conn

    def _notified(self, *_args: Any) -> None:
        if self._on_notify is not None:
            self._on_notify()

    async def _call(self, method: str, query: str, *args: Any) -> Any:
        conn = await self._connection()
        try:
            return await getattr(conn, method)(in_schema(query, self._schema), *args)
        except CONNECTION_ERRORS as error:
            lost = sorted(self._held)
            self._held.clear()
            self._conn = None
            conn.terminate()
            raise LeaseLostError(
                f"lease session lost ({error}); released {', '.join(lost) or 'no services'}"
            ) from error

    async def services(self) -> list[str]:
        """Every service with events (new ones get a cursor at the start)."""
        rows = await self._call("fetch", queries.DISCOVER_STREAMS)
        return sorted(row["stream"] for row in rows)

    async def rebalance(self) -> tuple[set[str], set[str]]:
        services = await self.services()
        acquired: set[str] = set()
        if not self._exclusive:
            acquired.update(s for s in services if s not in self._held)
            self._held.update(acquired)
            return acquired, set()
        live = await self._call("fetchval", queries.COUNT_LIVE_RELAYS, self._presence_space)
        share = fair_share(len(services), live)
        excess = set(sorted(self._held)[share:])
        free = [s for s in services if s not in self._held]
        # Random order, so relays starting together do not all contend for the same services.
        self._rng.shuffle(free)
        for service in free:
            if len(self._held) - len(excess) >= share:
                break
            if await self._call("fetchval", queries.TRY_LOCK, queries.LEASE_LOCK_SPACE, service):
                self._held.add(service)
                acquired.add(service)
        return acquired, excess

    async def release(self, services: Iterable[str]) -> None:
        for service in list(services):
            if service in self._held:
                self._held.discard(service)
                if self._exclusive:
                    await self._call("fetchval", queries.UNLOCK, queries.LEASE_LOCK_SPACE, service)

    async def write_status(self, status: RelayStatus) -> None:
        await self._call(
            "execute",
            queries.WRITE_STATUS,
            status.instance_id,
            status.host,
            status.pid,
            status.started_at,
            status.stopped_at,
            status.streams,
            json.dumps(status.cursors),
            json.dumps(status.stream_errors),
            json.dumps(status.republishing),
            status.published_count,
            status.redis_losses,
            status.last_error,
            status.last_error_at,
        )

    async def forget_old_instances(self) -> None:
        await self._call("execute", queries.FORGET_OLD_INSTANCES)

    async def close(self) -> None:
        """Closing the session releases every advisory lock it holds."""
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is None or conn.is_closed():
            return
        try:
            await conn.close(timeout=2)
        except CONNECTION_ERRORS:
            conn.terminate()
