"""The monitor over a live pipeline: a real relay and a real projection, real outbox rows."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from outbox.projections.examples import user_directory
from outbox.settings import Settings
from tests.fixtures_monitor import MonitorFactory
from tests.fixtures_projections import Runner
from tests.fixtures_relay import StartRelay, emit_events, wait_until


async def snapshot(http: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await http.get("/api/snapshot")).json()
    return body


async def prometheus(http: httpx.AsyncClient) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Each metric family of /metrics → its samples' (labels, value)."""
    text = (await http.get("/metrics")).text
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text)
    }


async def test_relay_projection_and_monitor_agree(
    monitor_server: MonitorFactory,
    start_relay: StartRelay,
    running: Runner,
    projection_settings: Settings,
    asyncpg_conn: asyncpg.Connection,
) -> None:
    ids = await emit_events(asyncpg_conn, 300, services=("identity",))
    # Events the example projection folds into directory_users.
    async with asyncpg_conn.transaction():
        await asyncpg_conn.execute(
            "UPDATE outbox_events SET event_type = 'user_created',"
            " payload = jsonb_build_object('user_id', 'u' || position, 'email', 'x@y.z')"
        )
    stream = f"{projection_settings.stream_prefix}:identity:events"
    async with monitor_server(refresh_interval_s=0.2) as live:
        before = await snapshot(live.http)
        (row,) = [r for r in before["outbox"]["streams"] if r["stream"] == "identity"]
        assert row["unpublished"] == 300
        assert before["relays"] == []

        async with start_relay() as relay, running([user_directory], projection_settings):

            async def caught_up() -> bool:
                snap = await snapshot(live.http)
                outbox_row = next(r for r in snap["outbox"]["streams"] if r["stream"] == "identity")
                groups = [g for s in snap["streams"] if s["key"] == stream for g in s["groups"]]
                projection = next(
                    (p for p in snap["projections"] if p["name"] == "user_directory"), None
                )
                return (
                    outbox_row["unpublished"] == 0
                    and any(
                        g["name"] == "user_directory"
                        and g["lag_entries"] == 0
                        and g["pending"] == 0
                        for g in groups
                    )
                    and projection is not None
                    and projection["processed"] == 300
                )

            await wait_until(caught_up, what="the monitor to show the pipeline caught up")
            snap = await snapshot(live.http)
            (relay_row,) = snap["relays"]
            assert relay_row["instance"] == relay.status.instance_id
            assert relay_row["streams"] == ["identity"]
            assert relay_row["heartbeat_age_s"] < 5
            assert relay_row["published"] == 300
            identity = next(r for r in snap["outbox"]["streams"] if r["stream"] == "identity")
            assert identity["cursor"] is not None
            assert identity["published"] == 300
            statuses = {c["component"]: c for c in snap["status"]["components"]}
            assert statuses[f"relay:{relay.status.instance_id}"]["level"] == "OK"
            assert statuses["outbox:identity"]["level"] == "OK"
            assert statuses[f"group:{stream}/user_directory"]["level"] == "OK"
            consumers = snap["projections"][0]["consumers"]
            assert consumers
            assert all(c["heartbeat_age_s"] < 5 for c in consumers)
            assert await asyncpg_conn.fetchval("SELECT count(*) FROM directory_users") == 300
            metrics = await prometheus(live.http)
            relays = [
                labels["relay"] for labels, _ in metrics["outbox_relay_heartbeat_age_seconds"]
            ]
            assert relays == [relay.status.instance_id]
            assert {
                (labels["projection"], labels["consumer"])
                for labels, _ in metrics["projection_consumer_heartbeat_age_seconds"]
            } == {("user_directory", c["consumer"]) for c in consumers}

        async def relay_stopped() -> bool:
            return [r["stopped"] for r in (await snapshot(live.http))["relays"]] == [True]

        await wait_until(relay_stopped, what="the relay shown as stopped")
        # Stopped cleanly: no heartbeat age that would fire a "died" alert; counters stay.
        metrics = await prometheus(live.http)
        assert metrics["outbox_relay_heartbeat_age_seconds"] == []
        assert metrics["projection_consumer_heartbeat_age_seconds"] == []
        assert metrics["outbox_relay_published_events"] == [
            ({"relay": relay.status.instance_id}, 300)
        ]
    assert len(ids) == 300
