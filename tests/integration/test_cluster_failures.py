"""A Redis Cluster that loses a node, its scripts or a slot while the relay publishes.

Each test starts a cluster of its own (the machine's ``redis-server`` on free loopback ports,
``cluster-require-full-coverage no``) and stops it by PID. What must hold every time: every event
ends up in its stream exactly once, in cursor order; while a node is down only that node's
services wait, the others are published.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr
from redis.asyncio.cluster import RedisCluster

import outbox
from outbox.relay.daemon import Relay
from outbox.settings import Settings
from outbox.streams.connection import client_from_url
from outbox.streams.keys import Keys
from tests.fixtures_cluster import RedisClusterServers, start_cluster
from tests.fixtures_relay import StartRelay, cursor_order_ok, published, wait_until

pytestmark = pytest.mark.slow

SERVICES = ("identity", "assets", "automation", "communication", "ai", "network", "system")


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    servers = start_cluster(tmp_path / "cluster")
    yield servers
    servers.stop()


@pytest.fixture
def on_cluster(own_cluster: RedisClusterServers) -> dict[str, Any]:
    """Overrides for start_relay: this test's cluster."""
    return {
        "redis_streams_url": SecretStr(own_cluster.url),
        "redis_cluster": "true",
        "redis_password": None,
    }


@pytest.fixture
async def client(own_cluster: RedisClusterServers) -> AsyncIterator[RedisCluster]:
    cluster = client_from_url(own_cluster.url, cluster=True, socket_timeout=5)
    assert isinstance(cluster, RedisCluster)
    await cluster.initialize()
    yield cluster
    await cluster.aclose()


async def emit(conn: asyncpg.Connection, count: int, start: int = 0) -> list[str]:
    specs = [
        outbox.EventSpec(SERVICES[n % len(SERVICES)], "thing_happened", {"n": n})
        for n in range(start, start + count)
    ]
    async with conn.transaction():
        events = await outbox.emit_many(conn, specs)
    return [str(e.event_id) for e in events]


async def published_ids(client: RedisCluster, keys: Keys, services: tuple[str, ...]) -> list[str]:
    return await published(client, keys, services)  # type: ignore[arg-type]


async def assert_exactly_once_in_order(
    client: RedisCluster, keys: Keys, ids: list[str], conn: asyncpg.Connection
) -> None:
    async def done() -> bool:
        return set(await published_ids(client, keys, SERVICES)) >= set(ids)

    await wait_until(done, timeout_s=60, what="every event published")
    assert Counter(await published_ids(client, keys, SERVICES)) == Counter(ids)
    for service in SERVICES:
        for stream in keys.streams_of(service):
            assert await cursor_order_ok(conn, client, stream)  # type: ignore[arg-type]


async def test_a_node_down_holds_back_only_its_own_services(
    own_cluster: RedisClusterServers,
    on_cluster: dict[str, Any],
    client: RedisCluster,
    start_relay: StartRelay,
    asyncpg_conn: asyncpg.Connection,
    relay_settings: Settings,
) -> None:
    keys = Keys(relay_settings.stream_prefix, tagged=True)
    ids = await emit(asyncpg_conn, 140)
    victim = own_cluster.node_of(keys.stream("identity"))
    on_victim = tuple(s for s in SERVICES if own_cluster.node_of(keys.stream(s)) is victim)
    elsewhere = tuple(s for s in SERVICES if s not in on_victim)
    assert elsewhere, "every service hashed to one node"
    relay: Relay
    async with start_relay(**on_cluster) as relay:
        await assert_exactly_once_in_order(client, keys, ids, asyncpg_conn)
        victim.kill()
        more = await emit(asyncpg_conn, 140, start=140)
        # The other nodes' services are published while the victim is down.
        wanted = {
            e
            for e, n in zip(more, range(140, 280), strict=True)
            if SERVICES[n % len(SERVICES)] in elsewhere
        }

        async def others_published() -> bool:
            return set(await published_ids(client, keys, elsewhere)) >= wanted

        await wait_until(others_published, timeout_s=30, what="the live nodes' services")

        async def refused() -> bool:
            return set(relay.status.stream_errors) >= set(on_victim)

        await wait_until(refused, timeout_s=30, what="the dead node's services refused")
        assert "unavailable" in relay.status.stream_errors[on_victim[0]]
        # Back (empty: no persistence): the relay finds Redis lost what that node held and
        # publishes it again from the outbox.
        victim.start()
        own_cluster.wait_ok()
        await assert_exactly_once_in_order(client, keys, ids + more, asyncpg_conn)

        async def recovered() -> bool:
            return not relay.status.stream_errors

        await wait_until(recovered, timeout_s=30, what="no service refused any more")


