"""Redis Streams: key naming, the entry codec, idempotent publish, consume/ack, dead letters.

Also the client API of the original OpsConductor document (``RedisStreamsClient``,
``publish_event``, ``create_streams_client``, ``StreamMessage``, ``MessagePriority``).
"""

from __future__ import annotations
