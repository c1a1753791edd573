"""The audit log: every administrative action, appended to ``outbox_audit`` (migration 0008).

An action is recorded with who did it (:class:`Actor`: the OS user of a command, or the name of
the monitor's admin token, never the token), when, what, on which target and its counts.

Where an action changes PostgreSQL in one transaction (``outbox partitions set``,
``forget-marks``), its row is written in that transaction: no change without its row. An action
of many transactions (``projections rebuild``, ``prune``, ``projections prune-inbox``) writes a
``started`` row before it changes anything and a ``finished`` row (or ``failed``, with what was
done so far) at the end, the rebuild's in the transaction that puts the projection live again.
A Redis-only action (dead-letter replay and purge) connects to PostgreSQL before it touches
Redis, so an unreachable audit log refuses it, and records the real counts after it, also when
it failed half-way. A row that cannot be written is an :class:`AuditError`: the command exits 2,
the monitor answers 500, and neither pretends all went well.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from outbox.errors import OutboxError
from outbox.naming import DEFAULT_SCHEMA
from outbox.preflight import CONNECTION_ERRORS
from outbox.queries import Query

Via = Literal["cli", "monitor"]

#: The actions recorded today (``outbox audit list --action`` also takes a prefix, e.g. ``dlq``).
ACTIONS = (
    "dlq.replay",
    "dlq.purge",
    "projections.rebuild",
    "projections.prune-inbox",
    "prune",
    "partitions.set",
    "forget-marks",
    "grant",
    "keys.rotate",
    "keys.forget-subject",
    "tenants.acl",
)


class AuditError(OutboxError):
    """The audit log could not be written; run `outbox migrate` if outbox_audit is missing."""


@dataclass(frozen=True)
class Actor:
    """Who acts: a name (OS user or admin token name), through what, from which host."""

    name: str
    via: Via
    host: str | None = None


def cli_actor() -> Actor:
    """The OS user running the command (``getpass.getuser()``: LOGNAME/USER, then the password
    database) on this host; ``uid <n>`` for a user with neither (a container's bare uid)."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # KeyError before Python 3.13
        name = f"uid {os.getuid()}"
    return Actor(name or f"uid {os.getuid()}", "cli", socket.gethostname())


# The database role is added to the details: PostgreSQL vouches for it, the process for the rest.
RECORD = Query(
    "audit_record",
    """
    INSERT INTO outbox_audit (actor, via, action, target, counts, details, host)
    VALUES (:actor, :via, :action, :target, CAST(:counts AS jsonb),
            CAST(:details AS jsonb) || jsonb_build_object('db_role', session_user::text), :host)
    RETURNING id
    """,
)

# Newest first. ``action`` matches an action or a prefix of dotted ones (``dlq``: dlq.replay and
# dlq.purge); ``since_s`` bounds the age.
RECENT = Query(
    "audit_recent",
    """
    SELECT id, at, actor, via, action, target, counts::text AS counts, details::text AS details,
           host
      FROM outbox_audit
     WHERE (CAST(:action AS text) IS NULL OR action = :action OR action LIKE :action || '.%')
       AND (CAST(:since_s AS float8) IS NULL OR at >= now() - make_interval(secs => :since_s))
     ORDER BY at DESC, id DESC
     LIMIT :limit
    """,
)

#: A ``since_s`` beyond this (a century) means no bound: ``now() - interval`` would otherwise
#: leave timestamptz's range and fail.
MAX_SINCE_S = 100 * 365 * 86400.0

#: Every statement above, for the schema check at start (outbox/preflight.py).
AUDIT_STATEMENTS = (RECORD.asyncpg_sql, RECENT.asyncpg_sql)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    via: str
    action: str
    target: str | None
    counts: dict[str, Any]
    details: dict[str, Any]
    host: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "via": self.via,
            "action": self.action,
            "target": self.target,
            "counts": self.counts,
            "details": self.details,
            "host": self.host,
        }


async def connect(url: str) -> asyncpg.Connection:
    """A connection to write the audit log on; AuditError when PostgreSQL cannot be reached
    (before the action, so nothing is done unrecorded)."""
    try:
        return await asyncpg.connect(url, server_settings={"application_name": "outbox audit"})
    except CONNECTION_ERRORS as error:
        raise AuditError(
            f"cannot reach PostgreSQL to record the action in the audit log, so it was not "
            f"done: {error}"
        ) from error


async def record(
    conn: Any,
    action: str,
    actor: Actor,
    *,
    target: str | None = None,
    counts: Mapping[str, int] | None = None,
    details: Mapping[str, Any] | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> int:
    """Append one row on ``conn`` (an asyncpg connection, in the caller's transaction if it has
    one); returns its id. AuditError when it cannot be written."""
    query = RECORD.in_schema(schema)
    try:
        return int(
            await conn.fetchval(
                query.asyncpg_sql,
                *query.asyncpg_args(
                    {
                        "actor": actor.name,
                        "via": actor.via,
                        "action": action,
                        "target": target,
                        "counts": json.dumps(dict(counts or {})),
                        "details": json.dumps(dict(details or {}), default=str),
                        "host": actor.host,
                    }
                ),
            )
        )
    except (asyncpg.PostgresError, *CONNECTION_ERRORS) as error:
        hint = " (run `outbox migrate`)" if isinstance(error, asyncpg.UndefinedTableError) else ""
        raise AuditError(
            f"the audit log could not be written ({action} by {actor.name}): {error}{hint}"
        ) from error


async def recent(
    conn: Any,
    *,
    limit: int = 50,
    action: str | None = None,
    since_s: float | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> list[AuditEntry]:
    """The newest ``limit`` rows, newest first, optionally of one action (or prefix) and no
    older than ``since_s``."""
    query = RECENT.in_schema(schema)
    if since_s is not None and not since_s <= MAX_SINCE_S:  # NaN too
        since_s = None
    rows = await conn.fetch(
        query.asyncpg_sql,
        *query.asyncpg_args({"action": action, "since_s": since_s, "limit": limit}),
    )
    return [
        AuditEntry(
            id=row["id"],
            at=row["at"],
            actor=row["actor"],
            via=row["via"],
            action=row["action"],
            target=row["target"],
            counts=json.loads(row["counts"]),
            details=json.loads(row["details"]),
            host=row["host"],
        )
        for row in rows
    ]
