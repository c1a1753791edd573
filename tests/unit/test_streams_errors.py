"""Redis errors become the project's errors; OOM backs off; backoff has jitter and a cap."""

from __future__ import annotations

import pytest
from redis import exceptions as redis_errors
from redis.backoff import NoBackoff

from outbox.settings import redact_url as redact
from outbox.streams.client import with_oom_backoff
from outbox.streams.connection import ReconnectRetry, backoff_delay_s
from outbox.streams.errors import (
    GroupMissingError,
    RedisAuthError,
    RedisOutOfMemoryError,
    RedisUnavailableError,
    StreamsError,
    WrongTypeError,
    is_busygroup,
    is_refusal,
    translate,
)


def test_translations() -> None:
    oom = redis_errors.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    assert isinstance(translate(oom, "k"), RedisOutOfMemoryError)
    assert "out of memory" in str(translate(oom, "k"))
    wrong = redis_errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")
    error = translate(wrong, "p:identity:events")
    assert isinstance(error, WrongTypeError)
    assert "p:identity:events" in str(error)
    nogroup = redis_errors.ResponseError("NOGROUP No such key 'x' or consumer group 'g'")
    assert isinstance(translate(nogroup, "x"), GroupMissingError)
    assert isinstance(translate(redis_errors.ConnectionError("refused")), RedisUnavailableError)
    assert isinstance(translate(redis_errors.AuthenticationError("WRONGPASS")), RedisAuthError)
    assert isinstance(translate(redis_errors.AuthorizationError("NOPERM")), RedisAuthError)
    assert type(translate(redis_errors.ResponseError("ERR other"))) is StreamsError
    assert is_busygroup(redis_errors.ResponseError("BUSYGROUP Consumer Group name already exists"))
    assert not is_busygroup(nogroup)


def test_backoff_grows_with_jitter_and_cap() -> None:
    for attempt in range(1, 12):
        delay = backoff_delay_s(attempt, 0.1, 2.0)
        ceiling = min(2.0, 0.1 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert len({backoff_delay_s(5, 0.1, 10.0) for _ in range(20)}) > 1


async def test_oom_is_retried_then_reported() -> None:
    calls = 0

    async def full() -> str:
        nonlocal calls
        calls += 1
        raise redis_errors.OutOfMemoryError("OOM command not allowed")

    with pytest.raises(RedisOutOfMemoryError):
        await with_oom_backoff(full, "k")
    assert calls > 1

    outcomes = iter([redis_errors.OutOfMemoryError("OOM"), "ok"])

    async def recovers() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert await with_oom_backoff(recovers, "k") == "ok"


def test_redact_hides_passwords() -> None:
    assert redact("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("redis://host:6379/0") == "redis://host:6379/0"


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (redis_errors.ConnectionError("Error 111 connecting to 127.0.0.1:6379"), True),
        (redis_errors.TimeoutError("Timeout reading from socket"), True),
        (redis_errors.AuthenticationError("invalid username-password pair"), False),
        (redis_errors.AuthorizationError("NOPERM no permission"), False),
        (
            redis_errors.ConnectionError(
                "Error 1 connecting to 127.0.0.1:6380. [SSL: CERTIFICATE_VERIFY_FAILED] "
                "certificate verify failed: unable to get local issuer certificate (_ssl.c:992)."
            ),
            False,
        ),
    ],
)
async def test_reconnects_retry_what_a_reconnect_can_cure(
    error: redis_errors.RedisError, retried: bool
) -> None:
    """A lost connection is retried; wrong credentials and an untrusted certificate are not,
    so they surface at once instead of after the whole backoff (about 5-10 s)."""
    retry = ReconnectRetry(NoBackoff(), 3)
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise error

    async def on_failure(_error: Exception) -> None:
        return None

    with pytest.raises(type(error)):
        await retry.call_with_retry(attempt, on_failure)
    assert calls == (4 if retried else 1)
    assert is_refusal(error) is not retried
