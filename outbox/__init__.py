"""Transactional outbox: write events in the same PostgreSQL transaction as your data.

>>> async with session.begin():
...     session.add(user)
...     await outbox.emit(session, service="identity", event_type="user_created",
...                       data={"user_id": user.id})
"""

from __future__ import annotations

from outbox._version import __version__
from outbox.context import (
    CorrelationIdMiddleware,
    caused_by,
    correlation_scope,
    current_causation_id,
    current_correlation_id,
    current_traceparent,
)
from outbox.emit import EventSpec, emit, emit_many
from outbox.envelope import Event, MessagePriority
from outbox.errors import (
    ConfigurationError,
    EventSchemaError,
    InvalidEventError,
    InvalidNameError,
    NotInTransactionError,
    OutboxError,
    PayloadNotSerializableError,
    PayloadTooLargeError,
    UnknownPriorityError,
    UnsupportedTransactionError,
    UpcastError,
)
from outbox.settings import EmitSettings, Settings, configure, get_settings
from outbox.upcasting import UpcasterRegistry, upcasters
from outbox.validation import SchemaRegistry, schemas

register_schema = schemas.register
register_upcaster = upcasters.register
upcaster = upcasters.upcaster

__all__ = [
    "ConfigurationError",
    "CorrelationIdMiddleware",
    "EmitSettings",
    "Event",
    "EventSchemaError",
    "EventSpec",
    "InvalidEventError",
    "InvalidNameError",
    "MessagePriority",
    "NotInTransactionError",
    "OutboxError",
    "PayloadNotSerializableError",
    "PayloadTooLargeError",
    "SchemaRegistry",
    "Settings",
    "UnknownPriorityError",
    "UnsupportedTransactionError",
    "UpcastError",
    "UpcasterRegistry",
    "__version__",
    "caused_by",
    "configure",
    "correlation_scope",
    "current_causation_id",
    "current_correlation_id",
    "current_traceparent",
    "emit",
    "emit_many",
    "get_settings",
    "register_schema",
    "register_upcaster",
    "schemas",
    "upcaster",
    "upcasters",
]
