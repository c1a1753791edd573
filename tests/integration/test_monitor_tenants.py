"""The monitor and tenants (docs/monitor.md#tenants), against real PostgreSQL and Redis: tenants'
streams published by a real relay (TENANT_STREAMS), the ``?tenant=`` filter, and tenant tokens
that see their own tenant only, over REST, /metrics and /ws."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
import websockets
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from websockets.exceptions import ConnectionClosed, InvalidStatus

import outbox
from outbox.settings import Settings
from outbox.streams.codec import encode_event
from outbox.streams.dead_letter import DeadLetters, dead_letter_fields
from outbox.streams.keys import Keys
from tests.fixtures_monitor import LiveMonitor, MonitorFactory
from tests.fixtures_relay import StartRelay, wait_until

ADMIN = "admin-token-0123456789"
ACME = "acme-token-0123456789"
GLOBEX = "globex-token-0123456789"
TOKENS = {
    "monitor_admin_token": SecretStr(ADMIN),
    "monitor_tenant_tokens": SecretStr(f"acme:{ACME},globex:{GLOBEX}"),
}
CORRELATION = "order-42"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Tenants:
    """What :func:`tenants` put in place."""

    keys: Keys
    acme: str  # acme's assets stream
    globex: str  # globex's assets stream
    deployment: str  # the deployment's identity stream
    acme_letter: str  # the id of acme's dead letter
    deployment_letter: str


async def emit(
    conn: asyncpg.Connection, service: str, count: int, tenant: str | None
) -> list[outbox.Event]:
    async with conn.transaction():
        return [
            await outbox.emit(
                conn,
                service=service,
                event_type="asset_scanned",
                data={"n": i, "secret": "hunter2"},
                correlation_id=CORRELATION,
                tenant_id=tenant,
            )
            for i in range(count)
        ]


@pytest.fixture
async def tenants(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    settings: Settings,
    start_relay: StartRelay,
) -> Tenants:
    """acme: 2 events on its assets stream, a group ``billing`` with one pending and one
    undelivered, a dead letter; globex: 1 event; the deployment: 1 identity event and a dead
    letter. All of one correlation. Published by a relay with TENANT_STREAMS=assets."""
    keys = Keys.for_settings(settings)
    acme = keys.for_tenant("acme").stream("assets")
    globex = keys.for_tenant("globex").stream("assets")
    deployment = keys.stream("identity")
    acme_events = await emit(asyncpg_conn, "assets", 2, "acme")
    await emit(asyncpg_conn, "assets", 1, "globex")
    identity = await emit(asyncpg_conn, "identity", 1, None)

    async def published() -> bool:
        lengths = [await redis_client.xlen(key) for key in (acme, globex, deployment)]
        return lengths == [2, 1, 1]

    # A relay stopping commits its cursors with their marks, the monitor's list of tenant streams
    # (while it runs it commits them at most every so often).
    async with start_relay(tenant_streams="assets"):
        await wait_until(published, what="the tenants' streams published")
    marks = await asyncpg_conn.fetchval("SELECT string_agg(marks::text, ' ') FROM relay_cursors")
    assert acme in marks
    assert globex in marks

    await redis_client.xgroup_create(acme, "billing", "0")
    await redis_client.xreadgroup("billing", "worker-1", {acme: ">"}, count=1)

    async def letter(into: Keys, stream: str, event: outbox.Event) -> str:
        dead = DeadLetters(redis_client, into, settings.dead_letter_ttl_s)
        return await dead.add(
            dead_letter_fields(
                source_stream=stream,
                group="billing",
                entry_id="1-0",
                attempts=3,
                error="boom",
                payload=encode_event(event, max_retries=3),
                consumer="worker-1",
            )
        )

    return Tenants(
        keys=keys,
        acme=acme,
        globex=globex,
        deployment=deployment,
        acme_letter=await letter(keys.for_tenant("acme"), acme, acme_events[1]),
        deployment_letter=await letter(keys, deployment, identity[0]),
    )


async def get(live: LiveMonitor, path: str, token: str | None = None, **params: Any) -> Any:
    response = await live.http.get(path, params=params, headers=bearer(token) if token else {})
    assert response.status_code == 200, (path, response.status_code, response.text)
    return response.json()


def stream_keys(streams: list[dict[str, Any]]) -> set[str]:
    return {s["key"] for s in streams}


async def test_tenant_streams_are_shown_and_filtered(
    monitor_server: MonitorFactory, tenants: Tenants, asyncpg_conn: asyncpg.Connection
) -> None:
    acme_letters = tenants.keys.for_tenant("acme").dead_letter
    await emit(asyncpg_conn, "assets", 3, "acme")  # not published: acme's outbox backlog
    async with monitor_server(tenant_streams="assets") as live:
        every = stream_keys(await get(live, "/api/streams"))
        assert {tenants.acme, tenants.globex, tenants.deployment, acme_letters} <= every

        only = await get(live, "/api/streams", tenant="acme")
        assert stream_keys(only) == {tenants.acme, acme_letters}
        assert {s["tenant"] for s in only} == {"acme"}
        (acme,) = [s for s in only if s["key"] == tenants.acme]
        (billing,) = acme["groups"]
        assert (billing["name"], billing["pending"], billing["lag_entries"]) == ("billing", 1, 1)

        snapshot = await get(live, "/api/snapshot", tenant="acme")
        assert stream_keys(snapshot["streams"]) == {tenants.acme, acme_letters}
        (summary,) = snapshot["tenants"]
        assert summary["tenant"] == "acme"
        assert summary["unpublished"] == 3
        assert summary["dead_letters"]["count"] == 1
        assert snapshot["dead_letters"]["count"] == 1
        assert snapshot["relays"] == []
        assert snapshot["redis"] is None
        whole = await get(live, "/api/snapshot")
        assert {t["tenant"]: t["unpublished"] for t in whole["tenants"]} == {
            "acme": 3,
            "globex": 0,
        }
        assert whole["dead_letters"]["count"] == 1  # the deployment's own

        service = await get(live, "/api/stream/assets", tenant="acme")
        assert (service["tenant"], service["length"]) == ("acme", 2)
        assert (await get(live, f"/api/stream/{tenants.acme}"))["tenant"] == "acme"
        pending = await get(live, f"/api/pending/{tenants.acme}/billing")
        assert pending["pending"] == 1
        pending = await get(live, "/api/pending/assets/billing", tenant="acme")
        assert pending["keys"] == [tenants.acme]

        letters = await get(live, "/api/dead-letters", tenant="acme")
        assert [d["id"] for d in letters["dead_letters"]] == [tenants.acme_letter]
        assert letters["dead_letters"][0]["data"]["secret"] == "***"
        one = await get(live, f"/api/dead-letters/{tenants.acme_letter}", tenant="acme")
        assert one["source_stream"] == tenants.acme
        deployment = await get(live, "/api/dead-letters")
        assert [d["id"] for d in deployment["dead_letters"]] == [tenants.deployment_letter]

        trace = await get(live, "/api/events", correlation_id=CORRELATION)
        assert len(trace["events"]) == 7
        trace = await get(live, "/api/events", correlation_id=CORRELATION, tenant="acme")
        assert len(trace["events"]) == 5
        published = [e for e in trace["events"] if e["published"]]
        assert {e["entry"]["stream"] for e in published} == {tenants.acme}
        assert [e["where"] for e in published] == ["published", "dead_lettered"]

        families = {
            f.name: f
            for f in text_string_to_metric_families((await live.http.get("/metrics")).text)
        }
        lag = {
            tuple(sorted(s.labels.items())): s.value
            for s in families["outbox_tenant_group_lag"].samples
        }
        assert lag == {(("group", "billing"), ("tenant", "acme")): 1.0}
        unpublished = {
            s.labels["tenant"]: s.value
            for s in families["outbox_tenant_unpublished_events"].samples
        }
        assert unpublished == {"acme": 3.0, "globex": 0.0}
        # No per-stream series per tenant: the number of series does not grow with tenants.
        assert not [
            s
            for f in families.values()
            for s in f.samples
            if ":tenant:" in s.labels.get("stream", "") + s.labels.get("component", "")
        ]


@pytest.mark.parametrize(
    "path",
    [
        "/api/streams",
        "/api/snapshot",
        "/api/status",
        "/api/consumers",
        "/api/dead-letters",
        "/api/events?correlation_id=x",
        "/api/stream/assets",
    ],
)
@pytest.mark.parametrize("tenant", ["Acme", "events", "a:b", "*", ""])
async def test_a_bad_tenant_is_a_422(
    monitor_server: MonitorFactory, path: str, tenant: str
) -> None:
    async with monitor_server() as live:
        joiner = "&" if "?" in path else "?"
        response = await live.http.get(f"{path}{joiner}tenant={tenant}")
        assert response.status_code == 422, response.text


async def test_tenant_tokens_make_every_read_need_a_token(
    monitor_server: MonitorFactory,
) -> None:
    async with monitor_server(**TOKENS) as live:
        for path in ("/api/streams", "/api/snapshot", "/api/audit", "/metrics"):
            for headers in ({}, bearer("not-a-token-at-all"), {"Authorization": ACME}):
                response = await live.http.get(path, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
                assert ACME not in response.text
        assert (await live.http.get("/health")).status_code == 200
        assert (await live.http.get("/")).status_code == 200
        assert (await live.http.get("/metrics", headers=bearer(ADMIN))).status_code == 200
        assert (await live.http.get("/metrics", headers=bearer(ACME))).status_code == 403


async def test_a_tenant_token_sees_only_its_tenant(
    monitor_server: MonitorFactory, tenants: Tenants
) -> None:
    globex_letters = tenants.keys.for_tenant("globex").dead_letter
    async with monitor_server(tenant_streams="assets", **TOKENS) as live:
        # The admin sees everything.
        assert {tenants.acme, tenants.globex, tenants.deployment} <= stream_keys(
            await get(live, "/api/streams", ADMIN)
        )
        assert len((await get(live, "/api/events", ADMIN, correlation_id=CORRELATION))["events"])

        own = {tenants.acme, tenants.keys.for_tenant("acme").dead_letter}
        assert stream_keys(await get(live, "/api/streams", ACME)) == own
        assert stream_keys(await get(live, "/api/streams", ACME, tenant="acme")) == own
        snapshot = await get(live, "/api/snapshot", ACME)
        text = json.dumps(snapshot)
        for foreign in ("globex", tenants.deployment, "identity"):
            assert foreign not in text, foreign
        assert snapshot["outbox"]["streams"] == []
        assert snapshot["relays"] == []
        assert [t["tenant"] for t in snapshot["tenants"]] == ["acme"]
        assert "globex" not in json.dumps(await get(live, "/api/status", ACME))
        assert (await get(live, "/api/consumers", ACME)) == []

        trace = await get(live, "/api/events", ACME, correlation_id=CORRELATION)
        assert len(trace["events"]) == 2
        assert {e["service"] for e in trace["events"]} == {"assets"}
        assert {e["entry"]["stream"] for e in trace["events"]} == {tenants.acme}

        letters = await get(live, "/api/dead-letters", ACME)
        assert [d["id"] for d in letters["dead_letters"]] == [tenants.acme_letter]

        async def status(path: str, method: str = "GET", **params: Any) -> int:
            response = await live.http.request(method, path, params=params, headers=bearer(ACME))
            return response.status_code

        # Another tenant: refused, whether asked by ?tenant= or by a stream's name; a stream
        # of another tenant or of the deployment is "not found", exactly like one that does not
        # exist anywhere.
        assert await status("/api/streams", tenant="globex") == 403
        assert await status("/api/snapshot", tenant="globex") == 403
        assert await status("/api/dead-letters", tenant="globex") == 403
        assert await status("/api/events", tenant="globex", correlation_id=CORRELATION) == 403
        for name in (tenants.globex, globex_letters, tenants.deployment, "identity", "nothing"):
            assert await status(f"/api/stream/{name}") == 404, name
            assert await status(f"/api/pending/{name}/billing") == 404, name
        missing = await live.http.get(f"/api/stream/{tenants.globex}", headers=bearer(ACME))
        absent = await live.http.get(
            "/api/stream/" + tenants.keys.for_tenant("initech").stream("assets"),
            headers=bearer(ACME),
        )
        assert missing.json()["detail"].replace("globex", "x") == absent.json()["detail"].replace(
            "initech", "x"
        )
        # The deployment's dead letter by its id: not found, or (both added in the same
        # millisecond, so with the same id) acme's own.
        response = await live.http.get(
            f"/api/dead-letters/{tenants.deployment_letter}", headers=bearer(ACME)
        )
        if tenants.deployment_letter == tenants.acme_letter:
            assert response.json()["source_stream"] == tenants.acme
        else:
            assert response.status_code == 404
        # The deployment's endpoints and every write action: refused.
        for path in ("/api/outbox", "/api/projections", "/api/metrics", "/api/audit"):
            assert await status(path) == 403, path
        assert await status(f"/api/dead-letters/{tenants.acme_letter}/replay", "POST") == 403
        assert await status("/api/dead-letters/replay", "POST") == 403
        assert await status("/api/dead-letters/purge", "POST") == 403
        assert (await get(live, "/api/dead-letters", ADMIN, tenant="acme"))["total"] == 1


async def recv(socket: Any) -> str:
    """The next message, within a deadline (a snapshot is pushed every 0.2 s here)."""
    message = await asyncio.wait_for(socket.recv(), 10)
    assert isinstance(message, str)
    return message


async def test_ws_with_tenant_tokens(monitor_server: MonitorFactory, tenants: Tenants) -> None:
    async with monitor_server(tenant_streams="assets", **TOKENS) as live:
        url = f"ws://127.0.0.1:{live.port}/ws"
        for refused in (
            websockets.connect(url),
            websockets.connect(url, additional_headers=bearer("not-a-token-at-all")),
            websockets.connect(url + "?tenant=globex", additional_headers=bearer(ACME)),
            websockets.connect(url + "?tenant=Bad", additional_headers=bearer(ADMIN)),
        ):
            with pytest.raises((InvalidStatus, ConnectionClosed)):
                async with refused as socket:
                    await recv(socket)

        async with websockets.connect(url, additional_headers=bearer(ACME)) as socket:
            for _ in range(3):  # the first snapshot, then pushed ones
                message = await recv(socket)
                assert "globex" not in message
                assert tenants.deployment not in message
                snapshot = json.loads(message)["snapshot"]
                assert stream_keys(snapshot["streams"]) >= {tenants.acme}
        # A browser cannot set headers on a WebSocket: the token as a subprotocol.
        async with websockets.connect(url, subprotocols=["bearer", GLOBEX]) as socket:  # type: ignore[list-item]
            assert socket.subprotocol == "bearer"
            snapshot = json.loads(await recv(socket))["snapshot"]
            assert [t["tenant"] for t in snapshot["tenants"]] == ["globex"]
            assert tenants.acme not in json.dumps(snapshot)
        async with websockets.connect(
            url + "?tenant=globex", additional_headers=bearer(ADMIN)
        ) as socket:
            snapshot = json.loads(await recv(socket))["snapshot"]
            assert stream_keys(snapshot["streams"]) >= {tenants.globex}
            assert tenants.acme not in json.dumps(snapshot)
        async with websockets.connect(url, additional_headers=bearer(ADMIN)) as socket:
            snapshot = json.loads(await recv(socket))["snapshot"]
            assert {tenants.acme, tenants.globex} <= stream_keys(snapshot["streams"])
