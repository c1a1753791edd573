"""Projection state: inbox, checkpoints and consumer heartbeats.

Until version 0.2 this revision also created the example projections' read models
(``directory_users``, ``inventory_assets``, ``automation_job_stats``) in every database. They
now have their own history (``outbox migrate --examples``, outbox/projections/examples/
migrations); databases migrated before keep the tables, which that history adopts.

Revision ID: 0003_projections
Revises: 0002_relay
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from outbox.migrations import target_schema

revision: str = "0003_projections"
down_revision: str | None = "0002_relay"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")
_ZERO = sa.text("0")


def upgrade() -> None:
    schema = target_schema()
    op.create_table(
        "projection_inbox",
        sa.Column("projection", sa.Text, nullable=False),
        sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.PrimaryKeyConstraint("projection", "event_id", name="projection_inbox_pkey"),
        schema=schema,
    )
    op.create_index(
        "projection_inbox_applied_at_idx",
        "projection_inbox",
        ["applied_at"],
        postgresql_using="brin",
        schema=schema,
    )
    op.create_table(
        "projection_consumers",
        sa.Column("projection", sa.Text, nullable=False),
        sa.Column("consumer", sa.Text, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("processed", sa.BigInteger, nullable=False, server_default=_ZERO),
        sa.Column("skipped", sa.BigInteger, nullable=False, server_default=_ZERO),
        sa.Column("failures", sa.BigInteger, nullable=False, server_default=_ZERO),
        sa.Column("dead_lettered", sa.BigInteger, nullable=False, server_default=_ZERO),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("projection", "consumer", name="projection_consumers_pkey"),
        schema=schema,
    )
    op.create_table(
        "projection_checkpoints",
        sa.Column("projection", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default=sa.text("'live'")),
        sa.Column("rebuild_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rebuilt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rebuilt_through_position", sa.BigInteger, nullable=True),
        sa.Column("events_replayed", sa.BigInteger, nullable=False, server_default=_ZERO),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.PrimaryKeyConstraint("projection", name="projection_checkpoints_pkey"),
        sa.CheckConstraint(
            "status IN ('live', 'rebuilding')", name="projection_checkpoints_status_check"
        ),
        schema=schema,
    )


def downgrade() -> None:
    schema = target_schema()
    for table in ("projection_checkpoints", "projection_consumers", "projection_inbox"):
        op.drop_table(table, schema=schema)
