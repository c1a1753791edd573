"""The monitor's REST API against real PostgreSQL and Redis, served by a real uvicorn."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

import outbox
from outbox.envelope import MessagePriority
from outbox.settings import Settings
from outbox.streams.codec import decode_entry, encode_event
from outbox.streams.dead_letter import DeadLetters, dead_letter_fields
from outbox.streams.keys import Keys
from tests.fixtures_monitor import LiveMonitor, MonitorFactory
from tests.fixtures_relay import wait_until


async def publish(
    conn: asyncpg.Connection, r: aioredis.Redis, keys: Keys, count: int, **kwargs: Any
) -> list[outbox.Event]:
    """Emit ``count`` events and XADD them in the relay's format (no relay needed here)."""
    events = []
    async with conn.transaction():
        for i in range(count):
            events.append(
                await outbox.emit(
                    conn,
                    service=kwargs.get("service", "identity"),
                    event_type=kwargs.get("event_type", "user_created"),
                    data=kwargs.get("data", {"n": i}),
                    correlation_id=kwargs.get("correlation_id"),
                    priority=kwargs.get("priority", MessagePriority.NORMAL),
                )
            )
    for event in events:
        fields: dict[Any, Any] = encode_event(event, max_retries=3)
        await r.xadd(keys.stream(event.service, event.priority), fields)
    return events


async def set_cursor(conn: asyncpg.Connection, event: outbox.Event) -> None:
    """Record the relay's cursor as having passed ``event``."""
    await conn.execute(
        """
        INSERT INTO relay_cursors (stream, txid, position)
        SELECT stream, txid, position FROM outbox_events WHERE event_id = $1
        ON CONFLICT (stream) DO UPDATE SET txid = EXCLUDED.txid, position = EXCLUDED.position
        """,
        event.event_id,
    )


async def test_health_and_ready(monitor_server: MonitorFactory) -> None:
    async with monitor_server() as live:
        health = await live.http.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        ready = await live.http.get("/ready")
        assert ready.json() == {"ready": True, "postgres": "ok", "redis": "ok"}


async def test_ready_fails_but_health_passes_when_redis_is_down(
    monitor_server: MonitorFactory,
) -> None:
    async with monitor_server(redis_streams_url=SecretStr("redis://127.0.0.1:1/0")) as live:
        assert (await live.http.get("/health")).status_code == 200
        ready = await live.http.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["redis"].startswith("unreachable")
        assert ready.json()["postgres"] == "ok"
        streams = await live.http.get("/api/streams")
        assert streams.status_code == 503


async def test_streams_groups_lag_and_pending(
    monitor_server: MonitorFactory,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    settings: Settings,
) -> None:
    keys = Keys(settings.stream_prefix)
    await publish(asyncpg_conn, redis_client, keys, 5)
    stream = keys.stream("identity")
    await redis_client.xgroup_create(stream, "directory", "0")
    await redis_client.xgroup_create(stream, "caught_up", "$")
    await redis_client.xreadgroup("directory", "worker-1", {stream: ">"}, count=2)
    async with monitor_server() as live:
        body = (await live.http.get("/api/streams")).json()
        (identity,) = [s for s in body if s["key"] == stream]
        assert identity["length"] == 5
        groups = {g["name"]: g for g in identity["groups"]}
        assert groups["directory"]["lag_entries"] == 3
        assert groups["directory"]["pending"] == 2
        assert groups["directory"]["lag_seconds"] >= 0
        assert groups["directory"]["consumers"][0]["name"] == "worker-1"
        assert groups["caught_up"]["lag_entries"] == 0
        assert groups["caught_up"]["lag_seconds"] == 0

        one = await live.http.get(f"/api/stream/{stream}")
        assert one.status_code == 200
        assert one.json()["key"] == stream
        assert one.json()["length"] == 5

        pending = (await live.http.get(f"/api/pending/{stream}/directory")).json()
        assert pending["pending"] == 2
        assert [e["consumer"] for e in pending["entries"]] == ["worker-1", "worker-1"]
        assert all(e["deliveries"] == 1 for e in pending["entries"])


