"""The monitor's OpenAPI document: a named body for every /api route, its errors, the bearer
scheme of the write actions, and a live monitor whose every answer matches its description."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis
from pydantic import BaseModel, SecretStr

import outbox
from outbox.monitor import models
from outbox.monitor.app import create_app
from outbox.projections.examples import user_directory
from outbox.settings import Settings
from outbox.streams.client import RedisStreamsClient
from outbox.streams.dead_letter import DeadLetters, dead_letter_fields
from outbox.streams.keys import Keys
from tests.fixtures_monitor import MonitorFactory
from tests.fixtures_projections import Runner
from tests.fixtures_relay import StartRelay, wait_until

REF = "#/components/schemas/"

#: Every operation under /api and the error codes it can answer (422: FastAPI's validation).
ERRORS = {
    ("get", "/api/snapshot"): {503},
    ("get", "/api/status"): {503},
    ("get", "/api/outbox"): {503},
    ("get", "/api/projections"): {503},
    ("get", "/api/consumers"): {503},
    ("get", "/api/streams"): {503},
    ("get", "/api/stream/{stream}"): {404, 409, 422, 503},
    ("get", "/api/pending/{stream}/{group}"): {404, 409, 422, 503},
    ("get", "/api/metrics"): {503},
    ("get", "/api/events"): {422, 503},
    ("get", "/api/dead-letters"): {422, 503},
    ("get", "/api/dead-letters/{entry_id}"): {404, 422, 503},
    ("get", "/api/audit"): {422, 503},
    # 500: done, but the audit log could not be written.
    ("post", "/api/dead-letters/{entry_id}/replay"): {401, 403, 404, 422, 500, 503, 507},
    ("post", "/api/dead-letters/replay"): {401, 403, 409, 422, 500, 503, 507},
    ("post", "/api/dead-letters/purge"): {401, 403, 409, 422, 500, 503},
}
ADMIN = {op for op in ERRORS if op[0] == "post"}


def operations(doc: dict[str, Any]) -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            yield (method, path), operation


def json_schema(response: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return schema


def refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


def test_every_api_route_documents_a_named_body_and_its_errors(settings: Settings) -> None:
    doc = create_app(settings).openapi()
    schemas = doc["components"]["schemas"]
    api = {op: operation for op, operation in operations(doc) if op[1].startswith("/api/")}
    assert set(api) == set(ERRORS)
    for op, operation in api.items():
        responses = operation["responses"]
        body = json_schema(responses["200"])
        assert set(body) == {"$ref"}, op
        component = schemas[body["$ref"].removeprefix(REF)]
        # A body, or a named choice of bodies (each a named component with properties).
        alternatives = [schemas[a["$ref"].removeprefix(REF)] for a in component.get("anyOf", [])]
        assert component.get("description"), op
        assert (
            component.get("properties")
            or component.get("items")
            or (alternatives and all(a.get("properties") for a in alternatives))
        ), op
        assert {int(code) for code in responses} - {200} == ERRORS[op], op
        for code, response in responses.items():
            if code not in ("200", "422"):
                assert json_schema(response) == {"$ref": REF + "ErrorMessage"}, (op, code)
    for path in ("/health", "/ready"):
        assert set(json_schema(doc["paths"][path]["get"]["responses"]["200"])) == {"$ref"}
    assert json_schema(doc["paths"]["/ready"]["get"]["responses"]["503"]) == {
        "$ref": REF + "Readiness"
    }
    # Every reference, the hand-written 422 of the entry-id routes too, names a component.
    assert set(refs(doc)) <= {REF + name for name in schemas}


def test_only_the_write_actions_carry_the_bearer_scheme(settings: Settings) -> None:
    doc = create_app(settings).openapi()
    (name,) = doc["components"]["securitySchemes"]
    assert doc["components"]["securitySchemes"][name]["type"] == "http"
    assert doc["components"]["securitySchemes"][name]["scheme"] == "bearer"
    secured = {op for op, operation in operations(doc) if operation.get("security")}
    assert secured == ADMIN
    for op in ADMIN:
        operation = doc["paths"][op[1]][op[0]]
        assert operation["security"] == [{name: []}]
        # The scheme is the documented way in, not a header parameter.
        assert all(p["in"] != "header" for p in operation.get("parameters", []))
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]


def check(doc: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """The answer is one the document lists for this operation, and its body matches."""
    documented = doc["paths"][path][method]["responses"]
    assert str(response.status_code) in documented, (method, path, response.text)
    if response.status_code == 422:
        return
    name = json_schema(documented[str(response.status_code)])["$ref"].removeprefix(REF)
    model: type[BaseModel] = getattr(models, name)
    model.model_validate_json(response.content)


async def emit(conn: asyncpg.Connection, count: int, service: str = "identity") -> None:
    async with conn.transaction():
        for i in range(count):
            await outbox.emit(
                conn, service=service, event_type="done", data={"n": i}, correlation_id="trace"
            )


async def trouble(conn: asyncpg.Connection, client: aioredis.Redis, keys: Keys) -> str:
    """A dead letter, a group behind with pending entries, one caught up, a key that is not a
    stream and a relay stopped on it; returns the dead letter's id."""
    stream = keys.stream("identity")
    ((first_id, first),) = await client.xrange(stream, count=1)
    letter = await DeadLetters(client, keys, 3600).add(
        dead_letter_fields(
            source_stream=stream,
            group="audit",
            entry_id=first_id.decode(),
            attempts=3,
            error="boom",
            payload=first,
            consumer="w-1",
        )
    )
    await client.xgroup_create(stream, "slow", "0")
    await client.xreadgroup("slow", "w-1", {stream: ">"}, count=2)
    await client.xgroup_create(stream, "idle", "$")
    await client.set(keys.stream("network"), "not a stream")
    await conn.execute(
        """
        INSERT INTO relay_instances
               (instance_id, host, pid, streams, cursors, stream_errors, last_error, last_error_at)
        VALUES ('stuck', 'host', 1, '{network}', '{"network": "1:1"}', '{"network": "WRONGTYPE"}',
                'WRONGTYPE', now())
        """
    )
    return letter


