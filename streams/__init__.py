"""Redis Streams: key naming, the entry codec, idempotent publish, consume/ack, dead letters.

Also the client API of the original OpsConductor document (``RedisStreamsClient``,
``publish_event``, ``create_streams_client``, ``StreamMessage``, ``MessagePriority``).
"""

from __future__ import annotations

from outbox.envelope import MessagePriority
from outbox.streams.client import RedisStreamsClient, create_streams_client, publish_event
from outbox.streams.codec import MalformedEntryError, StreamMessage
from outbox.streams.errors import (
    GroupMissingError,
    RedisAuthError,
    RedisOutOfMemoryError,
    RedisUnavailableError,
    StreamNotFoundError,
    StreamsError,
    WrongTypeError,
)
from outbox.streams.keys import Keys

__all__ = [
    "GroupMissingError",
    "Keys",
    "MalformedEntryError",
    "MessagePriority",
    "RedisAuthError",
    "RedisOutOfMemoryError",
    "RedisStreamsClient",
    "RedisUnavailableError",
    "StreamMessage",
    "StreamNotFoundError",
    "StreamsError",
    "WrongTypeError",
    "create_streams_client",
    "publish_event",
]
