"""Stream and consumer-group figures from Redis in a fixed number of pipelined round trips.

Round 1: ``TIME`` plus ``XINFO STREAM`` and ``XINFO GROUPS`` of every known stream. Round 2, per
group: ``XINFO CONSUMERS``, the ``XPENDING`` summary (oldest pending id) and the first entry after
the group's last-delivered id (``XRANGE key (id + COUNT 1``, whose id time is the exact lag in
seconds). No keyspace ``SCAN``: the streams are named by the caller. Entry ids are
``<ms>-<seq>``, so every age is computed from ids against Redis's own clock (``TIME``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError


#: Undelivered entries counted one by one when Redis reports the lag as nil.
NULL_LAG_COUNT_CAP = 10_000


def id_ms(entry_id: str | None) -> int | None:
    """The millisecond timestamp of an entry id (``1700000000000-3`` → ``1700000000000``)."""
    if not entry_id:
        return None
    head = entry_id.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class ConsumerStats:
    name: str
    pending: int
    idle_ms: int


@dataclass
class GroupStats:
    name: str
    consumers: list[ConsumerStats]
    pending: int
    last_delivered_id: str
    entries_read: int | None
    lag_entries: int
    lag_exact: bool
    lag_seconds: float
    oldest_pending_id: str | None
    oldest_pending_age_s: float


@dataclass
class StreamStats:
    key: str
    exists: bool
    length: int = 0
    last_generated_id: str = "0-0"
    first_entry_id: str | None = None
    entries_added: int | None = None
    groups: list[GroupStats] = field(default_factory=list)
    error: str | None = None


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _as_dict(reply: Any) -> dict[str, Any]:
    if isinstance(reply, dict):
        return {_text(k): v for k, v in reply.items()}
    items = list(reply)
    return {_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _missing(error: Exception) -> bool:
    return isinstance(error, ResponseError) and "no such key" in str(error).lower()


async def collect(client: aioredis.Redis, keys: list[str]) -> tuple[float, list[StreamStats]]:
    """Redis's clock (Unix seconds) and the figures of each stream in ``keys``."""
    pipe = client.pipeline(transaction=False)
    pipe.time()
    for key in keys:
        pipe.xinfo_stream(key)
        pipe.xinfo_groups(key)
    replies = await pipe.execute(raise_on_error=False)
    seconds, micros = replies[0]
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    streams: list[StreamStats] = []
    raw_groups: list[tuple[StreamStats, dict[str, Any]]] = []
    for index, key in enumerate(keys):
        info, groups = replies[1 + 2 * index], replies[2 + 2 * index]
        if isinstance(info, Exception):
            stats = StreamStats(key=key, exists=False)
            if not _missing(info):
                stats.error = str(info)  # e.g. WRONGTYPE: the key is not a stream
            streams.append(stats)
            continue
        fields = _as_dict(info)
        first = fields.get("first-entry")
        stats = StreamStats(
            key=key,
            exists=True,
            length=int(fields.get("length", 0)),
            last_generated_id=_text(fields.get("last-generated-id", "0-0")),
            first_entry_id=_text(first[0]) if first else None,
            entries_added=int(fields["entries-added"]) if "entries-added" in fields else None,
        )
        streams.append(stats)
        if not isinstance(groups, Exception):
            raw_groups.extend((stats, _as_dict(group)) for group in groups)

    pipe = client.pipeline(transaction=False)
    for stats, group in raw_groups:
        name = _text(group["name"])
        pipe.xinfo_consumers(stats.key, name)
        pipe.xpending(stats.key, name)
        # Where Redis cannot tell the lag (nil after deletions in the unread range), count the
        # undelivered entries themselves, up to a cap.
        count = 1 if group.get("lag") is not None else NULL_LAG_COUNT_CAP + 1
        pipe.xrange(stats.key, f"({_text(group['last-delivered-id'])}", "+", count=count)
    replies = await pipe.execute(raise_on_error=False) if raw_groups else []
    for index, (stats, group) in enumerate(raw_groups):
        consumers_reply, pending_reply, next_reply = replies[3 * index : 3 * index + 3]
        stats.groups.append(
            _group(stats, group, consumers_reply, pending_reply, next_reply, now_ms)
        )
    return now_ms / 1000, streams


def _group(
    stats: StreamStats,
    group: dict[str, Any],
    consumers_reply: Any,
    pending_reply: Any,
    next_reply: Any,
    now_ms: int,
) -> GroupStats:
    last_delivered = _text(group["last-delivered-id"])
    consumers = []
    if not isinstance(consumers_reply, Exception):
        for consumer in consumers_reply:
            c = _as_dict(consumer)
            consumers.append(
                ConsumerStats(_text(c["name"]), int(c.get("pending", 0)), int(c.get("idle", 0)))
            )
    oldest_pending = None
    if not isinstance(pending_reply, Exception) and int(pending_reply.get("pending", 0)):
        oldest_pending = _text(pending_reply["min"])
    next_entry = None
    undelivered = 0
    if not isinstance(next_reply, Exception) and next_reply:
        next_entry = _text(next_reply[0][0])
        undelivered = len(next_reply)
    # Redis reports lag as nil when it cannot derive it (after deletions or trims of entries
    # the group had not read); the next undelivered entry then decides whether it is 0.
    lag = group.get("lag")
    entries_read = group.get("entries-read")
    caught_up = next_entry is None or _id_tuple(last_delivered) >= _id_tuple(
        stats.last_generated_id
    )
    if caught_up:
        lag_entries, exact = 0, True
    elif lag is not None:
        lag_entries, exact = int(lag), True
    else:
        lag_entries = min(undelivered, NULL_LAG_COUNT_CAP)
        exact = undelivered <= NULL_LAG_COUNT_CAP
    next_ms = id_ms(next_entry)
    pending_ms = id_ms(oldest_pending)
    return GroupStats(
        name=_text(group["name"]),
        consumers=consumers,
        pending=int(group.get("pending", 0)),
        last_delivered_id=last_delivered,
        entries_read=int(entries_read) if entries_read is not None else None,
        lag_entries=lag_entries,
        lag_exact=exact,
        lag_seconds=max(0.0, (now_ms - next_ms) / 1000) if next_ms and not caught_up else 0.0,
        oldest_pending_id=oldest_pending,
        oldest_pending_age_s=max(0.0, (now_ms - pending_ms) / 1000) if pending_ms else 0.0,
    )


async def server_info(client: aioredis.Redis) -> dict[str, Any]:
    """The original document's Redis metrics: memory, clients, ops/s, hit ratio, uptime."""
    info = await client.info()
    hits = int(info.get("keyspace_hits", 0))
    misses = int(info.get("keyspace_misses", 0))
    return {
        "redis_version": info.get("redis_version"),
        "used_memory_bytes": int(info.get("used_memory", 0)),
        "used_memory_human": info.get("used_memory_human"),
        "maxmemory_bytes": int(info.get("maxmemory", 0)),
        "maxmemory_policy": info.get("maxmemory_policy"),
        "connected_clients": int(info.get("connected_clients", 0)),
        "instantaneous_ops_per_sec": int(info.get("instantaneous_ops_per_sec", 0)),
        "total_commands_processed": int(info.get("total_commands_processed", 0)),
        "keyspace_hits": hits,
        "keyspace_misses": misses,
        "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
        "uptime_seconds": int(info.get("uptime_in_seconds", 0)),
    }
