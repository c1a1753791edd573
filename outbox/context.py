"""Context that emit() picks up: the correlation id, the causation id and the tenant id.

``CorrelationIdMiddleware`` (pure ASGI) reads ``X-Correlation-ID`` from each request, or makes a
new id, keeps it in a contextvar for the request's lifetime and returns it in the response, so
every event emitted while handling the request carries it without being passed by hand.

``caused_by(event)`` does the same for the chain of events: inside it, emit() takes the event's
correlation id and sets ``causation_id`` to its event id. The projection runtime opens it around
every handler call of one event (docs/tracing.md, "The causation chain"). The W3C trace context
comes from OpenTelemetry (:mod:`outbox.tracing`).

``tenant_scope(tenant_id)`` sets the tenant of every event emitted inside it (docs/tenancy.md).
There is no middleware for it on purpose: a tenant id taken from a request header would let any
caller pick its tenant; the service sets it from what its authentication established.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from outbox.tracing import current_traceparent
from outbox.validation import check_tenant_id

CORRELATION_HEADER = "x-correlation-id"
_MAX_INCOMING_LENGTH = 128

_correlation_id: ContextVar[str | None] = ContextVar("outbox_correlation_id", default=None)
_causation_id: ContextVar[str | None] = ContextVar("outbox_causation_id", default=None)
_tenant_id: ContextVar[str | None] = ContextVar("outbox_tenant_id", default=None)

__all__ = [
    "CorrelationIdMiddleware",
    "caused_by",
    "correlation_scope",
    "current_causation_id",
    "current_correlation_id",
    "current_tenant_id",
    "current_traceparent",
    "new_correlation_id",
    "tenant_scope",
]


def new_correlation_id() -> str:
    return str(uuid.uuid4())


def current_correlation_id() -> str | None:
    """The correlation id of the current context, if one was set."""
    return _correlation_id.get()


@contextmanager
def correlation_scope(correlation_id: str | None = None) -> Iterator[str]:
    """Run a block under ``correlation_id`` (a new one when omitted); restores the previous one."""
    value = correlation_id or new_correlation_id()
    token = _correlation_id.set(value)
    try:
        yield value
    finally:
        _correlation_id.reset(token)


def current_tenant_id() -> str | None:
    """The tenant of the current context (inside :func:`tenant_scope`), if any."""
    return _tenant_id.get()


@contextmanager
def tenant_scope(tenant_id: str) -> Iterator[str]:
    """Run a block as tenant ``tenant_id``: events emitted in it carry it, unless emit() is
    given another; restores the previous tenant. The id is checked here
    (:func:`outbox.validation.check_tenant_id`), so a bad one fails where it is set."""
    value = check_tenant_id(tenant_id)
    token = _tenant_id.set(value)
    try:
        yield value
    finally:
        _tenant_id.reset(token)


def current_causation_id() -> str | None:
    """The event id that events emitted now are caused by (inside :func:`caused_by`), if any."""
    return _causation_id.get()


class Cause(Protocol):
    """What :func:`caused_by` needs of an event: a ``StreamMessage`` or an ``Event``."""

    @property
    def event_id(self) -> str | uuid.UUID: ...

    @property
    def correlation_id(self) -> str: ...


class caused_by:  # used like a function: `with caused_by(event):`
    """Events emitted in this block continue ``event``'s chain: they take its correlation id
    and its event id as their causation id, unless emit() is given either explicitly, and its
    tenant id when it has one (a handler of tenant ``acme``'s event emits for ``acme``).

    A class rather than a generator: the projection runtime enters one per handler call.
    """

    __slots__ = ("_causation", "_correlation", "_event", "_tenant")

    def __init__(self, event: Cause) -> None:
        self._event = event

    def __enter__(self) -> None:
        self._correlation = _correlation_id.set(self._event.correlation_id)
        self._causation = _causation_id.set(str(self._event.event_id))
        tenant = getattr(self._event, "tenant_id", None)
        self._tenant = None if tenant is None else _tenant_id.set(tenant)

    def __exit__(self, *exc: object) -> None:
        if self._tenant is not None:
            _tenant_id.reset(self._tenant)
        _causation_id.reset(self._causation)
        _correlation_id.reset(self._correlation)


def _acceptable(value: str) -> bool:
    return 0 < len(value) <= _MAX_INCOMING_LENGTH and value.isprintable()


class _ASGIApp(Protocol):
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...


class CorrelationIdMiddleware:
    """ASGI middleware: one correlation id per HTTP request, echoed in ``X-Correlation-ID``.

    An incoming id is kept when it is 1-128 printable characters; otherwise a new one is made.
    """

    def __init__(self, app: _ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", ()):
            if name == CORRELATION_HEADER.encode():
                incoming = value.decode("latin-1")
                break
        correlation_id = incoming if incoming and _acceptable(incoming) else new_correlation_id()

        async def send_with_header(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", ())
                    if k != CORRELATION_HEADER.encode()
                ]
                headers.append((CORRELATION_HEADER.encode(), correlation_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        with correlation_scope(correlation_id):
            await self.app(scope, receive, send_with_header)
