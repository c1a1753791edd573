"""Relay state: cursors, leases and status rows (filled in by the relay work).

Revision ID: 0002_relay
Revises: 0001_outbox_events
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0002_relay"
down_revision: str | None = "0001_outbox_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
