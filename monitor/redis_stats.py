"""Stream and consumer-group figures from Redis in a fixed number of pipelined round trips.

Round 1: ``TIME``, ``INFO`` and one ``XINFO STREAM key FULL COUNT 1`` per known stream (groups,
their oldest pending entry, consumers and when each was last seen). Round 2, only for groups that
are behind: the first entry after the group's last-delivered id (``XRANGE key (id + COUNT 1``),
whose id time is the exact lag in seconds. No keyspace ``SCAN``: the caller names the streams.
Entry ids are ``<ms>-<seq>``, so every age is computed from ids against Redis's clock (``TIME``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from outbox.streams.cluster import on_each_primary
from outbox.streams.connection import RedisClient, raw_pipeline

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
    """One stream; ``as_dict()`` is the JSON form (faster than dataclasses.asdict)."""

    key: str
    exists: bool
    length: int = 0
    last_generated_id: str = "0-0"
    first_entry_id: str | None = None
    entries_added: int | None = None
    groups: list[GroupStats] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "exists": self.exists,
            "length": self.length,
            "last_generated_id": self.last_generated_id,
            "first_entry_id": self.first_entry_id,
            "entries_added": self.entries_added,
            "error": self.error,
            "groups": [
                {
                    **{k: v for k, v in vars(g).items() if k != "consumers"},
                    "consumers": [vars(c).copy() for c in g.consumers],
                }
                for g in self.groups
            ],
        }


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _as_dict(reply: Any) -> dict[str, Any]:
    """A ``[key, value, key, value, …]`` reply (or a RESP3 map) as a dict with str keys."""
    if isinstance(reply, dict):
        pairs = reply
    else:
        it = iter(reply)
        pairs = dict(zip(it, it, strict=False))  # C speed; an odd trailing item is dropped
    if pairs and not isinstance(next(iter(pairs)), str):
        return {_text(k): v for k, v in pairs.items()}
    return pairs


def _missing(error: Exception) -> bool:
    return isinstance(error, ResponseError) and "no such key" in str(error).lower()


def service_totals(service: str, streams: list[StreamStats]) -> dict[str, Any]:
    """The service's streams and, per consumer group, its figures over all of them."""
    groups: dict[str, dict[str, Any]] = {}
    for stats in streams:
        for group in stats.groups:
            total = groups.setdefault(
                group.name,
                {
                    "name": group.name,
                    "pending": 0,
                    "lag_entries": 0,
                    "lag_seconds": 0.0,
                    "oldest_pending_age_s": 0.0,
                },
            )
            total["pending"] += group.pending
            total["lag_entries"] += group.lag_entries
            total["lag_seconds"] = max(total["lag_seconds"], group.lag_seconds)
            total["oldest_pending_age_s"] = max(
                total["oldest_pending_age_s"], group.oldest_pending_age_s
            )
    return {
        "service": service,
        "length": sum(stats.length for stats in streams),
        "groups": list(groups.values()),
        "streams": [stats.as_dict() for stats in streams],
    }


async def collect(
    client: RedisClient, keys: list[str]
) -> tuple[float, list[StreamStats], dict[str, Any]]:
    """Redis's clock (Unix seconds), the figures of each stream in ``keys``, server figures."""
    # One command per stream: its groups, each group's oldest pending entry (the PEL is ordered
    # by id, COUNT 1 keeps the first) and its consumers with their last-seen time. Replies come
    # back as the protocol's lists (raw_pipeline): redis-py's packing and parsing of hundreds of
    # commands cost more than Redis answering them.
    commands: list[tuple[Any, ...]] = [("TIME",), ("INFO",)]
    if isinstance(client, RedisCluster):
        # TIME and INFO of every primary (the memory of each node matters on its own: one full
        # node refuses its streams' writes), and each XINFO to the node of its key.
        per_node, replies = await asyncio.gather(
            on_each_primary(client, commands),
            raw_pipeline(client, [_xinfo(key) for key in keys]),
        )
        now_ms, server = _cluster_figures(per_node)
        replies = [None, None, *replies]
    else:
        commands += [_xinfo(key) for key in keys]
        replies = await raw_pipeline(client, commands)
        for reply in replies[:2]:
            if isinstance(reply, Exception):
                raise reply
        seconds, micros = cast("list[Any]", replies[0])
        server = server_figures(parse_info(_text(replies[1])))
        server["nodes"] = []
        now_ms = int(seconds) * 1000 + int(micros) // 1000
    streams: list[StreamStats] = []
    behind: list[tuple[StreamStats, dict[str, Any]]] = []
    for key, info in zip(keys, replies[2:], strict=True):
        if isinstance(info, Exception):
            stats = StreamStats(key=key, exists=False)
            if not _missing(info):
                stats.error = str(info)  # e.g. WRONGTYPE: the key is not a stream
            streams.append(stats)
            continue
        fields = _as_dict(info)
        stats = StreamStats(
            key=key,
            exists=True,
            length=int(fields.get("length", 0)),
            last_generated_id=_text(fields.get("last-generated-id", "0-0")),
            first_entry_id=_text(fields.get("recorded-first-entry-id")) or None,
            entries_added=int(fields["entries-added"]) if "entries-added" in fields else None,
        )
        streams.append(stats)
        for raw in fields.get("groups") or []:
            group = _as_dict(raw)
            delivered = _text(group["last-delivered-id"])
            if _id_tuple(delivered) >= _id_tuple(stats.last_generated_id):
                stats.groups.append(_group(stats, group, None, now_ms))
            else:
                behind.append((stats, group))

    if behind:
        # Only groups that are behind need the first undelivered entry (its id time is the lag
        # in seconds). Where Redis cannot tell the lag (nil after deletions in the unread
        # range), the undelivered entries are counted themselves, up to a cap.
        ranges: list[tuple[Any, ...]] = []
        for stats, group in behind:
            count = 1 if group.get("lag") is not None else NULL_LAG_COUNT_CAP + 1
            after = f"({_text(group['last-delivered-id'])}"
            ranges.append(("XRANGE", stats.key, after, "+", "COUNT", count))
        for (stats, group), reply in zip(behind, await raw_pipeline(client, ranges), strict=True):
            stats.groups.append(
                _group(stats, group, None if isinstance(reply, Exception) else reply, now_ms)
            )
    return now_ms / 1000, streams, server


