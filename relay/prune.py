"""Outbox retention: delete published events older than a given age, in small chunks.

A row is deleted only when its service's relay cursor has passed it (it is in Redis) and it is
older than the cutoff; a service no relay has ever read keeps all its rows. Each chunk is its
own short transaction, so pruning a large backlog neither holds locks for long nor holds back
the relay's xmin horizon.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from outbox import audit
from outbox.naming import DEFAULT_SCHEMA, in_schema
from outbox.preflight import CONNECTION_ERRORS
from outbox.relay import queries
from outbox.relay.errors import DatabaseUnavailableError, RelayError

log = logging.getLogger("outbox.relay.prune")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """``30s``, ``30m``, ``12h``, ``7d``, ``2w`` → timedelta; ValueError otherwise."""
    match = _DURATION.match(text.lower())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 12h, 7d)")
    return timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])


@dataclass
class PruneProgress:
    deleted: int = 0
    walked_to_position: int = 0
    chunks: int = 0


async def prune(
    url: str,
    older_than: timedelta,
    *,
    chunk_size: int = 1000,
    progress: Callable[[PruneProgress], None] | None = None,
    schema: str = DEFAULT_SCHEMA,
    actor: audit.Actor | None = None,
) -> PruneProgress:
    """Delete published outbox rows older than ``older_than`` (the outbox in ``schema``);
    returns the totals. Given ``actor``, the audit log gets a ``started`` row before the first
    chunk and a ``finished`` (or ``failed``) row with the rows deleted."""
    chunk_query = in_schema(queries.PRUNE_CHUNK, schema)
    cutoff = datetime.now(UTC) - older_than
    state = PruneProgress()
    try:
        conn = await asyncpg.connect(url, server_settings={"application_name": "outbox-prune"})
    except CONNECTION_ERRORS as error:
        raise DatabaseUnavailableError(f"cannot connect to PostgreSQL: {error}") from error

    async def record(stage: str, **details: object) -> None:
        if actor is not None:
            await audit.record(
                conn,
                "prune",
                actor,
                target="outbox_events",
                counts={"deleted": state.deleted, "chunks": state.chunks},
                details={"stage": stage, "cutoff": cutoff.isoformat(), **details},
                schema=schema,
            )

    try:
        await record("started")
        while True:
            row = await conn.fetchrow(chunk_query, state.walked_to_position, cutoff, chunk_size)
            if row is None or row["last_position"] is None:
                break
            state.walked_to_position = row["last_position"]
            state.deleted += row["deleted"]
            state.chunks += 1
            if progress is not None:
                progress(state)
            if not row["any_old"]:
                break
        await record("finished")
    except audit.AuditError:
        raise
    except CONNECTION_ERRORS as error:
        raise DatabaseUnavailableError(f"PostgreSQL connection lost: {error}") from error
    except asyncpg.UndefinedTableError as error:
        raise RelayError(f"the outbox tables are missing ({error}); run `outbox migrate`") from None
    except Exception as error:
        try:
            await record("failed", error=f"{error.__class__.__name__}: {error}")
        except audit.AuditError as not_recorded:
            log.error("event=prune_not_audited error=%s", not_recorded)
        raise
    finally:
        await conn.close()
    log.info(
        "event=outbox_pruned deleted=%d chunks=%d cutoff=%s",
        state.deleted,
        state.chunks,
        cutoff.isoformat(),
    )
    return state
