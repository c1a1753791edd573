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

from outbox.errors import ConfigurationError
from outbox.naming import DEFAULT_SCHEMA, in_schema
from outbox.partitioning import MAX_PARTITIONS, Partitioning
from outbox.preflight import CONNECTION_ERRORS
from outbox.relay import queries
from outbox.relay.errors import DatabaseUnavailableError
from outbox.validation import check_service


async def forget_marks(url: str, *, schema: str = DEFAULT_SCHEMA) -> list[str]:
    """Clear every service's marks; refuse while a relay of this outbox runs. Returns the
    services whose marks were cleared."""
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
        rows = await conn.fetch(in_schema(queries.FORGET_MARKS, schema))
    finally:
        await conn.close()
    return sorted(row["stream"] for row in rows)


async def _connect(url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url, server_settings={"application_name": "outbox admin"})
    except CONNECTION_ERRORS as error:
        raise DatabaseUnavailableError(f"cannot connect to PostgreSQL: {error}") from error


async def request_partitions(
    url: str, service: str, partitions: int, *, schema: str = DEFAULT_SCHEMA
) -> Partitioning:
    """Ask for ``partitions`` partitions of ``service``; returns its partitioning (with the
    request, unless it already has that count)."""
    check_service(service)
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ConfigurationError(f"partitions must be 1 to {MAX_PARTITIONS}, got {partitions}")
    conn = await _connect(url)
    try:
        row = await conn.fetchrow(
            in_schema(queries.REQUEST_PARTITIONS, schema), service, partitions
        )
    finally:
        await conn.close()
    return Partitioning.from_row(row)


async def partitionings(url: str, *, schema: str = DEFAULT_SCHEMA) -> dict[str, Partitioning]:
    """Every partitioned service's partitioning."""
    conn = await _connect(url)
    try:
        rows = await conn.fetch(in_schema(queries.ALL_PARTITIONINGS, schema))
    finally:
        await conn.close()
    return {row["stream"]: Partitioning.from_row(row) for row in rows}
