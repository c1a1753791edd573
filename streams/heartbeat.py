"""Heartbeats and counters of the consumers of ``RedisStreamsClient``, kept in Redis.

Projections report to PostgreSQL (``projection_consumers``); a service that consumes with the
document's client may have no database, so its consumers report to one Redis hash,
``<prefix>:consumers`` (:attr:`streams.keys.Keys.consumers`): a field per ``<group>/<consumer>``
holding a JSON object (:class:`ConsumerReport`). The time of a beat is the Redis server's
(``TIME`` inside the script), so the monitor judges its age on the same clock whatever the
clocks of the hosts. A consumer that closes its client says so (``stopped``); one that dies
stops beating and the monitor reports its heartbeat lost. ``outbox maintain`` removes reports
older than :data:`FORGET_AFTER_S`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from redis import exceptions as redis_errors

from outbox.streams.connection import RedisClient, reply_text
from outbox.streams.errors import translate

#: Reports of consumers whose last beat is older than this are removed by ``outbox maintain``.
FORGET_AFTER_S = 86_400.0

#: HSET a report with the server's time as ``heartbeat_at`` (seconds, float).
BEAT_LUA = """#!lua
local now = redis.call('TIME')
local report = cjson.decode(ARGV[2])
report['heartbeat_at'] = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(report))
return 1
"""
BEAT_SHA = hashlib.sha1(BEAT_LUA.encode()).hexdigest()


@dataclass
class ConsumerReport:
    """What one consumer of the client reports: totals since it started."""

    group: str
    consumer: str
    streams: list[str]
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)
    processed: int = 0  # acknowledged
    failures: int = 0  # retry_message calls
    dead_lettered: int = 0
    reclaimed: int = 0  # entries taken over from consumers idle beyond CLAIM_MIN_IDLE_MS
    last_error: str | None = None
    stopped: bool = False
    heartbeat_interval_s: float = 5.0  # CONSUMER_HEARTBEAT_INTERVAL, to judge the age by
    heartbeat_at: float | None = None  # set by Redis

    @property
    def field(self) -> str:
        return f"{self.group}/{self.consumer}"


async def beat(redis: RedisClient, key: str, report: ConsumerReport) -> None:
    """Write ``report`` with the server's time (one script call)."""
    body = json.dumps({k: v for k, v in asdict(report).items() if v is not None})
    try:
        try:
            await redis.evalsha(BEAT_SHA, 1, key, report.field, body)
        except redis_errors.NoScriptError:
            await redis.eval(BEAT_LUA, 1, key, report.field, body)
    except redis_errors.RedisError as error:
        raise translate(error, key) from None


async def read_reports(redis: RedisClient, key: str) -> list[ConsumerReport]:
    """Every report in the hash; a field that is not a report is skipped."""
    try:
        raw: Any = await redis.hgetall(key)
    except redis_errors.RedisError as error:
        raise translate(error, key) from None
    reports = []
    for name, value in raw.items():
        try:
            data = json.loads(reply_text(value))
            reports.append(ConsumerReport(**{k: data[k] for k in data if k in _FIELDS}))
        except (ValueError, TypeError, KeyError):
            continue
        if reports[-1].field != reply_text(name):
            reports.pop()
    return reports


async def forget(redis: RedisClient, key: str, fields: Iterable[str]) -> int:
    """Remove the reports of ``fields``; how many were there."""
    names = list(fields)
    if not names:
        return 0
    try:
        return int(await redis.hdel(key, *names))
    except redis_errors.RedisError as error:
        raise translate(error, key) from None


_FIELDS = set(ConsumerReport.__dataclass_fields__)
