"""The Redis ACL user of a tenant: it may touch its own keys with the commands its
``RedisStreamsClient`` sends, and nothing else (docs/tenant-acl.md).

A tenant's keys all live under ``<prefix>:tenant:<tenant>:`` (:meth:`Keys.for_tenant`), so its
user may *read* that one pattern and *write* only the keys its client writes: its event streams
(``…:events``, ``…:events:high``, ``…:events:critical``, the dead-letter stream among them) and
its consumers' heartbeat hash. In the tagged layout the relay's watermarks
(``<stream>:watermark``, ``…:watermark:from:<origin>``) sit inside the tenant's prefix too;
they end in neither suffix, so the user can read them but never write them: a tenant that could
set its own watermark could make the relay skip its events (``%R~``, Redis 7.0:
https://redis.io/docs/latest/operate/oss_and_stack/management/security/acl/#key-permissions).

The commands are listed once, each with why the client needs it (:data:`CLIENT_COMMANDS`),
and given after ``-@all``: no string command, no ``DEL``, no ``KEYS``/``SCAN``, no ``FLUSH*``,
no admin command. ``AUTH`` and ``HELLO`` need no grant (Redis always lets a connection
authenticate). ``CLIENT SETINFO``, which redis-py sends on connect, is left out: Redis 7.0 does
not know it (an ACL naming it is refused), and redis-py ignores its refusal on later versions.

The rules start with ``reset``, in the same ``ACL SETUSER``: Redis applies one command
atomically, so a user that existed is never seen half old, half new, and no old password, key
pattern or command survives. The password is given as ``#<sha256 hex>``: the command, when
printed or logged, never holds the password.

ACLs are kept per server: on a Redis Cluster :func:`apply` sets the user on every node,
replicas included (a replica promoted by a failover must know the user too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from outbox.errors import ConfigurationError
from outbox.streams.connection import RedisClient, reply_text
from outbox.streams.errors import RedisAuthError, translate
from outbox.streams.keys import TENANT_INFIX, Keys
from outbox.validation import check_tenant_id


@dataclass(frozen=True)
class Grant:
    """One command (or ``command|subcommand``) the tenant's user is given, and why."""

    command: str
    why: str


#: What ``RedisStreamsClient(tenant=…)`` sends, found by running each of its paths as the
#: tenant's user (tests/integration/test_tenant_acl.py fails when one is missing).
CLIENT_COMMANDS: tuple[Grant, ...] = (
    Grant("ping", "initialize() checks the connection; redis-py health checks"),
    Grant("select", "a REDIS_STREAMS_URL naming a database (/<db>) selects it on connect"),
    Grant("client|setname", "redis-py names the connection when a client_name is given"),
    Grant("info|cluster", "connect() refuses a cluster node when REDIS_CLUSTER is not true"),
    Grant("xadd", "publish_message, and dead letters added to the tenant's dead-letter stream"),
    Grant("xgroup|create", "consume_messages creates its group (MKSTREAM) on first use"),
    Grant("xgroup|delconsumer", "consumers idle beyond DEAD_CONSUMER_IDLE_MS are removed"),
    Grant("xreadgroup", "consume_messages reads its own pending entries, then new ones"),
    Grant("xack", "acknowledge_message, and the source entry of a dead letter"),
    Grant("xautoclaim", "entries left pending by a dead consumer are taken over"),
    Grant("xclaim", "retry_message re-delivers an entry when its backoff is due"),
    Grant("xpending", "the delivery counter that spends the retry budget; get_pending_messages"),
    Grant("xinfo|consumers", "finding consumers idle beyond DEAD_CONSUMER_IDLE_MS"),
    Grant("xinfo|groups", "get_stream_info"),
    Grant("xrange", "retry_message reads the entry it dead-letters"),
    Grant("xlen", "get_stream_info"),
    Grant("exists", "get_stream_info tells an empty stream from a missing one"),
    Grant("evalsha", "the consumer heartbeat script (streams/heartbeat.py)"),
    Grant("eval", "the heartbeat script when the server's script cache lacks it"),
    Grant("time", "called by the heartbeat script: the beat carries the server's clock"),
    Grant("hset", "called by the heartbeat script on the tenant's consumers hash"),
)

#: What redis-py's RedisCluster adds to find and follow the cluster's nodes.
CLUSTER_COMMANDS: tuple[Grant, ...] = (
    Grant("cluster|slots", "redis-py reads the slot map on start and after MOVED"),
    Grant("cluster|shards", "newer redis-py versions read the slot map with it"),
    Grant("command", "redis-py's cluster client learns each command's key positions"),
    Grant("readonly", "redis-py sends it on replica connections (read_from_replicas)"),
    Grant("asking", "following an ASK redirect while a slot migrates"),
)