async def test_a_service_name_covers_every_priority_stream(
    monitor_server: MonitorFactory, redis_client: aioredis.Redis, settings: Settings
) -> None:
    """The document's HIGH example: 999 NORMAL entries and one HIGH entry, all pending. Asked by
    service name, the monitor counts 1000 (issue 23)."""
    keys = Keys(settings.stream_prefix)
    normal, high = keys.stream("identity"), keys.stream("identity", MessagePriority.HIGH)
    async with redis_client.pipeline(transaction=False) as pipe:
        for i in range(999):
            pipe.xadd(normal, {"n": str(i)})
        pipe.xadd(high, {"n": "high"})
        await pipe.execute()
    for key in (normal, high):
        await redis_client.xgroup_create(key, "identity_processors", "0")
        await redis_client.xreadgroup("identity_processors", "w1", {key: ">"}, count=1000)
    async with monitor_server() as live:
        service = (await live.http.get("/api/stream/identity")).json()
        assert service["service"] == "identity"
        assert service["length"] == 1000
        assert [s["key"] for s in service["streams"]] == [high, normal]
        (group,) = service["groups"]
        assert (group["name"], group["pending"], group["lag_entries"]) == (
            "identity_processors",
            1000,
            0,
        )
        pending = (await live.http.get("/api/pending/identity/identity_processors")).json()
        assert pending["pending"] == 1000
        assert pending["keys"] == [high, normal]
        assert pending["consumers"] == [{"name": "w1", "pending": 1000}]
        assert len(pending["entries"]) == 100
        one_key = (await live.http.get(f"/api/pending/{normal}/identity_processors")).json()
        assert (one_key["pending"], one_key["keys"]) == (999, [normal])
        assert {e["stream"] for e in one_key["entries"]} == {normal}


async def test_lag_when_redis_reports_it_as_null(
    monitor_server: MonitorFactory, redis_client: aioredis.Redis, settings: Settings
) -> None:
    """After an XDEL in the unread range Redis answers lag=nil; the monitor still says 0 or N."""
    stream = Keys(settings.stream_prefix).stream("assets")
    ids = [await redis_client.xadd(stream, {"n": str(i)}) for i in range(4)]
    await redis_client.xgroup_create(stream, "inventory", "0")
    await redis_client.xreadgroup("inventory", "w", {stream: ">"}, count=1)
    await redis_client.xdel(stream, ids[2])
    info = await redis_client.xinfo_groups(stream)
    assert info[0]["lag"] is None  # the case under test
    async with monitor_server() as live:
        (found,) = [s for s in (await live.http.get("/api/streams")).json() if s["key"] == stream]
        group = found["groups"][0]
        assert group["lag_entries"] == 2
        assert group["lag_seconds"] >= 0
    await redis_client.xreadgroup("inventory", "w", {stream: ">"})
    async with monitor_server() as live:
        (found,) = [s for s in (await live.http.get("/api/streams")).json() if s["key"] == stream]
        assert found["groups"][0]["lag_entries"] == 0


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/stream/nothing_here", 404),
        ("/api/stream/bad%20name", 422),
        ("/api/stream/other:prefix:events", 404),
        ("/api/pending/identity/no_such_group", 404),
        ("/api/pending/bad%20name/g", 422),
        ("/api/dead-letters/not-an-id", 422),
        ("/api/dead-letters/1-0", 404),
        ("/api/events", 422),
    ],
)
async def test_invalid_names_are_404_or_422_never_500(
    monitor_server: MonitorFactory, path: str, status: int
) -> None:
    async with monitor_server() as live:
        assert (await live.http.get(path)).status_code == status


async def test_a_key_that_is_not_a_stream(
    monitor_server: MonitorFactory, redis_client: aioredis.Redis, settings: Settings
) -> None:
    key = Keys(settings.stream_prefix).stream("network")
    await redis_client.set(key, "not a stream")
    async with monitor_server() as live:
        assert (await live.http.get("/api/stream/network")).status_code == 409
        assert (await live.http.get(f"/api/pending/{key}/g")).status_code == 409
        snapshot = (await live.http.get("/api/snapshot")).json()
        errors = [c for c in snapshot["status"]["components"] if c["component"] == f"stream:{key}"]
        assert errors[0]["level"] == "ERR"
        assert "WRONGTYPE" in errors[0]["reason"]


