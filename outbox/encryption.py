"""Encryption at rest of declared event fields: envelope encryption with AES-256-GCM.

``outbox.encrypt_fields("asset_created", ["credentials.password"])`` (or ``"*"`` for the whole
data) makes emit() replace each listed value with a self-describing object before the row is
written, so PostgreSQL, the relay, Redis and the dead letters only ever hold ciphertext::

    {"$enc": 1, "kid": "k2", "wk": "<wrapped data key>", "iv": "<nonce>", "ct": "<ciphertext>"}

Each value gets a fresh random 256-bit data key; the value (its JSON text) is sealed with it
(AES-GCM), and the data key is sealed (wrapped) with the master key ``kid`` of the
:class:`~outbox.keyring.KeyProvider`. Both seals carry associated data naming the service,
event type, field path and event id, so a ciphertext copied into another event or field does
not open.

The event's headers say which paths are sealed (``encrypted: "credentials.password"``): a
reader that finds no such header pays one dict lookup and nothing else; one that finds it opens
the values (:func:`open_message`) before upcasting and handlers, or raises
:class:`~outbox.errors.DecryptError` (wrong key, key missing, tampered ciphertext), and the
event is dead-lettered as stored, still sealed. Rotation re-wraps the data keys only
(:func:`rewrap`): the values' ciphertext never changes. docs/encryption.md has the threat model.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from outbox.errors import ConfigurationError, DecryptError, InvalidEventError, KeyNotConfiguredError
from outbox.keyring import KEY_BYTES, SUBJECT_PREFIX, KeyProvider, SubjectKeyProvider, key_provider
from outbox.validation import check_event_type, check_service

if TYPE_CHECKING:
    # Not at run time: emit() imports this module and must not import Redis's side.
    from outbox.streams.codec import StreamMessage

#: The header naming the sealed paths of an event (comma-separated; ``*``: the whole data).
ENCRYPTED_HEADER = "encrypted"
#: The marker key of a sealed value, and the format version it holds.
MARKER = "$enc"
FORMAT = 1
#: Every value of the whole-data declaration: its path in the associated data.
WHOLE = "*"
NONCE_BYTES = 12  # what AES-GCM is specified for (NIST SP 800-38D)
_AAD_PREFIX = b"opsconductor-outbox/enc/1"


# --- declarations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Declaration:
    """The sealed paths of one event type (``("*",)``: the whole data) and whether each
    subject (the event's ``aggregate_id``) has a key of its own."""

    paths: tuple[str, ...]
    per_subject: bool = False


def check_path(path: object) -> str:
    if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
        raise InvalidEventError(
            f"an encrypted field is a dotted path of keys such as 'credentials.password', "
            f"got {path!r}"
        )
    if MARKER in path.split(".") or "," in path or path == WHOLE:
        raise InvalidEventError(f"{path!r} cannot be an encrypted field's path")
    return path


class EncryptionRegistry:
    """Which fields of which event types emit() seals; process-global, like the schemas."""

    def __init__(self) -> None:
        self._declared: dict[tuple[str | None, str], Declaration] = {}

    @property
    def active(self) -> bool:
        """Whether anything is declared: if not, emit() skips encryption altogether."""
        return bool(self._declared)

    def register(
        self,
        event_type: str,
        fields: Sequence[str] | Literal["*"],
        *,
        service: str | None = None,
        per_subject: bool = False,
    ) -> None:
        """Seal ``fields`` (dotted paths into the data, e.g. ``"credentials.password"``; or
        ``"*"``: the whole data) of ``event_type`` events (of ``service``, or of every
        service). ``per_subject``: seal under a key of the event's ``aggregate_id``'s own, so
        that forgetting it shreds that subject's events (needs a :class:`SubjectKeyProvider`)."""
        check_event_type(event_type)
        if service is not None:
            check_service(service)
        if fields == WHOLE:
            paths: tuple[str, ...] = (WHOLE,)
        else:
            if isinstance(fields, str) or not fields:
                raise InvalidEventError(
                    f"encrypt_fields({event_type!r}, ...) takes a list of paths or '*'"
                )
            paths = tuple(dict.fromkeys(check_path(path) for path in fields))
        self._declared[(service, event_type)] = Declaration(paths, per_subject)

    def unregister(self, event_type: str, *, service: str | None = None) -> None:
        self._declared.pop((service, event_type), None)

    def clear(self) -> None:
        """Forget every declaration (tests)."""
        self._declared.clear()

    def declared(self, service: str, event_type: str) -> Declaration | None:
        return self._declared.get((service, event_type)) or self._declared.get((None, event_type))


encrypted_fields = EncryptionRegistry()


# --- sealing and opening --------------------------------------------------------------------

_aesgcm: Any = None
_invalid_tag: type[Exception] = Exception


def _cipher(key: bytes) -> Any:
    """AES-GCM of ``cryptography``, imported on first use: a process that never seals or opens
    anything never loads it."""
    global _aesgcm, _invalid_tag
    if _aesgcm is None:
        try:
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ModuleNotFoundError:  # pragma: no cover - the extra is installed in tests
            raise ConfigurationError(
                "event encryption needs the cryptography package: "
                "pip install 'opsconductor-outbox[encryption]'"
            ) from None
        _aesgcm, _invalid_tag = AESGCM, InvalidTag
    return _aesgcm(key)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _aad(service: str, event_type: str, path: str, event_id: str, *extra: str) -> bytes:
    return b"\x00".join(
        [_AAD_PREFIX, *(part.encode("utf-8") for part in (service, event_type, path, event_id))]
        + [part.encode("utf-8") for part in extra]
    )


@dataclass(frozen=True)
class Context:
    """What a sealed value is bound to: moved anywhere else, it does not open."""

    service: str
    event_type: str
    event_id: str

    def data_aad(self, path: str) -> bytes:
        return _aad(self.service, self.event_type, path, self.event_id)

    def wrap_aad(self, path: str, key_id: str) -> bytes:
        return _aad(self.service, self.event_type, path, self.event_id, "wrap", key_id)


def _wrap(data_key: bytes, master: bytes, aad: bytes) -> str:
    nonce = os.urandom(NONCE_BYTES)
    return _b64(nonce + _cipher(master).encrypt(nonce, data_key, aad))


def seal_value(
    value: Any, path: str, context: Context, key_id: str, master: bytes
) -> dict[str, Any]:
    """``value`` (any JSON value) as a sealed object, under a fresh data key wrapped by
    ``master``."""
    data_key = os.urandom(KEY_BYTES)
    nonce = os.urandom(NONCE_BYTES)
    plaintext = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return {
        MARKER: FORMAT,
        "kid": key_id,
        "wk": _wrap(data_key, master, context.wrap_aad(path, key_id)),
        "iv": _b64(nonce),
        "ct": _b64(_cipher(data_key).encrypt(nonce, plaintext, context.data_aad(path))),
    }


def is_sealed(value: object) -> bool:
    """Whether ``value`` is a sealed object (what the monitor shows as ``[encrypted]``)."""
    return isinstance(value, dict) and MARKER in value


def _parts(value: object, where: str) -> tuple[str, bytes, bytes, bytes]:
    if not isinstance(value, dict) or value.get(MARKER) != FORMAT:
        raise DecryptError(f"{where} is not a sealed value (format {FORMAT})")
    try:
        key_id = value["kid"]
        wrapped = base64.b64decode(value["wk"], validate=True)
        nonce = base64.b64decode(value["iv"], validate=True)
        ciphertext = base64.b64decode(value["ct"], validate=True)
    except (KeyError, TypeError, binascii.Error, ValueError):
        raise DecryptError(f"{where} is a damaged sealed value") from None
    if not isinstance(key_id, str) or len(wrapped) <= NONCE_BYTES or len(nonce) != NONCE_BYTES:
        raise DecryptError(f"{where} is a damaged sealed value")
    return key_id, wrapped, nonce, ciphertext


def _master(provider: KeyProvider | None, key_id: str, where: str) -> bytes:
    if provider is None:
        raise DecryptError(
            f"{where} is encrypted with key {key_id!r} and this process has no encryption keys "
            "(set OUTBOX_ENCRYPTION_KEYS or OUTBOX_ENCRYPTION_KEY_FILE)"
        )
    try:
        return provider.key(key_id)
    except KeyError:
        shredded = (
            " (a subject key: forgotten, or never here)"
            if key_id.startswith(SUBJECT_PREFIX)
            else ""
        )
        raise DecryptError(
            f"{where} is encrypted with key {key_id!r}, which this process does not have"
            f"{shredded}: add it to OUTBOX_ENCRYPTION_KEYS / the key file, then replay the "
            "dead letter"
        ) from None


def _unwrap(
    provider: KeyProvider | None, key_id: str, wrapped: bytes, aad: bytes, where: str
) -> bytes:
    cipher = _cipher(_master(provider, key_id, where))
    try:
        return bytes(cipher.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad))
    except _invalid_tag:
        raise DecryptError(
            f"{where}: the data key does not open with key {key_id!r}: a wrong key under that "
            "id, or the value was altered or moved from another event or field"
        ) from None


