"""The status a relay reports on every heartbeat (row ``relay_instances``, read by the monitor)."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime


def default_instance_id() -> str:
    """``<host>-<pid>-<random>``: unique even when a container restarts with the same pid."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class RelayStatus:
    """One relay process: what it holds, how far it got, what went wrong last."""

    instance_id: str
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    streams: list[str] = field(default_factory=list)
    cursors: dict[str, str] = field(default_factory=dict)
    stream_errors: dict[str, str] = field(default_factory=dict)
    #: Services publishing again what Redis lost, and the cursor each is at (decision 0011).
    republishing: dict[str, str] = field(default_factory=dict)
    published_count: int = 0
    #: Times a stream's watermark was found behind its mark: Redis lost events it had taken.
    redis_losses: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None
    stopped_at: datetime | None = None

    def record_error(self, message: str) -> None:
        self.last_error = message
        self.last_error_at = datetime.now(UTC)
