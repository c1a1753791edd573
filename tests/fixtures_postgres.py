"""A throwaway PostgreSQL cluster of the test's own (``initdb`` + ``pg_ctl``), for what the shared
server cannot offer: settings that need a restart (``max_prepared_transactions``) and a
transaction horizon of its own.

It listens on 127.0.0.1 on a free port, trusts local connections, and is stopped (``pg_ctl stop
-m immediate``) and deleted at the end. initdb refuses to run as root, so as root the cluster
belongs to the ``postgres`` OS user, as the machine's own does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from outbox.migrations import runner
from tests.conftest import sqlalchemy_url
from tests.fixtures_relay import free_port


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for version in ("17", "16", "15", "14", "13"):
        candidate = Path(f"/usr/lib/postgresql/{version}/bin/{name}")
        if candidate.exists():
            return str(candidate)
    pytest.fail(f"{name} not found: install PostgreSQL's server binaries")


def _as_owner(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@dataclass
class OwnPostgres:
    port: int
    directory: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, *, migrated: bool = True) -> str:
        """A new database (migrated to head unless told otherwise); its URL."""
        subprocess.run(
            [
                "psql",
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-c",
                f'CREATE DATABASE "{name}"',
            ],
            check=True,
        )
        url = self.url(name)
        if migrated:
            runner.upgrade(sqlalchemy_url(url, "psycopg"))
        return url


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """A second PostgreSQL server, with two-phase commit enabled."""
    directory = Path(tempfile.mkdtemp(prefix="outbox-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    data = directory / "data"
    server = OwnPostgres(free_port(), directory)
    subprocess.run(
        _as_owner(
            [_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        ),
        check=True,
        capture_output=True,
    )
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={server.port} -c max_prepared_transactions=10 "
        f"-c unix_socket_directories={directory} -c fsync=off -c synchronous_commit=off"
    )
    log = str(directory / "log")
    start = [_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", log, "-w", "start"]
    subprocess.run(_as_owner(start), check=True, capture_output=True)
    try:
        yield server
    finally:
        subprocess.run(
            _as_owner([_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(directory, ignore_errors=True)
