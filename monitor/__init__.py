"""The monitor: one live view of outbox lag, relays, streams, consumer groups and dead letters.

FastAPI app (REST, WebSocket, dashboard, Prometheus ``/metrics``); ``outbox monitor`` serves it.
"""

from __future__ import annotations
