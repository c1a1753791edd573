"""Table definitions of the projection runtime and of the example read models.

They live on the outbox's ``metadata`` so the migration test compares one schema; migration
``0003_projections`` creates exactly these.

- ``projection_inbox``: one row per (projection, event_id) applied, written in the same
  transaction as the read-model change (DESIGN.md invariant 5). Pruned after INBOX_RETENTION.
- ``projection_consumers``: one heartbeat row per consumer, for the monitor.
- ``projection_checkpoints``: one row per projection: live or rebuilding, and the last rebuild.
- ``directory_users``, ``inventory_assets``, ``automation_job_stats``: the example read models
  (projections/examples/).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from outbox.schema import metadata

_NOW = sa.text("now()")

projection_inbox = sa.Table(
    "projection_inbox",
    metadata,
    sa.Column("projection", sa.Text, nullable=False),
    sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
    sa.PrimaryKeyConstraint("projection", "event_id", name="projection_inbox_pkey"),
    # Rows arrive in applied_at order, so a BRIN index finds the prunable range for almost no
    # write cost (https://www.postgresql.org/docs/15/brin-intro.html).
    sa.Index("projection_inbox_applied_at_idx", "applied_at", postgresql_using="brin"),
)

projection_consumers = sa.Table(
    "projection_consumers",
    metadata,
    sa.Column("projection", sa.Text, nullable=False),
    sa.Column("consumer", sa.Text, nullable=False),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
    sa.Column("processed", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("skipped", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("failures", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("dead_lettered", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("projection", "consumer", name="projection_consumers_pkey"),
)

projection_checkpoints = sa.Table(
    "projection_checkpoints",
    metadata,
    sa.Column("projection", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default=sa.text("'live'")),
    sa.Column("rebuild_started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("rebuilt_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("rebuilt_through_position", sa.BigInteger, nullable=True),
    sa.Column("events_replayed", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
    sa.PrimaryKeyConstraint("projection", name="projection_checkpoints_pkey"),
    sa.CheckConstraint(
        "status IN ('live', 'rebuilding')", name="projection_checkpoints_status_check"
    ),
)

# --- example read models (projections/examples/) ---

directory_users = sa.Table(
    "directory_users",
    metadata,
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("email", sa.Text, nullable=True),
    sa.Column("name", sa.Text, nullable=True),
    sa.Column("role", sa.Text, nullable=True),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.text("false")),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
    # Version of the last delete (0: never deleted); ``deleted`` is deleted_version > version.
    sa.Column("deleted_version", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.PrimaryKeyConstraint("user_id", name="directory_users_pkey"),
)

inventory_assets = sa.Table(
    "inventory_assets",
    metadata,
    sa.Column("asset_id", sa.Text, nullable=False),
    sa.Column("hostname", sa.Text, nullable=True),
    sa.Column("ip_address", sa.Text, nullable=True),
    sa.Column("asset_type", sa.Text, nullable=True),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.text("false")),
    sa.Column("version", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("scan_count", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("last_scanned_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
    sa.Column("deleted_version", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.PrimaryKeyConstraint("asset_id", name="inventory_assets_pkey"),
)

automation_job_stats = sa.Table(
    "automation_job_stats",
    metadata,
    sa.Column("job_name", sa.Text, nullable=False),
    sa.Column("started", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("completed", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("failed", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("total_duration_ms", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("job_name", name="automation_job_stats_pkey"),
)
