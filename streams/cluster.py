"""Raw pipelines on a Redis Cluster: every command to the node that owns its key, one round trip
per node, the nodes in parallel.

:func:`outbox.streams.connection.raw_pipeline` sends a list of commands in one write and reads
the replies as the protocol's own lists; on a cluster those commands belong to several nodes.
Here each command goes to the primary that owns its key's slot (keyless ones to the client's
default node), each node's share is one write and one read on a connection of that node, and
the replies come back in the commands' order.

A node that cannot be reached makes each of its commands' reply the connection error (the other
nodes' replies are unaffected): a caller such as the relay then refuses only that node's streams
and goes on with the others. A ``MOVED`` reply (a slot moved, a replica promoted) refreshes the
slot map and sends the command again to its new owner; an ``ASK`` reply (a slot being migrated)
sends it to the importing node after ``ASKING``. Each is followed once per call; what still
fails is returned for the caller to retry, which is safe for every command sent this way (the
publish script's watermark, XACK, XADD to dead letters, reads).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster

#: Commands sent without a key: to the client's default node.
_KEYLESS = frozenset({"TIME", "INFO", "PING", "SCRIPT", "CLUSTER", "ASKING", "DBSIZE"})
#: Replies that say the slot map is out of date: refresh it and send again.
_STALE_MAP = (redis_errors.MovedError, redis_errors.SlotNotCoveredError)
#: Failures of a node rather than of a command.
NODE_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    OSError,
)


def _text(part: Any) -> str:
    return part.decode() if isinstance(part, bytes) else str(part)


def command_key(command: Sequence[Any]) -> str | None:
    """The key a command is routed by, or None for a keyless one."""
    name = _text(command[0]).upper()
    if name in _KEYLESS:
        return None
    if name in ("EVALSHA", "EVAL", "FCALL"):
        return _text(command[3]) if int(command[2]) > 0 else None
    if name in ("XINFO", "XGROUP", "OBJECT", "MEMORY"):
        return _text(command[2])
    if name in ("XREADGROUP", "XREAD"):
        upper = [_text(part).upper() for part in command]
        return _text(command[upper.index("STREAMS") + 1])
    return _text(command[1])


async def node_pipeline(node: ClusterNode, commands: Sequence[Sequence[Any]]) -> list[object]:
    """Send ``commands`` to ``node`` in one write and read every reply (errors as values)."""
    from outbox.streams.connection import pack

    conn = node.acquire_connection()
    try:
        await conn.send_packed_command([pack(command) for command in commands])
        replies: list[object] = []
        async with asyncio.timeout(conn.socket_timeout):
            for _ in commands:
                try:
                    replies.append(await conn.read_response(timeout=math.inf))
                except redis_errors.ResponseError as error:
                    replies.append(error)
    except TimeoutError:
        await conn.disconnect(nowait=True)
        raise redis_errors.TimeoutError(
            f"Timeout reading {len(commands)} replies from {node.name}"
        ) from None
    except BaseException:
        # A reply left unread would be taken for the next command's: never reuse the socket.
        await conn.disconnect(nowait=True)
        raise
    finally:
        node.release(conn)
    return replies


async def _send(
    groups: dict[ClusterNode, list[int]],
    commands: Sequence[Sequence[Any]],
    replies: list[object],
) -> bool:
    """Send each node its commands; True when a node could not be reached."""
    unreachable = False

    async def one(node: ClusterNode, indexes: list[int]) -> None:
        nonlocal unreachable
        try:
            got = await node_pipeline(node, [commands[i] for i in indexes])
        except NODE_ERRORS as error:
            unreachable = True
            failure = (
                error
                if isinstance(error, redis_errors.RedisError)
                else redis_errors.ConnectionError(f"{node.name}: {error}")
            )
            got = [failure] * len(indexes)
        for index, reply in zip(indexes, got, strict=True):
            replies[index] = reply

    await asyncio.gather(*(one(node, indexes) for node, indexes in groups.items()))
    return unreachable


def _route(
    client: RedisCluster,
    commands: Sequence[Sequence[Any]],
    indexes: Sequence[int],
    replies: list[object],
) -> dict[ClusterNode, list[int]]:
    """Group the commands by node; a command whose slot no node serves gets that as its reply."""
    groups: dict[ClusterNode, list[int]] = {}
    for index in indexes:
        key = command_key(commands[index])
        node = client.get_node_from_key(key) if key is not None else client.get_default_node()
        if node is None:
            replies[index] = redis_errors.SlotNotCoveredError(f"no node serves the slot of {key}")
            continue
        groups.setdefault(node, []).append(index)
    return groups


async def cluster_pipeline(client: RedisCluster, commands: Sequence[Sequence[Any]]) -> list[object]:
    """Every command to the owner of its key, one round trip per node; replies (or errors)
    in order. See the module doc for redirects and unreachable nodes."""
    await client.initialize()  # a no-op once the slot map is known
    replies: list[object] = [None] * len(commands)
    unreachable = await _send(
        _route(client, commands, range(len(commands)), replies), commands, replies
    )
    moved = [i for i, reply in enumerate(replies) if isinstance(reply, _STALE_MAP)]
    if unreachable or moved:
        # A failover or a slot move: learn the new owners before anything is sent again.
        await client.nodes_manager.initialize()
    if moved:
        await _send(_route(client, commands, moved, replies), commands, replies)
    asked = [i for i, reply in enumerate(replies) if isinstance(reply, redis_errors.AskError)]
    if asked:
        await _follow_asks(client, commands, replies, asked)
    return replies


async def _follow_asks(
    client: RedisCluster,
    commands: Sequence[Sequence[Any]],
    replies: list[object],
    asked: Sequence[int],
) -> None:
    """Send each ASK-redirected command to the importing node, right after ASKING on the same
    connection (https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#ask-redirection)."""
    by_node: dict[str, list[int]] = {}
    for index in asked:
        error = replies[index]
        assert isinstance(error, redis_errors.AskError)
        by_node.setdefault(f"{error.host}:{error.port}", []).append(index)
    for name, indexes in by_node.items():
        node = client.get_node(node_name=name)
        if node is None:
            continue
        sent: list[Sequence[Any]] = []
        for index in indexes:
            sent += [("ASKING",), commands[index]]
        try:
            got = await node_pipeline(node, sent)
        except NODE_ERRORS as error:
            got = [error] * len(sent)
        for position, index in enumerate(indexes):
            replies[index] = got[2 * position + 1]


async def on_each_primary(
    client: RedisCluster, commands: Sequence[Sequence[Any]]
) -> dict[str, list[object] | BaseException]:
    """The same keyless commands (TIME, INFO) on every primary: replies per node name, or the
    error that node gave."""
    await client.initialize()
    nodes = client.get_primaries()

    async def one(node: ClusterNode) -> list[object] | BaseException:
        try:
            return await node_pipeline(node, commands)
        except NODE_ERRORS as error:
            return error

    results = await asyncio.gather(*(one(node) for node in nodes))
    return {node.name: result for node, result in zip(nodes, results, strict=True)}
