"""Projection state: inbox, checkpoints, consumer heartbeats (filled in by the projections work).

Revision ID: 0003_projections
Revises: 0002_relay
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0003_projections"
down_revision: str | None = "0002_relay"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
