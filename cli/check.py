"""``outbox check``: are PostgreSQL and Redis reachable, and is the schema current?

Says exactly what is missing and how to start it, instead of a traceback; ``make run`` calls it
first.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
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


async def _check_redis(url: str, password: str | None, timeout_s: float) -> str | None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(
        url, password=password, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
    )
    try:
        await client.ping()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    finally:
        await client.aclose()
    return None


async def _run(timeout_s: float) -> list[tuple[str, str, str | None, str]]:
    from outbox.settings import get_settings, redact_url

    settings = get_settings()
    pg_url = settings.libpq_url()
    redis_url = settings.redis_streams_url.get_secret_value()
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    pg, rd = await asyncio.gather(
        _check_postgres(pg_url, timeout_s), _check_redis(redis_url, password, timeout_s)
    )
    return [
        ("PostgreSQL", redact_url(pg_url), pg, _PG_HINT),
        ("Redis", redact_url(redis_url), rd, _REDIS_HINT),
    ]


def run(args: argparse.Namespace) -> int:
    from cli import eventloop

    results = eventloop.run(_run(args.timeout))
    failed = False
    for name, where, problem, hint in results:
        if problem is None:
            print(f"ok       {name} at {where}")
        else:
            failed = True
            print(f"MISSING  {name} at {where}: {problem}\n         -> {hint}", file=sys.stderr)
    return 2 if failed else 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    check = sub.add_parser(
        "check",
        help="check that PostgreSQL and Redis are reachable",
        description="Connect to DATABASE_URL and REDIS_STREAMS_URL and say what is missing.",
    )
    check.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait for each (default: 3)"
    )
    check.set_defaults(handler=run)