async def test_redis_metrics(monitor_server: MonitorFactory) -> None:
    async with monitor_server() as live:
        body = (await live.http.get("/api/metrics")).json()
        for key in (
            "used_memory_bytes",
            "connected_clients",
            "instantaneous_ops_per_sec",
            "hit_ratio",
            "uptime_seconds",
        ):
            assert key in body
        assert body["connected_clients"] >= 1


async def test_outbox_backlog_cursor_and_oldest_age(
    monitor_server: MonitorFactory,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    settings: Settings,
) -> None:
    keys = Keys(settings.stream_prefix)
    events = await publish(asyncpg_conn, redis_client, keys, 6, service="automation")
    await set_cursor(asyncpg_conn, events[3])
    async with monitor_server() as live:
        body = (await live.http.get("/api/outbox")).json()
        (row,) = [r for r in body["outbox"]["streams"] if r["stream"] == "automation"]
        assert row["unpublished"] == 2
        assert row["cursor"]["position"] == events[3].position
        assert row["oldest_unpublished_age_s"] >= 0
        assert row["published"] == 6  # entries added to its streams
    await set_cursor(asyncpg_conn, events[5])
    async with monitor_server() as live:
        body = (await live.http.get("/api/outbox")).json()
        (row,) = [r for r in body["outbox"]["streams"] if r["stream"] == "automation"]
        assert row["unpublished"] == 0
        assert row["oldest_unpublished_age_s"] is None


async def outbox_row(live: LiveMonitor, service: str) -> dict[str, Any]:
    """The service's row of ``GET /api/outbox``."""
    (row,) = [
        r
        for r in (await live.http.get("/api/outbox")).json()["outbox"]["streams"]
        if r["stream"] == service
    ]
    return row


async def relay_row(
    conn: asyncpg.Connection,
    instance: str,
    *,
    republishing: dict[str, str],
    redis_losses: int,
    stopped: bool = False,
) -> None:
    """A relay's status row as ``relay/leases.py`` writes it, holding the automation service."""
    await conn.execute(
        """
        INSERT INTO relay_instances
               (instance_id, host, pid, streams, cursors, republishing, redis_losses, stopped_at)
        VALUES ($1, 'host', 1, '{automation}', $2::jsonb, $2::jsonb, $3,
                CASE WHEN $4 THEN now() END)
        """,
        instance,
        json.dumps(republishing),
        redis_losses,
        stopped,
    )


async def test_a_relay_publishing_lost_events_again_shows_them_as_a_backlog(
    monitor_server: MonitorFactory,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    settings: Settings,
) -> None:
    """Redis lost events the stored cursor has passed (decision 0011): the stored cursor only
    moves forward, so the backlog counts from where the live relay says it is, the correlation
    trace shows those events as not published, and the losses are a counter for the alert. A
    stopped relay's word counts for nothing."""
    keys = Keys(settings.stream_prefix)
    events = await publish(
        asyncpg_conn, redis_client, keys, 6, service="automation", correlation_id="lost"
    )

    async def trace(live: LiveMonitor) -> list[tuple[bool, bool, str]]:
        body = (await live.http.get("/api/events", params={"correlation_id": "lost"})).json()
        assert [e["event_id"] for e in body["events"]] == [str(e.event_id) for e in events]
        return [(e["published"], e["republishing"], e["where"]) for e in body["events"]]

    await set_cursor(asyncpg_conn, events[5])
    at = await asyncpg_conn.fetchval(
        "SELECT txid::text || ':' || position FROM outbox_events WHERE event_id = $1",
        events[1].event_id,
    )
    await relay_row(
        asyncpg_conn, "gone", republishing={"automation": "0:0"}, redis_losses=0, stopped=True
    )
    async with monitor_server() as live:
        row = await outbox_row(live, "automation")
        assert (row["unpublished"], row["republishing"]) == (0, False)
        assert await trace(live) == [(True, False, "published")] * 6
    await relay_row(asyncpg_conn, "live", republishing={"automation": at}, redis_losses=2)
    async with monitor_server() as live:
        row = await outbox_row(live, "automation")
        assert (row["unpublished"], row["republishing"]) == (4, True)
        lost_not_yet_again = [(False, True, "in_outbox")] * 4
        assert await trace(live) == [(True, False, "published")] * 2 + lost_not_yet_again
        assert row["cursor"]["position"] == events[5].position  # the stored cursor, unchanged
        families = {
            f.name: f
            for f in text_string_to_metric_families((await live.http.get("/metrics")).text)
        }
        losses = {s.labels["relay"]: s.value for s in families["outbox_relay_redis_losses"].samples}
        assert losses == {"gone": 0, "live": 2}


