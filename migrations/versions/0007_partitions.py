"""Partitioned streams: each service's partition count and epoch, each projection's partitions.

``stream_partitions``: one row per service that is (or was) partitioned. Its events go to
``partitions`` streams by a stable hash of their aggregate id; ``epoch`` counts the changes of
that number, and ``since_txid``/``since_position`` is the relay cursor after which the current
epoch applies. ``requested`` is a new count the relay applies at its next batch boundary
(``outbox partitions set``); ``history`` lists every epoch from 1 with its count. A service
without a row has epoch 0 only: its one unpartitioned stream (today's).

``projection_partitions``: one row per (projection, service, epoch, partition): the consumer
that owns it, its lease, the fencing token that the owner's batch transaction checks (a stale
owner's batch is refused), the stream entry each of the partition's priority streams has been
applied up to, and whether an old epoch's partition has been drained (the barrier before the
new epoch's partitions are consumed). Decision 0014.

``projection_members``: the processes consuming a projection's partitioned service, each with
its heartbeat: the live ones share the partitions out.

Revision ID: 0007_partitions
Revises: 0006_relay_redis_losses
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from outbox.migrations import target_schema
from outbox.schema import XID8

revision: str = "0007_partitions"
down_revision: str | None = "0006_relay_redis_losses"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")


def upgrade() -> None:
    schema = target_schema()
    op.create_table(
        "stream_partitions",
        sa.Column("stream", sa.Text, nullable=False),
        sa.Column("partitions", sa.Integer, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("since_txid", XID8(), nullable=True),
        sa.Column("since_position", sa.BigInteger, nullable=True),
        sa.Column("requested", sa.Integer, nullable=True),
        sa.Column(
            "history", postgresql.JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.PrimaryKeyConstraint("stream", name="stream_partitions_pkey"),
        sa.CheckConstraint(
            "partitions BETWEEN 1 AND 1024 AND (requested IS NULL OR requested BETWEEN 1 AND 1024)",
            name="stream_partitions_count_check",
        ),
        schema=schema,
    )
    op.create_table(
        "projection_partitions",
        sa.Column("projection", sa.Text, nullable=False),
        sa.Column("stream", sa.Text, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("owner", sa.Text, nullable=True),
        sa.Column("fence", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "checkpoints", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column("drained", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.PrimaryKeyConstraint(
            "projection", "stream", "epoch", "partition", name="projection_partitions_pkey"
        ),
        schema=schema,
    )
    op.create_table(
        "projection_members",
        sa.Column("projection", sa.Text, nullable=False),
        sa.Column("stream", sa.Text, nullable=False),
        sa.Column("member", sa.Text, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.PrimaryKeyConstraint("projection", "stream", "member", name="projection_members_pkey"),
        schema=schema,
    )


def downgrade() -> None:
    schema = target_schema()
    op.drop_table("projection_members", schema=schema)
    op.drop_table("projection_partitions", schema=schema)
    op.drop_table("stream_partitions", schema=schema)
