"""Checks that run in emit() before anything is sent to PostgreSQL.

A rejected event raises a typed :class:`~outbox.errors.InvalidEventError` and leaves the caller's
transaction untouched and usable.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Collection, Mapping
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any

from pydantic import BaseModel, ValidationError

from outbox.errors import (
    EventSchemaError,
    InvalidEventError,
    InvalidNameError,
    PayloadNotSerializableError,
)

#: Services become part of Redis keys (``<prefix>:<service>:events``): no ``:``, no spaces.
SERVICE_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
#: Event types: ``user_created``, ``asset.scanned``, ``automation-failed``.
EVENT_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,126}$")
#: Tenant ids become part of Redis keys (``<prefix>:tenant:<tenant>:…``) and of Redis ACL key
#: patterns (``~<prefix>:tenant:<tenant>:*``): no ``:``, no glob characters (``*?[]\``), no
#: braces (cluster hash tags). ``events`` is refused: ``<prefix>:tenant:events:*`` would also
#: match the high-priority stream of a service named ``tenant`` (docs/tenancy.md).
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_RESERVED_TENANTS = frozenset({"events"})
#: Identifiers carried in the envelope (correlation, causation, user, aggregate, dedup key).
MAX_ID_LENGTH = 256


def check_service(service: object) -> str:
    if not isinstance(service, str) or not SERVICE_PATTERN.match(service):
        raise InvalidNameError(
            f"invalid service {service!r}: expected lower-case letters, digits, '_' or '-', "
            f"starting with a letter, at most 63 characters ({SERVICE_PATTERN.pattern})"
        )
    return service


def check_event_type(event_type: object) -> str:
    if not isinstance(event_type, str) or not EVENT_TYPE_PATTERN.match(event_type):
        raise InvalidNameError(
            f"invalid event type {event_type!r}: expected lower-case letters, digits, '_', '.' "
            f"or '-', starting with a letter, at most 127 characters ({EVENT_TYPE_PATTERN.pattern})"
        )
    return event_type


def check_tenant_id(tenant_id: object) -> str:
    """A tenant id: 1-63 lower-case letters, digits, ``_`` or ``-``, starting with a letter or
    digit (:data:`TENANT_PATTERN`); ``events`` is reserved."""
    if (
        not isinstance(tenant_id, str)
        or not TENANT_PATTERN.match(tenant_id)
        or tenant_id in _RESERVED_TENANTS
    ):
        raise InvalidNameError(
            f"invalid tenant id {tenant_id!r}: expected lower-case letters, digits, '_' or '-', "
            f"starting with a letter or digit, at most 63 characters ({TENANT_PATTERN.pattern}), "
            "and not 'events'"
        )
    return tenant_id


def check_identifier(name: str, value: object) -> str | None:
    """An optional envelope identifier: ``None``, or a non-empty printable str (ints/UUIDs ok)."""
    if value is None:
        return None
    if isinstance(value, (int, uuid.UUID)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidNameError(f"{name} must be a string, got {type(value).__name__}")
    if not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise InvalidNameError(
            f"{name} must be 1 to {MAX_ID_LENGTH} printable characters, got {value[:80]!r}"
        )
    return value


def check_headers(headers: object) -> dict[str, str]:
    if not headers and (headers is None or isinstance(headers, Mapping)):
        return {}
    if not isinstance(headers, Mapping):
        raise InvalidNameError(f"headers must be a mapping of str to str, got {type(headers)}")
    checked: dict[str, str] = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidNameError(f"headers must map str to str; {key!r}: {value!r} does not")
        if "\x00" in key or "\x00" in value:
            raise InvalidNameError(f"header {key!r} contains a NUL character")
        checked[key] = value
    return checked


def _encode_extra(value: object) -> object:
    """json.dumps ``default`` hook for the common non-JSON types, each encoded as a string."""
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal) and value.is_finite():
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(type(value).__name__)


# One encoder for every emit(): json.dumps() with options builds a new JSONEncoder per call.
_ENCODER = json.JSONEncoder(
    default=_encode_extra, ensure_ascii=False, allow_nan=False, separators=(",", ":")
)


def serialise_data(data: object) -> tuple[dict[str, Any], str]:
    """Return the data as a dict and as compact JSON text, or raise with the offending path.

    The common case is one C-speed ``json.dumps``; only a failure walks the value to name the
    path. PostgreSQL's jsonb rejects NaN/Infinity and the NUL character (``\\u0000``), and
    a lone surrogate cannot be encoded as UTF-8, so those are refused here too.
    """
    if type(data) is not dict:
        if isinstance(data, BaseModel):
            data = data.model_dump(mode="json")
        if not isinstance(data, Mapping):
            raise PayloadNotSerializableError(
                "data", f"expected a mapping, got {type(data).__name__}"
            )
    try:
        text = _ENCODER.encode(data)
        text.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError):
        _locate_problem(data, "data")
        raise PayloadNotSerializableError("data", "not serialisable") from None  # pragma: no cover
    if "\\u0000" in text:
        _locate_problem(data, "data")
    return dict(data), text


def _locate_problem(value: object, path: str) -> None:
    """Walk ``value`` and raise PayloadNotSerializableError at the first offending path."""
    if isinstance(value, str):
        if "\x00" in value:
            raise PayloadNotSerializableError(path, "string contains a NUL character (\\u0000)")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise PayloadNotSerializableError(path, "string is not valid Unicode") from None
        return
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadNotSerializableError(path, f"{value!r} is not valid JSON")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PayloadNotSerializableError(
                    f"{path}[{key!r}]", f"keys must be strings, got {type(key).__name__}"
                )
            _locate_problem(key, f"{path}[{key!r}] (key)")
            _locate_problem(item, f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _locate_problem(item, f"{path}[{index}]")
        return
    try:
        encoded = _encode_extra(value)
    except TypeError:
        raise PayloadNotSerializableError(
            path, f"objects of type {type(value).__name__} are not JSON-serialisable"
        ) from None
    if isinstance(value, Decimal):  # pragma: no cover - finite Decimals encode fine
        return
    _locate_problem(encoded, path)


class SchemaRegistry:
    """Optional pydantic models per event type and schema version, validated by emit() before
    anything is sent. emit() validates against the model of the highest registered version;
    older versions are read through upcasters (:mod:`outbox.upcasting`)."""

    def __init__(self) -> None:
        self._models: dict[tuple[str | None, str], dict[int, type[BaseModel]]] = {}

    def register(
        self,
        event_type: str,
        model: type[BaseModel],
        *,
        version: int = 1,
        service: str | None = None,
    ) -> None:
        """Validate ``event_type`` events (of ``service``, or of any service) against ``model``,
        the schema of ``version`` (1 for events that carry no version)."""
        check_event_type(event_type)
        if service is not None:
            check_service(service)
        check_version(version)
        self._models.setdefault((service, event_type), {})[version] = model

    def unregister(
        self, event_type: str, *, service: str | None = None, version: int | None = None
    ) -> None:
        """Forget the schema of ``version``, or every version when ``version`` is None."""
        if version is None:
            self._models.pop((service, event_type), None)
            return
        models = self._models.get((service, event_type))
        if models is not None:
            models.pop(version, None)
            if not models:
                del self._models[(service, event_type)]

    def versions(self, service: str, event_type: str) -> Collection[int]:
        """The registered versions of ``service``'s ``event_type``: the service's own schemas
        when it has any, else those registered for every service."""
        if not self._models:
            return ()
        models = self._models.get((service, event_type)) or self._models.get((None, event_type))
        return models.keys() if models else ()

    def validate(self, service: str, event_type: str, data: Mapping[str, Any]) -> None:
        if not self._models:
            return
        models = self._models.get((service, event_type)) or self._models.get((None, event_type))
        if not models:
            return
        version = max(models)
        model = models[version]
        try:
            model.model_validate(data)
        except ValidationError as error:
            suffix = f" (version {version})" if version > 1 else ""
            raise EventSchemaError(
                f"data of {service}/{event_type} does not match {model.__name__}{suffix}: {error}"
            ) from None


def check_version(version: object) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidEventError(f"a schema version is an integer from 1, got {version!r}")
    return version


schemas = SchemaRegistry()
