"""Changes to the relays' shared state that are made while no relay runs.

``forget_marks``: after the streams moved to another Redis (a new Redis Cluster, a restored
server), the marks in ``relay_cursors`` describe streams that are not there; a relay would take
their absence for Redis having lost acknowledged writes and publish every service again from the
start of its log (decision 0011). Forgetting them makes the relays publish from their cursors.
"""

from __future__ import annotations

import asyncpg

from outbox.errors import ConfigurationError
from outbox.naming import DEFAULT_SCHEMA, in_schema
from outbox.preflight import CONNECTION_ERRORS
from outbox.relay import queries
from outbox.relay.errors import DatabaseUnavailableError


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
