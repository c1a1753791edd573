"""Projection state: inbox, checkpoints, consumer heartbeats, and the example read models.

Revision ID: 0003_projections
Revises: 0002_relay
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_projections"
down_revision: str | None = "0002_relay"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")
_ZERO = sa.text("0")


def upgrade() -> None:
    op.create_table(
        "projection_inbox",
        sa.Column("projection", sa.Text, nullable=False),
        sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.PrimaryKeyConstraint("projection", "event_id", name="projection_inbox_pkey"),
    )
    op.create_index(
        "projection_inbox_applied_at_idx",
        "projection_inbox",
        ["applied_at"],
        postgresql_using="brin",
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
    )
    op.create_table(
        "directory_users",
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("email", sa.Text, nullable=True),
        sa.Column("name", sa.Text, nullable=True),
        sa.Column("role", sa.Text, nullable=True),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.PrimaryKeyConstraint("user_id", name="directory_users_pkey"),
    )
    op.create_table(
        "inventory_assets",
        sa.Column("asset_id", sa.Text, nullable=False),
        sa.Column("hostname", sa.Text, nullable=True),
        sa.Column("ip_address", sa.Text, nullable=True),
        sa.Column("asset_type", sa.Text, nullable=True),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("version", sa.BigInteger, nullable=False, server_default=_ZERO),
        sa.Column("scan_count", sa.BigInteger, nullable=False, server_default=_ZERO),
        sa.Column("last_scanned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.PrimaryKeyConstraint("asset_id", name="inventory_assets_pkey"),
    )
    op.create_table(
        "automation_job_stats",
        sa.Column("job_name", sa.Text, nullable=False),
        sa.Column("started", sa.BigInteger, nullable=False, server_default=_ZERO),
        sa.Column("completed", sa.BigInteger, nullable=False, server_default=_ZERO),
        sa.Column("failed", sa.BigInteger, nullable=False, server_default=_ZERO),
        sa.Column("total_duration_ms", sa.BigInteger, nullable=False, server_default=_ZERO),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("job_name", name="automation_job_stats_pkey"),
    )


def downgrade() -> None:
    for table in (
        "automation_job_stats",
        "inventory_assets",
        "directory_users",
        "projection_checkpoints",
        "projection_consumers",
        "projection_inbox",
    ):
        op.drop_table(table)
