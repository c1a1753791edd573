"""What RELAY_POLL_MIN_MS trades: commit → XADD latency against the emitters' lost throughput.

The relay waits RELAY_POLL_MIN_MS after a poll that found events (relay/wakeup.py). A short wait
keeps latency low; every poll costs the relay, its PostgreSQL backend and Redis a fixed amount of
CPU (system calls, mostly), which on a host whose cores the emitters already fill comes out of
their throughput. For each value given, this runs :mod:`bench.relay`'s latency measurement (16
paced emitters at ``--rate`` events/s) and its emit-rate ratio (16 emitters flat out, relay
running / stopped, median of ``--emit-repeats`` interleaved pairs), with ``outbox relay``
started under that setting. No goal is checked here: the figures are for choosing the setting
(docs/relay.md, "Polling and CPU").

    python -m bench.relay_poll [--poll-min-ms 2,5,10,20] [--rate 2000]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import redis.asyncio as aioredis

from bench.common import scratch_database, write_result
from bench.relay import emit_rate, latency
from outbox.settings import get_settings


async def main(args: argparse.Namespace) -> None:
    client = aioredis.Redis.from_url(get_settings().redis_streams_url.get_secret_value())
    rows: list[dict[str, Any]] = []
    try:
        async with scratch_database("relay_poll") as url:
            for poll_min_ms in args.poll_min_ms:
                lat = await latency(url, client, args.rate, args.latency_seconds, 16, poll_min_ms)
                pairs = []
                for _ in range(args.emit_repeats):
                    without = await emit_rate(url, client, args.emit_seconds, 16, False)
                    with_ = await emit_rate(url, client, args.emit_seconds, 16, True, poll_min_ms)
                    pairs.append((with_ / without, round(without), round(with_)))
                ratio, without, with_ = sorted(pairs)[len(pairs) // 2]
                row = {
                    "poll_min_ms": poll_min_ms,
                    "latency_rate_per_s": lat["achieved_rate_per_s"],
                    "commit_to_xadd_ms": lat["entry_id_ms"],
                    "emit_ratio": round(ratio, 3),
                    "emit_ratios_seen": [round(p[0], 3) for p in pairs],
                    "emit_without_relay_per_s": without,
                    "emit_with_relay_per_s": with_,
                }
                print(row, flush=True)
                rows.append(row)
    finally:
        await client.aclose()
    write_result("relay_poll", {"rate_per_s": args.rate, "settings": rows}, [])


def _floats(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of milliseconds: {text!r}") from None
    if not values or any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError("give one or more positive values, e.g. 2,5,10")
    return values


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--poll-min-ms",
        type=_floats,
        default=[2.0, 5.0, 10.0, 20.0],
        help="comma-separated RELAY_POLL_MIN_MS values to measure (default 2,5,10,20)",
    )
    parser.add_argument("--rate", type=float, default=2000, help="emit rate of the latency runs")
    parser.add_argument("--latency-seconds", type=float, default=10)
    parser.add_argument("--emit-seconds", type=float, default=5)
    parser.add_argument("--emit-repeats", type=int, default=3, help="interleaved pairs, median")
    asyncio.run(main(parser.parse_args()))
