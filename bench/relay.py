"""How fast does the relay move events, how soon after commit, and what does it cost emitters?

1. **drain**: ``--events`` events pre-filled over ``--services`` services, drained by one relay
   (batches of RELAY_BATCH_SIZE, one Redis round trip per batch); beside it a naive relay (one
   row per round trip: select one, XADD one, update the cursor) on ``--naive-events`` events.
   Goal (issue 3): >= 50,000 ev/s and >= 25x naive.
2. **latency**: 16 connections emit ``--rate`` events/s in total (one event per transaction,
   the connections' turns staggered so that the rate is steady) while the relay runs. Commit
   time is ``time.time()`` right after COMMIT returns. Publish time is measured two ways: the
   entry id's millisecond (Redis's clock at XADD; same host, so the clocks agree, but only to
   the millisecond: the XADD is taken at the middle of it, good to ±0.5 ms, as
   bench/pipeline.py does) and the moment a consumer blocked in XREAD receives the entry
   (microsecond clock, but includes delivery to the consumer: an upper bound). Goal: p50 <= 2
   ms, p99 <= 10 ms, on the first.
3. **emit cost**: 16 connections emit as fast as they can, with the relay running and stopped.
   Goal: with >= 90% of without.
4. **long transactions** (issue 22): the latency run again, interleaved with one during which
   a write transaction stays open in another database of the same server, and one during which
   it stays open in the outbox's own database, emitting an event at its start and one at its
   end (``--foreign-seconds``, the whole run). Before decision 0019 the first held every event
   until it ended (p50 3.4 s measured at 200 ev/s), before decision 0020 the second did. Goal:
   p99 within 2x of the runs without, every event published exactly once (the long
   transaction's two events included, after its commit).

    python -m bench.relay [--events 200000] [--naive-events 5000] [--latency-seconds 10]
                          [--foreign-seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import asyncpg
import redis.asyncio as aioredis

import outbox
from bench.common import (
    ReadReply,
    check,
    emit_flat_out,
    percentile,
    process_cpu_s,
    scratch_database,
    write_result,
    xadd_ms,
)
from outbox.cli.heap import settle_for_batches
from outbox.relay.daemon import Relay
from outbox.settings import Settings, get_settings
from outbox.streams.keys import Keys

# Pre-fill in SQL: emit() one by one would make the fill, not the drain, the slow part.
PREFILL = """
INSERT INTO outbox_events (event_id, stream, event_type, source, aggregate_id, priority, payload,
                           correlation_id)
SELECT gen_random_uuid(), 'svc' || (g % $2), 'thing_happened', 'svc' || (g % $2),
       'agg-' || (g % 1000), CASE WHEN g % 10 = 0 THEN 2 ELSE 1 END,
       jsonb_build_object('n', g, 'name', 'user-' || g, 'email', 'user-' || g || '@example.com',
                          'roles', jsonb_build_array('ops', 'admin')),
       gen_random_uuid()::text
  FROM generate_series($1::bigint, $1::bigint + $3 - 1) AS g
"""


async def _until(check: Callable[[], bool], timeout_s: float) -> None:
    """Poll ``check`` every 2 ms until it holds or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check() or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.002)


def _settings(url: str, prefix: str, **overrides: Any) -> Settings:
    base = get_settings()
    values = {**base.model_dump(), "database_url": url, "stream_prefix": prefix, **overrides}
    return type(base).model_validate(values)


@contextlib.asynccontextmanager
async def _running(settings: Settings) -> AsyncIterator[Relay]:
    relay = Relay.from_settings(settings, instance_id=f"bench-{uuid.uuid4().hex[:6]}")
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        relay.stop()
        await task


