"""The outbox in a database laid out like OpsConductor's.

One PostgreSQL database, a schema per service (``identity``, ``assets``, ``automation``,
``communication``), services that talk to it through raw asyncpg pools with schema-qualified
SQL and a ``search_path`` of their own schema only, and the outbox's tables in a schema of their
own, ``outbox`` (OUTBOX_SCHEMA). The assets service's role has only what ``outbox grant`` gives
it: it can emit its own events in the same transaction as its rows, and it can neither read nor
change any other service's events. The relay, the projections, the monitor and prune run as the
owner, with OUTBOX_SCHEMA=outbox.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

import outbox
from outbox.migrations import runner
from outbox.projections.projection import Projection
from outbox.relay.prune import prune
from outbox.settings import Settings, get_settings
from outbox.streams.codec import StreamMessage
from tests.conftest import _admin, _url_for, sqlalchemy_url
from tests.fixtures_monitor import MonitorFactory
from tests.fixtures_projections import Runner
from tests.fixtures_relay import StartRelay, wait_until

OUTBOX = str(Path(sys.executable).with_name("outbox"))
SCHEMA = "outbox"

PLATFORM = """
CREATE SCHEMA identity;
CREATE SCHEMA assets;
CREATE SCHEMA automation;
CREATE SCHEMA communication;
CREATE TABLE identity.users (id uuid PRIMARY KEY, email text NOT NULL);
CREATE TABLE assets.assets (id uuid PRIMARY KEY, hostname text NOT NULL, ip_address inet);
CREATE TABLE assets.asset_index (id uuid PRIMARY KEY, hostname text NOT NULL, event_id uuid);
"""


@pytest.fixture
def service_role() -> Iterator[str]:
    name = f"assets_svc_{uuid.uuid4().hex[:8]}"
    with _admin() as admin:
        admin.execute(f'CREATE ROLE "{name}" LOGIN')
        admin.execute(f'ALTER ROLE "{name}" SET search_path = assets')
    yield name
    with _admin() as admin:
        admin.execute(f'DROP ROLE IF EXISTS "{name}"')


@pytest.fixture
def database_url(service_role: str) -> Iterator[str]:
    """Overrides conftest's: the platform's schemas, the outbox migrated into "outbox", and
    the assets service's role granted its own schema and, by ``outbox grant``, emitting."""
    name = f"outbox_platform_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _url_for(name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(PLATFORM)
            conn.execute(f'GRANT USAGE ON SCHEMA assets TO "{service_role}"')
            conn.execute(f'GRANT SELECT, INSERT, UPDATE ON assets.assets TO "{service_role}"')
        runner.upgrade(sqlalchemy_url(url, "psycopg"), schema=SCHEMA)
        granted = subprocess.run(
            [OUTBOX, "grant", service_role, "--service", "assets"],
            env={**os.environ, "DATABASE_URL": url, "OUTBOX_SCHEMA": SCHEMA},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert granted.returncode == 0, granted.stderr
        yield url
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Conftest's, on the platform database above, with OUTBOX_SCHEMA=outbox for every
    component and for emit()."""
    monkeypatch.setenv("OUTBOX_SCHEMA", SCHEMA)
    get_settings.cache_clear()
    outbox.configure(schema=SCHEMA)
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
async def service_pool(database_url: str, service_role: str) -> AsyncIterator[asyncpg.Pool]:
    """The assets service's own pool: its role, its search_path (assets only)."""
    url = database_url.replace("postgresql://postgres@", f"postgresql://{service_role}@")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    yield pool
    await pool.close()


async def create_asset(pool: asyncpg.Pool, hostname: str, *, fail: bool = False) -> outbox.Event:
    """What the assets service does: its row and its event in one transaction."""
    asset_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO assets.assets (id, hostname, ip_address) VALUES ($1, $2, '10.0.0.7')",
            asset_id,
            hostname,
        )
        event = await outbox.emit(
            conn,
            service="assets",
            event_type="asset_created",
            data={"asset_id": str(asset_id), "hostname": hostname},
            aggregate_id=asset_id,
        )
        if fail:
            raise RuntimeError("the service's own check failed after emit()")
    return event


async def test_a_service_writes_its_row_and_its_event_in_one_transaction(
    settings: Settings, service_pool: asyncpg.Pool, asyncpg_conn: asyncpg.Connection
) -> None:
    async with service_pool.acquire() as conn:
        # The outbox's schema is not on the service's search_path: every statement names it.
        assert await conn.fetchval("SHOW search_path") == "assets"
    event = await create_asset(service_pool, "db-01")
    with pytest.raises(RuntimeError):
        await create_asset(service_pool, "db-02", fail=True)
    rows = await asyncpg_conn.fetch(
        "SELECT o.event_id, a.hostname FROM outbox.outbox_events o"
        " JOIN assets.assets a ON a.id::text = o.aggregate_id"
    )
    assert [(r["event_id"], r["hostname"]) for r in rows] == [(event.event_id, "db-01")]
    assert await asyncpg_conn.fetchval("SELECT count(*) FROM assets.assets") == 1
    # A dedup key already stored comes back as the stored event: emit() reads its own rows.
    async with service_pool.acquire() as conn, conn.transaction():
        first = await outbox.emit(
            conn, service="assets", event_type="asset_scanned", data={}, dedup_key="scan-1"
        )
    async with service_pool.acquire() as conn, conn.transaction():
        again = await outbox.emit(
            conn, service="assets", event_type="asset_scanned", data={}, dedup_key="scan-1"
        )
    assert again.event_id == first.event_id


