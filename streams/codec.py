"""The stream entry format: encode an outbox event into entry fields, decode an entry back.

An entry is a flat map of strings (Redis stream fields). Field names are the contract between the
relay (which writes them), consumers (which read them) and the CloudEvents conversion:

==================  ==========================================================================
field               meaning
==================  ==========================================================================
``event_id``        outbox event UUID (dedup key of consumers' inboxes)
``event_type``      e.g. ``user_created``
``service``         publishing service (the outbox stream)
``source``          CloudEvents source (defaults to the service)
``data``            JSON object, exactly as stored in the outbox
``priority``        ``low`` / ``normal`` / ``high`` / ``critical``
``timestamp``       occurred_at as Unix seconds (float), the original document's field
``occurred_at``     ISO 8601 with time zone
``position``        outbox position (append order)
``correlation_id``  always present
``retry_count``     ``0`` when published; consumers count deliveries instead
``max_retries``     the retry budget the publisher configured
optional            ``causation_id``, ``user_id``, ``aggregate_id``, ``dedup_key``,
                    ``traceparent``, ``headers`` (JSON object): absent when empty
==================  ==========================================================================
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.scanner import make_scanner
from typing import Any

from outbox.envelope import Event, MessagePriority
from outbox.errors import OutboxError

_OPTIONAL = ("causation_id", "user_id", "aggregate_id", "dedup_key", "traceparent", "tenant_id")
_REQUIRED = ("event_id", "event_type", "service", "data", "priority", "correlation_id")


class MalformedEntryError(OutboxError):
    """A stream entry lacks a required field or cannot be decoded; it goes to dead letters."""


@dataclass(slots=True)
class StreamMessage:
    """One stream entry, decoded: the original document's fields plus the full envelope."""

    id: str
    stream: str
    event_type: str
    service: str
    data: dict[str, Any]
    priority: MessagePriority
    timestamp: float
    retry_count: int
    max_retries: int
    correlation_id: str
    user_id: str | None = None
    event_id: str = ""
    source: str = ""
    causation_id: str | None = None
    aggregate_id: str | None = None
    dedup_key: str | None = None
    traceparent: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    position: int | None = None
    occurred_at: datetime | None = None
    #: The tenant the event belongs to (docs/tenancy.md); None: the deployment's own.
    tenant_id: str | None = None
    #: (data, headers) as stored, once encrypted fields were opened (outbox.encryption): what a
    #: dead letter keeps, so that no plaintext of them is ever written back.
    stored: tuple[dict[str, Any], dict[str, str]] | None = field(default=None, repr=False)

    @property
    def schema_version(self) -> int:
        """The version of the data's schema (headers ``schema_version``; 1 when absent): the
        current one once upcast (:mod:`outbox.upcasting`)."""
        text = self.headers.get("schema_version")
        return int(text) if text is not None else 1


def entry_ms(entry_id: str) -> int:
    """The Unix time in milliseconds of a Redis-generated entry id (``<ms>-<seq>``)."""
    return int(entry_id.split("-", 1)[0])


def encode_fields(
    *,
    event_id: str,
    event_type: str,
    service: str,
    source: str,
    data_json: str,
    priority: MessagePriority,
    occurred_at: datetime,
    correlation_id: str,
    position: int | None,
    max_retries: int,
    causation_id: str | None = None,
    user_id: str | None = None,
    aggregate_id: str | None = None,
    dedup_key: str | None = None,
    traceparent: str | None = None,
    headers_json: str | None = None,
    tenant_id: str | None = None,
) -> dict[str, str]:
    """Entry fields from already-serialised parts (the relay passes the stored JSON through)."""
    flat: list[str] = []
    encode_flat(
        flat,
        event_id=event_id,
        event_type=event_type,
        service=service,
        source=source,
        data_json=data_json,
        priority=priority,
        occurred_at_iso=occurred_at.isoformat(),
        timestamp=repr(occurred_at.timestamp()),
        correlation_id=correlation_id,
        position=position,
        max_retries=str(max_retries),
        causation_id=causation_id,
        user_id=user_id,
        aggregate_id=aggregate_id,
        dedup_key=dedup_key,
        traceparent=traceparent,
        headers_json=headers_json,
        tenant_id=tenant_id,
    )
    return dict(zip(flat[::2], flat[1::2], strict=True))


