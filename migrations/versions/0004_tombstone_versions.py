"""Example read models: a tombstone's version apart from the data's version.

``directory_users`` and ``inventory_assets`` kept one ``version`` for both upserts and deletes,
so with several consumers an older upsert arriving after a newer delete was dropped whole, and
the row kept whatever data it had before: the result depended on the order of delivery. With
``deleted_version`` beside ``version`` each is a last-writer-wins register of its own, and
``deleted`` is ``deleted_version > version`` whatever order the events come in.

Revision ID: 0004_tombstone_versions
Revises: 0003_projections
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_tombstone_versions"
down_revision: str | None = "0003_projections"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("directory_users", "inventory_assets")


def upgrade() -> None:
    for table in _TABLES:
        op.add_column(
            table,
            sa.Column(
                "deleted_version", sa.BigInteger, nullable=False, server_default=sa.text("0")
            ),
        )
        # A row already tombstoned: its version was the delete's.
        op.execute(f"UPDATE {table} SET deleted_version = version WHERE deleted")


def downgrade() -> None:
    for table in _TABLES:
        op.drop_column(table, "deleted_version")