async def test_the_service_role_cannot_read_or_change_other_services_events(
    settings: Settings, service_pool: asyncpg.Pool, asyncpg_conn: asyncpg.Connection
) -> None:
    async with asyncpg_conn.transaction():
        other = await outbox.emit(
            asyncpg_conn, service="identity", event_type="user_created", data={"secret": "x"}
        )
    own = await create_asset(service_pool, "db-01")
    async with service_pool.acquire() as conn:
        visible = [r["event_id"] for r in await conn.fetch("SELECT * FROM outbox.outbox_events")]
        assert visible == [own.event_id]
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM outbox.outbox_events WHERE event_id = $1", other.event_id
            )
            == 0
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            async with conn.transaction():
                await outbox.emit(conn, service="identity", event_type="user_deleted", data={})
        for statement in (
            "UPDATE outbox.outbox_events SET payload = '{}'",
            "DELETE FROM outbox.outbox_events",
            "SELECT * FROM outbox.relay_cursors",
            "SELECT * FROM outbox.projection_inbox",
            "SELECT * FROM identity.users",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(statement)
    stored = await asyncpg_conn.fetchval("SELECT count(*) FROM outbox.outbox_events")
    assert stored == 2


async def test_relay_projection_monitor_and_prune_with_the_outbox_in_its_own_schema(
    settings: Settings,
    service_pool: asyncpg.Pool,
    asyncpg_conn: asyncpg.Connection,
    start_relay: StartRelay,
    running: Runner,
    monitor_server: MonitorFactory,
) -> None:
    index = Projection("asset_index", streams=["assets"])

    @index.on("asset_created")
    async def created(event: StreamMessage, db: Any) -> None:
        await db.execute(
            "INSERT INTO assets.asset_index (id, hostname, event_id) VALUES ($1, $2, $3)",
            uuid.UUID(event.data["asset_id"]),
            event.data["hostname"],
            uuid.UUID(event.event_id),
        )

    events = [await create_asset(service_pool, f"host-{i:02d}") for i in range(20)]
    async with monitor_server() as live:
        before = (await live.http.get("/api/outbox")).json()["outbox"]["streams"]
        assert any(row["stream"] == "assets" and row["unpublished"] == 20 for row in before)
        async with start_relay(), running([index], settings):

            async def projected() -> bool:
                count = await asyncpg_conn.fetchval("SELECT count(*) FROM assets.asset_index")
                return bool(count == 20)

            await wait_until(projected, what="every asset in the read model")

            async def caught_up() -> bool:
                rows = (await live.http.get("/api/outbox")).json()["outbox"]["streams"]
                return any(r["stream"] == "assets" and r["unpublished"] == 0 for r in rows)

            await wait_until(caught_up, what="the monitor showing no backlog")
            trace = await live.http.get(
                "/api/events", params={"correlation_id": events[0].correlation_id}
            )
            assert trace.status_code == 200, trace.text
            (traced,) = trace.json()["events"]
            assert traced["event_id"] == str(events[0].event_id)
            assert traced["published"] is True

        async def counted() -> bool:
            projections = (await live.http.get("/api/projections")).json()
            return any(p["name"] == "asset_index" and p["processed"] == 20 for p in projections)

        # The consumers' last heartbeat (written as they stop) carries the final count.
        await wait_until(counted, what="the monitor counting the projection's 20 events")
    applied = await asyncpg_conn.fetch("SELECT event_id FROM assets.asset_index")
    assert {r["event_id"] for r in applied} == {e.event_id for e in events}
    inbox = await asyncpg_conn.fetchval(
        "SELECT count(*) FROM outbox.projection_inbox WHERE projection = 'asset_index'"
    )
    assert inbox == 20
    # Nothing of the outbox outside its schema.
    assert (
        await asyncpg_conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        == 0
    )

    pruned = await prune(settings.libpq_url(), timedelta(0), schema=SCHEMA)
    assert pruned.deleted == 20
    assert await asyncpg_conn.fetchval("SELECT count(*) FROM outbox.outbox_events") == 0


def test_outbox_check_and_the_relay_find_the_schema(database_url: str, service_role: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "OUTBOX_SCHEMA": SCHEMA}
    check = subprocess.run([OUTBOX, "check"], env=env, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert "ok       schema" in check.stdout
    # Without OUTBOX_SCHEMA the commands look in public, find nothing and say to migrate.
    env.pop("OUTBOX_SCHEMA")
    missing = subprocess.run([OUTBOX, "check"], env=env, capture_output=True, text=True, timeout=60)
    assert 'relation "public.relay_cursors" does not exist' in missing.stdout
    # The service's own role is limited by row-level security: a relay run as it would see
    # only some events, so it refuses to start.
    as_service = {
        **env,
        "OUTBOX_SCHEMA": SCHEMA,
        "DATABASE_URL": database_url.replace("postgres@", f"{service_role}@"),
    }
    refused = subprocess.run(
        [OUTBOX, "relay"], env=as_service, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr
    assert "owner" in refused.stderr


async def test_concurrent_transactions_of_the_service_each_land_with_their_row(
    settings: Settings, service_pool: asyncpg.Pool
) -> None:
    """Sixteen concurrent transactions through the service's pool: every event lands in the
    outbox's schema, each beside its row."""
    await asyncio.gather(*(create_asset(service_pool, f"h{i}") for i in range(16)))
    async with service_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM outbox.outbox_events") == 16
        assert await conn.fetchval("SELECT count(*) FROM assets.assets") == 16
