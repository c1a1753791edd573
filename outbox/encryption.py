"""Encryption at rest of declared event fields: envelope encryption with AES-256-GCM.

``outbox.encrypt_fields("asset_created", ["credentials.password"])`` (or ``"*"`` for the whole
data) makes emit() replace each listed value with a self-describing object before the row is
written, so PostgreSQL, the relay, Redis and the dead letters only ever hold ciphertext::

    {"$enc": 1, "kid": "k2", "wk": "<wrapped data key>", "iv": "<nonce>", "ct": "<ciphertext>"}

Each value gets a fresh random 256-bit data key; the value (its JSON text) is sealed with it
(AES-GCM), and the data key is sealed (wrapped) with the master key ``kid`` of the
:class:`KeyProvider`. Both seals carry associated data naming the service, event type, field
path and event id, so a ciphertext copied into another event or field does not open.

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
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from outbox.errors import ConfigurationError, DecryptError, InvalidEventError, KeyNotConfiguredError
from outbox.validation import check_event_type, check_service

if TYPE_CHECKING:
    from pydantic import SecretStr

    # Not at run time: emit() imports this module and must not import Redis's side.
    from outbox.streams.codec import StreamMessage

#: The header naming the sealed paths of an event (comma-separated; ``*``: the whole data).
ENCRYPTED_HEADER = "encrypted"
#: The marker key of a sealed value, and the format version it holds.
MARKER = "$enc"
FORMAT = 1
#: Every value of the whole-data declaration: its path in the associated data.
WHOLE = "*"
#: Master key ids: they travel in every sealed value and name key files.
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Subject keys (crypto-shredding) have ids of their own kind: ``subject.<hash>``.
SUBJECT_PREFIX = "subject."
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # what AES-GCM is specified for (NIST SP 800-38D)
_AAD_PREFIX = b"opsconductor-outbox/enc/1"


# --- keys -----------------------------------------------------------------------------------


@runtime_checkable
class KeyProvider(Protocol):
    """Where master keys come from: the environment, a file, or a KMS/Vault adapter.

    ``key(key_id)`` returns the 32 raw bytes of a master key, or raises ``KeyError`` when it
    has no such key; ``active_key_id()`` names the key new values are sealed with."""

    def active_key_id(self) -> str: ...

    def key(self, key_id: str) -> bytes: ...


@runtime_checkable
class SubjectKeyProvider(KeyProvider, Protocol):
    """A provider that also keeps one key per subject (crypto-shredding): deleting a subject's
    key makes every value sealed under it unreadable, everywhere, for good."""

    def subject_key_id(self, subject: str) -> str:
        """The id of ``subject``'s key, made on first use."""
        ...

    def forget_subject(self, subject: str) -> str | None:
        """Delete ``subject``'s key; its id, or None when it had none."""
        ...


def decode_key(key_id: str, text: str) -> bytes:
    """A master key from its base64 text; ConfigurationError (naming the id, never the key)
    unless it is 32 bytes."""
    if not KEY_ID_PATTERN.match(key_id) or key_id.startswith(SUBJECT_PREFIX):
        raise ConfigurationError(
            f"encryption key id {key_id[:80]!r} must match {KEY_ID_PATTERN.pattern} and not "
            f"start with {SUBJECT_PREFIX!r}"
        )
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"encryption key {key_id!r} is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise ConfigurationError(
            f"encryption key {key_id!r} is {len(raw)} bytes; AES-256 needs {KEY_BYTES} "
            "(make one with `outbox keys new`)"
        )
    return raw


def parse_key_list(text: str, origin: str) -> list[tuple[str, bytes]]:
    """``id:base64`` pairs separated by commas or new lines (``#`` starts a comment), in the
    order given."""
    keys: list[tuple[str, bytes]] = []
    for line in text.replace(",", "\n").splitlines():
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        key_id, sep, value = item.partition(":")
        if not sep:
            raise ConfigurationError(f"{origin}: expected id:base64key, got an item without ':'")
        keys.append((key_id.strip(), decode_key(key_id.strip(), value)))
    return keys


class StaticKeyProvider:
    """Master keys held in memory: what OUTBOX_ENCRYPTION_KEYS and a key file give. The active
    key is ``active`` if given, else the first key."""

    def __init__(self, keys: Sequence[tuple[str, bytes]], active: str | None = None) -> None:
        self._keys: dict[str, bytes] = {}
        for key_id, raw in keys:
            if key_id in self._keys:
                raise ConfigurationError(f"encryption key {key_id!r} is given twice")
            decode_key(key_id, base64.b64encode(raw).decode())
            self._keys[key_id] = raw
        if not self._keys:
            raise ConfigurationError("no encryption key given")
        self._active = active or next(iter(self._keys))
        if self._active not in self._keys:
            raise ConfigurationError(
                f"OUTBOX_ENCRYPTION_ACTIVE_KEY names {self._active!r}, which is not among the "
                f"configured keys ({', '.join(self._keys)})"
            )

    def active_key_id(self) -> str:
        return self._active

    def key(self, key_id: str) -> bytes:
        return self._keys[key_id]

    def key_ids(self) -> list[str]:
        return list(self._keys)


