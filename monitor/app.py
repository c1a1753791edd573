"""The monitor's FastAPI application: REST, WebSocket, dashboard and Prometheus ``/metrics``.

Endpoints of the original OpsConductor document keep their meaning (``/health``,
``/api/streams``, ``/api/stream/{stream}``, ``/api/pending/{stream}/{group}``, ``/api/metrics``,
``/ws``); the rest add the outbox, relay and projection side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import asyncpg
from fastapi import (
    Depends,
    FastAPI,
    HTTPException,
    Query,
    Request,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from redis import exceptions as redis_errors

from outbox import audit
from outbox.envelope import MessagePriority, uuid7
from outbox.monitor import models, prometheus, queries, redis_stats, tenancy, trace
from outbox.monitor.collector import Collector
from outbox.monitor.dead_letters import present, select
from outbox.monitor.security import (
    NAME_PATTERN,
    mask_fields,
    origin_allowed,
    parse_names,
    token_matches,
)
from outbox.naming import in_schema
from outbox.settings import Settings, get_settings
from outbox.streams.codec import encode_fields
from outbox.streams.connection import RedisClient, client_from_url
from outbox.streams.dead_letter import DeadLetterFilter, DeadLetters
from outbox.streams.errors import RedisOutOfMemoryError, RedisUnavailableError
from outbox.streams.keys import DEAD_LETTER_SERVICE, Keys
from outbox.validation import TENANT_PATTERN

log = logging.getLogger("outbox.monitor")
#: How long stopping waits for the PostgreSQL pool's connections to be released.
POOL_CLOSE_TIMEOUT_S = 5.0
STATIC = Path(__file__).resolve().parent / "static"
NameParam = Annotated[str, PathParam(pattern=NAME_PATTERN.pattern, max_length=200)]
_U64 = 2**64 - 1


def entry_id(
    entry_id: Annotated[str, PathParam(pattern=r"^\d{1,20}-\d{1,20}$")],
) -> str:
    """A Redis stream entry id: two unsigned 64-bit integers (else 422, never a Redis error)."""
    ms, seq = (int(part) for part in entry_id.split("-"))
    if ms > _U64 or seq > _U64:
        raise HTTPException(422, f"{entry_id!r} is not a stream entry id")
    return entry_id


EntryId = Annotated[str, Depends(entry_id)]


class Monitor:
    """What the app holds while it runs: connections, the collector, WebSocket subscribers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys.for_settings(settings)
        self.masked = parse_names(settings.monitor_mask_fields)
        self.started = time.monotonic()
        self.pool: asyncpg.Pool | None = None
        self.redis: RedisClient | None = None
        self.collector: Collector | None = None
        self.access = tenancy.Access(settings)
        self.tenant_streamed = settings.tenant_streamed()
        #: Each /ws client's queue and the tenant it is restricted to (None: everything).
        self.subscribers: dict[asyncio.Queue[str], str | None] = {}
        self.task: asyncio.Task[None] | None = None
        self.hostname = socket.gethostname()

    @contextlib.asynccontextmanager
    async def audited(
        self, action: str, actor: audit.Actor, target: str, details: dict[str, Any]
    ) -> AsyncIterator[dict[str, int]]:
        """Around a write action on Redis: a PostgreSQL connection is taken first (503 when it
        cannot be, before anything changed); the action fills the counts it yields once it
        starts changing things, and they are recorded after it, also when it failed half-way
        (AuditError, a 500, when the row cannot be written)."""
        assert self.pool is not None
        counts: dict[str, int] = {}
        async with self.pool.acquire(timeout=3) as conn:
            try:
                yield counts
            except Exception as error:
                if counts:
                    details = {**details, "error": f"{error.__class__.__name__}: {error}"}
                    try:
                        await self._record(conn, action, actor, target, counts, details)
                    except audit.AuditError as not_recorded:
                        log.error(
                            "event=audit_not_written action=%s error=%s", action, not_recorded
                        )
                raise
            await self._record(conn, action, actor, target, counts, details)

    async def _record(
        self,
        conn: Any,
        action: str,
        actor: audit.Actor,
        target: str,
        counts: dict[str, int],
        details: dict[str, Any],
    ) -> None:
        await audit.record(
            conn,
            action,
            actor,
            target=target,
            counts=counts,
            details={**details, "monitor_host": self.hostname},
            schema=self.settings.outbox_schema,
        )

    async def start(self) -> None:
        settings = self.settings
        self.redis = client_from_url(
            settings.redis_url(),
            cluster=settings.cluster,
            password=settings.redis_password_text(),
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        self.pool = await asyncpg.create_pool(
            settings.libpq_url(),
            min_size=1,
            max_size=4,
            command_timeout=10,
            # Small, frequent queries: JIT compilation would cost more than it saves (500 ms
            # on a backlog count, measured).
            server_settings={"jit": "off", "application_name": "outbox-monitor"},
        )
        self.collector = Collector(settings, self.pool, self.redis)
        self.task = asyncio.create_task(self._tick(), name="monitor-collector")

    async def stop(self) -> None:
        if self.task:
            # Cancelled again until it ends: a driver call (redis-py, asyncpg) may swallow one
            # cancellation, and the loop would then sleep on as if nothing had happened.
            while not self.task.done():
                self.task.cancel()
                await asyncio.wait({self.task}, timeout=1.0)
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.pool:
            # close() waits for every connection to be released, without limit: one held by a
            # request or collection that is stuck must not keep the monitor from stopping.
            try:
                await asyncio.wait_for(self.pool.close(), POOL_CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("event=monitor_pool_close_timeout timeout_s=%s", POOL_CLOSE_TIMEOUT_S)
                self.pool.terminate()
        if self.redis:
            await self.redis.aclose()

    async def _tick(self) -> None:
        """Every REFRESH_INTERVAL: collect, push to /ws clients, append to the metrics stream."""
        assert self.collector is not None
        while True:
            try:
                snapshot = await self.collector.latest(max_age_s=0)
                # A snapshot holds names, counts and errors, never event data: masking it would
                # only hide the monitor's own fields (a MONITOR_MASK_FIELDS of "status").
                messages: dict[str | None, str] = {}
                for queue, tenant in list(self.subscribers.items()):
                    if tenant not in messages:
                        messages[tenant] = snapshot_message(snapshot, tenant)
                    if queue.full():
                        queue.get_nowait()  # a slow client gets the newest, not a backlog
                    queue.put_nowait(messages[tenant])
                await self._append_metrics(snapshot)
            except Exception as error:  # the loop must survive outages of PG or Redis
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # stop() cancelled us inside a driver call that turned the cancellation
                    # into its own error (a timeout): stop anyway, or stop() waits forever.
                    raise asyncio.CancelledError from error
                log.warning("event=monitor_collect_failed error=%r", error)
            await asyncio.sleep(self.settings.refresh_interval_s)

    async def _append_metrics(self, snapshot: dict[str, Any]) -> None:
        assert self.redis is not None
        summary = {
            "status": snapshot["status"]["overall"],
            "outbox": [
                {
                    k: row[k]
                    for k in (
                        "stream",
                        "unpublished",
                        "oldest_unpublished_age_s",
                        "publish_rate_per_s",
                    )
                }
                for row in snapshot["outbox"]["streams"]
            ],
            "groups": [
                {
                    "stream": s["key"],
                    "group": g["name"],
                    "lag": g["lag_entries"],
                    "pending": g["pending"],
                    "lag_seconds": g["lag_seconds"],
                }
                for s in snapshot["streams"]
                for g in s["groups"]
            ],
            "dead_letters": snapshot["dead_letters"]["count"],
            "redis_memory_bytes": snapshot["redis"].get("used_memory_bytes"),
        }
        fields = encode_fields(
            event_id=str(uuid7()),
            event_type="monitor_snapshot",
            service="metrics",
            source="monitor",
            data_json=json.dumps(summary, separators=(",", ":"), default=str),
            priority=MessagePriority.LOW,
            occurred_at=datetime.now(UTC),
            correlation_id=str(uuid7()),
            position=None,
            max_retries=0,
        )
        min_id = int((time.time() - self.settings.metrics_stream_retention_s) * 1000)
        entry: dict[Any, Any] = dict(fields)
        await self.redis.xadd(self.keys.metrics, entry, minid=str(min_id), approximate=True)

    def masked_copy(self, value: Any) -> Any:
        return mask_fields(value, self.masked)

    def dead_letters(self, tenant: str | None = None) -> DeadLetters:
        """The deployment's dead letters, or ``tenant``'s own."""
        assert self.redis is not None
        keys = self.keys if tenant is None else self.keys.for_tenant(tenant)
        return DeadLetters(self.redis, keys, self.settings.dead_letter_ttl_s)

    def stream_key(self, name: str, tenant: str | None = None) -> str:
        """A full key of ours from a full key or a service name; 404 for anything else. With
        ``tenant``, only that tenant's keys (a service name is the tenant's service), and the
        same 404 for every other key, so a tenant learns nothing of what exists elsewhere."""
        if tenant is not None:
            own = self.keys.for_tenant(tenant)
            candidate = own.stream(name) if ":" not in name else name
            parsed = self.keys.parse_tenant_stream(candidate)
            if parsed is None or parsed[0] != tenant:
                raise HTTPException(404, f"{name!r} is not a stream of tenant {tenant!r}")
            return candidate
        if (
            self.keys.parse_stream(name) is not None
            or name in (self.keys.dead_letter, self.keys.metrics)
            or self.keys.parse_tenant_stream(name) is not None
        ):
            return name
        candidate = self.keys.stream(name) if ":" not in name else name
        if self.keys.parse_stream(candidate) is None:
            raise HTTPException(404, f"{name!r} is not a stream of prefix {self.keys.prefix!r}")
        return candidate

    def stream_keys(self, name: str, tenant: str | None = None) -> tuple[str | None, list[str]]:
        """(service, its streams highest priority first) for a service name; (None, [key])
        for a full key (:meth:`stream_key`)."""
        key = self.stream_key(name, tenant)
        if key == name:
            return None, [key]
        keys = self.keys if tenant is None else self.keys.for_tenant(tenant)
        return name, keys.streams_of(name)

    def tenant_of(self, key: str) -> str | None:
        parsed = self.keys.parse_tenant_stream(key)
        return parsed[0] if parsed else None


def get_monitor(request: Request) -> Monitor:
    monitor: Monitor = request.app.state.monitor
    return monitor


def snapshot_message(snapshot: dict[str, Any], tenant: str | None) -> str:
    """A /ws message: the snapshot as ``tenant`` may see it (tenancy.scope_snapshot)."""
    scoped = tenancy.scope_snapshot(snapshot, tenant)
    return json.dumps({"type": "snapshot", "snapshot": scoped}, default=str)


def tenant_scope(request: Request) -> str | None:
    """The tenant a read is restricted to: ``?tenant=`` (422 when it is not a tenant id), or
    a tenant token's own tenant (403 when it asks for another). None: everything.

    Read from the query string here rather than declared as a parameter: FastAPI would then
    document a 422 on every read, which the OpenAPI contract of these routes does not list
    (the parameter itself is documented through :data:`TENANT_QUERY`)."""
    given = request.query_params.getlist("tenant")
    if len(given) > 1:
        raise HTTPException(422, "give ?tenant= once")
    try:
        asked = tenancy.asked_tenant(given[0] if given else None)
    except tenancy.BadTenant as error:
        raise HTTPException(422, str(error)) from None
    viewer: tenancy.Viewer = getattr(request.state, "viewer", tenancy.EVERYONE)
    try:
        return tenancy.tenant_in_scope(viewer, asked)
    except tenancy.TenantRefused:
        raise HTTPException(403, "this token sees its own tenant only") from None


Tenant = Annotated[str | None, Depends(tenant_scope)]

#: The ``tenant`` query parameter in OpenAPI (see :func:`tenant_scope`).
TENANT_QUERY: dict[str, Any] = {
    "parameters": [
        {
            "name": "tenant",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "pattern": TENANT_PATTERN.pattern},
            "description": "only this tenant's streams, consumers, dead letters and events "
            "(a tenant's token is always restricted to its own; 422 for a bad tenant id)",
        }
    ]
}


def get_collector(request: Request) -> Collector:
    collector = get_monitor(request).collector
    if collector is None:
        raise HTTPException(503, "the monitor is starting")
    return collector


#: The write actions' ``Authorization: Bearer <MONITOR_ADMIN_TOKEN>``, as OpenAPI shows it.
admin_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="AdminToken",
    description="MONITOR_ADMIN_TOKEN; without one configured, write actions are refused (403).",
)


