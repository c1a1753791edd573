"""Projections: apply stream events to read models exactly once in effect.

Declare a projection with :class:`Projection` and handlers per event type, register it, and run
it with ``outbox project`` (see docs/projections.md).
"""

from __future__ import annotations

from outbox.projections.projection import Projection, load, register, select, unregister

__all__ = ["Projection", "load", "register", "select", "unregister"]
