"""Exceptions of the relay. Driver errors (asyncpg, redis-py) are translated into these at the
module that talks to the driver, so the daemon's logic handles only the project's own errors."""

from __future__ import annotations

from outbox.errors import OutboxError
from outbox.streams.errors import RedisUnavailableError, StreamRefusedError

__all__ = [
    "DatabaseUnavailableError",
    "LeaseLostError",
    "RedisUnavailableError",
    "RelayError",
    "StreamRefusedError",
]


class RelayError(OutboxError):
    """The relay cannot go on."""


class DatabaseUnavailableError(RelayError):
    """PostgreSQL cannot be reached, or dropped the relay's connection; the relay reconnects."""


class LeaseLostError(RelayError):
    """The session holding the relay's leases is gone; every lease it held is released."""
