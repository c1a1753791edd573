"""``outbox demo``: a producer that emits the OpsConductor event catalog at a steady rate.

Each *flow* is one business story spanning services under one correlation id, written the way a
service would: business-shaped data, ``outbox.emit_many()`` in one transaction per service step.
Flows: a user signs up (identity → communication), an asset is discovered and scanned (assets →
network → ai), an automation job runs (automation → communication on failure). Priorities are
mixed: most NORMAL, logins LOW, failures HIGH, vulnerabilities CRITICAL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

from outbox.emit import EventSpec
from outbox.envelope import MessagePriority

log = logging.getLogger("outbox.demo")

Step = tuple[str, list[EventSpec]]  # (correlation id, events of one transaction)

_JOBS = ["backup-nightly", "patch-linux", "rotate-certs", "scan-subnets", "sync-inventory"]
_ROLES = ["viewer", "operator", "admin"]
_ASSET_TYPES = ["server", "switch", "router", "vm", "container-host"]


def _user_flow(rng: random.Random, n: str) -> Iterator[list[EventSpec]]:
    user_id = f"u-{n}"
    email = f"user{n}@example.com"
    yield [
        EventSpec(
            "identity",
            "user_created",
            {"user_id": user_id, "email": email, "name": f"User {n}", "role": rng.choice(_ROLES)},
            MessagePriority.HIGH,
            user_id="admin",
            aggregate_id=user_id,
            dedup_key=f"user-created-{user_id}",
        ),
    ]
    yield [
        EventSpec(
            "communication",
            "email_sent",
            {"to_user": user_id, "template": "welcome"},
            aggregate_id=user_id,
        ),
        EventSpec(
            "communication",
            "notification_sent",
            {"user_id": user_id, "channel": "web"},
            MessagePriority.LOW,
            aggregate_id=user_id,
        ),
    ]
    yield [
        EventSpec(
            "identity",
            "user_login",
            {"user_id": user_id},
            MessagePriority.LOW,
            user_id=user_id,
            aggregate_id=user_id,
        )
    ]
    if rng.random() < 0.3:
        yield [
            EventSpec(
                "identity",
                "user_updated",
                {"user_id": user_id, "role": rng.choice(_ROLES)},
                user_id="admin",
                aggregate_id=user_id,
            )
        ]
    if rng.random() < 0.05:
        yield [
            EventSpec(
                "identity",
                "user_deleted",
                {"user_id": user_id},
                MessagePriority.HIGH,
                user_id="admin",
                aggregate_id=user_id,
            )
        ]


def _asset_flow(rng: random.Random, n: str) -> Iterator[list[EventSpec]]:
    asset_id = f"a-{n}"
    host = rng.getrandbits(24)
    yield [
        EventSpec(
            "assets",
            "asset_created",
            {
                "asset_id": asset_id,
                "hostname": f"host-{n}.ops.local",
                "ip_address": f"10.{host >> 16}.{host >> 8 & 255}.{host & 255}",
                "asset_type": rng.choice(_ASSET_TYPES),
            },
            aggregate_id=asset_id,
        )
    ]
    yield [
        EventSpec(
            "network",
            "network_scan_completed",
            {"asset_id": asset_id, "open_ports": rng.sample([22, 80, 443, 5432], 2)},
            aggregate_id=asset_id,
        )
    ]
    yield [
        EventSpec(
            "assets", "asset_scanned", {"asset_id": asset_id, "findings": 0}, aggregate_id=asset_id
        )
    ]
    if rng.random() < 0.1:
        yield [
            EventSpec(
                "network",
                "vulnerability_detected",
                {
                    "asset_id": asset_id,
                    "cve": f"CVE-2026-{rng.randint(1000, 9999)}",
                    "severity": "critical",
                },
                MessagePriority.CRITICAL,
                aggregate_id=asset_id,
            )
        ]
    yield [
        EventSpec(
            "ai",
            "ai_analysis_completed",
            {"asset_id": asset_id, "risk_score": round(rng.random(), 3)},
            aggregate_id=asset_id,
        )
    ]


def _automation_flow(rng: random.Random, n: str) -> Iterator[list[EventSpec]]:
    job = rng.choice(_JOBS)
    run_id = f"run-{n}"
    yield [
        EventSpec(
            "automation",
            "automation_scheduled",
            {"job_name": job, "run_id": run_id},
            aggregate_id=run_id,
        )
    ]
    yield [
        EventSpec(
            "automation",
            "automation_started",
            {"job_name": job, "run_id": run_id},
            aggregate_id=run_id,
        )
    ]
    duration_ms = rng.randint(200, 20_000)
    if rng.random() < 0.9:
        yield [
            EventSpec(
                "automation",
                "automation_completed",
                {"job_name": job, "run_id": run_id, "duration_ms": duration_ms},
                aggregate_id=run_id,
            )
        ]
    else:
        yield [
            EventSpec(
                "automation",
                "automation_failed",
                {
                    "job_name": job,
                    "run_id": run_id,
                    "duration_ms": duration_ms,
                    "error": "exit status 1",
                },
                MessagePriority.HIGH,
                aggregate_id=run_id,
            ),
            EventSpec(
                "communication",
                "alert_triggered",
                {"job_name": job, "run_id": run_id},
                MessagePriority.HIGH,
                aggregate_id=run_id,
            ),
        ]


_FLOWS = [_user_flow, _asset_flow, _automation_flow]


def steps(seed: int | None = None) -> Iterator[Step]:
    """An endless interleaving of flows; each step is one transaction's worth of events."""
    rng = random.Random(seed)
    run = f"{rng.getrandbits(32):08x}"  # ids of one run never collide with another run's
    active: list[tuple[str, Iterator[list[EventSpec]]]] = []
    n = 0
    while True:
        while len(active) < 8:
            n += 1
            correlation_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            active.append((correlation_id, rng.choice(_FLOWS)(rng, f"{run}-{n}")))
        index = rng.randrange(len(active))
        correlation_id, flow = active[index]
        batch = next(flow, None)
        if batch is None:
            active.pop(index)
            continue
        yield (
            correlation_id,
            [
                EventSpec(**{**_spec_fields(spec), "correlation_id": correlation_id})
                for spec in batch
            ],
        )


