"""Priority-weighted reads (docs/decisions/0005-priorities.md) against real Redis.

The projection worker reads with :meth:`GroupConsumer.read_new`, so these tests read with it
directly: under a flood of CRITICAL and HIGH entries every batch still carries NORMAL (and LOW,
which shares the NORMAL stream) in at least the share :data:`PRIORITY_WEIGHTS` gives it, each
batch lists CRITICAL before HIGH before NORMAL, and a share a higher stream cannot use goes to
the lower ones, so the batch is full whenever there is enough to fill it.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from outbox.envelope import MessagePriority
from outbox.streams.codec import decode_entry, encode_fields
from outbox.streams.consumer import PRIORITY_WEIGHTS, Entry, GroupConsumer
from outbox.streams.keys import Keys

SERVICE = "identity"
CRITICAL = MessagePriority.CRITICAL
HIGH = MessagePriority.HIGH
NORMAL = MessagePriority.NORMAL
LOW = MessagePriority.LOW
TOTAL_WEIGHT = sum(PRIORITY_WEIGHTS.values())


def floor_share(batch_size: int, *priorities: MessagePriority) -> int:
    """The least a stream with a backlog gets of a batch: its weight's share, rounded down
    (plus the shares of ``priorities`` above it that had nothing to read)."""
    return sum(batch_size * PRIORITY_WEIGHTS[p] // TOTAL_WEIGHT for p in priorities)


def _fields(priority: MessagePriority, seq: int) -> dict[str, str]:
    return encode_fields(
        event_id=str(uuid.uuid4()),
        event_type="tick",
        service=SERVICE,
        source=SERVICE,
        data_json=f'{{"seq":{seq}}}',
        priority=priority,
        occurred_at=datetime.now(UTC),
        correlation_id=str(uuid.uuid4()),
        position=seq,
        max_retries=3,
    )


async def _backlog(
    redis: aioredis.Redis, keys: Keys, counts: Mapping[MessagePriority, int]
) -> dict[str, list[str]]:
    """XADD ``counts`` entries of each priority (LOW onto the NORMAL stream, as the relay does;
    LOW and NORMAL alternate there); return the entry ids per stream key, in stream order."""
    ids: dict[str, list[str]] = {keys.stream(SERVICE, p): [] for p in (CRITICAL, HIGH, NORMAL)}
    plan: list[MessagePriority] = []
    for priority in (CRITICAL, HIGH):
        plan += [priority] * counts.get(priority, 0)
    normal, low = counts.get(NORMAL, 0), counts.get(LOW, 0)
    for i in range(max(normal, low)):
        plan += [p for p, n in ((NORMAL, normal), (LOW, low)) if i < n]
    for start in range(0, len(plan), 2000):
        chunk = plan[start : start + 2000]
        async with redis.pipeline(transaction=False) as pipe:
            for seq, priority in enumerate(chunk, start):
                fields: dict[Any, Any] = _fields(priority, seq)
                pipe.xadd(keys.stream(SERVICE, priority), fields)
            replies = await pipe.execute()
        for priority, entry_id in zip(chunk, replies, strict=True):
            ids[keys.stream(SERVICE, priority)].append(entry_id.decode())
    return ids


async def _consumer(redis: aioredis.Redis, keys: Keys) -> GroupConsumer:
    """A consumer wired like the projection worker's (projections/worker.py): one stream per
    priority; the group starts at id 0, so it sees the backlog added before it."""
    consumer = GroupConsumer(
        redis,
        "weights",
        "c1",
        {p: [keys.stream(SERVICE, p)] for p in (CRITICAL, HIGH, NORMAL)},
    )
    await consumer.ensure_groups()
    return consumer


def _wire_priority(entry: Entry) -> MessagePriority:
    """The priority the event was published with (LOW is only in the entry, not the key)."""
    return decode_entry(SERVICE, entry.id, entry.fields).priority


def _assert_served_in_priority_order(batch: Sequence[Entry]) -> None:
    streams = [entry.priority for entry in batch]
    assert streams == sorted(streams, reverse=True), "a batch must list CRITICAL, HIGH, NORMAL"


@pytest.mark.parametrize("batch_size", [500, 50])
async def test_normal_and_low_keep_their_share_under_a_critical_and_high_flood(
    redis_client: aioredis.Redis, stream_prefix: str, batch_size: int
) -> None:
    keys = Keys(stream_prefix)
    ids = await _backlog(redis_client, keys, {CRITICAL: 6000, HIGH: 6000, NORMAL: 600, LOW: 600})
    consumer = await _consumer(redis_client, keys)
    normal_key = keys.stream(SERVICE, NORMAL)
    # Ten reads stay inside the flood: CRITICAL and HIGH cannot run dry before the last one.
    reads = 10
    assert reads * batch_size <= 6000
    seen: set[tuple[str, str]] = set()
    normal_taken = 0
    for number in range(reads):
        batch = await consumer.read_new(batch_size, 0)
        per_stream = Counter(entry.priority for entry in batch)
        wire = Counter(_wire_priority(entry) for entry in batch)
        context = f"read {number}: {dict(per_stream)} (wire {dict(wire)})"

        assert len(batch) == batch_size, context
        _assert_served_in_priority_order(batch)
        # Every priority gets at least its weighted share in every batch, so NORMAL (and LOW
        # on its stream) is never starved, while CRITICAL is preferred over HIGH over NORMAL.
        for priority in (CRITICAL, HIGH, NORMAL):
            assert per_stream[priority] >= floor_share(batch_size, priority), context
        assert per_stream[CRITICAL] > per_stream[HIGH] > per_stream[NORMAL], context
        # LOW shares NORMAL's stream and quota (ADR 0005): both come in every batch.
        assert wire[NORMAL] > 0, context
        assert wire[LOW] > 0, context
        assert wire[NORMAL] + wire[LOW] == per_stream[NORMAL], context
        # The NORMAL stream is read in order, without skipping or repeating an entry.
        normal_ids = [entry.id for entry in batch if entry.stream == normal_key]
        expected = ids[normal_key][normal_taken : normal_taken + len(normal_ids)]
        assert normal_ids == expected, context
        normal_taken += len(normal_ids)
        for entry in batch:
            assert (entry.stream, entry.id) not in seen, f"{entry} delivered twice"
            seen.add((entry.stream, entry.id))
    assert normal_taken >= reads * floor_share(batch_size, NORMAL)


@pytest.mark.parametrize(
    ("backlog", "least"),
    [
        pytest.param({NORMAL: 1500, LOW: 1500}, {NORMAL: (CRITICAL, HIGH, NORMAL)}, id="normal"),
        pytest.param({HIGH: 3000}, {HIGH: (CRITICAL, HIGH, NORMAL)}, id="high"),
        pytest.param({CRITICAL: 3000}, {CRITICAL: (CRITICAL, HIGH, NORMAL)}, id="critical"),
        pytest.param(
            {HIGH: 3000, NORMAL: 3000},
            {HIGH: (CRITICAL, HIGH), NORMAL: (NORMAL,)},
            id="high-and-normal",
        ),
        pytest.param(
            {CRITICAL: 3000, NORMAL: 3000},
            {CRITICAL: (CRITICAL,), NORMAL: (HIGH, NORMAL)},
            id="critical-and-normal",
        ),
    ],
)
async def test_shares_of_empty_streams_go_to_the_ones_with_a_backlog(
    redis_client: aioredis.Redis,
    stream_prefix: str,
    backlog: dict[MessagePriority, int],
    least: dict[MessagePriority, tuple[MessagePriority, ...]],
) -> None:
    """``least`` maps each stream with a backlog to the priorities whose shares it must get at
    least (its own and those of empty streams above it); together they make the whole batch."""
    batch_size = 500
    keys = Keys(stream_prefix)
    await _backlog(redis_client, keys, backlog)
    consumer = await _consumer(redis_client, keys)
    assert sum(floor_share(batch_size, *shares) for shares in least.values()) >= batch_size - 2
    for number in range(3):
        batch = await consumer.read_new(batch_size, 0)
        per_stream = Counter(entry.priority for entry in batch)
        context = f"read {number}: {dict(per_stream)}"
        assert len(batch) == batch_size, context
        assert set(per_stream) == set(least), context
        _assert_served_in_priority_order(batch)
        for priority, shares in least.items():
            assert per_stream[priority] >= floor_share(batch_size, *shares), context


async def test_a_short_critical_stream_is_read_whole_and_first(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    batch_size = 500
    keys = Keys(stream_prefix)
    ids = await _backlog(redis_client, keys, {CRITICAL: 10, HIGH: 3000, NORMAL: 3000})
    consumer = await _consumer(redis_client, keys)
    batch = await consumer.read_new(batch_size, 0)
    per_stream = Counter(entry.priority for entry in batch)
    assert len(batch) == batch_size, dict(per_stream)
    # All ten CRITICAL entries, in stream order, at the head of the batch; the unused CRITICAL
    # share flows down to HIGH, and NORMAL keeps its own.
    assert [entry.id for entry in batch[:10]] == ids[keys.stream(SERVICE, CRITICAL)]
    _assert_served_in_priority_order(batch)
    assert per_stream[HIGH] >= floor_share(batch_size, CRITICAL, HIGH) - 10
    assert per_stream[NORMAL] >= floor_share(batch_size, NORMAL)
    # A CRITICAL entry that arrives now is at the head of the very next batch.
    (late,) = (await _backlog(redis_client, keys, {CRITICAL: 1}))[keys.stream(SERVICE, CRITICAL)]
    following = await consumer.read_new(batch_size, 0)
    assert following[0].id == late
    assert len(following) == batch_size


async def test_streams_drain_completely_then_the_read_is_empty(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    keys = Keys(stream_prefix)
    counts = {CRITICAL: 700, HIGH: 900, NORMAL: 450, LOW: 450}
    ids = await _backlog(redis_client, keys, counts)
    consumer = await _consumer(redis_client, keys)
    delivered: dict[str, list[str]] = {key: [] for key in ids}
    for _ in range(20):
        batch = await consumer.read_new(500, 0)
        if not batch:
            break
        _assert_served_in_priority_order(batch)
        for entry in batch:
            delivered[entry.stream].append(entry.id)
    else:
        pytest.fail("the streams did not drain in 20 reads of 500")
    # Every entry once, each stream in its order: weighting never loses or repeats an entry.
    assert delivered == ids
