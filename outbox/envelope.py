"""The event envelope: what every stored and published event carries (DESIGN.md invariant 8)."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any

from outbox.errors import UnknownPriorityError


class MessagePriority(IntEnum):
    """Delivery priority. HIGH and CRITICAL travel on their own streams and are read first."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3

    @property
    def label(self) -> str:
        """The lower-case name used on the wire and in stream names (``high``)."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: object) -> MessagePriority:
        """Accept a member, its name in any case (``"high"``) or its integer value."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        names = ", ".join(member.name for member in cls)
        raise UnknownPriorityError(f"unknown priority {value!r}; expected one of {names}")


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7).

    Event ids are the outbox's unique key; time-ordered ids keep that index's inserts on its
    right-hand edge instead of spreading random writes over the whole B-tree.
    """
    unix_ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (unix_ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a
    value |= 0b10 << 62  # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b
    return uuid.UUID(int=value)


@dataclass(frozen=True, slots=True)
class Event:
    """One domain event as stored in ``outbox_events`` and carried on a stream entry.

    ``position`` is the outbox's append order, as PostgreSQL assigned it (``emit()`` reads it
    back with the same INSERT … RETURNING); ``None`` only on events not yet stored, e.g. those
    published directly with ``RedisStreamsClient.publish_message``.
    """

    event_id: uuid.UUID
    service: str
    event_type: str
    data: dict[str, Any]
    priority: MessagePriority
    occurred_at: datetime
    correlation_id: str
    source: str
    causation_id: str | None = None
    user_id: str | None = None
    aggregate_id: str | None = None
    dedup_key: str | None = None
    traceparent: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    position: int | None = None
    #: The tenant the event belongs to (docs/tenancy.md); None: the deployment's own.
    tenant_id: str | None = None
