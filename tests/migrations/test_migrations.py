"""The migrations create exactly the tables the code defines, and round-trip."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
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
from outbox.relay.cursor import RELAY_STATEMENTS
from outbox.schema import metadata
from tests.conftest import _url_for as url_for
from tests.conftest import sqlalchemy_url

REPO = Path(__file__).resolve().parents[2]


def _diff(url: str, *, other_tables: frozenset[str] = frozenset()) -> list[object]:
    """Differences between the database and our model; ``other_tables`` belong to someone else."""
    ignored = {migrations.VERSION_TABLE, *other_tables}
    engine = sa.create_engine(sqlalchemy_url(url, "psycopg"))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            return [
                d
                for d in compare_metadata(context, metadata)
                if not (d[0] == "remove_table" and d[1].name in ignored)  # type: ignore[index,union-attr]
            ]
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def test_upgrade_from_empty_matches_the_table_definitions(empty_database_url: str) -> None:
    runner.upgrade(sqlalchemy_url(empty_database_url, "psycopg"))
    assert _diff(empty_database_url) == []
    assert set(metadata.tables) <= _tables(empty_database_url)


def test_downgrade_and_upgrade_round_trip(empty_database_url: str) -> None:
    url = sqlalchemy_url(empty_database_url, "psycopg")
    runner.upgrade(url)
    runner.downgrade(url, "base")
    assert _tables(empty_database_url) == {migrations.VERSION_TABLE}
    runner.upgrade(url)
    assert _diff(empty_database_url) == []


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


def test_a_service_with_its_own_alembic_setup_includes_ours(
    empty_database_url: str, tmp_path: Path
) -> None:
    """The documented recipe (docs/operations.md): add our versions to version_locations."""
    service = tmp_path / "identity_service"
    (service / "migrations" / "versions").mkdir(parents=True)
    (service / "alembic.ini").write_text(
        textwrap.dedent(
            """
            [alembic]
            script_location = migrations
            version_locations = %(here)s/migrations/versions outbox.migrations:versions
            """
        )
    )
    (service / "migrations" / "env.py").write_text(
        textwrap.dedent(
            """
            import os
            import sqlalchemy as sa
            from alembic import context

            import outbox.schema

            # The service's own models, plus ours, so autogenerate sees both.
            service_metadata = sa.MetaData()
            sa.Table("users", service_metadata, sa.Column("id", sa.Integer, primary_key=True))
            target_metadata = [service_metadata, outbox.schema.metadata]

            url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://")
            engine = sa.create_engine(url)
            with engine.connect() as connection:
                context.configure(connection=connection, target_metadata=target_metadata)
                with context.begin_transaction():
                    context.run_migrations()
            """
        )
    )
    (service / "migrations" / "script.py.mako").write_text(
        (REPO / "migrations" / "script.py.mako").read_text()
    )
    (service / "migrations" / "versions" / "0001_users.py").write_text(
        textwrap.dedent(
            """
            import sqlalchemy as sa
            from alembic import op

            revision = "svc_0001_users"
            down_revision = None
            branch_labels = ("identity",)
            depends_on = None

            def upgrade():
                op.create_table("users", sa.Column("id", sa.Integer, primary_key=True))

            def downgrade():
                op.drop_table("users")
            """
        )
    )
    alembic_cli = Path(sys.executable).with_name("alembic")
    result = _run([str(alembic_cli), "upgrade", "heads"], empty_database_url, cwd=service)
    assert result.returncode == 0, result.stderr
    assert {"users", "outbox_events", "alembic_version"} <= _tables(empty_database_url)
    assert _diff(empty_database_url, other_tables=frozenset({"users"})) == []
    heads = _run([str(alembic_cli), "heads"], empty_database_url, cwd=service)
    assert "(outbox)" in heads.stdout
    assert "(identity)" in heads.stdout


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
        ("0004_tombstone_versions", "marks"),  # the cursors' (0005)
        ("0005_relay_marks", "republishing"),  # the status row's (0006)
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
    assert f'column "{missing}"' in result.stderr
    assert "does not exist" in result.stderr
    assert "run `outbox migrate`" in result.stderr
    assert "Traceback" not in result.stderr
    # `outbox check` says so too, without failing: `make run` checks before it migrates.
    check = _run([str(outbox_cli), "check"], empty_database_url)
    assert check.returncode == 0, check.stderr
    assert f'OUTDATED schema: column "{missing}"' in check.stdout
    runner.upgrade(sqlalchemy_url(empty_database_url, "psycopg"))
    assert asyncio.run(schema_problem(empty_database_url, {"relay": RELAY_STATEMENTS})) is None
    check = _run([str(outbox_cli), "check"], empty_database_url)
    assert check.returncode == 0, check.stderr
    assert "ok       schema" in check.stdout
