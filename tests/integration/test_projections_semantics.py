"""Projection semantics against real PostgreSQL and Redis: a failing event is isolated from its
batch, per-aggregate order holds across failures (and waiting behind one costs no retry), retries
back off exponentially, a consumer re-reads its own pending entries on start, and consumer names
are stable and never shared."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from itertools import pairwise
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from outbox import EventSpec
from outbox.projections.projection import Projection
from outbox.settings import Settings
from outbox.streams.codec import StreamMessage
from outbox.streams.keys import Keys
from tests.fixtures_projections import (
    Runner,
    async_eq,
    configure,
    emit_events,
    group_settled,
    poll,
    xadd_events,
)

#: Long enough that XAUTOCLAIM never takes an entry, and no consumer is removed, during a test:
#: what these tests observe is the worker's own retry and start-up logic, not the reclaim.
NEVER_MS = "600000"


class ReadModel:
    """An order-sensitive read model: a row per application, numbered by a sequence."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def create(self) -> None:
        await self.conn.execute(
            "CREATE TABLE semantics_applied ("
            " seq bigserial PRIMARY KEY, key text NOT NULL, aggregate text, event_id uuid NOT NULL)"
        )

    async def keys(self) -> list[str]:
        rows = await self.conn.fetch("SELECT key FROM semantics_applied ORDER BY seq")
        return [row["key"] for row in rows]

    async def inbox(self, projection: str) -> set[str]:
        rows = await self.conn.fetch(
            "SELECT event_id::text FROM projection_inbox WHERE projection = $1", projection
        )
        return {row[0] for row in rows}


def _recording_projection(name: str, broken: set[str]) -> Projection:
    """Handler ``record`` appends the event's key; it raises while the key is in ``broken``."""
    projection = Projection(name, streams=["identity"])

    @projection.on("record")
    async def record(event: StreamMessage, db: Any) -> None:
        key = event.data["key"]
        if key in broken:
            raise RuntimeError(f"handler bug on {key}")
        await db.execute(
            "INSERT INTO semantics_applied (key, aggregate, event_id) VALUES ($1, $2, $3)",
            key,
            event.aggregate_id,
            event.event_id,
        )

    return projection


def _spec(key: str, aggregate: str | None = None) -> EventSpec:
    return EventSpec("identity", "record", {"key": key}, aggregate_id=aggregate)


async def _pending(redis: aioredis.Redis, stream: str, group: str) -> dict[str, tuple[str, int]]:
    """The group's pending entries: entry id -> (consumer, times delivered); {} until the
    consumer has created the group."""
    try:
        rows: list[Any] = await redis.xpending_range(stream, group, min="-", max="+", count=1000)
    except ResponseError as error:
        if "NOGROUP" in str(error):
            return {}
        raise
    return {
        row["message_id"].decode(): (row["consumer"].decode(), int(row["times_delivered"]))
        for row in rows
    }


async def _letters(redis: aioredis.Redis, keys: Keys) -> list[dict[str, str]]:
    entries: Any = await redis.xrange(keys.dead_letter)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


