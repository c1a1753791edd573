"""OpenTelemetry end to end (docs/tracing.md), recorded by the SDK's in-memory exporter: the
emit span and the context stored with the event, the relay's publish span linked to it, the
projection's batch and handler spans, and the causation chain of events a handler emits.
Real PostgreSQL and Redis; the relay and the projections run in this test's event loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence

import asyncpg
import pytest
import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import outbox
from outbox import EventSpec, tracing
from outbox.projections.apply import apply_batch
from outbox.projections.projection import Projection
from outbox.settings import Settings
from outbox.streams.codec import StreamMessage, decode_entry, encode_event
from outbox.streams.keys import Keys
from tests.fixtures_projections import Runner, emit_events
from tests.fixtures_relay import StartRelay, wait_until
from tests.fixtures_tracing import finished

REMOTE_PARENT = trace.SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    trace_state=trace.TraceState([("vendor", "abc")]),
)


def _traceparent(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _trace_id(traceparent: str | None) -> int:
    assert traceparent is not None
    return int(traceparent.split("-")[1], 16)


def _linked(span: ReadableSpan) -> set[tuple[int, int]]:
    return {(link.context.trace_id, link.context.span_id) for link in span.links}


def _ids(span: ReadableSpan) -> tuple[int, int]:
    context = span.get_span_context()
    assert context is not None
    return context.trace_id, context.span_id


async def test_emit_span_is_stored_as_the_events_trace_context(
    spans: InMemorySpanExporter, asyncpg_conn: asyncpg.Connection
) -> None:
    """The event stores its emit span's context, a child of the caller's span, with the
    caller's tracestate; the span describes the event."""
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span(
        "request", context=trace.set_span_in_context(trace.NonRecordingSpan(REMOTE_PARENT))
    ) as request:
        async with asyncpg_conn.transaction():
            event = await outbox.emit(
                asyncpg_conn, service="identity", event_type="user_created", data={"n": 1}
            )
    (emit_span,) = await finished(spans, "outbox.emit")
    assert emit_span.kind is SpanKind.PRODUCER
    assert emit_span.parent is not None
    assert emit_span.parent.span_id == request.get_span_context().span_id
    assert emit_span.attributes is not None
    assert dict(emit_span.attributes) == {
        "messaging.system": "redis",
        "messaging.operation.type": "create",
        "messaging.operation.name": "emit",
        "messaging.destination.name": "identity",
        "outbox.event_type": "user_created",
        "messaging.message.id": str(event.event_id),
        "messaging.message.conversation_id": event.correlation_id,
    }
    row = await asyncpg_conn.fetchrow(
        "SELECT traceparent, headers FROM outbox_events WHERE event_id = $1", event.event_id
    )
    assert row is not None
    assert row["traceparent"] == event.traceparent == _traceparent(emit_span)
    assert _trace_id(event.traceparent) == REMOTE_PARENT.trace_id
    assert json.loads(row["headers"]) == event.headers == {"tracestate": "vendor=abc"}


async def test_emit_keeps_an_explicit_traceparent_and_records_failures(
    spans: InMemorySpanExporter, asyncpg_conn: asyncpg.Connection
) -> None:
    given = {"traceparent": "00-11111111111111111111111111111111-2222222222222222-01"}
    async with asyncpg_conn.transaction():
        explicit = await outbox.emit(
            asyncpg_conn, service="identity", event_type="a", data={}, headers=given
        )
        several = await outbox.emit_many(
            asyncpg_conn, [EventSpec("identity", "b", {}), EventSpec("identity", "b", {})]
        )
        with pytest.raises(outbox.InvalidNameError):
            await outbox.emit(asyncpg_conn, service="Not A Service", event_type="c", data={})
    assert explicit.traceparent == given["traceparent"]
    assert explicit.headers == given
    emits = await finished(spans, "outbox.emit", count=3)
    batch = next(s for s in emits if (s.attributes or {}).get("messaging.batch.message_count"))
    assert {e.traceparent for e in several} == {_traceparent(batch)}
    (failed,) = [s for s in emits if s.status.status_code is StatusCode.ERROR]
    assert [event.name for event in failed.events] == ["exception"]


