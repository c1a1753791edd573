"""emit()'s checks, which run before anything is sent to PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum

import pytest
from pydantic import BaseModel

from outbox.envelope import MessagePriority, uuid7
from outbox.errors import (
    EventSchemaError,
    InvalidNameError,
    PayloadNotSerializableError,
    UnknownPriorityError,
)
from outbox.validation import (
    SchemaRegistry,
    check_event_type,
    check_headers,
    check_identifier,
    check_service,
    serialise_data,
)


@pytest.mark.parametrize("service", ["identity", "assets", "ai", "network-scan", "a1_b"])
def test_valid_services(service: str) -> None:
    assert check_service(service) == service


@pytest.mark.parametrize(
    "service", ["", "Identity", "identity:events", "1st", "with space", "x" * 64, None, 3]
)
def test_invalid_services_are_named(service: object) -> None:
    with pytest.raises(InvalidNameError, match="invalid service"):
        check_service(service)


@pytest.mark.parametrize("event_type", ["user_created", "asset.scanned", "job-failed"])
def test_valid_event_types(event_type: str) -> None:
    assert check_event_type(event_type) == event_type


@pytest.mark.parametrize("event_type", ["", "UserCreated", "user created", "_x", "x" * 128])
def test_invalid_event_types(event_type: str) -> None:
    with pytest.raises(InvalidNameError, match="invalid event type"):
        check_event_type(event_type)


def test_priority_accepts_members_names_and_values() -> None:
    assert MessagePriority.parse(MessagePriority.HIGH) is MessagePriority.HIGH
    assert MessagePriority.parse("critical") is MessagePriority.CRITICAL
    assert MessagePriority.parse(" Low ") is MessagePriority.LOW
    assert MessagePriority.parse(1) is MessagePriority.NORMAL
    assert MessagePriority.HIGH.label == "high"


@pytest.mark.parametrize("priority", ["urgent", 7, -1, None, True, 2.0])
def test_unknown_priority(priority: object) -> None:
    with pytest.raises(UnknownPriorityError, match="unknown priority"):
        MessagePriority.parse(priority)


class Colour(Enum):
    RED = "red"


def test_serialise_common_types() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    ident = uuid.UUID(int=7)
    data, text = serialise_data(
        {"at": moment, "id": ident, "amount": Decimal("1.10"), "colour": Colour.RED, "n": [1, 2.5]}
    )
    assert data["at"] is moment
    assert text == (
        '{"at":"2026-01-02T03:04:05+00:00","id":"00000000-0000-0000-0000-000000000007",'
        '"amount":"1.10","colour":"red","n":[1,2.5]}'
    )


def test_serialise_keeps_unicode_unescaped() -> None:
    _, text = serialise_data({"name": "Zoë ☃"})
    assert text == '{"name":"Zoë ☃"}'


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"a": {"b": [1, {1, 2}]}}, "data.a.b[1]"),
        ({"a": float("nan")}, "data.a"),
        ({"a": [float("inf")]}, "data.a[0]"),
        ({"user name": "nul\x00here"}, "data['user name']"),
        ({"bad": "\ud800"}, "data.bad"),
        ({"blob": b"bytes"}, "data.blob"),
        ({"d": Decimal("NaN")}, "data.d"),
        ({("tuple", "key"): 1}, "data[('tuple', 'key')]"),
    ],
)
def test_unserialisable_data_names_the_path(data: dict[object, object], path: str) -> None:
    with pytest.raises(PayloadNotSerializableError) as info:
        serialise_data(data)
    assert info.value.path == path
    assert path in str(info.value)


@pytest.mark.parametrize("data", [[1, 2], "text", None, 3])
def test_data_must_be_a_mapping(data: object) -> None:
    with pytest.raises(PayloadNotSerializableError, match="expected a mapping"):
        serialise_data(data)


def test_pydantic_model_as_data() -> None:
    class User(BaseModel):
        user_id: int
        email: str

    data, text = serialise_data(User(user_id=1, email="a@example.com"))
    assert data == {"user_id": 1, "email": "a@example.com"}
    assert text == '{"user_id":1,"email":"a@example.com"}'


def test_identifiers() -> None:
    assert check_identifier("user_id", 42) == "42"
    assert check_identifier("user_id", None) is None
    for bad in ("", "x" * 257, "tab\there", 1.5):
        with pytest.raises(InvalidNameError):
            check_identifier("user_id", bad)


def test_headers() -> None:
    assert check_headers(None) == {}
    assert check_headers({"a": "b"}) == {"a": "b"}
    for bad in ({"a": 1}, ["a"], {"a": "\x00"}):
        with pytest.raises(InvalidNameError):
            check_headers(bad)


def test_schema_registry_validates_registered_types_only() -> None:
    class UserCreated(BaseModel):
        user_id: int

    registry = SchemaRegistry()
    registry.validate("identity", "user_created", {"anything": True})
    registry.register("user_created", UserCreated)
    registry.validate("identity", "user_created", {"user_id": 3})
    with pytest.raises(EventSchemaError, match="UserCreated"):
        registry.validate("identity", "user_created", {"user_id": "not a number"})
    registry.validate("identity", "user_updated", {"anything": True})


def test_schema_registry_per_service() -> None:
    class Strict(BaseModel):
        asset_id: str

    registry = SchemaRegistry()
    registry.register("created", Strict, service="assets")
    registry.validate("identity", "created", {})
    with pytest.raises(EventSchemaError):
        registry.validate("assets", "created", {})


def test_uuid7_is_version_7_and_time_ordered() -> None:
    ids = [uuid7() for _ in range(1000)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert len(set(ids)) == 1000
    # Ordered by their millisecond timestamp prefix.
    stamps = [i.int >> 80 for i in ids]
    assert stamps == sorted(stamps)
