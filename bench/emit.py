"""What does emit() cost a business transaction?

A business transaction inserts one row into a table of its own and commits; the same transaction
with one ``outbox.emit()`` beside the INSERT is measured at 1 and 16 connections, through a raw
asyncpg connection and through a SQLAlchemy AsyncSession. Reports transactions/s of each and the
ratio. Goal (issue 2): at 16 connections emit() costs at most 15% of the business throughput.

    python -m bench.emit [--seconds 10] [--connections 1 16]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

import outbox
from bench.common import scratch_database, write_result

BUSINESS_DDL = """
CREATE TABLE bench_users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
INSERT_USER = "INSERT INTO bench_users (name, email) VALUES ($1, $2)"
INSERT_USER_SA = text("INSERT INTO bench_users (name, email) VALUES (:name, :email)")

Transaction = Callable[[int], Awaitable[None]]


async def _run(workers: list[Transaction], seconds: float) -> float:
    """Run every worker in a loop for ``seconds``; return committed transactions per second."""
    deadline = time.perf_counter() + seconds
    counts = [0] * len(workers)

    async def loop(index: int, work: Transaction) -> None:
        n = 0
        while time.perf_counter() < deadline:
            await work(n)
            n += 1
        counts[index] = n

    start = time.perf_counter()
    await asyncio.gather(*(loop(i, w) for i, w in enumerate(workers)))
    return sum(counts) / (time.perf_counter() - start)


def _data(n: int) -> dict[str, Any]:
    return {"user_id": n, "name": f"user-{n}", "email": f"user-{n}@example.com", "roles": ["ops"]}


async def _asyncpg_case(url: str, connections: int, with_emit: bool, seconds: float) -> float:
    conns = [await asyncpg.connect(url) for _ in range(connections)]

    def worker(conn: asyncpg.Connection) -> Transaction:
        async def business(n: int) -> None:
            async with conn.transaction():
                await conn.execute(INSERT_USER, f"user-{n}", f"user-{n}@example.com")
                if with_emit:
                    await outbox.emit(
                        conn,
                        service="identity",
                        event_type="user_created",
                        data=_data(n),
                        aggregate_id=n,
                    )

        return business

    try:
        await _run([worker(c) for c in conns[:1]], 1.0)  # warm-up: prepared statements, caches
        return await _run([worker(c) for c in conns], seconds)
    finally:
        for conn in conns:
            await conn.close()


async def _session_case(url: str, connections: int, with_emit: bool, seconds: float) -> float:
    engine = create_async_engine(
        "postgresql+asyncpg://" + url.split("://", 1)[1], pool_size=connections, max_overflow=0
    )
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    def worker() -> Transaction:
        async def business(n: int) -> None:
            session: AsyncSession
            async with sessions() as session, session.begin():
                await session.execute(
                    INSERT_USER_SA, {"name": f"user-{n}", "email": f"user-{n}@example.com"}
                )
                if with_emit:
                    await outbox.emit(
                        session,
                        service="identity",
                        event_type="user_created",
                        data=_data(n),
                        aggregate_id=n,
                    )

        return business

    try:
        await _run([worker()], 1.0)
        return await _run([worker() for _ in range(connections)], seconds)
    finally:
        await engine.dispose()


async def main(seconds: float, connection_counts: list[int], repeats: int) -> None:
    cases: list[dict[str, Any]] = []
    async with scratch_database("emit") as url:
        setup = await asyncpg.connect(url)
        await setup.execute(BUSINESS_DDL)
        for driver, case in (
            ("asyncpg", _asyncpg_case),
            ("sqlalchemy_asyncsession", _session_case),
        ):
            for connections in connection_counts:
                without, with_ = [], []
                # Interleave the two variants so drift (autovacuum, checkpoints) hits both alike.
                for _ in range(repeats):
                    without.append(await case(url, connections, False, seconds))
                    with_.append(await case(url, connections, True, seconds))
                    await setup.execute("TRUNCATE bench_users; TRUNCATE outbox_events")
                    await setup.execute("CHECKPOINT")
                best_without, best_with = max(without), max(with_)
                cases.append(
                    {
                        "driver": driver,
                        "connections": connections,
                        "business_only_tx_per_s": round(best_without),
                        "business_plus_emit_tx_per_s": round(best_with),
                        "ratio": round(best_with / best_without, 3),
                        "emit_cost_pct": round(100 * (1 - best_with / best_without), 1),
                        "runs_without": [round(x) for x in without],
                        "runs_with": [round(x) for x in with_],
                    }
                )
        await setup.close()
    write_result(
        "emit",
        {
            "seconds_per_run": seconds,
            "repeats": repeats,
            "goal": "emit_cost_pct <= 15 at 16 connections",
            "cases": cases,
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each run")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (best is kept)")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.connections, args.repeats))
