"""Routing rules in a running relay: copies and routes arrive exactly once in every stream.

The hard case is a target stream written by several origins (its own service and copies from
others): the origins' cursors interleave arbitrarily, so each (stream, origin) pair has its own
watermark (decision 0018); one watermark per stream would skip copies below another origin's.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

import outbox
from outbox import MessagePriority
from outbox.errors import ConfigurationError
from outbox.relay.admin import request_partitions
from outbox.relay.cursor import START, Cursor
from outbox.relay.daemon import Relay
from outbox.settings import Settings
from outbox.streams.keys import Keys
from tests.fixtures_relay import OwnRedis, StartRelay, wait_until

ALERTS = {
    "name": "alerts-to-communication",
    "event_type": ["alert_triggered", "vulnerability_detected"],
    "to": ["communication"],
}


def _rules(*rules: dict[str, Any]) -> str:
    return json.dumps(list(rules))


async def _emit(
    conn: asyncpg.Connection,
    service: str,
    event_type: str,
    count: int = 1,
    *,
    priority: MessagePriority = MessagePriority.NORMAL,
    data: dict[str, Any] | None = None,
) -> list[str]:
    """``count`` events in one transaction; their event ids."""
    specs = [
        outbox.EventSpec(
            service=service,
            event_type=event_type,
            data={"n": i, **(data or {})},
            priority=priority,
            aggregate_id=f"{service}-{i % 5}",
        )
        for i in range(count)
    ]
    async with conn.transaction():
        events = await outbox.emit_many(conn, specs)
    return [str(e.event_id) for e in events]


async def _ids(client: aioredis.Redis, streams: Sequence[str]) -> list[str]:
    """The event ids in the streams, with repeats."""
    found: list[str] = []
    for stream in streams:
        found += [f[b"event_id"].decode() for _, f in await client.xrange(stream)]
    return found


async def _until_holds(
    client: aioredis.Redis, streams: Sequence[str], expected: Sequence[str], what: str
) -> None:
    """Wait until the streams hold every expected id; then each exactly once and nothing else."""

    async def done() -> bool:
        return set(await _ids(client, streams)) >= set(expected)

    await wait_until(done, timeout_s=30, what=what)
    assert Counter(await _ids(client, streams)) == Counter(expected), what


async def _origin_order_ok(conn: asyncpg.Connection, client: aioredis.Redis, stream: str) -> bool:
    """Every origin's entries in the stream are in its cursor order."""
    entries = [
        (f[b"service"].decode(), int(f[b"position"])) for _, f in await client.xrange(stream)
    ]
    rows = await conn.fetch(
        "SELECT position, txid FROM outbox_events WHERE position = ANY($1::bigint[])",
        [p for _, p in entries],
    )
    txid = {r["position"]: r["txid"] for r in rows}
    by_origin: dict[str, list[Cursor]] = {}
    for origin, position in entries:
        by_origin.setdefault(origin, []).append(Cursor(txid[position], position))
    return all(all(a < b for a, b in itertools.pairwise(c)) for c in by_origin.values())


async def _cursor(conn: asyncpg.Connection, service: str) -> Cursor:
    row = await conn.fetchrow("SELECT txid, position FROM relay_cursors WHERE stream = $1", service)
    return START if row is None else Cursor(row["txid"], row["position"])


