"""The migrations create exactly the tables the code defines, in OUTBOX_SCHEMA, and round-trip;
the example read models have a history of their own."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import outbox.projections.schema  # noqa: F401  (its tables join outbox.schema.metadata)
from outbox import migrations
from outbox.migrations import runner
from outbox.preflight import schema_problem
from outbox.projections.examples import schema as examples_schema
from outbox.relay.cursor import RELAY_STATEMENTS
from outbox.schema import metadata
from tests.conftest import _url_for as url_for
from tests.conftest import sqlalchemy_url

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_TABLES = set(examples_schema.metadata.tables)


def _diff(
    url: str,
    *,
    schema: str = "public",
    model: sa.MetaData = metadata,
    other_tables: frozenset[str] = frozenset(),
) -> list[object]:
    """Differences between ``schema`` of the database and ``model``; ``other_tables`` (and the
    version tables) belong to someone else."""
    ignored = {
        migrations.VERSION_TABLE,
        "outbox_examples_alembic_version",
        "alembic_version",
        *other_tables,
    }
    engine = sa.create_engine(sqlalchemy_url(url, "psycopg"))
    try:
        with engine.connect() as conn:
            # Reflection compares the connection's default schema with the model's tables.
            conn.execute(sa.text(f'SET search_path TO "{schema}"'))
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            return [
                d
                for d in compare_metadata(context, model)
                if not (d[0] == "remove_table" and d[1].name in ignored)  # type: ignore[index,union-attr]
            ]
    finally:
        engine.dispose()


def _tables(url: str, schema: str = "public") -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
        ).fetchall()
    return {r[0] for r in rows}


def test_upgrade_from_empty_matches_the_table_definitions(empty_database_url: str) -> None:
    runner.upgrade(sqlalchemy_url(empty_database_url, "psycopg"))
    assert _diff(empty_database_url) == []
    # Exactly the outbox's tables: no read model of the examples in a service's database.
    assert _tables(empty_database_url) == {*metadata.tables, migrations.VERSION_TABLE}
    assert not EXAMPLE_TABLES & _tables(empty_database_url)


def _storage_settings(url: str, schema: str) -> dict[str, dict[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname, c.reloptions FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind = 'r' AND c.reloptions IS NOT NULL",
            (schema,),
        ).fetchall()
    return {name: dict(o.split("=", 1) for o in options) for name, options in rows}


def test_the_hot_tables_get_their_autovacuum_settings_and_lose_them_on_downgrade(
    empty_database_url: str,
) -> None:
    """Migration 0011 (docs/operations.md): in the configured schema, and only there."""
    spec = importlib.util.spec_from_file_location(
        "autovacuum_revision", REPO / "migrations" / "versions" / "0011_autovacuum.py"
    )
    assert spec is not None
    assert spec.loader is not None
    revision = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(revision)
    url = sqlalchemy_url(empty_database_url, "psycopg")
    runner.upgrade(url, schema="outbox")
    assert _storage_settings(empty_database_url, "outbox") == revision.SETTINGS
    assert set(revision.SETTINGS) <= set(metadata.tables)
    assert revision.SETTINGS["relay_cursors"]["autovacuum_vacuum_scale_factor"] == "0"
    runner.downgrade(url, "0010_relay_deferred", schema="outbox")
    assert _storage_settings(empty_database_url, "outbox") == {}


def test_downgrade_and_upgrade_round_trip(empty_database_url: str) -> None:
    url = sqlalchemy_url(empty_database_url, "psycopg")
    runner.upgrade(url)
    runner.downgrade(url, "base")
    assert _tables(empty_database_url) == {migrations.VERSION_TABLE}
    runner.upgrade(url)
    assert _diff(empty_database_url) == []


def test_every_table_goes_into_the_configured_schema(empty_database_url: str) -> None:
    """OUTBOX_SCHEMA=outbox: the schema is created, every table and the version table are in
    it, nothing in public; the round trip works there too."""
    url = sqlalchemy_url(empty_database_url, "psycopg")
    runner.upgrade(url, schema="outbox")
    assert _tables(empty_database_url, "outbox") == {*metadata.tables, migrations.VERSION_TABLE}
    assert _tables(empty_database_url, "public") == set()
    assert _diff(empty_database_url, schema="outbox") == []
    runner.downgrade(url, "base", schema="outbox")
    assert _tables(empty_database_url, "outbox") == {migrations.VERSION_TABLE}
    runner.upgrade(url, schema="outbox")
    assert _diff(empty_database_url, schema="outbox") == []


def test_the_example_read_models_have_their_own_history(empty_database_url: str) -> None:
    url = sqlalchemy_url(empty_database_url, "psycopg")
    runner.upgrade_examples(url)
    assert _tables(empty_database_url) == EXAMPLE_TABLES | {"outbox_examples_alembic_version"}
    assert _diff(empty_database_url, model=examples_schema.metadata) == []
    runner.upgrade(url)
    runner.downgrade_examples(url)
    assert not EXAMPLE_TABLES & _tables(empty_database_url)
    assert _diff(empty_database_url) == []  # the outbox's own tables are untouched


def test_the_examples_history_adopts_read_models_of_a_database_migrated_before(
    empty_database_url: str,
) -> None:
    """Before 0.2 the outbox's revision 0003 created the example tables (0004 then added
    deleted_version): such a database keeps its rows, and gets the column where 0004 never
    ran, with the tombstones' versions (what 0004 did)."""
    url = sqlalchemy_url(empty_database_url, "psycopg")
    runner.upgrade(url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        # The read models as the old 0003 left them (before 0004).
        conn.execute(
            "CREATE TABLE directory_users (user_id text PRIMARY KEY, email text, name text,"
            " role text, deleted boolean NOT NULL DEFAULT false, version bigint NOT NULL,"
            " updated_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO directory_users (user_id, email, deleted, version) VALUES"
            " ('u1', 'a@example.com', false, 3), ('u2', NULL, true, 7)"
        )
    runner.upgrade_examples(url)
    with psycopg.connect(empty_database_url) as conn:
        rows = conn.execute(
            "SELECT user_id, deleted, version, deleted_version FROM directory_users ORDER BY 1"
        ).fetchall()
    assert rows == [("u1", False, 3, 0), ("u2", True, 7, 7)]
    assert _tables(empty_database_url) >= EXAMPLE_TABLES


def _run(args: list[str], url: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_outbox_migrate_command(empty_database_url: str) -> None:
    outbox_cli = Path(sys.executable).with_name("outbox")
    result = _run([str(outbox_cli), "migrate"], empty_database_url)
    assert result.returncode == 0, result.stderr
    assert _diff(empty_database_url) == []
    again = _run([str(outbox_cli), "migrate"], empty_database_url)
    assert again.returncode == 0, again.stderr


def test_alembic_upgrade_head_from_the_repository(empty_database_url: str) -> None:
    alembic_cli = Path(sys.executable).with_name("alembic")
    result = _run([str(alembic_cli), "upgrade", "head"], empty_database_url)
    assert result.returncode == 0, result.stderr
    assert _diff(empty_database_url) == []


def test_unreachable_database_is_one_clear_line() -> None:
    outbox_cli = Path(sys.executable).with_name("outbox")
    result = _run([str(outbox_cli), "migrate"], "postgresql://postgres@127.0.0.1:1/nowhere")
    assert result.returncode == 2
    assert "cannot reach a service" in result.stderr
    assert "Traceback" not in result.stderr


def test_outbox_migrate_creates_a_missing_database() -> None:
    name = f"outbox_created_{os.getpid()}"
    url = url_for(name)
    outbox_cli = Path(sys.executable).with_name("outbox")
    try:
        result = _run([str(outbox_cli), "migrate"], url)
        assert result.returncode == 0, result.stderr
        assert "database_created" in result.stderr
        assert _diff(url) == []
        refused = _run([str(outbox_cli), "migrate", "--no-create-database"], url + "_absent")
        assert refused.returncode != 0
    finally:
        with psycopg.connect(url_for("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize(
    ("command", "revision", "says"),
    [
        (["monitor", "--port", "1"], "0005_relay_marks", "the monitor is newer"),
        (["project"], "0002_relay", "the projection consumer is newer"),
    ],
)
def test_a_monitor_or_consumer_newer_than_the_schema_says_to_migrate(
    empty_database_url: str, command: list[str], revision: str, says: str
) -> None:
    """They check their statements at start as the relay does: one line, exit 2, before they
    bind a port or read a stream (the monitor used to answer every request with a 500)."""
    runner.upgrade(sqlalchemy_url(empty_database_url, "psycopg"), revision)
    outbox_cli = Path(sys.executable).with_name("outbox")
    result = _run([str(outbox_cli), *command], empty_database_url)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr
    assert "run `outbox migrate`" in result.stderr
    assert "Traceback" not in result.stderr
    check = _run([str(outbox_cli), "check"], empty_database_url)
    assert "OUTDATED schema" in check.stdout


@pytest.mark.parametrize(
    ("revision", "missing"),
    [
        ("0004_tombstone_versions", 'column "marks"'),  # the cursors' (0005)
        # The fetch (0010's deferral state, then 0009's tenant_id) is checked before the
        # status row (0006's republishing).
        ("0005_relay_marks", 'relation "public.relay_deferred"'),
        ("0008_audit", 'relation "public.relay_deferred"'),  # the fetch's (0010)
        ("0009_tenants", 'relation "public.relay_deferred"'),  # the fetch's (0010)
    ],
)
def test_a_relay_newer_than_the_schema_says_to_migrate(
    empty_database_url: str, revision: str, missing: str
) -> None:
    """Started on a database migrations behind, the relay stops at once and says why, instead
    of failing at every poll or heartbeat; migrated, the same check passes."""
    runner.upgrade(sqlalchemy_url(empty_database_url, "psycopg"), revision)
    outbox_cli = Path(sys.executable).with_name("outbox")
    result = _run([str(outbox_cli), "relay"], empty_database_url)
    assert result.returncode == 2
    assert f"{missing} does not exist" in result.stderr
    assert "run `outbox migrate`" in result.stderr
    assert "Traceback" not in result.stderr
    # `outbox check` says so too, without failing: `make run` checks before it migrates.
    check = _run([str(outbox_cli), "check"], empty_database_url)
    assert check.returncode == 0, check.stderr
    assert f"OUTDATED schema: {missing} does not exist" in check.stdout
    runner.upgrade(sqlalchemy_url(empty_database_url, "psycopg"))
    assert asyncio.run(schema_problem(empty_database_url, {"relay": RELAY_STATEMENTS})) is None
    check = _run([str(outbox_cli), "check"], empty_database_url)
    assert check.returncode == 0, check.stderr
    assert "ok       schema" in check.stdout
