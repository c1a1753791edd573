"""Run the outbox migrations programmatically (``outbox migrate``, tests, the demo)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from migrations import SCRIPT_LOCATION
from outbox.settings import get_settings


def alembic_config(url: str | None = None) -> Config:
    """An alembic Config for our script location, pointed at ``url`` (default DATABASE_URL)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    # alembic's ini interpolation treats % specially; URLs may contain %-escapes.
    target = url or get_settings().sqlalchemy_url(driver="psycopg")
    config.set_main_option("sqlalchemy.url", target.replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head", *, sql: bool = False) -> None:
    command.upgrade(alembic_config(url), revision, sql=sql)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)
