"""Consuming a partitioned service: each partition owned by one consumer at a time, in order.

A :class:`PartitionMember` is one process's member of a projection's consumers on one service
(decision 0014). Every renewal interval it reads the service's partitioning and the live
members, computes the same round-robin assignment as every other member, claims its partitions
(a lease with a fencing token), renews them, and gives back those now assigned to another
member. Each partition it owns is read by its own :class:`PartitionReader`: ``XREAD`` after the
partition's checkpoint, the batch applied in one transaction that first locks the partition row
and checks the fence (a stale owner's batch is refused and rolled back) and last moves the
checkpoint. The projection's group on each partition stream is moved to the checkpoint
afterwards (``XGROUP SETID``), so trimming and the monitor see it.

The epochs of a service are consumed one after the other: a partition of epoch ``e`` is claimed
only once every partition of the epochs before is drained (epoch 0, the unpartitioned stream,
by the projection's group there), so no aggregate's events are reordered by a change of the
partition count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as redis_errors

from outbox.envelope import MessagePriority
from outbox.errors import DecryptError, UpcastError
from outbox.metrics import ProjectionMetrics
from outbox.partitioning import Partition, Partitioning
from outbox.projections import queries
from outbox.projections.apply import Outcome, apply_batch, is_transient
from outbox.projections.projection import Connection, Projection
from outbox.queries import Query
from outbox.streams.codec import MalformedEntryError, StreamMessage, decode_entry
from outbox.streams.connection import RedisClient, backoff_delay_s, raw_pipeline, reply_text
from outbox.streams.consumer import entry_fields
from outbox.streams.dead_letter import DeadLetters, dead_letter_fields
from outbox.streams.errors import is_busygroup
from outbox.streams.keys import Keys

log = logging.getLogger("outbox.projections.partitions")

_PRIORITIES = (MessagePriority.CRITICAL, MessagePriority.HIGH, MessagePriority.NORMAL)


class StaleOwnerError(Exception):
    """The partition has another owner now (this one's lease ran out): the batch is refused."""


@dataclass(frozen=True)
class PartitionConfig:
    """What partitioned consumption uses (from the projection settings)."""

    batch_size: int = 500
    block_ms: int = 1000
    max_retries: int = 3
    retry_base_s: float = 0.2
    retry_cap_s: float = 10.0
    lease_s: float = 6.0
    schema: str = "public"

    @property
    def renew_s(self) -> float:
        """Renewal (and rebalancing) interval: a quarter of the lease."""
        return self.lease_s / 4


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def assignment(partitions: Sequence[Partition], members: Sequence[str]) -> dict[Partition, str]:
    """Partition ``i`` (in order) to member ``i % len(members)`` (in order): every member
    computes the same from the same lists."""
    ordered = sorted(members)
    return {p: ordered[i % len(ordered)] for i, p in enumerate(sorted(partitions))}


def claimable(
    partitioning: Partitioning,
    drained: Mapping[Partition, bool],
    epoch_zero_drained: bool,
) -> list[Partition]:
    """The partitions that may be consumed now: those of the oldest epoch (from 1) that still
    has undrained partitions, once every epoch before it is drained (epoch 0 by its group)."""
    if partitioning.epoch == 0 or not epoch_zero_drained:
        return []
    for epoch in range(1, partitioning.epoch + 1):
        pending = [p for p in partitioning.partitions_of(epoch) if not drained.get(p, False)]
        if pending:
            return pending
    return []


@dataclass
class Lease:
    partition: Partition
    fence: int
    checkpoints: dict[str, str]
    release: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class PartitionMember:
    """This process's member of ``projection``'s consumers on the partitioned ``service``."""

    def __init__(
        self,
        projection: Projection,
        service: str,
        consumer: str,
        *,
        redis: RedisClient,
        pool: Any,
        keys: Keys,
        letters: DeadLetters,
        config: PartitionConfig,
        stop: asyncio.Event,
        metrics: ProjectionMetrics | None = None,
    ) -> None:
        self.projection = projection
        self.metrics = metrics or ProjectionMetrics()
        self.service = service
        self.consumer = consumer
        self.redis = redis
        self.pool = pool
        self.keys = keys
        self.letters = letters
        self.config = config
        self.stop = stop
        self.leases: dict[Partition, Lease] = {}
        self.partitioning = Partitioning()

    def _member(self) -> dict[str, Any]:
        return {
            "projection": self.projection.name,
            "service": self.service,
            "member": self.consumer,
        }

    def _params(self, partition: Partition, **extra: Any) -> dict[str, Any]:
        return {
            "projection": self.projection.name,
            "service": self.service,
            "epoch": partition.epoch,
            "partition": partition.index,
            **extra,
        }

    async def _execute(self, db: Connection, query: Query, params: Mapping[str, Any]) -> Any:
        q = query.in_schema(self.config.schema)
        return await db.fetch(q.asyncpg_sql, *q.asyncpg_args(params))

    async def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    await self._rebalance()
                except (OSError, redis_errors.RedisError) as error:
                    log.warning(
                        "event=partition_rebalance_failed projection=%s service=%s error=%r",
                        self.projection.name,
                        self.service,
                        error,
                    )
                except Exception as error:
                    if not is_transient(error):
                        raise
                    log.warning("event=partition_rebalance_failed error=%r", error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), self.config.renew_s)
        finally:
            await self._give_back(list(self.leases))
            # Leaving: the others share the partitions out without waiting for the heartbeat
            # to age.
            with contextlib.suppress(Exception):
                async with self.pool.acquire() as db:
                    await self._execute(db, queries.MEMBER_GONE, self._member())

    # --- ownership ---------------------------------------------------------------------------

    async def _rebalance(self) -> None:
        async with self.pool.acquire() as db:
            await self._execute(db, queries.MEMBER_ALIVE, self._member())
            rows = await self._execute(db, queries.PARTITIONING, {"service": self.service})
            self.partitioning = Partitioning.from_row(rows[0] if rows else None)
            if self.partitioning.epoch == 0:
                return
            every = [p for p in self.partitioning.every_partition() if p.epoch > 0]
            await self._execute(
                db,
                queries.ENSURE_PARTITIONS,
                {
                    "projection": self.projection.name,
                    "service": self.service,
                    "epochs": [p.epoch for p in every],
                    "partitions": [p.index for p in every],
                },
            )
            state = await self._execute(
                db,
                queries.PARTITION_ROWS,
                {"projection": self.projection.name, "service": self.service},
            )
            members = [
                r["member"]
                for r in await self._execute(
                    db, queries.LIVE_MEMBERS, {**self._member(), "lease_s": self.config.lease_s}
                )
            ]
        if self.consumer not in members:
            members.append(self.consumer)
        drained = {Partition(r["epoch"], r["partition"]): bool(r["drained"]) for r in state}
        open_now = claimable(self.partitioning, drained, await self._epoch_zero_drained())
        mine = {p for p, member in assignment(open_now, members).items() if member == self.consumer}
        # Ours no longer: finish the batch in flight, then give it back.
        await self._give_back([p for p in self.leases if p not in mine])
        for partition in list(self.leases):
            await self._renew(self.leases[partition])
        for partition in sorted(mine - self.leases.keys()):
            await self._claim(partition)

    async def _claim(self, partition: Partition) -> None:
        async with self.pool.acquire() as db:
            rows = await self._execute(
                db,
                queries.CLAIM_PARTITION,
                self._params(partition, owner=self.consumer, lease_s=self.config.lease_s),
            )
        if not rows:
            return  # another member holds it until its lease runs out or it gives it back
        lease = Lease(partition, int(rows[0]["fence"]), json.loads(rows[0]["checkpoints"]))
        await self._ensure_groups(partition)
        lease.task = asyncio.create_task(
            PartitionReader(self, lease).run(),
            name=f"{self.projection.name}/{self.service}/{partition.epoch}.{partition.index}",
        )
        self.leases[partition] = lease
        log.info(
            "event=partition_claimed projection=%s service=%s epoch=%d partition=%d fence=%d "
            "consumer=%s",
            self.projection.name,
            self.service,
            partition.epoch,
            partition.index,
            lease.fence,
            self.consumer,
        )

    async def _renew(self, lease: Lease) -> None:
        if lease.task is not None and lease.task.done():
            self.leases.pop(lease.partition, None)  # drained, or refused as stale
            return
        async with self.pool.acquire() as db:
            rows = await self._execute(
                db,
                queries.RENEW_PARTITION,
                self._params(
                    lease.partition,
                    owner=self.consumer,
                    fence=lease.fence,
                    lease_s=self.config.lease_s,
                ),
            )
        if not rows:  # taken over after our lease ran out: stop at once
            lease.release.set()
            self.leases.pop(lease.partition, None)
            log.warning(
                "event=partition_lost projection=%s service=%s partition=%s consumer=%s",
                self.projection.name,
                self.service,
                lease.partition,
                self.consumer,
            )

    async def _give_back(self, partitions: Sequence[Partition]) -> None:
        for partition in partitions:
            lease = self.leases.pop(partition, None)
            if lease is None:
                continue
            lease.release.set()
            if lease.task is not None:
                with contextlib.suppress(Exception):
                    await lease.task
            with contextlib.suppress(Exception):
                async with self.pool.acquire() as db:
                    await self._execute(
                        db,
                        queries.RELEASE_PARTITION,
                        self._params(partition, owner=self.consumer, fence=lease.fence),
                    )

    # --- Redis --------------------------------------------------------------------------------

    def streams(self, partition: Partition) -> list[str]:
        return self.keys.streams_of(self.service, partition)

    async def _ensure_groups(self, partition: Partition) -> None:
        """The projection's group on each of the partition's streams, for trimming and the
        monitor (it is moved to the checkpoint, never read with)."""
        for key in self.streams(partition):
            try:
                await self.redis.xgroup_create(key, self.projection.name, id="0", mkstream=True)
            except redis_errors.ResponseError as error:
                if not is_busygroup(error):
                    raise

    async def _epoch_zero_drained(self) -> bool:
        """The unpartitioned streams: nothing pending and nothing undelivered for the group."""
        for key in self.keys.streams_of(self.service):
            try:
                info = await self.redis.xinfo_stream(key)
            except redis_errors.ResponseError as error:
                if "no such key" in str(error).lower():
                    continue
                raise
            last = reply_text(info["last-generated-id"])
            if not int(info["length"]):
                continue
            groups = {reply_text(g["name"]): g for g in await self.redis.xinfo_groups(key)}
            group = groups.get(self.projection.name)
            if group is None or int(group["pending"]):
                return False
            if _id(reply_text(group["last-delivered-id"])) < _id(last):
                return False
        return True


