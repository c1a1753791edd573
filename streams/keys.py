"""Every Redis key pattern of the project, named once.

Stream names keep the original document's form, ``<prefix>:<service>:events``; priorities above
NORMAL get their own stream (``…:events:high``, ``…:events:critical``). LOW travels on the NORMAL
stream (its priority is in the entry). A key that must live in the same Redis Cluster slot as a
stream (its publish watermark) wraps the whole stream name in a hash tag: ``{<stream>}:watermark``
hashes exactly like ``<stream>`` (https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags).
"""

from __future__ import annotations

from dataclasses import dataclass

from outbox.envelope import MessagePriority

#: Consumer group of a projection: one per projection name and stream.
DEAD_LETTER_SERVICE = "dead_letter"
METRICS_SERVICE = "metrics"


def _suffix(priority: MessagePriority) -> str:
    return f":{priority.label}" if priority > MessagePriority.NORMAL else ""


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (``STREAM_PREFIX``, default ``opsconductor``)."""

    prefix: str

    def stream(self, service: str, priority: MessagePriority = MessagePriority.NORMAL) -> str:
        """``<prefix>:<service>:events`` (+ ``:high`` / ``:critical``)."""
        return f"{self.prefix}:{service}:events{_suffix(priority)}"

    def streams_of(self, service: str) -> list[str]:
        """The service's streams, highest priority first."""
        return [
            self.stream(service, MessagePriority.CRITICAL),
            self.stream(service, MessagePriority.HIGH),
            self.stream(service, MessagePriority.NORMAL),
        ]

    def watermark(self, stream: str) -> str:
        """Highest outbox position published to ``stream``; same cluster slot as the stream."""
        return f"{{{stream}}}:watermark"

    @property
    def dead_letter(self) -> str:
        return self.stream(DEAD_LETTER_SERVICE)

    @property
    def metrics(self) -> str:
        return self.stream(METRICS_SERVICE)

    def parse_stream(self, stream: str) -> tuple[str, MessagePriority] | None:
        """``(service, priority)`` of one of our event streams, or None for any other key."""
        head = f"{self.prefix}:"
        if not stream.startswith(head):
            return None
        parts = stream[len(head) :].split(":")
        if len(parts) == 2 and parts[1] == "events":
            return parts[0], MessagePriority.NORMAL
        if len(parts) == 3 and parts[1] == "events":
            label = parts[2].upper()
            if label in ("HIGH", "CRITICAL"):
                return parts[0], MessagePriority[label]
        return None
