"""The client API of the original OpsConductor document: ``RedisStreamsClient`` and friends.

Stream names in this API are short service names (``"identity"``), mapped to
``<prefix>:identity:events`` (plus ``:high`` / ``:critical`` for those priorities); a full key is
accepted too. The consumer group of a stream is ``f"{stream}_processors"`` (the document's
convention) unless one is given.

``publish_message`` / ``publish_event`` write to Redis directly and are **not transactional**:
the event is published even if the caller's database change later rolls back, and lost if Redis
is down. Services with a database use ``outbox.emit()`` in their transaction instead and let the
relay publish (DESIGN.md invariant 1).

A client made with ``tenant=`` (or TENANT_ID) names only that tenant's keys
(``<prefix>:tenant:<tenant>:…``): it reads the tenant's streams, dead-letters to the tenant's
dead-letter stream and publishes as the tenant. With a Redis ACL user of the tenant
(``outbox tenants acl``) Redis itself refuses it every other key (docs/tenancy.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from redis import exceptions as redis_errors

from outbox.context import current_correlation_id, new_correlation_id
from outbox.encryption import ENCRYPTED_HEADER, encrypted_fields, open_message, seal
from outbox.envelope import MessagePriority, uuid7
from outbox.errors import DecryptError, UpcastError
from outbox.settings import client_settings
from outbox.streams.codec import (
    MalformedEntryError,
    StreamMessage,
    decode_entry,
    encode_fields,
    is_marker,
)
from outbox.streams.connection import RedisClient, backoff_delay_s, connect, reply_text
from outbox.streams.consumer import Entry, GroupConsumer
from outbox.streams.dead_letter import DeadLetters, dead_letter_fields
from outbox.streams.errors import (
    RedisOutOfMemoryError,
    StreamsError,
    is_nogroup,
    translate,
)
from outbox.streams.heartbeat import ConsumerReport, beat
from outbox.streams.keys import Keys
from outbox.upcasting import upcasters
from outbox.validation import (
    check_event_type,
    check_service,
    check_tenant_id,
    schemas,
    serialise_data,
)

log = logging.getLogger("outbox.streams.client")

T = TypeVar("T")

#: Writes refused with OOM are retried this often, backing off from 0.1 s (doubling, jittered).
OOM_RETRIES = 5
OOM_BASE_DELAY_S = 0.05


async def with_oom_backoff(command: Callable[[], Awaitable[T]], key: str) -> T:
    """Run a Redis write, backing off while Redis answers OOM; then raise the project error."""
    for attempt in range(1, OOM_RETRIES + 2):
        try:
            return await command()
        except redis_errors.RedisError as error:
            translated = translate(error, key)
            if not isinstance(translated, RedisOutOfMemoryError) or attempt > OOM_RETRIES:
                raise translated from None
            delay = backoff_delay_s(attempt, OOM_BASE_DELAY_S, 5.0)
            log.warning(
                "event=redis_oom_backoff key=%s attempt=%d delay_s=%.2f", key, attempt, delay
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class _Delivery:
    key: str
    group: str
    consumer: str


@dataclass
class _Reader:
    consumer: GroupConsumer
    report: ConsumerReport
    read_own_pending: bool = True
    pending_after: dict[str, str] = field(default_factory=dict)
    retries: dict[str, tuple[float, str]] = field(default_factory=dict)  # id -> (due, key)
    claim_cursor: dict[str, str] = field(default_factory=dict)  # key -> XAUTOCLAIM start
    next_claim: float = 0.0  # monotonic time of the next XAUTOCLAIM round
    next_beat: float = 0.0  # monotonic time of the next heartbeat


class RedisStreamsClient:
    """Publish to and consume from OpsConductor streams (the original document's API)."""

    def __init__(
        self,
        redis_url: str | None = None,
        password: str | None = None,
        *,
        prefix: str | None = None,
        max_retries: int | None = None,
        tenant: str | None = None,
    ) -> None:
        # Only the client's own variables, from the environment: nothing else of the service's
        # configuration can make this fail.
        settings = client_settings()
        self.redis_url = redis_url or settings.redis_url()
        secret = settings.redis_password.get_secret_value() if settings.redis_password else None
        self._password = password if password is not None else secret
        #: The tenant this client is (``tenant`` or TENANT_ID): every key it names, streams,
        #: dead letters and heartbeats, is the tenant's (docs/tenancy.md); None: the
        #: deployment's own keys.
        chosen = tenant if tenant is not None else settings.tenant_id
        self.tenant = None if chosen is None else check_tenant_id(chosen)
        keys = Keys(prefix or settings.stream_prefix, settings.tagged_keys)
        self.keys = keys if self.tenant is None else keys.for_tenant(self.tenant)
        self._cluster = settings.cluster
        self.max_retries = settings.max_retries if max_retries is None else max_retries
        self._dead_letter_ttl_s = settings.dead_letter_ttl_s
        self._retry_base_s = settings.retry_base_delay_ms / 1000
        self._retry_cap_s = settings.retry_max_delay_ms / 1000
        self._claim_min_idle_ms = settings.claim_min_idle_ms
        self._claim_interval_s = settings.claim_interval_s
        self._claim_count = settings.claim_count
        self._dead_consumer_idle_ms = settings.dead_consumer_idle_ms
        self._heartbeat_s = settings.consumer_heartbeat_s
        self._redis: RedisClient | None = None
        self._readers: dict[tuple[str, str, str], _Reader] = {}
        self._reports: dict[str, ConsumerReport] = {}
        # (stream, id) -> deliveries not yet acked. One id can exist on two priority streams
        # of a service (ids are per stream), hence a list.
        self._delivered: dict[tuple[str, str], list[_Delivery]] = {}

    @property
    def redis(self) -> RedisClient:
        if self._redis is None:
            raise StreamsError("RedisStreamsClient is not initialized; await client.initialize()")
        return self._redis

    async def initialize(self) -> None:
        """Connect (and check the connection with PING)."""
        if self._redis is None:
            self._redis = await connect(
                self.redis_url, self._password or None, cluster=self._cluster
            )

    async def close(self) -> None:
        """Report this client's consumers stopped, then disconnect."""
        if self._redis is not None:
            for reader in self._readers.values():
                reader.report.stopped = True
                await self._beat(reader)
            await self._redis.aclose()
            self._redis = None

    async def __aenter__(self) -> RedisStreamsClient:
        await self.initialize()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- names ---

    def _service(self, stream: str) -> str:
        parsed = self.keys.parse_stream(stream)
        return parsed[0] if parsed else check_service(stream)

    def stream_key(self, stream: str, priority: MessagePriority = MessagePriority.NORMAL) -> str:
        """``"identity"`` → ``<prefix>:identity:events`` (priority suffix above NORMAL)."""
        parsed = self.keys.parse_stream(stream)
        if parsed is not None and priority <= MessagePriority.NORMAL:
            return stream
        return self.keys.stream(self._service(stream), priority)

    def _keys_of(self, stream: str) -> dict[MessagePriority, list[str]]:
        if self.keys.parse_stream(stream) is not None:
            return {MessagePriority.NORMAL: [stream]}
        service = check_service(stream)
        return {
            MessagePriority.CRITICAL: [self.keys.stream(service, MessagePriority.CRITICAL)],
            MessagePriority.HIGH: [self.keys.stream(service, MessagePriority.HIGH)],
            MessagePriority.NORMAL: [self.keys.stream(service, MessagePriority.NORMAL)],
        }

    @staticmethod
    def default_group(stream: str) -> str:
        return f"{stream}_processors"

    # --- publish ---

    async def publish_message(
        self,
        stream: str,
        event_type: str,
        service: str,
        data: dict[str, Any],
        priority: MessagePriority | str | int = MessagePriority.NORMAL,
        user_id: str | int | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """XADD one event now and return its entry id. Not transactional (see module doc).

        ``data`` is encoded as ``outbox.emit()`` encodes it and checked against the schema
        registered for the stream's service and ``event_type`` (``outbox.register_schema``):
        :class:`outbox.errors.EventSchemaError` and nothing published when it does not match.
        """
        level = MessagePriority.parse(priority)
        key = self.stream_key(stream, level)
        event_type = check_event_type(event_type)
        checked, data_json = serialise_data(data)
        schemas.validate(self._service(stream), event_type, checked)
        headers: dict[str, str] = {}
        if upcasters.active:
            upcasters.stamp(self._service(stream), event_type, headers)
        event_id = str(uuid7())
        if encrypted_fields.active:
            sealed = seal(check_service(service), event_type, event_id, checked, headers, None)
            if sealed is not None:
                data_json = serialise_data(sealed)[1]
        fields = encode_fields(
            event_id=event_id,
            event_type=event_type,
            service=service,
            source=service,
            data_json=data_json,
            priority=level,
            occurred_at=datetime.now(UTC),
            correlation_id=correlation_id or current_correlation_id() or new_correlation_id(),
            position=None,
            max_retries=self.max_retries,
            user_id=None if user_id is None else str(user_id),
            headers_json=json.dumps(headers) if headers else None,
            tenant_id=self.tenant,
        )
        entry_id = await with_oom_backoff(lambda: self.redis.xadd(key, fields), key)  # type: ignore[arg-type]
        return reply_text(entry_id)

    # --- consume ---

    def _reader(self, stream: str, group: str, consumer_name: str) -> _Reader:
        ident = (stream, group, consumer_name)
        reader = self._readers.get(ident)
        if reader is None:
            consumer = GroupConsumer(self.redis, group, consumer_name, self._keys_of(stream))
            # One report per group and consumer, whatever streams it reads.
            report = self._reports.setdefault(
                f"{group}/{consumer_name}",
                ConsumerReport(group, consumer_name, [], heartbeat_interval_s=self._heartbeat_s),
            )
            report.streams += [key for key in consumer.keys if key not in report.streams]
            reader = self._readers[ident] = _Reader(consumer, report)
        return reader

    def _report(self, group: str, consumer: str) -> ConsumerReport | None:
        return self._reports.get(f"{group}/{consumer}")

    async def _beat(self, reader: _Reader) -> None:
        """Write the consumer's report; a failure is logged, never raised (it is telemetry)."""
        reader.next_beat = time.monotonic() + self._heartbeat_s
        try:
            await beat(self.redis, self.keys.consumers, reader.report)
        except StreamsError as error:
            log.warning(
                "event=consumer_heartbeat_failed consumer=%s error=%s", reader.report.field, error
            )

    async def _reclaim(self, name: str, reader: _Reader) -> list[Entry]:
        """Take over entries idle beyond CLAIM_MIN_IDLE_MS (their consumer died or hangs),
        CLAIM_COUNT per stream; dead-letter those delivered more often than the retry budget
        allows (a message that kills every consumer reading it)."""
        consumer = reader.consumer
        taken: list[Entry] = []
        for key in consumer.keys:
            claimed = await consumer.autoclaim(
                key,
                self._claim_min_idle_ms,
                reader.claim_cursor.get(key, "0-0"),
                self._claim_count,
            )
            reader.claim_cursor[key] = claimed.next_start
            if claimed.deleted:
                log.warning(
                    "event=pending_entries_trimmed stream=%s group=%s entries=%d",
                    key,
                    consumer.group,
                    len(claimed.deleted),
                )
            busy = {i for i, (_, k) in reader.retries.items() if k == key}
            fresh = [
                e
                for e in claimed.entries
                if e.id not in busy and not self._in_flight(name, e.id, key, consumer.group)
            ]
            if not fresh:
                continue
            counts = await consumer.delivery_counts(key, [e.id for e in fresh])
            for entry in fresh:
                delivered = counts.get(entry.id, 1)
                if delivered > self.max_retries + 1:
                    await self._dead_letter(
                        consumer,
                        entry,
                        attempts=delivered,
                        error=f"delivered {delivered} times and never acknowledged",
                    )
                    continue
                taken.append(entry)
            reader.report.reclaimed += len(fresh)
            log.info(
                "event=reclaimed stream=%s group=%s consumer=%s entries=%d",
                key,
                consumer.group,
                consumer.consumer,
                len(fresh),
            )
            await consumer.remove_dead_consumers(key, self._dead_consumer_idle_ms)
        return taken

    def _in_flight(self, name: str, entry_id: str, key: str, group: str) -> bool:
        deliveries = self._delivered.get((name, entry_id), ())
        return any(d.key == key and d.group == group for d in deliveries)

    async def _due_retries(self, reader: _Reader) -> list[Entry]:
        now = time.monotonic()
        due = [(i, key) for i, (at, key) in reader.retries.items() if at <= now]
        entries: list[Entry] = []
        for entry_id, key in due:
            del reader.retries[entry_id]
            claimed = await reader.consumer.claim(key, [entry_id])
            entries.extend(claimed.entries)
        return entries

    async def _fetch(
        self, name: str, reader: _Reader, batch_size: int, block_ms: int
    ) -> list[Entry]:
        now = time.monotonic()
        if now >= reader.next_beat:
            await self._beat(reader)
        entries = await self._due_retries(reader)
        if now >= reader.next_claim:
            reader.next_claim = now + self._claim_interval_s
            entries.extend(await self._reclaim(name, reader))
        if reader.read_own_pending:
            # After a restart, entries this consumer read but never acked come first.
            pending = await reader.consumer.read_pending(batch_size, reader.pending_after)
            if len(pending) < batch_size:
                reader.read_own_pending = False
            # Entries just claimed or re-claimed for a retry are in this consumer's pending list
            # now: read from it too, they would come twice in one batch.
            taken = {(entry.stream, entry.id) for entry in entries}
            for entry in pending:
                reader.pending_after[entry.stream] = entry.id
            entries.extend(e for e in pending if (e.stream, e.id) not in taken)
        if not entries:
            entries = await reader.consumer.read_new(batch_size, block_ms)
        return entries

    async def consume_messages(
        self,
        streams: Sequence[str],
        consumer_name: str,
        batch_size: int = 10,
        block_time: int = 1000,
        group: str | None = None,
    ) -> list[StreamMessage]:
        """Read up to ``batch_size`` messages per stream, CRITICAL first, as ``consumer_name``.

        The group is ``f"{stream}_processors"`` unless ``group`` is given; it is created on
        first use. A consumer first gets back its own unacknowledged messages (after a
        restart: give it a stable name, not ``service-{pid}``) and messages due for a retry;
        every CLAIM_INTERVAL it takes over up to CLAIM_COUNT entries per stream that other
        consumers left unacknowledged for CLAIM_MIN_IDLE_MS. Malformed entries go to dead
        letters at once. Blocks up to ``block_time`` ms when there is nothing to read. Every
        CONSUMER_HEARTBEAT_INTERVAL the consumer reports to ``<prefix>:consumers`` (the
        monitor shows it).
        """
        readers = [
            (name, self._reader(name, group or self.default_group(name), consumer_name))
            for name in streams
        ]
        deadline = time.monotonic() + block_time / 1000
        batches = [await self._fetch(name, reader, batch_size, 0) for name, reader in readers]
        while not any(batches) and block_time > 0:
            # Block until something arrives, but wake up for a retry falling due meanwhile.
            now = time.monotonic()
            wait_s = deadline - now
            dues = [due for _, r in readers for due, _ in r.retries.values()]
            if dues:
                wait_s = min(wait_s, min(dues) - now)
            if deadline - now <= 0:
                break
            wait_ms = max(1, int(wait_s * 1000))
            batches = list(
                await asyncio.gather(
                    *(self._fetch(name, reader, batch_size, wait_ms) for name, reader in readers)
                )
            )
        messages: list[StreamMessage] = []
        for (name, reader), entries in zip(readers, batches, strict=True):
            messages.extend(await self._decode(name, reader, entries))
        messages.sort(key=lambda message: -message.priority)
        return messages

    async def _decode(
        self, name: str, reader: _Reader, entries: list[Entry]
    ) -> list[StreamMessage]:
        consumer = reader.consumer
        messages = []
        for entry in entries:
            try:
                if entry.trimmed:
                    raise MalformedEntryError(
                        f"entry {entry.id} of {entry.stream} was trimmed while pending; its "
                        "event is in the outbox log (projections re-fetch it from there)"
                    )
                message = decode_entry(name, entry.id, entry.fields, entry.stream)
            except MalformedEntryError as error:
                await self._dead_letter(consumer, entry, attempts=1, error=str(error))
                continue
            if is_marker(message):  # the original library's stream_initialized entry
                await consumer.ack({entry.stream: [entry.id]})
                continue
            if ENCRYPTED_HEADER in message.headers or upcasters.active:
                try:
                    if ENCRYPTED_HEADER in message.headers:
                        open_message(message)
                    if upcasters.active:
                        upcasters.upcast(message)
                except (DecryptError, UpcastError) as error:  # retrying cannot help
                    await self._dead_letter(
                        consumer,
                        entry,
                        attempts=1,
                        error=f"{error.__class__.__name__}: {error}",
                    )
                    continue
            deliveries = self._delivered.setdefault((name, entry.id), [])
            delivery = _Delivery(entry.stream, consumer.group, consumer.consumer)
            if delivery not in deliveries:
                deliveries.append(delivery)
            messages.append(message)
        return messages

    async def _dead_letter(
        self, consumer: GroupConsumer, entry: Entry, *, attempts: int, error: str
    ) -> None:
        letters = DeadLetters(self.redis, self.keys, self._dead_letter_ttl_s)
        fields = dead_letter_fields(
            source_stream=entry.stream,
            group=consumer.group,
            entry_id=entry.id,
            attempts=attempts,
            error=error,
            payload=entry.fields,
            consumer=consumer.consumer,
        )
        await with_oom_backoff(lambda: letters.add(fields), self.keys.dead_letter)
        await consumer.ack({entry.stream: [entry.id]})
        report = self._report(consumer.group, consumer.consumer)
        if report is not None:
            report.dead_lettered += 1
            report.last_error = error[:500]
        log.warning(
            "event=dead_lettered stream=%s group=%s id=%s attempts=%d error=%s",
            entry.stream,
            consumer.group,
            entry.id,
            attempts,
            error,
        )

    def _take_delivery(
        self, stream: str, message_id: str, key: str | None = None
    ) -> _Delivery | None:
        deliveries = self._delivered.get((stream, message_id))
        if not deliveries:
            return None
        chosen = next((d for d in deliveries if key is None or d.key == key), None)
        if chosen is not None:
            deliveries.remove(chosen)
        if not deliveries:
            del self._delivered[(stream, message_id)]
        return chosen

    async def acknowledge_message(self, stream: str, group: str, message_id: str) -> bool:
        """XACK a consumed message; True if it was pending in ``group``.

        A message this client delivered is acked in the group that delivered it: acking it in
        another (the document's API example acks an ``assets`` message in
        ``identity_processors``) would leave it pending for good, so that is logged and
        corrected.
        """
        delivery = self._take_delivery(stream, message_id)
        if delivery is not None and delivery.group != group:
            log.warning(
                "event=ack_group_corrected stream=%s id=%s given=%s delivered_by=%s",
                stream,
                message_id,
                group,
                delivery.group,
            )
            group = delivery.group
        candidates = (
            [delivery.key]
            if delivery is not None
            else [key for keys in self._keys_of(stream).values() for key in keys]
        )
        acked = 0
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in candidates:
                    pipe.xack(key, group, message_id)
                results = await pipe.execute()
            acked = sum(int(n) for n in results)
        except redis_errors.RedisError as error:
            raise translate(error, ", ".join(candidates)) from None
        report = self._report(group, delivery.consumer) if delivery is not None else None
        if report is not None:
            report.processed += acked
        return acked > 0

    async def retry_message(self, message: StreamMessage, group: str | None = None) -> bool:
        """Deliver ``message`` again later, or dead-letter it when its retries are used up.

        The budget is the stream's delivery counter (XPENDING ``times_delivered``): after
        ``max_retries`` retries the message goes to the dead-letter stream and is acked.
        Returns True when a retry was scheduled (with exponential backoff and jitter).
        """
        key = self.stream_key(message.stream, message.priority)
        delivery = next(
            (d for d in self._delivered.get((message.stream, message.id), []) if d.key == key),
            None,
        )
        group = group or (delivery.group if delivery else self.default_group(message.stream))
        if delivery is None:
            raise StreamsError(
                f"message {message.id} of {message.stream} was not delivered by this client"
            )
        reader = self._reader(message.stream, group, delivery.consumer)
        counts = await reader.consumer.delivery_counts(delivery.key, [message.id])
        delivered = counts.get(message.id, 1)
        budget = message.max_retries or self.max_retries
        message.retry_count = delivered
        report = self._report(group, delivery.consumer)
        if report is not None:
            report.failures += 1
        if delivered > budget:
            self._take_delivery(message.stream, message.id, delivery.key)
            entry = Entry(delivery.key, message.id, await self._fields(delivery.key, message.id))
            await self._dead_letter(
                reader.consumer,
                entry,
                attempts=delivered,
                error=f"processing failed {delivered} times (retry_message)",
            )
            return False
        due = time.monotonic() + backoff_delay_s(delivered, self._retry_base_s, self._retry_cap_s)
        reader.retries[message.id] = (due, delivery.key)
        return True

    async def _fields(self, key: str, entry_id: str) -> dict[Any, Any]:
        try:
            page: Any = await self.redis.xrange(key, min=entry_id, max=entry_id)
        except redis_errors.RedisError as error:
            raise translate(error, key) from None
        return dict(page[0][1]) if page else {}

    # --- information ---

    async def get_stream_info(self, stream: str) -> dict[str, Any]:
        """Length, first/last ids and consumer groups of a stream (all priorities summed).

        Returns ``length``, ``consumer_groups`` (each with name, consumers, pending,
        last_delivered_id, lag) and ``streams`` (per key); a stream never written is empty.
        """
        info: dict[str, Any] = {"stream": stream, "length": 0, "consumer_groups": [], "streams": {}}
        groups: dict[str, dict[str, Any]] = {}
        for keys in self._keys_of(stream).values():
            for key in keys:
                try:
                    length = int(await self.redis.xlen(key))
                    if not length and not await self.redis.exists(key):
                        continue
                    raw_groups = await self.redis.xinfo_groups(key)
                except redis_errors.RedisError as error:
                    raise translate(error, key) from None
                info["length"] += length
                info["streams"][key] = {"length": length}
                for raw in raw_groups:
                    name = reply_text(raw["name"])
                    group = groups.setdefault(
                        name,
                        {"name": name, "consumers": 0, "pending": 0, "lag": 0, "streams": {}},
                    )
                    group["consumers"] = max(group["consumers"], int(raw["consumers"]))
                    group["pending"] += int(raw["pending"])
                    group["lag"] += int(raw.get("lag") or 0)
                    group["streams"][key] = {
                        "pending": int(raw["pending"]),
                        "last_delivered_id": reply_text(raw["last-delivered-id"]),
                    }
        info["consumer_groups"] = list(groups.values())
        return info

    async def get_pending_messages(self, stream: str, group: str) -> list[dict[str, Any]]:
        """The group's unacknowledged messages on the stream (XPENDING, up to 1000 per key)."""
        pending: list[dict[str, Any]] = []
        for keys in self._keys_of(stream).values():
            for key in keys:
                try:
                    rows = await self.redis.xpending_range(key, group, "-", "+", 1000)
                except redis_errors.ResponseError as error:
                    if is_nogroup(error):
                        continue
                    raise translate(error, key) from None
                except redis_errors.RedisError as error:
                    raise translate(error, key) from None
                pending.extend(
                    {
                        "id": reply_text(row["message_id"]),
                        "stream": key,
                        "consumer": reply_text(row["consumer"]),
                        "idle_ms": int(row["time_since_delivered"]),
                        "times_delivered": int(row["times_delivered"]),
                    }
                    for row in rows
                )
        return pending


async def create_streams_client(
    redis_url: str | None = None, password: str | None = None, **options: Any
) -> RedisStreamsClient:
    """An initialized client; URL and password default to REDIS_STREAMS_URL / REDIS_PASSWORD."""
    client = RedisStreamsClient(redis_url, password, **options)
    await client.initialize()
    return client


async def publish_event(
    client: RedisStreamsClient,
    service: str,
    event_type: str,
    data: dict[str, Any],
    priority: MessagePriority | str | int = MessagePriority.NORMAL,
    user_id: str | int | None = None,
    correlation_id: str | None = None,
) -> str:
    """Publish directly on the service's stream (not transactional; prefer ``outbox.emit``)."""
    return await client.publish_message(
        stream=service,
        event_type=event_type,
        service=service,
        data=data,
        priority=priority,
        user_id=user_id,
        correlation_id=correlation_id,
    )
