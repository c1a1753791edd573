"""Shared plumbing of the benchmarks: a scratch database, JSON output, machine facts."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from migrations import runner
from outbox.settings import get_settings

RESULTS = Path(__file__).resolve().parent / "results"


def _admin_url() -> str:
    return get_settings().libpq_url()


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@asynccontextmanager
async def scratch_database(prefix: str) -> AsyncIterator[str]:
    """A freshly migrated database, dropped afterwards; yields its libpq URL."""
    name = f"bench_{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(_with_database(_admin_url(), "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = _with_database(_admin_url(), name)
        await asyncio.to_thread(runner.upgrade, "postgresql+psycopg://" + url.split("://", 1)[1])
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def machine() -> dict[str, Any]:
    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip()
        except OSError:
            return "unknown"

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "postgres": version(["psql", "--version"]),
        "redis": version(["redis-server", "--version"]),
    }


def write_result(name: str, result: dict[str, Any]) -> None:
    """Print the result as JSON and keep a copy in bench/results/<name>.json."""
    result = {
        "benchmark": name,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **result,
    }
    text = json.dumps(result, indent=2, default=str)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(text + "\n")
    print(text)