def _spec_fields(spec: EventSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in EventSpec.__slots__}


async def produce(rate: float, duration_s: float | None, connections: int, seed: int | None) -> int:
    """Emit about ``rate`` events/s until stopped (SIGINT/SIGTERM) or ``duration_s`` passes."""
    import asyncpg

    import outbox
    from outbox.settings import get_settings

    pool = await asyncpg.create_pool(get_settings().libpq_url(), min_size=1, max_size=connections)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    emitted = 0
    started = time.monotonic()
    last_report = started
    source = steps(seed)
    log.info("event=demo_started rate_per_s=%s connections=%d", rate, connections)
    try:
        while not stop.is_set():
            if duration_s is not None and time.monotonic() - started >= duration_s:
                break
            _, batch = next(source)
            async with pool.acquire() as conn, conn.transaction():
                await outbox.emit_many(conn, batch)
            emitted += len(batch)
            # Pace to the rate: sleep until the time this many events are due.
            due = started + emitted / rate
            delay = due - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
            now = time.monotonic()
            if now - last_report >= 10:
                log.info(
                    "event=demo_progress emitted=%d rate_per_s=%.1f",
                    emitted,
                    emitted / (now - started),
                )
                last_report = now
    finally:
        await pool.close()
    log.info("event=demo_stopped emitted=%d", emitted)
    return emitted


def run(args: argparse.Namespace) -> int:
    from outbox.cli import eventloop

    eventloop.run(produce(args.rate, args.duration, args.connections, args.seed))
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    demo = sub.add_parser(
        "demo",
        help="emit the OpsConductor demo workload (all services, mixed priorities)",
        description="Emit the OpsConductor event catalog through the outbox at a steady rate: "
        "user sign-ups, asset discovery and scans, automation runs, each flow under one "
        "correlation id across services. Stops on Ctrl-C or after --duration.",
    )
    demo.add_argument("--rate", type=float, default=50.0, help="events per second (default 50)")
    demo.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: run until stopped)"
    )
    demo.add_argument("--connections", type=int, default=4, help="database connections (default 4)")
    demo.add_argument("--seed", type=int, help="random seed, for a reproducible sequence")
    demo.set_defaults(handler=run)
