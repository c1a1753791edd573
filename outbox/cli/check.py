"""``outbox check``: are PostgreSQL and Redis reachable, and is the schema current?

Says exactly what is missing and how to start it, instead of a traceback; ``make run`` calls it
first. The exit code is 2 when a service cannot be reached or the relay's routing rules are
invalid (docs/routing.md). An out-of-date schema is reported
but does not change it: ``make run`` checks before it migrates.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from typing import Any

_PG_HINT = (
    "start PostgreSQL: `make up` (local install), or `docker compose up -d postgres`; "
    "or point DATABASE_URL at a running server"
)
_REDIS_HINT = (
    "start Redis: `make up` (local install), or `docker compose up -d redis`; "
    "or point REDIS_STREAMS_URL (and REDIS_PASSWORD) at a running server"
)


async def _check_postgres(url: str, timeout_s: float) -> str | None:
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=timeout_s)
    except asyncpg.InvalidCatalogNameError:
        return None  # the server answers; `outbox migrate` creates the database
    except Exception as error:  # every connect failure is reported the same way
        return f"{type(error).__name__}: {error}"
    await conn.close()
    return None


async def _check_redis(settings: Any, timeout_s: float) -> str | None:
    from outbox.errors import ConfigurationError
    from outbox.streams.connection import check_redis_mode, client_from_url

    client = client_from_url(
        settings.redis_url(),
        cluster=settings.cluster,
        password=settings.redis_password_text(),
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
    )
    try:
        await client.ping()
        await check_redis_mode(settings)
    except ConfigurationError as error:
        return str(error)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    finally:
        await client.aclose()
    return None


@dataclass
class _Report:
    #: (name, where, problem or None, hint) of each service.
    services: list[tuple[str, str, str | None, str]]
    #: Why the schema is older than this version; None when current or when PostgreSQL is down.
    schema: str | None
    #: The routing rules: how many, or why they are invalid (None: none set).
    routing: str | None = None
    routing_ok: bool = True


def _check_routing(settings: Any) -> tuple[str | None, bool]:
    """The relay's routing rules validated as the relay would at start (docs/routing.md)."""
    from outbox.errors import ConfigurationError
    from outbox.relay.routing import load_routing
    from outbox.streams.keys import Keys

    try:
        routing = load_routing(settings, Keys.for_settings(settings))
    except ConfigurationError as error:
        return str(error), False
    if routing is None:
        return None, True
    return f"{len(routing.rules)} rule(s), writing {', '.join(routing.target_streams())}", True


async def _run(timeout_s: float) -> _Report:
    from outbox.monitor import queries as monitor_queries
    from outbox.preflight import schema_problem
    from outbox.projections import queries as projection_queries
    from outbox.relay.cursor import RELAY_STATEMENTS
    from outbox.settings import get_settings, redact_url

    settings = get_settings()
    pg_url = settings.libpq_url()
    redis_url = settings.redis_url()
    pg, rd = await asyncio.gather(
        _check_postgres(pg_url, timeout_s), _check_redis(settings, timeout_s)
    )
    routing, routing_ok = _check_routing(settings)
    return _Report(
        routing=routing,
        routing_ok=routing_ok,
        services=[
            ("PostgreSQL", redact_url(pg_url), pg, _PG_HINT),
            ("Redis", redact_url(redis_url), rd, _REDIS_HINT),
        ],
        schema=None
        if pg is not None
        else await schema_problem(
            pg_url,
            {
                "relay": RELAY_STATEMENTS,
                "projection consumer": projection_queries.STATEMENTS,
                "monitor": monitor_queries.STATEMENTS,
            },
            schema=settings.outbox_schema,
            sees_every_row=True,
        ),
    )


def run(args: argparse.Namespace) -> int:
    from outbox.cli import eventloop

    report = eventloop.run(_run(args.timeout))
    failed = False
    for name, where, problem, hint in report.services:
        if problem is None:
            print(f"ok       {name} at {where}")
        else:
            failed = True
            print(f"MISSING  {name} at {where}: {problem}\n         -> {hint}", file=sys.stderr)
    if not failed:
        if report.schema is None:
            print("ok       schema: every table and column the relay, consumers and monitor use")
        else:
            print(f"OUTDATED schema: {report.schema}")
    if not report.routing_ok:
        failed = True
        print(f"INVALID  routing rules: {report.routing}", file=sys.stderr)
    elif report.routing is not None:
        print(f"ok       routing rules: {report.routing}")
    return 2 if failed else 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    check = sub.add_parser(
        "check",
        help="check that PostgreSQL and Redis are reachable and the schema is current",
        description="Connect to DATABASE_URL and REDIS_STREAMS_URL and say what is missing; "
        "report a schema older than this version (exit code 2 only for a service that "
        "cannot be reached).",
    )
    check.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait for each (default: 3)"
    )
    check.set_defaults(handler=run)
