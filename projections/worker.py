"""One consumer of one projection: read, apply, ack; retries, dead letters, reclaim, heartbeat.

Life of a worker (consumer ``<stem>-<index>`` of group ``<projection>``):

1. **Own pending first.** XREADGROUP with id ``0`` returns what this consumer read but never
   acked before it stopped or crashed; that is applied before anything new.
2. **Batches.** Up to PROJECTION_BATCH_SIZE new entries, CRITICAL first (see
   :mod:`streams.consumer`), applied in one transaction (:mod:`projections.apply`), then one
   pipelined XACK. Malformed entries go to dead letters at once.
3. **Retries.** A failed event stays pending and is claimed again (XCLAIM, which increments the
   stream's delivery counter) after an exponential backoff with jitter; once the counter exceeds
   MAX_RETRIES it goes to the dead-letter stream and is acked. While an event waits for its
   retry, later events of the same aggregate wait too (per-aggregate order).
4. **Reclaim.** Every CLAIM_INTERVAL a bounded XAUTOCLAIM (CLAIM_COUNT entries per stream, idle
   at least CLAIM_MIN_IDLE_MS) takes over entries of consumers that died; consumers idle longer
   than DEAD_CONSUMER_IDLE_MS with nothing pending are then removed (XGROUP DELCONSUMER).
5. **Trimmed entries.** An entry trimmed from the stream while pending comes back from XREADGROUP
   ``0`` with no fields, and XCLAIM / XAUTOCLAIM report it deleted. When the event id is known
   (a retry) the event is re-read from the outbox by ``event_id``; otherwise the worker re-reads
   the outbox rows of that service and priority that this projection has not applied, from the
   inbox retention window up to the entry's time (its id's milliseconds + 60 s clock skew). The
   inbox makes over-fetching harmless.
6. **Stop.** When ``stop`` is set the worker finishes and acks the batch in hand and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, TypeVar

import asyncpg
from redis import exceptions as redis_errors

from outbox.envelope import MessagePriority
from outbox.errors import DecryptError, UpcastError
from outbox.metrics import ProjectionMetrics
from outbox.naming import DEFAULT_SCHEMA
from outbox.probes import Heartbeats
from outbox.projections import store
from outbox.projections.apply import Outcome, TransientError, apply_batch, is_transient
from outbox.projections.projection import Projection
from outbox.projections.tenants import NO_TENANTS, TenantView
from outbox.settings import Settings
from outbox.streams.codec import (
    MalformedEntryError,
    StreamMessage,
    decode_entry,
    entry_ms,
    is_marker,
)
from outbox.streams.connection import RedisClient, backoff_delay_s, raw_pipeline
from outbox.streams.consumer import Entry, GroupConsumer, ack_commands
from outbox.streams.dead_letter import DeadLetters, dead_letter_fields
from outbox.streams.errors import StreamsError, translate
from outbox.streams.keys import Keys

log = logging.getLogger("outbox.projections.worker")

#: Failures that retrying cannot help, dead-lettered at once, and their dead-letter reason.
_AT_ONCE: dict[type[BaseException], str] = {
    UpcastError: "upcast_failed",
    DecryptError: "decrypt_failed",
}

T = TypeVar("T")

#: Allowance for clock skew between PostgreSQL and Redis when re-reading trimmed entries.
CLOCK_SKEW_S = 60.0
REFETCH_LIMIT = 10_000
_PRIORITIES_ON_STREAM = {
    MessagePriority.NORMAL: [int(MessagePriority.LOW), int(MessagePriority.NORMAL)],
    MessagePriority.HIGH: [int(MessagePriority.HIGH)],
    MessagePriority.CRITICAL: [int(MessagePriority.CRITICAL)],
}


@dataclass(frozen=True)
class WorkerConfig:
    """The settings a worker uses (from :class:`~outbox.settings.Settings`)."""

    batch_size: int = 500
    block_ms: int = 1000
    max_retries: int = 3
    retry_base_s: float = 0.2
    retry_cap_s: float = 10.0
    claim_min_idle_ms: int = 30_000
    claim_interval_s: float = 5.0
    claim_count: int = 500
    dead_consumer_idle_ms: int = 600_000
    inbox_retention_s: int = 7 * 86400
    heartbeat_s: float = 5.0
    dead_letter_ttl_s: int = 86400
    schema: str = DEFAULT_SCHEMA
    #: Which outbox rows its streams carry, for re-reading trimmed entries (by tenant).
    tenants: TenantView = NO_TENANTS

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerConfig:
        return cls(
            batch_size=settings.projection_batch_size,
            block_ms=settings.projection_block_ms,
            max_retries=settings.max_retries,
            retry_base_s=settings.retry_base_delay_ms / 1000,
            retry_cap_s=settings.retry_max_delay_ms / 1000,
            claim_min_idle_ms=settings.claim_min_idle_ms,
            claim_interval_s=settings.claim_interval_s,
            claim_count=settings.claim_count,
            dead_consumer_idle_ms=settings.dead_consumer_idle_ms,
            inbox_retention_s=settings.inbox_retention_s,
            heartbeat_s=settings.projection_heartbeat_s,
            dead_letter_ttl_s=settings.dead_letter_ttl_s,
            schema=settings.outbox_schema,
            tenants=TenantView.for_settings(settings),
        )


@dataclass
class _Retry:
    message: StreamMessage
    due: float
    attempts: int


@dataclass
class _Letter:
    stream: str
    entry_id: str
    attempts: int
    error: str
    payload: Any
    #: For the dead-letter counter: malformed, retries_exhausted, upcast_failed,
    #: decrypt_failed.
    reason: str = "retries_exhausted"


_priority = attrgetter("priority")


def _held_back(message: StreamMessage, waiting: dict[str, int | None]) -> bool:
    """Whether ``message`` must wait: an earlier event of its aggregate waits for a retry.

    Only an earlier one holds it back. The events deferred behind a failed event wait for
    retries too; were they to hold back that failed event when it comes due first, each would
    wait for the other, a redelivery at a time.
    """
    if message.aggregate_id not in waiting:
        return False
    lowest = waiting[message.aggregate_id]
    return lowest is None or message.position is None or message.position > lowest


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class ProjectionWorker:
    """Consumer ``consumer`` of ``projection`` (see the module doc)."""

    def __init__(
        self,
        projection: Projection,
        *,
        redis: RedisClient,
        pool: Any,
        keys: Keys,
        consumer: str,
        config: WorkerConfig,
        stop: asyncio.Event,
        host: str = "",
        pid: int = 0,
        services: Sequence[str] | None = None,
        metrics: ProjectionMetrics | None = None,
        heartbeats: Heartbeats | None = None,
    ) -> None:
        self.projection = projection
        self.metrics = metrics or ProjectionMetrics()
        self.heartbeats = heartbeats or Heartbeats(stall_after_s=60.0)
        self.loop_name = f"{projection.name}/{consumer}"
        self.pool = pool
        self.keys = keys
        self.consumer = consumer
        self.config = config
        self.stop = stop
        self.host = host
        self.pid = pid
        streams = {
            priority: [keys.stream(service, priority) for service in services or projection.streams]
            for priority in (MessagePriority.CRITICAL, MessagePriority.HIGH, MessagePriority.NORMAL)
        }
        self.group = GroupConsumer(redis, projection.name, consumer, streams)
        self.redis = redis
        self.letters = DeadLetters(redis, keys, config.dead_letter_ttl_s)
        self.retries: dict[tuple[str, str], _Retry] = {}
        # Deliveries of an entry in which it was only held behind a failed event of its
        # aggregate (see _defer): the delivery counter counts them, but they are not attempts.
        # Without this, an event held through a few retries was dead-lettered on its own first
        # failure, never retried (tests/integration/test_projections_semantics.py).
        self.held: dict[tuple[str, str], int] = {}
        # Ids of applied entries whose XACK rides on the next XREADGROUP (one round trip for
        # both); any other ack or dead letter sent first takes them along (_flush).
        self.unacked: dict[str, list[str]] = defaultdict(list)
        # The connection batches are applied on, kept from one batch to the next. Handing it
        # back to the pool after every batch cost a round trip per batch: asyncpg resets a
        # released connection (pg_advisory_unlock_all, CLOSE ALL, UNLISTEN *, RESET ALL). It is
        # handed back, and so reset, after any error and when the worker ends.
        self.batch_db: Any = None
        self.counters = store.Counters()
        self.claim_cursor: dict[str, str] = {}
        self.batches = 0

    # --- the loop ---

    async def run(self) -> None:
        """Run until ``stop`` is set; in-flight work is finished and acked first."""
        self.heartbeats.beat(self.loop_name)
        try:
            await self._serve()
        finally:
            self.heartbeats.forget(self.loop_name)
            await self._release_batch_db()

    async def _serve(self) -> None:
        await self._until_done(self.group.ensure_groups)
        await self._db(
            lambda db: store.register_consumer(
                db,
                self.projection.name,
                self.consumer,
                self.host,
                self.pid,
                schema=self.config.schema,
            )
        )
        log.info(
            "event=consumer_started projection=%s consumer=%s", self.projection.name, self.consumer
        )
        await self._until_done(self._drain_own_pending)
        now = time.monotonic()
        next_claim = now
        next_beat = now + self.config.heartbeat_s
        failures = 0
        # Under a backlog the next batch is read while this one is applied (and acked), so Redis
        # and PostgreSQL work overlap instead of taking turns. It is only started after a full
        # batch: when the streams are nearly empty the next read is the blocking one.
        ahead: asyncio.Task[list[Entry]] | None = None
        while not self.stop.is_set() or ahead is not None:
            self.heartbeats.beat(self.loop_name)
            try:
                if ahead is None:
                    await self._retry_due()
                    if time.monotonic() >= next_claim:
                        await self._reclaim()
                        next_claim = time.monotonic() + self.config.claim_interval_s
                    entries = await self.group.read_new(
                        self.config.batch_size, self._block_ms(), ack=self.unacked
                    )
                    self.unacked = defaultdict(list)
                else:
                    task, ahead = ahead, None
                    entries = await task
                if len(entries) >= self.config.batch_size and not self.stop.is_set():
                    ahead = asyncio.create_task(self.group.read_new(self.config.batch_size, 0))
                if entries:
                    # The acks wait for the next read only when it is the next round trip: not
                    # when a read-ahead is already under way, nor when stopping.
                    defer = ahead is None and not self.stop.is_set()
                    await self._process(entries, defer_acks=defer)
                if time.monotonic() >= next_beat:
                    await self._heartbeat()
                    next_beat = time.monotonic() + self.config.heartbeat_s
                    self.heartbeats.reached("postgres")
                self.heartbeats.reached("redis")
                if entries:
                    self.heartbeats.reached("postgres")
                failures = 0
            except (StreamsError, TransientError, OSError, asyncpg.PostgresError) as error:
                if isinstance(error, StreamsError):
                    self.heartbeats.failed("redis", f"{type(error).__name__}: {error}")
                elif not isinstance(error, OSError):
                    self.heartbeats.failed("postgres", f"{type(error).__name__}: {error}")
                failures += 1
                delay = backoff_delay_s(failures, 0.1, 5.0)
                self.counters.last_error = f"{error.__class__.__name__}: {error}"
                log.warning(
                    "event=consumer_error projection=%s consumer=%s error=%r retry_in_s=%.2f",
                    self.projection.name,
                    self.consumer,
                    error,
                    delay,
                )
                await self._pause(delay)
                if self.stop.is_set() and ahead is not None and failures > 3:
                    # Entries read ahead stay pending: a restart (XREADGROUP 0) or XAUTOCLAIM
                    # takes them, and the inbox absorbs any repeat.
                    ahead.cancel()
                    ahead = None
        try:
            await self._flush({}, [])  # acks still waiting for a read
        except StreamsError as error:  # the entries stay pending; redelivery is harmless
            log.warning("event=final_ack_failed consumer=%s error=%r", self.consumer, error)
        try:
            await self._heartbeat()
            await self._db(
                lambda db: store.consumer_stopped(
                    db, self.projection.name, self.consumer, schema=self.config.schema
                )
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("event=final_heartbeat_failed consumer=%s error=%r", self.consumer, error)
        log.info(
            "event=consumer_stopped projection=%s consumer=%s", self.projection.name, self.consumer
        )

    def _block_ms(self) -> int:
        if not self.retries:
            return self.config.block_ms
        wait_ms = (min(r.due for r in self.retries.values()) - time.monotonic()) * 1000
        return max(1, min(self.config.block_ms, int(wait_ms) + 1))

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)

    async def _until_done(self, step: Callable[[], Awaitable[T]]) -> T | None:
        """Run a start-up step, retrying infrastructure failures until it works or we stop."""
        failures = 0
        while True:
            try:
                return await step()
            except (StreamsError, TransientError, OSError, asyncpg.PostgresError) as error:
                failures += 1
                if self.stop.is_set():
                    return None
                log.warning("event=consumer_start_retry consumer=%s error=%r", self.consumer, error)
                await self._pause(backoff_delay_s(failures, 0.1, 5.0))

    async def _release_batch_db(self) -> None:
        """Hand the batch connection back to the pool, which resets it (or drops it if broken)."""
        db, self.batch_db = self.batch_db, None
        if db is None:
            return
        try:
            await self.pool.release(db)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
            # The pool has terminated it and opens a new one on the next acquire.
            log.debug("event=batch_connection_dropped consumer=%s error=%r", self.consumer, error)

    async def _db(self, action: Callable[[Any], Awaitable[T]]) -> T:
        async with self.pool.acquire() as db:
            return await action(db)

    async def _heartbeat(self) -> None:
        counters = self.counters.take()
        await self._db(
            lambda db: store.heartbeat(
                db, self.projection.name, self.consumer, counters, schema=self.config.schema
            )
        )

    # --- reading ---

    async def _drain_own_pending(self) -> None:
        after: dict[str, str] = {}
        while True:
            entries = await self.group.read_pending(self.config.batch_size, after)
            if not entries:
                return
            for entry in entries:
                after[entry.stream] = entry.id
            log.info(
                "event=own_pending projection=%s consumer=%s entries=%d",
                self.projection.name,
                self.consumer,
                len(entries),
            )
            await self._process(entries)

    async def _retry_due(self) -> None:
        now = time.monotonic()
        due = [(key, retry) for key, retry in self.retries.items() if retry.due <= now]
        if not due:
            return
        by_stream: dict[str, list[str]] = defaultdict(list)
        in_memory: list[StreamMessage] = []
        for key, retry in due:
            del self.retries[key]
            if retry.message.id:
                by_stream[retry.message.stream].append(retry.message.id)
            else:
                in_memory.append(retry.message)
        entries: list[Entry] = []
        gone: list[str] = []
        for stream, ids in by_stream.items():
            ids.sort(key=_entry_order)
            claimed = await self.group.claim(stream, ids)
            entries.extend(claimed.entries)
            gone.extend(claimed.deleted)
        extra = list(in_memory)
        if gone:  # trimmed while waiting for the retry: we know their event ids
            known = {retry.message.id: retry.message for _, retry in due}
            event_ids = [known[i].event_id for i in gone if i in known]
            rows = await self._db(
                lambda db: store.outbox_by_event_ids(db, event_ids, schema=self.config.schema)
            )
            extra.extend(store.message_from_row(row, self.keys) for row in rows)
            log.warning(
                "event=trimmed_refetch projection=%s by=event_id entries=%d found=%d",
                self.projection.name,
                len(gone),
                len(rows),
            )
        await self._process(entries, extra)

    async def _reclaim(self) -> None:
        for stream in self.group.keys:
            claimed = await self.group.autoclaim(
                stream,
                self.config.claim_min_idle_ms,
                self.claim_cursor.get(stream, "0-0"),
                self.config.claim_count,
            )
            self.claim_cursor[stream] = claimed.next_start
            entries = [e for e in claimed.entries if (e.stream, e.id) not in self.retries]
            entries += [Entry(stream, i, {}) for i in claimed.deleted]
            if entries:
                log.info(
                    "event=reclaimed projection=%s consumer=%s stream=%s entries=%d deleted=%d",
                    self.projection.name,
                    self.consumer,
                    stream,
                    len(claimed.entries),
                    len(claimed.deleted),
                )
                await self._process(entries)
            await self.group.remove_dead_consumers(stream, self.config.dead_consumer_idle_ms)

    async def _refetch_trimmed(self, trimmed: Sequence[Entry]) -> list[StreamMessage]:
        by_stream: dict[str, list[Entry]] = defaultdict(list)
        for entry in trimmed:
            by_stream[entry.stream].append(entry)
        waiting = {retry.message.event_id for retry in self.retries.values()}
        messages: list[StreamMessage] = []
        for stream, entries in by_stream.items():
            parsed = self.keys.parse_stream(stream)
            if parsed is None:
                continue
            service, priority = parsed
            until_s = max(entry_ms(e.id) for e in entries) / 1000 + CLOCK_SKEW_S
            async with self.pool.acquire() as db:
                rows = await store.outbox_unapplied(
                    db,
                    projection=self.projection.name,
                    service=service,
                    priorities=_PRIORITIES_ON_STREAM[priority],
                    retention_s=self.config.inbox_retention_s,
                    until_s=until_s,
                    limit=REFETCH_LIMIT,
                    schema=self.config.schema,
                    tenants=self.config.tenants,
                )
            found = [store.message_from_row(row, self.keys) for row in rows]
            messages.extend(m for m in found if m.event_id not in waiting)
            log.warning(
                "event=trimmed_refetch projection=%s by=stream stream=%s entries=%d found=%d",
                self.projection.name,
                stream,
                len(entries),
                len(rows),
            )
        return messages

    # --- processing ---

    async def _process(
        self,
        entries: Sequence[Entry],
        extra: Sequence[StreamMessage] = (),
        *,
        defer_acks: bool = False,
    ) -> None:
        """Apply a delivered batch, then ack, dead-letter or schedule retries.

        ``defer_acks``: leave the acks to the next read (:attr:`unacked`) unless there are dead
        letters, which go out at once, before their entries' acks."""
        acks: dict[str, list[str]] = defaultdict(list)
        letters: list[_Letter] = []
        messages: list[StreamMessage] = []
        trimmed: list[Entry] = []
        append = messages.append
        for entry in entries:
            if not entry.fields:
                trimmed.append(entry)
                continue
            try:
                message = decode_entry(entry.stream, entry.id, entry.fields)
            except MalformedEntryError as error:
                letters.append(
                    _Letter(entry.stream, entry.id, 1, str(error), entry.fields, "malformed")
                )
                continue
            if is_marker(message):  # the original library's stream_initialized entry
                acks[entry.stream].append(entry.id)
                continue
            append(message)
        refetched = list(extra)
        if trimmed:
            refetched += await self._refetch_trimmed(trimmed)
        ready = messages
        deferred: list[StreamMessage] = []
        if self.retries:
            waiting = self._waiting_aggregates()
            ready = []
            for message in messages:
                (deferred if _held_back(message, waiting) else ready).append(message)
        # Higher priorities first; the sort is stable (also reversed), so stream order holds
        # within a priority.
        ready.sort(key=_priority, reverse=True)
        batch = ready + refetched
        started = time.perf_counter()
        outcome = await self._apply(batch)
        self.metrics.batch_applied(self.projection.name, outcome, time.perf_counter() - started)
        self.batches += 1
        for done in (outcome.applied, outcome.skipped, outcome.duplicates):
            for message in done:
                if message.id:
                    acks[message.stream].append(message.id)
        if self.held:
            for message in outcome.done:
                self.held.pop((message.stream, message.id), None)
        for entry in trimmed:  # their events were applied from the outbox (or already were)
            acks[entry.stream].append(entry.id)
        self.counters.processed += len(outcome.applied)
        self.counters.skipped += len(outcome.skipped)
        if outcome.skipped:
            log.debug(
                "event=skipped_unknown_types projection=%s types=%s",
                self.projection.name,
                sorted({m.event_type for m in outcome.skipped}),
            )
        await self._failed(outcome, letters, acks)
        for message in deferred + outcome.deferred:
            self._defer(message, letters)
        if defer_acks and not letters:
            for stream, ids in acks.items():
                self.unacked[stream] += ids
            return
        await self._flush(acks, letters)

    async def _apply(self, batch: Sequence[StreamMessage]) -> Outcome:
        attempt = 0
        while True:
            try:
                if self.batch_db is None:
                    self.batch_db = await self.pool.acquire()
                return await apply_batch(
                    self.batch_db, self.projection, batch, schema=self.config.schema
                )
            except BaseException as error:
                await self._release_batch_db()  # the pool resets it, or drops it if broken
                if not (isinstance(error, TransientError) or is_transient(error)):
                    raise
                failure = error
            attempt += 1
            if self.stop.is_set() and attempt > 3:
                # Nothing was acked: the entries stay pending and are redelivered later.
                raise TransientError(f"giving up the batch while stopping: {failure}")
            delay = backoff_delay_s(attempt, 0.1, 5.0)
            log.warning(
                "event=batch_retry projection=%s error=%r retry_in_s=%.2f",
                self.projection.name,
                failure,
                delay,
            )
            await asyncio.sleep(delay)

    async def _failed(
        self, outcome: Outcome, letters: list[_Letter], acks: dict[str, list[str]]
    ) -> None:
        if not outcome.failed:
            return
        by_stream: dict[str, list[str]] = defaultdict(list)
        for message, _ in outcome.failed:
            if message.id:
                by_stream[message.stream].append(message.id)
        counts: dict[tuple[str, str], int] = {}
        for stream, ids in by_stream.items():
            for entry_id, count in (await self.group.delivery_counts(stream, ids)).items():
                counts[(stream, entry_id)] = count
        now = time.monotonic()
        for message, error in outcome.failed:
            text = f"{error.__class__.__name__}: {error}"
            self.counters.failures += 1
            self.counters.last_error = text
            attempts = 1
            if message.id:
                delivered = counts.get((message.stream, message.id), 1)
                attempts = max(1, delivered - self.held.get((message.stream, message.id), 0))
            log.warning(
                "event=handler_failed projection=%s stream=%s id=%s event_type=%s attempts=%d "
                "error=%r",
                self.projection.name,
                message.stream,
                message.id or "-",
                message.event_type,
                attempts,
                text,
            )
            # A missing upcaster or key stays missing until a deploy: retrying it only blocks
            # the aggregate, so it goes to the dead letters at once (encrypted, as stored).
            at_once = _AT_ONCE.get(type(error))
            if not message.id or attempts > self.config.max_retries or at_once:
                self.held.pop((message.stream, message.id), None)
                letters.append(
                    _Letter(
                        message.stream,
                        message.id,
                        attempts,
                        text,
                        store.fields_of_message(message),
                        at_once or "retries_exhausted",
                    )
                )
                continue
            delay = backoff_delay_s(attempts, self.config.retry_base_s, self.config.retry_cap_s)
            self.retries[(message.stream, message.id)] = _Retry(message, now + delay, attempts)
            self.metrics.retries.labels(self.projection.name).inc()

    def _waiting_aggregates(self) -> dict[str, int | None]:
        """Aggregates with an event waiting for a retry, and the lowest outbox position waiting
        (None when an event without a position waits: then every event of it is held)."""
        waiting: dict[str, int | None] = {}
        for retry in self.retries.values():
            aggregate, position = retry.message.aggregate_id, retry.message.position
            if aggregate is None:
                continue
            if aggregate in waiting:
                lowest = waiting[aggregate]
                position = None if lowest is None or position is None else min(lowest, position)
            waiting[aggregate] = position
        return waiting

    def _defer(self, message: StreamMessage, letters: list[_Letter]) -> None:
        """Hold ``message`` until the earlier failed event of its aggregate is resolved."""
        if not message.id:
            letters.append(
                _Letter(
                    message.stream,
                    "",
                    0,
                    "re-fetched event held behind a failed event of its aggregate",
                    store.fields_of_message(message),
                )
            )
            return
        key = (message.stream, message.id)
        self.held[key] = self.held.get(key, 0) + 1  # this delivery was no attempt
        blockers = [
            retry.due
            for retry in self.retries.values()
            if retry.message.aggregate_id == message.aggregate_id
        ]
        due = (max(blockers) if blockers else time.monotonic()) + 0.001
        self.retries[(message.stream, message.id)] = _Retry(message, due, 0)

    async def _flush(self, acks: dict[str, list[str]], letters: Sequence[_Letter]) -> None:
        """Dead letters first, then every XACK (those waiting in :attr:`unacked` too), in one
        pipelined round trip."""
        if self.unacked:
            acks = {
                stream: [*self.unacked.get(stream, ()), *acks.get(stream, ())]
                for stream in {*self.unacked, *acks}
            }
        if not letters and not acks:
            return
        commands = [
            self.letters.add_command(
                dead_letter_fields(
                    source_stream=letter.stream,
                    group=self.projection.name,
                    entry_id=letter.entry_id,
                    attempts=letter.attempts,
                    error=letter.error,
                    payload=letter.payload,
                    consumer=self.consumer,
                )
            )
            for letter in letters
        ]
        commands += ack_commands(self.projection.name, acks)
        commands += [
            ("XACK", letter.stream, self.projection.name, letter.entry_id)
            for letter in letters
            if letter.entry_id
        ]
        for attempt in range(1, 6):
            try:
                # Packed by hiredis (raw_pipeline): redis-py packs a 500-id XACK in Python, which
                # cost the consumer more than Redis spends on it.
                await raw_pipeline(self.redis, commands, raise_on_error=True)
                self.unacked = defaultdict(list)
                break
            except redis_errors.RedisError as error:
                translated = translate(error, self.keys.dead_letter if letters else None)
                if attempt == 5:
                    raise translated from None
                log.warning("event=ack_retry error=%s attempt=%d", translated, attempt)
                await asyncio.sleep(backoff_delay_s(attempt, 0.1, 2.0))
        for letter in letters:
            self.counters.dead_lettered += 1
            self.metrics.dead_letters.labels(self.projection.name, letter.reason).inc()
            log.warning(
                "event=dead_lettered projection=%s stream=%s id=%s attempts=%d error=%r",
                self.projection.name,
                letter.stream,
                letter.entry_id or "-",
                letter.attempts,
                letter.error,
            )
