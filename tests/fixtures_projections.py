"""Fixtures of the projections tests (registered in tests/conftest.py).

Until the relay exists, tests put events into the outbox with ``outbox.emit_many`` and then XADD
them in the relay's entry format (``streams.codec.encode_event``) themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from outbox import EventSpec, emit_many
from outbox.envelope import Event
from outbox.projections.projection import Projection
from outbox.projections.runner import run_projections
from outbox.settings import Settings, get_settings
from outbox.streams.codec import encode_event
from outbox.streams.keys import Keys


async def poll(
    check: Callable[[], Awaitable[Any]], *, timeout_s: float = 30.0, interval_s: float = 0.05
) -> Any:
    """Await ``check()`` until it returns something truthy, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s (last value: {last!r})")


async def emit_events(database_url: str, specs: Sequence[EventSpec]) -> list[Event]:
    """Commit ``specs`` to the outbox (chunks of 5,000) and return them with positions."""
    conn = await asyncpg.connect(database_url)
    events: list[Event] = []
    try:
        for start in range(0, len(specs), 5000):
            async with conn.transaction():
                events.extend(await emit_many(conn, specs[start : start + 5000]))
    finally:
        await conn.close()
    return events


async def xadd_events(
    redis: aioredis.Redis, keys: Keys, events: Sequence[Event], *, chunk: int = 1000
) -> list[str]:
    """Publish ``events`` as the relay would (its entry format), pipelined; return entry ids."""
    ids: list[str] = []
    for start in range(0, len(events), chunk):
        async with redis.pipeline(transaction=False) as pipe:
            for event in events[start : start + chunk]:
                fields: dict[Any, Any] = encode_event(event, max_retries=3)
                pipe.xadd(keys.stream(event.service, event.priority), fields)
            ids.extend(i.decode() for i in await pipe.execute())
    return ids


async def async_eq(value: Awaitable[Any], expected: Any) -> bool:
    """``await value == expected``, for ``poll(lambda: async_eq(...))``."""
    return bool(await value == expected)


async def group_settled(redis: aioredis.Redis, stream: str, group: str) -> bool:
    """``group`` has read everything on ``stream`` and has nothing pending."""
    groups = {g["name"].decode(): g for g in await redis.xinfo_groups(stream)}
    info = groups.get(group)
    return info is not None and info["pending"] == 0 and info["lag"] == 0


async def directory(conn: asyncpg.Connection) -> dict[str, tuple[str | None, bool]]:
    """The user_directory read model: (email, deleted) per user."""
    rows = await conn.fetch("SELECT user_id, email, deleted FROM directory_users")
    return {row["user_id"]: (row["email"], row["deleted"]) for row in rows}


def configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    """The settings with ``env`` set on top of the test's environment."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture
def projection_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with short waits, so tests run fast: small blocks, quick retries and claims."""
    return configure(
        monkeypatch,
        PROJECTION_BLOCK_MS="100",
        RETRY_BASE_DELAY_MS="20",
        RETRY_MAX_DELAY_MS="200",
        CLAIM_INTERVAL="0.2",
        CLAIM_MIN_IDLE_MS="500",
        DEAD_CONSUMER_IDLE_MS="1000",
        PROJECTION_HEARTBEAT_INTERVAL="0.2",
        PROCESSOR_WORKERS="1",
        SHUTDOWN_GRACE="10",
    )


@pytest.fixture
def keys(stream_prefix: str) -> Keys:
    return Keys(stream_prefix)


Runner = Callable[..., Any]


@pytest.fixture
def running() -> Runner:
    """``async with running([projection], settings, ...)``: projections run in this loop."""

    @asynccontextmanager
    async def run(
        projections: Sequence[Projection], settings: Settings, **options: Any
    ) -> AsyncIterator[asyncio.Event]:
        stop = asyncio.Event()
        task = asyncio.create_task(run_projections(projections, settings, stop=stop, **options))
        try:
            yield stop
        finally:
            stop.set()
            assert await asyncio.wait_for(task, timeout=30) == 0

    return run