@contextlib.asynccontextmanager
async def _relay_process(
    url: str, prefix: str, poll_min_ms: float | None = None
) -> AsyncIterator[None]:
    """``outbox relay`` as its own process (as deployed): it must not share an event loop, or a
    CPU, with the emitters it is measured against. Ready once its status row shows a lease.
    ``poll_min_ms``: its RELAY_POLL_MIN_MS (default: the setting's)."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_STREAMS_URL": get_settings().redis_streams_url.get_secret_value(),
        "STREAM_PREFIX": prefix,
        "RELAY_TRIM_INTERVAL_S": "0",
        "RELAY_INSTANCE_ID": prefix,
    }
    if poll_min_ms is not None:
        env["RELAY_POLL_MIN_MS"] = str(poll_min_ms)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outbox.cli.main", "relay", env=env
    )
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + 30
        while True:
            row = await conn.fetchrow(
                "SELECT streams FROM relay_instances WHERE instance_id = $1", prefix
            )
            if (row is not None and row["streams"]) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        yield
    finally:
        await conn.close()
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)


async def _cleanup(client: aioredis.Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"*{prefix}:*", count=1000)]
    for start in range(0, len(keys), 500):
        await client.delete(*keys[start : start + 500])


async def _prefill(conn: asyncpg.Connection, events: int, services: int) -> None:
    chunk = 20_000
    for start in range(0, events, chunk):
        await conn.execute(PREFILL, start, services, min(chunk, events - start))
    await conn.execute("VACUUM ANALYZE outbox_events")


async def drain(url: str, client: aioredis.Redis, events: int, services: int) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    await _prefill(conn, events, services)
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    settings = _settings(url, prefix, relay_trim_interval_s=0)
    # The relay runs in this process, so this process's CPU is the relay's; PostgreSQL and Redis
    # from /proc. The second reading is taken while the relay's backends are still running: once
    # they exit, their CPU is in no process's counters until the postmaster has reaped them
    # (then in its children's time), so a reading after the relay stopped read 0.0-9.7 µs.
    settle_for_batches()  # as `outbox relay` does once it has started
    servers = process_cpu_s("postgres", "redis-server")
    relay_cpu = time.process_time()
    start = time.perf_counter()
    async with _running(settings) as relay:
        await _until(lambda: relay.status.published_count >= events, timeout_s=600)
        elapsed = time.perf_counter() - start
        relay_cpu = time.process_time() - relay_cpu
        after = process_cpu_s("postgres", "redis-server")
    servers = {k: v - servers[k] for k, v in after.items()}
    await _cleanup(client, prefix)
    await conn.close()
    per_event = {"relay": relay_cpu, **servers}
    return {
        "events": events,
        "services": services,
        "seconds": round(elapsed, 3),
        "events_per_s": round(events / elapsed),
        "cpu_us_per_event": {k: round(v / events * 1e6, 1) for k, v in per_event.items()},
    }


async def naive_drain(url: str, client: aioredis.Redis, events: int) -> dict[str, Any]:
    """One row per round trip: the relay as it is usually first written."""
    conn = await asyncpg.connect(url)
    await conn.execute("TRUNCATE outbox_events, relay_cursors")
    await _prefill(conn, events, 1)
    prefix = f"naive{uuid.uuid4().hex[:6]}"
    stream = Keys(prefix).stream("svc0")
    await conn.execute("INSERT INTO relay_cursors (stream, txid, position) VALUES ('svc0', '0', 0)")
    start = time.perf_counter()
    done = 0
    while done < events:
        row = await conn.fetchrow(
            """SELECT o.txid, o.position, o.event_id::text AS event_id, o.payload::text AS payload
                 FROM outbox_events o, relay_cursors c
                WHERE c.stream = 'svc0' AND o.stream = c.stream
                  AND (o.txid, o.position) > (c.txid, c.position)
                  AND o.txid < pg_snapshot_xmin(pg_current_snapshot())
                ORDER BY o.txid, o.position LIMIT 1"""
        )
        if row is None:  # held back by the xmin horizon (a transaction anywhere in the cluster)
            await asyncio.sleep(0.001)
            continue
        await client.xadd(stream, {"event_id": row["event_id"], "data": row["payload"]})
        await conn.execute(
            "UPDATE relay_cursors SET txid = $1, position = $2 WHERE stream = 'svc0'",
            row["txid"],
            row["position"],
        )
        done += 1
    elapsed = time.perf_counter() - start
    await _cleanup(client, prefix)
    await conn.close()
    return {"events": events, "seconds": round(elapsed, 3), "events_per_s": round(events / elapsed)}


async def latency(
    url: str,
    client: aioredis.Redis,
    rate: float,
    seconds: float,
    connections: int,
    poll_min_ms: float | None = None,
    emitted: Callable[[str], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """``emitted``: awaited once the emitters are done, before waiting for what is left, with
    the run's stream prefix."""
    prefix = f"lat{uuid.uuid4().hex[:6]}"
    keys = Keys(prefix)
    stream = keys.stream("identity")
    settings = _settings(url, prefix, relay_trim_interval_s=0)
    conns = [await asyncpg.connect(url) for _ in range(connections)]
    committed: dict[str, float] = {}
    received: dict[str, tuple[float, float]] = {}
    seen_entries = 0  # every entry read: more than events published means a duplicate
    stop_consumer = asyncio.Event()

    async def consume() -> None:
        nonlocal seen_entries
        reader = aioredis.Redis.from_url(settings.redis_streams_url.get_secret_value())
        last = "0-0"
        while not stop_consumer.is_set():
            reply = cast(ReadReply, await reader.xread({stream: last}, block=200, count=1000))
            now = time.time()
            for _, entries in reply:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    received[fields[b"event_id"].decode()] = (now, xadd_ms(last))
                    seen_entries += 1
        await reader.aclose()

    async def emitter(index: int, conn: asyncpg.Connection, deadline: float) -> None:
        # Emitter i starts i/rate seconds in, so the 16 together emit at a steady rate instead
        # of all committing at the same moments, every connections/rate seconds (bursts of 16).
        interval = connections / rate
        await asyncio.sleep(index / rate)
        next_at = time.perf_counter()
        while time.perf_counter() < deadline:
            async with conn.transaction():
                event = await outbox.emit(
                    conn, service="identity", event_type="user_created", data={"user_id": 1}
                )
            committed[str(event.event_id)] = time.time()
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    async with conns[0].transaction():
        await outbox.emit(conns[0], service="identity", event_type="warm_up", data={})
    async with _relay_process(url, prefix, poll_min_ms):
        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0.5)
        deadline = time.perf_counter() + seconds
        await asyncio.gather(*(emitter(i, c, deadline) for i, c in enumerate(conns)))
        if emitted is not None:
            await emitted(prefix)
        await _until(lambda: len(received) >= len(committed), timeout_s=10)
        stop_consumer.set()
        await consumer
    for conn in conns:
        await conn.close()
    await _cleanup(client, prefix)
    by_consumer = [(received[e][0] - t) * 1000 for e, t in committed.items() if e in received]
    by_entry_id = [received[e][1] - t * 1000 for e, t in committed.items() if e in received]
    return {
        "target_rate_per_s": rate,
        "events": len(committed),
        "achieved_rate_per_s": round(len(committed) / seconds),
        "missing": len(committed) - len(by_consumer),
        "duplicates": seen_entries - len(received),
        "entry_id_ms": {
            "p50": percentile(by_entry_id, 0.5),
            "p99": percentile(by_entry_id, 0.99),
        },
        "consumer_receive_ms": {
            "p50": percentile(by_consumer, 0.5),
            "p99": percentile(by_consumer, 0.99),
            "mean": round(statistics.fmean(by_consumer), 2),
        },
    }


