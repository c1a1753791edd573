"""`make run` end to end: the real processes (relay, projections, monitor, demo) on a fresh
database; events flow into the read models; Ctrl-C stops everything cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import _url_for
from tests.fixtures_monitor import free_port

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_make_run_runs_the_pipeline_and_stops_on_ctrl_c() -> None:
    name = f"outbox_run_{uuid.uuid4().hex[:8]}"  # does not exist yet: migrate creates it
    port = free_port()
    prefix = f"r{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": _url_for(name),
        "STREAM_PREFIX": prefix,
        "MONITOR_PORT": str(port),
        "DEMO_RATE": "200",
        "PROCESSOR_WORKERS": "2",
        "REFRESH_INTERVAL": "0.5",
    }
    process = subprocess.Popen(
        ["bash", "scripts/run.sh"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while not any("dashboard: http://" in line for line in output):
            line = process.stdout.readline()
            assert line or process.poll() is None, "".join(output)
            output.append(line)
            assert time.monotonic() < deadline, "".join(output)
        pids = [int(p) for p in re.findall(r"started \w+ \(pid (\d+)\)", "".join(output))]
        assert len(pids) == 4, "".join(output)

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            deadline = time.monotonic() + 90
            while True:
                snapshot = http.get("/api/snapshot").json()
                published = sum(r["published"] for r in snapshot["outbox"]["streams"])
                applied = sum(p["processed"] for p in snapshot["projections"])
                if published > 100 and applied > 50 and snapshot["relays"]:
                    break
                assert time.monotonic() < deadline, snapshot
                time.sleep(0.5)  # polling a live system with a deadline
        with psycopg.connect(_url_for(name)) as conn:
            users = conn.execute("SELECT count(*) FROM directory_users").fetchone()
            assert users is not None
            assert users[0] > 0

        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        rest, _ = process.communicate(timeout=60)
        output.append(rest)
        assert process.returncode == 0, "".join(output)
        assert "stopped" in rest
        assert not [pid for pid in pids if _alive(pid)]
        assert "Traceback" not in "".join(output)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        with psycopg.connect(_url_for("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_make_run_says_what_is_missing() -> None:
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/opsconductor",
        "REDIS_STREAMS_URL": "redis://127.0.0.1:1/0",
    }
    result = subprocess.run(
        ["bash", "scripts/run.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "MISSING  PostgreSQL" in result.stderr
    assert "MISSING  Redis" in result.stderr
    assert "make up" in result.stderr
    assert "docker compose up" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
