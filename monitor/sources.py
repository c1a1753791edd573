"""The PostgreSQL side of a snapshot: outbox backlog, relay instances, projection consumers."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import asyncpg

from outbox.monitor import queries
from outbox.naming import DEFAULT_SCHEMA, in_schema
from outbox.partitioning import Partitioning
from outbox.streams.connection import RedisClient
from outbox.streams.errors import RedisUnavailableError, StreamsError
from outbox.streams.heartbeat import ConsumerReport, read_reports
from outbox.streams.keys import TENANT_INFIX, Keys

#: A consumer that stopped cleanly is shown this long after (like projection consumers).
STOPPED_SHOWN_S = 3600.0

#: Backlogs are counted up to this many events per stream (then shown as "at least").
UNPUBLISHED_COUNT_CAP = 100_000


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def outbox_side(
    conn: asyncpg.Connection, relay_alive_s: float, schema: str = DEFAULT_SCHEMA
) -> dict[str, Any]:
    """``relay_alive_s``: a relay whose heartbeat is younger than this is taken at its word
    when it reports a service it is publishing again (the backlog counts from its cursor)."""
    db_now = await conn.fetchval(queries.DATABASE_NOW)
    rows = await conn.fetch(
        in_schema(queries.OUTBOX_STREAMS, schema), UNPUBLISHED_COUNT_CAP, relay_alive_s
    )
    blocker = await conn.fetchrow(queries.OLDEST_WRITE_TRANSACTION)
    deferred = await conn.fetchval(in_schema(queries.DEFERRED_TRANSACTIONS, schema))
    return {
        "db_now": float(db_now),
        "streams": [
            {
                "stream": row["stream"],
                "cursor": (
                    {"txid": row["cursor_txid"], "position": row["cursor_position"]}
                    if row["cursor_txid"] is not None
                    else None
                ),
                "cursor_age_s": _float(row["cursor_age_s"]),
                "republishing": bool(row["republishing"]),
                "unpublished": int(row["unpublished"]),
                "unpublished_capped": int(row["unpublished"]) >= UNPUBLISHED_COUNT_CAP,
                "oldest_unpublished_age_s": _float(row["oldest_unpublished_age_s"]),
            }
            for row in rows
        ],
        "oldest_write_transaction": (
            {
                "pid": blocker["pid"],
                "age_s": round(float(blocker["age_s"] or 0.0), 3),
                "query_start": blocker["query_start"].isoformat()
                if blocker["query_start"]
                else None,
                "state": blocker["state"],
                "database": blocker["datname"],
                "gid": blocker["gid"],
                "deferred": blocker["xid32"] in deferred,
            }
            if blocker
            else None
        ),
        "deferred_transactions": len(deferred),
    }


async def tenant_side(
    conn: asyncpg.Connection, keys: Keys, schema: str = DEFAULT_SCHEMA
) -> tuple[dict[str, set[str]], dict[str, dict[str, int]]]:
    """Per tenant: the services whose tenant streams the relay has published to (its marks),
    and the tenant's unpublished events per service (each counted up to the cap)."""
    pattern = _like(f"{keys.prefix}{TENANT_INFIX}") + "%"
    services: dict[str, set[str]] = defaultdict(set)
    for row in await conn.fetch(in_schema(queries.TENANT_STREAM_KEYS, schema), pattern):
        parsed = keys.parse_tenant_stream(row["key"])
        if parsed is not None:
            services[parsed[0]].add(parsed[1])
    backlog: dict[str, dict[str, int]] = defaultdict(dict)
    for row in await conn.fetch(in_schema(queries.TENANT_BACKLOG, schema), UNPUBLISHED_COUNT_CAP):
        backlog[row["tenant_id"]][row["stream"]] = int(row["unpublished"])
    return dict(services), dict(backlog)


