"""How fast does the relay drain to a 3-primary Redis Cluster, against a single Redis?

Each round pre-fills ``--events`` events over ``--services`` services into a scratch database and
drains them with one in-process relay, once to the single Redis of ``REDIS_STREAMS_URL`` and
once to a cluster of three ``redis-server`` primaries that this benchmark starts on loopback
(and stops by PID). Rounds alternate which target goes first; the ratio of the medians is
reported. On this 2-core host the three nodes, PostgreSQL and the relay share the cores, so the
cluster cannot be faster here; it spreads the streams over nodes, one round trip per node per
batch. CPU per event: the relay's own (client side of the per-node publish), PostgreSQL's, and
each Redis node's (from /proc by PID).

Goal (issue 21, point 5): cluster drain >= 0.8x the single Redis's, in the same run.

    python -m bench.cluster [--events 100000] [--services 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import check, process_cpu_s, scratch_database, write_result
from bench.relay import _cleanup, _prefill, _running, _settings, _until
from outbox.cli.heap import settle_for_batches
from outbox.settings import get_settings
from outbox.streams.connection import client_from_url
from tests.fixtures_cluster import RedisClusterServers, start_cluster


def _pid_cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drain(
    url: str, redis_url: str, cluster: RedisClusterServers | None, events: int, services: int
) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    await conn.execute("TRUNCATE outbox_events, relay_cursors, relay_instances")
    await _prefill(conn, events, services)
    await conn.close()
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    settings = _settings(
        url,
        prefix,
        relay_trim_interval_s=0,
        redis_streams_url=redis_url,
        redis_cluster="true" if cluster else "auto",
        stream_key_layout="tagged" if cluster else None,
    )
    nodes = (
        {node.address: node.process.pid for node in cluster.nodes if node.process}
        if cluster
        else {}
    )
    settle_for_batches()
    node_cpu = {address: _pid_cpu_s(pid) for address, pid in nodes.items()}
    servers = process_cpu_s("postgres", "redis-server")
    relay_cpu = time.process_time()
    start = time.perf_counter()
    async with _running(settings) as relay:
        await _until(lambda: relay.status.published_count >= events, timeout_s=600)
        elapsed = time.perf_counter() - start
        relay_cpu = time.process_time() - relay_cpu
        after = process_cpu_s("postgres", "redis-server")
        node_cpu = {a: _pid_cpu_s(pid) - node_cpu[a] for a, pid in nodes.items()}
    assert relay.status.published_count == events
    client = client_from_url(redis_url, cluster=cluster is not None)
    await _cleanup(client, prefix)  # type: ignore[arg-type]
    await client.aclose()
    per_event = {
        "relay": relay_cpu,
        "postgres": after["postgres"] - servers["postgres"],
        "redis_all": after["redis-server"] - servers["redis-server"],
    }
    return {
        "events_per_s": round(events / elapsed),
        "seconds": round(elapsed, 3),
        "cpu_us_per_event": {k: round(v / events * 1e6, 1) for k, v in per_event.items()},
        "redis_node_cpu_us_per_event": {
            address: round(cpu / events * 1e6, 1) for address, cpu in sorted(node_cpu.items())
        },
    }


async def main(args: argparse.Namespace) -> None:
    single_url = get_settings().redis_streams_url.get_secret_value()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as directory:
        cluster = start_cluster(Path(directory))
        try:
            rounds: list[dict[str, Any]] = []
            async with scratch_database("cluster") as url:
                for index in range(args.rounds):
                    order = ["single", "cluster"] if index % 2 == 0 else ["cluster", "single"]
                    result: dict[str, Any] = {}
                    for target in order:
                        result[target] = await _drain(
                            url,
                            cluster.url if target == "cluster" else single_url,
                            cluster if target == "cluster" else None,
                            args.events,
                            args.services,
                        )
                    result["ratio"] = round(
                        result["cluster"]["events_per_s"] / result["single"]["events_per_s"], 3
                    )
                    rounds.append(result)
                    print(
                        f"round {index + 1}: single {result['single']['events_per_s']:,} ev/s, "
                        f"cluster {result['cluster']['events_per_s']:,} ev/s, "
                        f"ratio {result['ratio']}",
                        flush=True,
                    )
        finally:
            cluster.stop()
    single = statistics.median(r["single"]["events_per_s"] for r in rounds)
    on_cluster = statistics.median(r["cluster"]["events_per_s"] for r in rounds)
    ratio = round(on_cluster / single, 3)
    write_result(
        "cluster",
        {
            "events": args.events,
            "services": args.services,
            "rounds": rounds,
            "median_events_per_s": {"single": round(single), "cluster": round(on_cluster)},
            "ratio_of_medians": ratio,
        },
        [
            check(
                f"relay drain to a 3-primary cluster / single Redis ({args.events:,} events)",
                ratio,
                ">=",
                0.8,
            )
        ],
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events pre-filled per drain")
    parser.add_argument("--services", type=int, default=8, help="services they are spread over")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, median")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
