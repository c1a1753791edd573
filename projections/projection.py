"""Declaring a projection: a name, the services it reads, and a handler per event type.

>>> users = Projection("user_directory", streams=["identity"], tables=["directory_users"])
>>> @users.on("user_created")
... async def created(event: StreamMessage, db: asyncpg.Connection) -> None:
...     await db.execute("INSERT INTO directory_users ...", event.data["user_id"], ...)

A handler receives the decoded event and the asyncpg connection whose transaction also records
the event in the inbox; it must not commit or open its own transaction (a nested
``db.transaction()`` is a savepoint and is fine). ``@projection.on_batch(event_type)`` takes
a list of consecutive events handled by that same function instead (one function may serve
several types), so a batch can be applied with one set-based statement; the events come in
stream order and may repeat an aggregate. Event types without a handler are skipped and
counted, never failed.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from outbox.errors import ConfigurationError
from outbox.streams.codec import StreamMessage
from outbox.validation import check_service

Connection = Any  # an asyncpg.Connection (asyncpg ships no type hints)
Handler = Callable[[StreamMessage, Connection], Awaitable[None]]
BatchHandler = Callable[[Sequence[StreamMessage], Connection], Awaitable[None]]
ResetHandler = Callable[[Connection], Awaitable[None]]
H = TypeVar("H", bound=Callable[..., Awaitable[None]])


class Projection:
    """A read model fed by consumer group ``name`` on the streams of ``streams`` (services).

    ``tables`` are the read-model tables a rebuild empties (or give ``@on_reset``).
    """

    def __init__(
        self, name: str, streams: Iterable[str], *, tables: Iterable[str] = (), doc: str = ""
    ) -> None:
        self.name = check_service(name)
        self.streams = [check_service(stream) for stream in streams]
        if not self.streams:
            raise ConfigurationError(f"projection {name!r} reads no stream")
        self.tables = list(tables)
        self.doc = doc
        self.handlers: dict[str, Handler] = {}
        self.batch_handlers: dict[str, BatchHandler] = {}
        self.reset_handler: ResetHandler | None = None

    def __repr__(self) -> str:
        return f"Projection({self.name!r}, streams={self.streams!r})"

    @property
    def event_types(self) -> set[str]:
        return set(self.handlers) | set(self.batch_handlers)

    def handles(self, event_type: str) -> bool:
        return event_type in self.handlers or event_type in self.batch_handlers

    def _check_free(self, event_type: str) -> None:
        if self.handles(event_type):
            raise ConfigurationError(
                f"projection {self.name!r} already has a handler for {event_type!r}"
            )

    def on(self, event_type: str) -> Callable[[Handler], Handler]:
        """Register ``handler(event, db)`` for one event type."""

        def register(handler: Handler) -> Handler:
            self._check_free(event_type)
            self.handlers[event_type] = handler
            return handler

        return register

    def on_batch(self, event_type: str) -> Callable[[BatchHandler], BatchHandler]:
        """Register ``handler(events, db)`` for runs of consecutive events it handles."""

        def register(handler: BatchHandler) -> BatchHandler:
            self._check_free(event_type)
            self.batch_handlers[event_type] = handler
            return handler

        return register

    def on_reset(self, handler: ResetHandler) -> ResetHandler:
        """Register ``handler(db)`` that empties the read model before a rebuild."""
        self.reset_handler = handler
        return handler

    async def apply_one(self, message: StreamMessage, db: Connection) -> bool:
        """Apply one event; False when its type has no handler (skipped)."""
        handler = self.handlers.get(message.event_type)
        if handler is not None:
            await handler(message, db)
            return True
        batch_handler = self.batch_handlers.get(message.event_type)
        if batch_handler is not None:
            await batch_handler([message], db)
            return True
        return False


_registry: dict[str, Projection] = {}


def register(projection: Projection) -> Projection:
    """Make a projection known to ``outbox project`` and ``outbox projections``."""
    existing = _registry.get(projection.name)
    if existing is not None and existing is not projection:
        raise ConfigurationError(f"two projections are named {projection.name!r}")
    _registry[projection.name] = projection
    return projection


def unregister(name: str) -> None:
    _registry.pop(name, None)


def load(modules: str | Sequence[str]) -> dict[str, Projection]:
    """Import the modules that register projections (PROJECTION_MODULES); return the registry."""
    names = modules.split(",") if isinstance(modules, str) else list(modules)
    for module in (name.strip() for name in names):
        if module:
            importlib.import_module(module)
    return dict(_registry)


def select(names: Sequence[str]) -> list[Projection]:
    """The registered projections called ``names`` (all when empty)."""
    if not names:
        return list(_registry.values())
    unknown = [name for name in names if name not in _registry]
    if unknown:
        known = ", ".join(sorted(_registry)) or "none (PROJECTION_MODULES names no module)"
        raise ConfigurationError(
            f"unknown projection {', '.join(unknown)}; registered: {known}; PROJECTION_MODULES "
            "lists the modules that register projections"
        )
    return [_registry[name] for name in names]
