"""Schema versions and upcasters, without a database: the chain, its errors, the stamp."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

import outbox
from outbox.envelope import MessagePriority
from outbox.errors import EventSchemaError, UpcastError
from outbox.streams.codec import StreamMessage, decode_entry, encode_fields
from outbox.upcasting import upcasters


class UserV1(BaseModel):
    name: str


class UserV2(BaseModel):
    full_name: str


class UserV3(BaseModel):
    first: str
    last: str


def _message(data: dict[str, Any], version: object = None) -> StreamMessage:
    headers = None if version is None else f'{{"schema_version": "{version}"}}'
    fields = encode_fields(
        event_id="0190a7c8-0000-7000-8000-000000000001",
        event_type="user_created",
        service="identity",
        source="identity",
        data_json=json.dumps(data),
        priority=MessagePriority.NORMAL,
        occurred_at=datetime.now(UTC),
        correlation_id="c",
        position=1,
        max_retries=0,
        headers_json=headers,
    )
    return decode_entry("s", "1-1", fields)


def _register_v3() -> None:
    outbox.register_schema("user_created", UserV1)
    outbox.register_schema("user_created", UserV2, version=2)
    outbox.register_schema("user_created", UserV3, version=3)

    @outbox.upcaster("user_created", 1)
    def name_to_full_name(data: dict[str, Any]) -> dict[str, Any]:
        return {"full_name": data.pop("name")}

    @outbox.upcaster("user_created", 2)
    def split_full_name(data: dict[str, Any]) -> dict[str, Any]:
        first, last = data["full_name"].split()
        return {"first": first, "last": last}


def test_old_events_are_upcast_step_by_step_to_the_current_version() -> None:
    _register_v3()
    assert upcasters.current_version("identity", "user_created") == 3
    for message in (_message({"name": "Ada Lovelace"}), _message({"name": "Ada Lovelace"}, 1)):
        assert message.schema_version == 1
        upcasters.upcast(message)
        assert message.data == {"first": "Ada", "last": "Lovelace"}
        assert message.schema_version == 3
        assert message.headers["schema_version"] == "3"
        upcasters.upcast(message)  # a second pass is a no-op
        assert message.data == {"first": "Ada", "last": "Lovelace"}
    middle = _message({"full_name": "Alan Turing"}, 2)
    upcasters.upcast(middle)
    assert middle.data == {"first": "Alan", "last": "Turing"}
    current = _message({"first": "A", "last": "B"}, 3)
    upcasters.upcast(current)
    assert current.data == {"first": "A", "last": "B"}


def test_a_missing_step_is_an_error_naming_it_and_leaves_the_message_as_it_was() -> None:
    outbox.register_schema("user_created", UserV3, version=3)
    outbox.register_upcaster("user_created", 1, lambda d: {"full_name": d["name"]})
    message = _message({"name": "Ada Lovelace"})
    with pytest.raises(UpcastError, match=r"no upcaster from version 2 of identity/user_created"):
        upcasters.upcast(message)
    assert message.data == {"name": "Ada Lovelace"}
    assert message.schema_version == 1


def test_newer_events_failing_upcasters_and_bad_versions_are_errors() -> None:
    outbox.register_schema("user_created", UserV2, version=2)
    outbox.register_upcaster("user_created", 1, lambda d: {"full_name": d["name"]})
    with pytest.raises(UpcastError, match="version 3, newer than version 2"):
        upcasters.upcast(_message({}, 3))
    with pytest.raises(UpcastError, match=r"upcaster 1 → 2 of identity/user_created failed"):
        upcasters.upcast(_message({"no_name": 1}))
    with pytest.raises(UpcastError, match="invalid schema_version header 'two'"):
        upcasters.upcast(_message({}, "two"))
    with pytest.raises(UpcastError, match="goes to a later version"):
        outbox.register_upcaster("user_created", 2, lambda d: d, to_version=2)


def test_unregistered_event_types_pass_through_untouched() -> None:
    message = _message({"anything": 1}, 7)
    upcasters.upcast(message)
    assert (message.data, message.schema_version) == ({"anything": 1}, 7)


def test_service_upcasters_and_schemas_come_before_shared_ones() -> None:
    outbox.register_schema("user_created", UserV2, version=2)
    outbox.register_upcaster("user_created", 1, lambda d: {"full_name": "shared"})
    outbox.register_upcaster("user_created", 1, lambda d: {"full_name": "own"}, service="identity")
    message = _message({"name": "x"})
    upcasters.upcast(message)
    assert message.data == {"full_name": "own"}
    outbox.register_schema("user_created", UserV1, service="identity")
    assert outbox.schemas.versions("identity", "user_created") == {1}
    assert outbox.schemas.versions("billing", "user_created") == {2}


def test_the_stamp_is_the_current_version_and_emit_validates_against_its_model() -> None:
    headers: dict[str, str] = {}
    upcasters.stamp("identity", "user_created", headers)
    assert headers == {}  # nothing registered: events stay unversioned (version 1)
    outbox.register_schema("user_created", UserV1)
    upcasters.stamp("identity", "user_created", headers)
    assert headers == {}  # version 1 is not written down
    outbox.register_schema("user_created", UserV2, version=2)
    upcasters.stamp("identity", "user_created", headers)
    assert headers == {"schema_version": "2"}
    with pytest.raises(EventSchemaError, match="says '1'"):
        upcasters.stamp("identity", "user_created", {"schema_version": "1"})
    outbox.schemas.validate("identity", "user_created", {"full_name": "Ada"})
    with pytest.raises(EventSchemaError, match=r"UserV2 \(version 2\)"):
        outbox.schemas.validate("identity", "user_created", {"name": "Ada"})
    outbox.schemas.unregister("user_created", version=2)
    outbox.schemas.validate("identity", "user_created", {"name": "Ada"})


def test_register_schema_keeps_its_call_forms_and_checks_the_version() -> None:
    outbox.register_schema("user_created", UserV1)
    outbox.register_schema("user_created", UserV1, service="identity")
    outbox.schemas.unregister("user_created")
    outbox.schemas.unregister("user_created", service="identity")
    assert not outbox.schemas._models
    for bad in (0, -1, True, "2"):
        with pytest.raises(outbox.InvalidEventError):
            outbox.register_schema("user_created", UserV1, version=bad)  # type: ignore[arg-type]