def encode_event(event: Event, *, max_retries: int) -> dict[str, str]:
    return encode_fields(
        event_id=str(event.event_id),
        event_type=event.event_type,
        service=event.service,
        source=event.source,
        data_json=json.dumps(event.data, ensure_ascii=False, separators=(",", ":")),
        priority=event.priority,
        occurred_at=event.occurred_at,
        correlation_id=event.correlation_id,
        position=event.position,
        max_retries=max_retries,
        causation_id=event.causation_id,
        user_id=event.user_id,
        aggregate_id=event.aggregate_id,
        dedup_key=event.dedup_key,
        traceparent=event.traceparent,
        headers_json=json.dumps(event.headers, ensure_ascii=False) if event.headers else None,
        tenant_id=event.tenant_id,
    )


def _text(fields: Mapping[Any, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        value = fields.get(name.encode())
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


_PRIORITIES = {priority.label: priority for priority in MessagePriority}


def _as_text_fields(fields: Mapping[Any, Any]) -> Mapping[str, Any]:
    """Fields with str keys and values, decoding once when the client returns bytes."""
    for key in fields:
        if isinstance(key, bytes):
            return {
                k.decode("utf-8") if isinstance(k, bytes) else str(k): (
                    v.decode("utf-8") if isinstance(v, bytes) else v
                )
                for k, v in fields.items()
            }
        break
    return fields


# The canonical UUID text the relay writes; anything else goes through uuid.UUID, which accepts
# the other spellings (braces, urn:uuid:, no hyphens) exactly as before.
_CANONICAL_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
).fullmatch
# json.loads() without its per-call wrapper (two whitespace regex matches and a method call): the
# C scanner parses the document; anything it does not consume whole (surrounding whitespace, an
# error) is handed to json.loads, which gives the same result or the same error as before.
_scan_json = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # typeshed wants a decoder-like context


def _load_json(text: str) -> Any:
    try:
        value, end = _scan_json(text, 0)
    except StopIteration:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


#: Namespace of the event ids given to entries that the original library published (no
#: ``event_id``): uuid5 of ``<stream key>/<entry id>``, the same for every consumer.
LEGACY_NAMESPACE = uuid.UUID("6f757462-6f78-4c65-8761-637953747265")
#: What the original library's ``initialize()`` adds at id 0-1 to every stream: not an event.
STREAM_INITIALIZED = "stream_initialized"
MARKER_ID = "0-1"


def legacy_event_id(stream: str, entry_id: str) -> str:
    """The event id of an entry the original library published (it carries none): derived
    from the stream and the entry id, so a redelivery or a replay of that entry is recognised,
    but the same event published twice is two events (weaker than the outbox's dedup)."""
    return str(uuid.uuid5(LEGACY_NAMESPACE, f"{stream}/{entry_id}"))


def _legacy(stream: str, key: str, entry_id: str, get: Any) -> dict[str, str]:
    """The envelope fields of an entry in the original library's format (``id, stream,
    event_type, service, data, priority`` as ``low|normal|high|critical``, ``timestamp,
    retry_count, max_retries, correlation_id, user_id``), missing ones defaulted. Its own ``id``
    field is ignored: the library does not promise it is unique or even set."""
    event_id = legacy_event_id(key, entry_id)
    key_parts = key.split(":")
    service = get("service") or get("stream") or (key_parts[1] if len(key_parts) > 2 else stream)
    return {
        "event_id": event_id,
        "service": service.strip("{}"),
        "data": get("data") or "{}",
        "priority": get("priority") or "normal",
        "correlation_id": get("correlation_id") or event_id,
        # The marker of initialize() at 0-1 may carry no event type of its own.
        "event_type": STREAM_INITIALIZED if entry_id == MARKER_ID else "",
    }


def is_marker(message: StreamMessage) -> bool:
    """The original library's ``stream_initialized`` marker: consumers ack and skip it."""
    return message.event_type == STREAM_INITIALIZED


def decode_entry(
    stream: str, entry_id: str, fields: Mapping[Any, Any], key: str | None = None
) -> StreamMessage:
    """Decode entry fields (str or bytes keys) or raise :class:`MalformedEntryError`.

    This runs once per event in every consumer, so it reads each field once, straight from the
    mapping (decoded in one pass when the client returns bytes), and builds the message with
    positional arguments. An entry of the original library (no ``event_id``) is decoded too,
    with an event id derived from the stream ``key`` (default ``stream``) and the entry id
    (:func:`legacy_event_id`).
    """
    try:
        get = _as_text_fields(fields).get
        if get("event_id") is None and (get("event_type") or entry_id == MARKER_ID):
            legacy = _legacy(stream, key or stream, entry_id, get)
            plain = get

            def get(name: str, default: Any = None) -> Any:
                value = plain(name)  # the original library writes "" for a missing value
                return legacy.get(name, default) if value in (None, "") else value

        event_id = get("event_id")
        event_type = get("event_type")
        service = get("service")
        data_text = get("data")
        priority_text = get("priority")
        correlation_id = get("correlation_id")
        if not (
            event_id and event_type and service and data_text and priority_text and correlation_id
        ):
            missing = [
                name
                for name, value in zip(
                    _REQUIRED,
                    (event_id, event_type, service, data_text, priority_text, correlation_id),
                    strict=True,
                )
                if not value
            ]
            raise MalformedEntryError(f"entry {entry_id} of {stream} lacks {', '.join(missing)}")
        data = _load_json(data_text)
        if not isinstance(data, dict):
            raise MalformedEntryError(f"entry {entry_id} of {stream}: data is not a JSON object")
        if _CANONICAL_UUID(event_id) is None:
            uuid.UUID(event_id)
        priority = _PRIORITIES.get(priority_text) or MessagePriority.parse(priority_text)
        occurred_text = get("occurred_at")
        occurred_at = datetime.fromisoformat(occurred_text) if occurred_text else None
        timestamp_text = get("timestamp")
        if timestamp_text is not None:
            timestamp = _timestamp(timestamp_text)
        elif occurred_at is not None:
            timestamp = occurred_at.timestamp()
        else:
            timestamp = datetime.now(UTC).timestamp()
        headers_text = get("headers")
        position_text = get("position")
        retry_text = get("retry_count")
        max_retries_text = get("max_retries")
        return StreamMessage(
            entry_id,
            stream,
            event_type,
            service,
            data,
            priority,
            timestamp,
            int(retry_text) if retry_text else 0,
            int(max_retries_text) if max_retries_text else 0,
            correlation_id,
            get("user_id"),
            event_id,
            get("source") or service,
            get("causation_id"),
            get("aggregate_id"),
            get("dedup_key"),
            get("traceparent"),
            _load_json(headers_text) if headers_text else {},
            int(position_text) if position_text else None,
            occurred_at,
            get("tenant_id"),
        )
    except MalformedEntryError:
        raise
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError, OutboxError) as error:
        raise MalformedEntryError(
            f"entry {entry_id} of {stream} cannot be decoded: {error}"
        ) from None