def _group(stats: StreamStats, group: dict[str, Any], undelivered: Any, now_ms: int) -> GroupStats:
    """A group's figures; ``undelivered`` is the XRANGE after its last-delivered id (or None)."""
    consumers = [
        ConsumerStats(
            _text(c["name"]),
            int(c.get("pel-count", 0)),
            max(0, now_ms - int(c.get("seen-time", now_ms))),
        )
        for c in map(_as_dict, group.get("consumers") or [])
    ]
    pel = group.get("pending") or []
    oldest_pending = _text(pel[0][0]) if pel else None
    next_entry = _text(undelivered[0][0]) if undelivered else None
    lag = group.get("lag")
    entries_read = group.get("entries-read")
    if next_entry is None:
        lag_entries, exact = 0, True
    elif lag is not None:
        lag_entries, exact = int(lag), True
    else:
        lag_entries = min(len(undelivered), NULL_LAG_COUNT_CAP)
        exact = len(undelivered) <= NULL_LAG_COUNT_CAP
    next_ms = id_ms(next_entry)
    pending_ms = id_ms(oldest_pending)
    return GroupStats(
        name=_text(group["name"]),
        consumers=consumers,
        pending=int(group.get("pel-count", 0)),
        last_delivered_id=_text(group["last-delivered-id"]),
        entries_read=int(entries_read) if entries_read is not None else None,
        lag_entries=lag_entries,
        lag_exact=exact,
        lag_seconds=max(0.0, (now_ms - next_ms) / 1000) if next_ms else 0.0,
        oldest_pending_id=oldest_pending,
        oldest_pending_age_s=max(0.0, (now_ms - pending_ms) / 1000) if pending_ms else 0.0,
    )


def _xinfo(key: str) -> tuple[Any, ...]:
    return ("XINFO", "STREAM", key, "FULL", "COUNT", 1)


def _cluster_figures(
    per_node: dict[str, list[object] | BaseException],
) -> tuple[int, dict[str, Any]]:
    """The clock (of the first node that answered), the server figures summed over the
    primaries, and each primary's own under ``nodes``. Raises when no primary answered."""
    nodes: list[dict[str, Any]] = []
    now_ms: int | None = None
    for name, result in sorted(per_node.items()):
        if isinstance(result, BaseException) or any(isinstance(r, Exception) for r in result):
            error = result if isinstance(result, BaseException) else result[1]
            nodes.append({"node": name, "error": str(error)})
            continue
        seconds, micros = cast("list[Any]", result[0])
        if now_ms is None:
            now_ms = int(seconds) * 1000 + int(micros) // 1000
        nodes.append({"node": name, "error": None, **server_figures(parse_info(_text(result[1])))})
    answered = [node for node in nodes if node["error"] is None]
    if now_ms is None or not answered:
        raise ConnectionError(f"no Redis Cluster primary answered: {nodes}")
    total: dict[str, Any] = dict(answered[0])
    for name in (
        "used_memory_bytes",
        "maxmemory_bytes",
        "connected_clients",
        "instantaneous_ops_per_sec",
        "total_commands_processed",
        "keyspace_hits",
        "keyspace_misses",
    ):
        total[name] = sum(node[name] for node in answered)
    hits, misses = total["keyspace_hits"], total["keyspace_misses"]
    total["hit_ratio"] = round(hits / (hits + misses), 4) if hits + misses else None
    total["uptime_seconds"] = min(node["uptime_seconds"] for node in answered)
    total["used_memory_human"] = _human(total["used_memory_bytes"])
    policies = {node["maxmemory_policy"] for node in answered}
    total["maxmemory_policy"] = policies.pop() if len(policies) == 1 else "mixed"
    total.pop("node")
    total.pop("error")
    total["nodes"] = nodes
    return now_ms, total


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "K", "M", "G"):
        if value < 1024:
            return f"{value:.2f}{unit}"
        value /= 1024
    return f"{value:.2f}T"


def parse_info(text: str) -> dict[str, str]:
    """The ``key:value`` lines of an INFO reply (section headers and blanks skipped)."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, sep, value = line.partition(":")
            if sep:
                info[key] = value
    return info


def server_figures(info: dict[str, Any]) -> dict[str, Any]:
    """The original document's Redis metrics: memory, clients, ops/s, hit ratio, uptime."""
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
