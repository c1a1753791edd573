"""OpenTelemetry spans of emit, relay publish and projection handling (optional).

``opentelemetry-api`` is used when it is importable and the service has set an SDK
``TracerProvider``; otherwise every function here does next to nothing and this module imports
nothing (docs/tracing.md). The trace context travels in the W3C format whatever propagator the
service configured: ``traceparent`` in the outbox column and entry field of that name, and
``tracestate``, when there is one, in the event's headers (``headers["tracestate"]``).

Spans (the OpenTelemetry messaging conventions, https://opentelemetry.io/docs/specs/semconv/messaging/messaging-spans/):

* ``outbox.emit`` (PRODUCER, operation ``create``), a child of the caller's current span; the
  event stores *its* context, so everything downstream points at the emit.
* ``outbox.relay publish`` (PRODUCER, ``send``): one per publish round (one Redis round trip),
  with a link to the stored context of each event it carries, at most :data:`MAX_LINKS`.
* ``outbox.projection batch`` (CONSUMER, ``process``): one per applied batch, linked likewise.
* ``outbox.projection handle <event_type>`` (CONSUMER, ``process``): one per handler call. For a
  call on one event its parent is that event's stored context (the handler joins the emitting
  trace) and it links to the batch span; for an ``on_batch`` call on several events it is a
  child of the batch span and links to each event's context.

Tracing must never cost an event: errors raised while building spans or links are logged at
debug level and swallowed; only the caller's own exceptions propagate (and are recorded).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from outbox._version import __version__

if TYPE_CHECKING:
    from opentelemetry.trace import Link, Span, SpanContext, Tracer

    from outbox.envelope import Event
    from outbox.streams.codec import StreamMessage

log = logging.getLogger("outbox.tracing")

#: Links per span at most: the SDK's default span link limit (OTEL_SPAN_LINK_COUNT_LIMIT), so
#: none is dropped silently; a relay round carries up to RELAY_BATCH_SIZE events per service.
MAX_LINKS = 128
TRACER_NAME = "opsconductor-outbox"
SYSTEM = "redis"

try:  # OpenTelemetry is optional (the `otel` extra).
    from opentelemetry import trace as _trace
    from opentelemetry.trace import NonRecordingSpan as _NonRecordingSpan
    from opentelemetry.trace import ProxyTracerProvider as _ProxyTracerProvider
    from opentelemetry.trace import SpanKind as _SpanKind
    from opentelemetry.trace import Status as _Status
    from opentelemetry.trace import StatusCode as _StatusCode
except (
    ImportError
):  # pragma: no cover - exercised by tests/integration/test_tracing.py's subprocess
    _trace = None  # type: ignore[assignment]

#: The provider last asked and its tracer. The provider itself is kept, not its id(): a replaced
#: provider's id can be reused by the next one (tests make one each), whose spans would then go
#: to the old provider's tracer.
_cached: tuple[object, Tracer] | None = None


def _tracer() -> Tracer | None:
    """The tracer of the service's provider, or None while no SDK provider is set.

    The API hands out a proxy provider until the service sets one; spans from it record nothing,
    so the hot paths skip them (and the traceparent parsing) entirely.
    """
    if _trace is None:
        return None
    provider = _trace.get_tracer_provider()
    if isinstance(provider, (_ProxyTracerProvider, _trace.NoOpTracerProvider)):
        return None
    global _cached
    cached = _cached
    if cached is not None and cached[0] is provider:
        return cached[1]
    tracer = provider.get_tracer(TRACER_NAME, __version__)
    _cached = (provider, tracer)
    return tracer


def enabled() -> bool:
    """True when spans are recorded: opentelemetry-api installed and an SDK provider set."""
    return _tracer() is not None


# --- W3C trace context ------------------------------------------------------------------------


def format_traceparent(context: SpanContext) -> str | None:
    """``00-<trace id>-<span id>-<flags>`` of ``context``, or None when it is not valid."""
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the active OpenTelemetry span, or ``None``."""
    if _trace is None:
        return None
    return format_traceparent(_trace.get_current_span().get_span_context())


def current_trace_context() -> tuple[str | None, str | None]:
    """(traceparent, tracestate) of the active span; (None, None) without one."""
    if _trace is None:
        return None, None
    return _carrier(_trace.get_current_span().get_span_context())


