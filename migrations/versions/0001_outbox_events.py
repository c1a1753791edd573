"""The outbox log: outbox_events.

Revision ID: 0001_outbox_events
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from outbox.migrations import target_schema
from outbox.naming import DEFAULT_SCHEMA, quote
from outbox.schema import XID8

revision: str = "0001_outbox_events"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("outbox",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema = target_schema()
    if schema != DEFAULT_SCHEMA:
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
    op.create_table(
        "outbox_events",
        sa.Column("position", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("txid", XID8(), nullable=False, server_default=sa.text("pg_current_xact_id()")),
        sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("stream", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("aggregate_id", sa.Text, nullable=True),
        sa.Column("priority", sa.SmallInteger, nullable=False, server_default=sa.text("1")),
        sa.Column("payload", postgresql.JSONB, nullable=False),
        sa.Column("headers", postgresql.JSONB, nullable=True),
        sa.Column("correlation_id", sa.Text, nullable=False),
        sa.Column("causation_id", sa.Text, nullable=True),
        sa.Column("user_id", sa.Text, nullable=True),
        sa.Column("traceparent", sa.Text, nullable=True),
        sa.Column("dedup_key", sa.Text, nullable=True),
        sa.Column(
            "occurred_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("clock_timestamp()"),
        ),
        sa.PrimaryKeyConstraint("position", name="outbox_events_pkey"),
        sa.UniqueConstraint("event_id", name="outbox_events_event_id_key"),
        sa.CheckConstraint("priority BETWEEN 0 AND 3", name="outbox_events_priority_check"),
        schema=schema,
    )
    op.create_index(
        "outbox_events_stream_cursor_idx",
        "outbox_events",
        ["stream", "txid", "position"],
        schema=schema,
    )
    op.create_index(
        "outbox_events_correlation_idx", "outbox_events", ["correlation_id"], schema=schema
    )
    op.create_index(
        "outbox_events_stream_dedup_key_idx",
        "outbox_events",
        ["stream", "dedup_key"],
        unique=True,
        postgresql_where=sa.text("dedup_key IS NOT NULL"),
        schema=schema,
    )


def downgrade() -> None:
    op.drop_table("outbox_events", schema=target_schema())
