"""The pipeline on a real 3-master Redis Cluster (REDIS_CLUSTER=true, tagged keys).

Every key of a service shares one slot; the relay publishes each node's streams in one round
trip, all nodes at once; consumers, the monitor, dead letters, trimming, ``outbox check`` and
the original document's client work there as on a single Redis.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

import outbox
from outbox.envelope import MessagePriority
from outbox.projections.examples import user_directory
from outbox.relay.admin import forget_marks
from outbox.relay.maintenance import trim_stream
from outbox.settings import Settings
from outbox.streams import RedisStreamsClient
from outbox.streams.connection import client_from_url, raw_pipeline
from outbox.streams.keys import Keys
from tests.fixtures_cluster import RedisClusterServers
from tests.fixtures_monitor import MonitorFactory
from tests.fixtures_projections import Runner
from tests.fixtures_relay import StartRelay, cursor_order_ok, published, wait_until

SERVICES = ("identity", "assets", "automation", "communication", "ai", "network", "system")
OUTBOX = str(Path(sys.executable).with_name("outbox"))


@pytest.fixture
async def cluster_client(cluster_settings: Settings) -> AsyncIterator[RedisCluster]:
    client = client_from_url(cluster_settings.redis_streams_url.get_secret_value(), cluster=True)
    assert isinstance(client, RedisCluster)
    await client.initialize()
    yield client
    keys = [
        key
        async for key in client.scan_iter(match=f"{cluster_settings.stream_prefix}:*", count=1000)
    ]
    for key in keys:
        await client.delete(key)
    await client.aclose()


def test_every_key_of_a_service_shares_its_slot(redis_cluster: RedisClusterServers) -> None:
    node = redis_cluster.nodes[0].client()
    tagged = Keys("opsconductor", tagged=True)
    for service in SERVICES:
        keys = [*tagged.streams_of(service)]
        keys += [tagged.watermark(stream) for stream in tagged.streams_of(service)]
        slots = {node.execute_command("CLUSTER", "KEYSLOT", key) for key in keys}
        assert len(slots) == 1, keys
        assert all(key.count("{") == 1 for key in keys), keys  # never nested braces
    # The document's layout keeps each stream and its watermark together, but not a service's
    # priority streams (hence the tagged layout on a cluster).
    document = Keys("opsconductor")
    stream = document.stream("identity", MessagePriority.HIGH)
    assert node.execute_command("CLUSTER", "KEYSLOT", stream) == node.execute_command(
        "CLUSTER", "KEYSLOT", document.watermark(stream)
    )


async def _emit(conn: asyncpg.Connection, count: int) -> list[str]:
    priorities = list(MessagePriority)
    specs = [
        outbox.EventSpec(
            SERVICES[i % len(SERVICES)],
            "thing_happened",
            {"n": i},
            priority=priorities[i % len(priorities)],
            aggregate_id=f"agg-{i % 11}",
        )
        for i in range(count)
    ]
    ids: list[str] = []
    for start in range(0, count, 200):
        async with conn.transaction():
            events = await outbox.emit_many(conn, specs[start : start + 200])
        ids += [str(event.event_id) for event in events]
    return ids


async def test_relay_publishes_every_event_once_in_order_on_a_cluster(
    cluster_settings: Settings,
    cluster_client: RedisCluster,
    start_relay: StartRelay,
    asyncpg_conn: asyncpg.Connection,
    redis_cluster: RedisClusterServers,
) -> None:
    keys = Keys.for_settings(cluster_settings)
    assert keys.tagged
    ids = await _emit(asyncpg_conn, 2100)
    async with start_relay(**_cluster_overrides(cluster_settings)):

        async def done() -> bool:
            got = await published(cluster_client, keys, SERVICES)  # type: ignore[arg-type]
            return len(got) >= len(ids)

        await wait_until(done, timeout_s=60, what="every event published")
        await asyncio.sleep(0.3)  # a batch sent twice would show up here
    assert Counter(await published(cluster_client, keys, SERVICES)) == Counter(ids)  # type: ignore[arg-type]
    nodes = set()
    for service in SERVICES:
        for stream in keys.streams_of(service):
            assert await cursor_order_ok(asyncpg_conn, cluster_client, stream)  # type: ignore[arg-type]
        nodes.add(redis_cluster.node_of(keys.stream(service)).port)
    assert len(nodes) >= 2  # the services really are spread over the nodes


def _cluster_overrides(settings: Settings) -> dict[str, object]:
    """What start_relay copies onto relay_settings (it was built before the cluster fixture)."""
    return {
        "redis_streams_url": settings.redis_streams_url,
        "redis_cluster": "true",
        "redis_password": None,
    }


async def test_emit_relay_projection_and_monitor_on_a_cluster(
    cluster_settings: Settings,
    cluster_client: RedisCluster,
    start_relay: StartRelay,
    running: Runner,
    monitor_server: MonitorFactory,
    asyncpg_conn: asyncpg.Connection,
) -> None:
    specs = [
        outbox.EventSpec("identity", "user_created", {"user_id": f"u{i}", "email": f"{i}@x.y"})
        for i in range(300)
    ] + [outbox.EventSpec("assets", "asset_created", {"asset_id": f"a{i}"}) for i in range(50)]
    async with asyncpg_conn.transaction():
        await outbox.emit_many(asyncpg_conn, specs)
    settings = cluster_settings.model_copy(
        update={
            "projection_block_ms": 100,
            "processor_workers": 2,
            "refresh_interval_s": 0.2,
            **_cluster_overrides(cluster_settings),
        }
    )
    async with (
        start_relay(**_cluster_overrides(cluster_settings)),
        running([user_directory], settings),
        monitor_server(**_cluster_overrides(cluster_settings)) as live,
    ):

        async def projected() -> bool:
            count = await asyncpg_conn.fetchval("SELECT count(*) FROM directory_users")
            return bool(count == 300)

        await wait_until(projected, timeout_s=60, what="the read model")

        async def settled() -> bool:
            snap = (await live.http.get("/api/snapshot")).json()
            rows = {r["stream"]: r for r in snap["outbox"]["streams"]}
            groups = [
                g
                for s in snap["streams"]
                if s["key"] == Keys.for_settings(settings).stream("identity")
                for g in s["groups"]
            ]
            return (
                rows["identity"]["unpublished"] == 0
                and rows["identity"]["published"] == 300
                and any(g["name"] == "user_directory" and g["pending"] == 0 for g in groups)
            )

        await wait_until(settled, timeout_s=30, what="the monitor seeing everything settled")
        snap = (await live.http.get("/api/snapshot")).json()
        nodes = snap["redis"]["nodes"]
        assert len(nodes) == 3
        assert all(node["error"] is None and node["used_memory_bytes"] > 0 for node in nodes)
        assert snap["redis"]["used_memory_bytes"] == sum(n["used_memory_bytes"] for n in nodes)
        metrics = (await live.http.get("/metrics")).text
        assert "redis_memory_used_bytes" in metrics
        for node in nodes:
            assert f'outbox_redis_node_up{{node="{node["node"]}"}} 1.0' in metrics
    inbox = await asyncpg_conn.fetchval(
        "SELECT count(*) FROM projection_inbox WHERE projection = 'user_directory'"
    )
    assert inbox == 300  # each event applied once


async def test_the_documents_client_on_a_cluster(
    cluster_settings: Settings, cluster_client: RedisCluster
) -> None:
    async with RedisStreamsClient(prefix=cluster_settings.stream_prefix) as client:
        assert isinstance(client.redis, RedisCluster)
        first = await outbox.streams.publish_event(
            client, "assets", "asset_created", {"asset_id": "a1"}, MessagePriority.HIGH
        )
        await outbox.streams.publish_event(client, "identity", "user_created", {"user_id": "u1"})
        messages = await client.consume_messages(
            ["assets", "identity"], consumer_name="worker-1", batch_size=10, block_time=100
        )
        assert sorted(m.event_type for m in messages) == ["asset_created", "user_created"]
        high = next(m for m in messages if m.event_type == "asset_created")
        assert high.id == first
        pending = await client.get_pending_messages("assets", "assets_processors")
        assert [p["id"] for p in pending] == [first]
        for message in messages:
            assert await client.acknowledge_message(
                message.service, f"{message.service}_processors", message.id
            )
        info = await client.get_stream_info("assets")
        assert info  # per priority stream, on the node of the service's slot


async def test_dead_letters_and_trimming_on_a_cluster(
    cluster_settings: Settings, cluster_client: RedisCluster
) -> None:
    """A dead letter (its own slot) is written in the same pipeline as the source stream's
    XACK (another slot): each goes to its node."""
    keys = Keys.for_settings(cluster_settings)
    stream = keys.stream("identity")
    await cluster_client.xgroup_create(stream, "g", id="0", mkstream=True)
    entry = await cluster_client.xadd(stream, {"event_id": "e1"})
    await cluster_client.xreadgroup("g", "c", {stream: ">"})
    replies = await raw_pipeline(
        cluster_client,
        [
            ("XADD", keys.dead_letter, "*", "source_stream", stream, "entry_id", entry),
            ("XACK", stream, "g", entry),
        ],
        raise_on_error=True,
    )
    assert replies[1] == 1
    assert await cluster_client.xlen(keys.dead_letter) == 1
    # Every group has acknowledged the entry: the trim script (EVALSHA, routed by its key)
    # removes it.
    result = await trim_stream(cluster_client, stream, retention_s=0, exact=True)
    assert result.trimmed == 1
    assert await cluster_client.xlen(stream) == 0


def test_outbox_check_says_what_to_set_on_a_cluster(
    redis_cluster: RedisClusterServers, database_url: str
) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_STREAMS_URL": redis_cluster.url}
    env.pop("REDIS_CLUSTER", None)
    auto = subprocess.run([OUTBOX, "check"], env=env, capture_output=True, text=True, timeout=60)
    assert auto.returncode == 2, auto.stdout + auto.stderr
    assert "is a Redis Cluster: set REDIS_CLUSTER=true" in auto.stderr
    ok = subprocess.run(
        [OUTBOX, "check"],
        env={**env, "REDIS_CLUSTER": "true"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok       Redis" in ok.stdout
    relay = subprocess.run([OUTBOX, "relay"], env=env, capture_output=True, text=True, timeout=60)
    assert relay.returncode == 2
    assert "set REDIS_CLUSTER=true" in relay.stderr
    assert "Traceback" not in relay.stderr


def test_redis_cluster_true_on_a_single_redis_is_refused(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_CLUSTER": "true"}
    result = subprocess.run([OUTBOX, "relay"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "is not a cluster node" in result.stderr


def test_the_document_layout_is_refused_on_a_cluster() -> None:
    with pytest.raises(ValueError, match="STREAM_KEY_LAYOUT=document cannot work"):
        Settings(redis_cluster="true", stream_key_layout="document")


async def test_moving_from_the_document_layout_to_tagged_keys_and_onto_a_cluster(
    relay_settings: Settings,
    cluster_settings: Settings,
    redis_client: aioredis.Redis,
    cluster_client: RedisCluster,
    start_relay: StartRelay,
    running: Runner,
    asyncpg_conn: asyncpg.Connection,
) -> None:
    """The documented move (docs/cluster.md): stop the relays, let the consumers drain, switch
    STREAM_KEY_LAYOUT (same Redis), later REDIS_CLUSTER (a new Redis) after
    ``outbox forget-marks``. Every event reaches the read model once, and no stream gets an
    event another already carried."""
    single = relay_settings.model_copy(
        update={
            "redis_streams_url": _single_url(relay_settings),
            "redis_cluster": "auto",
            "projection_block_ms": 100,
        }
    )
    tagged = single.model_copy(update={"stream_key_layout": "tagged"})
    on_cluster = single.model_copy(
        update={"stream_key_layout": None, **_cluster_overrides(cluster_settings)}
    )
    document_keys, tagged_keys = Keys.for_settings(single), Keys.for_settings(tagged)
    assert not document_keys.tagged
    assert tagged_keys.tagged
    assert on_cluster.tagged_keys

    async def users(start: int) -> None:
        async with asyncpg_conn.transaction():
            await outbox.emit_many(
                asyncpg_conn,
                [
                    outbox.EventSpec("identity", "user_created", {"user_id": f"u{i}"})
                    for i in range(start, start + 100)
                ],
            )

    async def projected(count: int) -> None:
        async def done() -> bool:
            return bool(
                await asyncpg_conn.fetchval("SELECT count(*) FROM directory_users") == count
            )

        await wait_until(done, timeout_s=60, what=f"{count} users in the read model")

    def relay_with(settings: Settings) -> Any:
        return start_relay(
            redis_streams_url=settings.redis_streams_url,
            redis_cluster=settings.redis_cluster,
            stream_key_layout=settings.stream_key_layout,
        )

    await users(0)
    async with relay_with(single), running([user_directory], single):
        await projected(100)
    await users(100)  # while nothing runs: these go out on the new keys
    async with relay_with(tagged), running([user_directory], tagged):
        await users(200)
        await projected(300)
    assert await redis_client.xlen(document_keys.stream("identity")) == 100
    assert await redis_client.xlen(tagged_keys.stream("identity")) == 200

    await users(300)
    forgotten = await forget_marks(single.libpq_url())
    assert forgotten == ["identity"]
    async with relay_with(on_cluster), running([user_directory], on_cluster):
        await projected(400)
    assert await cluster_client.xlen(tagged_keys.stream("identity")) == 100
    inbox = await asyncpg_conn.fetchval(
        "SELECT count(*) FROM projection_inbox WHERE projection = 'user_directory'"
    )
    assert inbox == 400


def _single_url(settings: Settings) -> Any:
    """The single Redis of the test environment (relay_settings is made before the cluster
    fixture points the environment at the cluster)."""
    assert not settings.cluster
    return settings.redis_streams_url


async def test_outbox_dlq_on_a_cluster(
    cluster_settings: Settings, cluster_client: RedisCluster, database_url: str
) -> None:
    """Dead letters (their own slot) listed and replayed to their source stream (another
    slot) by the command, on the cluster."""
    from outbox.streams.codec import encode_fields
    from outbox.streams.dead_letter import DeadLetters, dead_letter_fields

    keys = Keys.for_settings(cluster_settings)
    source = keys.stream("identity")
    letters = DeadLetters(cluster_client, keys, 3600)
    payload = encode_fields(
        event_id="00000000-0000-7000-8000-000000000001",
        event_type="user_created",
        service="identity",
        source="identity",
        data_json='{"user_id": "u1"}',
        priority=MessagePriority.NORMAL,
        occurred_at=datetime.now(UTC),
        correlation_id="c1",
        position=1,
        max_retries=3,
    )
    await letters.add(
        dead_letter_fields(
            source_stream=source,
            group="user_directory",
            entry_id="1-1",
            attempts=4,
            error="RuntimeError: boom",
            payload=payload,
            consumer="c",
        )
    )
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_STREAMS_URL": cluster_settings.redis_streams_url.get_secret_value(),
        "REDIS_CLUSTER": "true",
        "STREAM_PREFIX": cluster_settings.stream_prefix,
    }
    listed = await asyncio.to_thread(
        subprocess.run,
        [OUTBOX, "dlq", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert source in listed.stdout
    assert "1 dead letter(s)" in listed.stderr
    replayed = await asyncio.to_thread(
        subprocess.run,
        [OUTBOX, "dlq", "replay", "--all", "--yes"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replayed.returncode == 0, replayed.stderr
    assert await cluster_client.xlen(source) == 1
    assert await cluster_client.xlen(keys.dead_letter) == 0