def _carrier(context: SpanContext) -> tuple[str | None, str | None]:
    traceparent = format_traceparent(context)
    if traceparent is None:
        return None, None
    return traceparent, context.trace_state.to_header() or None


_TRACEPARENT = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?"
).fullmatch


def parse_context(traceparent: str | None, tracestate: str | None = None) -> SpanContext | None:
    """The remote span context a stored ``traceparent`` (and ``tracestate``) names, or None.

    Parsed to the W3C rules (https://www.w3.org/TR/trace-context/#traceparent-header: version
    ``00`` has exactly four fields, a later version at least these four; no all-zero id) rather
    than by the service's propagator, which may speak another format (B3).
    """
    if _trace is None or not traceparent:
        return None
    match = _TRACEPARENT(traceparent.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_int, span_int = int(trace_id, 16), int(span_id, 16)
    if not trace_int or not span_int:
        return None
    state = _trace.TraceState.from_header([tracestate]) if tracestate else None
    return _trace.SpanContext(
        trace_int,
        span_int,
        is_remote=True,
        trace_flags=_trace.TraceFlags(int(flags, 16)),
        trace_state=state,
    )


def _links(contexts: Iterable[tuple[str | None, str | None]]) -> tuple[list[Link], int]:
    """Links to the parseable contexts (at most MAX_LINKS) and how many were left out."""
    assert _trace is not None
    links: list[Link] = []
    left_out = 0
    for traceparent, tracestate in contexts:
        if not traceparent:
            continue
        if len(links) >= MAX_LINKS:
            left_out += 1
            continue
        context = parse_context(traceparent, tracestate)
        if context is not None:
            links.append(_trace.Link(context))
    return links, left_out


def _message_context(message: StreamMessage) -> tuple[str | None, str | None]:
    return message.traceparent, message.headers.get("tracestate") if message.headers else None


# --- emit ---------------------------------------------------------------------------------------


def start_emit() -> Span | None:
    """The ``outbox.emit`` span of one emit()/emit_many() call, started in the current context
    (not made current), or None when tracing is off. End it with :func:`emitting`."""
    tracer = _tracer()
    if tracer is None:
        return None
    try:
        return tracer.start_span(
            "outbox.emit",
            kind=_SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "create",
                "messaging.operation.name": "emit",
            },
        )
    except Exception:  # pragma: no cover - a broken SDK must not stop the emit
        log.debug("event=tracing_failed where=emit", exc_info=True)
        return None


def emit_context(span: Span | None) -> tuple[str | None, str | None]:
    """(traceparent, tracestate) to store with the events of ``span``'s emit: the emit span's
    own context, or, without one, the active span's (as before tracing was added)."""
    if span is None:
        return current_trace_context()
    return _carrier(span.get_span_context())


@contextmanager
def emitting(span: Span | None) -> Iterator[None]:
    """Run the write with ``span`` current (a driver's own spans nest under it), record a
    failure, and end the span."""
    if span is None:
        yield
        return
    assert _trace is not None
    with _trace.use_span(span, end_on_exit=True, record_exception=True):
        yield


def emitted(span: Span | None, events: Sequence[Event]) -> None:
    """Describe the written ``events`` on their emit span."""
    if span is None or not events or not span.is_recording():
        return
    try:
        first = events[0]
        attributes: dict[str, Any] = {}
        if all(event.service == first.service for event in events):
            attributes["messaging.destination.name"] = first.service
        if all(event.event_type == first.event_type for event in events):
            attributes["outbox.event_type"] = first.event_type
        if len(events) == 1:
            attributes["messaging.message.id"] = str(first.event_id)
            attributes["messaging.message.conversation_id"] = first.correlation_id
        else:
            attributes["messaging.batch.message_count"] = len(events)
        span.set_attributes(attributes)
    except Exception:  # pragma: no cover
        log.debug("event=tracing_failed where=emitted", exc_info=True)