def open_value(value: object, path: str, context: Context, provider: KeyProvider | None) -> Any:
    """The plaintext of a sealed value, or DecryptError."""
    where = f"{context.service}/{context.event_type} event {context.event_id} field {path}"
    key_id, wrapped, nonce, ciphertext = _parts(value, where)
    data_key = _unwrap(provider, key_id, wrapped, context.wrap_aad(path, key_id), where)
    try:
        plaintext = _cipher(data_key).decrypt(nonce, ciphertext, context.data_aad(path))
    except _invalid_tag:
        raise DecryptError(
            f"{where}: the ciphertext does not open: it was altered or moved from another "
            "event or field"
        ) from None
    return json.loads(plaintext)


def rewrap(
    value: object, path: str, context: Context, provider: KeyProvider, key_id: str
) -> dict[str, Any] | None:
    """``value`` with its data key wrapped by ``key_id`` instead (the ciphertext stays as it
    is), or None when it already is, or is under a subject key (those are not rotated: their
    point is that they can be deleted)."""
    where = f"{context.service}/{context.event_type} event {context.event_id} field {path}"
    old_id, wrapped, _, _ = _parts(value, where)
    if old_id == key_id or old_id.startswith(SUBJECT_PREFIX):
        return None
    data_key = _unwrap(provider, old_id, wrapped, context.wrap_aad(path, old_id), where)
    assert isinstance(value, dict)
    master = provider.key(key_id)
    return {**value, "kid": key_id, "wk": _wrap(data_key, master, context.wrap_aad(path, key_id))}


