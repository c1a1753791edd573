"""Request context that emit() picks up: the correlation id and the W3C trace context.

``CorrelationIdMiddleware`` (pure ASGI) reads ``X-Correlation-ID`` from each request, or makes a
new id, keeps it in a contextvar for the request's lifetime and returns it in the response, so
every event emitted while handling the request carries it without being passed by hand.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

CORRELATION_HEADER = "x-correlation-id"
_MAX_INCOMING_LENGTH = 128

_correlation_id: ContextVar[str | None] = ContextVar("outbox_correlation_id", default=None)


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


def _acceptable(value: str) -> bool:
    return 0 < len(value) <= _MAX_INCOMING_LENGTH and value.isprintable()


try:  # OpenTelemetry is optional: used only when installed and a span is active.
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover - exercised only without opentelemetry-api
    _otel_trace = None  # type: ignore[assignment]


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the active OpenTelemetry span, or ``None``."""
    if _otel_trace is None:  # pragma: no cover
        return None
    context = _otel_trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


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
