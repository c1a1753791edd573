"""The bodies the monitor's REST API returns, as pydantic models: what ``/openapi.json`` shows.

They describe the dicts that ``collector.py``, ``sources.py``, ``redis_stats.py``,
``dead_letters.py`` and the routes build (the dashboard, ``/ws`` and ``/metrics`` read the same
dicts), field for field and in the same order. Models are strict and forbid other fields: FastAPI
validates every response against its model, so a body that drifts from its description is a 500
in the tests, never an API that changed silently. Timestamps stay the strings the code writes
(``datetime.isoformat()``); a model never re-formats a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

#: An ISO 8601 timestamp with its UTC offset, as ``datetime.isoformat()`` writes it.
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
Level = Literal["OK", "WARN", "ERR"]


class Body(BaseModel):
    """A JSON object of exactly these fields, each of exactly its type."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ErrorMessage(Body):
    """An error: what went wrong, in words."""

    detail: str


class Health(Body):
    """The monitor process is up."""

    status: Literal["ok"]
    uptime_s: float


class Readiness(Body):
    """Whether PostgreSQL and Redis are reachable: ``ok``, or ``unreachable: <error class>``."""

    ready: bool
    postgres: str
    redis: str


# --- outbox and relays (sources.py) ------------------------------------------------------------


class RelayCursor(Body):
    """The relay's cursor of a service: the last ``(txid, position)`` it published."""

    txid: str
    position: int


class OutboxStream(Body):
    """One service's outbox backlog, counted from its relay cursor."""

    stream: str = Field(description="the service")
    cursor: RelayCursor | None
    cursor_age_s: float | None
    republishing: bool = Field(
        description="a live relay publishes again events Redis lost (decision 0011); the "
        "backlog counts from the cursor it reports"
    )
    unpublished: int
    unpublished_capped: bool = Field(description="the count stopped at its cap (100,000)")
    oldest_unpublished_age_s: float | None
    published: int = Field(description="entries ever added to the service's streams")
    publish_rate_per_s: float | None


class WriteTransaction(Body):
    """The oldest transaction of the outbox's database that has written (running, or prepared):
    it holds back every relay's horizon until the relays defer it (decisions 0019 and 0020)."""

    pid: int | None = Field(description="None for a prepared transaction (see gid)")
    age_s: float
    query_start: Timestamp | None
    state: str | None
    database: str | None
    gid: str | None = Field(default=None, description="a prepared transaction's identifier")
    deferred: bool = Field(
        default=False,
        description="the relays have deferred it: they publish past it, and its own events "
        "when it ends (decision 0020)",
    )


class Outbox(Body):
    """The PostgreSQL side: backlog per service and the transaction holding relays back."""

    db_now: float = Field(description="the database clock, Unix seconds")
    streams: list[OutboxStream]
    oldest_write_transaction: WriteTransaction | None
    deferred_transactions: int = Field(
        default=0, description="transactions the relays have deferred (decision 0020)"
    )


class Relay(Body):
    """A relay instance running, or stopped within the last hour."""

    instance: str
    host: str
    pid: int
    started_at: Timestamp
    streams: list[str] = Field(description="services whose lease it holds")
    cursors: dict[str, str] = Field(description="service → its cursor, `<txid>:<position>`")
    stream_errors: dict[str, str] = Field(description="service → why Redis refuses it")
    republishing: dict[str, str] = Field(
        description="service → the cursor from which it publishes again what Redis lost"
    )
    published: int
    redis_losses: int
    last_error: str | None
    last_error_at: Timestamp | None
    stopped: bool
    heartbeat_age_s: float


class OutboxAndRelays(Body):
    """``GET /api/outbox``."""

    outbox: Outbox
    relays: list[Relay]


# --- Redis streams and groups (redis_stats.py) -------------------------------------------------


class StreamConsumer(Body):
    """A consumer of a group."""

    name: str
    pending: int
    idle_ms: int = Field(description="since Redis last saw it")


