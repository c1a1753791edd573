"""Declaring projections, the registry, dead-letter filters and CLI durations (pure logic)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from outbox.cli.projections import duration_s
from outbox.envelope import MessagePriority
from outbox.errors import ConfigurationError, InvalidNameError
from outbox.projections import Projection, register, select, unregister
from outbox.projections.examples.common import latest, version
from outbox.streams.codec import StreamMessage, decode_entry, encode_fields
from outbox.streams.dead_letter import DeadLetter, DeadLetterFilter
from outbox.streams.keys import Keys


def _message(position: int, user: str) -> StreamMessage:
    fields = encode_fields(
        event_id="018f0000-0000-7000-8000-000000000001",
        event_type="user_updated",
        service="identity",
        source="identity",
        data_json=f'{{"user_id": "{user}"}}',
        priority=MessagePriority.NORMAL,
        occurred_at=datetime.now(UTC),
        correlation_id="c",
        position=position,
        max_retries=3,
    )
    return decode_entry("p:identity:events", f"1-{position}", fields)


def test_projection_declares_handlers_per_type() -> None:
    projection = Projection("demo_projection", streams=["identity"])

    @projection.on("user_created")
    async def created(event: StreamMessage, db: Any) -> None: ...

    @projection.on_batch("user_updated")
    async def updated(events: Sequence[StreamMessage], db: Any) -> None: ...

    assert projection.event_types == {"user_created", "user_updated"}
    assert not projection.handles("user_login")
    with pytest.raises(ConfigurationError):
        projection.on("user_created")(created)
    with pytest.raises(InvalidNameError):
        Projection("Bad Name", streams=["identity"])
    with pytest.raises(ConfigurationError):
        Projection("empty", streams=[])


def test_registry_selects_by_name() -> None:
    projection = register(Projection("registry_demo", streams=["assets"]))
    try:
        assert select(["registry_demo"]) == [projection]
        with pytest.raises(ConfigurationError, match="unknown projection nope"):
            select(["nope"])
        with pytest.raises(ConfigurationError):
            register(Projection("registry_demo", streams=["assets"]))
    finally:
        unregister("registry_demo")


def test_latest_keeps_the_newest_event_per_key() -> None:
    events = [_message(3, "a"), _message(1, "a"), _message(2, "b")]
    newest = latest(events, lambda m: m.data["user_id"])
    assert sorted(m.position or 0 for m in newest) == [2, 3]


def test_an_outbox_event_is_newer_than_any_the_original_library_published() -> None:
    """A service moving to the outbox updates the rows its direct XADDs wrote (issue 23)."""
    legacy = decode_entry(
        "p:identity:events",
        "4102444800000-0",
        {"event_type": "user_updated", "data": "{}", "timestamp": "4102444800.0"},  # in 2100
    )
    assert legacy.position is None
    assert version(_message(1, "a")) > version(legacy)


def test_dead_letter_filter() -> None:
    keys = Keys("p")
    letter = DeadLetter(
        id="1-1",
        source_stream="p:identity:events:high",
        group="user_directory",
        entry_id="5-0",
        attempts=4,
        error="boom",
        event_id="e",
        event_type="user_created",
        consumer="w-0",
        failed_at=datetime.now(UTC) - timedelta(hours=2),
        payload={},
    )
    assert DeadLetterFilter(stream="identity").matches(letter, keys)
    assert DeadLetterFilter(stream="p:identity:events:high").matches(letter, keys)
    assert not DeadLetterFilter(stream="assets").matches(letter, keys)
    assert DeadLetterFilter(group="user_directory", event_type="user_created").matches(letter, keys)
    assert not DeadLetterFilter(event_type="user_deleted").matches(letter, keys)
    assert DeadLetterFilter(older_than_s=3600).matches(letter, keys)
    assert not DeadLetterFilter(newer_than_s=3600).matches(letter, keys)


def test_durations() -> None:
    assert duration_s("90") == 90
    assert duration_s("15m") == 900
    assert duration_s("2h") == 7200
    assert duration_s("7d") == 7 * 86400
    with pytest.raises(argparse.ArgumentTypeError):
        duration_s("soon")
