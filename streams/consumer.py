"""Consumer-group reads for one group and consumer: pending first, priority-weighted, claim, ack.

Every command goes through :meth:`GroupConsumer._call`, which translates redis-py errors and
creates a missing group (NOGROUP) on first use. Entries are returned raw (:class:`Entry`); an
entry whose ``fields`` are empty was trimmed away while it was pending: XREADGROUP with id ``0``
returns such entries with nil fields (redis-py gives ``{}``), and XCLAIM / XAUTOCLAIM drop them
from the PEL and report them deleted (Redis 7.0+,
https://redis.io/docs/latest/commands/xautoclaim/).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from outbox.envelope import MessagePriority
from outbox.streams.connection import RedisClient, raw_pipeline, reply_text
from outbox.streams.errors import is_busygroup, is_nogroup, translate

log = logging.getLogger("outbox.streams.consumer")

T = TypeVar("T")

#: Relative share of a batch each priority stream gets when every stream has a backlog. A share a
#: higher stream does not use flows down to the next; NORMAL (which carries LOW) always keeps
#: 2/14 of a full batch, so it is never starved (docs/decisions/0005-priorities.md).
PRIORITY_WEIGHTS: Mapping[MessagePriority, int] = {
    MessagePriority.CRITICAL: 8,
    MessagePriority.HIGH: 4,
    MessagePriority.NORMAL: 2,
}


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as delivered to this consumer; empty ``fields`` means trimmed."""

    stream: str
    id: str
    fields: Mapping[Any, Any]
    priority: MessagePriority = MessagePriority.NORMAL

    @property
    def trimmed(self) -> bool:
        return not self.fields


@dataclass(frozen=True, slots=True)
class Claimed:
    """What XAUTOCLAIM / XCLAIM returned: live entries, and ids that no longer exist."""

    entries: list[Entry]
    deleted: list[str]
    next_start: str = "0-0"


def _unparsed(response: Any, **options: Any) -> Any:
    return response


def entry_fields(flat: Sequence[Any]) -> dict[Any, Any]:
    """An entry's ``[field, value, …]`` reply as a dict, decoded to str in one pass.

    Joining every part with NUL and decoding once costs about a third of decoding each part on
    its own (about 1.2 µs an event of the 15-field entries the relay writes, measured). A part
    that holds a NUL byte itself would split wrongly, and one that is not UTF-8 cannot be
    decoded: both keep their bytes, which :func:`streams.codec.decode_entry` then decodes or
    rejects as before.
    """
    try:
        parts: Sequence[Any] = b"\0".join(flat).decode("utf-8").split("\0")
    except (TypeError, UnicodeDecodeError):  # str parts (a decoding client), or not UTF-8
        parts = flat
    else:
        if len(parts) != len(flat):
            parts = flat
    pairs = iter(parts)
    return dict(zip(pairs, pairs, strict=False))


def ack_commands(group: str, ids_by_stream: Mapping[str, Sequence[str]]) -> list[tuple[Any, ...]]:
    """One XACK per stream that has ids (for :func:`streams.connection.raw_pipeline`)."""
    return [("XACK", key, group, *ids) for key, ids in ids_by_stream.items() if ids]


