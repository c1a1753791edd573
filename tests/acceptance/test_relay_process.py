"""The real ``outbox relay`` process: SIGKILLed over and over, SIGTERMed, taken over."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

import outbox
from outbox.envelope import MessagePriority
from outbox.relay.cursor import Cursor
from outbox.settings import Settings
from outbox.streams.keys import Keys
from tests.fixtures_cluster import RedisTarget
from tests.fixtures_relay import cursor_order_ok, emit_events, published, wait_until

SERVICES = ("identity", "assets", "automation", "network")
OUTBOX = str(Path(sys.executable).parent / "outbox")


class RelayProcesses:
    """Starts ``outbox relay`` processes for one test and makes sure none outlives it."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": settings.database_url.get_secret_value(),
            "REDIS_STREAMS_URL": settings.redis_streams_url.get_secret_value(),
            "STREAM_PREFIX": settings.stream_prefix,
            "RELAY_HEARTBEAT_INTERVAL_S": "0.2",
            "RELAY_RETRY_MIN_S": "0.05",
            "RELAY_RETRY_MAX_S": "0.5",
        }
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp_path / f"relay-{len(self.started)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [OUTBOX, "relay", *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.started.append(process)
        return process

    def log(self, index: int) -> str:
        return (self.tmp_path / f"relay-{index}.log").read_text()

    def kill_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def relays(settings: Settings, tmp_path: Path) -> Iterator[RelayProcesses]:
    processes = RelayProcesses(settings, tmp_path)
    yield processes
    processes.kill_all()


async def _status(conn: asyncpg.Connection, instance: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM relay_instances WHERE instance_id = $1", instance
    )
    return row


async def _verify_exactly_once(
    conn: asyncpg.Connection, client: aioredis.Redis, keys: Keys, ids: list[str]
) -> None:
    counts = Counter(await published(client, keys, SERVICES))
    duplicates = {event_id: n for event_id, n in counts.items() if n > 1}
    assert not duplicates
    assert set(counts) == set(ids)
    for service in SERVICES:
        for stream in keys.streams_of(service):
            assert await cursor_order_ok(conn, client, stream)


