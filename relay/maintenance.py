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

from redis import exceptions as redis_errors

from outbox.streams.connection import RedisClient, reply_text, server_time
from outbox.streams.errors import RedisUnavailableError
from outbox.streams.heartbeat import FORGET_AFTER_S, forget, read_reports
from outbox.streams.keys import TRIM_LUA, Keys

TRIM_SHA = hashlib.sha1(TRIM_LUA.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TrimResult:
    stream: str
    trimmed: int
    minid: str
    #: Why the stream could not be trimmed this time (its Redis, or cluster node, is down).
    error: str | None = None


async def trim_stream(
    client: RedisClient,
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
    except (
        redis_errors.ConnectionError,
        redis_errors.TimeoutError,
        redis_errors.ClusterError,  # a cluster node down or failing over, the slot map stale
        redis_errors.TryAgainError,  # the slot is being migrated
        OSError,
    ) as error:
        raise RedisUnavailableError(f"Redis is unavailable: {error}") from error
    return TrimResult(stream, int(reply[0]), reply_text(reply[1]))


async def trim_streams(
    client: RedisClient,
    streams: Iterable[str],
    *,
    retention_s: float,
    dead_letter: str | None = None,
    dead_letter_ttl_s: float = 0,
    exact: bool = False,
    tenant_dead_letters: Iterable[str] = (),
) -> list[TrimResult]:
    """Trim the given event streams by their groups and retention, and the dead letters (the
    deployment's and ``tenant_dead_letters``, tenants' own) by age.

    A stream that cannot be trimmed now (on a cluster, its node is down) gets its error in its
    result and the others are trimmed all the same; when none could be, the error is raised.
    """
    results: list[TrimResult] = []
    for stream in streams:
        results.append(await _trim_or_error(client, stream, retention_s, True, exact))
    for letters in [dead_letter, *tenant_dead_letters]:
        if letters is not None:
            results.append(await _trim_or_error(client, letters, dead_letter_ttl_s, False, exact))
    failed = [result for result in results if result.error is not None]
    if results and len(failed) == len(results):
        raise RedisUnavailableError(failed[0].error or "Redis is unavailable")
    return results


async def _trim_or_error(
    client: RedisClient, stream: str, retention_s: float, honour_groups: bool, exact: bool
) -> TrimResult:
    try:
        return await trim_stream(
            client, stream, retention_s=retention_s, honour_groups=honour_groups, exact=exact
        )
    except RedisUnavailableError as error:
        return TrimResult(stream, 0, "", str(error))


async def find_streams(client: RedisClient, keys: Keys) -> list[str]:
    """Every event stream of the prefix in Redis (SCAN of each primary on a cluster), sorted:
    also those of services no relay publishes for (written only by ``RedisStreamsClient`` or
    the original library). Partition streams are included; the dead letters are not."""
    pattern = f"{keys.prefix}:*:events*"
    found: set[str] = set()
    # On a cluster, redis-py's scan_iter runs SCAN on every primary.
    async for key in client.scan_iter(match=pattern, count=1000, _type="stream"):
        found.add(reply_text(key))
    return sorted(key for key in found if keys.parse_stream(key) is not None)


@dataclass(frozen=True, slots=True)
class MaintainResult:
    trimmed: list[TrimResult]
    consumers_forgotten: list[str]


async def maintain(
    client: RedisClient,
    keys: Keys,
    *,
    retention_s: float,
    dead_letter_ttl_s: float,
    forget_after_s: float = FORGET_AFTER_S,
) -> MaintainResult:
    """What ``outbox maintain`` does once, with Redis only: trim every stream of the prefix
    (never below the slowest group, :func:`trim_stream`), the dead letters by age, and forget
    the reports of client consumers silent for ``forget_after_s``."""
    streams = await find_streams(client, keys)
    trimmed = await trim_streams(
        client,
        streams,
        retention_s=retention_s,
        dead_letter=keys.dead_letter,
        dead_letter_ttl_s=dead_letter_ttl_s,
    )
    now = await server_time(client)
    silent = [
        report.field
        for report in await read_reports(client, keys.consumers)
        if report.heartbeat_at is None or now - report.heartbeat_at > forget_after_s
    ]
    await forget(client, keys.consumers, silent)
    return MaintainResult(trimmed, silent)
