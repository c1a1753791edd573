"""Is the database's schema as new as this code? Checked before a process starts its work.

Each statement a process will run is prepared, not run: PostgreSQL checks every table and column
it names. A relay, consumer or monitor newer than the schema (``outbox migrate`` not run yet)
says so at start and exits, instead of failing at every poll, heartbeat or request. A database
that cannot be reached is not a schema problem (None): each process waits for PostgreSQL and
retries, as it does whenever PostgreSQL is down.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import asyncpg

from outbox.errors import ConfigurationError

# asyncpg raises these when the server or the connection is gone: not a bug, a reason to back
# off and reconnect (https://magicstack.github.io/asyncpg/current/api/index.html#errors).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,  # admin shutdown, pg_terminate_backend, starting up
    asyncpg.TooManyConnectionsError,
    # A backend terminated while the connection was idle leaves asyncpg's protocol waiting for
    # a ReadyForQuery that never comes; the next query reports it as this.
    asyncpg.InternalClientError,
)


async def schema_problem(url: str, statements: Mapping[str, Iterable[str]]) -> str | None:
    """Why the statements of each component (``{"relay": [...], ...}``) do not fit the database's
    schema, or None. One connection, whatever the number of components."""
    try:
        conn = await asyncpg.connect(
            url, timeout=10, server_settings={"application_name": "outbox schema check"}
        )
    except asyncpg.InvalidCatalogNameError as error:
        return f"{error} (run `outbox migrate`, which creates it)"
    except CONNECTION_ERRORS:  # TimeoutError (connect timed out) is an OSError
        return None
    try:
        for component, texts in statements.items():
            try:
                for text in texts:
                    await conn.prepare(text)
            except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as error:
                return (
                    f"{error} (the {component} is newer than the database schema: "
                    "run `outbox migrate`)"
                )
    except CONNECTION_ERRORS:
        return None
    finally:
        conn.terminate()
    return None


async def require_current_schema(url: str, statements: Mapping[str, Iterable[str]]) -> None:
    """Raise :class:`ConfigurationError` (``outbox``: exit 2, one line) on a schema problem."""
    problem = await schema_problem(url, statements)
    if problem is not None:
        raise ConfigurationError(problem)
