"""Autovacuum and fillfactor settings for the outbox's hot tables (docs/operations.md,
"Redis and PostgreSQL settings").

PostgreSQL's defaults vacuum a table once a fifth of it is dead. That suits neither shape here:

- **Small tables updated all the time.** ``relay_cursors`` (a row per service, updated after
  every batch), ``relay_instances`` (a row per relay, every heartbeat), ``relay_deferred`` (one
  row, every 5 ms while a transaction is deferred), ``projection_consumers`` and
  ``projection_checkpoints`` (every batch a consumer applies), ``projection_partitions`` and
  ``projection_members`` (every lease renewal). They are vacuumed after a fixed number of dead
  rows (scale factor 0), and leave room in each page (``fillfactor``) so that an update stays
  on the row's page (a HOT update: no index entry, the dead version pruned in place).
- **Large append-mostly tables.** ``outbox_events`` (every emit, deleted by ``outbox prune``)
  and ``projection_inbox`` (every applied event, deleted by its retention). They are vacuumed
  and analysed after 2% of rows are new or dead rather than 20%. The visibility map is then
  kept current, and a prune's dead rows are reclaimed before the next day's inserts extend the
  table.

Online: ``ALTER TABLE ... SET (...)`` takes a SHARE UPDATE EXCLUSIVE lock, which reads and
writes do not wait for (https://www.postgresql.org/docs/15/sql-altertable.html). A new
fillfactor applies to pages written from then on.

Revision ID: 0011_autovacuum
Revises: 0010_relay_deferred
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from outbox.migrations import target_schema
from outbox.naming import quote

revision: str = "0011_autovacuum"
down_revision: str | None = "0010_relay_deferred"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HOT_ROWS = {
    "autovacuum_vacuum_scale_factor": "0",
    "autovacuum_vacuum_threshold": "1000",
    "autovacuum_analyze_scale_factor": "0",
    "autovacuum_analyze_threshold": "1000",
}
_APPEND_MOSTLY = {
    "autovacuum_vacuum_scale_factor": "0.02",
    "autovacuum_vacuum_insert_scale_factor": "0.02",
    "autovacuum_analyze_scale_factor": "0.02",
}

#: Table → storage parameters (also read by the migration test and docs/operations.md).
SETTINGS: dict[str, dict[str, str]] = {
    "relay_cursors": {"fillfactor": "50", **_HOT_ROWS},
    "relay_instances": {"fillfactor": "50", **_HOT_ROWS},
    "relay_deferred": {"fillfactor": "10", **_HOT_ROWS},
    "projection_consumers": {"fillfactor": "50", **_HOT_ROWS},
    "projection_checkpoints": {"fillfactor": "50", **_HOT_ROWS},
    "projection_partitions": {"fillfactor": "70", **_HOT_ROWS},
    "projection_members": {"fillfactor": "70", **_HOT_ROWS},
    "outbox_events": _APPEND_MOSTLY,
    "projection_inbox": _APPEND_MOSTLY,
}


def upgrade() -> None:
    q = quote(target_schema())
    for table, settings in SETTINGS.items():
        values = ", ".join(f"{name} = {value}" for name, value in settings.items())
        op.execute(f"ALTER TABLE {q}.{table} SET ({values})")


def downgrade() -> None:
    q = quote(target_schema())
    for table, settings in SETTINGS.items():
        op.execute(f"ALTER TABLE {q}.{table} RESET ({', '.join(settings)})")