async def _emit_steadily(
    url: str, total: int, rate_per_s: float, chunk: int, **options: Any
) -> list[str]:
    """Emit ``total`` events over SERVICES at ``rate_per_s``, ``chunk`` at a time in
    transactions of half that (``options``: more of emit_events'); their ids."""
    conn = await asyncpg.connect(url)
    ids: list[str] = []
    start = time.monotonic()
    try:
        while len(ids) < total:
            ids += await emit_events(conn, chunk, services=SERVICES, per_tx=chunk // 2, **options)
            ahead_s = len(ids) / rate_per_s - (time.monotonic() - start)
            await asyncio.sleep(max(0.0, ahead_s))
    finally:
        await conn.close()
    return ids


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_relay_sigkilled_at_random_moments_publishes_everything_once(
    asyncpg_conn: asyncpg.Connection,
    redis_target: RedisTarget,
    settings: Settings,
    relays: RelayProcesses,
    database_url: str,
) -> None:
    """On the single Redis and on the 3-primary cluster."""
    redis_client = redis_target.client
    relays.env.update(redis_target.env())
    keys = redis_target.keys(settings.stream_prefix)
    total, rate_per_s = 50_000, 2_000
    rng = random.Random(3)

    emitting = asyncio.create_task(
        _emit_steadily(database_url, total, rate_per_s, 100, priorities=tuple(MessagePriority))
    )
    kills = 0
    while kills < 20 or not emitting.done():
        process = relays.start()
        await asyncio.sleep(rng.uniform(0.4, 1.6))
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    ids = await emitting
    assert kills >= 20
    # Something was published before the final run, by the relays that were killed.
    assert await published(redis_client, keys, SERVICES)

    final = relays.start("--instance-id", "final")

    async def all_published() -> bool:
        row = await _status(asyncpg_conn, "final")
        done = len(await published(redis_client, keys, SERVICES)) >= len(ids)
        return done and row is not None and len(row["streams"]) == len(SERVICES)

    await wait_until(all_published, timeout_s=90, what="every event published")
    final.send_signal(signal.SIGTERM)
    assert final.wait(timeout=20) == 0
    await _verify_exactly_once(asyncpg_conn, redis_client, keys, ids)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_relay_sigkilled_beside_long_transactions_publishes_every_committed_event_once(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    settings: Settings,
    relays: RelayProcesses,
    database_url: str,
) -> None:
    """Decision 0020 under SIGKILL: beside a steady 1,500 events/s, two connections keep
    transactions open 0.3-1.5 s (most of them long enough to be deferred), emitting before and
    after the wait, and commit them, or roll back one in five; relays die at random moments,
    while deferring and restamping included. Every committed event arrives once, in cursor
    order, and nothing rolled back arrives."""
    keys = Keys(settings.stream_prefix)
    total, rate_per_s = 30_000, 1_500
    rng = random.Random(7)

    async def hold_transactions(seed: int) -> tuple[list[str], list[str]]:
        """Long transactions until the steady emitter is done: (committed, rolled back) ids."""
        local = random.Random(seed)
        conn = await asyncpg.connect(database_url)
        kept: list[str] = []
        dropped: list[str] = []
        try:
            while not emitting.done():
                ids: list[str] = []
                await conn.execute("BEGIN")
                for _ in range(2):
                    for _ in range(local.randint(1, 3)):
                        event = await outbox.emit(
                            conn, service=local.choice(SERVICES), event_type="held", data={}
                        )
                        ids.append(str(event.event_id))
                    # The workload: a transaction that stays open (not a synchronisation).
                    await asyncio.sleep(local.uniform(0.3, 1.5) / 2)
                if local.random() < 0.2:
                    await conn.execute("ROLLBACK")
                    dropped += ids
                else:
                    await conn.execute("COMMIT")
                    kept += ids
        finally:
            await conn.close()
        return kept, dropped

    emitting = asyncio.create_task(_emit_steadily(database_url, total, rate_per_s, 50))
    holders = [asyncio.create_task(hold_transactions(seed)) for seed in (1, 2)]
    kills = 0
    while kills < 20 or not emitting.done():
        process = relays.start()
        await asyncio.sleep(rng.uniform(0.4, 1.6))
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    ids = await emitting
    held = await asyncio.gather(*holders)
    kept = [event for k, _ in held for event in k]
    dropped = [event for _, d in held for event in d]
    assert kills >= 20
    assert len(kept) > 20
    assert dropped
    deferred_ever = await asyncpg_conn.fetchval("SELECT last_value FROM relay_deferral_seq")
    assert deferred_ever > 5  # deferrals happened (and were killed in, some of them)

    final = relays.start("--instance-id", "final")

    async def all_published() -> bool:
        row = await _status(asyncpg_conn, "final")
        done = len(await published(redis_client, keys, SERVICES)) >= len(ids) + len(kept)
        return done and row is not None and len(row["streams"]) == len(SERVICES)

    await wait_until(all_published, timeout_s=90, what="every event published")

    async def none_deferred() -> bool:
        return await asyncpg_conn.fetchval("SELECT txids FROM relay_deferred") == []

    await wait_until(none_deferred, what="every deferred transaction restamped")
    final.send_signal(signal.SIGTERM)
    assert final.wait(timeout=20) == 0
    await _verify_exactly_once(asyncpg_conn, redis_client, keys, ids + kept)


@pytest.mark.slow
async def test_sigterm_finishes_the_batch_commits_the_cursor_and_exits_0(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    settings: Settings,
    relays: RelayProcesses,
) -> None:
    keys = Keys(settings.stream_prefix)
    ids = await emit_events(asyncpg_conn, 20_000, services=SERVICES, per_tx=500)
    process = relays.start("--instance-id", "graceful", "--batch-size", "200")

    async def publishing() -> bool:
        return len(await published(redis_client, keys, SERVICES[:1])) > 0

    await wait_until(publishing, what="publishing under way")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    assert "event=relay_stopped" in relays.log(0)

    status = await _status(asyncpg_conn, "graceful")
    assert status is not None
    assert status["stopped_at"] is not None
    assert status["streams"] == []
    # The cursor of every service is exactly where publishing stopped: the highest watermark
    # of its streams. Nothing was left published-but-uncommitted.
    cursors = {
        row["stream"]: Cursor(row["txid"], row["position"])
        for row in await asyncpg_conn.fetch("SELECT stream, txid, position FROM relay_cursors")
    }
    for service in SERVICES:
        marks = [await redis_client.get(keys.watermark(s)) for s in keys.streams_of(service)]
        highest = max((Cursor.parse(m.decode()) for m in marks if m), default=Cursor(0, 0))
        assert cursors[service] == highest
    # The leases went with the session; a new relay picks up where this one stopped.
    relays.start("--instance-id", "second")

    async def all_published() -> bool:
        return len(await published(redis_client, keys, SERVICES)) >= len(ids)

    await wait_until(all_published, timeout_s=60, what="the rest published")
    await _verify_exactly_once(asyncpg_conn, redis_client, keys, ids)


@pytest.mark.slow
async def test_a_killed_relays_services_are_taken_over_within_seconds(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    settings: Settings,
    relays: RelayProcesses,
) -> None:
    keys = Keys(settings.stream_prefix)
    ids = await emit_events(asyncpg_conn, 400, services=SERVICES)
    first = relays.start("--instance-id", "first")

    async def holds(instance: str, count: int) -> bool:
        row = await _status(asyncpg_conn, instance)
        return row is not None and len(row["streams"]) == count

    await wait_until(lambda: holds("first", 4), what="the first relay holding everything")
    relays.start("--instance-id", "second")

    async def shared() -> bool:
        return await holds("first", 2) and await holds("second", 2)

    await wait_until(shared, what="services shared two and two")
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = time.monotonic()
    await wait_until(lambda: holds("second", 4), timeout_s=5, what="takeover")
    assert time.monotonic() - killed_at < 5
    ids += await emit_events(asyncpg_conn, 400, services=SERVICES)

    async def all_published() -> bool:
        return len(await published(redis_client, keys, SERVICES)) >= len(ids)

    await wait_until(all_published, what="everything published")
    await _verify_exactly_once(asyncpg_conn, redis_client, keys, ids)


ROUTED_SERVICES = ("identity", "assets", "automation", "network", "communication")
ALERT_TYPES = ("alert_triggered", "vulnerability_detected")


def _routing_rules(keys: Keys) -> list[dict[str, object]]:
    """Copies from every origin into communication (which has its own events), a route by
    priority to a stream of no service, and a route by a data field to another service."""
    return [
        {
            "name": "alerts-to-communication",
            "event_type": list(ALERT_TYPES),
            "to": ["communication"],
        },
        {
            "name": "automation-criticals-to-pager",
            "action": "route",
            "service": "automation",
            "priority": "critical",
            "to": [keys.stream("pager")],
        },
        {
            "name": "identity-audit-to-system",
            "action": "route",
            "service": "identity",
            "data": {"kind": "audit"},
            "to": ["system"],
        },
    ]


def _expected_streams(keys: Keys, spec: outbox.EventSpec) -> list[str]:
    """Where the rules above send one event, worked out without the relay's code."""
    priority = MessagePriority(spec.priority)
    data = dict(spec.data)
    if spec.service == "automation" and priority == MessagePriority.CRITICAL:
        streams = [keys.stream("pager")]
    elif spec.service == "identity" and data.get("kind") == "audit":
        streams = [keys.stream("system", priority)]
    else:
        streams = [keys.stream(spec.service, priority)]
    if spec.event_type in ALERT_TYPES:
        copy = keys.stream("communication", priority)
        if copy not in streams:
            streams.append(copy)
    return streams


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_relay_with_routing_rules_sigkilled_at_random_moments_routes_everything_once(
    asyncpg_conn: asyncpg.Connection,
    redis_target: RedisTarget,
    settings: Settings,
    relays: RelayProcesses,
    database_url: str,
) -> None:
    """Every event exactly once in its own stream (or where a route sends it) and in every
    stream a copy rule adds it to, after 20+ SIGKILLs; each origin in cursor order in every
    stream. On the single Redis and on the 3-primary cluster (tagged keys)."""
    client = redis_target.client
    relays.env.update(redis_target.env())
    keys = redis_target.keys(settings.stream_prefix)
    relays.env["ROUTING_RULES"] = json.dumps(_routing_rules(keys))
    total, rate_per_s = 20_000, 2_000
    rng = random.Random(25)
    expected: dict[str, list[str]] = {}

    async def emit_steadily() -> None:
        conn = await asyncpg.connect(database_url)
        emitted, start = 0, time.monotonic()
        try:
            while emitted < total:
                specs = [
                    outbox.EventSpec(
                        service=rng.choice(ROUTED_SERVICES),
                        event_type=rng.choice((*ALERT_TYPES, "thing_happened", "thing_happened")),
                        data={"n": emitted + i, "kind": "audit" if rng.random() < 0.2 else "x"},
                        priority=rng.choice(tuple(MessagePriority)),
                        aggregate_id=f"agg-{i % 7}",
                    )
                    for i in range(50)
                ]
                async with conn.transaction():
                    events = await outbox.emit_many(conn, specs)
                for spec, event in zip(specs, events, strict=True):
                    for stream in _expected_streams(keys, spec):
                        expected.setdefault(stream, []).append(str(event.event_id))
                emitted += len(specs)
                await asyncio.sleep(max(0.0, emitted / rate_per_s - (time.monotonic() - start)))
        finally:
            await conn.close()

    every_stream = sorted(
        {s for service in (*ROUTED_SERVICES, "system") for s in keys.streams_of(service)}
        | {keys.stream("pager")}
    )

    async def ids_in(stream: str) -> list[str]:
        return [f[b"event_id"].decode() for _, f in await client.xrange(stream)]

    emitting = asyncio.create_task(emit_steadily())
    kills = 0
    while kills < 20 or not emitting.done():
        process = relays.start()
        await asyncio.sleep(rng.uniform(0.4, 1.6))
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    await emitting
    assert kills >= 20
    assert sum([len(await ids_in(s)) for s in every_stream]) > 0  # the killed relays published

    final = relays.start("--instance-id", "final")
    wanted = sum(len(ids) for ids in expected.values())

    async def all_published() -> bool:
        row = await _status(asyncpg_conn, "final")
        done = sum([len(await ids_in(s)) for s in every_stream]) >= wanted
        return done and row is not None and len(row["streams"]) == len(ROUTED_SERVICES)

    await wait_until(all_published, timeout_s=120, what="every event in every stream")
    final.send_signal(signal.SIGTERM)
    assert final.wait(timeout=20) == 0
    for stream in every_stream:
        found = await ids_in(stream)
        assert Counter(found) == Counter(expected.get(stream, [])), stream
        assert await _origins_in_cursor_order(asyncpg_conn, client, stream), stream


async def _origins_in_cursor_order(conn: asyncpg.Connection, client: Any, stream: str) -> bool:
    entries = [(f[b"service"], int(f[b"position"])) for _, f in await client.xrange(stream)]
    rows = await conn.fetch(
        "SELECT position, txid FROM outbox_events WHERE position = ANY($1::bigint[])",
        [p for _, p in entries],
    )
    txid = {r["position"]: r["txid"] for r in rows}
    by_origin: dict[bytes, list[Cursor]] = {}
    for origin, position in entries:
        by_origin.setdefault(origin, []).append(Cursor(txid[position], position))
    return all(all(a < b for a, b in itertools.pairwise(c)) for c in by_origin.values())


@pytest.mark.slow
def test_a_relay_with_an_invalid_routing_rule_refuses_to_start(relays: RelayProcesses) -> None:
    relays.env["ROUTING_RULES"] = json.dumps([{"name": "broken", "event_type": "x", "to": []}])
    process = relays.start()
    assert process.wait(timeout=30) == 2
    assert "routing rule 'broken': to: expected a non-empty list of targets" in relays.log(0)
