"""Alembic environment of the outbox's own history (``outbox migrate``, ``alembic upgrade head``
from the repository): version table ``outbox_alembic_version`` in OUTBOX_SCHEMA."""

from __future__ import annotations

from outbox.migrations import VERSION_TABLE, target_schema
from outbox.migrations.environment import run
from outbox.schema import metadata

run(VERSION_TABLE, metadata, target_schema())