class ConsumerGroup(Body):
    """A consumer group: how far behind it is, in entries and in seconds."""

    name: str
    pending: int
    last_delivered_id: str
    entries_read: int | None
    lag_entries: int
    lag_exact: bool = Field(description="false when the undelivered entries hit the count cap")
    lag_seconds: float = Field(description="age of the oldest undelivered entry; 0 caught up")
    oldest_pending_id: str | None
    oldest_pending_age_s: float
    consumers: list[StreamConsumer]


class ServiceGroup(Body):
    """A consumer group over all the priority streams of a service."""

    name: str
    pending: int
    lag_entries: int
    lag_seconds: float = Field(description="the largest of its streams")
    oldest_pending_age_s: float


class ServiceStreams(Body):
    """``GET /api/stream/{service}``: every priority stream of a service, and the totals."""

    service: str
    tenant: str | None = Field(default=None, description="the tenant whose streams these are")
    length: int
    groups: list[ServiceGroup]
    streams: list[Stream] = Field(description="those that exist, highest priority first")


class Stream(Body):
    """A Redis stream of this prefix (``error`` when the key holds another type)."""

    key: str
    exists: bool
    length: int
    last_generated_id: str
    first_entry_id: str | None
    entries_added: int | None
    error: str | None
    groups: list[ConsumerGroup]
    tenant: str | None = Field(
        default=None, description="the tenant whose stream (or dead letters) this is"
    )


class StreamOrService(RootModel[Stream | ServiceStreams]):
    """``GET /api/stream/{stream}``: a :class:`Stream` for a full key, a
    :class:`ServiceStreams` for a service name."""

    model_config = ConfigDict(strict=True)


class StreamList(RootModel[list[Stream]]):
    """``GET /api/streams``: every stream of the known services, the dead letters and metrics."""

    model_config = ConfigDict(strict=True)


class PendingConsumer(Body):
    """A consumer's count of pending entries."""

    name: str
    pending: int


class PendingEntry(Body):
    """An entry delivered to a consumer and not acknowledged yet."""

    id: str
    stream: str
    consumer: str
    idle_ms: int
    deliveries: int


class Pending(Body):
    """``GET /api/pending/{stream}/{group}``: pending entries, oldest first (longest idle
    first across the streams of a service)."""

    stream: str = Field(description="the key asked for, or the service name")
    keys: list[str] = Field(description="the streams searched that have the group")
    group: str
    pending: int
    min_id: str | None
    max_id: str | None
    consumers: list[PendingConsumer]
    entries: list[PendingEntry]


class RedisNode(Body):
    """One primary of a Redis Cluster: its own figures, or why it did not answer."""

    node: str = Field(description="host:port")
    error: str | None
    redis_version: str | None = None
    used_memory_bytes: int = 0
    used_memory_human: str | None = None
    maxmemory_bytes: int = 0
    maxmemory_policy: str | None = None
    connected_clients: int = 0
    instantaneous_ops_per_sec: int = 0
    total_commands_processed: int = 0
    keyspace_hits: int = 0
    keyspace_misses: int = 0
    hit_ratio: float | None = None
    uptime_seconds: int = 0


class RedisServer(Body):
    """Redis server figures from ``INFO``; on a cluster the primaries' sums, each primary's own
    in ``nodes`` (empty on a single Redis)."""

    redis_version: str | None
    used_memory_bytes: int
    used_memory_human: str | None
    maxmemory_bytes: int
    maxmemory_policy: str | None
    connected_clients: int
    instantaneous_ops_per_sec: int
    total_commands_processed: int
    keyspace_hits: int
    keyspace_misses: int
    hit_ratio: float | None
    uptime_seconds: int
    nodes: list[RedisNode]


# --- projections (sources.py) ------------------------------------------------------------------


class ProjectionConsumer(Body):
    """A projection consumer running, or stopped within the last hour."""

    consumer: str
    host: str
    pid: int
    processed: int
    skipped: int
    failures: int
    dead_lettered: int
    last_error: str | None
    stopped: bool
    heartbeat_age_s: float


