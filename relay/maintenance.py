"""Stream maintenance: trim what every consumer group is done with, and old dead letters.

A stream is trimmed with ``XTRIM MINID`` below the lowest of: the slowest group's needs (its
smallest pending id, or the id after its last-delivered-id when nothing is pending) and
``now - RELAY_STREAM_RETENTION_S``. So an entry a group has not been delivered, or has not
acknowledged, is never trimmed (DESIGN.md invariant 7); retention keeps recent history for
replays and new groups. The dead-letter stream is trimmed by age only (``DEAD_LETTER_TTL``).
Both run in one Lua script per stream (:data:`streams.keys.TRIM_LUA`), so no delivery or ack
can slip in between reading the groups and trimming.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from outbox.streams.connection import reply_text
from outbox.streams.errors import RedisUnavailableError
from outbox.streams.keys import TRIM_LUA

TRIM_SHA = hashlib.sha1(TRIM_LUA.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TrimResult:
    stream: str
    trimmed: int
    minid: str


async def trim_stream(
    client: aioredis.Redis,
    stream: str,
    *,
    retention_s: float,
    honour_groups: bool = True,
    exact: bool = False,
) -> TrimResult:
    """Trim one stream. ``exact=False`` trims whole radix-tree nodes only (``MINID ~``), which
    is far cheaper and may keep a few entries more, never fewer
    (https://redis.io/docs/latest/commands/xtrim/)."""
    args = (int(retention_s * 1000), "1" if exact else "0", "1" if honour_groups else "0")
    try:
        try:
            reply = await client.evalsha(TRIM_SHA, 1, stream, *args)
        except redis_errors.NoScriptError:
            reply = await client.eval(TRIM_LUA, 1, stream, *args)
    except (redis_errors.ConnectionError, redis_errors.TimeoutError) as error:
        raise RedisUnavailableError(f"Redis is unavailable: {error}") from error
    return TrimResult(stream, int(reply[0]), reply_text(reply[1]))


async def trim_streams(
    client: aioredis.Redis,
    streams: Iterable[str],
    *,
    retention_s: float,
    dead_letter: str | None = None,
    dead_letter_ttl_s: float = 0,
    exact: bool = False,
) -> list[TrimResult]:
    """Trim the given event streams by their groups and retention, and the dead letters by age."""
    results = [
        await trim_stream(client, stream, retention_s=retention_s, exact=exact)
        for stream in streams
    ]
    if dead_letter is not None:
        results.append(
            await trim_stream(
                client, dead_letter, retention_s=dead_letter_ttl_s, honour_groups=False, exact=exact
            )
        )
    return results
