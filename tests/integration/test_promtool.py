"""The monitor's /metrics over a live pipeline passes Prometheus's own linter,
``promtool check metrics``: names, units, counters ending in ``_total``, help texts."""

from __future__ import annotations

from typing import Any

import asyncpg
import redis.asyncio as aioredis

from outbox.projections.examples import user_directory
from outbox.projections.projection import Projection
from outbox.settings import Settings
from outbox.streams.client import RedisStreamsClient
from outbox.streams.codec import StreamMessage
from outbox.streams.keys import Keys
from tests.fixtures_monitor import MonitorFactory
from tests.fixtures_projections import Runner
from tests.fixtures_promtool import needs_promtool, promtool_check_metrics
from tests.fixtures_relay import StartRelay, emit_events, wait_until

EVENTS = 12


@needs_promtool
async def test_live_metrics_pass_promtool(
    monitor_server: MonitorFactory,
    start_relay: StartRelay,
    running: Runner,
    projection_settings: Settings,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
) -> None:
    keys = Keys(projection_settings.stream_prefix)
    stream = keys.stream("identity")
    # A projection whose handler always fails: its events end in the dead-letter stream.
    failing = Projection("promtool_failing", streams=["identity"])

    @failing.on("thing_happened")
    async def broken(event: StreamMessage, db: Any) -> None:
        raise RuntimeError("handler bug")

    await emit_events(asyncpg_conn, EVENTS, services=("identity",))
    async with (
        monitor_server(refresh_interval_s=0.2) as live,
        start_relay(),
        running([user_directory, failing], projection_settings),
        RedisStreamsClient(prefix=projection_settings.stream_prefix) as client,
    ):
        # A consumer of the document's client, and a group whose consumer holds entries pending.
        await client.consume_messages(["assets"], "worker-1", block_time=0)

        async def published() -> bool:
            return int(await redis_client.xlen(stream)) == EVENTS

        await wait_until(published, what="the relay to publish every event")
        await redis_client.xgroup_create(stream, "audit", "0")
        await redis_client.xreadgroup("audit", "auditor-1", {stream: ">"}, count=3)

        async def every_kind_of_figure() -> bool:
            snap: dict[str, Any] = (await live.http.get("/api/snapshot")).json()
            streamed = [s for s in snap["streams"] if s["key"] == stream]
            groups = {g["name"]: g for s in streamed for g in s["groups"]}
            projections = {p["name"]: p for p in snap["projections"]}
            return (
                bool(snap["relays"])
                and groups.get("audit", {}).get("consumers", [{}])[0].get("pending") == 3
                and projections.get("promtool_failing", {}).get("dead_lettered") == EVENTS
                and projections.get("user_directory", {}).get("consumers") != []
                and projections.get("user_directory", {}).get("processing_latency") is not None
                and snap["dead_letters"]["count"] == EVENTS
                and any(c["consumer"] == "worker-1" for c in snap["consumers"])
            )

        await wait_until(every_kind_of_figure, what="streams, groups, projections, dead letters")
        text = (await live.http.get("/metrics")).text
    rc, lint = promtool_check_metrics(text)
    assert (rc, lint) == (0, ""), f"promtool check metrics exited {rc}:\n{lint}"
    # The linter saw samples of every kind: streams, groups and their consumers (redis_exporter's
    # names), the outbox, relays, projections, client consumers, dead letters, the server.
    for name in (
        "redis_stream_length{",
        "redis_stream_group_messages_pending{",
        "redis_stream_group_consumer_messages_pending{",
        "redis_stream_group_consumer_idle_seconds{",
        "outbox_published_events_total{",
        "outbox_relay_heartbeat_age_seconds{",
        "projection_dead_lettered_events_total{",
        "projection_consumer_heartbeat_age_seconds{",
        "projection_processing_latency_seconds{",
        "outbox_client_consumer_heartbeat_age_seconds{",
        "outbox_dead_letters_added_total ",
        "redis_commands_processed_total ",
    ):
        assert name in text, name
