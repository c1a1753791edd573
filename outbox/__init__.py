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
    current_tenant_id,
    current_traceparent,
    tenant_scope,
)
from outbox.emit import EventSpec, emit, emit_many
from outbox.encryption import EncryptionRegistry, encrypted_fields
from outbox.envelope import Event, MessagePriority
from outbox.errors import (
    ConfigurationError,
    DecryptError,
    DedupKeyOfAnotherTenantError,
    EventSchemaError,
    InvalidEventError,
    InvalidNameError,
    KeyNotConfiguredError,
    NotInTransactionError,
    OutboxError,
    PayloadNotSerializableError,
    PayloadTooLargeError,
    UnknownPriorityError,
    UnsupportedTransactionError,
    UpcastError,
)
from outbox.keyring import KeyProvider, SubjectKeyProvider, use_key_provider
from outbox.settings import EmitSettings, Settings, configure, get_settings
from outbox.upcasting import UpcasterRegistry, upcasters
from outbox.validation import SchemaRegistry, schemas

register_schema = schemas.register
encrypt_fields = encrypted_fields.register
register_upcaster = upcasters.register
upcaster = upcasters.upcaster

__all__ = [
    "ConfigurationError",
    "CorrelationIdMiddleware",
    "DecryptError",
    "DedupKeyOfAnotherTenantError",
    "EmitSettings",
    "EncryptionRegistry",
    "Event",
    "EventSchemaError",
    "EventSpec",
    "InvalidEventError",
    "InvalidNameError",
    "KeyNotConfiguredError",
    "KeyProvider",
    "MessagePriority",
    "NotInTransactionError",
    "OutboxError",
    "PayloadNotSerializableError",
    "PayloadTooLargeError",
    "SchemaRegistry",
    "Settings",
    "SubjectKeyProvider",
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
    "current_tenant_id",
    "current_traceparent",
    "emit",
    "emit_many",
    "encrypt_fields",
    "encrypted_fields",
    "get_settings",
    "register_schema",
    "register_upcaster",
    "schemas",
    "tenant_scope",
    "upcaster",
    "upcasters",
    "use_key_provider",
]
