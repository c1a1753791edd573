"""Publisher: routes outbox rows to their streams and publishes them idempotently.

Each row comes with its entry's fields already encoded by PostgreSQL (``fields``, a JSON array;
see relay.queries.ENTRY_FIELDS), so the relay only routes and forwards them.

A service's events go to up to three streams (``…:events``, ``…:events:high``,
``…:events:critical``); each stream gets its events in cursor order, and the batches of every
service go to Redis in one round trip. A service succeeds only when all of its streams took
their batch: otherwise its cursor stays put and the whole batch is sent again later, and the
streams that did take it skip it by their watermark (never a later event before an earlier one).

With TENANT_STREAMS, a tenant's events of such a service go to the tenant's streams instead
(``<prefix>:tenant:<tenant>:<service>:events``, docs/tenancy.md): more streams of the same
service, each with its own watermark, exactly like its priority streams.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from outbox.envelope import MessagePriority
from outbox.partitioning import Partition
from outbox.relay.cursor import Cursor, OutboxRow
from outbox.relay.routing import Routing, ServicePlan
from outbox.settings import Settings
from outbox.streams.connection import RedisClient, client_from_url, raw_pipeline, reply_text
from outbox.streams.errors import RedisUnavailableError, StreamRefusedError
from outbox.streams.keys import Keys
from outbox.streams.publish import StreamBatch, publish_batches

_PRIORITIES = {int(p): p for p in MessagePriority}


@dataclass(slots=True)
class ServiceOutcome:
    """The result of one service's batch: entries added and skipped, or the refusal.

    ``marks``: for each stream that took its part of the batch, the cursor of its last event
    (its watermark is at least that now). ``behind``: streams whose watermark Redis holds behind
    what it had taken before (it lost writes), with the watermark found (``""``: none). Both are
    keyed by *mark key*: the stream, or for copies into another service's stream the copy
    watermark's key (:mod:`relay.routing`). ``published``/``skipped`` count the entries of the
    service's own streams; ``copied``, those added to other services' streams by routing rules.
    """

    published: int = 0
    skipped: int = 0
    copied: int = 0
    refused: StreamRefusedError | None = None
    marks: dict[str, Cursor] = field(default_factory=dict)
    behind: dict[str, str] = field(default_factory=dict)


class Publisher(Protocol):
    """The Redis boundary as the daemon sees it."""

    #: The outbox's source id, recorded beside each watermark (``""``: not checked yet).
    source: str

    async def publish(
        self,
        batches: Mapping[str, Sequence[OutboxRow]],
        seen: Mapping[str, Cursor],
        epochs: Mapping[str, int] | None = None,
    ) -> dict[str, ServiceOutcome]:
        """Publish each service's rows (in cursor order). ``seen``: the watermark each stream
        was last seen to take (stream key → cursor); ``epochs``: each partitioned service's
        epoch, whose streams its rows' ``partition`` names (decision 0014). Raises
        RedisUnavailableError."""
        ...

    async def watermarks(self, streams: Sequence[str]) -> dict[str, str | None]:
        """The watermark each stream holds now (None: none); a copy watermark's key (routing
        rules) stands for itself. Raises RedisUnavailableError."""
        ...

    async def close(self) -> None: ...


def connect_redis(settings: Settings) -> RedisClient:
    """A Redis client for the relay (of a cluster with REDIS_CLUSTER=true). Timeouts bound a
    hung server; the relay's own backoff, not the client's, decides when to try again."""
    return client_from_url(
        settings.redis_url(),
        cluster=settings.cluster,
        password=settings.redis_password_text(),
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=0,
        retry_on_timeout=False,
    )


class RedisPublisher:
    """:class:`Publisher` on a redis-py asyncio client."""

    def __init__(
        self,
        client: RedisClient,
        keys: Keys,
        routing: Routing | None = None,
        tenant_streamed: Callable[[str], bool] = lambda service: False,
    ) -> None:
        self._client = client
        self._keys = keys
        self.source = ""
        self._routing = routing
        self._tenant_streamed = tenant_streamed
        # (service, epoch, partition, priority) -> stream key
        self._streams: dict[tuple[str, int, int, int], str] = {}
        # (service, tenant, priority) -> the tenant's stream key
        self._tenant_streams: dict[tuple[str, str, int], str] = {}

    async def publish(
        self,
        batches: Mapping[str, Sequence[OutboxRow]],
        seen: Mapping[str, Cursor],
        epochs: Mapping[str, int] | None = None,
    ) -> dict[str, ServiceOutcome]:
        stream_batches: list[StreamBatch] = []
        owners: list[str] = []
        refused: dict[str, StreamRefusedError] = {}
        for service, rows in batches.items():
            by_stream: dict[str, StreamBatch] = {}
            epoch = epochs.get(service, 0) if epochs else 0
            plan = None if self._routing is None else self._routing.plan(service)
            if plan is not None:
                # Kept apart so that a relay without rules runs exactly the loop below.
                refusal = self._add_routed(service, rows, epoch, plan, seen, by_stream)
                if refusal is not None:
                    refused[service] = refusal
                    continue
                stream_batches += by_stream.values()
                owners += [service] * len(by_stream)
                continue
            for row in rows:
                stream = self._own_stream(service, epoch, row)
                batch = by_stream.get(stream)
                if batch is None:
                    mark = seen.get(stream)
                    batch = by_stream[stream] = StreamBatch(
                        stream, "" if mark is None else str(mark)
                    )
                    stream_batches.append(batch)
                    owners.append(service)
                batch.add(row["txid"], row["position"], row["fields"])
        results = await publish_batches(self._client, self._keys, stream_batches, self.source)
        outcomes: dict[str, ServiceOutcome] = {service: ServiceOutcome() for service in batches}
        for service, reason in refused.items():
            outcomes[service].refused = reason
        for service, batch, result in zip(owners, stream_batches, results, strict=True):
            outcome = outcomes[service]
            key = batch.watermark or batch.stream
            if isinstance(result, StreamRefusedError):
                outcome.refused = outcome.refused or result
            elif result.behind is not None:
                outcome.behind[key] = result.behind
            else:
                if batch.watermark:
                    outcome.copied += result.published
                else:
                    outcome.published += result.published
                    outcome.skipped += result.skipped
                outcome.marks[key] = Cursor(*batch.last_cursor())
        return outcomes

    def _own_stream(self, service: str, epoch: int, row: OutboxRow) -> str:
        """The stream a row of ``service`` goes to by its priority (and partition), or its
        tenant's stream (never partitioned) when the service has them; cached."""
        if self._tenant_streamed(service):
            tenant = row["tenant_id"]
            if tenant is not None:
                key = (service, tenant, row["priority"])
                stream = self._tenant_streams.get(key)
                if stream is None:
                    stream = self._keys.for_tenant(tenant).stream(
                        service, _PRIORITIES[row["priority"]]
                    )
                    self._tenant_streams[key] = stream
                return stream
        part = row["partition"] if epoch else 0
        route = (service, epoch, part, row["priority"])
        stream = self._streams.get(route)
        if stream is None:
            stream = self._keys.stream(
                service,
                _PRIORITIES[row["priority"]],
                Partition(epoch, part) if epoch else None,
            )
            self._streams[route] = stream
        return stream

    def _add_routed(
        self,
        service: str,
        rows: Sequence[OutboxRow],
        epoch: int,
        plan: ServicePlan,
        seen: Mapping[str, Cursor],
        by_lane: dict[str, StreamBatch],
    ) -> StreamRefusedError | None:
        """Add a service's rows with routing rules: each row to its lanes (relay.routing), each
        lane one batch with its own watermark. Returns the refusal when a lane's stream cannot
        take routed events now (nothing of the service is sent then)."""
        assert self._routing is not None
        lanes_of: dict[tuple[str, str], StreamBatch] = {}
        for row in rows:
            stream = self._own_stream(service, epoch, row)
            for lane in plan.lanes(stream, row):
                batch = lanes_of.get(lane)
                if batch is None:
                    target, watermark = lane
                    if target != stream:
                        reason = self._routing.refusal(target)
                        if reason is not None:
                            return StreamRefusedError(target, reason)
                    mark = seen.get(watermark or target)
                    batch = lanes_of[lane] = StreamBatch(
                        target, "" if mark is None else str(mark), watermark=watermark
                    )
                batch.add(row["txid"], row["position"], row["fields"])
        for (target, watermark), batch in lanes_of.items():
            by_lane[watermark or target] = batch
        return None

    async def watermarks(self, streams: Sequence[str]) -> dict[str, str | None]:
        if not streams:
            return {}
        # A mark key is a stream (its own watermark) or a copy watermark's key itself.
        marks = [
            stream if self._keys.parse_copy_watermark(stream) else self._keys.watermark(stream)
            for stream in streams
        ]
        values: Sequence[object]
        try:
            if isinstance(self._client, RedisCluster):
                # One GET per key, each to its node (an MGET may not span slots).
                values = await raw_pipeline(
                    self._client, [("GET", mark) for mark in marks], raise_on_error=True
                )
            else:
                values = await self._client.mget(marks)
        except redis_errors.RedisError as error:
            # Whatever the reason, the watermarks cannot be read now; the check waits for the
            # next heartbeat, and the pump reports what is wrong with Redis.
            raise RedisUnavailableError(f"cannot read the watermarks: {error}") from error
        return {
            stream: None if value is None else reply_text(value)
            for stream, value in zip(streams, values, strict=True)
        }

    async def close(self) -> None:
        await self._client.aclose()
