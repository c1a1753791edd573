"""Acceptance: real ``outbox project`` processes, SIGKILLed at random moments while 50,000
events flow, end with read models equal to the expected fold and each event once in the inbox;
SIGTERM stops a process cleanly."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from outbox import EventSpec
from outbox.envelope import Event
from outbox.settings import Settings
from outbox.streams.keys import Keys
from tests.fixtures_cluster import RedisTarget
from tests.fixtures_projections import emit_events, poll, xadd_events

ROOT = Path(__file__).resolve().parents[2]
PROJECTIONS = {
    "user_directory": "identity",
    "asset_inventory": "assets",
    "automation_stats": "automation",
}


def _events(total: int, seed: int = 7) -> list[EventSpec]:
    rng = random.Random(seed)
    specs: list[EventSpec] = []
    for i in range(total):
        kind = rng.random()
        if kind < 0.4:
            user = f"user{rng.randrange(500)}"
            event_type = rng.choice(
                ["user_created", "user_updated", "user_updated", "user_deleted"]
            )
            data = {"user_id": user, "email": f"{user}.{i}@example.com", "name": f"N{i}"}
            specs.append(EventSpec("identity", event_type, data, aggregate_id=user))
        elif kind < 0.7:
            asset = f"asset{rng.randrange(300)}"
            event_type = rng.choice(
                [
                    "asset_created",
                    "asset_updated",
                    "asset_deleted",
                    "asset_scanned",
                    "asset_scanned",
                ]
            )
            data = {"asset_id": asset, "hostname": f"h{i}", "ip_address": f"10.0.{i % 250}.1"}
            specs.append(EventSpec("assets", event_type, data, aggregate_id=asset))
        else:
            job = f"job{rng.randrange(20)}"
            event_type = rng.choice(
                ["automation_started", "automation_completed", "automation_failed"]
            )
            data = {"job_id": f"run{i}", "job_name": job, "duration_ms": i % 1000}
            specs.append(EventSpec("automation", event_type, data, aggregate_id=f"run{i}"))
    return specs


def expected_users(events: Sequence[Event]) -> dict[str, tuple[bool, str | None]]:
    """(deleted, email if not deleted) per user: the last event by outbox position wins."""
    last: dict[str, Event] = {}
    for event in sorted(events, key=lambda e: e.position or 0):
        if event.service == "identity":
            last[event.data["user_id"]] = event
    return {
        user: (
            e.event_type == "user_deleted",
            None if e.event_type == "user_deleted" else e.data["email"],
        )
        for user, e in last.items()
    }


def expected_assets(events: Sequence[Event]) -> dict[str, tuple[bool, str | None, int]]:
    last: dict[str, Event] = {}
    scans: Counter[str] = Counter()
    for event in sorted(events, key=lambda e: e.position or 0):
        if event.service != "assets":
            continue
        asset = event.data["asset_id"]
        if event.event_type == "asset_scanned":
            scans[asset] += 1
        else:
            last[asset] = event
    result = {}
    for asset in set(last) | set(scans):
        event = last.get(asset)
        deleted = event is not None and event.event_type == "asset_deleted"
        hostname = event.data["hostname"] if event is not None and not deleted else None
        result[asset] = (deleted, hostname, scans[asset])
    return result


def expected_jobs(events: Sequence[Event]) -> dict[str, tuple[int, int, int, int]]:
    stats: dict[str, list[int]] = {}
    for event in events:
        if event.service != "automation":
            continue
        row = stats.setdefault(event.data["job_name"], [0, 0, 0, 0])
        index = ["automation_started", "automation_completed", "automation_failed"].index(
            event.event_type
        )
        row[index] += 1
        if index:
            row[3] += event.data["duration_ms"]
    return {job: (r[0], r[1], r[2], r[3]) for job, r in stats.items()}


async def read_models(conn: asyncpg.Connection) -> tuple[Any, Any, Any]:
    users = {
        r["user_id"]: (r["deleted"], None if r["deleted"] else r["email"])
        for r in await conn.fetch("SELECT * FROM directory_users")
    }
    assets = {
        r["asset_id"]: (r["deleted"], None if r["deleted"] else r["hostname"], r["scan_count"])
        for r in await conn.fetch("SELECT * FROM inventory_assets")
    }
    jobs = {
        r["job_name"]: (r["started"], r["completed"], r["failed"], r["total_duration_ms"])
        for r in await conn.fetch("SELECT * FROM automation_job_stats")
    }
    return users, assets, jobs


def _env(settings: Settings, database_url: str, prefix: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        REDIS_STREAMS_URL=settings.redis_streams_url.get_secret_value(),
        STREAM_PREFIX=prefix,
        PROCESSOR_WORKERS="2",
        PROJECTION_BLOCK_MS="100",
        PROJECTION_CONSUMER_NAME="crash",
        CLAIM_MIN_IDLE_MS="1500",
        CLAIM_INTERVAL="0.5",
        DEAD_CONSUMER_IDLE_MS="3000",
        PROJECTION_HEARTBEAT_INTERVAL="0.5",
        SHUTDOWN_GRACE="15",
        PROJECTION_MODULES="outbox.projections.examples",
    )
    return env


def _start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "outbox.cli.main", "project"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _drained(redis: aioredis.Redis, keys: Keys) -> bool:
    for group, service in PROJECTIONS.items():
        for stream in keys.streams_of(service):
            if not await redis.exists(stream):
                continue
            groups = {g["name"].decode(): g for g in await redis.xinfo_groups(stream)}
            info = groups.get(group)
            if info is None or info["pending"] or info["lag"]:
                return False
    return True


async def _consumers_up(conn: asyncpg.Connection, pid: int) -> bool:
    """Every consumer of the process ``pid`` (3 projections x PROCESSOR_WORKERS; each of the
    example projections reads one service, so as many on a cluster) registered."""
    count = await conn.fetchval("SELECT count(*) FROM projection_consumers WHERE pid = $1", pid)
    return int(count) == len(PROJECTIONS) * 2


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_sigkilled_consumers_end_with_the_exact_fold(
    settings: Settings,
    database_url: str,
    stream_prefix: str,
    asyncpg_conn: asyncpg.Connection,
    redis_target: RedisTarget,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """On the single Redis and on the 3-primary cluster (consumers per service there)."""
    redis_client = redis_target.client
    keys = redis_target.keys(stream_prefix)
    events = await emit_events(database_url, _events(50_000))
    env = {**_env(settings, database_url, stream_prefix), **redis_target.env()}
    processes.extend([_start(env), _start(env)])

    # The events are fed in 22 bursts, one before each kill, so every kill lands while events
    # flow: the victim's consumers are up (registered) and the burst is not yet applied.
    kills = 22
    bursts = [
        events[i * len(events) // kills : (i + 1) * len(events) // kills] for i in range(kills)
    ]
    rng = random.Random(11)
    fed = 0
    unapplied_at_kill: list[int] = []
    for burst in bursts:
        await asyncio.sleep(rng.uniform(0.1, 0.6))
        index = rng.randrange(len(processes))
        victim = processes[index]
        await poll(functools.partial(_consumers_up, asyncpg_conn, victim.pid), timeout_s=30)
        await xadd_events(redis_client, keys, burst)
        fed += len(burst)
        await asyncio.sleep(rng.uniform(0, 0.01))  # a random moment early in the burst
        applied = int(await asyncpg_conn.fetchval("SELECT count(*) FROM projection_inbox"))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        unapplied_at_kill.append(fed - applied)
        processes[index] = _start(env)
    assert fed == len(events)
    assert all(unapplied > 0 for unapplied in unapplied_at_kill), unapplied_at_kill
    await poll(lambda: _drained(redis_client, keys), timeout_s=150, interval_s=0.5)

    for proc in processes:
        proc.send_signal(signal.SIGTERM)
    for proc in processes:
        assert proc.wait(timeout=30) == 0

    users, assets, jobs = await read_models(asyncpg_conn)
    assert users == expected_users(events)
    assert assets == expected_assets(events)
    assert jobs == expected_jobs(events)
    rows = await asyncpg_conn.fetch(
        "SELECT projection, count(*), count(DISTINCT event_id) FROM projection_inbox "
        "GROUP BY projection"
    )
    counts = {r[0]: (r[1], r[2]) for r in rows}
    per_service = Counter(event.service for event in events)
    for projection, service in PROJECTIONS.items():
        assert counts[projection] == (per_service[service], per_service[service])
    assert await redis_client.xlen(keys.dead_letter) == 0


@pytest.mark.slow
async def test_sigterm_finishes_in_flight_work_and_exits_zero(
    settings: Settings,
    database_url: str,
    stream_prefix: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    keys = Keys(stream_prefix)
    events = await emit_events(database_url, _events(5000, seed=3))
    await xadd_events(redis_client, keys, events)
    env = _env(settings, database_url, stream_prefix)
    proc = _start(env)
    processes.append(proc)

    async def started() -> bool:
        return bool(await asyncpg_conn.fetchval("SELECT count(*) FROM projection_inbox"))

    await poll(started, timeout_s=30)
    proc.send_signal(signal.SIGTERM)
    began = time.monotonic()
    assert proc.wait(timeout=20) == 0
    assert time.monotonic() - began < 15
    # Whatever was applied was acked, and nothing acked was left unapplied.
    inbox = int(await asyncpg_conn.fetchval("SELECT count(*) FROM projection_inbox"))
    pending = 0
    for group, service in PROJECTIONS.items():
        for stream in keys.streams_of(service):
            if await redis_client.exists(stream):
                for info in await redis_client.xinfo_groups(stream):
                    if info["name"].decode() == group:
                        pending += info["pending"]
    assert pending == 0
    assert inbox > 0
    stopped = await asyncpg_conn.fetch("SELECT stopped_at FROM projection_consumers")
    assert stopped
    assert all(row["stopped_at"] is not None for row in stopped)
