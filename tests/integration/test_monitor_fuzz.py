"""schemathesis over the monitor's OpenAPI schema, against a real server: no request gets a 500."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

import outbox
from tests.fixtures_monitor import MonitorFactory


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("with_token", [False, True])
async def test_no_request_gets_a_server_error(
    monitor_server: MonitorFactory,
    asyncpg_conn: asyncpg.Connection,
    tmp_path: Path,
    with_token: bool,
) -> None:
    async with asyncpg_conn.transaction():
        await outbox.emit(asyncpg_conn, service="identity", event_type="user_created", data={})
    overrides = {"monitor_admin_token": SecretStr("fuzz-token")} if with_token else {}
    async with monitor_server(**overrides) as live:
        cli = Path(sys.executable).with_name("schemathesis")
        args = [
            str(cli),
            "run",
            f"{live.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--workers",
            "1",
            "--generation-allow-x00",
            "true",
            "--request-timeout",
            "20",
            "--report-dir",
            str(tmp_path),
        ]
        if with_token:
            args += ["--header", "Authorization: Bearer fuzz-token"]
        process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path
        )
        output, _ = await process.communicate()
        text = output.decode(errors="replace")
        assert process.returncode == 0, text[-6000:]
        # It really exercised the API: many generated cases, none of them failing.
        cases = re.search(r"(\d+) generated, (\d+) passed", text)
        assert cases is not None, text[-3000:]
        assert int(cases.group(1)) >= 100, text[-3000:]
        assert cases.group(1) == cases.group(2), text[-3000:]