async def latency_beside_a_long_transaction(
    url: str, client: aioredis.Redis, rate: float, seconds: float, connections: int, where: str
) -> dict[str, Any]:
    """The latency run while a write transaction stays open for all of it: in another database
    of the same server (``where="other"``; a temporary table gives it an xid and it rolls back,
    leaving nothing), or in the outbox's own (``"own"``; it emits an event to another service
    at its start and one at its end, commits, and both must then arrive once)."""
    holder = await asyncpg.connect(url if where == "own" else url.rsplit("/", 1)[0] + "/postgres")
    tx = holder.transaction()
    await tx.start()
    await holder.execute("CREATE TEMP TABLE bench_long_hold (n int)")
    xid = await holder.fetchval("SELECT pg_current_xact_id()::text")
    held: dict[str, Any] = {}
    ids: list[str] = []
    if where == "own":
        first = await outbox.emit(holder, service="assets", event_type="held", data={})
        ids.append(str(first.event_id))

    async def end_it(prefix: str) -> None:
        # Still the snapshots' xmin when the emitters stop: it was there all along. Ended now,
        # so that a relay it holds back publishes what it kept.
        probe = await asyncpg.connect(url)
        xmin = await probe.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        held["xmin_held_at_end"] = xmin == xid
        if where == "own":
            event = await outbox.emit(holder, service="assets", event_type="held", data={})
            ids.append(str(event.event_id))
            held["deferred"] = int(xid) in [
                int(t) for t in await probe.fetchval("SELECT txids::text[] FROM relay_deferred")
            ]
            await tx.commit()
            stream = Keys(prefix).stream("assets")

            deadline = time.monotonic() + 10
            while True:  # until both arrived, or 10 s
                entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(stream))
                found = [fields[b"event_id"].decode() for _, fields in entries]
                held["held_events"] = {e: found.count(e) for e in ids}
                if min(held["held_events"].values()) >= 1 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.01)
            held["held_events_once"] = all(n == 1 for n in held["held_events"].values())
            del held["held_events"]
        else:
            await tx.rollback()
        await probe.close()

    try:
        result = await latency(url, client, rate, seconds, connections, emitted=end_it)
    finally:
        if "xmin_held_at_end" not in held:  # the run failed before end_it
            await tx.rollback()
        await holder.close()
    return {**result, "where": where, "held_xid": int(xid), **held}


