"""How a service's events are partitioned: its epochs and their partition counts (decision 0014).

Epoch 0 is the service's one unpartitioned stream. ``outbox partitions set SERVICE N`` asks for
a new epoch; the relay holding the service starts it between two batches. A service with no
row in ``stream_partitions`` is at epoch 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class Partition:
    """One partition of a service's events: epoch 0 is its unpartitioned stream; epochs from 1
    are the partitionings ``outbox partitions set`` made (decision 0014)."""

    epoch: int
    index: int

    def name(self, service: str) -> str:
        return f"{service}.{self.epoch}.{self.index}"


#: The most partitions a service may have (a CHECK constraint says so too).
MAX_PARTITIONS = 1024


@dataclass(frozen=True)
class Partitioning:
    """A service's current epoch and partition count, and every epoch before it."""

    epoch: int = 0
    partitions: int = 1
    requested: int | None = None
    #: epoch -> partition count, for every epoch from 1 (epoch 0 has one stream).
    counts: Mapping[int, int] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | None) -> Partitioning:
        if row is None:
            return cls()
        history = row["history"]
        if isinstance(history, str):
            history = json.loads(history)
        return cls(
            epoch=int(row["epoch"]),
            partitions=int(row["partitions"]),
            requested=row["requested"],
            counts={int(h["epoch"]): int(h["partitions"]) for h in history},
        )

    @property
    def routed(self) -> int:
        """How many partitions new events are spread over: 1 at epoch 0."""
        return self.partitions if self.epoch else 1

    def partitions_of(self, epoch: int) -> list[Partition]:
        """The partitions of one epoch (epoch 0: the unpartitioned stream)."""
        if epoch == 0:
            return [Partition(0, 0)]
        return [Partition(epoch, index) for index in range(self.counts.get(epoch, 0))]

    def every_partition(self) -> list[Partition]:
        """Every partition of every epoch so far, oldest first."""
        return [p for epoch in range(self.epoch + 1) for p in self.partitions_of(epoch)]

    def current(self) -> list[Partition]:
        return self.partitions_of(self.epoch)