def _split(path: str) -> list[str]:
    return path.split(".")


def _walk(data: dict[str, Any], paths: Sequence[str]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(path, the dict holding its value, the key) for each path present in ``data``."""
    for path in paths:
        parent: Any = data
        *parents, last = _split(path)
        for part in parents:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and last in parent:
            yield path, parent, last


def _copy_along(data: dict[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` whose dicts on ``paths`` are copies too (the rest is shared)."""
    root = dict(data)
    for path in paths:
        node = root
        for part in _split(path)[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                break
            node[part] = node = dict(child)
    return root


def paths_of(headers: Mapping[str, str]) -> list[str] | None:
    """The sealed paths an event's headers name, or None when it has none sealed."""
    text = headers.get(ENCRYPTED_HEADER)
    return text.split(",") if text else None


def seal(
    service: str,
    event_type: str,
    event_id: str,
    data: dict[str, Any],
    headers: dict[str, str],
    aggregate_id: str | None,
) -> dict[str, Any] | None:
    """emit()'s step: the data with the declared fields sealed (and ``headers`` naming them),
    or None when nothing is declared for the event type or none of its fields is present.
    KeyNotConfiguredError when something is to be sealed and no key is configured."""
    if ENCRYPTED_HEADER in headers:
        raise InvalidEventError(
            f"the {ENCRYPTED_HEADER!r} header is emit()'s own (declare the fields with "
            "outbox.encrypt_fields)"
        )
    declaration = encrypted_fields.declared(service, event_type)
    if declaration is None:
        return None
    provider = key_provider()
    if provider is None:
        raise KeyNotConfiguredError(
            f"{service}/{event_type} events are declared encrypted "
            f"({', '.join(declaration.paths)}) but no encryption key is configured: set "
            "OUTBOX_ENCRYPTION_KEYS or OUTBOX_ENCRYPTION_KEY_FILE, or call "
            "outbox.use_key_provider(); nothing was written"
        )
    if declaration.per_subject:
        if not isinstance(provider, SubjectKeyProvider):
            raise KeyNotConfiguredError(
                f"{service}/{event_type} is declared per_subject=True, which needs a key "
                "provider with subject keys (OUTBOX_ENCRYPTION_KEY_FILE naming a directory)"
            )
        if aggregate_id is None:
            raise InvalidEventError(
                f"{service}/{event_type} is encrypted per subject: give the event an "
                "aggregate_id (its subject)"
            )
        key_id = provider.subject_key_id(aggregate_id)
    else:
        key_id = provider.active_key_id()
    try:
        master = provider.key(key_id)
    except KeyError:
        raise KeyNotConfiguredError(
            f"the active encryption key {key_id!r} is not available; nothing was written"
        ) from None
    context = Context(service, event_type, event_id)
    if declaration.paths == (WHOLE,):
        headers[ENCRYPTED_HEADER] = WHOLE
        return seal_value(data, WHOLE, context, key_id, master)
    sealed = _copy_along(data, declaration.paths)
    done = []
    for path, parent, key in _walk(sealed, declaration.paths):
        parent[key] = seal_value(parent[key], path, context, key_id, master)
        done.append(path)
    if not done:
        return None
    headers[ENCRYPTED_HEADER] = ",".join(done)
    return sealed


def open_data(
    service: str,
    event_type: str,
    event_id: str,
    data: dict[str, Any],
    paths: Sequence[str],
    provider: KeyProvider | None,
) -> dict[str, Any]:
    """The data with the sealed ``paths`` opened, or DecryptError."""
    context = Context(service, event_type, event_id)
    if list(paths) == [WHOLE]:
        opened = open_value(data, WHOLE, context, provider)
        if not isinstance(opened, dict):
            raise DecryptError(f"{service}/{event_type} event {event_id}: data is not an object")
        return opened
    result = _copy_along(data, paths)
    found = 0
    for path, parent, key in _walk(result, paths):
        parent[key] = open_value(parent[key], path, context, provider)
        found += 1
    if found != len(paths):
        raise DecryptError(
            f"{service}/{event_type} event {event_id}: a sealed field named in its "
            f"{ENCRYPTED_HEADER!r} header is missing ({','.join(paths)})"
        )
    return result


def open_message(message: StreamMessage) -> None:
    """Open ``message``'s sealed fields in place (the message as stored is kept in
    ``message.stored`` for a dead letter), or raise DecryptError and leave it as it is. A
    message with nothing sealed is left alone; opening twice is a no-op."""
    paths = paths_of(message.headers)
    if paths is None:
        return
    try:
        provider = key_provider()
    except ConfigurationError as error:
        # Bad key settings (or no cryptography) stay bad until a deploy, like a missing key.
        raise DecryptError(
            f"{message.service}/{message.event_type} event {message.event_id} cannot be "
            f"decrypted: {error}"
        ) from None
    data = open_data(
        message.service, message.event_type, message.event_id, message.data, paths, provider
    )
    message.stored = (message.data, message.headers)
    message.headers = {k: v for k, v in message.headers.items() if k != ENCRYPTED_HEADER}
    message.data = data


def rewrap_payload(
    service: str,
    event_type: str,
    event_id: str,
    data: dict[str, Any],
    paths: Sequence[str],
    provider: KeyProvider,
    key_id: str,
) -> tuple[dict[str, Any], int] | None:
    """``outbox keys rotate``'s step on one stored row: the data with every sealed value's
    data key wrapped by ``key_id``, and how many were re-wrapped; None when none needed it."""
    context = Context(service, event_type, event_id)
    if list(paths) == [WHOLE]:
        wrapped = rewrap(data, WHOLE, context, provider, key_id)
        return None if wrapped is None else (wrapped, 1)
    result = _copy_along(data, paths)
    count = 0
    for path, parent, key in _walk(result, paths):
        wrapped = rewrap(parent[key], path, context, provider, key_id)
        if wrapped is not None:
            parent[key] = wrapped
            count += 1
    return (result, count) if count else None


def key_ids_of(data: dict[str, Any], paths: Sequence[str]) -> list[str]:
    """The key ids of a stored row's sealed values (``outbox keys status``)."""
    if list(paths) == [WHOLE]:
        return [data["kid"]] if isinstance(data.get("kid"), str) else []
    return [
        parent[key]["kid"]
        for _, parent, key in _walk(data, paths)
        if isinstance(parent[key], dict) and isinstance(parent[key].get("kid"), str)
    ]
