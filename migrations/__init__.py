"""Alembic environment and versions of the outbox schema (the only place the schema changes).

Run with ``outbox migrate`` or ``alembic upgrade head``. Our versions carry the branch label
``outbox`` and record themselves in ``outbox_alembic_version``, so a service with its own alembic
history can run them side by side (see docs/operations.md, "Including the outbox migrations").
"""

from __future__ import annotations

from pathlib import Path

SCRIPT_LOCATION = str(Path(__file__).resolve().parent)
VERSIONS_LOCATION = str(Path(__file__).resolve().parent / "versions")
VERSION_TABLE = "outbox_alembic_version"
BRANCH_LABEL = "outbox"
