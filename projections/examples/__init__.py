"""Example projections over the OpsConductor event catalog (used by the demo and the tests).

- ``user_directory`` (identity): user_created / user_updated / user_deleted
- ``asset_inventory`` (assets): asset_created / asset_updated / asset_deleted / asset_scanned
- ``automation_stats`` (automation): automation_started / automation_completed /
  automation_failed

Importing this module registers all three: ``PROJECTION_MODULES=outbox.projections.examples``
(``make run`` and docker-compose.yml set it).
"""

from __future__ import annotations

from outbox.projections.examples.assets import asset_inventory
from outbox.projections.examples.automation import automation_stats
from outbox.projections.examples.users import user_directory
from outbox.projections.projection import register

register(user_directory)
register(asset_inventory)
register(automation_stats)

__all__ = ["asset_inventory", "automation_stats", "user_directory"]
