"""What the relay costs 16 flat-out emitters: its wake-ups, its round trips, or its work.

Issue 3 asks that 16 emitters keep >= 90% of their rate while the relay runs. On a host whose
cores the emitters already fill, anything else that runs takes from them. This separates the
parts of the relay's footprint by running, beside the same emitters, stand-ins that do only
part of what the relay does (each in a process of its own, as the relay is):

- ``idle``: wakes every ``--interval`` seconds and does nothing else (the relay's timer);
- ``ping``: wakes, then one PostgreSQL ``SELECT 1`` and one Redis ``PING`` (its round trips);
- ``fetch``: wakes, then the relay's own batch query (``FETCH_BATCH``, following the emitters'
  events) and a Redis ``PING``: everything but the publish;

then ``outbox relay`` itself at ``RELAY_POLL_MIN_MS`` 2 (the default), 20, 50 and 100: how
seldom the relay would have to poll at the emitters' peak for them to keep 90% of their rate,
i.e. what a relay that polls less under load would trade in latency. Each round runs the emitters
alone first; every ratio is against that round's run alone, and the medians over the rounds are
the figures to read (a single 5 s run varies by 10 to 20% either way here). No goal is checked: the
figures locate the cost (docs/decisions/0008-speed-goals-on-two-cores.md).

    python -m bench.relay_standin [--rounds 6] [--seconds 5] [--interval 0.002]
                                  [--relay-poll-ms 2,20,50,100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench.common import emit_flat_out, scratch_database, write_result
from bench.relay import emit_rate
from outbox.settings import get_settings

MODES = ("idle", "ping", "fetch")
RELAY_POLL_MS = "2,20,50,100"


async def stand_in(url: str, redis_url: str, mode: str, interval_s: float) -> None:
    """Run one stand-in until SIGTERM; print what it did as one line of ``key=value``."""
    from outbox.relay import queries
    from outbox.relay.cursor import START, Cursor, connect

    conn = await connect(url, f"bench stand-in {mode}")
    client = aioredis.Redis.from_url(redis_url)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    fetch = await conn.prepare(queries.FETCH_BATCH)
    cursor = START
    polls = rows = 0
    started, cpu = time.perf_counter(), time.process_time()
    while not stop.is_set():
        if mode == "fetch":
            # One unpartitioned service; $7 = 0: every running transaction counts as young, as
            # the relay's emitters' do (relay.queries.HORIZON never reads pg_stat_activity).
            batch = await fetch.fetch(
                ["identity"], [cursor.txid], [cursor.position], 500, "3", [1], 0
            )
            if batch:
                cursor = Cursor(batch[-1]["txid"], batch[-1]["position"])
                rows += len(batch)
        elif mode == "ping":
            await conn.fetchval("SELECT 1")
        if mode != "idle":
            await client.ping()
        polls += 1
        await asyncio.sleep(interval_s)
    elapsed = time.perf_counter() - started
    print(
        f"polls_per_s={polls / elapsed:.0f} rows_per_s={rows / elapsed:.0f} "
        f"cpu_core={(time.process_time() - cpu) / elapsed:.3f}",
        flush=True,
    )
    await client.aclose()
    await conn.close()


@contextlib.asynccontextmanager
async def running_stand_in(
    url: str, mode: str, interval_s: float, report: dict[str, str]
) -> AsyncIterator[None]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.relay_standin",
        "--stand-in",
        mode,
        "--interval",
        str(interval_s),
        "--url",
        url,
        stdout=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(0.5)  # connected and polling before the emitters start
    try:
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = await process.communicate()
        for part in out.decode().split():
            key, _, value = part.partition("=")
            report[key] = value


async def empty_outbox(url: str) -> None:
    """As :func:`bench.relay.emit_rate` starts each run: "fetch" then follows only new rows."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE outbox_events, relay_cursors")
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    redis_url = get_settings().redis_streams_url.get_secret_value()
    client = aioredis.Redis.from_url(redis_url)
    rounds: list[dict[str, Any]] = []
    stand_ins: dict[str, list[dict[str, str]]] = {mode: [] for mode in MODES}
    try:
        async with scratch_database("relay_standin") as url:
            for _ in range(args.rounds):
                rates: dict[str, float] = {}
                rates["alone"] = await emit_rate(url, client, args.seconds, 16, False)
                for mode in MODES:
                    report: dict[str, str] = {}
                    await empty_outbox(url)
                    async with running_stand_in(url, mode, args.interval, report):
                        rates[mode] = await emit_flat_out(url, 16, args.seconds, service="identity")
                    stand_ins[mode].append(report)
                for poll_ms in args.relay_poll_ms:
                    rates[f"relay_{poll_ms}ms"] = await emit_rate(
                        url, client, args.seconds, 16, True, poll_ms
                    )
                ratios = {k: round(v / rates["alone"], 3) for k, v in rates.items()}
                print({"rates": {k: round(v) for k, v in rates.items()}, "ratios": ratios})
                rounds.append({"rates": {k: round(v) for k, v in rates.items()}, "ratios": ratios})
    finally:
        await client.aclose()
    names = list(rounds[0]["rates"])
    median_rate = {name: statistics.median(r["rates"][name] for r in rounds) for name in names}
    write_result(
        "relay_standin",
        {
            "connections": 16,
            "seconds_per_run": args.seconds,
            "stand_in_interval_s": args.interval,
            "relay_poll_min_ms": args.relay_poll_ms,
            # Two estimates, for a host this noisy: each round's ratio, then the median of those;
            # and the median rate of each setting against the median rate alone.
            "median_ratio": {
                name: round(statistics.median(r["ratios"][name] for r in rounds), 3)
                for name in names
            },
            "ratio_of_median_rates": {
                name: round(median_rate[name] / median_rate["alone"], 3) for name in names
            },
            "median_rate_per_s": median_rate,
            "stand_ins": stand_ins,
            "rounds": rounds,
        },
        [],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5, help="per emitting run")
    parser.add_argument("--interval", type=float, default=0.002, help="stand-ins' wait, s")
    parser.add_argument(
        "--relay-poll-ms",
        type=lambda text: [int(ms) for ms in text.split(",")],
        default=RELAY_POLL_MS,
        help="the relay's RELAY_POLL_MIN_MS values, comma-separated (default %(default)s)",
    )
    parser.add_argument("--stand-in", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.stand_in:
        asyncio.run(
            stand_in(
                parsed.url,
                get_settings().redis_streams_url.get_secret_value(),
                parsed.stand_in,
                parsed.interval,
            )
        )
    else:
        asyncio.run(main(parsed))
