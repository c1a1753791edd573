"""Nothing any more (kept so the chain of revisions stays unbroken).

Until version 0.2 this revision added ``deleted_version`` to the example read models
``directory_users`` and ``inventory_assets``, which revision 0003 used to create. The example
read models now have their own history (outbox/projections/examples/migrations), whose first
revision creates them in their current shape, or adopts the tables of a database migrated
before, adding the column if this revision never ran there.

Revision ID: 0004_tombstone_versions
Revises: 0003_projections
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0004_tombstone_versions"
down_revision: str | None = "0003_projections"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
