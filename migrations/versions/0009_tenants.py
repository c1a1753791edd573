"""Tenants: the tenant id of each event (docs/tenancy.md).

``outbox_events.tenant_id``: the tenant the event belongs to, NULL for the deployment's own
events. Its CHECK holds the same pattern as ``outbox.validation.TENANT_PATTERN``, so a row
written by hand cannot carry an id that would escape the tenant's Redis keys or ACL pattern.

Online: the column is nullable without a default (a catalogue change only), and the CHECK is
added NOT VALID (no scan under the ACCESS EXCLUSIVE lock) and then validated, which takes only
a SHARE UPDATE EXCLUSIVE lock: emitters keep writing meanwhile
(https://www.postgresql.org/docs/15/sql-altertable.html#SQL-ALTERTABLE-NOTES).

Revision ID: 0009_tenants
Revises: 0008_audit
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from outbox.migrations import target_schema
from outbox.naming import quote

revision: str = "0009_tenants"
down_revision: str | None = "0008_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The pattern of outbox.validation.TENANT_PATTERN, and the reserved id.
CHECK = "tenant_id ~ '^[a-z0-9][a-z0-9_-]{0,62}$' AND tenant_id <> 'events'"


def upgrade() -> None:
    q = quote(target_schema())
    op.execute(f"ALTER TABLE {q}.outbox_events ADD COLUMN tenant_id text")
    op.execute(
        f"ALTER TABLE {q}.outbox_events ADD CONSTRAINT outbox_events_tenant_id_check "
        f"CHECK ({CHECK}) NOT VALID"
    )
    op.execute(f"ALTER TABLE {q}.outbox_events VALIDATE CONSTRAINT outbox_events_tenant_id_check")


def downgrade() -> None:
    op.execute(f"ALTER TABLE {quote(target_schema())}.outbox_events DROP COLUMN tenant_id")
