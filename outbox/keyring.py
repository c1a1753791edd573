"""Where the master keys of encrypted event fields come from (outbox/encryption.py).

A :class:`KeyProvider` has two methods: the id of the key new values are sealed with, and the
key of an id. This module holds the ones the settings configure (``OUTBOX_ENCRYPTION_KEYS``,
``OUTBOX_ENCRYPTION_KEY_FILE``, ``OUTBOX_ENCRYPTION_ACTIVE_KEY``) and the process's provider,
made from the settings on first use unless one (a KMS or Vault adapter) is set in code with
:func:`use_key_provider`. Keys are never logged: errors name the id, never the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from outbox.errors import ConfigurationError

if TYPE_CHECKING:
    from pydantic import SecretStr

#: Master key ids: they travel in every sealed value and name key files.
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Subject keys (crypto-shredding) have ids of their own kind: ``subject.<hash>``.
SUBJECT_PREFIX = "subject."
KEY_BYTES = 32  # AES-256


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


def new_key() -> str:
    """A new random AES-256 master key, base64."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")
