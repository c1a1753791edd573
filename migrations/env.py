"""Alembic environment: sync psycopg engine, one transaction, serialised by an advisory lock."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from outbox.migrations import VERSION_TABLE
from outbox.schema import metadata
from outbox.settings import get_settings

# Two replicas running `outbox migrate` at once take turns instead of racing.
_MIGRATION_LOCK_KEY = 0x6F7574626F78  # "outbox"


def _url() -> str:
    url = context.config.get_main_option("sqlalchemy.url")
    return url or get_settings().sqlalchemy_url(driver="psycopg")


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = sa.create_engine(_url(), poolclass=sa.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table=VERSION_TABLE,
        )
        with context.begin_transaction():
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
            )
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
