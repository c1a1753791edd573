"""A daemon's own HTTP port: ``/metrics``, ``/health`` (liveness) and ``/ready`` (readiness).

``outbox relay`` and ``outbox project`` serve it when ``RELAY_METRICS_PORT`` /
``PROJECTION_METRICS_PORT`` (or ``--metrics-port``) is set, on ``METRICS_HOST``. It is a few
lines of asyncio rather than a web framework: three GETs, answered and closed, so a relay
installed with ``[relay]`` needs nothing but prometheus_client to render the text format.

- ``/health``: 200 while the daemon's loops keep turning (each records when it last did), 503
  when one has not for longer than its stall limit: a hung process a supervisor should restart.
  A daemon backing off from an unreachable PostgreSQL or Redis is alive.
- ``/ready``: 200 when the loops' last rounds reached PostgreSQL and Redis, 503 with what failed
  otherwise (a daemon waiting for a dependency, to take out of a load balancer, not to kill).
  It reads what the loops saw instead of opening connections of its own on every probe.
- ``/metrics``: the process's registry (:mod:`outbox.metrics`) in Prometheus text format.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry, generate_latest

T = TypeVar("T")

log = logging.getLogger("outbox.probes")

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
_REQUEST_TIMEOUT_S = 5.0
_MAX_REQUEST_BYTES = 8192


class Probe(Protocol):
    """What a daemon tells its probes."""

    @property
    def registry(self) -> CollectorRegistry: ...

    def liveness(self) -> dict[str, str]:
        """Each loop's state: ``"ok"`` or why it counts as stalled."""
        ...

    def readiness(self) -> dict[str, str]:
        """Each dependency's state as the loops last saw it: ``"ok"`` or the error."""
        ...


@dataclass
class Heartbeats:
    """When each loop of a daemon last turned, and what its last round found wrong.

    ``beat(loop)`` after every round (also a failed one: backing off is alive); ``failed(dep,
    error)`` / ``reached(dep)`` for what a round could or could not reach.
    """

    stall_after_s: float
    turned: dict[str, float] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    dependencies: tuple[str, ...] = ("postgres", "redis")

    def beat(self, loop: str) -> None:
        self.turned[loop] = time.monotonic()

    def forget(self, loop: str) -> None:
        self.turned.pop(loop, None)

    def failed(self, dependency: str, error: str) -> None:
        self.problems[dependency] = error[:300]

    def reached(self, *dependencies: str) -> None:
        for dependency in dependencies or self.dependencies:
            self.problems.pop(dependency, None)

    def liveness(self) -> dict[str, str]:
        now = time.monotonic()
        if not self.turned:
            return {"loops": "not started"}
        return {
            loop: "ok"
            if now - at <= self.stall_after_s
            else f"stalled: no round for {now - at:.0f}s (limit {self.stall_after_s:.0f}s)"
            for loop, at in sorted(self.turned.items())
        }

    def readiness(self) -> dict[str, str]:
        states = {d: self.problems.get(d, "ok") for d in self.dependencies}
        return states if self.turned else {"loops": "not started", **states}


def _ok(states: dict[str, str]) -> bool:
    return bool(states) and all(state == "ok" for state in states.values())


def answer(probe: Probe, path: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET of ``path``."""
    if path == "/metrics":
        return 200, CONTENT_TYPE_METRICS, generate_latest(probe.registry)
    if path in ("/health", "/ready"):
        states = probe.liveness() if path == "/health" else probe.readiness()
        ok = _ok(states)
        body = json.dumps({"status": "ok" if ok else "fail", **states}).encode()
        return (200 if ok else 503), "application/json", body
    return 404, "text/plain; charset=utf-8", b"not found: /metrics, /health, /ready\n"


async def _handle(probe: Probe, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(_REQUEST_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _MAX_REQUEST_BYTES:
            raise ValueError("request too large")
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            status, kind, body = 405, "text/plain; charset=utf-8", b"GET only\n"
        else:
            status, kind, body = answer(probe, path)
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(
            status, "Service Unavailable"
        )
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        if method != "HEAD":
            writer.write(body)
        await writer.drain()
    except (TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass  # not a request we answer: close
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(probe: Probe, host: str, port: int) -> asyncio.Server:
    """Listen on ``host:port`` (port 0: any free one, see ``server.sockets``)."""
    server = await asyncio.start_server(
        lambda r, w: _handle(probe, r, w), host, port, limit=_MAX_REQUEST_BYTES
    )
    bound = server.sockets[0].getsockname()
    log.info("event=probes_listening host=%s port=%s", bound[0], bound[1])
    return server


async def with_probes(probe: Probe, host: str, port: int | None, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` with the probes served on ``host:port`` meanwhile (none when ``port`` is
    None). A port that cannot be bound is a configuration error, before ``main`` starts."""
    if port is None:
        return await main
    from outbox.errors import ConfigurationError

    try:
        server = await serve(probe, host, port)
    except OSError as error:
        main.close()
        raise ConfigurationError(f"cannot serve the probes on {host}:{port}: {error}") from None
    try:
        return await main
    finally:
        server.close()
        await server.wait_closed()