def _timestamp(text: str) -> float:
    """Unix seconds, or an ISO 8601 time (the original library's ``timestamp`` may be either)."""
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text).timestamp()


# CloudEvents 1.0 (https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md).
# Extension attribute names must be lower-case alphanumerics, hence the squeezed names.
_EXTENSIONS = {
    "correlation_id": "correlationid",
    "causation_id": "causationid",
    "user_id": "userid",
    "dedup_key": "dedupkey",
    "traceparent": "traceparent",
    "service": "service",
    "position": "position",
    "headers": "outboxheaders",
    "timestamp": "timestamp",
    "retry_count": "retrycount",
    "max_retries": "maxretries",
}


def to_cloudevent(fields: Mapping[Any, Any]) -> dict[str, Any]:
    """A CloudEvents 1.0 JSON-format event carrying every field of the entry."""
    text = {name: _text(fields, name) for name in (*_REQUIRED, *_OPTIONAL, *_EXTENSIONS)}
    cloudevent: dict[str, Any] = {
        "specversion": "1.0",
        "id": text["event_id"],
        "source": _text(fields, "source") or text["service"],
        "type": text["event_type"],
        "datacontenttype": "application/json",
        "data": json.loads(text["data"] or "{}"),
        "priority": text["priority"],
    }
    occurred_at = _text(fields, "occurred_at")
    if occurred_at:
        cloudevent["time"] = occurred_at
    aggregate_id = text["aggregate_id"]
    if aggregate_id:
        cloudevent["subject"] = aggregate_id
    for name, attribute in _EXTENSIONS.items():
        value = text.get(name)
        if value:
            cloudevent[attribute] = value
    return cloudevent


