"""What does emit() cost a business transaction?

A business transaction inserts one row into a table of its own and commits; the same transaction
with one ``outbox.emit()`` beside the INSERT is measured at 1 and 16 connections, through a raw
asyncpg connection and through a SQLAlchemy AsyncSession. Reports transactions/s of each and the
ratio. Goal (issue 2): at 16 connections emit() costs at most 15% of the business throughput.

Beside it, the same transaction with a second business INSERT instead of the emit() shows what
any second statement costs (the extra round trip), the floor for emit().

The 16 connections run in one Python process (``--processes 1``, as one service instance would)
and, to separate the client's CPU from the database's, spread over several processes
(``--processes 4``). Each variant runs ``--repeats`` times, interleaved, and the best is kept.

    python -m bench.emit [--seconds 8] [--connections 1 16] [--processes 1 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

import outbox
from bench.common import check, scratch_database, write_result

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


def _data(n: int) -> dict[str, Any]:
    return {"user_id": n, "name": f"user-{n}", "email": f"user-{n}@example.com", "roles": ["ops"]}


async def _loop_for(workers: list[Transaction], until: float) -> int:
    counts = [0] * len(workers)

    async def loop(index: int, work: Transaction) -> None:
        n = 0
        while time.time() < until:
            await work(n)
            n += 1
        counts[index] = n

    await asyncio.gather(*(loop(i, w) for i, w in enumerate(workers)))
    return sum(counts)


async def _client(
    driver: str, url: str, connections: int, extra: str, start_at: float, seconds: float
) -> int:
    """One process's share: ``connections`` loops from ``start_at`` for ``seconds``."""
    if driver == "asyncpg":
        conns = [await asyncpg.connect(url) for _ in range(connections)]

        def worker(conn: asyncpg.Connection) -> Transaction:
            async def business(n: int) -> None:
                async with conn.transaction():
                    await conn.execute(INSERT_USER, f"user-{n}", f"user-{n}@example.com")
                    if extra == "insert":
                        await conn.execute(INSERT_USER, f"again-{n}", f"user-{n}@example.com")
                    elif extra == "emit":
                        await outbox.emit(
                            conn,
                            service="identity",
                            event_type="user_created",
                            data=_data(n),
                            aggregate_id=n,
                        )

            return business

        workers = [worker(c) for c in conns]
        close: Callable[[], Awaitable[Any]] = lambda: asyncio.gather(*(c.close() for c in conns))  # noqa: E731
    else:
        engine = create_async_engine(
            "postgresql+asyncpg://" + url.split("://", 1)[1], pool_size=connections, max_overflow=0
        )
        sessions = async_sessionmaker(engine, expire_on_commit=False)

        def session_worker() -> Transaction:
            async def business(n: int) -> None:
                session: AsyncSession
                async with sessions() as session, session.begin():
                    await session.execute(
                        INSERT_USER_SA, {"name": f"user-{n}", "email": f"user-{n}@example.com"}
                    )
                    if extra == "insert":
                        await session.execute(
                            INSERT_USER_SA, {"name": f"again-{n}", "email": f"user-{n}@example.com"}
                        )
                    elif extra == "emit":
                        await outbox.emit(
                            session,
                            service="identity",
                            event_type="user_created",
                            data=_data(n),
                            aggregate_id=n,
                        )

            return business

        workers = [session_worker() for _ in range(connections)]
        close = engine.dispose
    try:
        await _loop_for(workers[:1], time.time() + 0.5)  # warm-up: statements, caches, pool
        await asyncio.sleep(max(0.0, start_at - time.time()))
        return await _loop_for(workers, start_at + seconds)
    finally:
        await close()


def _process_main(args: tuple[str, str, int, str, float, float]) -> int:
    return asyncio.run(_client(*args))


def run_case(
    driver: str, url: str, connections: int, processes: int, extra: str, seconds: float
) -> float:
    """Committed transactions per second over all processes, started together."""
    processes = min(processes, connections)
    shares = [
        connections // processes + (1 if i < connections % processes else 0)
        for i in range(processes)
    ]
    start_at = time.time() + 2.0 + 0.3 * processes  # after every process has connected
    if processes == 1:
        total = _process_main((driver, url, connections, extra, start_at, seconds))
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(processes) as pool:
            total = sum(
                pool.map(
                    _process_main,
                    [(driver, url, share, extra, start_at, seconds) for share in shares],
                )
            )
    return total / seconds


async def _reset(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE bench_users; TRUNCATE outbox_events")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def _prepare(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(BUSINESS_DDL)
    finally:
        await conn.close()


async def main(
    seconds: float,
    connection_counts: list[int],
    process_counts: list[int],
    drivers: list[str],
    repeats: int,
) -> None:
    cases: list[dict[str, Any]] = []
    async with scratch_database("emit") as url:
        await _prepare(url)
        for driver in drivers:
            for connections in connection_counts:
                for processes in sorted({min(p, connections) for p in process_counts}):
                    runs: dict[str, list[float]] = {"none": [], "emit": [], "insert": []}
                    # Interleave the variants so drift (autovacuum, checkpoints) hits all alike.
                    for _ in range(repeats):
                        for extra, results in runs.items():
                            await _reset(url)
                            results.append(
                                await asyncio.to_thread(
                                    run_case, driver, url, connections, processes, extra, seconds
                                )
                            )
                    best = {extra: max(results) for extra, results in runs.items()}
                    case = {
                        "driver": driver,
                        "connections": connections,
                        "client_processes": processes,
                        "business_only_tx_per_s": round(best["none"]),
                        "business_plus_emit_tx_per_s": round(best["emit"]),
                        "ratio": round(best["emit"] / best["none"], 3),
                        "emit_cost_pct": round(100 * (1 - best["emit"] / best["none"]), 1),
                        # The floor of any second statement: a second tiny business INSERT.
                        "business_plus_second_insert_tx_per_s": round(best["insert"]),
                        "second_statement_cost_pct": round(
                            100 * (1 - best["insert"] / best["none"]), 1
                        ),
                        "runs": {
                            extra: [round(x) for x in results] for extra, results in runs.items()
                        },
                    }
                    print(case, flush=True)
                    cases.append(case)
    at_16 = [c for c in cases if c["connections"] == 16]
    write_result(
        "emit",
        {
            "seconds_per_run": seconds,
            "repeats": repeats,
            "cases": cases,
        },
        [
            check(
                f"emit() cost, 16 connections, {c['driver']}, {c['client_processes']} "
                f"client process{'es' if c['client_processes'] > 1 else ''} "
                f"({round(c['business_only_tx_per_s'])} → "
                f"{round(c['business_plus_emit_tx_per_s'])} tx/s; a second INSERT costs "
                f"{c['second_statement_cost_pct']}%)",
                c["emit_cost_pct"],
                "<=",
                15,
                "%",
            )
            for c in at_16
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each run")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=[1, 4],
        help="client processes the connections are spread over",
    )
    parser.add_argument(
        "--drivers", nargs="+", default=["asyncpg", "sqlalchemy"], choices=["asyncpg", "sqlalchemy"]
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (best is kept)")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.connections, args.processes, args.drivers, args.repeats))