def require_admin(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(admin_bearer)],
) -> audit.Actor:
    """Write actions: refused without a configured token, 401 without the right one.

    ``admin_bearer`` only declares the scheme (it never refuses a request itself); the header is
    checked as sent, in constant time, by ``token_matches``. Returns who acts, for the audit
    log: the token's name (MONITOR_ADMIN_TOKEN_NAME, never the token) from the client's address.
    """
    settings = get_monitor(request).settings
    token = settings.monitor_admin_token
    if token is None or not token.get_secret_value():
        raise HTTPException(403, "write actions are disabled: set MONITOR_ADMIN_TOKEN")
    if not token_matches(request.headers.get("authorization"), token.get_secret_value()):
        raise HTTPException(
            401, "a valid admin token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    client = request.client.host if request.client else None
    return audit.Actor(settings.monitor_admin_token_name, "monitor", client)


Admin = Annotated[audit.Actor, Depends(require_admin)]


def dead_letter_filter(
    stream: Annotated[str | None, Query(max_length=200)] = None,
    group: Annotated[str | None, Query(max_length=200)] = None,
    event_type: Annotated[str | None, Query(max_length=200)] = None,
    older_than_s: Annotated[float | None, Query(ge=0)] = None,
    newer_than_s: Annotated[float | None, Query(ge=0)] = None,
) -> DeadLetterFilter:
    return DeadLetterFilter(stream, group, event_type, older_than_s, newer_than_s)


Filter = Annotated[DeadLetterFilter, Depends(dead_letter_filter)]


CollectorDep = Annotated[Collector, Depends(get_collector)]

# What each route can answer besides success and FastAPI's 422 (a parameter out of range), for
# OpenAPI. The exception handlers in create_app() answer 503 when PostgreSQL or Redis cannot be
# reached and 507 when Redis is out of memory; get_collector answers 503 until the monitor runs.
_COLLECTED = {503: "PostgreSQL or Redis is not reachable, or the monitor is starting"}
_REDIS = {503: "Redis is not reachable"}
_NOT_A_STREAM = {409: "the key holds another type than a stream (WRONGTYPE)"}
_ADMIN = {
    401: "no valid admin token: send `Authorization: Bearer <MONITOR_ADMIN_TOKEN>`",
    403: "write actions are disabled: no MONITOR_ADMIN_TOKEN is configured",
}
_WRITE = {
    503: "Redis or PostgreSQL (the audit log) is not reachable: nothing was changed",
    500: "the action was done (or done in part) but the audit log could not be written",
}
_CHANGED = {409: "`expected` was given and another number of dead letters matches now"}
_OUT_OF_MEMORY = {507: "Redis is out of memory (noeviction): the replay was refused"}


def _errors(described: dict[int, str], *, entry_id: bool = False) -> dict[int | str, Any]:
    """``responses=`` of a route: each error with its ErrorMessage body. An ``entry_id`` path
    parameter has two kinds of 422: FastAPI's list of errors (not ``<ms>-<seq>``) and
    :func:`entry_id`'s message (a part beyond 64 bits)."""
    responses = models.error_responses(described)
    if 401 in responses:
        responses[401]["headers"] = {
            "WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}
        }
    if entry_id:
        refs = ("#/components/schemas/HTTPValidationError", "#/components/schemas/ErrorMessage")
        responses[422] = {
            "description": "Validation Error: not a stream entry id `<ms>-<seq>`",
            "content": {"application/json": {"schema": {"anyOf": [{"$ref": r} for r in refs]}}},
        }
    return responses


def create_app(settings: Settings | None = None) -> FastAPI:
    monitor = Monitor(settings or get_settings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await monitor.start()
        try:
            yield
        finally:
            await monitor.stop()

    app = FastAPI(
        title="OpsConductor outbox monitor",
        version="0.1.0",
        lifespan=lifespan,
        description="Outbox lag, relays, Redis streams, consumer groups and dead letters.",
    )
    app.state.monitor = monitor
    app.add_middleware(tenancy.TokenGate, access=monitor.access)

    @app.exception_handler(redis_errors.ConnectionError)
    @app.exception_handler(redis_errors.TimeoutError)
    async def redis_unavailable(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": "Redis is not reachable"}, status_code=503)

    @app.exception_handler(RedisUnavailableError)
    async def streams_unavailable(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": "Redis is not reachable"}, status_code=503)

    @app.exception_handler(RedisOutOfMemoryError)
    async def redis_oom(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=507)

    @app.exception_handler(audit.AuditError)
    async def audit_not_written(request: Request, error: Exception) -> JSONResponse:
        log.error("event=audit_not_written error=%s", error)
        return JSONResponse({"detail": str(error)}, status_code=500)

    @app.exception_handler(OSError)
    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.InterfaceError)
    async def postgres_unavailable(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": "PostgreSQL is not reachable"}, status_code=503)

    @app.get("/health", tags=["health"], response_model=models.Health)
    async def health() -> dict[str, Any]:
        """The monitor process itself is up."""
        return {"status": "ok", "uptime_s": round(time.monotonic() - monitor.started, 3)}

    @app.get(
        "/ready",
        tags=["health"],
        response_model=models.Readiness,
        responses={
            503: {"model": models.Readiness, "description": "PostgreSQL or Redis is not reachable"}
        },
    )
    async def ready() -> JSONResponse:
        """PostgreSQL and Redis are reachable."""
        checks: dict[str, str] = {}
        try:
            assert monitor.pool is not None
            async with monitor.pool.acquire(timeout=3) as conn:
                await conn.fetchval("SELECT 1")
            checks["postgres"] = "ok"
        except Exception as error:
            checks["postgres"] = f"unreachable: {type(error).__name__}"
        try:
            assert monitor.redis is not None
            await monitor.redis.ping()
            checks["redis"] = "ok"
        except Exception as error:
            checks["redis"] = f"unreachable: {type(error).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ok, **checks}, status_code=200 if ok else 503)

    @app.get(
        "/api/snapshot",
        tags=["overview"],
        response_model=models.Snapshot,
        responses=_errors(_COLLECTED),
        openapi_extra=TENANT_QUERY,
    )
    async def snapshot(c: CollectorDep, tenant: Tenant) -> Any:
        """Everything at once: outbox, relays, streams, groups, projections, statuses. For a
        tenant: its streams, consumers, dead letters, backlog and statuses only."""
        return tenancy.scope_snapshot(await c.latest(), tenant)

    @app.get(
        "/api/status",
        tags=["overview"],
        response_model=models.Statuses,
        responses=_errors(_COLLECTED),
        openapi_extra=TENANT_QUERY,
    )
    async def status(c: CollectorDep, tenant: Tenant) -> Any:
        """OK / WARN / ERR per component, with the reason."""
        return tenancy.scope_snapshot(await c.latest(), tenant)["status"]

    @app.get(
        "/api/outbox",
        tags=["outbox"],
        response_model=models.OutboxAndRelays,
        responses=_errors(_COLLECTED),
    )
    async def outbox_view(c: CollectorDep) -> Any:
        """Backlog per stream, oldest age, relay cursors, the transaction holding them back."""
        snap = await c.latest()
        return {"outbox": snap["outbox"], "relays": snap["relays"]}

    @app.get(
        "/api/projections",
        tags=["projections"],
        response_model=models.ProjectionList,
        responses=_errors(_COLLECTED),
    )
    async def projections_view(c: CollectorDep) -> Any:
        """Per projection: consumers with heartbeat age, processed, failures, dead letters, rate."""
        return (await c.latest())["projections"]

    @app.get(
        "/api/consumers",
        tags=["projections"],
        response_model=models.ClientConsumerList,
        responses=_errors(_COLLECTED),
        openapi_extra=TENANT_QUERY,
    )
    async def consumers_view(c: CollectorDep, tenant: Tenant) -> Any:
        """Consumers of the document's client (``consume_messages``): heartbeat age, counters."""
        return tenancy.scope_snapshot(await c.latest(), tenant)["consumers"]

    @app.get(
        "/api/streams",
        tags=["streams"],
        response_model=models.StreamList,
        responses=_errors(_COLLECTED),
        openapi_extra=TENANT_QUERY,
    )
    async def streams(c: CollectorDep, tenant: Tenant) -> Any:
        """All streams, tenants' included (``tenant``): length, last id, consumer groups with
        lag, pending and consumers."""
        return tenancy.scope_snapshot(await c.latest(), tenant)["streams"]

    @app.get(
        "/api/stream/{stream}",
        tags=["streams"],
        response_model=models.StreamOrService,
        responses=_errors(
            {
                404: "not a stream of this prefix, or the stream does not exist",
                **_NOT_A_STREAM,
                503: "Redis is not reachable, or the monitor is starting",
            }
        ),
        openapi_extra=TENANT_QUERY,
    )
    async def stream(stream: NameParam, c: CollectorDep, tenant: Tenant) -> Any:
        """One stream (a full key), or every priority stream of a service (a service name:
        CRITICAL, HIGH and NORMAL, with the service's totals per group); with ``tenant``, a
        service name is the tenant's service and any other tenant's key is not found."""
        service, keys = monitor.stream_keys(stream, tenant)
        assert monitor.redis is not None
        _, stats, _ = await redis_stats.collect(monitor.redis, keys)
        for one in stats:
            if one.error:
                raise HTTPException(409, f"{one.key} is not a stream: {one.error}")
        found = [one for one in stats if one.exists]
        if not found:
            raise HTTPException(404, f"stream {' / '.join(keys)} does not exist")
        if service is None:
            return {**found[0].as_dict(), "tenant": monitor.tenant_of(found[0].key)}
        return {
            **redis_stats.service_totals(service, found),
            "tenant": tenant,
            "streams": [{**one.as_dict(), "tenant": tenant} for one in found],
        }

    @app.get(
        "/api/pending/{stream}/{group}",
        tags=["streams"],
        response_model=models.Pending,
        responses=_errors(
            {
                404: "not a stream of this prefix, or no such stream or group",
                **_NOT_A_STREAM,
                **_REDIS,
            }
        ),
        openapi_extra=TENANT_QUERY,
    )
    async def pending(
        stream: NameParam,
        group: NameParam,
        tenant: Tenant,
        count: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Any:
        """A group's pending entries: summary, and the ``count`` longest idle with consumer and
        idle time. A service name covers all its priority streams (``keys``; each entry names
        its ``stream``); ``min_id`` / ``max_id`` are then those of the highest priority stream
        with pending entries."""
        service, keys = monitor.stream_keys(stream, tenant)
        assert monitor.redis is not None
        total = 0
        min_id = max_id = None
        consumers: dict[str, int] = {}
        entries: list[dict[str, Any]] = []
        grouped = []
        for key in keys:
            try:
                summary = await monitor.redis.xpending(key, group)
                rows = await monitor.redis.xpending_range(key, group, "-", "+", count)
            except redis_errors.ResponseError as error:
                text = str(error)
                if "NOGROUP" in text or "no such key" in text.lower():
                    continue
                if "WRONGTYPE" in text:
                    raise HTTPException(409, f"{key} is not a stream") from None
                raise
            grouped.append(key)
            total += summary["pending"]
            if summary["pending"] and min_id is None:
                min_id, max_id = summary["min"], summary["max"]
            for consumer in summary["consumers"]:
                consumers[consumer["name"]] = consumers.get(consumer["name"], 0) + int(
                    consumer["pending"]
                )
            entries += [
                {
                    "id": e["message_id"],
                    "stream": key,
                    "consumer": e["consumer"],
                    "idle_ms": e["time_since_delivered"],
                    "deliveries": e["times_delivered"],
                }
                for e in rows
            ]
        if not grouped:
            raise HTTPException(404, f"no group {group!r} on stream {' / '.join(keys)}")
        if len(keys) > 1:
            entries.sort(key=lambda e: -e["idle_ms"])
        return {
            "stream": service or keys[0],
            "keys": grouped,
            "group": group,
            "pending": total,
            "min_id": min_id,
            "max_id": max_id,
            "consumers": [{"name": n, "pending": p} for n, p in consumers.items()],
            "entries": entries[:count],
        }

    @app.get(
        "/api/metrics",
        tags=["redis"],
        response_model=models.RedisServer,
        responses=_errors(_COLLECTED),
    )
    async def redis_metrics(c: CollectorDep) -> Any:
        """Redis memory, clients, ops/s, hit ratio, uptime."""
        return (await c.latest())["redis"]

    @app.get(
        "/api/events",
        tags=["events"],
        response_model=models.EventTrace,
        responses=_errors({503: "PostgreSQL or Redis is not reachable"}),
        openapi_extra=TENANT_QUERY,
    )
    async def events(
        correlation_id: Annotated[str, Query(min_length=1, max_length=256)],
        tenant: Tenant,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> Any:
        """Every event of a correlation and where each one is now: those of the outbox in
        commit order, then those published directly to Redis (``position`` null: the document's
        ``publish_event`` or the original library), found among the newest 10,000 entries of
        each stream: the deployment's, or with ``tenant`` only the tenant's (and only its
        events of the outbox)."""
        assert monitor.pool is not None
        assert monitor.redis is not None
        assert monitor.collector is not None
        schema = monitor.settings.outbox_schema
        snap = tenancy.scope_snapshot(await monitor.collector.latest(), tenant)
        # Without a tenant, the deployment's streams only, as before tenants: searching every
        # tenant's streams too would cost up to SCAN_ENTRIES per stream of every tenant.
        keys = [
            s["key"]
            for s in snap["streams"]
            if s["exists"]
            and not s["error"]
            and s.get("tenant") == tenant
            and _event_stream(monitor.keys, s["key"])
        ]
        async with monitor.pool.acquire() as conn:
            rows = await conn.fetch(
                in_schema(queries.EVENTS_BY_CORRELATION, schema),
                correlation_id,
                limit,
                monitor.collector.relay_alive_s,
                tenant,
            )
            direct = await trace.direct_events(
                monitor.redis, keys, correlation_id, limit - len(rows)
            )
            direct_applied = await trace.applied_by(conn, [m.event_id for m in direct], schema)
        # The deployment's dead letters and those of the tenants of the events found, or only
        # the one tenant's.
        letter_tenants = (
            [tenant] if tenant else [None, *sorted({r["tenant_id"] for r in rows} - {None})]
        )
        dead = (
            {
                letter.event_id: letter
                for letter_tenant in letter_tenants
                async for letter in monitor.dead_letters(letter_tenant).iterate()
                if letter.event_id
            }
            if rows or direct
            else {}
        )
        result = []
        for row in rows:
            event_id = str(row["event_id"])
            entry = await _find_entry(monitor, row) if row["published"] else None
            letter = dead.get(event_id)
            if letter is not None:
                where = "dead_lettered"
            elif row["applied_by"]:
                where = "applied"
            elif row["published"]:
                where = "published"
            else:
                where = "in_outbox"
            result.append(
                {
                    "event_id": event_id,
                    "position": row["position"],
                    "service": row["stream"],
                    "event_type": row["event_type"],
                    "priority": row["priority"],
                    "aggregate_id": row["aggregate_id"],
                    "causation_id": row["causation_id"],
                    "user_id": row["user_id"],
                    "occurred_at": row["occurred_at"].isoformat(),
                    "data": monitor.masked_copy(json.loads(row["payload"])),
                    "where": where,
                    "published": row["published"],
                    "republishing": row["republishing"],
                    "entry": entry,
                    "applied_by": list(row["applied_by"]),
                    "dead_letter": (
                        {"id": letter.id, "group": letter.group, "error": letter.error}
                        if letter
                        else None
                    ),
                }
            )
        for message in direct:
            letter = dead.get(message.event_id)
            applied = direct_applied.get(message.event_id, [])
            result.append(
                {
                    "event_id": message.event_id,
                    "position": None,
                    "service": message.service,
                    "event_type": message.event_type,
                    "priority": int(message.priority),
                    "aggregate_id": message.aggregate_id,
                    "causation_id": message.causation_id,
                    "user_id": message.user_id,
                    "occurred_at": datetime.fromtimestamp(message.timestamp, UTC).isoformat(),
                    "data": monitor.masked_copy(message.data),
                    "where": "dead_lettered" if letter else "applied" if applied else "published",
                    "published": True,
                    "republishing": False,
                    "entry": {"stream": message.stream, "id": message.id},
                    "applied_by": applied,
                    "dead_letter": (
                        {"id": letter.id, "group": letter.group, "error": letter.error}
                        if letter
                        else None
                    ),
                }
            )
        return {"correlation_id": correlation_id, "events": result}

    @app.get(
        "/api/dead-letters",
        tags=["dead letters"],
        response_model=models.DeadLetterList,
        responses=_errors(_REDIS),
        openapi_extra=TENANT_QUERY,
    )
    async def dead_letters_list(
        where: Filter, tenant: Tenant, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> Any:
        """Dead letters matching the filters, newest first: the deployment's, or with
        ``tenant`` the tenant's own (``<prefix>:tenant:<tenant>:dead_letter:events``)."""
        letters, total = await select(monitor.dead_letters(tenant), where, limit)
        return {"total": total, "dead_letters": [present(x, monitor.masked) for x in letters]}

    @app.get(
        "/api/dead-letters/{entry_id}",
        tags=["dead letters"],
        response_model=models.DeadLetter,
        responses=_errors({404: "no dead letter with this id", **_REDIS}, entry_id=True),
        openapi_extra=TENANT_QUERY,
    )
    async def dead_letter_show(entry_id: EntryId, tenant: Tenant) -> Any:
        """One dead letter (of ``tenant``'s dead letters, when given)."""
        letter = await monitor.dead_letters(tenant).get(entry_id)
        if letter is None:
            raise HTTPException(404, f"no dead letter {entry_id}")
        return present(letter, monitor.masked)

    @app.post(
        "/api/dead-letters/{entry_id}/replay",
        tags=["dead letters"],
        response_model=models.Replayed,
        responses=_errors(
            {**_ADMIN, 404: "no dead letter with this id", **_WRITE, **_OUT_OF_MEMORY},
            entry_id=True,
        ),
        openapi_extra=TENANT_QUERY,
    )
    async def dead_letter_replay_one(entry_id: EntryId, actor: Admin, tenant: Tenant) -> Any:
        """Re-add one dead letter to its source stream (idempotent: projections keep an inbox).
        Recorded in the audit log."""
        dead = monitor.dead_letters(tenant)
        new_ids: list[str] = []
        async with monitor.audited("dlq.replay", actor, "ids", {"ids": [entry_id]}) as counts:
            letter = await dead.get(entry_id)
            if letter is None:
                raise HTTPException(404, f"no dead letter {entry_id}")
            counts.update(selected=1, replayed=0)
            await dead.replay([letter], into=new_ids)
            counts["replayed"] = len(new_ids)
        log.info("event=dead_letter_replayed id=%s stream=%s", entry_id, letter.source_stream)
        return {"replayed": len(new_ids), "new_entry_ids": new_ids}

    @app.post(
        "/api/dead-letters/replay",
        tags=["dead letters"],
        response_model=models.ReplayedCount,
        responses=_errors({**_ADMIN, **_CHANGED, **_WRITE, **_OUT_OF_MEMORY}),
        openapi_extra=TENANT_QUERY,
    )
    async def dead_letter_replay(
        where: Filter,
        actor: Admin,
        tenant: Tenant,
        expected: Annotated[int | None, Query(ge=0)] = None,
    ) -> Any:
        """Replay every dead letter matching the filters. Pass ``expected`` (the count shown to
        the operator) to refuse when the set changed in between. Recorded in the audit log."""
        dead = monitor.dead_letters(tenant)
        new_ids: list[str] = []
        target, details = _selection(where, tenant)
        async with monitor.audited("dlq.replay", actor, target, details) as counts:
            letters = await dead.select(where)
            if expected is not None and expected != len(letters):
                raise HTTPException(409, f"{len(letters)} dead letters match now, not {expected}")
            counts.update(selected=len(letters), replayed=0)
            await dead.replay(letters, into=new_ids)
            counts["replayed"] = len(new_ids)
        log.info("event=dead_letters_replayed count=%d", len(new_ids))
        return {"replayed": len(new_ids)}

    @app.post(
        "/api/dead-letters/purge",
        tags=["dead letters"],
        response_model=models.Purged,
        responses=_errors({**_ADMIN, **_CHANGED, **_WRITE}),
        openapi_extra=TENANT_QUERY,
    )
    async def dead_letter_purge(
        where: Filter,
        actor: Admin,
        tenant: Tenant,
        expected: Annotated[int | None, Query(ge=0)] = None,
    ) -> Any:
        """Delete every dead letter matching the filters. Recorded in the audit log."""
        dead = monitor.dead_letters(tenant)
        target, details = _selection(where, tenant)
        async with monitor.audited("dlq.purge", actor, target, details) as counts:
            letters = await dead.select(where)
            if expected is not None and expected != len(letters):
                raise HTTPException(409, f"{len(letters)} dead letters match now, not {expected}")
            counts.update(selected=len(letters), purged=0)
            deleted = await dead.delete([x.id for x in letters])
            counts["purged"] = deleted
        log.info("event=dead_letters_purged count=%d", deleted)
        return {"purged": deleted}

    @app.get(
        "/api/audit",
        tags=["audit"],
        response_model=models.AuditLog,
        responses=_errors({503: "PostgreSQL is not reachable"}),
    )
    async def audit_log(
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        action: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.-]{1,100}$")] = None,
        since_s: Annotated[float | None, Query(ge=0)] = None,
    ) -> Any:
        """The audit log, newest first: who replayed, purged, rebuilt, pruned or repartitioned
        what, through the CLI or this monitor. ``action`` is an action or a dotted prefix."""
        assert monitor.pool is not None
        async with monitor.pool.acquire(timeout=3) as conn:
            entries = await audit.recent(
                conn,
                limit=limit,
                action=action,
                since_s=since_s,
                schema=monitor.settings.outbox_schema,
            )
        return {"entries": [entry.as_dict() for entry in entries]}

    @app.get(
        "/metrics",
        tags=["prometheus"],
        response_class=Response,
        responses={
            200: {"content": {prometheus.CONTENT_TYPE: {"schema": {"type": "string"}}}},
            **_errors(_COLLECTED),
        },
    )
    async def metrics(c: CollectorDep) -> Response:
        """Prometheus text format. With MONITOR_TENANT_TOKENS, the admin token is needed (it
        holds every tenant's figures)."""
        return Response(prometheus.render(await c.latest()), media_type=prometheus.CONTENT_TYPE)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        """A snapshot at once, then one every REFRESH_INTERVAL; ``?tenant=`` restricts it to a
        tenant. With MONITOR_TENANT_TOKENS a token is needed: ``Authorization: Bearer``, or
        from a browser (which cannot set headers on a WebSocket) the subprotocols
        ``bearer, <token>``; a tenant's token gets its tenant's snapshot only."""
        extra = monitor.settings.monitor_allowed_origins.split(",")
        if not origin_allowed(
            websocket.headers.get("origin"), websocket.headers.get("host"), extra
        ):
            await websocket.close(code=1008, reason="origin not allowed")
            return
        header = websocket.headers.get("authorization")
        offered = websocket.scope.get("subprotocols") or []
        subprotocol = None
        if len(offered) == 2 and offered[0] == "bearer":
            header, subprotocol = f"Bearer {offered[1]}", "bearer"
        viewer = monitor.access.identify(header)
        if viewer is None:
            await websocket.close(code=1008, reason="a valid token is required")
            return
        try:
            tenant = tenancy.tenant_in_scope(
                viewer, tenancy.asked_tenant(websocket.query_params.get("tenant"))
            )
        except (tenancy.BadTenant, tenancy.TenantRefused):
            await websocket.close(code=1008, reason="not a tenant this token may see")
            return
        await websocket.accept(subprotocol=subprotocol)
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        monitor.subscribers[queue] = tenant
        try:
            assert monitor.collector is not None
            first = await monitor.collector.latest()
            await websocket.send_text(snapshot_message(first, tenant))
            receiver = asyncio.create_task(websocket.receive_text())
            while True:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait(
                    {getter, receiver}, return_when=asyncio.FIRST_COMPLETED
                )
                if receiver in done:
                    getter.cancel()
                    receiver.result()  # raises WebSocketDisconnect when the client left
                    receiver = asyncio.create_task(websocket.receive_text())
                    continue
                await websocket.send_text(getter.result())
        except WebSocketDisconnect:
            pass
        finally:
            monitor.subscribers.pop(queue, None)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _selection(where: DeadLetterFilter, tenant: str | None) -> tuple[str, dict[str, Any]]:
    """The audit target and details of a filtered replay or purge."""
    chosen = {
        "tenant": tenant,
        "stream": where.stream,
        "group": where.group,
        "event_type": where.event_type,
        "older_than": where.older_than_s,
        "newer_than": where.newer_than_s,
    }
    used = {name: value for name, value in chosen.items() if value is not None}
    return ("filter" if used else "all"), {"filter": used}


def _event_stream(keys: Keys, key: str) -> bool:
    """An event stream of the deployment or of a tenant (not dead letters, not metrics)."""
    if keys.parse_stream(key) is not None:
        return True
    parsed = keys.parse_tenant_stream(key)
    return parsed is not None and parsed[1] != DEAD_LETTER_SERVICE


async def _find_entry(monitor: Monitor, row: Any) -> dict[str, Any] | None:
    """The stream entry of a published event: a bounded scan from its commit time onwards
    (in its tenant's stream when the relay sends the service's tenant events there)."""
    assert monitor.redis is not None
    keys = monitor.keys
    if row["tenant_id"] is not None and monitor.tenant_streamed(row["stream"]):
        keys = keys.for_tenant(row["tenant_id"])
    key = keys.stream(row["stream"], MessagePriority(row["priority"]))
    start_ms = int(row["occurred_at"].timestamp() * 1000) - 5000
    event_id = str(row["event_id"])
    entries: Any = await monitor.redis.xrange(key, min=str(max(0, start_ms)), count=2000)
    for entry_id, fields in entries:
        if fields and fields.get("event_id") == event_id:
            return {"stream": key, "id": entry_id}
    return None
