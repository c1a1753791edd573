"""Test fixtures: a real PostgreSQL database per test (cloned from a migrated template) and a
fresh Redis key prefix per test. No mocks stand in for PostgreSQL or Redis.

Fixtures
- ``database_url``: libpq URL of this test's own database, migrated to head.
- ``asyncpg_conn``: an asyncpg connection to it.
- ``async_engine`` / ``sync_engine``: SQLAlchemy engines (asyncpg / psycopg) on it.
- ``settings``: Settings pointed at this database and a unique stream prefix.
- ``redis_client``: redis.asyncio client; every key the test made under its prefix is deleted.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import psycopg
import pytest
import redis
import redis.asyncio as aioredis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox.encryption import encrypted_fields
from outbox.keyring import reset_key_provider
from outbox.migrations import runner
from outbox.settings import Settings, get_settings, reset_emit_settings, use_env_file
from outbox.upcasting import upcasters
from outbox.validation import schemas

# Fixtures of each area live in their own plugin module, so areas do not edit one file.
pytest_plugins = [
    "tests.fixtures_relay",
    "tests.fixtures_projections",
    "tests.fixtures_monitor",
    "tests.fixtures_browser",
    "tests.fixtures_promtool",
    "tests.fixtures_metrics",
    "tests.fixtures_cluster",
    "tests.fixtures_tracing",
    "tests.fixtures_postgres",
]

_BASE = Settings()


def _url_for(name: str) -> str:
    base, _, _ = _BASE.libpq_url().rpartition("/")
    return f"{base}/{name}"


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(_url_for("postgres"), autocommit=True)


@pytest.fixture(autouse=True)
def _restore_schema_registry() -> Iterator[None]:
    """Event schemas, upcasters, encrypted fields and the key provider are process-wide; no
    test may leave one behind for the next."""
    saved = {key: dict(models) for key, models in schemas._models.items()}
    saved_steps = {key: dict(steps) for key, steps in upcasters._steps.items()}
    yield
    schemas._models.clear()
    schemas._models.update(saved)
    upcasters._steps.clear()
    upcasters._steps.update(saved_steps)
    encrypted_fields.clear()
    reset_key_provider()


@pytest.fixture(autouse=True)
def _restore_process_settings() -> Iterator[None]:
    """An in-process ``outbox`` command reads ``.env`` and calls ``outbox.configure()``; neither
    may carry over to the next test."""
    yield
    use_env_file(None)
    reset_emit_settings()


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A database migrated to head once per run; each test clones it (CREATE DATABASE TEMPLATE)."""
    name = f"outbox_template_{os.getpid()}"
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = "postgresql+psycopg://" + _url_for(name).split("://", 1)[1]
    runner.upgrade(url)
    runner.upgrade_examples(url)  # the example projections' read models, which tests use
    yield name
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(template_database: str) -> Iterator[str]:
    name = f"outbox_test_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield _url_for(name)
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    """A database with no schema at all (for migration tests)."""
    name = f"outbox_empty_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield _url_for(name)
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlalchemy_url(url: str, driver: str) -> str:
    return f"postgresql+{driver}://" + url.split("://", 1)[1]


@pytest.fixture
def stream_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(
    database_url: str, stream_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Settings for this test; also what get_settings() returns while the test runs."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("STREAM_PREFIX", stream_prefix)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def sync_redis(stream_prefix: str) -> Iterator[redis.Redis]:
    """A synchronous client (for CLI tests run in-process); the test's keys are deleted after."""
    client = redis.Redis.from_url(Settings().redis_streams_url.get_secret_value())
    yield client
    keys = list(client.scan_iter(match=f"{stream_prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
async def asyncpg_conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def async_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(sqlalchemy_url(database_url, "asyncpg"), pool_size=40)
    yield engine
    await engine.dispose()


@pytest.fixture
def sync_engine(database_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(sqlalchemy_url(database_url, "psycopg"))
    yield engine
    engine.dispose()


@pytest.fixture
async def redis_client(stream_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(_BASE.redis_streams_url.get_secret_value())
    yield client
    keys = [key async for key in client.scan_iter(match=f"{stream_prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()