#: Commands a tenant's user must never have, whatever the list above says (tests check).
NEVER_GRANTED = frozenset(
    {
        "set", "setex", "psetex", "setnx", "getset", "getdel", "append", "incr", "incrby",
        "mset", "msetnx", "del", "unlink", "keys", "scan", "flushall", "flushdb", "config",
        "acl", "debug", "shutdown", "function", "script", "fcall", "xtrim", "xdel", "rename",
        "restore", "migrate", "move", "copy", "object", "monitor", "client|kill", "client|list",
    }
)  # fmt: skip


class AclRefusedError(RedisAuthError):
    """Redis refused to set the tenant's ACL user: the admin user needs ACL SETUSER (and
    ACL WHOAMI), i.e. ``+acl`` or ``+@admin``."""


def default_user(prefix: str, tenant: str) -> str:
    """``<prefix>-tenant-<tenant>``: one user per tenant and deployment."""
    return f"{prefix}-tenant-{check_tenant_id(tenant)}"


def password_hash(password: str) -> str:
    """The SHA-256 hex digest Redis keeps for a password (``#<hash>`` in ACL SETUSER)."""
    if not password:
        raise ConfigurationError("the tenant's password is empty")
    return hashlib.sha256(password.encode()).hexdigest()


def key_rules(keys: Keys, tenant: str) -> list[str]:
    """Read the tenant's whole prefix; write only its streams and its consumers hash."""
    tenant_keys = keys.for_tenant(check_tenant_id(tenant))
    head = f"{keys.prefix}{TENANT_INFIX}{tenant}"
    return [
        f"%R~{head}:*",
        f"~{head}:*:events",
        f"~{head}:*:events:high",
        f"~{head}:*:events:critical",
        f"~{tenant_keys.consumers}",
    ]


def commands(*, cluster: bool) -> tuple[Grant, ...]:
    """The grants of a tenant's user; on a Redis Cluster, with what its client needs there."""
    return CLIENT_COMMANDS + (CLUSTER_COMMANDS if cluster else ())


@dataclass(frozen=True)
class TenantAcl:
    """The ``ACL SETUSER`` of one tenant's user."""

    tenant: str
    user: str
    rules: tuple[str, ...]

    def command(self) -> tuple[str, ...]:
        return ("ACL", "SETUSER", self.user, *self.rules)

    def render(self) -> str:
        """The command as one line for ``redis-cli`` (no token holds a space or a quote)."""
        return " ".join(self.command())


def tenant_acl(
    keys: Keys,
    tenant: str,
    password: str,
    *,
    user: str | None = None,
    cluster: bool = False,
) -> TenantAcl:
    """The rules of ``tenant``'s user under ``keys``' prefix (the deployment's, not a tenant's)."""
    tenant = check_tenant_id(tenant)
    name = user or default_user(keys.prefix, tenant)
    if name == "default" or not name.isprintable() or any(c.isspace() for c in name):
        raise ConfigurationError(
            f"refusing ACL user name {name!r}: give a tenant's own user (not 'default')"
        )
    rules = (
        "reset",
        "on",
        f"#{password_hash(password)}",
        "resetkeys",
        *key_rules(keys, tenant),
        "resetchannels",
        "-@all",
        *(f"+{grant.command}" for grant in commands(cluster=cluster)),
    )
    return TenantAcl(tenant, name, rules)


def _nodes(client: RedisClient) -> Sequence[Any]:
    return client.get_nodes() if isinstance(client, RedisCluster) else [None]


async def apply(client: RedisClient, acl: TenantAcl, applied: list[str] | None = None) -> list[str]:
    """Run ``acl`` on the server, or on every node of a cluster; the nodes done, in order
    (``applied`` receives them as they come, so a failure half-way still says which).

    Refuses to reset the user the admin connection itself is (``ACL WHOAMI``): that would lock
    the admin out."""
    done: list[str] = [] if applied is None else applied
    try:
        for node in _nodes(client):
            target = {} if node is None else {"target_nodes": node}
            whoami = reply_text(await client.execute_command("ACL", "WHOAMI", **target))
            if whoami == acl.user:
                raise ConfigurationError(
                    f"refusing to reset ACL user {acl.user!r}: this command is connected as it"
                )
            await client.execute_command(*acl.command(), **target)
            done.append("redis" if node is None else f"{node.host}:{node.port}")
    except redis_errors.NoPermissionError as error:
        raise AclRefusedError(
            f"Redis refused ACL SETUSER for {acl.user} ({reply_text(error)}): the user of "
            "REDIS_STREAMS_URL needs +acl (or +@admin)"
        ) from None
    except redis_errors.RedisError as error:
        raise translate(error) from None
    return done
