"""A real Redis Cluster for the cluster tests (registered in tests/conftest.py).

- ``redis_cluster``: a 3-master cluster of the machine's ``redis-server`` on free loopback
  ports, started once per session (about 2 s) and stopped by PID at the end. Tests share it;
  each has its own key prefix (``stream_prefix``), so none sees another's keys.
- ``cluster_settings``: the test's settings pointed at it, ``REDIS_CLUSTER=true``.
- :func:`start_cluster`: a cluster of its own, optionally with replicas, for tests that kill,
  pause or fail over nodes.
- ``redis_target``: runs a test twice, on the single Redis and on the shared cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from outbox.settings import Settings, get_settings
from outbox.streams.keys import Keys


def _command(client: redis.Redis, *args: Any) -> Any:
    """A raw command (redis-py's sync execute_command has no type hints)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _free_ports(count: int) -> list[int]:
    """Ports free now, each with its cluster bus port (port + 10000) free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@dataclass
class ClusterNode:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "redis-server"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory-policy",
                "noeviction",
                # A node that is down takes only its own slots with it: the others keep
                # serving theirs (what "one failed node refuses only its own streams" needs).
                "--cluster-require-full-coverage",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def kill(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


@dataclass
class RedisClusterServers:
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://{self.nodes[0].address}/0"

    def primaries(self) -> list[ClusterNode]:
        found = []
        for node in self.nodes:
            if node.process is None:
                continue
            with contextlib.suppress(redis.RedisError):
                if node.client().info("replication")["role"] == "master":
                    found.append(node)
        return found

    def node_of(self, key: str) -> ClusterNode:
        """The primary that owns ``key``'s slot now."""
        for node in self.primaries():
            client = node.client()
            slot = int(_command(client, "CLUSTER", "KEYSLOT", key))
            for start, end, owner, *_ in _command(client, "CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(owner[1])
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no primary owns {key}")

    def wait_ok(self, timeout_s: float = 30) -> None:
        """Until every live node says cluster_state:ok."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                states = [
                    _command(node.client(), "CLUSTER", "INFO").decode()
                    for node in self.nodes
                    if node.process is not None
                ]
                if all("cluster_state:ok" in state for state in states):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the cluster did not become ok")

    def wait_replicas_linked(self, timeout_s: float = 30) -> None:
        """Until every replica has finished its first sync with its primary."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            linked = True
            for node in self.nodes:
                if node.process is None:
                    continue
                try:
                    info = node.client().info("replication")
                except redis.RedisError:
                    linked = False
                    break
                if info["role"] == "slave" and (
                    info.get("master_link_status") != "up" or info.get("master_sync_in_progress")
                ):
                    linked = False
            if linked:
                return
            time.sleep(0.1)
        raise RuntimeError("the replicas did not finish their first sync")

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    node.resume()
            node.kill()


def start_cluster(directory: Path, masters: int = 3, replicas: int = 0) -> RedisClusterServers:
    """Start ``masters * (1 + replicas)`` nodes and join them into a cluster."""
    servers = RedisClusterServers()
    for port in _free_ports(masters * (1 + replicas)):
        node_dir = directory / f"node-{port}"
        node_dir.mkdir(parents=True)
        node = ClusterNode(port, node_dir)
        node.start()
        servers.nodes.append(node)
    cli = shutil.which("redis-cli") or "redis-cli"
    created = subprocess.run(
        [
            cli,
            "--cluster",
            "create",
            *(node.address for node in servers.nodes),
            "--cluster-replicas",
            str(replicas),
            "--cluster-yes",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if created.returncode != 0:
        servers.stop()
        raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout}{created.stderr}")
    servers.wait_ok()
    if replicas:
        servers.wait_replicas_linked()
    return servers


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("needs redis-server and redis-cli on PATH (Debian: redis-server)")
    servers = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield servers
    servers.stop()


@pytest.fixture
def cluster_settings(
    settings: Settings, redis_cluster: RedisClusterServers, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """The test's settings on the shared cluster (its own prefix keeps its keys apart)."""
    monkeypatch.setenv("REDIS_STREAMS_URL", redis_cluster.url)
    monkeypatch.setenv("REDIS_CLUSTER", "true")
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@dataclass
class RedisTarget:
    """The Redis a test runs against: the environment's single Redis or the shared cluster."""

    name: str
    url: str
    cluster: bool
    client: Any  # redis.asyncio Redis or RedisCluster

    def env(self) -> dict[str, str]:
        """What the processes of the test get in their environment."""
        return {"REDIS_STREAMS_URL": self.url, "REDIS_CLUSTER": "true" if self.cluster else "auto"}

    def keys(self, prefix: str) -> Keys:
        return Keys(prefix, tagged=self.cluster)


@pytest.fixture(params=["single", "cluster"])
async def redis_target(
    request: pytest.FixtureRequest, settings: Settings, stream_prefix: str
) -> AsyncIterator[RedisTarget]:
    """Runs the test once on the single Redis of the environment and once on the shared
    3-primary cluster; the test's keys (its prefix) are deleted afterwards."""
    from outbox.streams.connection import client_from_url

    if request.param == "cluster":
        servers: RedisClusterServers = request.getfixturevalue("redis_cluster")
        target = RedisTarget(
            "cluster", servers.url, True, client_from_url(servers.url, cluster=True)
        )
    else:
        url = settings.redis_streams_url.get_secret_value()
        target = RedisTarget("single", url, False, client_from_url(url, cluster=False))
    yield target
    keys = [key async for key in target.client.scan_iter(match=f"{stream_prefix}:*", count=1000)]
    for key in keys:
        await target.client.delete(key)
    await target.client.aclose()


# --- Redis Sentinel -------------------------------------------------------------------------


@dataclass
class SentinelServers:
    """A primary, its replica and three sentinels watching them as ``mymaster``."""

    primary: ClusterNode
    replica: ClusterNode
    sentinels: list[subprocess.Popen[bytes]]
    sentinel_ports: list[int]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/mymaster/0"

    def sentinel_client(self, index: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.sentinel_ports[index], socket_timeout=5)

    def primary_port(self) -> int:
        address = _command(
            self.sentinel_client(), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"
        )
        return int(address[1])

    def stop(self) -> None:
        for process in self.sentinels:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
        for node in (self.primary, self.replica):
            with contextlib.suppress(ProcessLookupError, AssertionError):
                node.resume()
            node.kill()


def _plain_server(port: int, directory: Path, *extra: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server") or "redis-server"
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
            return process
        time.sleep(0.02)
    raise RuntimeError(f"redis-server did not start on {port}")


def start_sentinels(directory: Path) -> SentinelServers:
    """A primary, a replica of it and three sentinels (quorum 2, down after 1 s)."""
    primary_port, replica_port, *sentinel_ports = _free_ports(5)
    nodes = []
    for port, extra in (
        (primary_port, ()),
        (replica_port, ("--replicaof", "127.0.0.1", str(primary_port))),
    ):
        node_dir = directory / f"redis-{port}"
        node_dir.mkdir(parents=True)
        node = ClusterNode(port, node_dir)
        node.process = _plain_server(port, node_dir, *extra)
        nodes.append(node)
    primary, replica = nodes
    sentinels = []
    binary = shutil.which("redis-server") or "redis-server"
    for port in sentinel_ports:
        config = directory / f"sentinel-{port}.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor mymaster 127.0.0.1 {primary_port} 2\n"
            "sentinel down-after-milliseconds mymaster 1000\n"
            "sentinel failover-timeout mymaster 5000\n"
            "sentinel parallel-syncs mymaster 1\n"
        )
        sentinels.append(
            subprocess.Popen(
                [binary, str(config), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    servers = SentinelServers(primary, replica, sentinels, sentinel_ports)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ready = (
                all(
                    len(_command(servers.sentinel_client(i), "SENTINEL", "REPLICAS", "mymaster"))
                    == 1
                    and len(
                        _command(servers.sentinel_client(i), "SENTINEL", "SENTINELS", "mymaster")
                    )
                    == 2
                    for i in range(len(sentinel_ports))
                )
                and replica.client().info("replication").get("master_link_status") == "up"
            )
            if ready:
                return servers
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.1)
    servers.stop()
    raise RuntimeError("the sentinels did not find each other and the replica")


@pytest.fixture
def sentinel_servers(tmp_path: Path) -> Iterator[SentinelServers]:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server on PATH (Debian: redis-server)")
    servers = start_sentinels(tmp_path / "sentinel")
    yield servers
    servers.stop()
