"""Run the outbox migrations programmatically (``outbox migrate``, tests, the demo)."""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import sql as pgsql

from outbox.errors import ConfigurationError
from outbox.migrations import SCHEMA_ATTRIBUTE, SCRIPT_LOCATION, VERSION_TABLE, target_schema
from outbox.naming import quote
from outbox.settings import get_settings

#: The example read models' own history (outbox/projections/examples/migrations).
EXAMPLES_LOCATION = str(
    Path(__file__).resolve().parent.parent / "projections" / "examples" / "migrations"
)

log = logging.getLogger("outbox.migrate")


def alembic_config(
    url: str | None = None, *, schema: str | None = None, location: str = SCRIPT_LOCATION
) -> Config:
    """An alembic Config for our script location, pointed at ``url`` (default DATABASE_URL);
    ``schema`` overrides OUTBOX_SCHEMA for this run."""
    config = Config()
    config.set_main_option("script_location", location)
    # alembic's ini interpolation treats % specially; URLs may contain %-escapes.
    target = url or get_settings().sqlalchemy_url(driver="psycopg")
    config.set_main_option("sqlalchemy.url", target.replace("%", "%%"))
    if schema is not None:
        config.attributes[SCHEMA_ATTRIBUTE] = schema
    return config


def _libpq(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


def ensure_database(libpq_url: str) -> bool:
    """Create the database named in ``libpq_url`` if it does not exist; True if it was created."""
    try:
        psycopg.connect(libpq_url, connect_timeout=10).close()
        return False
    except psycopg.OperationalError as error:
        if "does not exist" not in str(error):
            raise
    base, _, name = libpq_url.rpartition("/")
    name = name.split("?", 1)[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True, connect_timeout=10) as admin:
        try:
            admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False  # created concurrently by another migrate
    log.info("event=database_created database=%s", name)
    return True


_UNTRACKED = """
SELECT to_regclass(%(events)s) IS NOT NULL AS tables,
       to_regclass(%(versions)s) IS NOT NULL AS versions
"""


def _refuse_untracked_tables(url: str, schema: str) -> None:
    """Refuse, with what to do, when the outbox tables exist but our version table does not:
    another alembic history made them (a service's own, with our versions included), so
    running ours would fail on the first CREATE TABLE."""
    names = {
        "events": f"{quote(schema)}.outbox_events",
        "versions": f"{quote(schema)}.{VERSION_TABLE}",
    }
    with psycopg.connect(_libpq(url), connect_timeout=10) as conn:
        row = conn.execute(_UNTRACKED, names).fetchone()
    if row is not None and row[0] and not row[1]:
        raise ConfigurationError(
            f'the outbox tables already exist in schema "{schema}", but {VERSION_TABLE} does '
            "not record them: another alembic history created them, most likely your "
            "service's own with the outbox versions included (then run its `alembic upgrade "
            "heads` instead). To let `outbox migrate` manage them from now on, find the "
            "revision they are at (`alembic current` in that project) and run "
            "`outbox migrate --stamp REVISION` once (docs/adopting.md)"
        )


def upgrade(
    url: str | None = None,
    revision: str = "head",
    *,
    sql: bool = False,
    schema: str | None = None,
) -> None:
    """Bring the outbox tables (in ``schema``, default OUTBOX_SCHEMA) to ``revision``."""
    config = alembic_config(url, schema=schema)
    if not sql:
        target = url or get_settings().sqlalchemy_url(driver="psycopg")
        _refuse_untracked_tables(target, schema or target_schema())
    try:
        command.upgrade(config, revision, sql=sql)
    except Exception as error:
        # A table created by hand or by another history between the check and the upgrade.
        original = getattr(error, "orig", None)
        if isinstance(original, psycopg.errors.DuplicateTable):
            raise ConfigurationError(
                f"{original} while migrating (created outside `outbox migrate`?); see "
                "docs/adopting.md, 'Migrations'"
            ) from None
        raise


def stamp(revision: str, url: str | None = None, *, schema: str | None = None) -> None:
    """Record ``revision`` in our version table without running anything."""
    command.stamp(alembic_config(url, schema=schema), revision)


def downgrade(url: str | None = None, revision: str = "base", *, schema: str | None = None) -> None:
    command.downgrade(alembic_config(url, schema=schema), revision)


def upgrade_examples(url: str | None = None) -> None:
    """Create (or adopt) the example projections' read models: the demo's, never a service's."""
    command.upgrade(alembic_config(url, location=EXAMPLES_LOCATION), "head")


def downgrade_examples(url: str | None = None) -> None:
    command.downgrade(alembic_config(url, location=EXAMPLES_LOCATION), "base")
