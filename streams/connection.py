"""Open a Redis connection: TLS (``rediss://``), ACL users (``redis://user@host``), reconnects,
a single Redis or a Redis Cluster (REDIS_CLUSTER).

A lost connection is retried with exponential backoff and full jitter by redis-py itself
(``Retry`` on ConnectionError/TimeoutError), so a Redis restart costs callers a delay, not an
error; only when every retry failed does :class:`~streams.errors.RedisUnavailableError` surface.
Refusals that a reconnect cannot cure (wrong credentials, an untrusted certificate) are not
retried (:class:`ReconnectRetry`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff

from outbox.errors import ConfigurationError
from outbox.settings import ClientSettings, redact_url
from outbox.streams.errors import is_refusal, translate

#: A client of a single Redis or of a Redis Cluster: both have the commands the project uses.
RedisClient = aioredis.Redis | RedisCluster

log = logging.getLogger("outbox.streams.connection")

#: Reconnect attempts per command, with backoff 0.05 s doubling up to 2 s (~10 s in total).
RECONNECT_RETRIES = 8
RECONNECT_BASE_S = 0.05
RECONNECT_CAP_S = 2.0


def reply_text(value: Any) -> str:
    """A Redis reply part as text: bytes decoded as UTF-8 (a byte that is not is replaced, so a
    bad value can still be shown), anything else as ``str``."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def backoff_delay_s(
    attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with jitter: uniform in [ceiling/2, ceiling], the ceiling doubling
    from ``base_s`` per attempt up to ``cap_s``. The jitter keeps processes that failed together
    (Redis restarted) from retrying in lockstep
    (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/)."""
    ceiling = min(cap_s, base_s * (2 ** min(max(0, attempt - 1), 32)))
    return (rng or random).uniform(ceiling / 2, ceiling)


_T = TypeVar("_T")


class ReconnectRetry(Retry):
    """redis-py's Retry, except for refusals a reconnect cannot cure (wrong password, missing
    ACL permission, untrusted TLS certificate): those surface at once instead of after every
    backoff (~5-10 s), since AuthenticationError is a ConnectionError to redis-py."""

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[_T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> _T:
        def retryable(error: Exception) -> bool:
            return not is_refusal(error) and (is_retryable is None or is_retryable(error))

        return await super().call_with_retry(do, fail, retryable, with_failure_count)


def redis_from_url(
    url: str, password: str | None = None, *, cluster: bool = False, **options: Any
) -> RedisClient:
    """A redis.asyncio client; a password in the URL wins over ``password``.

    ``rediss://`` selects redis-py's SSLConnection; ``redis://user@host`` authenticates as that
    ACL user (AUTH user password, https://redis.io/docs/latest/operate/oss_and_stack/management/security/acl/).
    ``cluster``: a Redis Cluster client; the URL names any node, the others are discovered.
    """
    retry = ReconnectRetry(
        ExponentialWithJitterBackoff(cap=RECONNECT_CAP_S, base=RECONNECT_BASE_S),
        RECONNECT_RETRIES,
        (redis_errors.ConnectionError, redis_errors.TimeoutError),
    )
    kwargs: dict[str, Any] = {
        "retry": retry,
        "health_check_interval": 30,
        "socket_keepalive": True,
        **options,
    }
    if password:
        kwargs["password"] = password
    return client_from_url(url, cluster=cluster, **kwargs)


def client_from_url(url: str, *, cluster: bool, **options: Any) -> RedisClient:
    """``Redis.from_url``; for a cluster, ``RedisCluster.from_url`` (the URL names any node;
    the client discovers the others and follows slot moves and failovers); for a
    ``redis+sentinel://`` URL, a client of the primary that the sentinels name, which asks them
    again after a failover."""
    if url.startswith(("redis+sentinel://", "rediss+sentinel://")):
        return _sentinel_client(url, **options)
    if cluster:
        # The cluster client checks its nodes' connections itself on every redirect, and
        # retries (refreshing the slot map) by its own rules.
        options.pop("health_check_interval", None)
        options.pop("retry_on_timeout", None)
        return RedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)


class _SentinelPrimary(aioredis.Redis):
    """A client of the primary a Sentinel names; closing it closes its sentinel connections."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        pool = self.connection_pool
        await super().aclose(close_connection_pool)
        manager = getattr(pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            await sentinel.aclose()


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """``redis+sentinel://[user:password@]h1:26379,h2:26379/<master>[/<db>][?sentinel_password=…]``
    → (sentinels, master name, the primary's connection options)."""
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    userinfo, _, location = rest.rpartition("@")
    hosts, _, path = location.partition("/")
    parts = [part for part in path.split("/") if part]
    if not hosts or not parts:
        raise ConfigurationError(
            "a Sentinel URL is redis+sentinel://[user:password@]host:port[,host:port…]/<master>"
            f"[/<db>]; got {redact_url(url)}"
        )
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.strip().rpartition(":")
        sentinels.append((name or host.strip(), int(port) if port.isdigit() else 26379))
    options: dict[str, Any] = {"db": int(parts[1]) if len(parts) > 1 else 0}
    if userinfo:
        user, colon, password = userinfo.partition(":")
        if user:
            options["username"] = unquote(user)
        if colon:
            options["password"] = unquote(password)
    if scheme.startswith("rediss"):
        options["ssl"] = True
    for pair in query.split("&") if query else ():
        key, _, value = pair.partition("=")
        if key == "sentinel_password":
            options["sentinel_password"] = unquote(value)
    return sentinels, parts[0], options


def _sentinel_client(url: str, **options: Any) -> aioredis.Redis:
    sentinels, master, primary = parse_sentinel_url(url)
    sentinel_password = primary.pop("sentinel_password", None)
    # The URL's password is the primary's; REDIS_PASSWORD (``password``) fills in when it has
    # none. Sentinels have their own, if any (?sentinel_password=).
    if "password" in primary:
        options.pop("password", None)
    options.pop("health_check_interval", None)
    sentinel_kwargs = {
        "socket_timeout": options.get("socket_timeout") or 5,
        "socket_connect_timeout": options.get("socket_connect_timeout") or 5,
    }
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
    manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    client: aioredis.Redis = manager.master_for(
        master, redis_class=_SentinelPrimary, **primary, **options
    )
    return client


async def refuse_unexpected_cluster(client: RedisClient, url: str) -> None:
    """A single-Redis client (REDIS_CLUSTER auto) that reached a cluster node: refuse, with
    what to set, instead of failing later with MOVED on most keys."""
    if isinstance(client, RedisCluster):
        return
    info = await client.info("cluster")
    if int(info.get("cluster_enabled", 0)):
        raise ConfigurationError(_unexpected_cluster(url))


def _unexpected_cluster(url: str) -> str:
    return (
        f"Redis at {redact_url(url)} is a Redis Cluster: set REDIS_CLUSTER=true (the keys then "
        "use the tagged layout, STREAM_KEY_LAYOUT=tagged; docs/cluster.md)"
    )


async def check_redis_mode(settings: ClientSettings) -> None:
    """At a command's start: REDIS_CLUSTER must fit the server. ``auto`` refuses a cluster
    (with what to set); ``true`` refuses a single Redis. A Redis that cannot be reached now is
    not a mismatch: the command waits for it as it always does."""
    url = settings.redis_url()
    if settings.redis_cluster == "false":
        return
    client = client_from_url(
        url,
        cluster=False,
        password=settings.redis_password_text(),
        socket_connect_timeout=5,
        socket_timeout=5,
    )
    try:
        info = await client.info("cluster")
    except redis_errors.RedisError:
        return
    finally:
        await client.aclose()
    enabled = bool(int(info.get("cluster_enabled", 0)))
    if enabled and not settings.cluster:
        raise ConfigurationError(_unexpected_cluster(url))
    if settings.cluster and not enabled:
        raise ConfigurationError(
            f"REDIS_CLUSTER=true, but Redis at {redact_url(url)} is not a cluster node "
            "(cluster_enabled:0): unset REDIS_CLUSTER for a single Redis"
        )


async def connect(
    url: str,
    password: str | None = None,
    *,
    cluster: bool = False,
    check_cluster: bool = True,
    **options: Any,
) -> RedisClient:
    """Open a client and check it answers (PING); errors become project errors. A single-Redis
    client that reached a cluster is refused (``check_cluster``)."""
    client = redis_from_url(url, password, cluster=cluster, **options)
    try:
        await client.ping()
        if check_cluster:
            await refuse_unexpected_cluster(client, url)
    except redis_errors.RedisError as error:
        await client.aclose()
        raise translate(error) from None
    except BaseException:
        await client.aclose()
        raise
    log.debug("event=redis_connected url=%s cluster=%s", redact_url(url), cluster)
    return client


_pack_hiredis: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack_hiredis
except ImportError:  # pragma: no cover - hiredis is a dependency (redis[hiredis])
    _pack_hiredis = None


def pack(command: Sequence[Any]) -> bytes:
    """One command in the protocol's form, packed by hiredis (C) when it is installed."""
    if _pack_hiredis is not None:
        return _pack_hiredis(tuple(command))
    return b"".join(aioredis.Connection().pack_command(*command))  # pragma: no cover


async def raw_pipeline(
    client: RedisClient, commands: Sequence[tuple[Any, ...]], *, raise_on_error: bool = False
) -> list[object]:
    """Send every command in one write, then read every reply: one round trip.

    Error replies are returned, not raised, unless ``raise_on_error``: then, once every reply is
    read, the first error reply is raised (as a redis-py pipeline does). Replies are the
    protocol's own (lists and strings, no redis-py response callbacks); commands are packed by
    hiredis in C. For the hot paths (the relay's publish, the monitor's snapshot, the consumers'
    XACKs), where redis-py's per-command packing and parsing cost more than Redis itself.

    On a Redis Cluster each command goes to the node of its key, one round trip per node
    (:mod:`outbox.streams.cluster`); an unreachable node's commands get its connection error as
    their reply.
    """
    if isinstance(client, RedisCluster):
        from outbox.streams.cluster import cluster_pipeline

        routed = await cluster_pipeline(client, commands)
        if raise_on_error:
            for reply in routed:
                if isinstance(reply, BaseException):
                    raise reply
        return routed
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        if _pack_hiredis is not None:
            packed = [_pack_hiredis(command) for command in commands]
        else:  # pragma: no cover
            packed = conn.pack_commands(commands)
        await conn.send_packed_command(packed)
        # One deadline for the whole batch instead of a timer per reply (redis-py's own read
        # arms one per call: hundreds per monitor snapshot); math.inf turns that per-read one off.
        replies: list[object] = []
        try:
            async with asyncio.timeout(conn.socket_timeout):
                for _ in commands:
                    try:
                        replies.append(await conn.read_response(timeout=math.inf))
                    except redis_errors.ResponseError as error:
                        replies.append(error)
        except TimeoutError:
            raise redis_errors.TimeoutError(
                f"Timeout reading {len(commands)} replies from Redis"
            ) from None
    except BaseException:
        # A reply left unread would be taken for the next command's: never reuse the socket.
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)
    if raise_on_error:
        for reply in replies:
            if isinstance(reply, redis_errors.ResponseError):
                raise reply
    return replies


async def server_time(client: RedisClient) -> float:
    """Redis's clock (TIME) in Unix seconds; on a cluster, one node's."""
    reply: Any = await client.time()
    if isinstance(reply, dict):  # a cluster client asked several nodes
        reply = next(iter(reply.values()))
    seconds, micros = reply
    return int(seconds) + int(micros) / 1_000_000