async def test_a_node_that_forgot_its_scripts_is_given_them_again(
    own_cluster: RedisClusterServers,
    on_cluster: dict[str, Any],
    client: RedisCluster,
    start_relay: StartRelay,
    asyncpg_conn: asyncpg.Connection,
    relay_settings: Settings,
) -> None:
    """What a restarted node or a promoted replica does: NOSCRIPT. The relay loads the script
    on the node and sends the batch again; nothing is refused or published twice."""
    keys = Keys(relay_settings.stream_prefix, tagged=True)
    ids = await emit(asyncpg_conn, 70)
    async with start_relay(**on_cluster) as relay:
        await assert_exactly_once_in_order(client, keys, ids, asyncpg_conn)
        for node in own_cluster.nodes:
            node.client().script_flush()
        more = await emit(asyncpg_conn, 70, start=70)
        await assert_exactly_once_in_order(client, keys, ids + more, asyncpg_conn)
        assert relay.status.stream_errors == {}


async def test_a_slot_moves_with_its_stream_and_watermark_mid_run(
    own_cluster: RedisClusterServers,
    on_cluster: dict[str, Any],
    client: RedisCluster,
    start_relay: StartRelay,
    asyncpg_conn: asyncpg.Connection,
    relay_settings: Settings,
) -> None:
    """identity's slot migrates to another node key by key (MIGRATING / IMPORTING, ASK
    redirects, TRYAGAIN while its stream and watermark are apart) while events keep coming."""
    keys = Keys(relay_settings.stream_prefix, tagged=True)
    stream = keys.stream("identity")
    ids = await emit(asyncpg_conn, 70)
    async with start_relay(**on_cluster):
        await assert_exactly_once_in_order(client, keys, ids, asyncpg_conn)
        source = own_cluster.node_of(stream)
        target = next(n for n in own_cluster.primaries() if n is not source)
        writer = asyncio.create_task(_emit_steadily(asyncpg_conn, 140, 30))
        await asyncio.to_thread(_migrate_slot, source, target, stream)
        more = await writer
        assert own_cluster.node_of(stream) is target
        await assert_exactly_once_in_order(client, keys, ids + more, asyncpg_conn)


async def _emit_steadily(conn: asyncpg.Connection, start: int, rounds: int) -> list[str]:
    ids: list[str] = []
    for round_ in range(rounds):
        ids += await emit(conn, 7, start=start + 7 * round_)
        await asyncio.sleep(0.02)
    return ids


def _migrate_slot(source: Any, target: Any, key: str) -> None:
    """Move the slot of ``key`` from ``source`` to ``target`` one key at a time, as
    ``redis-cli --cluster reshard`` does (https://redis.io/docs/latest/commands/cluster-setslot/)."""
    src, dst = source.client(), target.client()
    slot = int(src.execute_command("CLUSTER", "KEYSLOT", key))
    src_id = src.execute_command("CLUSTER", "MYID").decode()
    dst_id = dst.execute_command("CLUSTER", "MYID").decode()
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    while True:
        batch = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1)
        if not batch:
            break
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *batch)
        # Leave the slot split between the nodes for a moment, as a real reshard does.
        time.sleep(0.05)
    for node in (dst, src):
        node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


# --- failovers (a cluster of 3 primaries, each with a replica) -----------------------------


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    servers = start_cluster(tmp_path / "cluster", masters=3, replicas=1)
    yield servers
    servers.stop()