class ProcessingLatency(Body):
    """From emit() to the apply's commit (the inbox row's applied_at - the event's occurred_at,
    database clock), over the newest events the projection applied (at most 2,000)."""

    p50_s: float
    p95_s: float
    max_s: float
    events: int = Field(description="the events these figures are taken over")
    lookback_s: float = Field(
        description="how far back they were looked for: MONITOR_WINDOW, or less when the "
        "projections apply so fast that fewer seconds hold enough events"
    )


class ProjectionWindow(Body):
    """What a projection's consumers did over the last MONITOR_WINDOW (or since the monitor
    started, if later), from the counters of successive snapshots."""

    span_s: float = Field(description="seconds between the oldest and newest observation")
    applied: int
    failures: int = Field(description="handler failures (each retried or dead-lettered)")
    retries: int = Field(description="failures that were retried, not dead-lettered")
    error_ratio: float | None = Field(
        description="failures / (applied + failures): the share of handler attempts that "
        "failed; null when there was none"
    )


class Projection(Body):
    """A projection: its consumers and their totals."""

    name: str
    state: Literal["live", "rebuilding"]
    consumers: list[ProjectionConsumer]
    processed: int
    skipped: int
    failures: int
    dead_lettered: int
    retries: int = Field(description="failures that were not dead-lettered")
    processing_latency: ProcessingLatency | None = Field(
        description="null when it applied no outbox event within the window"
    )
    processing_rate_per_s: float | None
    window: ProjectionWindow | None = Field(description="null until two snapshots were taken")


class ProjectionList(RootModel[list[Projection]]):
    """``GET /api/projections``."""

    model_config = ConfigDict(strict=True)


class ClientConsumer(Body):
    """A consumer of ``RedisStreamsClient.consume_messages`` (its heartbeat in Redis), running
    or stopped within the last hour; one that died stays, heartbeat lost, for a day."""

    group: str
    consumer: str
    streams: list[str]
    host: str
    pid: int
    processed: int = Field(description="messages acknowledged")
    failures: int = Field(description="retry_message calls")
    dead_lettered: int
    reclaimed: int = Field(description="entries taken over from consumers idle too long")
    last_error: str | None
    stopped: bool
    heartbeat_interval_s: float
    heartbeat_age_s: float | None
    processing_rate_per_s: float | None = None
    tenant: str | None = Field(default=None, description="a tenant's consumer (TENANT_ID)")


class ClientConsumerList(RootModel[list[ClientConsumer]]):
    """``GET /api/consumers``."""

    model_config = ConfigDict(strict=True)


# --- statuses (collector.py, status.py) --------------------------------------------------------


class Verdict(Body):
    """A level and its reason in words."""

    level: Level
    reason: str


class ComponentStatus(Body):
    """The status of one component (``outbox:<service>``, ``relay:<id>``, ``group:<key>/<g>``…)."""

    component: str
    kind: Literal["outbox", "relay", "stream", "group", "consumer"]
    level: Level
    reason: str


class Statuses(Body):
    """``GET /api/status``: the worst status overall, and each component's."""

    overall: Verdict
    components: list[ComponentStatus]


# --- the snapshot (collector.py) ---------------------------------------------------------------


class DeadLetterCount(Body):
    """Entries in the dead-letter stream."""

    count: int
    added: int = Field(description="entries ever added (XINFO STREAM entries-added)")


class PartitionOwner(Body):
    """One partition of a projection on a partitioned service (decision 0014)."""

    projection: str
    service: str
    epoch: int
    partition: int
    owner: str | None = Field(description="the consumer that holds its lease, if any")
    fence: int = Field(description="bumped at every change of owner")
    drained: bool = Field(description="an old epoch's partition applied to its end")
    lease_left_s: float | None
    lag_entries: int = Field(description="entries of its streams not yet applied")


class TenantSummary(Body):
    """A tenant's streams (TENANT_STREAMS), dead letters and outbox backlog."""

    tenant: str
    streams: list[str] = Field(description="its stream keys that exist")
    dead_letters: DeadLetterCount
    unpublished: int = Field(description="its committed events not yet published")
    unpublished_capped: bool = Field(
        description="a service's count stopped at its cap (100,000): at least this many"
    )


