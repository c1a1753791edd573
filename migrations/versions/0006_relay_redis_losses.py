"""Relay status: the Redis losses a relay found, and the services it is publishing again.

When Redis loses events it acknowledged, the relay publishes them again (decision 0011). It
logs each loss and puts it in ``last_error``, but the next error overwrites that, and the
stored cursor, which only moves forward, hides the events being published again from the
monitor's backlog. So each relay's status row now says:

- ``redis_losses``: how many times it found a stream's watermark behind its mark (the monitor
  exports it as ``outbox_relay_redis_losses_total``, for an alert);
- ``republishing``: ``{service: "<txid>:<position>"}``, the cursor of each service it is
  publishing again; the monitor counts the backlog from there.

Revision ID: 0006_relay_redis_losses
Revises: 0005_relay_marks
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from outbox.migrations import target_schema

revision: str = "0006_relay_redis_losses"
down_revision: str | None = "0005_relay_marks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema = target_schema()
    op.add_column(
        "relay_instances",
        sa.Column(
            "republishing", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        schema=schema,
    )
    op.add_column(
        "relay_instances",
        sa.Column("redis_losses", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        schema=schema,
    )


def downgrade() -> None:
    schema = target_schema()
    op.drop_column("relay_instances", "redis_losses", schema=schema)
    op.drop_column("relay_instances", "republishing", schema=schema)
