"""Least privilege for a service's own role: what ``emit()`` needs, and nothing more.

``outbox grant ROLE --service SERVICE`` gives a service's database role:

- ``USAGE`` on the outbox's schema and ``INSERT`` + ``SELECT`` on ``outbox_events`` only: emit()
  inserts, reads back the row it wrote (``RETURNING``) and, for a dedup key already stored, the
  stored event. Nothing on the relay's or the projections' tables; no ``UPDATE`` or ``DELETE``.
- row-level security on ``outbox_events``, with two policies for the role: it sees only its own
  services' rows and can insert only rows of its own services (``stream`` and ``source``), so
  it can neither read other services' events nor emit in their name.

With row-level security on, roles that must see every row (the relay, the monitor, ``outbox
prune``, projections that rebuild from the log) run as the table's owner or a ``BYPASSRLS`` role;
the relay and the monitor refuse to start otherwise (outbox/preflight.py). Identity columns need
no sequence privilege. See docs/adopting.md, "Least privilege".
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

from outbox.naming import SCHEMA_PATTERN
from outbox.validation import check_service


def grant_emit_statements(role: str, services: Sequence[str], schema: str) -> list[sql.Composed]:
    """The statements that let ``role`` emit the events of ``services`` (idempotent)."""
    if not services:
        raise ValueError("name at least one service the role emits for")
    for service in services:
        check_service(service)
    if not SCHEMA_PATTERN.match(schema):
        raise ValueError(f"not a plain schema name: {schema!r}")
    table = sql.Identifier(schema, "outbox_events")
    who = sql.Identifier(role)
    names = sql.Literal(sorted(set(services)))
    read = sql.Identifier(f"outbox_emit_read_{role}"[:63])
    write = sql.Identifier(f"outbox_emit_write_{role}"[:63])
    return [
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), who),
        sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(table, who),
        sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(table),
        sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(read, table),
        sql.SQL("CREATE POLICY {} ON {} FOR SELECT TO {} USING (stream = ANY({}::text[]))").format(
            read, table, who, names
        ),
        sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(write, table),
        sql.SQL(
            "CREATE POLICY {} ON {} FOR INSERT TO {} "
            "WITH CHECK (stream = ANY({}::text[]) AND source = stream)"
        ).format(write, table, who, names),
    ]


def render(statements: Sequence[sql.Composed], conn: psycopg.Connection[object]) -> str:
    """The statements as one SQL script (for ``outbox grant --print``)."""
    return "".join(f"{statement.as_string(conn)};\n" for statement in statements)


def grant_emit(libpq_url: str, role: str, services: Sequence[str], schema: str) -> None:
    """Run :func:`grant_emit_statements` in one transaction."""
    statements = grant_emit_statements(role, services, schema)
    with psycopg.connect(libpq_url, connect_timeout=10) as conn, conn.transaction():
        for statement in statements:
            conn.execute(statement)
