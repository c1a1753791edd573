"""Run the outbox migrations programmatically (``outbox migrate``, tests, the demo)."""

from __future__ import annotations

import logging

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import sql as pgsql

from outbox.migrations import SCRIPT_LOCATION
from outbox.settings import get_settings


def alembic_config(url: str | None = None) -> Config:
    """An alembic Config for our script location, pointed at ``url`` (default DATABASE_URL)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    # alembic's ini interpolation treats % specially; URLs may contain %-escapes.
    target = url or get_settings().sqlalchemy_url(driver="psycopg")
    config.set_main_option("sqlalchemy.url", target.replace("%", "%%"))
    return config


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
    logging.getLogger("outbox.migrate").info("event=database_created database=%s", name)
    return True


def upgrade(url: str | None = None, revision: str = "head", *, sql: bool = False) -> None:
    command.upgrade(alembic_config(url), revision, sql=sql)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)