def replica_of(servers: RedisClusterServers, primary: Any) -> Any:
    info = primary.client().info("replication")
    port = int(info["slave0"]["port"])
    return next(node for node in servers.nodes if node.port == port)


def wait_promoted(servers: RedisClusterServers, node: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if node.client().info("replication")["role"] == "master":
                servers.wait_ok()
                return
        except Exception:  # the node is paused or restarting: ask again
            pass
        time.sleep(0.1)
    raise AssertionError(f"{node.address} was not promoted")


def _replicated_overrides(servers: RedisClusterServers) -> dict[str, Any]:
    return {
        "redis_streams_url": SecretStr(servers.url),
        "redis_cluster": "true",
        "redis_password": None,
    }


@pytest.mark.parametrize("how", ["cluster_failover", "kill_primary"])
async def test_a_failover_mid_run_loses_and_repeats_nothing(
    replicated_cluster: RedisClusterServers,
    start_relay: StartRelay,
    asyncpg_conn: asyncpg.Connection,
    relay_settings: Settings,
    how: str,
) -> None:
    keys = Keys(relay_settings.stream_prefix, tagged=True)
    client = client_from_url(replicated_cluster.url, cluster=True, socket_timeout=5)
    assert isinstance(client, RedisCluster)
    try:
        ids = await emit(asyncpg_conn, 140)
        async with start_relay(**_replicated_overrides(replicated_cluster)) as relay:
            await assert_exactly_once_in_order(client, keys, ids, asyncpg_conn)
            primary = replicated_cluster.node_of(keys.stream("identity"))
            replica = replica_of(replicated_cluster, primary)
            writer = asyncio.create_task(_emit_steadily(asyncpg_conn, 140, 40))
            if how == "cluster_failover":
                replica.client().execute_command("CLUSTER", "FAILOVER")
            else:
                primary.kill()
            await asyncio.to_thread(wait_promoted, replicated_cluster, replica)
            more = await writer
            await assert_exactly_once_in_order(client, keys, ids + more, asyncpg_conn)

            async def recovered() -> bool:
                return not relay.status.stream_errors

            await wait_until(recovered, timeout_s=30, what="no service refused any more")
    finally:
        await client.aclose()


async def test_a_failover_to_a_replica_that_missed_writes_is_repaired_and_counted(
    replicated_cluster: RedisClusterServers,
    start_relay: StartRelay,
    asyncpg_conn: asyncpg.Connection,
    relay_settings: Settings,
) -> None:
    """The replica is paused and its link dropped, so it misses what its primary acknowledges
    (a paused process still receives into its socket buffer: the link must go); the primary
    dies and the replica, resumed, takes over without those entries. The relay sees the
    watermark behind what it saw the stream take, counts the loss and publishes the lost events
    again."""
    keys = Keys(relay_settings.stream_prefix, tagged=True)
    client = client_from_url(replicated_cluster.url, cluster=True, socket_timeout=5)
    assert isinstance(client, RedisCluster)
    try:
        ids = await emit(asyncpg_conn, 70)
        async with start_relay(**_replicated_overrides(replicated_cluster)) as relay:
            await assert_exactly_once_in_order(client, keys, ids, asyncpg_conn)
            primary = replicated_cluster.node_of(keys.stream("identity"))
            replica = replica_of(replicated_cluster, primary)
            replica.pause()
            primary.client().execute_command("CLIENT", "KILL", "TYPE", "replica")
            lost = await emit(asyncpg_conn, 70, start=70)

            async def acknowledged() -> bool:
                return set(await published_ids(client, keys, SERVICES)) >= set(lost)

            await wait_until(acknowledged, timeout_s=30, what="the writes the replica misses")
            primary.kill()
            replica.resume()
            await asyncio.to_thread(wait_promoted, replicated_cluster, replica)
            await assert_exactly_once_in_order(client, keys, ids + lost, asyncpg_conn)

            async def counted() -> bool:
                return relay.status.redis_losses >= 1

            await wait_until(counted, timeout_s=30, what="the loss counted")
    finally:
        await client.aclose()