async def test_the_transaction_holding_the_relay_back_is_named(
    monitor_server: MonitorFactory, database_url: str
) -> None:
    holder = await asyncpg.connect(database_url)
    try:
        tx = holder.transaction()
        await tx.start()
        await outbox.emit(holder, service="identity", event_type="held", data={})
        pid = holder.get_server_pid()
        # How old ours is before the monitor can look (it reports what it saw when it looked).
        ours_before = await holder.fetchval(
            "SELECT extract(epoch FROM clock_timestamp() - xact_start)::float8"
            "  FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        )
        async with monitor_server() as live:
            blocker = (await live.http.get("/api/outbox")).json()["outbox"][
                "oldest_write_transaction"
            ]
            if blocker["pid"] != pid:
                # The server is shared (other test runs, other databases): the one named must
                # then be a write transaction older than ours, which by then was this old.
                assert blocker["age_s"] >= ours_before, (blocker, ours_before)
            assert blocker["age_s"] >= 0
            assert blocker["query_start"]
        await tx.rollback()
    finally:
        await holder.close()


async def test_a_deferred_transaction_is_named_as_deferred(
    monitor_server: MonitorFactory, database_url: str
) -> None:
    """Once the relays have deferred it (decision 0020) it no longer holds them: the monitor
    says so, and counts it."""
    holder = await asyncpg.connect(database_url)
    try:
        tx = holder.transaction()
        await tx.start()
        await outbox.emit(holder, service="identity", event_type="held", data={})
        xid = await holder.fetchval("SELECT pg_current_xact_id()")
        admin = await asyncpg.connect(database_url)
        # What a relay's deferral writes (relay/deferral.py), without a relay.
        await admin.execute("UPDATE relay_deferred SET txids = ARRAY[$1::xid8], cap = $1", xid)
        await admin.close()
        async with monitor_server() as live:
            outbox_view = (await live.http.get("/api/outbox")).json()["outbox"]
            assert outbox_view["deferred_transactions"] == 1
            assert outbox_view["oldest_write_transaction"]["pid"] == holder.get_server_pid()
            assert outbox_view["oldest_write_transaction"]["deferred"] is True
            families = {
                f.name: f
                for f in text_string_to_metric_families((await live.http.get("/metrics")).text)
            }
            assert families["outbox_deferred_transactions"].samples[0].value == 1
        await tx.rollback()
    finally:
        await holder.close()


async def test_a_transaction_of_another_database_is_not_named(
    monitor_server: MonitorFactory, database_url: str
) -> None:
    """It does not hold the relay back (decision 0019), so the monitor does not blame it."""
    other = await asyncpg.connect(database_url.rsplit("/", 1)[0] + "/postgres")
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute("CREATE TEMP TABLE held_elsewhere (n int)")  # it has an xid now
        async with monitor_server() as live:
            outbox_view = (await live.http.get("/api/outbox")).json()["outbox"]
            assert outbox_view["oldest_write_transaction"] is None
        await tx.rollback()
    finally:
        await other.close()


async def test_dead_letters_list_show_and_admin_actions(
    monitor_server: MonitorFactory,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    settings: Settings,
) -> None:
    keys = Keys(settings.stream_prefix)
    events = await publish(
        asyncpg_conn,
        redis_client,
        keys,
        3,
        data={"user_id": "u1", "password": "hunter2", "profile": {"email": "a@b.c"}},
    )
    dead = DeadLetters(redis_client, keys, settings.dead_letter_ttl_s)
    stream = keys.stream("identity")
    ids = []
    for i, event in enumerate(events):
        fields = encode_event(event, max_retries=3)
        ids.append(
            await dead.add(
                dead_letter_fields(
                    source_stream=stream,
                    group="directory" if i < 2 else "audit",
                    entry_id=f"{i + 1}-0",
                    attempts=3,
                    error="boom",
                    payload=fields,
                    consumer="w-1",
                )
            )
        )
    async with monitor_server() as live:
        listing = (await live.http.get("/api/dead-letters", params={"group": "directory"})).json()
        assert listing["total"] == 2
        text = json.dumps(listing)
        assert "hunter2" not in text
        assert "a@b.c" not in text
        assert listing["dead_letters"][0]["data"]["password"] == "***"
        shown = await live.http.get(f"/api/dead-letters/{ids[0]}")
        assert shown.json()["data"]["profile"]["email"] == "***"
        # No token configured: every write action is refused, nothing changes.
        refused = await live.http.post(f"/api/dead-letters/{ids[0]}/replay")
        assert refused.status_code == 403
        assert (await live.http.post("/api/dead-letters/purge")).status_code == 403
        assert await redis_client.xlen(keys.dead_letter) == 3
    async with monitor_server(monitor_admin_token=SecretStr("")) as live:
        empty = await live.http.post(
            "/api/dead-letters/purge", headers={"Authorization": "Bearer x"}
        )
        assert empty.status_code == 403  # an empty token (compose's default) disables writes

    async with monitor_server(monitor_admin_token=SecretStr("s3cret-token")) as live:
        wrong = await live.http.post(
            f"/api/dead-letters/{ids[0]}/replay", headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        assert (await live.http.get(f"/api/dead-letters/{ids[0]}/replay")).status_code == 405
        auth = {"Authorization": "Bearer s3cret-token"}
        before = await redis_client.xlen(stream)
        replayed = await live.http.post(f"/api/dead-letters/{ids[0]}/replay", headers=auth)
        assert replayed.status_code == 200
        assert replayed.json()["replayed"] == 1
        assert await redis_client.xlen(stream) == before + 1
        changed = await live.http.post(
            "/api/dead-letters/replay", params={"group": "directory", "expected": 5}, headers=auth
        )
        assert changed.status_code == 409
        purged = await live.http.post(
            "/api/dead-letters/purge", params={"group": "audit", "expected": 1}, headers=auth
        )
        assert purged.json() == {"purged": 1}
        assert await redis_client.xlen(keys.dead_letter) == 1


async def test_events_of_a_correlation_and_where_they_are(
    monitor_server: MonitorFactory,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    settings: Settings,
) -> None:
    keys = Keys(settings.stream_prefix)
    published = await publish(
        asyncpg_conn, redis_client, keys, 2, correlation_id="req-9", data={"email": "x@y.z"}
    )
    await set_cursor(asyncpg_conn, published[1])
    async with asyncpg_conn.transaction():
        waiting = await outbox.emit(
            asyncpg_conn,
            service="assets",
            event_type="asset_created",
            data={},
            correlation_id="req-9",
        )
    await asyncpg_conn.execute(
        "INSERT INTO projection_inbox (projection, event_id) VALUES ('directory', $1)",
        published[0].event_id,
    )
    async with monitor_server() as live:
        body = (await live.http.get("/api/events", params={"correlation_id": "req-9"})).json()
        where = {e["event_id"]: e for e in body["events"]}
        first = where[str(published[0].event_id)]
        assert first["where"] == "applied"
        assert first["applied_by"] == ["directory"]
        assert first["entry"]["stream"] == keys.stream("identity")
        assert first["data"] == {"email": "***"}
        second = where[str(published[1].event_id)]
        assert second["where"] == "published"
        assert second["entry"]["id"]
        assert where[str(waiting.event_id)]["where"] == "in_outbox"
        assert (await live.http.get("/api/events", params={"correlation_id": "none"})).json()[
            "events"
        ] == []


async def test_prometheus_metrics(
    monitor_server: MonitorFactory,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    settings: Settings,
) -> None:
    keys = Keys(settings.stream_prefix)
    events = await publish(asyncpg_conn, redis_client, keys, 3, correlation_id="corr-1")
    stream = keys.stream("identity")
    await redis_client.xgroup_create(stream, "directory", "0")
    await redis_client.xreadgroup("directory", "w-1", {stream: ">"}, count=1)
    async with monitor_server() as live:
        response = await live.http.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
        length = families["redis_stream_length"].samples
        assert any(s.labels["stream"] == stream and s.value == 3 for s in length)
        pending = families["redis_stream_group_messages_pending"].samples
        assert any(
            s.labels == {"db": "db0", "stream": stream, "group": "directory"} and s.value == 1
            for s in pending
        )
        lag = families["redis_stream_group_lag"].samples
        assert any(s.labels["group"] == "directory" and s.value == 2 for s in lag)
        consumer_pending = families["redis_stream_group_consumer_messages_pending"].samples
        assert [(s.labels, s.value) for s in consumer_pending if s.labels["stream"] == stream] == [
            ({"db": "db0", "stream": stream, "group": "directory", "consumer": "w-1"}, 1)
        ]
        assert "redis_stream_group_consumer_idle_seconds" in families
        unpublished = families["outbox_unpublished_events"].samples
        assert any(s.labels["stream"] == "identity" and s.value == 3 for s in unpublished)
        # Counters, whose rate() Prometheus takes: entries added to the service's streams, and
        # the commands Redis processed.
        published = families["outbox_published_events"].samples
        assert any(
            s.name == "outbox_published_events_total"
            and s.labels == {"stream": "identity"}
            and s.value == 3
            for s in published
        )
        (commands,) = families["redis_commands_processed"].samples
        assert commands.name == "redis_commands_processed_total"
        assert commands.value > 0
        assert "outbox_oldest_unpublished_age_seconds" in families
        # No event or correlation id is ever a label.
        for event in events:
            assert str(event.event_id) not in response.text
        assert "corr-1" not in response.text


async def test_connection_secrets_never_appear(
    monitor_server: MonitorFactory, database_url: str
) -> None:
    """Trust auth accepts any password, so a URL with one still connects."""
    with_password = database_url.replace("postgres@", "postgres:pg-s3cret@")
    async with monitor_server(database_url=SecretStr(with_password)) as live:
        for path in (
            "/api/snapshot",
            "/api/outbox",
            "/api/metrics",
            "/metrics",
            "/ready",
            "/openapi.json",
            "/",
        ):
            response = await live.http.get(path)
            assert response.status_code == 200, path
            assert "pg-s3cret" not in response.text, path


async def test_metrics_stream_gets_periodic_snapshots(
    monitor_server: MonitorFactory, redis_client: aioredis.Redis, settings: Settings
) -> None:
    key = Keys(settings.stream_prefix).metrics
    async with monitor_server():
        await wait_until(lambda: _has_entries(redis_client, key, 2), what="two metrics entries")
    entries = await redis_client.xrange(key)
    message = decode_entry(key, entries[-1][0].decode(), entries[-1][1])
    assert message.event_type == "monitor_snapshot"
    assert "status" in message.data


async def _has_entries(client: aioredis.Redis, key: str, count: int) -> bool:
    return int(await client.xlen(key)) >= count


async def test_status_reflects_a_backlog_that_does_not_move(
    monitor_server: MonitorFactory,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    settings: Settings,
) -> None:
    keys = Keys(settings.stream_prefix)
    await publish(asyncpg_conn, redis_client, keys, 2, service="ai")
    async with monitor_server(monitor_window_s=10.0) as live:
        first = (await live.http.get("/api/status")).json()
        (ai,) = [c for c in first["components"] if c["component"] == "outbox:ai"]
        assert ai["level"] == "WARN"
        assert "collecting history" in ai["reason"]
        await asyncio.sleep(0)  # statuses below come from the periodic collector

        async def stuck() -> bool:
            body = (await live.http.get("/api/status")).json()
            return any(
                c["component"] == "outbox:ai" and c["level"] == "ERR" for c in body["components"]
            )

        await wait_until(stuck, timeout_s=30, what="ERR for a backlog that does not move")
