"""Fixtures of the tracing tests (registered in tests/conftest.py).

- ``spans``: an OpenTelemetry SDK ``TracerProvider`` set as the global one for this test only,
  exporting every finished span to an ``InMemorySpanExporter`` (the fixture's value). Other
  tests run without a provider, as a service without the SDK does.
- helpers: :func:`finished` (the spans named so, polled until there are enough).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once


def _reset_global_provider() -> None:
    # The API lets a process set its provider once; tests need one each. This is what
    # opentelemetry-test-utils' reset_trace_globals() does.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_global_provider()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        _reset_global_provider()
        provider.shutdown()


async def finished(
    exporter: InMemorySpanExporter, name: str, *, count: int = 1, timeout_s: float = 30.0
) -> list[ReadableSpan]:
    """The finished spans called ``name``, once there are at least ``count`` (else fail)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [span for span in exporter.get_finished_spans() if span.name == name]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            names = sorted({span.name for span in exporter.get_finished_spans()})
            pytest.fail(f"timed out waiting for {count} {name!r} span(s); finished: {names}")
        await asyncio.sleep(0.02)
