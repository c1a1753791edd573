"""The projection runtime against real PostgreSQL and Redis: apply, retries, dead letters,
unknown types, reclaim, trimmed entries, priorities."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from outbox import EventSpec
from outbox.envelope import Event, MessagePriority, uuid7
from outbox.projections.examples import user_directory
from outbox.projections.projection import Projection
from outbox.settings import Settings
from outbox.streams.codec import StreamMessage, encode_event
from outbox.streams.keys import Keys
from tests.fixtures_projections import (
    Runner,
    async_eq,
    directory,
    emit_events,
    poll,
    xadd_events,
)


def _user_specs(count: int, *, service: str = "identity") -> list[EventSpec]:
    specs = []
    for i in range(count):
        user = f"u{i % 50}"
        kind = ("user_created", "user_updated", "user_deleted")[i % 3]
        specs.append(
            EventSpec(
                service,
                kind,
                {"user_id": user, "email": f"{user}-{i}@example.com", "name": f"n{i}"},
                aggregate_id=user,
            )
        )
    return specs


def _fold_users(events: Sequence[Event]) -> dict[str, tuple[str | None, bool]]:
    """The expected directory, (email, deleted) per user: events in outbox position order;
    types user_directory does not handle change nothing."""
    state: dict[str, tuple[str | None, bool]] = {}
    for event in sorted(events, key=lambda e: e.position or 0):
        user = event.data["user_id"]
        if event.event_type == "user_deleted":
            state[user] = (state.get(user, (None, True))[0], True)
        elif event.event_type in ("user_created", "user_updated"):
            state[user] = (event.data["email"], False)
    return state


async def _inbox(conn: asyncpg.Connection, projection: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM projection_inbox WHERE projection = $1", projection
        )
    )


def _synthetic(service: str, event_type: str, data: dict[str, Any], **fields: Any) -> Event:
    return Event(
        event_id=uuid7(),
        service=service,
        event_type=event_type,
        data=data,
        priority=fields.pop("priority", MessagePriority.NORMAL),
        occurred_at=datetime.now(UTC),
        correlation_id="test",
        source=service,
        **fields,
    )


async def test_example_projection_applies_each_event_once(
    projection_settings: Settings,
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    events = await emit_events(database_url, _user_specs(600))
    await xadd_events(redis_client, keys, events)
    await xadd_events(redis_client, keys, events[:100])  # a relay re-publish: absorbed
    async with running([user_directory], projection_settings, workers=2):
        await poll(lambda: _pending_zero(redis_client, keys.stream("identity"), "user_directory"))
    assert await _inbox(asyncpg_conn, "user_directory") == 600
    assert await directory(asyncpg_conn) == _fold_users(events)
    beats = await asyncpg_conn.fetch(
        "SELECT consumer, processed, stopped_at FROM projection_consumers ORDER BY consumer"
    )
    assert [row["consumer"].rsplit("-", 1)[1] for row in beats] == ["0", "1"]
    assert sum(row["processed"] for row in beats) == 600
    assert all(row["stopped_at"] is not None for row in beats)


async def _pending_zero(redis: aioredis.Redis, stream: str, group: str) -> bool:
    groups = await redis.xinfo_groups(stream)
    return bool(groups) and all(g["pending"] == 0 and g["lag"] == 0 for g in groups)


class Recorded:
    """What a recording projection applied (read from its table: handler calls roll back)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def keys(self) -> list[str]:
        return [r[0] for r in await self.conn.fetch("SELECT key FROM test_applied ORDER BY key")]

    async def count(self) -> int:
        return int(await self.conn.fetchval("SELECT count(*) FROM test_applied"))


async def _recording_projection(
    conn: asyncpg.Connection,
    name: str,
    fail_times: dict[str, int] | None = None,
    *,
    fail_always: bool = False,
) -> tuple[Projection, Recorded, dict[str, int]]:
    """A projection whose handler inserts into ``test_applied`` and can fail on purpose."""
    await conn.execute("CREATE TABLE IF NOT EXISTS test_applied (key text, event_id uuid)")
    projection = Projection(name, streams=["identity"])
    calls: dict[str, int] = {}

    @projection.on("user_created")
    async def created(event: StreamMessage, db: Any) -> None:
        key = event.data["user_id"]
        calls[key] = calls.get(key, 0) + 1
        if fail_always or calls[key] <= (fail_times or {}).get(key, 0):
            raise RuntimeError(f"boom {key} #{calls[key]}")
        await db.execute("INSERT INTO test_applied VALUES ($1, $2)", key, event.event_id)

    return projection, Recorded(conn), calls