class GroupConsumer:
    """Reads, claims and acks for one consumer of one group over a set of streams.

    ``streams`` maps each priority (CRITICAL, HIGH, NORMAL) to its stream keys; reads serve
    higher priorities first with :data:`PRIORITY_WEIGHTS`.
    """

    def __init__(
        self,
        redis: RedisClient,
        group: str,
        consumer: str,
        streams: Mapping[MessagePriority, Sequence[str]],
    ) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.tiers = [
            (priority, list(streams.get(priority, ())))
            for priority in sorted(PRIORITY_WEIGHTS, reverse=True)
            if streams.get(priority)
        ]
        self.priority_of = {key: priority for priority, keys in self.tiers for key in keys}
        self.keys = [key for _, keys in self.tiers for key in keys]
        self.new_ids = [">"] * len(self.keys)
        weights = [PRIORITY_WEIGHTS[priority] for priority, _ in self.tiers]
        self.total_weight = sum(weights)
        self.min_weight = min(weights)
        # XREADGROUP goes through a client on the same connection pool that leaves the reply as
        # the server sent it: redis-py's reply parsing builds a dict and a tuple per entry which
        # _read_entries would rebuild anyway (about 4 µs an event of a 500-entry read, measured).
        # On a cluster, reads go through raw_pipeline to the node of their keys, which leaves
        # replies unparsed too (a consumer's keys are one service's: one slot).
        pool = getattr(redis, "connection_pool", None)
        self._reader: Any = None
        if pool is not None and not isinstance(redis, RedisCluster):
            self._reader = aioredis.Redis(connection_pool=pool)
            self._reader.set_response_callback("XREADGROUP", _unparsed)

    async def _call(self, keys: Iterable[str], command: Callable[[], Awaitable[T]]) -> T:
        try:
            return await command()
        except redis_errors.ResponseError as error:
            if not is_nogroup(error):
                raise translate(error, ", ".join(keys)) from None
        except redis_errors.RedisError as error:
            raise translate(error, ", ".join(keys)) from None
        await self.ensure_groups(keys)
        try:
            return await command()
        except redis_errors.RedisError as error:
            raise translate(error, ", ".join(keys)) from None

    async def ensure_groups(self, keys: Iterable[str] | None = None) -> None:
        """Create the group on each stream (and the stream) from its start; BUSYGROUP is fine."""
        for key in keys if keys is not None else self.keys:
            try:
                # id 0: a new group sees every entry still in the stream; history older than
                # the stream's retention comes from `outbox projections rebuild`.
                await self.redis.xgroup_create(key, self.group, id="0", mkstream=True)
                log.info("event=group_created stream=%s group=%s", key, self.group)
            except redis_errors.ResponseError as error:
                if not is_busygroup(error):
                    raise translate(error, key) from None
            except redis_errors.RedisError as error:
                raise translate(error, key) from None

    def _read_entries(self, response: Any) -> dict[str, list[Entry]]:
        """Entries per stream key from an XREADGROUP reply as the server sent it (see
        ``_reader``), or from ``[(stream, entries)]`` as redis-py parses XCLAIM/XAUTOCLAIM."""
        if not response:
            return {}
        # RESP3 replies with a map of stream -> entries, RESP2 with a list of [stream, entries].
        pairs = response.items() if isinstance(response, dict) else response
        by_key: dict[str, list[Entry]] = {}
        for stream, items in pairs:
            key = stream if stream.__class__ is str else reply_text(stream)
            priority = self.priority_of.get(key, MessagePriority.NORMAL)
            entries: list[Entry] = []
            append = entries.append
            for entry_id, flat in items:
                if entry_id is None:
                    continue
                if flat.__class__ is dict:  # a client with redis-py's reply parsing
                    fields = flat
                elif flat:
                    fields = entry_fields(flat)
                else:  # nil: trimmed while pending
                    fields = {}
                append(
                    Entry(
                        key,
                        entry_id if entry_id.__class__ is str else reply_text(entry_id),
                        fields,
                        priority,
                    )
                )
            by_key[key] = entries
        return by_key

    async def _read(
        self,
        keys: Sequence[str],
        ids: Sequence[str],
        count: int,
        block_ms: int | None = None,
        ack: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, list[Entry]]:
        args: list[Any] = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count]
        if block_ms is not None:
            args += ("BLOCK", block_ms)
        args += ("STREAMS", *keys, *ids)
        acks = ack_commands(self.group, ack or {})
        if acks:
            response = await self._call(keys, lambda: self._ack_then_read(acks, args))
        else:
            response = await self._call(keys, lambda: self._read_unparsed(args))
        return self._read_entries(response)

    async def _read_unparsed(self, args: list[Any]) -> Any:
        if self._reader is not None:
            return await self._reader.execute_command(*args)
        (reply,) = await raw_pipeline(self.redis, [tuple(args)], raise_on_error=True)
        return reply

    async def _ack_then_read(self, acks: list[tuple[Any, ...]], read: list[Any]) -> Any:
        """The XACKs and the XREADGROUP in one write, one round trip instead of two. Redis runs
        them in order, so the acks are done before the read blocks."""
        replies = await raw_pipeline(self.redis, [*acks, tuple(read)])
        for reply in replies:
            if isinstance(reply, redis_errors.ResponseError):
                raise reply
        return replies[-1]

    async def read_pending(self, count: int, after: Mapping[str, str] | None = None) -> list[Entry]:
        """This consumer's own pending entries (XREADGROUP id 0), after the given ids per key.

        Used on start: entries delivered before a crash are processed before anything new.
        """
        start = after or {}
        by_key = await self._read(self.keys, [start.get(key, "0") for key in self.keys], count)
        return [entry for key in self.keys for entry in by_key.get(key, ())]

    async def read_new(
        self, batch_size: int, block_ms: int, ack: Mapping[str, Sequence[str]] | None = None
    ) -> list[Entry]:
        """Up to about ``batch_size`` new entries, CRITICAL first, weighted (see module doc).

        Blocks up to ``block_ms`` only when every stream is empty. ``ack``: ids per stream to
        XACK first, sent in the same write as the read (the previous batch's, once applied).

        One XREADGROUP over every stream takes up to the smallest share of the batch from each
        (and is the blocking read when all are empty); only streams that filled it may hold
        more, and they are then read up to their weighted quota, highest priority first, and
        topped up. Without a backlog a round is one round trip, with a backlog on one stream
        two, where a read per priority stream cost three before the first entry came back.
        """
        first = max(
            1, min(batch_size * self.min_weight // self.total_weight, batch_size // len(self.keys))
        )
        got = await self._read(
            self.keys, self.new_ids, first, block_ms if block_ms > 0 else None, ack
        )
        if not got:
            return []
        more = {key for key, items in got.items() if len(items) >= first}
        if not more:
            return [entry for key in self.keys for entry in got.get(key, ())]
        entries: list[Entry] = []
        read_after = [sum(len(got.get(key, ())) for key in keys) for _, keys in self.tiers]
        carry = 0
        filled: list[list[str]] = []
        for index, (priority, keys) in enumerate(self.tiers):
            mine = [entry for key in keys for entry in got.get(key, ())]
            later = sum(read_after[index + 1 :])
            if index == len(self.tiers) - 1:
                quota = batch_size - len(entries)
            else:
                share = batch_size * PRIORITY_WEIGHTS[priority] // self.total_weight + carry
                quota = min(share, batch_size - len(entries) - later)
            busy = [key for key in keys if key in more]
            if busy and quota > len(mine):
                per_key = -(-(quota - len(mine)) // len(busy))
                extra = await self._read(busy, [">"] * len(busy), per_key)
                mine += [entry for key in busy for entry in extra.get(key, ())]
                busy = [key for key in busy if len(extra.get(key, ())) >= per_key]
            carry = max(0, quota - len(mine))
            if busy:
                filled.append(busy)
            entries += mine
        for keys in filled:  # top up from streams with a backlog, highest first
            room = batch_size - len(entries)
            if room <= 0:
                break
            extra = await self._read(keys, [">"] * len(keys), room)
            for key in keys:
                entries += extra.get(key, ())
        return entries

    async def ack(self, ids_by_stream: Mapping[str, Sequence[str]]) -> None:
        """XACK every id, one pipelined round trip for all streams."""
        commands = ack_commands(self.group, ids_by_stream)
        if not commands:
            return
        try:
            # Packed by hiredis: redis-py's own packing of a 500-id XACK costs more than Redis's
            # work on it.
            await raw_pipeline(self.redis, commands, raise_on_error=True)
        except redis_errors.RedisError as error:
            keys = ", ".join(key for key, ids in ids_by_stream.items() if ids)
            raise translate(error, keys) from None

    async def claim(self, stream: str, ids: Sequence[str]) -> Claimed:
        """Take ``ids`` into this consumer now (XCLAIM, min idle 0): a redelivery for a retry.

        XCLAIM increments each entry's delivery counter; ids it does not return were trimmed.
        """
        response = await self._call(
            [stream], lambda: self.redis.xclaim(stream, self.group, self.consumer, 0, list(ids))
        )
        entries = self._read_entries([(stream, response)]).get(stream, [])
        returned = {entry.id for entry in entries}
        return Claimed(entries, [i for i in ids if i not in returned])

    async def autoclaim(self, stream: str, min_idle_ms: int, start: str, count: int) -> Claimed:
        """XAUTOCLAIM up to ``count`` entries idle for ``min_idle_ms`` (from dead consumers)."""
        response = await self._call(
            [stream],
            lambda: self.redis.xautoclaim(
                stream, self.group, self.consumer, min_idle_ms, start_id=start, count=count
            ),
        )
        next_start = reply_text(response[0])
        entries = self._read_entries([(stream, response[1])]).get(stream, [])
        deleted = [reply_text(i) for i in response[2]] if len(response) > 2 else []
        return Claimed(entries, deleted, next_start)

    async def delivery_counts(self, stream: str, ids: Sequence[str]) -> dict[str, int]:
        """Times each of this consumer's pending ``ids`` was delivered (XPENDING extended form)."""
        if not ids:
            return {}
        ordered = sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))
        rows = await self._call(
            [stream],
            lambda: self.redis.xpending_range(
                stream,
                self.group,
                min=ordered[0],
                max=ordered[-1],
                count=len(ordered) * 4 + 10,
                consumername=self.consumer,
            ),
        )
        wanted = set(ids)
        return {
            reply_text(row["message_id"]): int(row["times_delivered"])
            for row in rows
            if reply_text(row["message_id"]) in wanted
        }

    async def remove_dead_consumers(self, stream: str, idle_ms: int) -> list[str]:
        """Delete consumers idle longer than ``idle_ms`` that hold no pending entries.

        XGROUP DELCONSUMER drops a consumer's pending entries with it, so only consumers whose
        entries were already claimed (pending 0) are removed.
        """
        try:
            consumers = await self.redis.xinfo_consumers(stream, self.group)
        except redis_errors.ResponseError as error:
            if is_nogroup(error) or "no such key" in str(error).lower():
                return []
            raise translate(error, stream) from None
        except redis_errors.RedisError as error:
            raise translate(error, stream) from None
        removed = []
        for info in consumers:
            name = reply_text(info["name"])
            if name == self.consumer or int(info["pending"]) or int(info["idle"]) < idle_ms:
                continue
            try:
                await self.redis.xgroup_delconsumer(stream, self.group, name)
            except redis_errors.RedisError as error:
                raise translate(error, stream) from None
            removed.append(name)
            log.info(
                "event=consumer_removed stream=%s group=%s consumer=%s", stream, self.group, name
            )
        return removed