async def test_relay_publish_span_links_to_each_emit(
    spans: InMemorySpanExporter,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    relay_settings: Settings,
    start_relay: StartRelay,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    async with asyncpg_conn.transaction():
        first = await outbox.emit(asyncpg_conn, service="identity", event_type="a", data={})
        second = await outbox.emit(asyncpg_conn, service="identity", event_type="b", data={})
    emits = await finished(spans, "outbox.emit", count=2)
    async with start_relay():

        async def both_published() -> bool:
            return bool(await redis_client.xlen(keys.stream("identity")) == 2)

        await wait_until(both_published, what="the two events")
        publishes = await finished(spans, "outbox.relay publish")
    publish = next(s for s in publishes if s.links)
    assert publish.kind is SpanKind.PRODUCER
    assert _linked(publish) == {_ids(span) for span in emits}
    assert (publish.attributes or {})["messaging.batch.message_count"] == 2
    entries = await redis_client.xrange(keys.stream("identity"))
    carried = [decode_entry(keys.stream("identity"), i.decode(), f).traceparent for i, f in entries]
    assert carried == [first.traceparent, second.traceparent]


async def test_projection_spans_join_the_emit_trace_and_handlers_continue_the_chain(
    spans: InMemorySpanExporter,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    projection_settings: Settings,
    start_relay: StartRelay,
    running: Runner,
) -> None:
    """Emit → relay → handler: the handler span is a child of the emit span; what the handler
    emits takes the handled event's correlation id, its event id as causation, and the handler
    span as parent."""
    projection = Projection("welcomes", streams=["identity"])
    emitted: list[outbox.Event] = []

    @projection.on("user_created")
    async def welcome(event: StreamMessage, db: asyncpg.Connection) -> None:
        emitted.append(
            await outbox.emit(
                db, service="communication", event_type="welcome_queued", data=event.data
            )
        )

    async with asyncpg_conn.transaction():
        created = await outbox.emit(
            asyncpg_conn,
            service="identity",
            event_type="user_created",
            data={"user_id": "u1"},
            correlation_id="req-7",
        )
    (created_emit,) = await finished(spans, "outbox.emit")
    async with start_relay(), running([projection], projection_settings):
        (handle,) = await finished(spans, "outbox.projection handle user_created")
    batches = await finished(spans, "outbox.projection batch")

    assert handle.kind is SpanKind.CONSUMER
    assert handle.parent is not None
    assert (handle.parent.trace_id, handle.parent.span_id) == _ids(created_emit)
    (batch,) = [s for s in batches if _ids(created_emit) in _linked(s)]
    assert batch.kind is SpanKind.CONSUMER
    assert _linked(handle) == {_ids(batch)}
    assert (handle.attributes or {})["messaging.message.id"] == str(created.event_id)

    (welcome_event,) = emitted
    assert welcome_event.correlation_id == "req-7"
    assert welcome_event.causation_id == str(created.event_id)
    row = await asyncpg_conn.fetchrow(
        "SELECT correlation_id, causation_id, traceparent FROM outbox_events WHERE event_id = $1",
        welcome_event.event_id,
    )
    assert row is not None
    assert (row["correlation_id"], row["causation_id"]) == ("req-7", str(created.event_id))
    assert _trace_id(row["traceparent"]) == _ids(handle)[0]
    (welcome_emit,) = [
        s
        for s in spans.get_finished_spans()
        if s.name == "outbox.emit"
        and (s.attributes or {}).get("messaging.message.id") == str(welcome_event.event_id)
    ]
    assert welcome_emit.parent is not None
    assert welcome_emit.parent.span_id == _ids(handle)[1]
    assert row["traceparent"] == _traceparent(welcome_emit)


def _messages(events: Sequence[outbox.Event], stream: str) -> list[StreamMessage]:
    return [
        decode_entry(stream, f"{i + 1}-0", encode_event(event, max_retries=3))
        for i, event in enumerate(events)
    ]


async def test_a_failing_handler_span_records_the_error(
    spans: InMemorySpanExporter, database_url: str, asyncpg_conn: asyncpg.Connection
) -> None:
    projection = Projection("breaks", streams=["identity"])

    @projection.on("user_broken")
    async def broken(event: StreamMessage, db: asyncpg.Connection) -> None:
        raise ValueError("this handler always fails")

    events = await emit_events(database_url, [EventSpec("identity", "user_broken", {})])
    outcome = await apply_batch(asyncpg_conn, projection, _messages(events, "s"))
    assert [m.event_id for m, _ in outcome.failed] == [str(events[0].event_id)]
    # Tried in the batch's one transaction, then alone (apply.py's slow path): both recorded.
    failures = await finished(spans, "outbox.projection handle user_broken", count=2)
    for failure in failures:
        assert failure.status.status_code is StatusCode.ERROR
        assert [(e.name, (e.attributes or {})["exception.type"]) for e in failure.events] == [
            ("exception", "ValueError")
        ]


async def test_batch_handlers_cause_per_event_with_caused_by(
    spans: InMemorySpanExporter, database_url: str, asyncpg_conn: asyncpg.Connection
) -> None:
    """An on_batch call on one event runs like a per-event handler; on several it sets no
    cause, and ``caused_by`` names each one. Its span is the batch's child, linked to each
    event's emit."""
    projection = Projection("batched", streams=["identity"])
    followers: list[outbox.Event] = []

    @projection.on_batch("user_created")
    async def created(events: Sequence[StreamMessage], db: asyncpg.Connection) -> None:
        if len(events) == 1:
            followers.append(await outbox.emit(db, service="audit", event_type="one", data={}))
            return
        assert outbox.current_causation_id() is None
        for event in events:
            with outbox.caused_by(event):
                followers.append(await outbox.emit(db, service="audit", event_type="each", data={}))

    specs = [EventSpec("identity", "user_created", {}, correlation_id=f"c{i}") for i in range(3)]
    events = await emit_events(database_url, specs)
    emits = await finished(spans, "outbox.emit")
    messages = _messages(events, "s")
    await apply_batch(asyncpg_conn, projection, messages[:2])
    await apply_batch(asyncpg_conn, projection, messages[2:])

    assert [(f.correlation_id, f.causation_id) for f in followers] == [
        (e.correlation_id, str(e.event_id)) for e in events
    ]
    handles = await finished(spans, "outbox.projection handle user_created", count=2)
    batches = await finished(spans, "outbox.projection batch", count=2)
    pair = next(h for h in handles if (h.attributes or {}).get("messaging.batch.message_count"))
    assert pair.parent is not None
    assert pair.parent.span_id in {_ids(b)[1] for b in batches}
    (emit_span,) = emits
    assert _linked(pair) == {_ids(emit_span)}  # emit_many: both events share one emit span
    single = next(h for h in handles if h is not pair)
    assert single.parent is not None
    assert (single.parent.trace_id, single.parent.span_id) == _ids(emit_span)


# Run in a fresh interpreter where `import opentelemetry` fails, as in a service without it:
# emit, relay and a handler that emits all work, and nothing imports OpenTelemetry.
_WITHOUT_OTEL = textwrap.dedent(
    """
    import asyncio, json, sys

    class NoOpenTelemetry:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ImportError(f"{name} is not installed here")

    sys.meta_path.insert(0, NoOpenTelemetry())

    import asyncpg
    import redis.asyncio as aioredis

    import outbox
    from outbox.projections.apply import apply_batch
    from outbox.projections.projection import Projection
    from outbox.relay.daemon import Relay
    from outbox.settings import get_settings
    from outbox.streams.codec import decode_entry
    from outbox.streams.keys import Keys

    async def main():
        settings = get_settings().model_copy(update={"relay_poll_max_ms": 20.0})
        conn = await asyncpg.connect(settings.libpq_url())
        async with conn.transaction():
            event = await outbox.emit(
                conn, service="identity", event_type="user_created", data={}, correlation_id="r1"
            )
        relay = Relay.from_settings(settings, exclusive=False)
        task = asyncio.create_task(relay.run())
        stream = Keys(settings.stream_prefix).stream("identity")
        client = aioredis.Redis.from_url(settings.redis_streams_url.get_secret_value())
        async with asyncio.timeout(30):
            while not await client.xlen(stream):
                await asyncio.sleep(0.02)
        relay.stop()
        await task
        [(entry_id, fields)] = await client.xrange(stream)
        message = decode_entry(stream, entry_id.decode(), fields)
        projection = Projection("chain", streams=["identity"])
        caused = []

        @projection.on("user_created")
        async def handle(message, db):
            caused.append(await outbox.emit(db, service="audit", event_type="seen", data={}))

        await apply_batch(conn, projection, [message])
        await client.aclose()
        await conn.close()
        print(json.dumps({
            "event_id": str(event.event_id),
            "traceparent": event.traceparent,
            "published": message.event_id,
            "caused": [caused[0].correlation_id, caused[0].causation_id],
            "otel_modules": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
            "tracing": outbox.tracing.enabled(),
        }))

    asyncio.run(main())
    """
)


def test_works_without_opentelemetry(settings: Settings, redis_client: aioredis.Redis) -> None:
    env = {**os.environ, "DATABASE_URL": settings.libpq_url()}
    env["STREAM_PREFIX"] = settings.stream_prefix
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_OTEL],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "event_id": result["event_id"],
        "traceparent": None,
        "published": result["event_id"],
        "caused": ["r1", result["event_id"]],
        "otel_modules": [],
        "tracing": False,
    }


def test_no_provider_means_no_spans_and_the_active_context_is_kept() -> None:
    assert not tracing.enabled()
    with trace.use_span(trace.NonRecordingSpan(REMOTE_PARENT)):
        assert tracing.emit_context(tracing.start_emit()) == (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "vendor=abc",
        )