async def test_every_answer_of_a_live_monitor_matches_its_model(
    monitor_server: MonitorFactory,
    start_relay: StartRelay,
    running: Runner,
    projection_settings: Settings,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    database_url: str,
) -> None:
    """A relay, a projection, groups behind and caught up, a dead letter, a key that is not a
    stream, a relay stopped on it and a transaction holding the relay back: optional fields come
    both empty and filled. FastAPI validates each body against its model (a mismatch is a 500);
    here each is validated again as the client got it."""
    keys = Keys(projection_settings.stream_prefix)
    stream = keys.stream("identity")
    await emit(asyncpg_conn, 6)
    # A relay that never defers (decision 0020), so that the open transaction below holds it.
    async with (
        start_relay(relay_defer_after_ms=0),
        running([user_directory], projection_settings),
    ):

        async def settled() -> bool:
            done = await asyncpg_conn.fetchval(
                "SELECT coalesce(sum(processed + skipped), 0) FROM projection_consumers"
            )
            return int(done) == 6

        await wait_until(settled, what="the projection to take the six events")
        letter = await trouble(asyncpg_conn, redis_client, keys)
        # A consumer of the document's client (its heartbeat) and an event it published.
        async with RedisStreamsClient(prefix=keys.prefix) as client:
            await client.publish_message(
                "assets", "asset_updated", "assets", {"n": 1}, correlation_id="trace"
            )
            (message,) = await client.consume_messages(["assets"], "worker-1", block_time=0)
            await client.acknowledge_message("assets", "assets_processors", message.id)
        holder = await asyncpg.connect(database_url)
        held = holder.transaction()
        await held.start()
        try:
            await emit(holder, 1, service="held")  # open: the relay cannot pass it
            await emit(asyncpg_conn, 2)
            async with monitor_server(monitor_admin_token=SecretStr("t0ken")) as live:
                doc = (await live.http.get("/openapi.json")).json()
                gets = {
                    "/api/snapshot": ["/api/snapshot"],
                    "/api/status": ["/api/status"],
                    "/api/outbox": ["/api/outbox"],
                    "/api/projections": ["/api/projections"],
                    "/api/consumers": ["/api/consumers"],
                    "/api/streams": ["/api/streams"],
                    "/api/stream/{stream}": ["/api/stream/identity", f"/api/stream/{stream}"],
                    "/api/pending/{stream}/{group}": [
                        f"/api/pending/{stream}/slow",
                        f"/api/pending/{stream}/idle",
                        "/api/pending/identity/slow",
                    ],
                    "/api/metrics": ["/api/metrics"],
                    "/api/events": ["/api/events?correlation_id=trace"],
                    "/api/dead-letters": ["/api/dead-letters"],
                    "/api/dead-letters/{entry_id}": [f"/api/dead-letters/{letter}"],
                    "/api/audit": ["/api/audit", "/api/audit?action=dlq&since_s=60&limit=5"],
                }
                assert set(gets) == {path for method, path in ERRORS if method == "get"}

                async def sweep() -> None:
                    for template, urls in gets.items():
                        for url in urls:
                            response = await live.http.get(url)
                            assert response.status_code == 200, (url, response.text)
                            check(doc, "get", template, response)

                async def rates_known() -> bool:
                    snapshot = (await live.http.get("/api/snapshot")).json()
                    rows = snapshot["outbox"]["streams"] + snapshot["projections"]
                    rates = [
                        r.get("publish_rate_per_s", r.get("processing_rate_per_s")) for r in rows
                    ]
                    return None not in rates

                await sweep()  # the first snapshot has no rates yet (null)
                await wait_until(rates_known, what="rates from two snapshots")
                await sweep()

                # The state above really had the optional parts filled.
                snapshot = (await live.http.get("/api/snapshot")).json()
                (row,) = [r for r in snapshot["outbox"]["streams"] if r["stream"] == "identity"]
                assert row["unpublished"] == 2
                assert row["oldest_unpublished_age_s"] is not None
                assert snapshot["outbox"]["oldest_write_transaction"] is not None
                assert "stuck" in {r["instance"] for r in snapshot["relays"]}
                assert snapshot["projections"][0]["consumers"]
                assert any(s["error"] for s in snapshot["streams"])
                trace = (await live.http.get("/api/events?correlation_id=trace")).json()
                wheres = {e["where"] for e in trace["events"]}
                assert {"in_outbox", "applied", "dead_lettered"} <= wheres
                assert None in {e["position"] for e in trace["events"]}  # published directly
                assert snapshot["consumers"][0]["heartbeat_age_s"] is not None

                posts = {
                    "/api/dead-letters/{entry_id}/replay": f"/api/dead-letters/{letter}/replay",
                    "/api/dead-letters/replay": "/api/dead-letters/replay?expected=0",
                    "/api/dead-letters/purge": "/api/dead-letters/purge?expected=0",
                }
                for template, url in posts.items():
                    refused = await live.http.post(url, headers={"Authorization": "Bearer x"})
                    assert refused.status_code == 401
                    check(doc, "post", template, refused)
                    response = await live.http.post(url, headers={"Authorization": "Bearer t0ken"})
                    assert response.status_code == 200, (url, response.text)
                    check(doc, "post", template, response)
        finally:
            await held.rollback()
            await holder.close()


