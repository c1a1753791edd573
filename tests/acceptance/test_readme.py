"""The README's commands run as written.

Blocks fenced as ```sh readme-test run top to bottom with bash (each must exit 0); in blocks
fenced as ```sh readme-daemon each line is a long-running command that must start, keep running
and exit 0 on SIGINT (Ctrl-C). They run against this test's own database and a Redis database of
their own with the default prefix, as a newcomer's shell would (``.venv/bin`` on the PATH).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from outbox.settings import Settings
from tests.fixtures_monitor import free_port

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"^```sh (readme-test|readme-daemon)\n(.*?)^```", re.M | re.S)
#: What each long-running command logs once it is up and working.
STARTED = ("event=relay_started", "event=consumer_started", "monitor: http", "event=demo_started")
REDIS_DB = 13  # the README's keys use the default prefix: keep them out of db 0


def blocks(kind: str) -> list[str]:
    return [body for marker, body in BLOCK.findall(README) if marker == kind]


def daemon_lines() -> list[str]:
    return [line for body in blocks("readme-daemon") for line in body.splitlines() if line]


@pytest.fixture
def shell_env(database_url: str) -> Iterator[dict[str, str]]:
    base = Settings().redis_streams_url.get_secret_value().rsplit("/", 1)[0]
    redis_url = f"{base}/{REDIS_DB}"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DATABASE_URL": database_url,
        "REDIS_STREAMS_URL": redis_url,
        "STREAM_PREFIX": "opsconductor",
        "RELAY_INSTANCE_ID": "readme",
    }
    env.pop("VIRTUAL_ENV", None)
    yield env
    client.flushdb()
    client.close()


def test_there_are_blocks_to_run() -> None:
    assert len(blocks("readme-test")) >= 5
    assert len(daemon_lines()) >= 4


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_readme_commands_run_as_written(shell_env: dict[str, str]) -> None:
    script = "set -euo pipefail\n" + "\n".join(blocks("readme-test"))
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env=shell_env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("line", daemon_lines())
def test_readme_daemons_start_and_stop_on_ctrl_c(shell_env: dict[str, str], line: str) -> None:
    env = dict(shell_env)
    env["MONITOR_PORT"] = str(free_port())
    if "--port 8099" in line:
        line = line.replace("--port 8099", f"--port {free_port()}")
    subprocess.run(
        ["outbox", "migrate", "--examples"], env=env, cwd=ROOT, check=True, capture_output=True
    )
    process = subprocess.Popen(
        ["bash", "-c", f"exec env {line}"],  # env: a line may start with VAR=value
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while not any(marker in line for line in seen for marker in STARTED):
            line_out = process.stdout.readline()
            assert line_out, "".join(seen)[-3000:]  # it exited before it started
            seen.append(line_out)
            assert time.monotonic() < deadline, "".join(seen)[-3000:]
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        output = "".join(seen) + rest
        assert process.returncode == 0, output[-3000:]
        assert "Traceback" not in output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