def from_cloudevent(cloudevent: Mapping[str, Any]) -> dict[str, str]:
    """Entry fields back from :func:`to_cloudevent`'s output (lossless round trip)."""
    fields: dict[str, str] = {
        "event_id": str(cloudevent["id"]),
        "event_type": str(cloudevent["type"]),
        "source": str(cloudevent["source"]),
        "data": json.dumps(cloudevent.get("data", {}), ensure_ascii=False, separators=(",", ":")),
        "priority": str(cloudevent.get("priority", "normal")),
    }
    if "time" in cloudevent:
        fields["occurred_at"] = str(cloudevent["time"])
    if "subject" in cloudevent:
        fields["aggregate_id"] = str(cloudevent["subject"])
    for name, attribute in _EXTENSIONS.items():
        if attribute in cloudevent:
            fields[name] = str(cloudevent[attribute])
    return fields


_LABELS = {priority: priority.label for priority in MessagePriority}


def encode_flat(
    out: list[str],
    *,
    event_id: str,
    event_type: str,
    service: str,
    source: str,
    data_json: str,
    priority: MessagePriority,
    occurred_at_iso: str,
    timestamp: str,
    correlation_id: str,
    position: int | None,
    max_retries: str,
    causation_id: str | None,
    user_id: str | None,
    aggregate_id: str | None,
    dedup_key: str | None,
    traceparent: str | None,
    headers_json: str | None,
    tenant_id: str | None = None,
) -> None:
    """The entry's fields appended to ``out`` as ``field, value, …``: the relay's hot path (no
    dict, no enum lookups, times already formatted by PostgreSQL), and the one place the field
    list is written down. ``timestamp`` is Unix seconds, ``occurred_at_iso`` ISO 8601."""
    out += (
        "event_id",
        event_id,
        "event_type",
        event_type,
        "service",
        service,
        "source",
        source,
        "data",
        data_json,
        "priority",
        _LABELS[priority],
        "timestamp",
        timestamp,
        "occurred_at",
        occurred_at_iso,
        "correlation_id",
        correlation_id,
        "retry_count",
        "0",
        "max_retries",
        max_retries,
    )
    if position is not None:
        out += ("position", str(position))
    if causation_id:
        out += ("causation_id", causation_id)
    if user_id:
        out += ("user_id", user_id)
    if aggregate_id:
        out += ("aggregate_id", aggregate_id)
    if dedup_key:
        out += ("dedup_key", dedup_key)
    if traceparent:
        out += ("traceparent", traceparent)
    if tenant_id:
        out += ("tenant_id", tenant_id)
    if headers_json:
        out += ("headers", headers_json)
