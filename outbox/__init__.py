"""Transactional outbox: write events in the same PostgreSQL transaction as your data.

>>> async with session.begin():
...     session.add(user)
...     await outbox.emit(session, service="identity", event_type="user_created",
...                       data={"user_id": user.id})
"""

from __future__ import annotations

from outbox.context import (
    CorrelationIdMiddleware,
    correlation_scope,
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
)
from outbox.settings import Settings, get_settings
from outbox.validation import SchemaRegistry, schemas

register_schema = schemas.register

__all__ = [
    "ConfigurationError",
    "CorrelationIdMiddleware",
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
    "correlation_scope",
    "current_correlation_id",
    "current_traceparent",
    "emit",
    "emit_many",
    "get_settings",
    "register_schema",
    "schemas",
]
