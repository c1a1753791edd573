"""The project's own exceptions.

Each docstring is the message a user reads first; driver errors are translated into these at the
package boundary so callers never have to catch asyncpg, psycopg or redis-py exceptions.
"""

from __future__ import annotations


class OutboxError(Exception):
    """Base class of every error raised by opsconductor-outbox."""


class InvalidEventError(OutboxError, ValueError):
    """The event was rejected before anything was sent to PostgreSQL; the transaction is usable."""


class InvalidNameError(InvalidEventError):
    """A service or event type is empty or does not match the documented pattern."""


class UnknownPriorityError(InvalidEventError):
    """The priority is not one of LOW, NORMAL, HIGH, CRITICAL."""


class PayloadNotSerializableError(InvalidEventError):
    """The event data cannot be stored as JSON; `path` names the offending value."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"event data is not JSON-serialisable at {path}: {reason}")


class PayloadTooLargeError(InvalidEventError):
    """The serialised event data is larger than the configured limit (OUTBOX_MAX_PAYLOAD_BYTES)."""

    def __init__(self, size_bytes: int, limit_bytes: int) -> None:
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes
        super().__init__(
            f"event data is {size_bytes} bytes once serialised, over the limit of {limit_bytes} "
            "bytes (OUTBOX_MAX_PAYLOAD_BYTES); store large content elsewhere and reference it"
        )


class EventSchemaError(InvalidEventError):
    """The event data does not match the schema registered for its event type."""


class DedupKeyOfAnotherTenantError(InvalidEventError):
    """The dedup key is stored already for this service, by an event of another tenant (or of
    none): the stored event is not returned, its data belongs to someone else. Dedup keys are
    unique per service (docs/tenancy.md): derive tenants' keys with their tenant id in them.
    Raised after the statement ran: roll the transaction back."""


class UnsupportedTransactionError(OutboxError, TypeError):
    """emit() was given something that is not a supported transaction handle."""


class NotInTransactionError(OutboxError):
    """emit() needs the caller's open transaction; it never opens or commits one itself."""


class ConfigurationError(OutboxError):
    """A setting is missing or invalid."""


class UpcastError(OutboxError):
    """A stored event cannot be brought to the current version of its schema: an upcaster step
    is missing or failed, or the event is newer than this process knows. The event is
    dead-lettered, never passed through; replay it once the upcaster is registered."""


class KeyNotConfiguredError(ConfigurationError):
    """An event type is declared encrypted (``outbox.encrypt_fields``) but no encryption key is
    configured (OUTBOX_ENCRYPTION_KEYS, OUTBOX_ENCRYPTION_KEY_FILE): emit() wrote nothing."""


class DecryptError(OutboxError):
    """An encrypted field of a stored event does not open: its key is not configured here (or
    was deleted), the key under its id is another one, or the ciphertext was altered or moved.
    The event is dead-lettered as stored, still encrypted; replay it once the key is back."""
