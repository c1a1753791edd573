"""How an alembic run of ours goes: a sync psycopg engine, one transaction, an advisory lock.

Used by ``env.py`` (the outbox's history) and by the example read models' own history
(``outbox/projections/examples/migrations``), each with its own version table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from outbox.naming import DEFAULT_SCHEMA, quote
from outbox.settings import get_settings

# Two replicas running `outbox migrate` at once take turns instead of racing.
_MIGRATION_LOCK_KEY = 0x6F7574626F78  # "outbox"


def _url() -> str:
    url = context.config.get_main_option("sqlalchemy.url")
    return url or get_settings().sqlalchemy_url(driver="psycopg")


def run(version_table: str, metadata: sa.MetaData, schema: str | None) -> None:
    """Run the migrations of the current alembic environment. ``schema``: where the version
    table lives, created first when missing; None for the connection's default schema."""
    if context.is_offline_mode():
        context.configure(
            url=_url(),
            target_metadata=metadata,
            literal_binds=True,
            version_table=version_table,
            version_table_schema=schema,
            transaction_per_migration=False,
        )
        with context.begin_transaction():
            if schema not in (None, DEFAULT_SCHEMA):
                context.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
            context.run_migrations()
        return
    engine = sa.create_engine(_url(), poolclass=sa.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table=version_table,
            version_table_schema=schema,
        )
        with context.begin_transaction():
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
            )
            if schema not in (None, DEFAULT_SCHEMA):
                # Before alembic creates its version table there.
                connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}"))
            context.run_migrations()
    engine.dispose()