class PartitionReader:
    """Reads and applies one owned partition until it is given back, taken over or drained."""

    def __init__(self, member: PartitionMember, lease: Lease) -> None:
        self.member = member
        self.lease = lease
        self.keys = member.streams(lease.partition)
        self.attempts: dict[tuple[str, str], int] = {}

    @property
    def config(self) -> PartitionConfig:
        return self.member.config

    async def run(self) -> None:
        failures = 0
        while not (self.member.stop.is_set() or self.lease.release.is_set()):
            try:
                done = await self._round()
                failures = 0
                if done:
                    return
            except StaleOwnerError:
                log.warning(
                    "event=partition_fenced projection=%s partition=%s consumer=%s",
                    self.member.projection.name,
                    self.lease.partition,
                    self.member.consumer,
                )
                return
            except Exception as error:
                if not (
                    is_transient(error) or isinstance(error, (OSError, redis_errors.RedisError))
                ):
                    raise
                failures += 1
                delay = backoff_delay_s(failures, 0.1, 5.0)
                log.warning(
                    "event=partition_read_failed partition=%s error=%r retry_in_s=%.2f",
                    self.lease.partition,
                    error,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _read(self) -> list[tuple[str, str, dict[Any, Any]]]:
        """Up to a batch of entries after the checkpoints, CRITICAL streams first."""
        after = [self.lease.checkpoints.get(key, "0-0") for key in self.keys]
        command = (
            "XREAD",
            "COUNT",
            self.config.batch_size,
            "BLOCK",
            self.config.block_ms,
            "STREAMS",
            *self.keys,
            *after,
        )
        (reply,) = await raw_pipeline(self.member.redis, [command], raise_on_error=True)
        if not reply:
            return []
        pairs: Any = reply.items() if isinstance(reply, dict) else reply
        by_key: dict[str, list[tuple[str, str, dict[Any, Any]]]] = {}
        for stream, items in pairs:
            key = reply_text(stream)
            by_key[key] = [
                (key, reply_text(entry_id), entry_fields(flat)) for entry_id, flat in items if flat
            ]
        return [entry for key in self.keys for entry in by_key.get(key, ())]

    async def _round(self) -> bool:
        """One read and its batch; True when the partition is drained (and given up)."""
        entries = await self._read()
        if self.member.stop.is_set() or self.lease.release.is_set():
            return False  # not applied: the next owner reads them from the checkpoint
        if not entries:
            return await self._drained_if_sealed()
        messages: list[StreamMessage] = []
        malformed: list[tuple[str, str, dict[Any, Any], str]] = []
        for key, entry_id, fields in entries:
            try:
                messages.append(decode_entry(key, entry_id, fields))
            except MalformedEntryError as error:
                malformed.append((key, entry_id, fields, str(error)))
        for key, entry_id, fields, reason in malformed:
            await self._dead_letter(
                key, entry_id, fields, 1, f"MalformedEntryError: {reason}", "malformed"
            )
        done = {(key, entry_id) for key, entry_id, _, _ in malformed}
        outcome = await self._apply(messages, done)
        await self._move_groups()
        if outcome.failed:
            await self._retry_or_dead_letter(outcome, done)
        return False

    async def _apply(
        self, messages: Sequence[StreamMessage], done: set[tuple[str, str]]
    ) -> Outcome:
        member = self.member
        params = member._params(self.lease.partition, owner=member.consumer, fence=self.lease.fence)
        started = time.perf_counter()
        async with member.pool.acquire() as db, db.transaction():
            if not await member._execute(db, queries.CHECK_FENCE, params):
                raise StaleOwnerError(str(self.lease.partition))
            outcome = (
                await apply_batch(db, member.projection, messages, schema=self.config.schema)
                if messages
                else Outcome()
            )
            done.update((m.stream, m.id) for m in outcome.done)
            checkpoints = self._advanced(messages, done)
            await member._execute(
                db, queries.SAVE_CHECKPOINTS, {**params, "checkpoints": json.dumps(checkpoints)}
            )
        self.lease.checkpoints = checkpoints
        if messages:
            member.metrics.batch_applied(
                member.projection.name, outcome, time.perf_counter() - started
            )
        return outcome

    def _advanced(
        self, messages: Sequence[StreamMessage], done: set[tuple[str, str]]
    ) -> dict[str, str]:
        """Each stream's checkpoint moved over its entries that are done, up to the first that
        is not (a failed event, or one held behind it): that one is read again."""
        checkpoints = dict(self.lease.checkpoints)
        blocked: set[str] = set()
        ids: dict[str, list[str]] = {}
        for message in messages:
            ids.setdefault(message.stream, []).append(message.id)
        for key, entry_id in sorted(done - {(m.stream, m.id) for m in messages}):
            ids.setdefault(key, []).append(entry_id)  # dead-lettered as malformed
        for key, entry_ids in ids.items():
            for entry_id in sorted(set(entry_ids), key=_id):
                if key in blocked:
                    break
                if (key, entry_id) in done:
                    checkpoints[key] = entry_id
                else:
                    blocked.add(key)
        return checkpoints

    async def _retry_or_dead_letter(self, outcome: Outcome, done: set[tuple[str, str]]) -> None:
        """A failed event blocks its partition for its retries (order), then goes to dead
        letters and the partition goes on."""
        letters = []
        for message, error in outcome.failed:
            attempt = self.attempts.get((message.stream, message.id), 0) + 1
            self.attempts[(message.stream, message.id)] = attempt
            text = f"{error.__class__.__name__}: {error}"
            log.warning(
                "event=handler_failed projection=%s partition=%s id=%s attempts=%d error=%r",
                self.member.projection.name,
                self.lease.partition,
                message.id,
                attempt,
                text,
            )
            if attempt > self.config.max_retries or isinstance(error, (UpcastError, DecryptError)):
                letters.append((message, attempt, text, error))  # a missing upcaster/key stays
        if not letters:
            self.member.metrics.retries.labels(self.member.projection.name).inc(len(outcome.failed))
            attempt = max(self.attempts.values(), default=1)
            await asyncio.sleep(
                backoff_delay_s(attempt, self.config.retry_base_s, self.config.retry_cap_s)
            )
            return
        from outbox.projections.store import fields_of_message

        for message, attempt, text, error in letters:
            reason = (
                "decrypt_failed"
                if isinstance(error, DecryptError)
                else "upcast_failed"
                if isinstance(error, UpcastError)
                else "retries_exhausted"
            )
            await self._dead_letter(
                message.stream, message.id, fields_of_message(message), attempt, text, reason
            )
            self.attempts.pop((message.stream, message.id), None)
            done.add((message.stream, message.id))
        await self._apply([], done)
        await self._move_groups()

    async def _dead_letter(
        self,
        key: str,
        entry_id: str,
        fields: Mapping[Any, Any],
        attempts: int,
        error: str,
        reason: str = "retries_exhausted",
    ) -> None:
        self.member.metrics.dead_letters.labels(self.member.projection.name, reason).inc()
        await self.member.letters.add(
            dead_letter_fields(
                source_stream=key,
                group=self.member.projection.name,
                entry_id=entry_id,
                attempts=attempts,
                error=error,
                payload=fields,
                consumer=self.member.consumer,
            )
        )

    async def _move_groups(self) -> None:
        commands = [
            ("XGROUP", "SETID", key, self.member.projection.name, entry_id)
            for key, entry_id in self.lease.checkpoints.items()
        ]
        if commands:
            await raw_pipeline(self.member.redis, commands)

    async def _drained_if_sealed(self) -> bool:
        """An epoch's partition with a later epoch started and nothing left after its
        checkpoints is drained: marked so, and given up."""
        if self.member.partitioning.epoch <= self.lease.partition.epoch:
            return False
        for key in self.keys:
            try:
                info = await self.member.redis.xinfo_stream(key)
            except redis_errors.ResponseError as error:
                if "no such key" in str(error).lower():
                    continue
                raise
            last = reply_text(info["last-generated-id"])
            if int(info["length"]) and _id(last) > _id(self.lease.checkpoints.get(key, "0-0")):
                return False
        member = self.member
        async with member.pool.acquire() as db:
            await member._execute(
                db,
                queries.MARK_DRAINED,
                member._params(self.lease.partition, owner=member.consumer, fence=self.lease.fence),
            )
        log.info(
            "event=partition_drained projection=%s service=%s partition=%s",
            member.projection.name,
            member.service,
            self.lease.partition,
        )
        return True