async def test_failing_handler_is_retried_then_succeeds(
    projection_settings: Settings,
    asyncpg_conn: asyncpg.Connection,
    database_url: str,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    projection, applied, calls = await _recording_projection(asyncpg_conn, "retry_ok", {"u1": 3})
    events = await emit_events(
        database_url,
        [EventSpec("identity", "user_created", {"user_id": f"u{i}"}) for i in range(3)],
    )
    await xadd_events(redis_client, keys, events)
    async with running([projection], projection_settings):
        await poll(lambda: _pending_zero(redis_client, keys.stream("identity"), "retry_ok"))
    assert await applied.keys() == ["u0", "u1", "u2"]
    assert calls["u1"] == 4
    assert await redis_client.xlen(keys.dead_letter) == 0


async def _async(value: Any) -> Any:
    return value


async def test_handler_failing_past_max_retries_goes_to_dead_letters(
    projection_settings: Settings,
    asyncpg_conn: asyncpg.Connection,
    database_url: str,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    projection, applied, _ = await _recording_projection(asyncpg_conn, "retry_dl", fail_always=True)
    (event,) = await emit_events(
        database_url, [EventSpec("identity", "user_created", {"user_id": "u9"})]
    )
    (entry_id,) = await xadd_events(redis_client, keys, [event])
    async with running([projection], projection_settings):
        letters = await poll(lambda: redis_client.xrange(keys.dead_letter))
        await poll(lambda: _pending_zero(redis_client, keys.stream("identity"), "retry_dl"))
    assert await applied.count() == 0
    (_, fields), *_ = letters
    letter = {k.decode(): v.decode() for k, v in fields.items()}
    assert letter["source_stream"] == keys.stream("identity")
    assert letter["group"] == "retry_dl"
    assert letter["entry_id"] == entry_id
    assert letter["attempts"] == str(projection_settings.max_retries + 1)
    assert "boom u9" in letter["error"]
    assert json.loads(letter["payload"])["event_id"] == str(event.event_id)


async def test_malformed_entry_goes_to_dead_letters_at_once(
    projection_settings: Settings,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    projection, applied, _ = await _recording_projection(asyncpg_conn, "malformed")
    bad_id = (await redis_client.xadd(keys.stream("identity"), {"garbage": "x"})).decode()
    async with running([projection], projection_settings):
        letters = await poll(lambda: redis_client.xrange(keys.dead_letter))
        await poll(lambda: _pending_zero(redis_client, keys.stream("identity"), "malformed"))
    fields = {k.decode(): v.decode() for k, v in letters[0][1].items()}
    assert fields["entry_id"] == bad_id
    assert fields["attempts"] == "1"
    assert "lacks" in fields["error"]
    assert await applied.count() == 0


async def test_unknown_event_types_are_skipped_and_counted(
    projection_settings: Settings,
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    projection, applied, _ = await _recording_projection(asyncpg_conn, "skipper")
    events = await emit_events(
        database_url,
        [
            EventSpec("identity", "user_login", {"user_id": "a"}),
            EventSpec("identity", "user_created", {"user_id": "b"}),
        ],
    )
    await xadd_events(redis_client, keys, events)
    async with running([projection], projection_settings):
        await poll(lambda: _pending_zero(redis_client, keys.stream("identity"), "skipper"))
    assert await applied.keys() == ["b"]
    assert await redis_client.xlen(keys.dead_letter) == 0
    skipped = await poll(
        lambda: asyncpg_conn.fetchval("SELECT sum(skipped) FROM projection_consumers")
    )
    assert skipped == 1


async def test_reclaims_entries_of_a_dead_consumer_then_removes_it(
    projection_settings: Settings,
    asyncpg_conn: asyncpg.Connection,
    database_url: str,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    projection, applied, _ = await _recording_projection(asyncpg_conn, "reclaim")
    stream = keys.stream("identity")
    await redis_client.xgroup_create(stream, "reclaim", id="0", mkstream=True)
    events = await emit_events(
        database_url,
        [EventSpec("identity", "user_created", {"user_id": f"r{i}"}) for i in range(20)],
    )
    await xadd_events(redis_client, keys, events)
    # A consumer reads everything and dies without acking.
    await redis_client.xreadgroup("reclaim", "dead-consumer", {stream: ">"}, count=100)
    async with running([projection], projection_settings, consumer_stem="alive"):
        await poll(lambda: async_eq(applied.count(), 20), timeout_s=20)

        async def dead_removed() -> bool:
            names = {c["name"] for c in await redis_client.xinfo_consumers(stream, "reclaim")}
            return b"dead-consumer" not in names

        await poll(dead_removed, timeout_s=20)
    assert await applied.keys() == sorted(f"r{i}" for i in range(20))


async def test_entries_trimmed_while_pending_are_refetched_from_the_outbox(
    projection_settings: Settings,
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    stream = keys.stream("identity")
    await redis_client.xgroup_create(stream, "user_directory", id="0", mkstream=True)
    own = await emit_events(database_url, _user_specs(30))
    await xadd_events(redis_client, keys, own)
    # Our own consumer (stem "w", index 0) read them before a crash ...
    await redis_client.xreadgroup("user_directory", "w-0", {stream: ">"}, count=1000)
    other = await emit_events(database_url, _user_specs(20)[::-1])
    await xadd_events(redis_client, keys, other)
    # ... and a consumer that died read these.
    await redis_client.xreadgroup("user_directory", "gone", {stream: ">"}, count=1000)
    await redis_client.xtrim(stream, maxlen=0)  # trimmed while pending
    async with running([user_directory], projection_settings, consumer_stem="w"):
        await poll(lambda: _pending_zero(redis_client, stream, "user_directory"), timeout_s=20)
    assert await _inbox(asyncpg_conn, "user_directory") == 50
    assert await directory(asyncpg_conn) == _fold_users(own + other)


async def test_critical_event_overtakes_a_normal_backlog(
    projection_settings: Settings, redis_client: aioredis.Redis, keys: Keys, running: Runner
) -> None:
    projection = Projection("prio", streams=["identity"])
    order: list[str] = []

    @projection.on_batch("tick")
    async def tick(events: Sequence[StreamMessage], db: Any) -> None:
        order.extend(event.priority.label for event in events)

    backlog = [
        _synthetic("identity", "tick", {"i": i}, priority=MessagePriority.NORMAL)
        for i in range(20_000)
    ]
    for start in range(0, len(backlog), 2000):
        async with redis_client.pipeline(transaction=False) as pipe:
            for event in backlog[start : start + 2000]:
                fields: dict[Any, Any] = encode_event(event, max_retries=3)
                pipe.xadd(keys.stream("identity"), fields)
            await pipe.execute()
    async with running([projection], projection_settings):
        await poll(lambda: _async(len(order) >= 500))
        critical = _synthetic("identity", "tick", {"i": -1}, priority=MessagePriority.CRITICAL)
        fields = encode_event(critical, max_retries=3)
        await redis_client.xadd(keys.stream("identity", MessagePriority.CRITICAL), fields)  # type: ignore[arg-type]
        await poll(lambda: _async(len(order) == 20_001), timeout_s=60)
    position = order.index("critical")
    assert position < 20_000 - 1000, f"critical applied after {position} normal events"


async def test_replaying_a_dead_letter_twice_applies_it_once(
    projection_settings: Settings,
    asyncpg_conn: asyncpg.Connection,
    database_url: str,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    from outbox.streams.dead_letter import DeadLetters

    failing = {"on": True}
    projection, _, _ = await _recording_projection(asyncpg_conn, "replayed")
    original = projection.handlers["user_created"]

    async def created(event: StreamMessage, db: Any) -> None:
        if failing["on"]:
            raise RuntimeError("handler bug")
        await original(event, db)

    projection.handlers["user_created"] = created

    (event,) = await emit_events(
        database_url, [EventSpec("identity", "user_created", {"user_id": "d1"})]
    )
    await xadd_events(redis_client, keys, [event])
    letters = DeadLetters(redis_client, keys, 3600)
    async with running([projection], projection_settings):
        await poll(lambda: letters.count())
        failing["on"] = False  # the bug is fixed
        (letter,) = await letters.select()
        assert letter.group == "replayed"
        assert letter.event_id == str(event.event_id)
        await letters.replay([letter], keep=True)
        await letters.replay([letter])
        await poll(lambda: async_eq(redis_client.xlen(keys.stream("identity")), 3))
        await poll(lambda: _pending_zero(redis_client, keys.stream("identity"), "replayed"))
    # Both copies were read and acked (lag and pending 0); the event was applied once.
    rows = await asyncpg_conn.fetch("SELECT key, event_id FROM test_applied")
    assert [(r["key"], r["event_id"]) for r in rows] == [("d1", event.event_id)]
    assert await letters.count() == 0