class FileKeyProvider:
    """Master keys from a file of ``id:base64`` lines, or from a directory holding one
    ``<id>.key`` file (base64) per key. An unknown key id re-reads them (so a reader picks up a
    key added by deploy without a restart). A directory also keeps subject keys, in
    ``subjects/``, made on first use; deleting one shreds its subject."""

    def __init__(self, path: str | os.PathLike[str], active: str | None = None) -> None:
        self.path = Path(path)
        self._configured_active = active
        self._static = self._load()

    def _load(self, active_before: str | None = None) -> StaticKeyProvider:
        """The keys as the file or directory holds them now; a re-read keeps the active key
        (``active_before``) unless it is configured."""
        origin = f"encryption key file {self.path}"
        try:
            if self.path.is_dir():
                keys = [
                    (item.name[: -len(".key")], decode_key(item.name[:-4], item.read_text()))
                    for item in sorted(self.path.glob("*.key"))
                ]
                active = self._configured_active or active_before
                if active is None and len(keys) > 1:
                    raise ConfigurationError(
                        f"{origin} holds {len(keys)} keys: name the active one with "
                        "OUTBOX_ENCRYPTION_ACTIVE_KEY"
                    )
            else:
                keys = parse_key_list(self.path.read_text(), origin)
                active = self._configured_active
        except OSError as error:
            raise ConfigurationError(f"cannot read {origin}: {error.strerror}") from None
        if not keys:
            raise ConfigurationError(f"{origin} holds no key")
        return StaticKeyProvider(keys, active)

    def active_key_id(self) -> str:
        return self._static.active_key_id()

    def key(self, key_id: str) -> bytes:
        if key_id.startswith(SUBJECT_PREFIX):
            return self._subject_key(key_id)
        try:
            return self._static.key(key_id)
        except KeyError:
            self._static = self._load(self._static.active_key_id())
            return self._static.key(key_id)

    def key_ids(self) -> list[str]:
        return self._static.key_ids()

    # --- subject keys (directory only) ---

    def _subjects(self) -> Path:
        if not self.path.is_dir():
            raise ConfigurationError(
                "subject keys (encrypt_fields(..., per_subject=True)) need "
                "OUTBOX_ENCRYPTION_KEY_FILE to name a directory"
            )
        return self.path / "subjects"

    @staticmethod
    def _subject_id(subject: str) -> str:
        import hashlib

        # The file name and key id say nothing about the subject itself.
        return SUBJECT_PREFIX + hashlib.sha256(subject.encode("utf-8")).hexdigest()[:40]

    def _subject_key(self, key_id: str) -> bytes:
        path = self._subjects() / f"{key_id}.key"
        try:
            return base64.b64decode(path.read_text().strip(), validate=True)
        except FileNotFoundError:
            raise KeyError(key_id) from None

    def subject_key_id(self, subject: str) -> str:
        key_id = self._subject_id(subject)
        folder = self._subjects()
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / f"{key_id}.key"
        try:
            # O_EXCL: two emitters making the same subject's first key race safely.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return key_id
        with os.fdopen(fd, "w") as file:
            file.write(base64.b64encode(os.urandom(KEY_BYTES)).decode())
        return key_id

    def forget_subject(self, subject: str) -> str | None:
        key_id = self._subject_id(subject)
        try:
            (self._subjects() / f"{key_id}.key").unlink()
        except FileNotFoundError:
            return None
        return key_id


class EncryptionKeySettings(Protocol):
    """The settings a key provider is made from (part of every settings object)."""

    encryption_keys: SecretStr | None
    encryption_key_file: str | None
    encryption_active_key: str | None


def provider_from_settings(settings: EncryptionKeySettings) -> KeyProvider | None:
    """The provider OUTBOX_ENCRYPTION_KEYS or OUTBOX_ENCRYPTION_KEY_FILE configure, or None
    (also when they are empty)."""
    text = settings.encryption_keys.get_secret_value() if settings.encryption_keys else ""
    if text.strip() and settings.encryption_key_file:
        raise ConfigurationError(
            "OUTBOX_ENCRYPTION_KEYS and OUTBOX_ENCRYPTION_KEY_FILE exclude each other"
        )
    if text.strip():
        keys = parse_key_list(text, "OUTBOX_ENCRYPTION_KEYS")
        return StaticKeyProvider(keys, settings.encryption_active_key)
    if settings.encryption_key_file:
        return FileKeyProvider(settings.encryption_key_file, settings.encryption_active_key)
    return None


_provider: KeyProvider | None = None
#: Where the provider came from: None (not made yet), "settings" or "code".
_provider_origin: str | None = None
_settings_source: EncryptionKeySettings | None = None


def use_key_provider(provider: KeyProvider | None) -> None:
    """Use ``provider`` (a KMS/Vault adapter, or None for none) for the whole process instead
    of the settings' keys."""
    global _provider, _provider_origin
    _provider, _provider_origin = provider, "code"


def keys_from(settings: EncryptionKeySettings | None) -> None:
    """Make the provider from ``settings`` when first needed (the ``outbox`` commands pass
    theirs, which also read ``.env``); None: from emit()'s settings. A provider set in code
    stays."""
    global _settings_source, _provider, _provider_origin
    _settings_source = settings
    if _provider_origin == "settings":
        _provider, _provider_origin = None, None


def reset_key_provider() -> None:
    """Forget the provider, also one set in code; the next use reads the settings again."""
    global _provider, _provider_origin, _settings_source
    _provider, _provider_origin, _settings_source = None, None, None


def key_provider() -> KeyProvider | None:
    """The process's provider: set with :func:`use_key_provider`, else made once from the
    settings (those given to :func:`keys_from`, else emit()'s,
    :func:`outbox.settings.emit_settings`)."""
    global _provider, _provider_origin
    if _provider_origin is None:
        source = _settings_source
        if source is None:
            from outbox.settings import emit_settings

            source = emit_settings()
        _provider, _provider_origin = provider_from_settings(source), "settings"
    return _provider


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


def new_key() -> str:
    """A new random AES-256 master key, base64."""
    return _b64(os.urandom(KEY_BYTES))
