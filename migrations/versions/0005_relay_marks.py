"""Relay cursors: the watermark the relay last saw each of the service's streams take.

``marks`` is ``{stream key: "<txid>:<position>"}``, committed with the cursor. Redis can lose
writes it acknowledged (a failover to a replica that had not received them, a crash with
``appendfsync everysec``, a restart without persistence), and with them the events the cursor
has already passed. The publish script compares a stream's watermark with its mark and refuses
a batch when Redis is behind, so the relay re-reads from what Redis still holds instead of
publishing later events over the gap (docs/decisions/0011-redis-losing-writes.md).

Revision ID: 0005_relay_marks
Revises: 0004_tombstone_versions
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from outbox.migrations import target_schema

revision: str = "0005_relay_marks"
down_revision: str | None = "0004_tombstone_versions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "relay_cursors",
        sa.Column("marks", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        schema=target_schema(),
    )


def downgrade() -> None:
    op.drop_column("relay_cursors", "marks", schema=target_schema())
