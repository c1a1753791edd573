"""Exceptions of the relay. Driver errors (asyncpg, redis-py) are translated into these at the
module that talks to the driver, so the daemon's logic handles only the project's own errors."""

from __future__ import annotations

from outbox.errors import OutboxError
from outbox.streams.errors import RedisUnavailableError, StreamRefusedError

__all__ = [
    "DatabaseMismatchError",
    "DatabaseUnavailableError",
    "DeferralStateError",
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


class DatabaseMismatchError(RelayError):
    """The stored cursors are ahead of the database's transaction counter: it is not the
    database they were taken on (restored from a dump, recreated). Nothing is published."""


class DeferralStateError(RelayError):
    """``relay_deferred`` is not as the relay left it (its row deleted by hand): every read
    returns nothing until it is put right."""

    def __init__(self, schema: str, problem: str) -> None:
        super().__init__(
            f"{schema}.relay_deferred: {problem}, so the relay reads "
            "nothing; see docs/operations.md, 'Deferred transactions'"
        )
