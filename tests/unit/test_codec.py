"""The stream entry format and its CloudEvents 1.0 conversion."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from outbox.envelope import Event, MessagePriority
from outbox.streams.codec import (
    MalformedEntryError,
    decode_entry,
    encode_event,
    entry_ms,
    from_cloudevent,
    to_cloudevent,
)
from outbox.streams.keys import Keys

EVENT = Event(
    event_id=uuid.UUID("0190f5c2-8b30-7e95-828b-8d47493e7cad"),
    service="identity",
    event_type="user_created",
    data={"user_id": "123", "roles": ["ops"], "name": "Zoë"},
    priority=MessagePriority.HIGH,
    occurred_at=datetime(2026, 11, 26, 9, 0, 0, 123456, tzinfo=UTC),
    correlation_id="req-123",
    source="identity",
    causation_id="cmd-7",
    user_id="admin",
    aggregate_id="123",
    dedup_key="user-123-created",
    traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    headers={"tenant": "acme"},
    position=42,
)


def test_round_trip_through_entry_fields() -> None:
    fields = encode_event(EVENT, max_retries=3)
    as_bytes = {k.encode(): v.encode() for k, v in fields.items()}
    message = decode_entry("opsconductor:identity:events:high", "1-0", as_bytes)
    assert message.id == "1-0"
    assert message.stream == "opsconductor:identity:events:high"
    assert (message.event_type, message.service, message.data) == (
        EVENT.event_type,
        EVENT.service,
        EVENT.data,
    )
    assert message.priority is MessagePriority.HIGH
    assert message.timestamp == EVENT.occurred_at.timestamp()
    assert message.occurred_at == EVENT.occurred_at
    assert (message.retry_count, message.max_retries) == (0, 3)
    assert message.event_id == str(EVENT.event_id)
    assert (message.correlation_id, message.causation_id, message.user_id) == (
        "req-123",
        "cmd-7",
        "admin",
    )
    assert (message.aggregate_id, message.dedup_key, message.position) == (
        "123",
        "user-123-created",
        42,
    )
    assert message.traceparent == EVENT.traceparent
    assert message.headers == {"tenant": "acme"}


def test_cloudevent_conversion_is_lossless() -> None:
    fields = encode_event(EVENT, max_retries=3)
    cloudevent = to_cloudevent(fields)
    assert cloudevent["specversion"] == "1.0"
    assert cloudevent["id"] == str(EVENT.event_id)
    assert cloudevent["type"] == "user_created"
    assert cloudevent["source"] == "identity"
    assert cloudevent["time"] == "2026-11-26T09:00:00.123456+00:00"
    assert cloudevent["subject"] == "123"
    assert cloudevent["data"] == EVENT.data
    assert cloudevent["traceparent"] == EVENT.traceparent
    assert all(k.isalnum() and k.islower() for k in cloudevent if k not in ("specversion",))
    json.dumps(cloudevent)
    assert from_cloudevent(cloudevent) == fields


def test_optional_fields_are_absent_when_empty() -> None:
    bare = Event(
        event_id=uuid.uuid4(),
        service="assets",
        event_type="asset_created",
        data={},
        priority=MessagePriority.NORMAL,
        occurred_at=datetime.now(UTC),
        correlation_id="c",
        source="assets",
    )
    fields = encode_event(bare, max_retries=3)
    assert (
        not {
            "causation_id",
            "user_id",
            "aggregate_id",
            "dedup_key",
            "traceparent",
            "headers",
            "position",
        }
        & fields.keys()
    )
    assert from_cloudevent(to_cloudevent(fields)) == fields


@pytest.mark.parametrize(
    "broken",
    [
        {"event_type": None},
        {"data": "not json"},
        {"data": "[1, 2]"},
        {"event_id": "not-a-uuid"},
        {"priority": "urgent"},
        {"timestamp": "yesterday"},
    ],
)
def test_malformed_entries_are_reported(broken: dict[str, str | None]) -> None:
    fields: dict[str, str] = dict(encode_event(EVENT, max_retries=3))
    for key, value in broken.items():
        if value is None:
            del fields[key]
        else:
            fields[key] = value
    with pytest.raises(MalformedEntryError, match="entry 5-0 of s"):
        decode_entry("s", "5-0", fields)


def test_stream_keys() -> None:
    keys = Keys("opsconductor")
    assert keys.stream("identity") == "opsconductor:identity:events"
    assert keys.stream("identity", MessagePriority.LOW) == "opsconductor:identity:events"
    assert keys.stream("identity", MessagePriority.HIGH) == "opsconductor:identity:events:high"
    assert keys.streams_of("ai")[0] == "opsconductor:ai:events:critical"
    assert keys.dead_letter == "opsconductor:dead_letter:events"
    assert keys.metrics == "opsconductor:metrics:events"
    # The watermark's hash tag is the whole stream name: same Redis Cluster slot.
    assert keys.watermark("opsconductor:ai:events") == "{opsconductor:ai:events}:watermark"
    assert keys.parse_stream("opsconductor:ai:events:critical") == ("ai", MessagePriority.CRITICAL)
    assert keys.parse_stream("opsconductor:ai:events") == ("ai", MessagePriority.NORMAL)
    assert keys.parse_stream("other:ai:events") is None
    assert keys.parse_stream("opsconductor:ai:events:low") is None


def test_entry_ms_is_the_time_part_of_an_entry_id() -> None:
    assert entry_ms("1764220800123-7") == 1764220800123
    assert entry_ms("0-0") == 0
    with pytest.raises(ValueError, match="invalid literal"):
        entry_ms("not-an-id")
