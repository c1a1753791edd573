"""A fleet half-way through its migration: the original library's publishers and the relay write
the same streams, and one projection applies every event of both once (issue 23).

The original ``shared/redis_streams.py`` is not available here; :func:`legacy_publish` writes
its wire format from its documented field list (``id, stream, event_type, service, data,
priority`` as ``low|normal|high|critical``, ``timestamp, retry_count, max_retries,
correlation_id, user_id``, every value a string, ``""`` for none), on the keys it uses
(``<prefix>:<service>:events`` plus ``:high`` / ``:critical``), after the ``stream_initialized``
markers its ``initialize()`` adds at id ``0-1``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from outbox import EventSpec, MessagePriority
from outbox.projections.examples import user_directory
from outbox.settings import Settings
from outbox.streams.codec import decode_entry, legacy_event_id
from outbox.streams.keys import Keys
from tests.fixtures_projections import Runner, async_eq, directory, emit_events, poll
from tests.fixtures_relay import StartRelay

#: The original library's priority names, and the stream key suffix each goes to.
LEGACY_PRIORITIES = {"low": "", "normal": "", "high": ":high", "critical": ":critical"}


def legacy_key(keys: Keys, service: str, priority: str) -> str:
    return f"{keys.stream(service)}{LEGACY_PRIORITIES[priority]}"


async def legacy_initialize(redis: aioredis.Redis, keys: Keys, service: str) -> None:
    """What the original ``initialize()`` does: a marker at 0-1 on every stream of a service
    (one in the full message format, one bare, as older versions wrote)."""
    full = _legacy_fields(service, "stream_initialized", {}, "normal", None, None)
    await redis.xadd(legacy_key(keys, service, "normal"), full, id="0-1")
    await redis.xadd(legacy_key(keys, service, "high"), {"initialized": "true"}, id="0-1")
    await redis.xadd(legacy_key(keys, service, "critical"), full, id="0-1")


def _legacy_fields(
    service: str,
    event_type: str,
    data: dict[str, Any],
    priority: str,
    user_id: str | None,
    correlation_id: str | None,
) -> dict[str, str]:
    return {
        "id": "",  # the original sets it from the XADD reply, after writing
        "stream": service,
        "event_type": event_type,
        "service": f"{service}-service",
        "data": json.dumps(data),
        "priority": priority,
        "timestamp": str(time.time()),
        "retry_count": "0",
        "max_retries": "3",
        "correlation_id": correlation_id or "",
        "user_id": user_id or "",
    }


async def legacy_publish(
    redis: aioredis.Redis,
    keys: Keys,
    service: str,
    event_type: str,
    data: dict[str, Any],
    priority: str = "normal",
    *,
    user_id: str | None = None,
    correlation_id: str | None = None,
) -> tuple[str, str]:
    """XADD one event as the original library does; (stream key, entry id)."""
    key = legacy_key(keys, service, priority)
    fields = _legacy_fields(service, event_type, data, priority, user_id, correlation_id)
    entry_id = await redis.xadd(key, fields)  # type: ignore[arg-type]
    return key, entry_id.decode()


def _user(user: str, email: str) -> dict[str, str]:
    return {"user_id": user, "email": email, "name": user}


async def _settled(redis: aioredis.Redis, keys: Keys, group: str) -> bool:
    for key in keys.streams_of("identity"):
        groups = {g["name"].decode(): g for g in await redis.xinfo_groups(key)}
        info = groups.get(group)
        if info is None or info["pending"] or info["lag"]:
            return False
    return True


async def _inbox(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT event_id FROM projection_inbox WHERE projection = 'user_directory'"
    )
    return {str(row["event_id"]) for row in rows}


async def test_legacy_publishers_and_the_relay_feed_one_projection_each_event_once(
    projection_settings: Settings,
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
    start_relay: StartRelay,
) -> None:
    """Phase 1: only the original library publishes. Phase 2: both, each for its own users,
    concurrently. Phase 3: the service has moved; the outbox updates the users the library
    created. Then every entry is delivered again: nothing is applied twice."""
    await legacy_initialize(redis_client, keys, "identity")
    legacy_ids: set[str] = set()
    expected: dict[str, tuple[str | None, bool]] = {}
    priorities = ("low", "normal", "high", "critical")

    async def legacy(user: str, event_type: str, email: str, priority: str) -> None:
        key, entry_id = await legacy_publish(
            redis_client, keys, "identity", event_type, _user(user, email), priority
        )
        legacy_ids.add(legacy_event_id(key, entry_id))
        expected[user] = (email, event_type == "user_deleted")

    for i in range(40):  # phase 1
        await legacy(f"m{i}", "user_created", f"m{i}-old@example.com", priorities[i % 4])

    async def legacy_side() -> None:  # phase 2, the library's half
        for i in range(120):
            await legacy(f"l{i % 30}", "user_updated", f"l{i}@example.com", priorities[i % 4])

    outbox_specs = [
        EventSpec(
            "identity",
            "user_updated",
            _user(f"o{i % 30}", f"o{i}@example.com"),
            aggregate_id=f"o{i % 30}",
            priority=(MessagePriority.NORMAL, MessagePriority.HIGH)[i % 2],
        )
        for i in range(120)
    ]
    async with start_relay(), running([user_directory], projection_settings, workers=2):
        outbox_events, _ = await asyncio.gather(
            emit_events(database_url, outbox_specs), legacy_side()
        )
        for spec in outbox_specs:
            expected[spec.data["user_id"]] = (spec.data["email"], False)
        moved = await emit_events(  # phase 3: later changes of the library's users
            database_url,
            [
                EventSpec("identity", "user_updated", _user(f"m{i}", f"m{i}-new@example.com"))
                for i in range(0, 40, 2)
            ],
        )
        for event in moved:
            expected[event.data["user_id"]] = (event.data["email"], False)
        every = legacy_ids | {str(e.event_id) for e in [*outbox_events, *moved]}
        assert len(every) == 40 + 120 + 120 + 20
        await poll(lambda: async_eq(_inbox(asyncpg_conn), every))
        await poll(lambda: _settled(redis_client, keys, "user_directory"))
        assert await directory(asyncpg_conn) == expected
        assert await redis_client.xlen(keys.dead_letter) == 0  # markers skipped, not dead

        for key in keys.streams_of("identity"):  # deliver everything again
            await redis_client.xgroup_setid(key, "user_directory", "0")
        await poll(lambda: _settled(redis_client, keys, "user_directory"))
    assert await _inbox(asyncpg_conn) == every
    assert await directory(asyncpg_conn) == expected
    assert await redis_client.xlen(keys.dead_letter) == 0
    counts = await asyncpg_conn.fetchrow(
        "SELECT sum(processed) AS processed, sum(skipped) AS skipped FROM projection_consumers"
        " WHERE projection = 'user_directory'"
    )
    assert (counts["processed"], counts["skipped"]) == (len(every), 0)  # markers: not events


async def test_a_legacy_entry_decodes_with_its_fields_and_a_stable_id(keys: Keys) -> None:
    key = legacy_key(keys, "identity", "high")
    fields = _legacy_fields(
        "identity", "user_created", {"user_id": "7"}, "high", "admin", "req-123"
    )
    message = decode_entry("identity", "1700000000000-3", fields, key)
    assert message.event_type == "user_created"
    assert message.priority is MessagePriority.HIGH
    assert message.data == {"user_id": "7"}
    assert (message.user_id, message.correlation_id) == ("admin", "req-123")
    assert message.service == "identity-service"
    assert message.event_id == legacy_event_id(key, "1700000000000-3")
    assert uuid.UUID(message.event_id).version == 5
    again = decode_entry(
        key, "1700000000000-3", {k.encode(): v.encode() for k, v in fields.items()}
    )
    assert again.event_id == message.event_id  # the same for every consumer, bytes or str
    bare = decode_entry(key, "1-0", {**fields, "correlation_id": "", "user_id": ""})
    assert bare.user_id is None
    assert bare.correlation_id == bare.event_id  # defaulted, so traces still group


async def test_what_the_relay_writes_decodes_with_the_original_field_rules(
    database_url: str,
    redis_client: aioredis.Redis,
    keys: Keys,
    start_relay: StartRelay,
) -> None:
    """An unchanged consumer of the original library reads our entries: its ``from_dict``
    takes ``event_type, service, data`` (JSON), ``priority`` (one of its four names),
    ``timestamp`` (float), ``retry_count``, ``max_retries`` (int), ``correlation_id`` and
    ``user_id`` (strings) from the fields; the entry id is the message id."""
    events = await emit_events(
        database_url,
        [
            EventSpec(
                "identity",
                "user_created",
                {"user_id": "123", "email": "user@example.com"},
                priority=MessagePriority.HIGH,
                user_id="admin",
                correlation_id="req-123",
            )
        ],
    )
    key = keys.stream("identity", MessagePriority.HIGH)
    async with start_relay():
        await poll(lambda: redis_client.xlen(key))
    [(entry_id, raw)] = await redis_client.xrange(key)
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    original = {
        "id": entry_id.decode(),
        "stream": "identity",
        "event_type": fields["event_type"],
        "service": fields["service"],
        "data": json.loads(fields["data"]),
        "priority": fields["priority"],
        "timestamp": float(fields["timestamp"]),
        "retry_count": int(fields.get("retry_count", 0)),
        "max_retries": int(fields.get("max_retries", 3)),
        "correlation_id": fields.get("correlation_id"),
        "user_id": fields.get("user_id"),
    }
    assert original["event_type"] == "user_created"
    assert original["service"] == "identity"
    assert original["data"] == {"user_id": "123", "email": "user@example.com"}
    assert original["priority"] == "high"  # one of the four names it knows
    assert abs(original["timestamp"] - events[0].occurred_at.timestamp()) < 1e-3
    assert (original["retry_count"], original["max_retries"]) == (0, 3)
    assert (original["correlation_id"], original["user_id"]) == ("req-123", "admin")