async def test_failing_event_does_not_hold_back_the_healthy_events_of_its_batch(
    projection_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    # One retry, due 1-2 s after the first failure: a wide window in which to look.
    settings = configure(
        monkeypatch,
        MAX_RETRIES="1",
        RETRY_BASE_DELAY_MS="2000",
        RETRY_MAX_DELAY_MS="2000",
        CLAIM_MIN_IDLE_MS=NEVER_MS,
        DEAD_CONSUMER_IDLE_MS=NEVER_MS,
    )
    model = ReadModel(asyncpg_conn)
    await model.create()
    broken = {"bad", "flaky"}  # "bad" is never fixed; "flaky" is fixed once the batch is seen
    projection = _recording_projection("isolation", broken)
    names = ["h0", "h1", "bad", "h2", "flaky", "h3"]
    events = await emit_events(database_url, [_spec(key, key) for key in names])
    # XADDed before the consumer starts: its first read delivers all six in one batch.
    ids = dict(zip(names, await xadd_events(redis_client, keys, events), strict=True))
    event_ids = {key: str(event.event_id) for key, event in zip(names, events, strict=True)}
    healthy = ["h0", "h1", "h2", "h3"]
    stream = keys.stream("identity")

    async def healthy_done_failing_pending() -> dict[str, tuple[str, int]] | None:
        pending = await _pending(redis_client, stream, "isolation")
        if await model.keys() == healthy and set(pending) == {ids["bad"], ids["flaky"]}:
            return pending
        return None

    async with running([projection], settings):
        pending = await poll(healthy_done_failing_pending, timeout_s=10)
        # The healthy events are committed and acked while both failing ones still wait for
        # their first retry (delivered once, nothing dead-lettered): they did not wait for it.
        assert {entry: delivered for entry, (_, delivered) in pending.items()} == {
            ids["bad"]: 1,
            ids["flaky"]: 1,
        }
        assert await redis_client.xlen(keys.dead_letter) == 0
        # A failed event leaves no inbox row, else its retry would be taken for a duplicate.
        assert await model.inbox("isolation") == {event_ids[key] for key in healthy}

        broken.discard("flaky")
        letters = await poll(lambda: _letters(redis_client, keys), timeout_s=10)
        await poll(lambda: group_settled(redis_client, stream, "isolation"), timeout_s=10)

    assert await model.keys() == [*healthy, "flaky"]
    assert await model.inbox("isolation") == {event_ids[key] for key in [*healthy, "flaky"]}
    (letter,) = letters
    assert letter["entry_id"] == ids["bad"]
    assert letter["attempts"] == "2"  # MAX_RETRIES + 1 deliveries


async def test_events_after_a_failed_event_of_the_same_aggregate_wait_for_it(
    projection_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    settings = configure(
        monkeypatch,
        MAX_RETRIES="50",  # a2 is fixed by the test long before it could be dead-lettered
        RETRY_BASE_DELAY_MS="300",
        RETRY_MAX_DELAY_MS="300",
        CLAIM_MIN_IDLE_MS=NEVER_MS,
        DEAD_CONSUMER_IDLE_MS=NEVER_MS,
    )
    model = ReadModel(asyncpg_conn)
    await model.create()
    broken = {"a2"}
    projection = _recording_projection("aggregate_order", broken)
    names = ["a1", "b1", "a2", "a3", "b2", "a4", "b3"]
    events = await emit_events(database_url, [_spec(key, key[0]) for key in names])
    ids = dict(zip(names, await xadd_events(redis_client, keys, events), strict=True))
    stream = keys.stream("identity")

    async def a2_retried_while_b_flowed() -> bool:
        pending = await _pending(redis_client, stream, "aggregate_order")
        return (
            await model.keys() == ["a1", "b1", "b2", "b3"]
            and set(pending) == {ids["a2"], ids["a3"], ids["a4"]}
            and pending[ids["a2"]][1] >= 2
        )

    async with running([projection], settings):
        # a2 failed, was redelivered and failed again; a3 and a4 (same batch, same aggregate)
        # were held back all along while aggregate b went on.
        await poll(a2_retried_while_b_flowed, timeout_s=10)
        # A later batch while a2 waits: a5 waits behind it too, b4 does not.
        more = await emit_events(database_url, [_spec("a5", "a"), _spec("b4", "b")])
        a5_id, _ = await xadd_events(redis_client, keys, more)
        await poll(lambda: _contains(model, "b4"), timeout_s=10)
        assert "a5" not in await model.keys()
        assert a5_id in await _pending(redis_client, stream, "aggregate_order")

        broken.clear()
        await poll(lambda: group_settled(redis_client, stream, "aggregate_order"), timeout_s=10)

    rows = await asyncpg_conn.fetch("SELECT key, aggregate FROM semantics_applied ORDER BY seq")
    order: dict[str, list[str]] = {}
    for row in rows:
        order.setdefault(row["aggregate"], []).append(row["key"])
    assert order == {"a": ["a1", "a2", "a3", "a4", "a5"], "b": ["b1", "b2", "b3", "b4"]}
    assert await redis_client.xlen(keys.dead_letter) == 0


async def _contains(model: ReadModel, key: str) -> bool:
    return key in await model.keys()


async def test_deliveries_spent_waiting_behind_a_failed_event_are_not_counted_as_attempts(
    projection_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    max_retries = 3
    settings = configure(
        monkeypatch,
        MAX_RETRIES=str(max_retries),
        RETRY_BASE_DELAY_MS="100",
        RETRY_MAX_DELAY_MS="100",
        CLAIM_MIN_IDLE_MS=NEVER_MS,
        DEAD_CONSUMER_IDLE_MS=NEVER_MS,
    )
    model = ReadModel(asyncpg_conn)
    await model.create()
    stream = keys.stream("identity")
    projection = Projection("held_attempts", streams=["identity"])
    # Deliveries (the entry's delivery counter) in which the handler failed, per key.
    failed: dict[str, set[int]] = {"a2": set(), "a3": set()}

    @projection.on("record")
    async def record(event: StreamMessage, db: Any) -> None:
        key = event.data["key"]
        (row,) = await redis_client.xpending_range(
            stream, "held_attempts", min=event.id, max=event.id, count=1
        )
        delivery = int(row["times_delivered"])
        # a2 fails in the first MAX_RETRIES deliveries that run its handler, so only its last
        # allowed one succeeds; a3, held behind a2 meanwhile, then fails in the first delivery
        # that runs its handler. (A delivery runs the handler twice: batch, then savepoint path.)
        runs = failed.get(key)
        limit = max_retries if key == "a2" else 1
        if runs is not None and (len(runs) < limit or delivery in runs):
            runs.add(delivery)
            raise RuntimeError(f"{key} fails on delivery {delivery}")
        await db.execute(
            "INSERT INTO semantics_applied (key, aggregate, event_id) VALUES ($1, $2, $3)",
            key,
            event.aggregate_id,
            event.event_id,
        )

    names = ["a1", "b1", "a2", "a3", "b2"]
    events = await emit_events(database_url, [_spec(key, key[0]) for key in names])
    await xadd_events(redis_client, keys, events)
    async with running([projection], settings):
        await poll(lambda: group_settled(redis_client, stream, "held_attempts"), timeout_s=10)

    assert len(failed["a2"]) == max_retries
    assert len(failed["a3"]) == 1
    # a3 failed once: it is retried like any failed event, not dead-lettered at once for the
    # deliveries it spent waiting behind a2.
    assert await _letters(redis_client, keys) == []
    assert await model.keys() == ["a1", "b1", "b2", "a2", "a3"]


async def test_retries_back_off_exponentially_up_to_the_cap_then_dead_letter(
    projection_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    base_s, cap_s, max_retries = 0.2, 0.5, 5
    settings = configure(
        monkeypatch,
        MAX_RETRIES=str(max_retries),
        RETRY_BASE_DELAY_MS=str(int(base_s * 1000)),
        RETRY_MAX_DELAY_MS=str(int(cap_s * 1000)),
        CLAIM_MIN_IDLE_MS=NEVER_MS,
        DEAD_CONSUMER_IDLE_MS=NEVER_MS,
    )
    stream = keys.stream("identity")
    projection = Projection("backoff", streams=["identity"])
    # First handler call of each delivery, by the entry's delivery counter (the handler may be
    # called more than once per delivery: batch fast path, then the savepoint path).
    first_call: dict[int, float] = {}

    @projection.on("record")
    async def record(event: StreamMessage, db: Any) -> None:
        now = time.monotonic()
        (row,) = await redis_client.xpending_range(
            stream, "backoff", min=event.id, max=event.id, count=1
        )
        first_call.setdefault(int(row["times_delivered"]), now)
        raise RuntimeError("always fails")

    events = await emit_events(database_url, [_spec("x")])
    (entry_id,) = await xadd_events(redis_client, keys, events)
    async with running([projection], settings):
        letters = await poll(lambda: _letters(redis_client, keys), timeout_s=10)
        await poll(lambda: group_settled(redis_client, stream, "backoff"), timeout_s=10)

    (letter,) = letters
    assert letter["entry_id"] == entry_id
    assert letter["attempts"] == str(max_retries + 1)
    assert sorted(first_call) == list(range(1, max_retries + 2))
    times = [first_call[delivery] for delivery in sorted(first_call)]
    gaps = [later - earlier for earlier, later in pairwise(times)]
    # The wait before retry k is uniform in [ceiling/2, ceiling], ceiling = min(cap, base·2^(k-1))
    # (streams.connection.backoff_delay_s): 0.2, 0.4, 0.5, 0.5, 0.5 s here, so the lower bounds
    # grow 0.1, 0.2, 0.25 s and the cap holds the last ones. The worker's own latency (apply,
    # XPENDING, XCLAIM) only adds to a wait: the lower bounds are exact, the upper ones get slack,
    # 1 s for a loaded CI host. Without the cap the fifth wait would be at least 1.6 s, above
    # 0.5 + 1 s, so the cap is still checked.
    slack_s = 1.0
    ceilings = [min(cap_s, base_s * 2 ** (k - 1)) for k in range(1, max_retries + 1)]
    for gap, ceiling in zip(gaps, ceilings, strict=True):
        assert ceiling / 2 <= gap <= ceiling + slack_s, (gaps, ceilings)


async def test_consumer_rereads_its_own_pending_entries_on_start(
    projection_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    settings = configure(monkeypatch, CLAIM_MIN_IDLE_MS=NEVER_MS, DEAD_CONSUMER_IDLE_MS=NEVER_MS)
    model = ReadModel(asyncpg_conn)
    await model.create()
    projection = _recording_projection("startup", set())
    stream = keys.stream("identity")
    await redis_client.xgroup_create(stream, "startup", id="0", mkstream=True)
    own = ["p0", "p1", "p2", "p3"]
    ghost = ["g0", "g1"]
    new = ["n0", "n1", "n2"]
    events = await emit_events(database_url, [_spec(key) for key in [*own, *ghost, *new]])
    ids = dict(
        zip([*own, *ghost, *new], await xadd_events(redis_client, keys, events), strict=True)
    )
    # Consumer boot-0 (the name the runner will take) read these before it stopped; another
    # consumer, "ghost", read the next ones; the last three were never delivered.
    await redis_client.xreadgroup("startup", "boot-0", {stream: ">"}, count=len(own))
    await redis_client.xreadgroup("startup", "ghost", {stream: ">"}, count=len(ghost))
    assert await _pending(redis_client, stream, "startup") == {
        **{ids[key]: ("boot-0", 1) for key in own},
        **{ids[key]: ("ghost", 1) for key in ghost},
    }

    async with running([projection], settings, consumer_stem="boot", workers=1):
        await poll(lambda: async_eq(model.keys(), [*own, *new]), timeout_s=5)
        # The control: XAUTOCLAIM could not take entries that idle for milliseconds, so the
        # ghost's entries are still where they were. boot-0's came back by its start-up re-read.
        pending = await _pending(redis_client, stream, "startup")
        assert {entry: consumer for entry, (consumer, _) in pending.items()} == {
            ids[key]: "ghost" for key in ghost
        }
    # Own pending entries were applied before anything new.
    assert await model.keys() == [*own, *new]


async def _consumers(conn: asyncpg.Connection, projection: str) -> dict[str, bool]:
    """Registered consumer names of ``projection`` -> whether the consumer is live."""
    rows = await conn.fetch(
        "SELECT consumer, stopped_at IS NULL AS live FROM projection_consumers"
        " WHERE projection = $1",
        projection,
    )
    return {row["consumer"]: row["live"] for row in rows}


async def _group_consumers(redis: aioredis.Redis, stream: str, group: str) -> set[str]:
    return {c["name"].decode() for c in await redis.xinfo_consumers(stream, group)}


async def test_a_restarted_projection_reuses_its_consumer_names(
    projection_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    settings = configure(monkeypatch, CLAIM_MIN_IDLE_MS=NEVER_MS, DEAD_CONSUMER_IDLE_MS=NEVER_MS)
    model = ReadModel(asyncpg_conn)
    await model.create()
    projection = _recording_projection("stable", set())
    stream = keys.stream("identity")
    names = {"st-0": True, "st-1": True}

    async with running([projection], settings, consumer_stem="st", workers=2):
        await poll(lambda: async_eq(_consumers(asyncpg_conn, "stable"), names), timeout_s=5)
        await poll(lambda: async_eq(_group_consumers(redis_client, stream, "stable"), set(names)))
    assert await _consumers(asyncpg_conn, "stable") == {"st-0": False, "st-1": False}

    # While it is down, st-1 is handed an entry it does not ack (as if it crashed mid-batch).
    events = await emit_events(database_url, [_spec("left")])
    await xadd_events(redis_client, keys, events)
    await redis_client.xreadgroup("stable", "st-1", {stream: ">"}, count=1)

    async with running([projection], settings, consumer_stem="st", workers=2):
        await poll(lambda: async_eq(_consumers(asyncpg_conn, "stable"), names), timeout_s=5)
        # The new st-1 is the old one: it got the entry back at once (XAUTOCLAIM cannot here).
        await poll(lambda: async_eq(model.keys(), ["left"]), timeout_s=5)
        await poll(lambda: group_settled(redis_client, stream, "stable"), timeout_s=5)
        assert await _group_consumers(redis_client, stream, "stable") == set(names)


async def test_concurrent_runners_never_share_a_consumer_name(
    projection_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
) -> None:
    settings = configure(monkeypatch, CLAIM_MIN_IDLE_MS=NEVER_MS, DEAD_CONSUMER_IDLE_MS=NEVER_MS)
    await ReadModel(asyncpg_conn).create()
    projection = _recording_projection("pair", set())
    stream = keys.stream("identity")
    four = {f"pr-{i}" for i in range(4)}

    async def live() -> set[str]:
        return {name for name, up in (await _consumers(asyncpg_conn, "pair")).items() if up}

    async with AsyncExitStack() as first:
        # Both start together and race for names: each must end up with two of its own.
        await first.enter_async_context(
            running([projection], settings, consumer_stem="pr", workers=2)
        )
        async with running([projection], settings, consumer_stem="pr", workers=2):
            await poll(lambda: async_eq(live(), four), timeout_s=5)
            await poll(lambda: async_eq(_group_consumers(redis_client, stream, "pair"), four))

            await first.aclose()  # the first runner stops cleanly and releases its names
            released = await poll(lambda: _released(asyncpg_conn, "pair"), timeout_s=5)
            assert len(released) == 2
            kept = four - released

            # A third runner takes the lowest free names: exactly the ones released.
            async with running([projection], settings, consumer_stem="pr", workers=2):
                await poll(lambda: async_eq(live(), four), timeout_s=5)
                assert await _group_consumers(redis_client, stream, "pair") == four
            assert await live() == kept
    assert await _consumers(asyncpg_conn, "pair") == dict.fromkeys(four, False)


async def _released(conn: asyncpg.Connection, projection: str) -> set[str]:
    return {name for name, up in (await _consumers(conn, projection)).items() if not up}