async def test_the_opsconductor_example_copies_alerts_to_communication_once(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    alerts = await _emit(asyncpg_conn, "assets", "alert_triggered", 40)
    alerts += await _emit(asyncpg_conn, "network", "vulnerability_detected", 30)
    critical = await _emit(
        asyncpg_conn, "network", "alert_triggered", 5, priority=MessagePriority.CRITICAL
    )
    other = await _emit(asyncpg_conn, "assets", "asset_scanned", 20)
    own = await _emit(asyncpg_conn, "communication", "message_sent", 25)
    own_alerts = await _emit(asyncpg_conn, "communication", "alert_triggered", 3)
    async with start_relay(routing_rules=_rules(ALERTS)):
        comm = keys.stream("communication")
        comm_critical = keys.stream("communication", MessagePriority.CRITICAL)
        await _until_holds(
            redis_client, [comm], alerts + own + own_alerts, "alerts copied to communication"
        )
        await _until_holds(redis_client, [comm_critical], critical, "priority kept")
        assets_alerts = alerts[:40]
        await _until_holds(
            redis_client, [keys.stream("assets")], assets_alerts + other, "assets' own stream"
        )
        await _until_holds(
            redis_client,
            keys.streams_of("network"),
            alerts[40:] + critical,
            "network's own streams",
        )
        assert await _origin_order_ok(asyncpg_conn, redis_client, comm)
        # Each (stream, origin) has its own watermark, in the stream's slot.
        assert await redis_client.exists(keys.copy_watermark(comm, "assets")) == 1
        assert await redis_client.exists(keys.copy_watermark(comm, "network")) == 1
        # A copy keeps its entry: same event id, and `service` names where it comes from.
        entries = await redis_client.xrange(comm)
        origins = Counter(f[b"service"].decode() for _, f in entries)
        assert origins == {"assets": 40, "network": 30, "communication": 28}


async def test_routes_by_service_priority_and_data_leave_the_own_stream(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    pager = f"{relay_settings.stream_prefix}:pager:events"
    rules = _rules(
        {
            "name": "prod-criticals-to-pager",
            "action": "route",
            "service": ["assets", "network"],
            "min_priority": "high",
            "data": {"host.env": "prod", "severity": ["critical", "fatal"]},
            "to": [pager],
        },
        {"name": "ai-to-system", "action": "route", "service": "ai", "to": "system"},
    )
    paged = await _emit(
        asyncpg_conn,
        "assets",
        "alert_triggered",
        10,
        priority=MessagePriority.HIGH,
        data={"host": {"env": "prod"}, "severity": "critical"},
    )
    kept = await _emit(
        asyncpg_conn,
        "assets",
        "alert_triggered",
        10,
        priority=MessagePriority.HIGH,
        data={"host": {"env": "dev"}, "severity": "critical"},
    )
    kept += await _emit(
        asyncpg_conn,
        "assets",
        "alert_triggered",
        10,
        data={"host": {"env": "prod"}, "severity": "critical"},
    )
    paged += await _emit(
        asyncpg_conn,
        "network",
        "link_down",
        5,
        priority=MessagePriority.CRITICAL,
        data={"host": {"env": "prod"}, "severity": "fatal"},
    )
    routed = await _emit(asyncpg_conn, "ai", "model_trained", 15)
    system_own = await _emit(asyncpg_conn, "system", "tick", 5)
    async with start_relay(routing_rules=rules):
        await _until_holds(redis_client, [pager], paged, "data rule routed to the pager")
        await _until_holds(redis_client, keys.streams_of("assets"), kept, "the rest kept")
        await _until_holds(redis_client, keys.streams_of("system"), routed + system_own, "ai")
        assert await _ids(redis_client, keys.streams_of("ai")) == []
        assert await _ids(redis_client, keys.streams_of("network")) == []

        async def cursors_moved() -> bool:
            ai, network = await _cursor(asyncpg_conn, "ai"), await _cursor(asyncpg_conn, "network")
            return ai > START and network > START

        # Routed services' cursors move on though their own streams got nothing.
        await wait_until(cursors_moved, what="the routed services' cursors committed")


async def test_interleaved_origins_into_one_target_skip_nothing(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    """communication's own events and copies from assets and network, their transactions
    interleaved and the relay reading small batches: each origin's cursor runs ahead of and
    behind the others', in one stream. One watermark for the stream would drop every copy below
    the highest cursor another origin had reached."""
    keys = Keys(relay_settings.stream_prefix)
    comm = keys.stream("communication")
    expected: list[str] = []
    async with start_relay(routing_rules=_rules(ALERTS), relay_batch_size=7):
        for round_ in range(4):
            # A transaction of network held open while assets and communication commit: its
            # events get a lower txid than theirs, and all become visible together when it
            # commits (the relay reads below the xmin horizon). Other rounds go to the relay as
            # they commit, so the origins' cursors pass each other both ways.
            held = await asyncpg.connect(relay_settings.libpq_url())
            try:
                transaction = held.transaction()
                await transaction.start()
                late = await _emit_in(held, "network", "vulnerability_detected", 12)
                if round_ % 2:
                    await transaction.commit()
                for _ in range(10):
                    expected += await _emit(asyncpg_conn, "assets", "alert_triggered", 2)
                    expected += await _emit(asyncpg_conn, "communication", "message_sent", 1)
                    expected += await _emit(asyncpg_conn, "network", "alert_triggered", 1)
                if not round_ % 2:
                    await transaction.commit()
                expected += late
            finally:
                await held.close()
        await _until_holds(redis_client, [comm], expected, "every copy and own event, once")
        assert await _origin_order_ok(asyncpg_conn, redis_client, comm)


async def _emit_in(
    conn: asyncpg.Connection, service: str, event_type: str, count: int
) -> list[str]:
    """``count`` events in the transaction already open on ``conn``."""
    specs = [
        outbox.EventSpec(service=service, event_type=event_type, data={"n": i})
        for i in range(count)
    ]
    return [str(e.event_id) for e in await outbox.emit_many(conn, specs)]


async def test_a_refused_target_holds_its_origin_back_and_nothing_is_skipped(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    target = f"{relay_settings.stream_prefix}:alerts:events"
    await redis_client.set(target, "not a stream")
    rule = {"name": "to-alerts", "event_type": "alert_triggered", "to": [target]}
    alerts = await _emit(asyncpg_conn, "assets", "alert_triggered", 20)
    identity = await _emit(asyncpg_conn, "identity", "user_created", 20)
    async with start_relay(routing_rules=_rules(rule)) as relay:
        await _until_holds(redis_client, [keys.stream("identity")], identity, "others go on")

        async def refused() -> bool:
            return "WRONGTYPE" in relay.status.stream_errors.get("assets", "")

        await wait_until(refused, what="assets refused")
        # Its cursor has not moved past anything the target did not take.
        assert await _cursor(asyncpg_conn, "assets") == START
        alerts += await _emit(asyncpg_conn, "assets", "alert_triggered", 5)
        await redis_client.delete(target)
        await _until_holds(redis_client, [target], alerts, "every copy once the target is fixed")
        await _until_holds(redis_client, [keys.stream("assets")], alerts, "assets' own, once")

        async def resumed() -> bool:
            return "assets" not in relay.status.stream_errors

        await wait_until(resumed, what="the refusal cleared")


async def test_a_partitioned_target_is_refused_until_it_is_not(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    """A partitioned service's own stream is sealed (decision 0014): copies there would never
    be read after the barrier. The origin waits, with the reason; nothing is lost."""
    keys = Keys(relay_settings.stream_prefix)
    await request_partitions(relay_settings.libpq_url(), "communication", 2)
    await _emit(asyncpg_conn, "assets", "alert_triggered", 10)
    async with start_relay(routing_rules=_rules(ALERTS)) as relay:

        async def refused() -> bool:
            return "partitioned" in relay.status.stream_errors.get("assets", "")

        await wait_until(refused, what="assets refused: its target is partitioned")
        assert await _ids(redis_client, [keys.stream("communication")]) == []
        assert await _cursor(asyncpg_conn, "assets") == START


async def test_a_target_stream_that_redis_lost_is_published_again(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    """The target stream and its watermarks (its own and each origin's copy watermark) are
    gone with no new event: the heartbeat finds the copy lanes behind their marks and the
    origins publish their copies again."""
    keys = Keys(relay_settings.stream_prefix)
    comm = keys.stream("communication")
    expected = await _emit(asyncpg_conn, "assets", "alert_triggered", 30)
    expected += await _emit(asyncpg_conn, "network", "alert_triggered", 30)
    expected += await _emit(asyncpg_conn, "communication", "message_sent", 10)
    async with start_relay(routing_rules=_rules(ALERTS)) as relay:
        await _until_holds(redis_client, [comm], expected, "copied")
        watermarks = [
            keys.watermark(comm),
            keys.copy_watermark(comm, "assets"),
            keys.copy_watermark(comm, "network"),
        ]
        assert await redis_client.exists(*watermarks) == 3
        await redis_client.delete(comm, *watermarks)
        await _until_holds(redis_client, [comm], expected, "the lost stream published again")
        assert relay.status.redis_losses >= 2
        # The origins' own streams did not get anything twice.
        await _until_holds(
            redis_client, keys.streams_of("assets"), expected[:30], "assets' own stream once"
        )


async def test_a_redis_restarted_empty_gets_every_copy_again(
    asyncpg_conn: asyncpg.Connection,
    volatile_redis: OwnRedis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    client = aioredis.Redis.from_url(volatile_redis.url)
    comm = keys.streams_of("communication")
    copied = await _emit(asyncpg_conn, "assets", "alert_triggered", 50)
    own = await _emit(asyncpg_conn, "communication", "message_sent", 20)
    async with start_relay(
        redis_streams_url=SecretStr(volatile_redis.url), routing_rules=_rules(ALERTS)
    ):
        await _until_holds(client, comm, copied + own, "copied")
        volatile_redis.kill()
        volatile_redis.start()
        await client.aclose()
        client = aioredis.Redis.from_url(volatile_redis.url)
        copied += await _emit(asyncpg_conn, "assets", "alert_triggered", 10)
        await _until_holds(client, comm, copied + own, "every copy again, once")
        await _until_holds(client, keys.streams_of("assets"), copied, "assets again, once")
    await client.aclose()


async def test_two_relays_on_the_same_services_with_rules_publish_each_copy_once(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    """Split brain: both relays read and publish every service (no leases)."""
    keys = Keys(relay_settings.stream_prefix)
    rules = _rules(ALERTS)
    comm = keys.stream("communication")
    expected: list[str] = []
    own: dict[str, list[str]] = {"assets": [], "network": []}
    async with (
        start_relay(exclusive=False, routing_rules=rules, relay_batch_size=50),
        start_relay(exclusive=False, routing_rules=rules, relay_batch_size=13),
    ):
        for _ in range(20):
            ids = await _emit(asyncpg_conn, "assets", "alert_triggered", 7)
            own["assets"] += ids
            expected += ids
            ids = await _emit(asyncpg_conn, "network", "vulnerability_detected", 5)
            own["network"] += ids
            expected += ids
            expected += await _emit(asyncpg_conn, "communication", "message_sent", 3)
        await _until_holds(redis_client, [comm], expected, "every copy once")
        for service, ids in own.items():
            await _until_holds(redis_client, [keys.stream(service)], ids, f"{service} once")
        assert await _origin_order_ok(asyncpg_conn, redis_client, comm)


async def test_an_invalid_rule_stops_the_relay_before_it_starts(relay_settings: Settings) -> None:
    bad = relay_settings.model_copy(
        update={"routing_rules": _rules({**ALERTS, "to": ["nowhere:at:all"]})}
    )
    with pytest.raises(ConfigurationError, match="'alerts-to-communication': to: 'nowhere:at:all'"):
        Relay.from_settings(bad)


def test_outbox_check_validates_the_rules(relay_settings: Settings) -> None:
    outbox_command = str(Path(sys.executable).parent / "outbox")
    env = {
        **os.environ,
        "DATABASE_URL": relay_settings.database_url.get_secret_value(),
        "STREAM_PREFIX": relay_settings.stream_prefix,
    }
    good = subprocess.run(
        [outbox_command, "check"],
        env={**env, "ROUTING_RULES": _rules(ALERTS)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert good.returncode == 0, good.stderr
    assert "ok       routing rules: 1 rule(s), writing" in good.stdout
    bad = subprocess.run(
        [outbox_command, "check"],
        env={**env, "ROUTING_RULES": _rules({**ALERTS, "priority": "urgent"})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "INVALID  routing rules: routing rule 'alerts-to-communication': priority:" in bad.stderr
