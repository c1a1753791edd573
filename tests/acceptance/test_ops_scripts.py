"""The original document's quick start: ``./deploy-redis-streams.sh`` brings the stack up in the
background and healthy, ``./test-redis-streams.sh`` smoke-tests it, ``--stop`` ends it. Run as a
user runs them: the real scripts, processes, PostgreSQL and Redis; a throwaway redis-server
configured as production must not be (evicting) for the failing case."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from tests.acceptance.test_make_run import _alive
from tests.conftest import _url_for
from tests.fixtures_cluster import RedisClusterServers, _free_ports, _plain_server
from tests.fixtures_monitor import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = str(ROOT / "deploy-redis-streams.sh")
SMOKE = str(ROOT / "test-redis-streams.sh")


def _run(command: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    return result.returncode, output


def _checks(output: str) -> dict[str, tuple[str, str]]:
    """``name -> (level, detail)`` of each line the smoke test printed."""
    checks: dict[str, tuple[str, str]] = {}
    for line in output.splitlines():
        level, _, rest = line.strip().partition(" ")
        if level in ("PASS", "WARN", "FAIL", "SKIP"):
            name, _, detail = rest.strip().partition("  ")
            checks[name.strip()] = (level, detail.strip())
    return checks


def _leftover_smoke_keys(url: str) -> list[bytes]:
    with redis.Redis.from_url(url) as client:
        return list(client.scan_iter(match="*smoke-*", count=1000))


@pytest.fixture
def deployment_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A deployment of its own: a database migrate creates, a key prefix, a monitor port and a
    run directory; the database and the prefix's keys are removed afterwards."""
    name = f"outbox_deploy_{uuid.uuid4().hex[:8]}"
    prefix = f"d{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": _url_for(name),
        "STREAM_PREFIX": prefix,
        "MONITOR_PORT": str(free_port()),
        "DEPLOY_RUN_DIR": str(tmp_path / "run"),
        "PROCESSOR_WORKERS": "2",
        "REFRESH_INTERVAL": "0.5",
    }
    yield env
    subprocess.run([DEPLOY, "--stop"], cwd=ROOT, env=env, capture_output=True, timeout=120)
    url = env.get("REDIS_STREAMS_URL", "redis://127.0.0.1:6379/0")
    with redis.Redis.from_url(url) as client:
        for key in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
            client.delete(key)
    with psycopg.connect(_url_for("postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_deploy_then_smoke_test_then_stop(deployment_env: dict[str, str]) -> None:
    env = deployment_env
    port = env["MONITOR_PORT"]
    run_dir = Path(env["DEPLOY_RUN_DIR"])

    code, output = _run([DEPLOY, "--local"], env)
    assert code == 0, output
    assert f"the dashboard is at http://127.0.0.1:{port}/" in output
    pids = {
        name: int((run_dir / f"{name}.pid").read_text())
        for name in ("relay", "projections", "monitor")
    }
    assert all(_alive(pid) for pid in pids.values()), output
    assert not (run_dir / "demo.pid").exists()  # the demo only with --demo
    assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200

    # Running it again starts nothing twice.
    code, again = _run([DEPLOY, "--local"], env)
    assert code == 0, again
    assert again.count("already runs") == 3, again
    assert {name: int((run_dir / f"{name}.pid").read_text()) for name in pids} == pids

    code, output = _run([SMOKE], env)
    assert code == 0, output
    checks = _checks(output)
    for name in (
        "redis connectivity",
        "redis eviction",
        "publish/consume/ack",
        "dead letters",
        "throughput",
        "monitor /health",
        "monitor /ready",
        "monitor /api/status",
        "monitor /api/streams",
        "monitor /metrics",
    ):
        assert checks[name][0] == "PASS", (name, output)
    with redis.Redis.from_url("redis://127.0.0.1:6379/0") as client:
        aof = client.config_get("appendonly")["appendonly"]
    # What the test says about persistence is what the Redis is (CI's runs without AOF).
    assert checks["redis persistence"][0] == ("PASS" if aof == "yes" else "WARN"), output
    assert "messages published in" in checks["throughput"][1]
    passed = 11 if aof == "yes" else 10
    assert f"summary: {passed} passed, {11 - passed} warnings, 0 failed" in output, output
    assert _leftover_smoke_keys("redis://127.0.0.1:6379/0") == []

    code, strict = _run([SMOKE, "--strict", "--count", "0"], env)
    assert code == (0 if aof == "yes" else 1), strict

    code, status = _run([DEPLOY, "--status"], env)
    assert code == 0, status
    assert f"monitor: ready at http://127.0.0.1:{port}/" in status

    code, output = _run([DEPLOY, "--stop"], env)
    assert code == 0, output
    assert not [pid for pid in pids.values() if _alive(pid)], output
    code, status = _run([DEPLOY, "--status"], env)
    assert code == 1, status
    assert "relay: not running" in status


def test_the_smoke_test_fails_on_a_redis_that_evicts(tmp_path: Path) -> None:
    (port,) = _free_ports(1)
    server = _plain_server(
        port,
        tmp_path,
        "--maxmemory",
        "64mb",
        "--maxmemory-policy",
        "allkeys-lru",
        "--appendonly",
        "yes",
    )
    url = f"redis://127.0.0.1:{port}/0"
    env = {**os.environ, "REDIS_STREAMS_URL": url, "REDIS_CLUSTER": "false"}
    try:
        code, output = _run([SMOKE, "--monitor-url", "", "--count", "200"], env)
        assert code == 1, output
        checks = _checks(output)
        assert checks["redis eviction"][0] == "FAIL", output
        assert "allkeys-lru" in checks["redis eviction"][1]
        assert checks["redis persistence"][0] == "PASS", output
        assert checks["publish/consume/ack"][0] == "PASS", output
        assert "1 failed" in output

        code, report = _run([SMOKE, "--monitor-url", "", "--count", "0", "--json"], env)
        assert code == 1
        answer = json.loads(report)
        assert answer["ok"] is False
        assert {c["name"]: c["level"] for c in answer["checks"]}["redis eviction"] == "FAIL"
        assert _leftover_smoke_keys(url) == []
    finally:
        server.kill()
        server.wait()


@pytest.mark.slow
def test_the_smoke_test_on_a_redis_cluster(redis_cluster: RedisClusterServers) -> None:
    env = {**os.environ, "REDIS_STREAMS_URL": redis_cluster.url, "REDIS_CLUSTER": "true"}
    code, output = _run([SMOKE, "--monitor-url", "", "--count", "300"], env)
    checks = _checks(output)
    assert checks["redis connectivity"][0] == "PASS", output
    assert "cluster of 3 primaries" in checks["redis connectivity"][1]
    for name in ("redis eviction", "publish/consume/ack", "dead letters", "throughput"):
        assert checks[name][0] == "PASS", (name, output)
    # The cluster's nodes run without AOF: a warning, so the exit code is still 0.
    assert checks["redis persistence"][0] == "WARN", output
    assert code == 0, output
    for node in redis_cluster.primaries():
        assert list(node.client().scan_iter(match="*smoke-*")) == []


def test_the_smoke_test_says_what_it_cannot_reach() -> None:
    (redis_port, monitor_port) = _free_ports(2)
    env = {**os.environ, "REDIS_STREAMS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    code, output = _run(
        [SMOKE, "--monitor-url", f"http://127.0.0.1:{monitor_port}/", "--timeout", "1"], env
    )
    assert code == 1, output
    checks = _checks(output)
    assert checks["redis connectivity"][0] == "FAIL"
    assert checks["publish/consume/ack"] == ("SKIP", "Redis is not reachable")
    assert checks["monitor /health"][0] == "FAIL"
    assert "is the monitor running" in checks["monitor /health"][1]
    assert checks["monitor /metrics"][0] == "SKIP"


def _path_without_docker() -> str:
    return os.pathsep.join(
        part
        for part in os.environ["PATH"].split(os.pathsep)
        if not (Path(part) / "docker").exists()
    )


def test_deploy_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    env = {**os.environ, "DEPLOY_RUN_DIR": str(tmp_path / "run"), "PATH": _path_without_docker()}
    code, output = _run([DEPLOY, "--bogus"], env)
    assert code == 2, output
    assert "unknown option --bogus" in output
    assert "usage:" in output
    code, output = _run([DEPLOY, "--timeout", "soon"], env)
    assert code == 2, output
    assert "--timeout needs a number" in output
    code, output = _run([DEPLOY, "--compose"], env)
    assert code == 2, output
    assert "needs a running Docker engine" in output


def test_deploy_drives_docker_compose_where_an_engine_answers(tmp_path: Path) -> None:
    """The Compose path's commands, against a stand-in ``docker`` that records what it is asked
    (no Docker engine on the machines this runs on); the real stack is docker-compose.yml,
    validated by ``make compose-check``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "docker-calls"
    fake = bin_dir / "docker"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit 0\n')
    fake.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{_path_without_docker()}",
        "DEPLOY_RUN_DIR": str(tmp_path / "run"),
        "MONITOR_PORT": str(free_port()),
    }
    env.pop("POSTGRES_PASSWORD", None)
    env.pop("REDIS_PASSWORD", None)
    if (ROOT / ".env").exists() and "PASSWORD=" in (ROOT / ".env").read_text():
        pytest.skip("this checkout's .env sets the passwords")

    code, output = _run([DEPLOY], env)
    assert code == 2, output
    assert "set POSTGRES_PASSWORD" in output
    assert "openssl rand" in output

    env.update(POSTGRES_PASSWORD="p" * 16, REDIS_PASSWORD="r" * 16)
    code, output = _run([DEPLOY, "--timeout", "1"], env)
    # Nothing serves the monitor's port: it waits, then says where to look.
    assert code == 1, output
    assert "docker compose logs migrate monitor" in output
    assert "compose up -d --build postgres redis migrate relay projections monitor" in (
        calls.read_text()
    )

    code, output = _run([SMOKE, "--count", "0"], env)
    assert code == 0, output
    assert calls.read_text().splitlines()[-1] == (
        "compose run --rm --no-deps monitor smoke --monitor-url http://monitor:8090/ --count 0"
    )
    code, output = _run([DEPLOY, "--stop"], env)
    assert code == 0, output
    assert calls.read_text().splitlines()[-1] == "compose stop"
    assert shutil.which("docker", path=env["PATH"]) == str(fake)
