"""``outbox relay`` and ``outbox project`` serve their own /metrics, /health and /ready: counters
and histograms of what the process did, Prometheus-clean; readiness follows what the loops
reach, liveness the loops themselves."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from redis.asyncio import Redis

import outbox
from outbox.probes import answer
from outbox.settings import Settings
from outbox.streams.keys import Keys
from tests.fixtures_cluster import _free_ports, _plain_server
from tests.fixtures_monitor import free_port
from tests.fixtures_promtool import promtool_check_metrics
from tests.fixtures_relay import StartRelay, emit_events, wait_until

ROOT = Path(__file__).resolve().parents[2]
OUTBOX = str(Path(sys.executable).with_name("outbox"))


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(text: str, name: str, **labels: str) -> float:
    return _samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def daemons(settings: Settings, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A relay and a projections process of this test's database and prefix, each with its
    probe port."""
    relay_port, project_port = free_port(), free_port()
    env = {
        **os.environ,
        "PROJECTION_MODULES": "outbox.projections.examples",
        "PROCESSOR_WORKERS": "2",
        "RELAY_POLL_MAX_MS": "20",
        "PROJECTION_METRICS_PORT": str(project_port),
    }
    logs = {name: tmp_path / f"{name}.log" for name in ("relay", "project")}
    commands = {"relay": [OUTBOX, "relay", "--metrics-port", str(relay_port)]}
    commands["project"] = [OUTBOX, "project"]
    processes = {}
    for name, command in commands.items():
        with logs[name].open("wb") as log:
            processes[name] = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log
            )
    try:
        yield relay_port, project_port
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for name, process in processes.items():
            process.wait(timeout=30)
            assert process.returncode == 0, logs[name].read_text()


async def _get(port: int, path: str) -> httpx.Response | None:
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            return await http.get(f"http://127.0.0.1:{port}{path}")
    except httpx.TransportError:
        return None


async def test_relay_and_projections_serve_their_metrics_and_probes(
    daemons: tuple[int, int],
    asyncpg_conn: asyncpg.Connection,
    redis_client: Redis,
    settings: Settings,
) -> None:
    relay_port, project_port = daemons
    for port in daemons:
        await wait_until(
            lambda port=port: _ready(port), timeout_s=60, what=f"/ready on port {port}"
        )
    ids = await emit_events(asyncpg_conn, 150, services=("assets",), per_tx=50)  # unhandled
    for first in range(0, 150, 50):
        async with asyncpg_conn.transaction():
            users = await outbox.emit_many(
                asyncpg_conn,
                [
                    outbox.EventSpec("identity", "user_created", {"user_id": f"u{n}"})
                    for n in range(first, first + 50)
                ],
            )
        ids += [str(user.event_id) for user in users]
    keys = Keys(settings.stream_prefix)
    # An entry no projection can read: the user directory dead-letters it as malformed.
    await redis_client.xadd(
        keys.stream("identity"), {"event_type": "user_created", "data": "[1]", "service": "x"}
    )

    async def relayed_and_applied() -> bool:
        relay = await _get(relay_port, "/metrics")
        project = await _get(project_port, "/metrics")
        if relay is None or project is None:
            return False
        published = sum(
            _value(relay.text, "outbox_relay_events_published_total", service=s)
            for s in ("identity", "assets")
        )
        applied = _value(
            project.text, "projection_events_applied_total", projection="user_directory"
        )
        letters = _value(
            project.text,
            "projection_dead_letters_total",
            projection="user_directory",
            reason="malformed",
        )
        unhandled = _value(
            project.text, "projection_events_unhandled_total", projection="user_directory"
        )
        return published == len(ids) and applied == 150 and letters == 1 and unhandled == 0

    await wait_until(relayed_and_applied, timeout_s=60, what="every event relayed and applied")

    relay_text = await _text(relay_port, "/metrics")
    project_text = await _text(project_port, "/metrics")
    for service in ("identity", "assets"):
        assert (
            _value(relay_text, "outbox_relay_emit_to_publish_seconds_count", service=service) == 150
        )
        assert _value(relay_text, "outbox_relay_batch_size_sum", service=service) == 150
    assert _value(relay_text, "outbox_relay_publish_duration_seconds_count") > 0
    assert _value(relay_text, "outbox_relay_leased_services") >= 2
    directory = {"projection": "user_directory"}
    assert _value(project_text, "projection_emit_to_apply_seconds_count", **directory) == 150
    assert _value(project_text, "projection_xadd_to_apply_seconds_count", **directory) == 150
    # user_directory's on_batch handler takes each batch's run of user_created in one call.
    calls = _value(
        project_text,
        "projection_handler_duration_seconds_count",
        event_type="user_created",
        **directory,
    )
    assert 1 <= calls <= 150
    assert _value(project_text, "projection_batch_apply_duration_seconds_count", **directory) > 0
    for port in daemons:
        health = await _get(port, "/health")
        assert health is not None
        assert health.status_code == 200, health.text
        assert health.json()["status"] == "ok"

    for text in (relay_text, project_text):
        # Last: without promtool the test is skipped here (with the end-of-run banner).
        assert await asyncio.to_thread(promtool_check_metrics, text) == (0, "")


async def _ready(port: int) -> bool:
    response = await _get(port, "/ready")
    return response is not None and response.status_code == 200


async def _text(port: int, path: str) -> str:
    response = await _get(port, path)
    assert response is not None, f"no answer on {port}{path}"
    return response.text


async def test_relay_readiness_follows_redis_and_liveness_the_loops(
    start_relay: StartRelay, asyncpg_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    (port,) = _free_ports(1)
    server = _plain_server(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        async with start_relay(redis_streams_url=SecretStr(url), redis_password=None) as relay:
            await emit_events(asyncpg_conn, 10)

            async def published(count: int) -> bool:
                return relay.metrics.published.labels("identity")._value.get() >= count

            await wait_until(lambda: published(10), what="the first events published")
            assert answer(relay, "/ready")[0] == 200
            assert answer(relay, "/health")[0] == 200

            server.kill()
            server.wait()
            await emit_events(asyncpg_conn, 10)

            async def not_ready() -> bool:
                return answer(relay, "/ready")[0] == 503

            await wait_until(not_ready, what="/ready to say Redis is unreachable")
            assert "Redis" in relay.readiness()["redis"]
            assert relay.readiness()["postgres"] == "ok"
            status, _, body = answer(relay, "/health")
            assert status == 200, body  # backing off is alive

            server = _plain_server(port, tmp_path)

            async def ready_again() -> bool:
                return answer(relay, "/ready")[0] == 200

            await wait_until(ready_again, timeout_s=30, what="/ready once Redis is back")
            await wait_until(lambda: published(20), what="the rest published")
            assert relay.metrics.errors.labels("redis")._value.get() >= 1
    finally:
        server.kill()
        server.wait()
    # Stalled: the loops stop turning (the relay has stopped) and the limit passes.
    relay.heartbeats.stall_after_s = 0.01
    deadline = time.monotonic() + 5
    while answer(relay, "/health")[0] == 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)  # waiting for the wall clock itself: what liveness measures
    assert any(state.startswith("stalled") for state in relay.liveness().values())
