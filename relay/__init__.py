"""The relay daemon: moves committed outbox events to Redis Streams, in order, exactly once.

See :mod:`relay.daemon` for the loop, :mod:`relay.cursor` for the gap-safe cursor and
docs/relay.md for operations.
"""

from __future__ import annotations
