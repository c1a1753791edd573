"""Relay state: the per-service cursor and the per-instance status row.

Leases are PostgreSQL advisory locks (docs/decisions/0003-relay-leases.md), so they need no table.

Revision ID: 0002_relay
Revises: 0001_outbox_events
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from outbox.migrations import target_schema
from outbox.schema import XID8

revision: str = "0002_relay"
down_revision: str | None = "0001_outbox_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema = target_schema()
    op.create_table(
        "relay_cursors",
        sa.Column("stream", sa.Text, nullable=False),
        sa.Column("txid", XID8(), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.PrimaryKeyConstraint("stream", name="relay_cursors_pkey"),
        schema=schema,
    )
    op.create_table(
        "relay_instances",
        sa.Column("instance_id", sa.Text, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column(
            "heartbeat_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "streams",
            postgresql.ARRAY(sa.Text),
            nullable=False,
            server_default=sa.text("'{}'::text[]"),
        ),
        sa.Column(
            "cursors", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column(
            "stream_errors",
            postgresql.JSONB,
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
        ),
        sa.Column("published_count", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("instance_id", name="relay_instances_pkey"),
        schema=schema,
    )


def downgrade() -> None:
    schema = target_schema()
    op.drop_table("relay_instances", schema=schema)
    op.drop_table("relay_cursors", schema=schema)
