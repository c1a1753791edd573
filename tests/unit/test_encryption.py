"""Encrypted event fields without a database: sealing, opening, what fails and how, keys,
rotation's re-wrap, subject keys, and what the monitor shows."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

import outbox
from outbox.encryption import (
    ENCRYPTED_HEADER,
    encrypted_fields,
    is_sealed,
    open_message,
    rewrap_payload,
    seal,
)
from outbox.envelope import MessagePriority
from outbox.errors import ConfigurationError, DecryptError, InvalidEventError, KeyNotConfiguredError
from outbox.keyring import (
    FileKeyProvider,
    StaticKeyProvider,
    provider_from_settings,
    reset_key_provider,
)
from outbox.monitor.security import ENCRYPTED, mask_fields
from outbox.projections.store import fields_of_message
from outbox.settings import EmitSettings
from outbox.streams.codec import StreamMessage, decode_entry, encode_fields

EVENT_ID = "0190a7c8-0000-7000-8000-000000000001"
DATA = {"asset_id": "a1", "credentials": {"user": "root", "password": "hunter2"}}


def _key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def k1() -> StaticKeyProvider:
    provider = StaticKeyProvider([("k1", _key())])
    outbox.use_key_provider(provider)
    return provider


def _sealed(
    data: dict[str, Any] = DATA, event_id: str = EVENT_ID, event_type: str = "asset_created"
) -> tuple[dict[str, Any], dict[str, str]]:
    headers: dict[str, str] = {}
    sealed = seal("assets", event_type, event_id, data, headers, None)
    assert sealed is not None
    return sealed, headers


def _message(
    data: dict[str, Any],
    headers: dict[str, str],
    event_id: str = EVENT_ID,
    event_type: str = "asset_created",
) -> StreamMessage:
    fields = encode_fields(
        event_id=event_id,
        event_type=event_type,
        service="assets",
        source="assets",
        data_json=json.dumps(data),
        priority=MessagePriority.NORMAL,
        occurred_at=datetime.now(UTC),
        correlation_id="c1",
        position=7,
        max_retries=3,
        headers_json=json.dumps(headers) if headers else None,
    )
    return decode_entry("opsconductor:assets:events", "1-0", fields)


def test_a_declared_field_is_sealed_and_opens_back(k1: StaticKeyProvider) -> None:
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    sealed, headers = _sealed()
    assert headers == {ENCRYPTED_HEADER: "credentials.password"}
    password = sealed["credentials"]["password"]
    assert is_sealed(password)
    assert password["kid"] == "k1"
    assert "hunter2" not in json.dumps(sealed)
    assert sealed["credentials"]["user"] == "root"  # only the declared field
    assert DATA["credentials"]["password"] == "hunter2"  # the caller's data is not changed
    message = _message(sealed, headers)
    open_message(message)
    assert message.data == DATA
    assert ENCRYPTED_HEADER not in message.headers
    open_message(message)  # a second time is a no-op
    assert message.data == DATA


def test_the_whole_data_can_be_sealed(k1: StaticKeyProvider) -> None:
    outbox.encrypt_fields("asset_created", "*")
    sealed, headers = _sealed()
    assert headers == {ENCRYPTED_HEADER: "*"}
    assert is_sealed(sealed)
    assert "asset_id" not in sealed
    message = _message(sealed, headers)
    open_message(message)
    assert message.data == DATA


def test_an_absent_field_is_not_sealed_and_other_types_are_untouched(
    k1: StaticKeyProvider,
) -> None:
    outbox.encrypt_fields("asset_created", ["credentials.password", "token"], service="assets")
    _, headers = _sealed()
    assert headers == {ENCRYPTED_HEADER: "credentials.password"}
    assert seal("assets", "asset_created", EVENT_ID, {"asset_id": "a"}, {}, None) is None
    assert seal("assets", "asset_deleted", EVENT_ID, DATA, {}, None) is None
    assert seal("identity", "asset_created", EVENT_ID, DATA, {}, None) is None


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"event_id": "0190a7c8-0000-7000-8000-000000000002"}, id="other event"),
        pytest.param({"event_type": "asset_updated"}, id="other event type"),
    ],
)
def test_a_sealed_value_moved_to_another_event_does_not_open(
    k1: StaticKeyProvider, change: dict[str, str]
) -> None:
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    sealed, headers = _sealed()
    message = _message(sealed, headers, **change)
    with pytest.raises(DecryptError, match="does not open"):
        open_message(message)
    assert message.data == sealed  # left as stored, for the dead letter


def test_a_sealed_value_moved_to_another_field_does_not_open(k1: StaticKeyProvider) -> None:
    outbox.encrypt_fields("asset_created", ["credentials.password", "credentials.user"])
    sealed, headers = _sealed()
    swapped = {
        **sealed,
        "credentials": {
            "user": sealed["credentials"]["password"],
            "password": sealed["credentials"]["user"],
        },
    }
    with pytest.raises(DecryptError, match="does not open"):
        open_message(_message(swapped, headers))


@pytest.mark.parametrize("part", ["ct", "wk", "iv"])
def test_tampered_ciphertext_is_a_clear_error(k1: StaticKeyProvider, part: str) -> None:
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    sealed, headers = _sealed()
    value = dict(sealed["credentials"]["password"])
    raw = bytearray(base64.b64decode(value[part]))
    raw[-1] ^= 1
    value[part] = base64.b64encode(bytes(raw)).decode()
    tampered = {**sealed, "credentials": {**sealed["credentials"], "password": value}}
    with pytest.raises(DecryptError, match="altered or moved"):
        open_message(_message(tampered, headers))


def test_a_damaged_value_is_a_clear_error(k1: StaticKeyProvider) -> None:
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    sealed, headers = _sealed()
    damaged = {**sealed, "credentials": {"password": {"$enc": 1, "kid": "k1", "ct": "!"}}}
    with pytest.raises(DecryptError, match="damaged sealed value"):
        open_message(_message(damaged, headers))
    with pytest.raises(DecryptError, match="not a sealed value"):
        open_message(_message({"credentials": {"password": "plain"}}, headers))
    with pytest.raises(DecryptError, match="missing"):
        open_message(_message({"asset_id": "a1"}, headers))


def test_a_wrong_key_under_the_same_id_is_a_clear_error(k1: StaticKeyProvider) -> None:
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    sealed, headers = _sealed()
    outbox.use_key_provider(StaticKeyProvider([("k1", _key())]))
    with pytest.raises(DecryptError, match="does not open with key 'k1'"):
        open_message(_message(sealed, headers))


def test_a_missing_key_or_no_keys_at_all_is_a_clear_error(k1: StaticKeyProvider) -> None:
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    sealed, headers = _sealed()
    outbox.use_key_provider(StaticKeyProvider([("k9", _key())]))
    with pytest.raises(DecryptError, match="'k1', which this process does not have"):
        open_message(_message(sealed, headers))
    outbox.use_key_provider(None)
    with pytest.raises(DecryptError, match="has no encryption keys"):
        open_message(_message(sealed, headers))


def test_emit_side_refuses_without_a_key_and_refuses_the_header_from_the_caller() -> None:
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    outbox.use_key_provider(None)
    with pytest.raises(KeyNotConfiguredError, match="no encryption key is configured"):
        seal("assets", "asset_created", EVENT_ID, DATA, {}, None)
    with pytest.raises(InvalidEventError, match="header is emit"):
        seal("assets", "asset_created", EVENT_ID, DATA, {ENCRYPTED_HEADER: "x"}, None)


@pytest.mark.parametrize("fields", [[], "credentials", ["a..b"], ["$enc"], ["a,b"], ["*"]])
def test_bad_declarations_are_refused(fields: Any) -> None:
    with pytest.raises(InvalidEventError):
        outbox.encrypt_fields("asset_created", fields)


def test_rotation_rewraps_the_data_key_and_keeps_the_ciphertext() -> None:
    old, new = _key(), _key()
    outbox.use_key_provider(StaticKeyProvider([("k1", old)]))
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    sealed, headers = _sealed()
    both = StaticKeyProvider([("k2", new), ("k1", old)])
    result = rewrap_payload(
        "assets", "asset_created", EVENT_ID, sealed, ["credentials.password"], both, "k2"
    )
    assert result is not None
    rewrapped, count = result
    assert count == 1
    before, after = sealed["credentials"]["password"], rewrapped["credentials"]["password"]
    assert (after["kid"], after["ct"], after["iv"]) == ("k2", before["ct"], before["iv"])
    assert after["wk"] != before["wk"]
    # Only the new key is needed now; a second rotation has nothing to do.
    outbox.use_key_provider(StaticKeyProvider([("k2", new)]))
    message = _message(rewrapped, headers)
    open_message(message)
    assert message.data == DATA
    again = rewrap_payload(
        "assets", "asset_created", EVENT_ID, rewrapped, ["credentials.password"], both, "k2"
    )
    assert again is None


def test_a_new_active_key_seals_new_values_and_the_old_still_opens() -> None:
    old, new = _key(), _key()
    outbox.use_key_provider(StaticKeyProvider([("k1", old)]))
    outbox.encrypt_fields("asset_created", "*")
    first, headers = _sealed()
    outbox.use_key_provider(StaticKeyProvider([("k1", old), ("k2", new)], active="k2"))
    second, _ = _sealed(event_id="0190a7c8-0000-7000-8000-000000000002")
    assert (first["kid"], second["kid"]) == ("k1", "k2")
    message = _message(first, headers)
    open_message(message)
    assert message.data == DATA


def test_keys_from_settings(tmp_path: Path) -> None:
    a, b = base64.b64encode(_key()).decode(), base64.b64encode(_key()).decode()
    provider = provider_from_settings(EmitSettings(encryption_keys=SecretStr(f"k2:{a},k1:{b}")))
    assert isinstance(provider, StaticKeyProvider)
    assert (provider.active_key_id(), provider.key_ids()) == ("k2", ["k2", "k1"])
    active = EmitSettings(encryption_keys=SecretStr(f"k2:{a},k1:{b}"), encryption_active_key="k1")
    assert provider_from_settings(active).active_key_id() == "k1"  # type: ignore[union-attr]
    assert provider_from_settings(EmitSettings()) is None
    key_file = tmp_path / "keys"
    key_file.write_text(f"# the outbox's keys\nk3:{a}\nk1:{b}\n")
    from_file = provider_from_settings(EmitSettings(encryption_key_file=str(key_file)))
    assert from_file is not None
    assert from_file.active_key_id() == "k3"
    assert from_file.key("k1") == base64.b64decode(b)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("k1", "without ':'"),
        ("k1:not base64!", "not valid base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "is 5 bytes"),
        ("bad id:AAAA", "must match"),
        (f"subject.x:{base64.b64encode(bytes(32)).decode()}", "must match"),
        (
            f"k1:{base64.b64encode(bytes(32)).decode()},k1:{base64.b64encode(bytes(32)).decode()}",
            "given twice",
        ),
    ],
)
def test_bad_key_settings_say_what_is_wrong_and_never_show_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        provider_from_settings(EmitSettings(encryption_keys=SecretStr(text)))
    assert "AAAAAAAAAAAAAAAAAAAA" not in str(raised.value)
    with pytest.raises(ConfigurationError, match="not among"):
        provider_from_settings(
            EmitSettings(
                encryption_keys=SecretStr(f"k1:{base64.b64encode(bytes(32)).decode()}"),
                encryption_active_key="k2",
            )
        )


def test_the_keys_setting_is_a_secret() -> None:
    settings = EmitSettings(encryption_keys=SecretStr(f"k1:{base64.b64encode(_key()).decode()}"))
    assert "k1:" not in repr(settings)
    assert "k1:" not in str(settings.model_dump())


def test_a_key_directory_is_reread_for_an_unknown_key(tmp_path: Path) -> None:
    (tmp_path / "k1.key").write_text(base64.b64encode(_key()).decode())
    provider = FileKeyProvider(tmp_path)
    assert provider.active_key_id() == "k1"
    new = _key()
    (tmp_path / "k2.key").write_text(base64.b64encode(new).decode())
    assert provider.key("k2") == new  # deployed beside a running reader
    with pytest.raises(KeyError):
        provider.key("k3")
    with pytest.raises(ConfigurationError, match="name the active one"):
        FileKeyProvider(tmp_path)
    assert FileKeyProvider(tmp_path, active="k2").active_key_id() == "k2"


def test_forgetting_a_subject_key_shreds_its_values(tmp_path: Path) -> None:
    (tmp_path / "k1.key").write_text(base64.b64encode(_key()).decode())
    provider = FileKeyProvider(tmp_path)
    outbox.use_key_provider(provider)
    outbox.encrypt_fields("user_created", ["email"], per_subject=True)
    with pytest.raises(InvalidEventError, match="aggregate_id"):
        seal("identity", "user_created", EVENT_ID, {"email": "a@b"}, {}, None)
    alice: dict[str, str] = {}
    bob: dict[str, str] = {}
    sealed_a = seal("identity", "user_created", EVENT_ID, {"email": "a@x"}, alice, "alice")
    other_id = "0190a7c8-0000-7000-8000-000000000002"
    sealed_b = seal("identity", "user_created", other_id, {"email": "b@x"}, bob, "bob")
    assert sealed_a is not None
    assert sealed_b is not None
    kid = sealed_a["email"]["kid"]
    assert kid.startswith("subject.")
    assert "alice" not in kid
    assert kid != sealed_b["email"]["kid"]
    # Rotation leaves subject keys alone: re-wrapping them would undo the shredding.
    assert (
        rewrap_payload("identity", "user_created", EVENT_ID, sealed_a, ["email"], provider, "k1")
        is None
    )
    assert provider.forget_subject("alice") == kid
    assert provider.forget_subject("alice") is None

    def message(data: dict[str, Any], headers: dict[str, str], event_id: str) -> StreamMessage:
        fields = encode_fields(
            event_id=event_id,
            event_type="user_created",
            service="identity",
            source="identity",
            data_json=json.dumps(data),
            priority=MessagePriority.NORMAL,
            occurred_at=datetime.now(UTC),
            correlation_id="c",
            position=None,
            max_retries=0,
            headers_json=json.dumps(headers),
        )
        return decode_entry("s", "1-0", fields)

    with pytest.raises(DecryptError, match="subject key"):
        open_message(message(sealed_a, alice, EVENT_ID))
    still = message(sealed_b, bob, other_id)
    open_message(still)
    assert still.data == {"email": "b@x"}


def test_a_dead_letter_of_an_opened_message_keeps_it_as_stored(k1: StaticKeyProvider) -> None:
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    sealed, headers = _sealed()
    message = _message(sealed, headers)
    open_message(message)
    fields = fields_of_message(message)
    assert "hunter2" not in json.dumps(fields)
    assert json.loads(fields["data"]) == sealed
    assert json.loads(fields["headers"]) == headers  # the replay opens it again


def test_the_monitor_shows_encrypted_values_as_a_marker(k1: StaticKeyProvider) -> None:
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    sealed, _ = _sealed()
    shown = mask_fields(sealed, frozenset())
    assert shown == {"asset_id": "a1", "credentials": {"user": "root", "password": ENCRYPTED}}
    assert mask_fields(seal("a", "asset_created", EVENT_ID, DATA, {}, None), frozenset()) == {
        "asset_id": "a1",
        "credentials": {"user": "root", "password": ENCRYPTED},
    }
    encrypted_fields.register("asset_created", "*")
    assert mask_fields(_sealed()[0], frozenset()) == ENCRYPTED


def test_bad_key_settings_in_a_reader_fail_the_event_like_a_missing_key(
    k1: StaticKeyProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    sealed, headers = _sealed()
    monkeypatch.setenv("OUTBOX_ENCRYPTION_KEYS", "k1:not-a-key")
    reset_key_provider()
    outbox.configure()
    with pytest.raises(DecryptError, match="cannot be decrypted: encryption key 'k1' is not"):
        open_message(_message(sealed, headers))