def _like(text: str) -> str:
    """``text`` matched literally by LIKE (a prefix may hold ``_``)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _float(value: Any) -> float | None:
    return round(float(value), 3) if value is not None else None


async def relay_side(
    conn: asyncpg.Connection, schema: str = DEFAULT_SCHEMA
) -> list[dict[str, Any]]:
    return [
        {
            "instance": row["instance_id"],
            "host": row["host"],
            "pid": row["pid"],
            "started_at": row["started_at"].isoformat(),
            "streams": list(row["streams"]),
            "cursors": _json(row["cursors"]),
            "stream_errors": _json(row["stream_errors"]),
            "republishing": _json(row["republishing"]),
            "published": int(row["published_count"]),
            "redis_losses": int(row["redis_losses"]),
            "last_error": row["last_error"],
            "last_error_at": row["last_error_at"].isoformat() if row["last_error_at"] else None,
            "stopped": row["stopped_at"] is not None,
            "heartbeat_age_s": round(float(row["heartbeat_age_s"]), 3),
        }
        for row in await conn.fetch(in_schema(queries.RELAYS, schema))
    ]


async def partition_side(
    conn: asyncpg.Connection, schema: str = DEFAULT_SCHEMA
) -> tuple[dict[str, Partitioning], list[dict[str, Any]]]:
    """Each partitioned service's partitioning, and each projection partition's owner."""
    partitionings = {
        row["stream"]: Partitioning.from_row(row)
        for row in await conn.fetch(in_schema(queries.PARTITIONINGS, schema))
    }
    owners = [
        {
            "projection": row["projection"],
            "service": row["stream"],
            "epoch": row["epoch"],
            "partition": row["partition"],
            "owner": row["owner"],
            "fence": int(row["fence"]),
            "drained": bool(row["drained"]),
            "lease_left_s": _float(row["lease_left_s"]) if row["owner"] else None,
        }
        for row in await conn.fetch(in_schema(queries.PARTITION_OWNERS, schema))
    ]
    return partitionings, owners


async def projection_side(
    conn: asyncpg.Connection, schema: str = DEFAULT_SCHEMA
) -> list[dict[str, Any]]:
    consumers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in await conn.fetch(in_schema(queries.PROJECTION_CONSUMERS, schema)):
        consumers[row["projection"]].append(
            {
                "consumer": row["consumer"],
                "host": row["host"],
                "pid": row["pid"],
                "processed": int(row["processed"]),
                "skipped": int(row["skipped"]),
                "failures": int(row["failures"]),
                "dead_lettered": int(row["dead_lettered"]),
                "last_error": row["last_error"],
                "stopped": row["stopped_at"] is not None,
                "heartbeat_age_s": round(float(row["heartbeat_age_s"]), 3),
            }
        )
    checkpoints = {
        row["projection"]: row
        for row in await conn.fetch(in_schema(queries.PROJECTION_CHECKPOINTS, schema))
    }
    names = sorted(set(consumers) | set(checkpoints))
    projections = []
    for name in names:
        members = consumers.get(name, [])
        checkpoint = checkpoints.get(name)
        projections.append(
            {
                "name": name,
                "state": checkpoint["status"] if checkpoint else "live",
                "consumers": members,
                "processed": sum(c["processed"] for c in members),
                "skipped": sum(c["skipped"] for c in members),
                "failures": sum(c["failures"] for c in members),
                "dead_lettered": sum(c["dead_lettered"] for c in members),
                # Every handler failure is either retried or dead-lettered.
                "retries": sum(max(0, c["failures"] - c["dead_lettered"]) for c in members),
            }
        )
    return projections


async def processing_latency(
    conn: asyncpg.Connection,
    projections: list[str],
    lookback_s: float,
    sample: int,
    schema: str = DEFAULT_SCHEMA,
) -> dict[str, dict[str, Any]]:
    """Per projection that applied outbox events in the last ``lookback_s``: p50, p95 and max
    of applied_at - occurred_at over the newest ``sample`` of them."""
    if not projections:
        return {}
    rows = await conn.fetch(
        in_schema(queries.PROCESSING_LATENCY, schema), lookback_s, sample, projections
    )
    return {
        row["projection"]: {
            "p50_s": round(float(row["p50_s"]), 4),
            "p95_s": round(float(row["p95_s"]), 4),
            "max_s": round(float(row["max_s"]), 4),
            "events": int(row["events"]),
            "lookback_s": round(lookback_s, 1),
        }
        for row in rows
    }


async def client_consumers(redis: RedisClient, keys: Keys) -> list[ConsumerReport]:
    """The reports of ``RedisStreamsClient`` consumers (streams/heartbeat.py); none when the
    key holds something else (logged by the caller's status, not fatal to the snapshot)."""
    try:
        return await read_reports(redis, keys.consumers)
    except RedisUnavailableError:
        raise
    except StreamsError:
        return []


def client_consumer_rows(
    reports: list[ConsumerReport], redis_now: float, tenant: str | None = None
) -> list[dict[str, Any]]:
    """Rows of the snapshot's ``consumers``: running ones, and those stopped within the hour
    (of ``tenant``'s heartbeats, ``<prefix>:tenant:<tenant>:consumers``, when given)."""
    rows = []
    for report in reports:
        age = max(0.0, redis_now - report.heartbeat_at) if report.heartbeat_at else None
        if report.stopped and (age is None or age > STOPPED_SHOWN_S):
            continue
        rows.append(
            {
                "group": report.group,
                "consumer": report.consumer,
                "streams": list(report.streams),
                "host": report.host,
                "pid": report.pid,
                "processed": report.processed,
                "failures": report.failures,
                "dead_lettered": report.dead_lettered,
                "reclaimed": report.reclaimed,
                "last_error": report.last_error,
                "stopped": report.stopped,
                "heartbeat_interval_s": report.heartbeat_interval_s,
                "heartbeat_age_s": None if age is None else round(age, 3),
                "tenant": tenant,
            }
        )
    rows.sort(key=lambda row: (row["group"], row["consumer"]))
    return rows
