"""Changes to the relays' shared state made from the command line.

``request_partitions``: a new partition count for a service (``outbox partitions set``); the
relay holding the service starts the new epoch at its next batch boundary (decision 0014).

``forget_marks``: after the streams moved to another Redis (a new Redis Cluster, a restored
server), the marks in ``relay_cursors`` describe streams that are not there; a relay would take
their absence for Redis having lost acknowledged writes and publish every service again from the
start of its log (decision 0011). Forgetting them makes the relays publish from their cursors.
"""

from __future__ import annotations

import asyncpg

from outbox import audit
from outbox.errors import ConfigurationError
from outbox.naming import DEFAULT_SCHEMA, in_schema
from outbox.partitioning import MAX_PARTITIONS, Partitioning
from outbox.preflight import CONNECTION_ERRORS
from outbox.relay import queries
from outbox.relay.errors import DatabaseUnavailableError
from outbox.validation import check_service


async def forget_marks(
    url: str, *, schema: str = DEFAULT_SCHEMA, actor: audit.Actor | None = None
) -> list[str]:
    """Clear every service's marks; refuse while a relay of this outbox runs. Returns the
    services whose marks were cleared. Given ``actor``, recorded in the audit log in the same
    transaction."""
    try:
        conn = await asyncpg.connect(url, server_settings={"application_name": "outbox admin"})
    except CONNECTION_ERRORS as error:
        raise DatabaseUnavailableError(f"cannot connect to PostgreSQL: {error}") from error
    try:
        live = await conn.fetchval(queries.COUNT_LIVE_RELAYS, queries.presence_lock_space(schema))
        if live:
            raise ConfigurationError(
                f"{live} relay(s) of this outbox are running: stop them first (a running relay "
                "would write its marks back)"
            )
        async with conn.transaction():
            rows = await conn.fetch(in_schema(queries.FORGET_MARKS, schema))
            if actor is not None:
                await audit.record(
                    conn,
                    "forget-marks",
                    actor,
                    counts={"services": len(rows)},
                    details={"services": sorted(row["stream"] for row in rows)},
                    schema=schema,
                )
    finally:
        await conn.close()
    return sorted(row["stream"] for row in rows)


async def _connect(url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url, server_settings={"application_name": "outbox admin"})
    except CONNECTION_ERRORS as error:
        raise DatabaseUnavailableError(f"cannot connect to PostgreSQL: {error}") from error


async def request_partitions(
    url: str,
    service: str,
    partitions: int,
    *,
    schema: str = DEFAULT_SCHEMA,
    actor: audit.Actor | None = None,
) -> Partitioning:
    """Ask for ``partitions`` partitions of ``service``; returns its partitioning (with the
    request, unless it already has that count). Given ``actor``, recorded in the audit log in
    the same transaction."""
    check_service(service)
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ConfigurationError(f"partitions must be 1 to {MAX_PARTITIONS}, got {partitions}")
    conn = await _connect(url)
    try:
        async with conn.transaction():
            row = await conn.fetchrow(
                in_schema(queries.REQUEST_PARTITIONS, schema), service, partitions
            )
            found = Partitioning.from_row(row)
            if actor is not None:
                await audit.record(
                    conn,
                    "partitions.set",
                    actor,
                    target=service,
                    counts={"partitions": partitions},
                    details={"epoch": found.epoch, "already": found.requested is None},
                    schema=schema,
                )
    finally:
        await conn.close()
    return found


async def partitionings(url: str, *, schema: str = DEFAULT_SCHEMA) -> dict[str, Partitioning]:
    """Every partitioned service's partitioning."""
    conn = await _connect(url)
    try:
        rows = await conn.fetch(in_schema(queries.ALL_PARTITIONINGS, schema))
    finally:
        await conn.close()
    return {row["stream"]: Partitioning.from_row(row) for row in rows}