async def emit_rate(
    url: str,
    client: aioredis.Redis,
    seconds: float,
    connections: int,
    with_relay: bool,
    poll_min_ms: float | None = None,
) -> float:
    prefix = f"emit{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(url)
    # Each run starts from an empty outbox. Otherwise a run with the relay would first drain
    # every event of the runs before it (the relay's cursor is per service, not per prefix):
    # tens of thousands of events published in its timed window, a backlog drain that is not
    # the relay keeping up with the emitters it is measured against.
    await conn.execute("TRUNCATE outbox_events, relay_cursors")
    if with_relay:
        async with conn.transaction():
            await outbox.emit(conn, service="identity", event_type="warm_up", data={})
    await conn.close()
    relay = _relay_process(url, prefix, poll_min_ms) if with_relay else contextlib.nullcontext()
    async with relay:
        rate = await emit_flat_out(url, connections, seconds, service="identity")
    await _cleanup(client, prefix)
    return rate


async def _truncate(url: str) -> None:
    conn = await asyncpg.connect(url)
    await conn.execute("TRUNCATE outbox_events, relay_cursors")
    await conn.close()


async def main(args: argparse.Namespace) -> None:
    client = aioredis.Redis.from_url(get_settings().redis_streams_url.get_secret_value())
    result: dict[str, Any] = {}
    async with scratch_database("relay") as url:
        result["drain"] = await drain(url, client, args.events, args.services)
        result["naive"] = await naive_drain(url, client, args.naive_events)
        result["drain_vs_naive"] = round(
            result["drain"]["events_per_s"] / result["naive"]["events_per_s"], 1
        )
        await _truncate(url)
        result["latency"] = await latency(
            url, client, args.rate, args.latency_seconds, args.connections
        )
        if args.foreign_seconds > 0:
            # Interleaved: without, beside one in another database, without, beside one in
            # this database, without; the runs without give the reference p99 (the highest, so
            # noise on one side is not taken for a regression).
            runs: dict[str, list[dict[str, Any]]] = {"without": [], "other": [], "own": []}
            for side in ("without", "other", "without", "own", "without"):
                await _truncate(url)
                if side == "without":
                    run = await latency(
                        url, client, args.rate, args.foreign_seconds, args.connections
                    )
                else:
                    run = await latency_beside_a_long_transaction(
                        url, client, args.rate, args.foreign_seconds, args.connections, side
                    )
                runs[side].append(run)
            reference = max(r["entry_id_ms"]["p99"] for r in runs["without"])
            result["foreign_transaction"] = {
                "seconds": args.foreign_seconds,
                "without": runs["without"],
                "with": runs["other"][0],
                "p99_ratio": round(runs["other"][0]["entry_id_ms"]["p99"] / reference, 2),
            }
            result["own_transaction"] = {
                "seconds": args.foreign_seconds,
                "with": runs["own"][0],
                "p99_ratio": round(runs["own"][0]["entry_id_ms"]["p99"] / reference, 2),
            }
        # Interleaved pairs, so drift on a shared host hits both sides alike; the median pair.
        pairs = []
        for _ in range(args.emit_repeats):
            without = await emit_rate(url, client, args.emit_seconds, args.connections, False)
            with_ = await emit_rate(url, client, args.emit_seconds, args.connections, True)
            pairs.append((with_ / without, round(without), round(with_)))
        ratio, without, with_ = sorted(pairs)[len(pairs) // 2]
        result["emit"] = {
            "connections": args.connections,
            "without_relay_per_s": without,
            "with_relay_per_s": with_,
            "ratio": round(ratio, 3),
            "ratios_seen": [round(p[0], 3) for p in pairs],
        }
    await client.aclose()
    drain_rate = result["drain"]["events_per_s"]
    latency_ms = result["latency"]["entry_id_ms"]
    # The rate the emitters reached: on a slow host 16 paced emitters may fall short of --rate.
    achieved = result["latency"]["achieved_rate_per_s"]
    at_rate = f"{achieved:g} ev/s" + (f" (of {args.rate:g} asked)" if achieved < args.rate else "")
    checks = []
    if "foreign_transaction" in result:
        foreign = result["foreign_transaction"]
        held = foreign["with"]
        checks = [
            check(
                f"commit → XADD p99 with a write transaction open {args.foreign_seconds:g} s in "
                f"another database, vs without ({held['entry_id_ms']['p99']} ms)",
                foreign["p99_ratio"],
                "<=",
                2,
                "x",
            ),
            check(
                "events lost or duplicated beside it",
                held["missing"] + held["duplicates"],
                "<=",
                0,
            ),
        ]
    if "own_transaction" in result:
        own = result["own_transaction"]
        held = own["with"]
        checks += [
            check(
                f"commit → XADD p99 with a write transaction open {args.foreign_seconds:g} s in "
                f"the outbox's own database, vs without ({held['entry_id_ms']['p99']} ms)",
                own["p99_ratio"],
                "<=",
                2,
                "x",
            ),
            check(
                "events lost or duplicated beside it, its own two included",
                held["missing"] + held["duplicates"] + (0 if held["held_events_once"] else 1),
                "<=",
                0,
            ),
        ]
    write_result(
        "relay",
        result,
        [
            check(f"drain {args.events:,} pre-filled events", drain_rate, ">=", 50_000, " ev/s"),
            check(
                f"drain vs naive ({result['naive']['events_per_s']} ev/s)",
                result["drain_vs_naive"],
                ">=",
                25,
                "x",
            ),
            check(f"commit → XADD at {at_rate}, p50", latency_ms["p50"], "<=", 2, " ms"),
            check(f"commit → XADD at {at_rate}, p99", latency_ms["p99"], "<=", 10, " ms"),
            check(
                f"emit rate with relay / without, {args.connections} connections (median of "
                f"{args.emit_repeats} pairs: {with_} / {without} tx/s)",
                round(ratio, 3),
                ">=",
                0.9,
            ),
            *checks,
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events pre-filled to drain")
    parser.add_argument("--services", type=int, default=4, help="services they are spread over")
    parser.add_argument("--naive-events", type=int, default=5_000)
    parser.add_argument("--rate", type=float, default=2000, help="emit rate of the latency run")
    parser.add_argument("--latency-seconds", type=float, default=10)
    parser.add_argument("--emit-seconds", type=float, default=5)
    parser.add_argument("--emit-repeats", type=int, default=3, help="interleaved pairs, median")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--foreign-seconds",
        type=float,
        default=60,
        help="length of each run of the long-transaction comparisons (0: skip them)",
    )
    asyncio.run(main(parser.parse_args()))
