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
from outbox.naming import DEFAULT_SCHEMA, in_schema

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


# Row-level security on outbox_events (docs/adopting.md, least privilege) limits what a
# service's role sees; the relay, the monitor and prune must see every row, or they would
# quietly publish, count and delete only some. The table's owner and BYPASSRLS roles are exempt
# (https://www.postgresql.org/docs/15/ddl-rowsecurity.html).
_ROW_SECURITY = """
SELECT c.relrowsecurity
       AND NOT pg_has_role(current_user, c.relowner, 'USAGE')
       AND NOT (SELECT rolbypassrls FROM pg_roles WHERE rolname = current_user)
  FROM pg_class c
 WHERE c.oid = to_regclass($1)
"""


async def schema_problem(
    url: str,
    statements: Mapping[str, Iterable[str]],
    *,
    schema: str = DEFAULT_SCHEMA,
    sees_every_row: bool = False,
) -> str | None:
    """Why the statements of each component (``{"relay": [...], ...}``, with the outbox tables
    in ``schema``) do not fit the database's schema, or None. One connection, whatever the
    number of components. ``sees_every_row``: the component must see every outbox row, which
    row-level security would prevent for a role that is not exempt from it."""
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
                    await conn.prepare(in_schema(text, schema))
            except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as error:
                return (
                    f"{error} (the {component} is newer than the database schema: "
                    "run `outbox migrate`)"
                )
            except asyncpg.InsufficientPrivilegeError as error:
                return (
                    f"{error}: the {component} runs as a role without the privileges it needs "
                    "on the outbox's tables; run it as the outbox's owner (the role that ran "
                    "`outbox migrate`) or a role granted them (docs/adopting.md)"
                )
        if sees_every_row and await conn.fetchval(_ROW_SECURITY, f'"{schema}".outbox_events'):
            return (
                f'row-level security is on for "{schema}".outbox_events and this role is '
                "neither its owner nor BYPASSRLS: it would see only some events. Run the relay, "
                "monitor and prune as the outbox's owner or a BYPASSRLS role (docs/adopting.md)"
            )
    except CONNECTION_ERRORS:
        return None
    finally:
        conn.terminate()
    return None


async def require_current_schema(
    url: str,
    statements: Mapping[str, Iterable[str]],
    *,
    schema: str = DEFAULT_SCHEMA,
    sees_every_row: bool = False,
) -> None:
    """Raise :class:`ConfigurationError` (``outbox``: exit 2, one line) on a schema problem."""
    problem = await schema_problem(url, statements, schema=schema, sees_every_row=sees_every_row)
    if problem is not None:
        raise ConfigurationError(problem)
