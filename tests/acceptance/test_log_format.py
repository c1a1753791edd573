"""LOG_FORMAT=json: the real commands write one JSON object per stderr line, their own events and
those of alembic and uvicorn alike; the text format is unchanged."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from outbox.settings import Settings
from tests.fixtures_monitor import free_port
from tests.fixtures_relay import emit_events

OUTBOX = str(Path(sys.executable).parent / "outbox")
PASSWORD = "hunter2-not-logged"


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every line of ``stderr`` as JSON; fails on the first line that is not an object with a
    timestamp, level and logger."""
    records = []
    for line in stderr.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\n{stderr[-3000:]}")
        assert isinstance(record, dict), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["timestamp"]), line
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}, line
        assert record["logger"], line
        records.append(record)
    return records


def events(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [record for record in records if record.get("event") == name]


def with_password(url: str) -> str:
    """The same database with a password in its URL (trust authentication ignores it)."""
    scheme, rest = url.split("://", 1)
    user, at, location = rest.partition("@")
    return f"{scheme}://{user}:{PASSWORD}@{location}" if at else url


class Command:
    """A long-running ``outbox`` command with its stdout and stderr in files."""

    def __init__(self, args: list[str], env: dict[str, str], tmp_path: Path) -> None:
        self.stdout_path = tmp_path / "stdout.log"
        self.stderr_path = tmp_path / "stderr.log"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen([OUTBOX, *args], env=env, stdout=out, stderr=err)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def complete_stderr(self) -> str:
        """What the process wrote, up to its last complete line (it may be writing the next)."""
        text = self.stderr()
        return text[: text.rfind("\n") + 1]

    def wait_for(self, what: str, found: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Poll until ``found()``; fail at the deadline or when the process ends first."""
        deadline = time.monotonic() + timeout_s
        while not found():
            if self.process.poll() is not None:
                pytest.fail(f"exited {self.process.returncode} before {what}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout_s}s waiting for {what}:\n{self.stderr()}")
            time.sleep(0.02)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def commands(tmp_path: Path) -> Iterator[Callable[[list[str], dict[str, str]], Command]]:
    started: list[Command] = []

    def start(args: list[str], env: dict[str, str]) -> Command:
        directory = tmp_path / str(len(started))
        directory.mkdir()
        started.append(Command(args, env, directory))
        return started[-1]

    yield start
    for command in started:
        command.kill()


def test_migrate_reads_log_format_from_env_file_and_logs_json(
    empty_database_url: str, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("LOG_FORMAT=json\n")
    env = {**os.environ, "DATABASE_URL": with_password(empty_database_url)}
    result = subprocess.run(
        [OUTBOX, "migrate"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    records = json_lines(result.stderr)
    (migrated,) = events(records, "migrated")
    assert migrated["logger"] == "outbox.cli"
    assert migrated["level"] == "info"
    assert (migrated["revision"], migrated["schema"]) == ("head", "public")
    # alembic's own lines ("Running upgrade  -> 0001_...") are JSON too, kept whole.
    alembic = [r for r in records if r["logger"].startswith("alembic")]
    assert any(r["message"].startswith("Running upgrade") for r in alembic), records
    assert PASSWORD not in result.stderr


def test_the_text_format_is_unchanged(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    env.pop("LOG_FORMAT", None)
    result = subprocess.run(
        [OUTBOX, "migrate"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO outbox\.cli "
        r"event=migrated revision=head schema=public$",
        result.stderr,
        re.M,
    ), result.stderr


async def test_relay_logs_json_from_start_to_sigterm(
    settings: Settings,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    commands: Callable[[list[str], dict[str, str]], Command],
) -> None:
    await emit_events(asyncpg_conn, 50)
    env = {
        **os.environ,
        "LOG_FORMAT": "json",
        "DATABASE_URL": with_password(settings.database_url.get_secret_value()),
        "REDIS_STREAMS_URL": settings.redis_streams_url.get_secret_value(),
        "STREAM_PREFIX": settings.stream_prefix,
    }
    # -v: the debug lines too (event loop, Redis connection, every batch, asyncio's own).
    relay = commands(["-v", "relay", "--instance-id", "json-relay"], env)

    def published() -> bool:
        return bool(events(json_lines(relay.complete_stderr()), "batch_published"))

    relay.wait_for("a batch_published line", published)
    assert relay.stop() == 0
    records = json_lines(relay.stderr())
    (started,) = events(records, "relay_started")
    assert (started["instance"], started["batch_size"]) == ("json-relay", 500)
    batches = events(records, "batch_published")
    assert sum(batch["published"] for batch in batches) == 50
    assert all(batch["level"] == "debug" and batch["service"] == "identity" for batch in batches)
    (stopped,) = events(records, "relay_stopped")
    assert stopped["instance"] == "json-relay"
    assert isinstance(stopped["published"], int)
    assert PASSWORD not in relay.stderr()


def test_monitor_logs_uvicorns_lines_as_json(
    settings: Settings, commands: Callable[[list[str], dict[str, str]], Command]
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "LOG_FORMAT": "json",
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "STREAM_PREFIX": settings.stream_prefix,
    }
    monitor = commands(["monitor", "--port", str(port)], env)
    monitor.wait_for("listening", lambda: "monitor: http" in monitor.stdout_path.read_text())
    # Something uvicorn itself logs (a warning, above the monitor's log level).
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        while sock.recv(4096):
            pass

    def uvicorn_warned() -> bool:
        return any(
            r["logger"] == "uvicorn.error" and r.get("message") == "Invalid HTTP request received."
            for r in json_lines(monitor.complete_stderr())
        )

    monitor.wait_for("uvicorn's warning", uvicorn_warned)
    assert monitor.stop() == 0
    records = json_lines(monitor.stderr())
    assert {r["level"] for r in records if r["logger"] == "uvicorn.error"} == {"warning"}


def test_monitor_on_a_busy_port_says_so_in_json(settings: Settings) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "LOG_FORMAT": "json",
            "DATABASE_URL": settings.database_url.get_secret_value(),
            "STREAM_PREFIX": settings.stream_prefix,
        }
        result = subprocess.run(
            [OUTBOX, "monitor", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    records = json_lines(result.stderr)
    assert any(
        r["logger"] == "uvicorn.error"
        and r["level"] == "error"
        and "address already in use" in r["message"]
        for r in records
    ), records
