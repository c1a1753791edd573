"""The outbox's source id: one random id per outbox, which the relay records beside each Redis
stream's watermark (``{stream}:watermark:source``, streams/keys.py PUBLISH_LUA). Two databases
whose relays write the same stream have different ids: the second is refused loudly, instead
of its events being skipped by the first one's watermark, whose txids are another counter's.

A restored dump or an upgraded cluster keeps the row, so it stays the same source (the relay's
txid checks catch a restore, docs/operations.md "A database restored or replaced").

Online: a new table and one row.

Revision ID: 0012_outbox_source
Revises: 0011_autovacuum
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from outbox.migrations import target_schema
from outbox.naming import quote

revision: str = "0012_outbox_source"
down_revision: str | None = "0011_autovacuum"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema = target_schema()
    op.create_table(
        "outbox_source",
        sa.Column("id", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column(
            "source_id",
            postgresql.UUID(as_uuid=True),
            nullable=False,
            server_default=sa.text("gen_random_uuid()"),
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.PrimaryKeyConstraint("id", name="outbox_source_pkey"),
        sa.CheckConstraint("id", name="outbox_source_one_row"),
        schema=schema,
    )
    op.execute(f"INSERT INTO {quote(schema)}.outbox_source (id) VALUES (true)")


def downgrade() -> None:
    op.drop_table("outbox_source", schema=target_schema())