async def test_errors_of_a_live_monitor_are_documented(monitor_server: MonitorFactory) -> None:
    """Redis down and no admin token: every answer is a documented error with its body."""
    async with monitor_server(redis_streams_url=SecretStr("redis://127.0.0.1:1/0")) as live:
        doc = (await live.http.get("/openapi.json")).json()
        ready = await live.http.get("/ready")
        assert ready.status_code == 503
        check(doc, "get", "/ready", ready)
        urls = {
            "/api/snapshot": "/api/snapshot",
            "/api/status": "/api/status",
            "/api/outbox": "/api/outbox",
            "/api/projections": "/api/projections",
            "/api/consumers": "/api/consumers",
            "/api/streams": "/api/streams",
            "/api/stream/{stream}": "/api/stream/identity",
            "/api/pending/{stream}/{group}": "/api/pending/identity/g",
            "/api/metrics": "/api/metrics",
            "/api/dead-letters": "/api/dead-letters",
            "/api/dead-letters/{entry_id}": "/api/dead-letters/1-0",
        }
        for template, url in urls.items():
            response = await live.http.get(url)
            assert response.status_code == 503, (url, response.text)
            check(doc, "get", template, response)
        too_big = await live.http.get(f"/api/dead-letters/{2**64}-0")
        assert too_big.status_code == 422
        models.ErrorMessage.model_validate_json(too_big.content)  # the second kind of 422
        for path in ("/api/dead-letters/1-0/replay", "/api/dead-letters/purge"):
            refused = await live.http.post(path, headers={"Authorization": "Bearer x"})
            assert refused.status_code == 403
            check(doc, "post", path.replace("1-0", "{entry_id}"), refused)


async def test_mask_names_that_are_also_the_monitors_own_fields_change_nothing(
    monitor_server: MonitorFactory,
) -> None:
    """MONITOR_MASK_FIELDS masks event data only: a service whose payloads carry a secret
    "status" or "count" still gets a whole snapshot (with strict models, masking the
    snapshot's own "status" would turn it into an error)."""
    async with monitor_server(monitor_mask_fields="status,count,pid,name") as live:
        response = await live.http.get("/api/snapshot")
        assert response.status_code == 200, response.text
        snapshot = models.Snapshot.model_validate_json(response.content)
        assert snapshot.dead_letters.count >= 0
        assert all(c.level in ("OK", "WARN", "ERR") for c in snapshot.status.components)