def failed(span: Span | None, error: BaseException) -> None:
    """End ``span`` for an emit() that raised before writing (invalid event)."""
    if span is None:
        return
    try:
        span.record_exception(error)
        span.set_status(_Status(_StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()
    except Exception:  # pragma: no cover
        log.debug("event=tracing_failed where=emit_failed", exc_info=True)


# --- relay --------------------------------------------------------------------------------------


def relay_publish(batches: Mapping[str, Sequence[Mapping[str, Any]]]) -> Any:
    """Context manager: the ``outbox.relay publish`` span of one publish round, current while
    the round runs, linked to each row's stored context (``traceparent``, ``tracestate``)."""
    tracer = _tracer()
    if tracer is None:
        return nullcontext()
    return _relay_publish(tracer, batches)


@contextmanager
def _relay_publish(
    tracer: Tracer, batches: Mapping[str, Sequence[Mapping[str, Any]]]
) -> Iterator[None]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.batch.message_count": sum(len(rows) for rows in batches.values()),
        "outbox.services": sorted(batches),
    }
    links: list[Link] = []
    try:
        links, left_out = _links(
            (row.get("traceparent"), row.get("tracestate"))
            for rows in batches.values()
            for row in rows
        )
        if left_out:
            attributes["outbox.links_left_out"] = left_out
        if len(batches) == 1:
            attributes["messaging.destination.name"] = next(iter(batches))
    except Exception:  # pragma: no cover - never let tracing stop a publish
        log.debug("event=tracing_failed where=relay_links", exc_info=True)
    with tracer.start_as_current_span(
        "outbox.relay publish", kind=_SpanKind.PRODUCER, attributes=attributes, links=links
    ):
        yield


# --- projections --------------------------------------------------------------------------------


def projection_batch(projection: str, messages: Sequence[StreamMessage]) -> Any:
    """Context manager: the ``outbox.projection batch`` span of one applied batch."""
    tracer = _tracer()
    if tracer is None:
        return nullcontext()
    return _projection_batch(tracer, projection, messages)


@contextmanager
def _projection_batch(
    tracer: Tracer, projection: str, messages: Sequence[StreamMessage]
) -> Iterator[None]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.consumer.group.name": projection,
        "messaging.batch.message_count": len(messages),
    }
    links: list[Link] = []
    try:
        links, left_out = _links(_message_context(message) for message in messages)
        if left_out:
            attributes["outbox.links_left_out"] = left_out
        streams = {message.stream for message in messages}
        if len(streams) == 1:
            attributes["messaging.destination.name"] = streams.pop()
    except Exception:  # pragma: no cover
        log.debug("event=tracing_failed where=projection_links", exc_info=True)
    with tracer.start_as_current_span(
        "outbox.projection batch", kind=_SpanKind.CONSUMER, attributes=attributes, links=links
    ):
        yield


def handling(projection: str, event_type: str, messages: Sequence[StreamMessage]) -> Any:
    """Context manager: the ``outbox.projection handle <event_type>`` span of one handler call,
    current while the handler runs (events it emits carry this span's trace). An exception is
    recorded on it (status ERROR) and propagates."""
    tracer = _tracer()
    if tracer is None:
        return nullcontext()
    return _handling(tracer, projection, event_type, messages)


@contextmanager
def _handling(
    tracer: Tracer, projection: str, event_type: str, messages: Sequence[StreamMessage]
) -> Iterator[None]:
    assert _trace is not None
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.consumer.group.name": projection,
        "outbox.event_type": event_type,
    }
    parent = None
    links: list[Link] = []
    try:
        batch = _trace.get_current_span().get_span_context()
        if len(messages) == 1:
            message = messages[0]
            attributes["messaging.message.id"] = message.event_id
            attributes["messaging.message.conversation_id"] = message.correlation_id
            attributes["messaging.destination.name"] = message.stream
            if message.id:
                attributes["outbox.entry_id"] = message.id
            producer = parse_context(*_message_context(message))
            if producer is not None:
                # The handler joins the emitting trace; the batch that ran it is a link away.
                parent = _trace.set_span_in_context(_NonRecordingSpan(producer))
                if batch.is_valid:
                    links.append(_trace.Link(batch))
        else:
            attributes["messaging.batch.message_count"] = len(messages)
            links, left_out = _links(_message_context(message) for message in messages)
            if left_out:
                attributes["outbox.links_left_out"] = left_out
    except Exception:  # pragma: no cover
        log.debug("event=tracing_failed where=handler_links", exc_info=True)
    with tracer.start_as_current_span(
        f"outbox.projection handle {event_type}",
        context=parent,
        kind=_SpanKind.CONSUMER,
        attributes=attributes,
        links=links,
    ):
        yield
