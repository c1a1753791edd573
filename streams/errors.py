"""Errors of the Redis Streams layer; redis-py errors are translated into these at the boundary.

Each docstring is the message a user reads. :func:`translate` maps a redis-py exception (and the
key it concerned) to one of them; callers never need to catch redis-py's classes.
"""

from __future__ import annotations

from redis import exceptions as redis_errors

from outbox.errors import OutboxError


class StreamsError(OutboxError):
    """Redis Streams reported an error."""


class GroupMissingError(StreamsError):
    """The consumer group does not exist on this stream (NOGROUP); it is created on first use."""


class WrongTypeError(StreamsError):
    """A Redis key the project needs as a stream holds another type (WRONGTYPE).

    Delete or rename that key, or use another STREAM_PREFIX.
    """

    def __init__(self, key: str | None) -> None:
        self.key = key
        super().__init__(
            f"Redis key {key!r} is not a stream (WRONGTYPE); delete or rename it, or choose "
            "another STREAM_PREFIX"
        )


class RedisOutOfMemoryError(StreamsError):
    """Redis is out of memory (OOM, maxmemory reached with noeviction).

    Writes are refused until memory is freed: consume and trim streams, or raise maxmemory.
    Callers back off and retry.
    """


class RedisUnavailableError(StreamsError):
    """Redis cannot be reached or is not ready: down, restarting, loading, a read-only replica.

    Check REDIS_STREAMS_URL and that Redis is running; callers back off and retry.
    """


class StreamRefusedError(StreamsError):
    """Redis refused to add to this stream (the key is not a stream, out of memory, …)."""

    def __init__(self, stream: str, reason: str) -> None:
        self.stream = stream
        self.reason = reason
        super().__init__(f"Redis refused stream {stream}: {reason}")


class RedisAuthError(StreamsError):
    """Redis refused the credentials or the ACL user lacks a permission.

    Check REDIS_PASSWORD, the user in REDIS_STREAMS_URL and its ACL rules.
    """


class StreamNotFoundError(StreamsError):
    """The stream does not exist (nothing was ever published to it)."""


def _text(error: BaseException) -> str:
    return str(error).strip()


def is_tls_untrusted(error: BaseException) -> bool:
    """True when the TLS handshake failed because the server's certificate was not accepted
    (unknown CA, wrong host name): redis-py reports it as a ConnectionError."""
    return isinstance(error, redis_errors.ConnectionError) and (
        "certificate verify failed" in _text(error).lower()
    )


#: Redis refused the credentials or a permission (AuthorizationError is a ConnectionError to
#: redis-py, NoPermissionError a ResponseError): reported as RedisAuthError, never retried.
_AUTH_ERRORS = (
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
    redis_errors.NoPermissionError,
)


def is_refusal(error: BaseException) -> bool:
    """True for a failure that a reconnect cannot cure: wrong credentials, a missing ACL
    permission, an untrusted certificate. Retrying these only delays the error."""
    return isinstance(error, _AUTH_ERRORS) or is_tls_untrusted(error)


def translate(error: redis_errors.RedisError, key: str | None = None) -> StreamsError:
    """The project error for a redis-py error; ``key`` names the key the command concerned."""
    message = _text(error)
    if isinstance(error, redis_errors.OutOfMemoryError) or message.startswith("OOM"):
        return RedisOutOfMemoryError(
            f"Redis is out of memory (OOM) while writing {key or 'a key'}: {message}; consume "
            "and trim streams or raise maxmemory"
        )
    if isinstance(error, _AUTH_ERRORS):
        return RedisAuthError(f"Redis refused access: {message} (check credentials and ACL)")
    if isinstance(error, (redis_errors.ConnectionError, redis_errors.TimeoutError)):
        if is_tls_untrusted(error):
            return RedisUnavailableError(
                f"Redis's TLS certificate was not accepted: {message} (trust its CA with "
                "?ssl_ca_certs=/path/ca.pem in REDIS_STREAMS_URL, and connect by a name the "
                "certificate holds)"
            )
        return RedisUnavailableError(f"Redis is unreachable: {error.__class__.__name__}: {message}")
    if message.startswith("NOGROUP"):
        return GroupMissingError(f"{message} (stream {key})" if key else message)
    if message.startswith("WRONGTYPE"):
        return WrongTypeError(key)
    return StreamsError(f"Redis error on {key or 'a command'}: {message}")


def is_busygroup(error: BaseException) -> bool:
    """True when XGROUP CREATE found the group already there (tolerated)."""
    return isinstance(error, redis_errors.ResponseError) and _text(error).startswith("BUSYGROUP")


def is_nogroup(error: BaseException) -> bool:
    return isinstance(error, redis_errors.ResponseError) and _text(error).startswith("NOGROUP")
