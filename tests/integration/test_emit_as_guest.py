"""emit() is a guest in someone else's service: it loads only what the service's own database
library needs, reads only its own settings and never a ``.env``, and can be configured in code.

Each case runs in a fresh interpreter, as a service would, so ``sys.modules`` shows exactly what
``import outbox`` and one emit() loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

#: What an emit-only service must never load because of us.
DAEMON_MODULES = (
    "asyncpg",
    "redis",
    "hiredis",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "alembic",
    "prometheus_client",
)

#: Settings of the daemons that a service may well set to its own, unrelated values.
HOSTILE_ENV = {
    "MAX_RETRIES": "5000",
    "SHUTDOWN_GRACE": "30s",
    "DATABASE_URL": "sqlite:///service.db",
    "PROCESSOR_WORKERS": "many",
    "MONITOR_PORT": "http",
}


def _run(script: str, cwd: Path, env: dict[str, str]) -> dict[str, object]:
    """Run ``script`` (which prints one JSON line last) in a new interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture
def service_dir(tmp_path: Path) -> Path:
    """A service's working directory whose ``.env`` holds values none of our settings accept."""
    (tmp_path / ".env").write_text(
        "\n".join([*(f"{k}={v}" for k, v in HOSTILE_ENV.items()), "OUTBOX_MAX_PAYLOAD_BYTES=tiny"])
        + "\n"
    )
    return tmp_path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_", "STREAM_"))}
    return {**env, **HOSTILE_ENV, **extra}


SYNC_PSYCOPG_SERVICE = """
    import json, sys
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    import outbox

    engine = sa.create_engine(sys.argv[1] if len(sys.argv) > 1 else {url!r})
    with Session(engine) as session, session.begin():
        event = outbox.emit(session, service="identity", event_type="user_created",
                            data={{"user_id": "u1"}})
    print(json.dumps({{
        "event_id": str(event.event_id),
        "loaded": sorted(m for m in {daemon!r} if m in sys.modules),
    }}))
"""


def test_a_sync_psycopg_service_loads_none_of_the_daemons_dependencies(
    database_url: str, service_dir: Path
) -> None:
    url = "postgresql+psycopg://" + database_url.split("://", 1)[1]
    out = _run(SYNC_PSYCOPG_SERVICE.format(url=url, daemon=DAEMON_MODULES), service_dir, _env())
    assert out["loaded"] == []
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT stream, event_type FROM outbox_events").fetchone()
    assert row == ("identity", "user_created")


ASYNCPG_SERVICE = """
    import asyncio, json, sys
    import asyncpg

    import outbox

    async def main():
        pool = await asyncpg.create_pool({url!r}, min_size=1, max_size=2)
        async with pool.acquire() as conn, conn.transaction():
            event = await outbox.emit(conn, service="assets", event_type="asset_created",
                                      data={{"asset_id": "a1"}})
        await pool.close()
        return event

    event = asyncio.run(main())
    print(json.dumps({{"position": event.position,
                       "sqlalchemy": "sqlalchemy" in sys.modules}}))
"""


def test_a_raw_asyncpg_service_does_not_load_sqlalchemy(
    database_url: str, service_dir: Path
) -> None:
    out = _run(ASYNCPG_SERVICE.format(url=database_url), service_dir, _env())
    assert out == {"position": 1, "sqlalchemy": False}


CONFIGURED_IN_CODE = """
    import json, sys
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    import outbox
    from outbox.errors import ConfigurationError, PayloadTooLargeError

    results = {{}}
    try:
        outbox.configure(schema="Not A Schema")
    except ConfigurationError as error:
        results["bad_schema"] = str(error)
    settings = outbox.configure(max_payload_bytes=64)
    results["schema"] = settings.outbox_schema
    engine = sa.create_engine({url!r})
    with Session(engine) as session, session.begin():
        try:
            outbox.emit(session, service="identity", event_type="big", data={{"x": "y" * 100}})
        except PayloadTooLargeError as error:
            results["too_large"] = error.limit_bytes
        outbox.emit(session, service="identity", event_type="small", data={{"x": 1}})
    print(json.dumps(results))
"""


def test_configure_sets_what_emit_uses_and_refuses_a_bad_value(
    database_url: str, service_dir: Path
) -> None:
    url = "postgresql+psycopg://" + database_url.split("://", 1)[1]
    out = _run(CONFIGURED_IN_CODE.format(url=url), service_dir, _env())
    assert out["too_large"] == 64
    assert out["schema"] == "public"
    assert "OUTBOX_SCHEMA" in str(out["bad_schema"]) or "outbox_schema" in str(out["bad_schema"])
    with psycopg.connect(database_url) as conn:
        types = [r[0] for r in conn.execute("SELECT event_type FROM outbox_events").fetchall()]
    assert types == ["small"]


BAD_OWN_SETTING = """
    import json
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    import outbox
    from outbox.errors import ConfigurationError

    engine = sa.create_engine({url!r})
    with Session(engine) as session, session.begin():
        try:
            outbox.emit(session, service="identity", event_type="e", data={{}})
        except ConfigurationError as error:
            print(json.dumps({{"error": str(error)}}))
"""


def test_a_bad_value_of_emits_own_variable_is_a_clear_configuration_error(
    database_url: str, service_dir: Path
) -> None:
    url = "postgresql+psycopg://" + database_url.split("://", 1)[1]
    out = _run(BAD_OWN_SETTING.format(url=url), service_dir, _env(OUTBOX_MAX_PAYLOAD_BYTES="1MB"))
    assert "OUTBOX_MAX_PAYLOAD_BYTES='1MB'" in str(out["error"])


STREAMS_CLIENT = """
    import json
    from outbox.streams import RedisStreamsClient

    client = RedisStreamsClient()
    print(json.dumps({"max_retries": client.max_retries, "prefix": client.keys.prefix}))
"""


def test_the_streams_client_reads_only_its_own_settings(service_dir: Path) -> None:
    """The client reads MAX_RETRIES (the original document's variable), so the service's
    5000 is taken; SHUTDOWN_GRACE, DATABASE_URL and PROCESSOR_WORKERS are not its business."""
    out = _run(STREAMS_CLIENT, service_dir, _env(MAX_RETRIES="7"))
    assert out == {"max_retries": 7, "prefix": "opsconductor"}
