"""Table definitions of the projection runtime.

They live on the outbox's ``metadata`` so the migration test compares one schema; migration
``0003_projections`` creates exactly these, in OUTBOX_SCHEMA.

- ``projection_inbox``: one row per (projection, event_id) applied, written in the same
  transaction as the read-model change (DESIGN.md invariant 5). Pruned after INBOX_RETENTION.
- ``projection_consumers``: one heartbeat row per consumer, for the monitor.
- ``projection_checkpoints``: one row per projection: live or rebuilding, and the last rebuild.
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
