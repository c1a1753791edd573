"""The daemons' histograms render as prometheus_client's own would; heartbeats tell a stalled
loop from a backing-off one; the probe port answers the three paths and nothing else."""

from __future__ import annotations

import asyncio
import json
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Histogram as ReferenceHistogram

from outbox.metrics import LATENCY_BUCKETS_S, Histogram, RelayMetrics
from outbox.probes import Heartbeats, answer, serve

VALUES = [0.0, 0.001, 0.0011, 0.003, 0.5, 1.0, 2.4999, 7.0, 100.0, 599.0, 601.0, 1e6]


def _samples(text: bytes, name: str) -> list[str]:
    return [
        line
        for line in text.decode().splitlines()
        if line.startswith(name) and "_created" not in line
    ]


def test_a_bulk_histogram_renders_what_prometheus_clients_histogram_does() -> None:
    reference_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    reference = ReferenceHistogram(
        "x_seconds", "doc", ["service"], buckets=LATENCY_BUCKETS_S, registry=reference_registry
    )
    ours = Histogram("x_seconds", "doc", ("service",), LATENCY_BUCKETS_S)
    ours_registry.register(ours)
    for value in VALUES:
        reference.labels("identity").observe(value)
    ours.observe_many(VALUES[:5], "identity")
    for value in VALUES[5:]:
        ours.observe(value, "identity")
    assert _samples(generate_latest(ours_registry), "x_seconds") == _samples(
        generate_latest(reference_registry), "x_seconds"
    )
    assert ours.count("identity") == len(VALUES)
    assert ours.count("assets") == 0


def test_relay_metrics_are_named_by_the_conventions() -> None:
    metrics = RelayMetrics()
    metrics.published.labels("identity").inc(3)
    text = generate_latest(metrics.registry).decode()
    assert 'outbox_relay_events_published_total{service="identity"} 3.0' in text
    assert "# TYPE outbox_relay_publish_duration_seconds histogram" in text


def test_heartbeats_tell_stalled_from_alive_and_dependencies_apart() -> None:
    beats = Heartbeats(stall_after_s=0.05)
    assert beats.liveness() == {"loops": "not started"}
    beats.beat("pump")
    assert beats.liveness() == {"pump": "ok"}
    deadline = time.monotonic() + 5
    while beats.liveness()["pump"] == "ok":
        assert time.monotonic() < deadline
        time.sleep(0.01)  # waiting for the wall clock itself: what the check measures
    assert beats.liveness()["pump"].startswith("stalled: no round for")
    beats.failed("redis", "RedisUnavailableError: connection refused")
    assert beats.readiness() == {
        "postgres": "ok",
        "redis": "RedisUnavailableError: connection refused",
    }
    beats.reached("redis")
    assert beats.readiness() == {"postgres": "ok", "redis": "ok"}


class _Probe:
    def __init__(self) -> None:
        self.metrics = RelayMetrics()
        self.registry = self.metrics.registry
        self.heartbeats = Heartbeats(stall_after_s=60)

    def liveness(self) -> dict[str, str]:
        return self.heartbeats.liveness()

    def readiness(self) -> dict[str, str]:
        return self.heartbeats.readiness()


def test_the_answers_of_the_three_paths() -> None:
    probe = _Probe()
    assert answer(probe, "/health")[0] == 503  # no loop has turned yet
    probe.heartbeats.beat("pump")
    status, kind, body = answer(probe, "/health")
    assert (status, kind, json.loads(body)) == (
        200,
        "application/json",
        {"status": "ok", "pump": "ok"},
    )
    probe.heartbeats.failed("postgres", "DatabaseUnavailableError: gone")
    status, _, body = answer(probe, "/ready")
    assert status == 503
    assert json.loads(body)["postgres"] == "DatabaseUnavailableError: gone"
    assert answer(probe, "/metrics")[1].startswith("text/plain; version=0.0.4")
    assert answer(probe, "/admin")[0] == 404


async def _request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    writer.write_eof()
    await writer.drain()
    reply = await reader.read()
    writer.close()
    return reply


async def test_the_probe_port_speaks_enough_http() -> None:
    probe = _Probe()
    probe.heartbeats.beat("pump")
    server = await serve(probe, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reply = await _request(port, b"GET /health?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert f"Content-Length: {len(body)}".encode() in head
        assert json.loads(body)["status"] == "ok"
        head = await _request(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert head.endswith(b"\r\n\r\n")  # no body
        assert (await _request(port, b"POST /ready HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        assert (await _request(port, b"GET /x HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert await _request(port, b"garbage") == b""  # closed without an answer
    finally:
        server.close()
        await server.wait_closed()