class Snapshot(Body):
    """``GET /api/snapshot``: everything at once, as the dashboard and ``/ws`` get it."""

    at: Timestamp
    db_now: float = Field(description="the database clock, Unix seconds")
    redis_now: float = Field(description="Redis's clock (TIME), Unix seconds")
    prefix: str
    redis_db: int
    outbox: Outbox
    relays: list[Relay]
    streams: list[Stream]
    projections: list[Projection]
    consumers: list[ClientConsumer]
    dead_letters: DeadLetterCount
    partitions: list[PartitionOwner]
    tenants: list[TenantSummary] = Field(
        default_factory=list, description="each tenant with streams, a backlog or a token"
    )
    redis: RedisServer | None = Field(description="null in a tenant's view: a shared server")
    status: Statuses
    collect_ms: float


# --- the correlation trace (app.py) ------------------------------------------------------------


class EntryRef(Body):
    """Where a published event is in Redis."""

    stream: str
    id: str


class DeadLetterRef(Body):
    """The dead letter of an event."""

    id: str
    group: str
    error: str


class TracedEvent(Body):
    """An event of a correlation and where it is now."""

    event_id: str
    position: int | None = Field(
        description="outbox position; null for an event published directly to Redis"
    )
    service: str
    event_type: str
    priority: int = Field(description="0 LOW, 1 NORMAL, 2 HIGH, 3 CRITICAL")
    aggregate_id: str | None
    causation_id: str | None
    user_id: str | None
    occurred_at: Timestamp
    data: dict[str, Any] | str = Field(
        description="the payload, masked fields shown as ***, encrypted ones as [encrypted] "
        "(the whole payload when all of it is encrypted)"
    )
    where: Literal["in_outbox", "published", "applied", "dead_lettered"]
    published: bool
    republishing: bool = Field(description="Redis lost it and a live relay has yet to publish it")
    entry: EntryRef | None
    applied_by: list[str] = Field(description="projections that applied it")
    dead_letter: DeadLetterRef | None


class EventTrace(Body):
    """``GET /api/events``: every event of a correlation, in commit order."""

    correlation_id: str
    events: list[TracedEvent]


# --- dead letters (dead_letters.py, outbox.streams.dead_letter) -------------------------------


class DeadLetter(Body):
    """A dead letter: where it came from, why, and the original entry."""

    id: str = Field(description="its entry id in the dead-letter stream")
    source_stream: str
    group: str
    entry_id: str = Field(description="the original entry's id in its source stream")
    attempts: int
    error: str
    event_id: str
    event_type: str
    consumer: str
    failed_at: Timestamp
    entry: dict[str, Any] = Field(description="the original entry's fields but `data`, masked")
    data: Any = Field(
        description="the original entry's `data`, decoded and masked (its text if it is not "
        "JSON, null without one)"
    )
    age_s: float


class DeadLetterList(Body):
    """``GET /api/dead-letters``: the newest matches and how many match in all."""

    total: int
    dead_letters: list[DeadLetter]


class Replayed(Body):
    """One dead letter re-added to its source stream."""

    replayed: int
    new_entry_ids: list[str]


class ReplayedCount(Body):
    """How many dead letters were re-added to their source streams."""

    replayed: int


class Purged(Body):
    """How many dead letters were deleted."""

    purged: int


class AuditEntry(Body):
    """One administrative action of the audit log (``outbox_audit``)."""

    id: int
    at: str
    actor: str
    via: str
    action: str
    target: str | None
    counts: dict[str, int]
    details: dict[str, Any]
    host: str | None


class AuditLog(Body):
    """``GET /api/audit``: the newest administrative actions, newest first."""

    entries: list[AuditEntry]


def error_responses(described: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """FastAPI's ``responses=``: each status code with its description and an ErrorMessage."""
    return {code: {"model": ErrorMessage, "description": text} for code, text in described.items()}
