"""The example read models: directory_users, inventory_assets, automation_job_stats.

Created in their current shape, or adopted: a database migrated before version 0.2 got them
from the outbox's own revisions 0003 and 0004 (which no longer create them); there they are
kept with their rows, and ``deleted_version`` is added where 0004 never ran.

Revision ID: e0001_example_read_models
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from outbox.projections.examples.schema import metadata

revision: str = "e0001_example_read_models"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("outbox_examples",)
depends_on: str | Sequence[str] | None = None

_TOMBSTONED = ("directory_users", "inventory_assets")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            table.create(op.get_bind())
            continue
        columns = {column["name"] for column in inspector.get_columns(table.name)}
        if table.name in _TOMBSTONED and "deleted_version" not in columns:
            op.add_column(
                table.name,
                sa.Column(
                    "deleted_version", sa.BigInteger, nullable=False, server_default=sa.text("0")
                ),
            )
            # A row already tombstoned: its version was the delete's (what 0004 did).
            op.execute(f"UPDATE {table.name} SET deleted_version = version WHERE deleted")


def downgrade() -> None:
    for table in reversed(metadata.sorted_tables):
        op.drop_table(table.name)
