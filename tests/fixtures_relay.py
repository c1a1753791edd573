"""Fixtures of the relay tests (registered in tests/conftest.py).

- ``relay_settings``: the test's settings with fast heartbeats, polling and backoff.
- ``start_relay``: start in-process relays (async context manager factory); stopped at exit.
- ``own_redis``: a private ``redis-server`` (AOF, fsync always) on a free port that a test may
  kill with SIGKILL and start again; ``volatile_redis``: the same without persistence, which
  comes back empty.
- helpers: :func:`wait_until`, :func:`emit_events`, :func:`published`,
  :func:`assert_exactly_once`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

import outbox
from outbox.relay.daemon import Relay
from outbox.settings import Settings
from outbox.streams.keys import Keys


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 30.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it is true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


async def emit_events(
    conn: asyncpg.Connection,
    count: int,
    *,
    services: tuple[str, ...] = ("identity",),
    priorities: tuple[outbox.MessagePriority, ...] = (outbox.MessagePriority.NORMAL,),
    per_tx: int = 100,
) -> list[str]:
    """Emit ``count`` events in transactions of ``per_tx``; returns their event ids."""
    ids: list[str] = []
    n = 0
    while n < count:
        size = min(per_tx, count - n)
        specs = [
            outbox.EventSpec(
                service=services[(n + i) % len(services)],
                event_type="thing_happened",
                data={"n": n + i, "text": "ünïcode ✓"},
                priority=priorities[(n + i) % len(priorities)],
                aggregate_id=f"agg-{(n + i) % 7}",
            )
            for i in range(size)
        ]
        async with conn.transaction():
            events = await outbox.emit_many(conn, specs)
        ids.extend(str(e.event_id) for e in events)
        n += size
    return ids


async def published(client: aioredis.Redis, keys: Keys, services: tuple[str, ...]) -> list[str]:
    """Every event id in the services' streams (all priorities), with repeats."""
    ids: list[str] = []
    for service in services:
        for stream in keys.streams_of(service):
            for _, fields in await client.xrange(stream):
                ids.append(fields[b"event_id"].decode())
    return ids


async def stream_positions(client: aioredis.Redis, stream: str) -> list[int]:
    return [int(fields[b"position"]) for _, fields in await client.xrange(stream)]


async def cursor_order_ok(conn: asyncpg.Connection, client: aioredis.Redis, stream: str) -> bool:
    """True when the stream's entries are in strictly increasing (txid, position) order."""
    positions = await stream_positions(client, stream)
    if not positions:
        return True
    rows = await conn.fetch(
        "SELECT position, txid FROM outbox_events WHERE position = ANY($1::bigint[])", positions
    )
    txid = {r["position"]: r["txid"] for r in rows}
    cursors = [(txid[p], p) for p in positions]
    return all(a < b for a, b in itertools.pairwise(cursors))


async def assert_exactly_once(
    client: aioredis.Redis,
    keys: Keys,
    ids: list[str],
    conn: asyncpg.Connection,
    services: tuple[str, ...],
) -> None:
    """Wait until every event of ``ids`` is in its stream; then each must be there once, and
    every stream of the services in cursor order."""

    async def done() -> bool:
        return set(await published(client, keys, services)) >= set(ids)

    await wait_until(done, timeout_s=30, what="every event published")
    assert Counter(await published(client, keys, services)) == Counter(ids)
    for service in services:
        for stream in keys.streams_of(service):
            assert await cursor_order_ok(conn, client, stream)


@contextlib.asynccontextmanager
async def open_write_transaction(url: str) -> AsyncIterator[tuple[asyncpg.Connection, int]]:
    """A transaction that holds a transaction id (it created a temporary table), left open:
    its connection and xid. Rolled back at the end unless the test ended it."""
    conn = await asyncpg.connect(url)
    await conn.execute("BEGIN")
    await conn.execute("CREATE TEMP TABLE held_open (n int)")
    xid = int(await conn.fetchval("SELECT pg_current_xact_id()::text"))
    try:
        yield conn, xid
    finally:
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")
        await conn.close()


class Polls:
    """Counts the relay's batch reads (its real store's, wrapped), to wait for one that began
    after a given moment."""

    def __init__(self, relay: Relay) -> None:
        self.count = 0
        fetch = relay.store.fetch

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await fetch(*args, **kwargs)

        relay.store.fetch = counted  # type: ignore[method-assign]

    async def wait_for_one_more(self) -> None:
        """Until a read that began after this call has finished."""
        target = self.count + 2

        async def polled() -> bool:
            return self.count >= target

        await wait_until(polled, what="the relay to poll again")


@pytest.fixture
def relay_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "relay_poll_max_ms": 20.0,
            "relay_heartbeat_interval_s": 0.2,
            "relay_retry_min_s": 0.05,
            "relay_retry_max_s": 0.5,
            "relay_shutdown_grace_s": 5.0,
        }
    )


StartRelay = Callable[..., contextlib.AbstractAsyncContextManager[Relay]]


@pytest.fixture
async def start_relay(relay_settings: Settings) -> AsyncIterator[StartRelay]:
    """``async with start_relay(**overrides) as relay:`` runs a relay in a task until the block
    ends (graceful stop); overrides are settings fields, plus ``exclusive``."""
    tasks: list[asyncio.Task[None]] = []

    @contextlib.asynccontextmanager
    async def start(*, exclusive: bool | None = None, **overrides: Any) -> AsyncIterator[Relay]:
        settings = relay_settings.model_copy(update=overrides)
        relay = Relay.from_settings(settings, exclusive=exclusive)
        task = asyncio.create_task(relay.run())
        tasks.append(task)
        try:
            yield relay
        finally:
            relay.stop()
            await asyncio.wait_for(task, 15)

    yield start
    for task in tasks:
        if not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class OwnRedis:
    """A private redis-server that the test may kill and restart."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    #: False: no AOF, no snapshot, so a restart comes back empty (a Redis that lost its data).
    persistent: bool = True

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "redis-server"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None


def _own_redis(tmp_path: Path, persistent: bool) -> Iterator[OwnRedis]:
    server = OwnRedis(
        free_port(), tmp_path / f"redis-{uuid.uuid4().hex[:6]}", persistent=persistent
    )
    server.directory.mkdir()
    server.start()
    yield server
    server.kill()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    yield from _own_redis(tmp_path, persistent=True)


@pytest.fixture
def volatile_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """An :class:`OwnRedis` without persistence: restarted, it has lost everything."""
    yield from _own_redis(tmp_path, persistent=False)
