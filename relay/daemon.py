"""The relay daemon: reads committed outbox events and publishes them to Redis Streams.

Two tasks share one process:

* the **pump** reads the next batch of every leased service after its cursor (one query),
  publishes it (one Redis round trip), then stores the new cursors (one statement); it polls
  again at once while events keep coming and backs off while idle (:mod:`relay.wakeup`);
* the **control** task, every heartbeat, takes and gives back leases (:mod:`relay.leases`),
  writes the status row and, now and then, trims the streams (:mod:`relay.maintenance`).

Ordering and uniqueness (DESIGN.md invariants 2-4):

* The cursor ``(txid, position)`` only ever advances over events the relay has published, and a
  service's batch counts as published only when every one of its streams took it. A failure
  (Redis or PostgreSQL down, a stream refused) leaves the cursor where it was, and the same
  events are sent again later, in the same order; nothing later is sent first.
* Each stream's watermark is the cursor ``"<txid>:<position>"`` of the last event added to it,
  checked and moved by the same Lua call as the XADDs. It has to be the full cursor pair, not
  the position: positions are allotted at INSERT but become visible at COMMIT, so a transaction
  that commits later can carry *lower* positions than events already published (cursor order is
  txid first). A position watermark would drop those events as "already published"; a cursor
  watermark compares in exactly the order the relay publishes in.
* Because of the watermark, a re-sent batch adds nothing: a relay killed between XADD and its
  cursor commit, a cursor update lost with ``synchronous_commit = off``, or two relays on one
  service all end with every event in its stream exactly once.

Failure handling: Redis or PostgreSQL unavailable → the pump backs off with jitter and retries
the same batch on a fresh connection. A stream Redis refuses (WRONGTYPE, OOM) pauses only its
service, with the reason in the status row, and is retried with backoff. SIGTERM/SIGINT: the
batch in flight finishes, its cursor is committed, the leases are released, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from outbox import tracing
from outbox.metrics import RelayMetrics
from outbox.partitioning import Partitioning
from outbox.probes import Heartbeats
from outbox.relay.cursor import (
    Cursor,
    OutboxRow,
    OutboxStore,
    PgOutboxStore,
    beyond,
    cursor_of,
)
from outbox.relay.errors import (
    DatabaseMismatchError,
    DatabaseUnavailableError,
    LeaseLostError,
    RedisUnavailableError,
)
from outbox.relay.leases import Leases, LeaseSession
from outbox.relay.maintenance import trim_streams
from outbox.relay.marks import Marks
from outbox.relay.publisher import Publisher, RedisPublisher, ServiceOutcome, connect_redis
from outbox.relay.routing import Routing, load_routing
from outbox.relay.status import RelayStatus, default_instance_id
from outbox.relay.wakeup import AdaptivePoll, Backoff
from outbox.settings import Settings
from outbox.streams.connection import RedisClient
from outbox.streams.keys import Keys

log = logging.getLogger("outbox.relay")

_COMMIT_INTERVAL_S = 0.05


@dataclass
class _Paused:
    until: float
    backoff: Backoff


#: How often a relay deletes the status rows of relays silent for a day.
FORGET_INTERVAL_S = 3600.0


class Relay:
    """One relay process. Build with :meth:`from_settings`; run with :meth:`run`."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: OutboxStore,
        publisher: Publisher,
        leases: Leases,
        keys: Keys,
        instance_id: str,
        trim_client: RedisClient | None = None,
        routing: Routing | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.publisher = publisher
        self.leases = leases
        self.keys = keys
        #: The routing rules (decision 0018), None without any.
        self.routing = routing
        self.status = RelayStatus(instance_id=instance_id)
        self.poll = AdaptivePoll(
            settings.relay_poll_min_ms / 1000, settings.relay_poll_max_ms / 1000
        )
        self._trim_client = trim_client if settings.relay_trim_interval_s > 0 else None
        self._stopping = asyncio.Event()
        self._batch_lock = asyncio.Lock()
        self._releasing: set[str] = set()
        self._cursors: dict[str, Cursor] = {}
        self._committed: dict[str, Cursor] = {}
        self._marks = Marks(keys)
        # Services whose published events Redis lost: the furthest cursor reached before the
        # rewind. Until the cursor is back there, the service is publishing again, not behind.
        self._republishing: dict[str, Cursor] = {}
        self._paused: dict[str, _Paused] = {}
        # Set when Redis holds watermarks this database cannot have written
        # (_check_watermarks_here, once a heartbeat):
        # every round refuses with it until the relay is restarted on the right database.
        self._refusal: DatabaseMismatchError | None = None
        self._read_ahead: dict[str, tuple[Cursor, list[OutboxRow]]] = {}
        self._committed_at = 0.0
        # Each held service's epoch and partition count (decision 0014), read again every
        # heartbeat interval for the epochs `outbox partitions set` asks for.
        self._partitionings: dict[str, Partitioning] = {}
        self._partitionings_read_at = 0.0
        self.metrics = RelayMetrics()
        self.registry = self.metrics.registry
        # A loop counts as stalled when it has not turned for several of its longest waits.
        self.heartbeats = Heartbeats(
            stall_after_s=max(
                60.0,
                4 * settings.relay_retry_max_s,
                4 * settings.relay_heartbeat_interval_s,
                4 * settings.relay_poll_max_ms / 1000,
            )
        )

    # --- probes (outbox/probes.py) -----------------------------------------------------------

    def liveness(self) -> dict[str, str]:
        return self.heartbeats.liveness()

    def readiness(self) -> dict[str, str]:
        return self.heartbeats.readiness()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, exclusive: bool | None = None, instance_id: str | None = None
    ) -> Relay:
        """A relay on DATABASE_URL and REDIS_STREAMS_URL. ``exclusive=False`` bypasses leases."""
        instance = instance_id or settings.relay_instance_id or default_instance_id()
        keys = Keys.for_settings(settings)
        routing = load_routing(settings, keys)  # an invalid rule stops the relay here
        client = connect_redis(settings)
        relay: Relay
        leases = LeaseSession(
            settings.libpq_url(),
            instance,
            exclusive=settings.relay_leases if exclusive is None else exclusive,
            notify_channel=settings.relay_notify_channel,
            on_notify=lambda: relay.poll.wake(),
            schema=settings.outbox_schema,
        )
        relay = cls(
            settings,
            store=PgOutboxStore(
                settings.libpq_url(),
                f"outbox-relay {instance}",
                settings.max_retries,
                settings.outbox_schema,
                route_paths=None if routing is None else routing.data_paths,
                defer_after_s=settings.relay_defer_after_ms / 1000 or None,
            ),
            publisher=RedisPublisher(client, keys, routing, settings.tenant_streamed()),
            leases=leases,
            keys=keys,
            instance_id=instance,
            trim_client=client,
            routing=routing,
        )
        return relay

    # --- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask for a graceful stop: finish the batch, commit the cursor, release the leases."""
        if not self._stopping.is_set():
            log.info("event=relay_stopping instance=%s", self.status.instance_id)
        self._stopping.set()
        self.poll.wake()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        """Relay until :meth:`stop` is called; then shut down within RELAY_SHUTDOWN_GRACE_S."""
        log.info(
            "event=relay_started instance=%s leases=%s batch_size=%d routing_rules=%d",
            self.status.instance_id,
            type(self.leases).__name__,
            self.settings.relay_batch_size,
            0 if self.routing is None else len(self.routing.rules),
        )
        pump = asyncio.create_task(self._pump(), name="relay-pump")
        control = asyncio.create_task(self._control(), name="relay-control")
        try:
            stop_wait = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait(
                {pump, control, stop_wait}, return_when=asyncio.FIRST_COMPLETED
            )
            stop_wait.cancel()
            for task in done:
                if task is not stop_wait and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.stop()
            try:
                await asyncio.wait_for(asyncio.shield(pump), self.settings.relay_shutdown_grace_s)
            except TimeoutError:
                log.warning("event=relay_grace_expired instance=%s", self.status.instance_id)
                pump.cancel()
            except Exception:
                log.exception("event=relay_pump_failed instance=%s", self.status.instance_id)
            control.cancel()
            await asyncio.gather(pump, control, return_exceptions=True)
            await self._shutdown()

    async def _shutdown(self) -> None:
        self.status.streams = []
        self.status.stopped_at = datetime.now(UTC)
        with contextlib.suppress(LeaseLostError):
            await self._write_status()
        await self.leases.close()
        await self.publisher.close()
        await self.store.close()
        log.info(
            "event=relay_stopped instance=%s published=%d",
            self.status.instance_id,
            self.status.published_count,
        )

    # --- the pump ----------------------------------------------------------------------------

    def _active(self) -> set[str]:
        return set(self.leases.held) - self._releasing

    async def _pump(self) -> None:
        backoff = Backoff(self.settings.relay_retry_min_s, self.settings.relay_retry_max_s)
        while not self._stopping.is_set():
            self.heartbeats.beat("pump")
            try:
                async with self._batch_lock:
                    found, full = await self._pump_once()
                backoff.reset()
                if self._cursors:  # it read from PostgreSQL
                    self.heartbeats.reached("postgres")
                if found:  # and published to Redis
                    self.heartbeats.reached("redis")
            except (DatabaseUnavailableError, RedisUnavailableError) as error:
                self._read_ahead = {}
                delay = backoff.next_delay()
                self.status.record_error(str(error))
                database = isinstance(error, DatabaseUnavailableError)
                self.heartbeats.failed("postgres" if database else "redis", str(error))
                self.metrics.errors.labels("database" if database else "redis").inc()
                log.warning(
                    "event=relay_backoff error=%s delay_s=%.3f attempt=%d",
                    type(error).__name__,
                    delay,
                    backoff.failures,
                )
                await self.poll.wait(delay)
                continue
            except Exception as error:
                # A bug or an error nobody foresaw: report it and retry the same batch later
                # rather than stop relaying every service (the cursor has not moved).
                self._read_ahead = {}
                self.status.record_error(f"{type(error).__name__}: {error}")
                self.metrics.errors.labels("unexpected").inc()
                log.exception("event=relay_unexpected_error")
                await self.poll.wait(backoff.next_delay())
                continue
            await self.poll.wait(self.poll.after_poll(found, full))
        try:
            await self._commit_cursors(force=True)
        except DatabaseUnavailableError as error:
            # Harmless: the next relay re-reads from the older cursor and the watermark skips.
            log.warning("event=final_cursor_commit_failed error=%r", str(error))

    async def _pump_once(self) -> tuple[bool, bool]:
        """One batch of every ready service. Returns (any events read, some batch was full).

        When a batch is full (a backlog), the next one is read from PostgreSQL while Redis takes
        this one, so the two round trips overlap. A read-ahead batch is used only if the
        service's cursor is exactly where it was read from (this batch published).
        """
        if self._refusal is not None:
            raise self._refusal
        if not self.publisher.source:
            self.publisher.source = await self.store.source_id()
        active = self._active()
        for service in [s for s in self._cursors if s not in active]:
            self._cursors.pop(service)
            self._committed.pop(service, None)
            self._paused.pop(service, None)
            self._republishing.pop(service, None)
            self.status.stream_errors.pop(service, None)
            self._marks.forget(service)
            self._partitionings.pop(service, None)
        new = sorted(active - self._cursors.keys())
        if new:
            for service, stored in (await self.store.load(new)).items():
                self._cursors[service] = self._committed[service] = stored.cursor
                # Marks of keys of another layout (STREAM_KEY_LAYOUT changed), and of copies
                # no routing rule makes any more, name no lane this relay writes: they are
                # dropped at the next commit.
                self._marks.took(
                    service, {k: mark for k, mark in stored.marks.items() if self._keeps_mark(k)}
                )
        await self._follow_partitionings(active, force=bool(new))
        now = time.monotonic()
        ready = {
            s: self._cursors[s]
            for s in sorted(active)
            if s not in self._paused or self._paused[s].until <= now
        }
        if not ready:
            self._read_ahead = {}
            return False, False
        batches = await self._next_batches(ready)
        for service in [s for s in self._republishing if s in ready and s not in batches]:
            # Nothing left to read: the rest of what it had reached was pruned meanwhile.
            self._republished(service)
        if not batches:
            await self._commit_cursors()
            return False, False
        limit = self.settings.relay_batch_size
        full = any(len(rows) >= limit for rows in batches.values())
        if not full:
            await self._publish(batches)
            await self._commit_cursors()
            return True, False
        after = {s: cursor_of(batches[s][-1]) if s in batches else c for s, c in ready.items()}
        published, read_ahead = await asyncio.gather(
            self._publish(batches),
            self.store.fetch(after, limit, self._routed()),
            return_exceptions=True,
        )
        if isinstance(published, BaseException):
            raise published
        if isinstance(read_ahead, BaseException):
            raise read_ahead
        self._read_ahead = {s: (c, read_ahead.get(s, [])) for s, c in after.items()}
        await self._commit_cursors()
        return True, True

    async def _next_batches(self, ready: Mapping[str, Cursor]) -> dict[str, list[OutboxRow]]:
        batches: dict[str, list[OutboxRow]] = {}
        missing: dict[str, Cursor] = {}
        for service, cursor in ready.items():
            hit = self._read_ahead.get(service)
            if hit is None or hit[0] != cursor:
                missing[service] = cursor
            elif hit[1]:
                batches[service] = hit[1]
        # Used once: an empty read-ahead means "nothing then", so the next poll reads afresh.
        self._read_ahead = {}
        if missing:
            batches.update(
                await self.store.fetch(missing, self.settings.relay_batch_size, self._routed())
            )
        return batches

    def _keeps_mark(self, key: str) -> bool:
        if self.keys.parse_stream(key) is not None or self.keys.parse_tenant_stream(key):
            return True
        return (
            self.routing is not None
            and self.keys.parse_copy_watermark(key) is not None
            and (self.routing.keeps_mark(key))
        )

    def _routed(self) -> dict[str, int]:
        return {s: p.routed for s, p in self._partitionings.items() if p.routed > 1}

    def _epochs(self) -> dict[str, int]:
        return {s: p.epoch for s, p in self._partitionings.items() if p.epoch}

    async def _follow_partitionings(self, active: set[str], *, force: bool) -> None:
        """Read the held services' partitionings (every heartbeat interval, or now after new
        leases) and start any epoch asked for, at the service's cursor once committed: each
        event after it goes to the new epoch's streams (decision 0014)."""
        now = time.monotonic()
        if (
            not force
            and now - self._partitionings_read_at < self.settings.relay_heartbeat_interval_s
        ):
            return
        self._partitionings_read_at = now
        targets = [] if self.routing is None else self.routing.target_services()
        read = await self.store.partitionings(sorted(active | set(targets)))
        self._partitionings = {s: p for s, p in read.items() if s in active}
        if self.routing is not None:
            self._block_partitioned_targets({s: read[s] for s in targets})
        requested = [s for s, p in self._partitionings.items() if p.requested is not None]
        if not requested:
            return
        # What was published is committed first: the new epoch starts exactly there.
        await self._commit_cursors(force=True)
        for service in requested:
            started = await self.store.start_epoch(service, self._committed[service])
            if started is None:
                continue
            self._partitionings[service] = started
            self._read_ahead.pop(service, None)  # read with the old partition count
            log.info(
                "event=partition_epoch_started service=%s epoch=%d partitions=%d since=%s",
                service,
                started.epoch,
                started.partitions,
                self._committed[service],
            )

    def _block_partitioned_targets(self, targets: Mapping[str, Partitioning]) -> None:
        """A partitioned service's own stream is sealed (decision 0014): routing rules cannot
        write to it, so the origins whose events they would copy there wait (their cursors do
        not move, nothing is skipped) with the reason in ``stream_errors``."""
        assert self.routing is not None
        blocked = {
            service: f"routing target {service} is partitioned (decision 0014); routing rules "
            "can only write unpartitioned streams"
            for service, p in targets.items()
            if p.epoch or p.requested is not None
        }
        if blocked != self.routing.blocked:
            self.routing.blocked = blocked
            if blocked:
                log.warning("event=routing_target_partitioned services=%s", ",".join(blocked))

    async def _publish(self, batches: Mapping[str, Sequence[OutboxRow]]) -> None:
        started = time.perf_counter()
        with tracing.relay_publish(batches):
            outcomes = await self.publisher.publish(batches, self._marks.by_stream, self._epochs())
        self.metrics.publish_duration.observe(time.perf_counter() - started)
        self._observe(batches, outcomes)
        for service, outcome in outcomes.items():
            self._marks.took(service, outcome.marks)
            if outcome.behind:
                self._rewind(service, outcome.behind)
                continue
            if outcome.refused is not None:
                self._refuse(service, str(outcome.refused))
                continue
            self._cursors[service] = cursor_of(batches[service][-1])
            self.status.published_count += outcome.published + outcome.copied
            target = self._republishing.get(service)
            if target is not None and target <= self._cursors[service]:
                self._republished(service)
            if self._paused.pop(service, None) is not None:
                self.status.stream_errors.pop(service, None)
                log.info("event=stream_resumed service=%s", service)
            log.debug(
                "event=batch_published service=%s published=%d skipped=%d copied=%d cursor=%s",
                service,
                outcome.published,
                outcome.skipped,
                outcome.copied,
                self._cursors[service],
            )

    def _observe(
        self, batches: Mapping[str, Sequence[OutboxRow]], outcomes: Mapping[str, ServiceOutcome]
    ) -> None:
        now = time.time()
        metrics = self.metrics
        for service, outcome in outcomes.items():
            if outcome.behind or outcome.refused is not None:
                continue
            rows = batches[service]
            metrics.batch_size.observe(len(rows), service)
            metrics.published.labels(service).inc(outcome.published)
            if outcome.skipped:
                metrics.skipped.labels(service).inc(outcome.skipped)
            # The watermark skips a prefix of the batch: the rest was added now (with routing
            # rules, events routed away count as copies, and a routed row is counted once).
            count = min(len(rows), outcome.published + outcome.copied)
            added = rows[len(rows) - count :] if count else ()
            metrics.emit_to_publish.observe_many(
                [now - row["occurred_s"] for row in added], service
            )

    def _rewind(self, service: str, behind: Mapping[str, str]) -> None:
        """Redis no longer holds events it took: re-read the service from what it still holds.

        A stream's watermark behind what this relay (or the one before it, through the stored
        marks) saw it take means Redis lost acknowledged writes: a failover to a replica that
        had not received them, a crash with ``appendfsync everysec``, a restart without
        persistence, a deleted key. The script added nothing, so no later event went past the
        gap; the cursor goes back to the lowest watermark found (the start when a stream has
        none) and the events from there are sent again. Streams that still hold them skip them
        by their watermark; consumers' inboxes absorb any they had already applied.
        """
        back_to = self._marks.rewind(service, behind)
        reached = max(self._cursors[service], self._republishing.get(service, back_to))
        if back_to < reached:
            self._republishing[service] = reached
        self._cursors[service] = min(self._cursors[service], back_to)
        self.status.redis_losses += 1
        lost = ", ".join(
            f"{stream} holds {behind[stream] or 'nothing'}" for stream in sorted(behind)
        )
        self.status.record_error(
            f"{service}: Redis lost published events ({lost}); re-publishing from {back_to}"
        )
        log.warning(
            "event=redis_lost_events service=%s streams=%r republish_from=%s",
            service,
            lost,
            back_to,
        )

    def _republished(self, service: str) -> None:
        if self._republishing.pop(service, None) is not None:
            cursor = self._cursors.get(service)
            log.info("event=redis_losses_republished service=%s cursor=%s", service, cursor)

    def _refuse(self, service: str, reason: str) -> None:
        paused = self._paused.get(service)
        if paused is None:
            paused = self._paused[service] = _Paused(
                0.0, Backoff(self.settings.relay_retry_min_s, self.settings.relay_retry_max_s)
            )
        delay = paused.backoff.next_delay()
        paused.until = time.monotonic() + delay
        self.status.stream_errors[service] = reason
        self.status.record_error(f"{service}: {reason}")
        log.warning(
            "event=stream_refused service=%s reason=%r retry_in_s=%.3f", service, reason, delay
        )

    async def _commit_cursors(self, *, force: bool = False) -> None:
        """Store the cursors that moved, at most every _COMMIT_INTERVAL_S unless forced.

        Under a steady trickle the relay runs hundreds of small batches a second; a cursor
        UPDATE after each would be write load on the emitters' database for nothing: after a
        crash, re-reading a few milliseconds of events costs one batch that the watermark skips.
        """
        now = time.monotonic()
        if not force and now - self._committed_at < _COMMIT_INTERVAL_S:
            return
        dirty = {s: c for s, c in self._cursors.items() if self._committed.get(s) != c}
        if dirty:
            await self.store.advance(dirty, {service: self._marks.of(service) for service in dirty})
            self._committed.update(dirty)
        self._committed_at = now

    # --- the control task ----------------------------------------------------------------------

    async def _control(self) -> None:
        backoff = Backoff(self.settings.relay_retry_min_s, self.settings.relay_retry_max_s)
        next_trim = time.monotonic() + min(5.0, self.settings.relay_trim_interval_s)
        next_forget = time.monotonic()
        while not self._stopping.is_set():
            self.heartbeats.beat("control")
            try:
                await self._heartbeat()
                if time.monotonic() >= next_forget:
                    # Status rows of relays silent for a day (docs/relay.md).
                    await self.leases.forget_old_instances()
                    next_forget = time.monotonic() + FORGET_INTERVAL_S
                backoff.reset()
                self.heartbeats.reached("postgres")
            except LeaseLostError as error:
                self.heartbeats.failed("postgres", str(error))
                self.status.record_error(str(error))
                log.warning("event=lease_session_lost error=%r", str(error))
                await asyncio.sleep(backoff.next_delay())
                continue
            except Exception as error:
                self.status.record_error(f"{type(error).__name__}: {error}")
                log.exception("event=relay_control_error")
                await asyncio.sleep(backoff.next_delay())
                continue
            if self._trim_client is not None and time.monotonic() >= next_trim:
                next_trim = time.monotonic() + self.settings.relay_trim_interval_s
                await self._trim()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), self.settings.relay_heartbeat_interval_s
                )

    async def _heartbeat(self) -> None:
        acquired, excess = await self.leases.rebalance()
        if excess:
            # Let the batch in flight finish and commit its cursor before another relay takes
            # the service over (it would only re-read what the watermark skips, but why bother).
            self._releasing |= excess
            async with self._batch_lock:
                with contextlib.suppress(DatabaseUnavailableError):
                    await self._commit_cursors(force=True)
            try:
                await self.leases.release(excess)
            finally:
                self._releasing -= excess
            log.info("event=lease_released services=%s", ",".join(sorted(excess)))
        if acquired:
            log.info("event=lease_acquired services=%s", ",".join(sorted(acquired)))
            self.poll.wake()
        await self._check_marks()
        self.status.streams = sorted(self.leases.held)
        self.metrics.leased.set(len(self.status.streams))
        await self._write_status()

    async def _check_marks(self) -> None:
        """Compare every stream's watermark with its mark, once a heartbeat (decision 0011).

        The publish script finds a loss on a stream that gets a batch. This finds it on the
        others too: a stream whose events Redis lost and which has no new event would
        otherwise wait for one before its lost events were published again.
        """
        if not self._marks.by_stream:
            return
        async with self._batch_lock:
            try:
                held = await self.publisher.watermarks(sorted(self._marks.by_stream))
            except RedisUnavailableError:
                return  # the pump backs off and reports what is wrong with Redis
            await self._check_watermarks_here(held)
            behind = {
                service: streams
                for service, streams in self._marks.behind(held).items()
                if service in self._cursors
            }
            for service, streams in behind.items():
                self._rewind(service, streams)
        if behind:
            self.poll.wake()

    async def _check_watermarks_here(self, held: Mapping[str, str | None]) -> None:
        """Refuse to go on when a watermark is at or beyond the database's next transaction id
        (read after the watermarks, so no event published since can be above it): Redis holds
        events of transactions this database never had. It is an asynchronous replica promoted
        before it received them, or a restored copy, and would hand those txids out again: their
        events would be skipped (docs/operations.md, "A database restored or replaced")."""
        try:
            next_txid = await self.store.next_txid()
        except DatabaseUnavailableError:
            return  # the pump backs off and reports it
        marks = {}
        for key, mark in held.items():
            with contextlib.suppress(ValueError):  # a malformed one is the loss check's
                if mark is not None:
                    marks[key] = Cursor.parse(mark)
        ahead = [f"{key} at {mark}" for key, mark in beyond(next_txid, marks).items()]
        if ahead and self._refusal is None:
            self._refusal = DatabaseMismatchError(
                f"Redis holds watermarks at or beyond this database's next transaction id "
                f"{next_txid} ({', '.join(ahead[:5])}): they were published from a "
                "database this one is not (an asynchronous replica promoted before it had them, "
                "or a restored copy), and its new events would be skipped. Nothing is published; "
                "see docs/operations.md, 'A database restored or replaced'."
            )
            log.error("event=database_behind_redis error=%r", str(self._refusal))

    async def _write_status(self) -> None:
        # The cursors are formatted here, once a heartbeat, rather than after every batch.
        self.status.cursors = {s: str(c) for s, c in self._cursors.items()}
        self.status.republishing = {
            s: str(self._cursors[s]) for s in self._republishing if s in self._cursors
        }
        await self.leases.write_status(self.status)

    async def _trim(self) -> None:
        if self._trim_client is None:
            return
        streams = [
            stream
            for s in sorted(self.leases.held)
            for partition in self._partitionings.get(s, Partitioning()).every_partition()
            for stream in self.keys.streams_of(s, partition)
        ]
        # Tenants' streams (TENANT_STREAMS) are known by the marks of the services held; their
        # dead letters are the tenants' own.
        tenant_streams = {
            key: parsed[0]
            for s in self.leases.held
            for key in self._marks.of(s)
            if (parsed := self.keys.parse_tenant_stream(key)) is not None
        }
        streams += sorted(tenant_streams)
        if self.routing is not None:
            # Every relay with the rules trims their targets: the trim script never removes
            # what a group still needs, so trimming one stream twice is harmless.
            streams += [s for s in self.routing.target_streams() if s not in streams]
        try:
            results = await trim_streams(
                self._trim_client,
                streams,
                retention_s=self.settings.relay_stream_retention_s,
                dead_letter=self.keys.dead_letter,
                dead_letter_ttl_s=self.settings.dead_letter_ttl_s,
                tenant_dead_letters=[
                    self.keys.for_tenant(t).dead_letter
                    for t in sorted(set(tenant_streams.values()))
                ],
            )
        except RedisUnavailableError as error:
            log.warning("event=trim_failed error=%r", str(error))
            return
        for result in results:
            if result.error is not None:
                log.warning("event=trim_failed stream=%s error=%r", result.stream, result.error)
            elif result.trimmed:
                log.info(
                    "event=stream_trimmed stream=%s trimmed=%d minid=%s",
                    result.stream,
                    result.trimmed,
                    result.minid,
                )


async def run_until_signalled(
    relay: Relay, stop_requested: Callable[[], bool] = lambda: False
) -> None:
    """Run ``relay``; SIGTERM or SIGINT stops it gracefully, a second one at once.

    ``stop_requested`` tells whether a signal already came before the loop's handlers were in
    place (the CLI records signals from its first line on)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_signal(signum: int) -> None:
        if relay.stopping and task is not None:
            log.warning("event=relay_signal_again signal=%s", signal.Signals(signum).name)
            task.cancel()
        else:
            log.info("event=relay_signal signal=%s", signal.Signals(signum).name)
            relay.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    if stop_requested():
        relay.stop()
    try:
        await relay.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
