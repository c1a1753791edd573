"""Tenants without servers: ids, key names, the context, settings and the entry field."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import pytest

from outbox.context import caused_by, current_tenant_id, tenant_scope
from outbox.envelope import Event, MessagePriority
from outbox.errors import InvalidNameError
from outbox.settings import Settings
from outbox.streams.codec import decode_entry, encode_event
from outbox.streams.keys import Keys
from outbox.validation import check_tenant_id

EVENT = Event(
    event_id=uuid.UUID("0190f5c2-8b30-7e95-828b-8d47493e7cad"),
    service="assets",
    event_type="asset_created",
    data={"asset_id": "a1"},
    priority=MessagePriority.NORMAL,
    occurred_at=datetime(2026, 12, 7, 9, 0, tzinfo=UTC),
    correlation_id="req-1",
    source="assets",
    position=7,
    tenant_id="acme",
)


@pytest.mark.parametrize("tenant", ["acme", "t1", "0042", "big-corp_eu", "a" * 63])
def test_good_tenant_ids_pass(tenant: str) -> None:
    assert check_tenant_id(tenant) == tenant


@pytest.mark.parametrize(
    "tenant",
    [
        "",
        "Acme",
        "ac:me",  # a key separator: would reach into another tenant's keys
        "ac*",  # glob characters would widen the tenant's ACL key pattern
        "ac?",
        "a[b]",
        "a\\b",
        "{acme}",  # a cluster hash tag
        "-acme",
        "a" * 64,
        "events",  # <prefix>:tenant:events:* would match service "tenant"'s high stream
        "acme ",
        None,
        42,
    ],
)
def test_bad_tenant_ids_are_refused(tenant: object) -> None:
    with pytest.raises(InvalidNameError, match="invalid tenant id"):
        check_tenant_id(tenant)


@pytest.mark.parametrize("tagged", [False, True])
def test_every_key_of_a_tenant_is_under_its_prefix(tagged: bool) -> None:
    keys = Keys("opsconductor", tagged)
    acme = keys.for_tenant("acme")
    names = [
        *acme.streams_of("assets"),
        acme.dead_letter,
        acme.metrics,
        acme.consumers,
    ]
    for name in names:
        assert name.startswith("opsconductor:tenant:acme:"), name
    service = "{assets}" if tagged else "assets"
    assert acme.stream("assets", MessagePriority.HIGH) == (
        f"opsconductor:tenant:acme:{service}:events:high"
    )


@pytest.mark.parametrize("tagged", [False, True])
def test_tenant_streams_and_deployment_streams_never_parse_as_each_other(tagged: bool) -> None:
    keys = Keys("opsconductor", tagged)
    acme = keys.for_tenant("acme")
    for priority in MessagePriority:
        tenant_stream = acme.stream("assets", priority)
        assert keys.parse_stream(tenant_stream) is None
        expected = priority if priority > MessagePriority.NORMAL else MessagePriority.NORMAL
        assert keys.parse_tenant_stream(tenant_stream) == ("acme", "assets", expected)
        # A service named "tenant" keeps its own streams.
        own = keys.stream("tenant", priority)
        assert keys.parse_tenant_stream(own) is None
        assert keys.parse_stream(own) == ("tenant", expected)
    assert keys.parse_tenant_stream("opsconductor:tenant:acme:consumers") is None
    assert keys.parse_tenant_stream("other:tenant:acme:assets:events") is None
    # A tenant stream's watermark is in its slot: under the tenant's prefix in the tagged layout
    # (the tenant's ACL user may read it, and has no command that writes a string), never under
    # another tenant's.
    watermark = keys.watermark(acme.stream("assets"))
    assert watermark.startswith("opsconductor:tenant:acme:") is tagged
    assert not watermark.startswith(keys.for_tenant("acm").prefix + ":")


def test_tenant_scope_sets_and_restores() -> None:
    assert current_tenant_id() is None
    with tenant_scope("acme"):
        assert current_tenant_id() == "acme"
        with tenant_scope("globex"):
            assert current_tenant_id() == "globex"
        assert current_tenant_id() == "acme"
    assert current_tenant_id() is None


def test_tenant_scope_refuses_a_bad_id_where_it_is_set() -> None:
    with pytest.raises(InvalidNameError), tenant_scope("a:b"):
        pass  # pragma: no cover
    assert current_tenant_id() is None


def test_handling_a_tenants_event_emits_for_that_tenant() -> None:
    with tenant_scope("globex"):
        with caused_by(EVENT):
            assert current_tenant_id() == "acme"
        assert current_tenant_id() == "globex"
        with caused_by(dataclasses.replace(EVENT, tenant_id=None)):
            assert current_tenant_id() == "globex"  # an event of no tenant changes nothing


def test_the_tenant_travels_in_the_entry() -> None:
    fields = encode_event(EVENT, max_retries=3)
    assert fields["tenant_id"] == "acme"
    message = decode_entry("opsconductor:tenant:acme:assets:events", "1-0", fields)
    assert message.tenant_id == "acme"
    plain = encode_event(dataclasses.replace(EVENT, tenant_id=None), max_retries=3)
    assert "tenant_id" not in plain
    assert decode_entry("opsconductor:assets:events", "1-0", plain).tenant_id is None


def test_tenant_settings_are_checked() -> None:
    assert Settings(TENANT_STREAMS="assets, identity").tenant_streamed()("assets")
    assert not Settings(TENANT_STREAMS="assets").tenant_streamed()("identity")
    assert Settings(TENANT_STREAMS="*").tenant_streamed()("anything")
    assert not Settings().tenant_streamed()("assets")
    with pytest.raises(ValueError, match="TENANT_STREAMS"):
        Settings(TENANT_STREAMS="assets,Bad")
    with pytest.raises(ValueError, match="TENANT_ID"):
        Settings(TENANT_ID="acme:x")
    assert Settings(TENANT_ID=" ").tenant_id is None
    assert Settings(TENANT_ID="acme").tenant_id == "acme"
