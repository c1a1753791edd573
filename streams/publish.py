"""Idempotent batch publish: many events to many streams in one Redis round trip.

Each stream's batch is one ``EVALSHA`` of :data:`streams.keys.PUBLISH_LUA`, which checks and
moves the stream's watermark in the same atomic step as its XADDs; the batches of all streams are
written to the socket together and their replies read back in order (a pipeline). Publishing the
same events again (a relay restarted before it committed its cursor, two relays on one stream)
therefore adds nothing, and entry ids stay Redis's time-based ``*`` ids. On a Redis Cluster the
batches go to the nodes that own their streams, one round trip per node, all nodes at once
(:mod:`outbox.streams.cluster`).

Each event is three arguments, its entry's fields one JSON text that the script decodes: packing
about thirty arguments per event cost the relay more CPU than everything else it does. redis-py's
asyncio client packs arguments in pure Python, so the commands are packed with hiredis (C) when
it is installed and sent on a connection of the client's own pool.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from outbox.streams.cluster import on_each_primary
from outbox.streams.connection import RedisClient, raw_pipeline, reply_text
from outbox.streams.errors import RedisUnavailableError, StreamRefusedError, translate
from outbox.streams.keys import PUBLISH_LUA, Keys

PUBLISH_SHA = hashlib.sha1(PUBLISH_LUA.encode()).hexdigest()


@dataclass(slots=True)
class StreamBatch:
    """Events for one stream in cursor order, as the script's arguments:
    ``txid, position, fields`` per event (see :meth:`add`).

    ``seen`` is the watermark the caller last saw the stream take (``"txid:position"``, ``""``
    for none): if Redis holds less, it lost acknowledged writes, and the batch is refused with
    :attr:`PublishResult.behind` set instead of being added beyond the gap.

    ``watermark`` is the key of the watermark to check and move; empty, the stream's own
    (:meth:`Keys.watermark`). Routing rules' copies into another service's stream use one per
    origin service (:meth:`Keys.copy_watermark`), in the stream's slot."""

    stream: str
    seen: str = ""
    args: list[str] = field(default_factory=list)
    count: int = 0
    watermark: str = ""

    def add(self, txid: int, position: int, fields_json: str) -> None:
        """One event: its cursor and its entry's ``[field, value, …]`` as a JSON array of
        strings (the relay gets it ready-made from PostgreSQL, see relay.queries)."""
        self.args += (str(txid), str(position), fields_json)
        self.count += 1

    def last_cursor(self) -> tuple[int, int]:
        """``(txid, position)`` of the last event added."""
        return int(self.args[-3]), int(self.args[-2])

    def add_fields(self, txid: int, position: int, fields: Sequence[str]) -> None:
        """:meth:`add` with the fields as a list."""
        self.add(txid, position, json.dumps(fields, ensure_ascii=False))


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What one stream's batch did: entries added, and events skipped as already published.

    ``behind`` is set when the stream's watermark was behind the batch's ``seen`` (Redis lost
    writes): the watermark it holds, ``""`` if none; nothing was added."""

    stream: str
    published: int
    skipped: int
    behind: str | None = None


_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ReadOnlyError,
)
#: On a cluster, what one node's state makes of its streams' batches while the others go on:
#: the node is down or failing over, or the slot is being migrated (TRYAGAIN) or unserved.
_NODE_UNAVAILABLE = (
    *_UNAVAILABLE,
    OSError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.SlotNotCoveredError,
    redis_errors.MovedError,
    redis_errors.AskError,
)


async def _load_script(client: RedisClient) -> None:
    """SCRIPT LOAD on the single Redis, or on every primary that answers (a restarted node or a
    newly promoted replica has an empty script cache)."""
    if isinstance(client, RedisCluster):
        await on_each_primary(client, [("SCRIPT", "LOAD", PUBLISH_LUA)])
    else:
        await client.script_load(PUBLISH_LUA)


async def publish_batches(
    client: RedisClient, keys: Keys, batches: Sequence[StreamBatch], source: str = ""
) -> list[PublishResult | StreamRefusedError]:
    """Publish every batch in one round trip (one per node of a cluster); one result (or
    refusal) per batch, in order. ``source``: the id of the outbox the events come from,
    recorded beside each watermark; a stream whose watermark another source recorded is
    refused (``""``: not checked).

    Raises :class:`RedisUnavailableError` when Redis cannot take the call at all. A refusal of
    one stream does not stop the others; on a cluster, neither does a node that is down: its
    streams are refused (and retried by the caller) while the other nodes' streams are published.
    """
    batches = [batch for batch in batches if batch.count]
    if not batches:
        return []
    commands = []
    for batch in batches:
        watermark = batch.watermark or keys.watermark(batch.stream)
        commands.append(
            (
                "EVALSHA",
                PUBLISH_SHA,
                3,
                batch.stream,
                watermark,
                keys.watermark_source(watermark),
                batch.seen,
                source,
                *batch.args,
            )
        )
    cluster = isinstance(client, RedisCluster)
    try:
        replies = await raw_pipeline(client, commands)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # A restarted Redis, or a replica promoted on a cluster, has an empty script cache.
            # Load and send again:
            # batches that did run are skipped by their watermark the second time.
            await _load_script(client)
            again = await raw_pipeline(client, [commands[i] for i in missing])
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
    except _UNAVAILABLE as error:
        raise RedisUnavailableError(f"Redis is unavailable: {error}") from error
    down = _NODE_UNAVAILABLE if cluster else _UNAVAILABLE
    if all(isinstance(reply, down) for reply in replies):
        first = replies[0]
        raise RedisUnavailableError(f"Redis is unavailable: {first}") from (
            first if isinstance(first, BaseException) else None
        )
    results: list[PublishResult | StreamRefusedError] = []
    for batch, reply in zip(batches, replies, strict=True):
        if isinstance(reply, down):
            if not cluster:
                raise RedisUnavailableError(f"Redis is unavailable: {reply}") from reply
            results.append(
                StreamRefusedError(batch.stream, f"its cluster node is unavailable ({reply})")
            )
        elif isinstance(reply, redis_errors.RedisError):
            # The reason in the project's words: "out of memory (OOM)", "not a stream
            # (WRONGTYPE)"; redis-py strips the error code from the message.
            results.append(StreamRefusedError(batch.stream, str(translate(reply, batch.stream))))
        elif isinstance(reply, Exception):
            results.append(StreamRefusedError(batch.stream, str(reply)))
        else:
            counts = cast("list[Any]", reply)
            # A third element: the watermark Redis holds, behind the batch's ``seen``.
            behind = reply_text(counts[2]) if len(counts) > 2 else None
            results.append(PublishResult(batch.stream, int(counts[0]), int(counts[1]), behind))
    return results
