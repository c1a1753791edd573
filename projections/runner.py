"""``outbox project``: run projections as consumer groups, PROCESSOR_WORKERS consumers each.

Consumer names are stable, ``<stem>-<index>`` (stem: PROJECTION_CONSUMER_NAME, default the host
name), so a restarted process gets its own pending entries back. Each name is held with a
PostgreSQL session advisory lock while the process lives; a second process on the same host
takes the next free indexes instead of sharing a name. SIGTERM/SIGINT set the stop event: every
worker finishes and acks its batch and the process exits 0 within SHUTDOWN_GRACE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from outbox.errors import ConfigurationError
from outbox.metrics import ProjectionMetrics
from outbox.probes import Heartbeats
from outbox.projections import store
from outbox.projections.partitions import PartitionConfig, PartitionMember
from outbox.projections.projection import Projection
from outbox.projections.worker import ProjectionWorker, WorkerConfig
from outbox.settings import Settings
from outbox.streams.connection import connect
from outbox.streams.dead_letter import DeadLetters
from outbox.streams.keys import Keys

log = logging.getLogger("outbox.projections.runner")

INBOX_PRUNE_INTERVAL_S = 600.0
#: At most this many consumer indexes are tried per projection when looking for free names.
MAX_CONSUMER_INDEX = 1024


async def acquire_consumer_names(db: Any, projection: str, stem: str, count: int) -> list[str]:
    """The lowest ``count`` free names ``<stem>-<i>`` for ``projection``, held by ``db``."""
    names: list[str] = []
    for index in range(MAX_CONSUMER_INDEX):
        name = f"{stem}-{index}"
        if await store.try_lock_consumer(db, projection, name):
            names.append(name)
            if len(names) == count:
                return names
    raise ConfigurationError(f"no free consumer name for {projection} under {stem!r}")


async def _prune_inbox(pool: Any, retention_s: int, schema: str, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            async with pool.acquire() as db:
                deleted = await store.prune_inbox(db, retention_s, schema=schema)
            if deleted:
                log.info("event=inbox_pruned rows=%d", deleted)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("event=inbox_prune_failed error=%r", error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=INBOX_PRUNE_INTERVAL_S)


@dataclass
class ProjectionsProbe:
    """The metrics and loop heartbeats of one process's consumers (outbox/probes.py)."""

    metrics: ProjectionMetrics
    heartbeats: Heartbeats

    @classmethod
    def for_settings(cls, settings: Settings) -> ProjectionsProbe:
        # A consumer's loop turns at least every PROJECTION_BLOCK_MS (its blocking read) or
        # backoff (5 s at most); stalled is far beyond either.
        stall_s = max(60.0, 10 * settings.projection_block_ms / 1000)
        return cls(ProjectionMetrics(), Heartbeats(stall_after_s=stall_s))

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def liveness(self) -> dict[str, str]:
        return self.heartbeats.liveness()

    def readiness(self) -> dict[str, str]:
        return self.heartbeats.readiness()


async def run_projections(
    projections: Sequence[Projection],
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    workers: int | None = None,
    consumer_stem: str | None = None,
    handle_signals: bool = False,
    probe: ProjectionsProbe | None = None,
) -> int:
    """Run ``projections`` until ``stop`` is set (or SIGTERM/SIGINT); return the exit code.

    ``probe``: where the consumers count (its registry holds :class:`ProjectionMetrics`) and
    beat (outbox/probes.py)."""
    if not projections:
        raise ConfigurationError(
            "no projection to run: set PROJECTION_MODULES to the modules that register yours "
            "(the demo's are outbox.projections.examples)"
        )
    stop = stop or asyncio.Event()
    probe = probe or ProjectionsProbe.for_settings(settings)
    count = workers or settings.processor_workers
    stem = consumer_stem or settings.projection_consumer_name or socket.gethostname()
    config = WorkerConfig.from_settings(settings)
    partition_config = PartitionConfig(
        batch_size=settings.projection_batch_size,
        block_ms=settings.projection_block_ms,
        max_retries=settings.max_retries,
        retry_base_s=settings.retry_base_delay_ms / 1000,
        retry_cap_s=settings.retry_max_delay_ms / 1000,
        lease_s=settings.partition_lease_s,
        schema=settings.outbox_schema,
    )
    keys = Keys.for_settings(settings)
    if settings.tenant_id is not None:
        # A tenant's projections read the tenant's streams (never partitioned) and dead-letter
        # to the tenant's dead letters (docs/tenancy.md).
        keys = keys.for_tenant(settings.tenant_id)
    loop = asyncio.get_running_loop()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    # str responses: the codec looks fields up by str name, so no per-field bytes fallback.
    redis = await connect(
        settings.redis_url(),
        password,
        cluster=settings.cluster,
        decode_responses=True,
    )
    pool = await asyncpg.create_pool(
        settings.libpq_url(),
        min_size=1,
        # Consumers, plus a member and its partition readers per service (decision 0014).
        max_size=count * sum(len(p.streams) if settings.cluster else 1 for p in projections)
        + sum(len(p.streams) for p in projections)
        + 8,
        # Short set-based statements, run constantly: JIT compilation would cost more than it
        # saves once the planner's estimates pass jit_above_cost.
        server_settings={"jit": "off", "application_name": "outbox-projections"},
    )
    names_db = await asyncpg.connect(settings.libpq_url())
    tasks: list[asyncio.Task[Any]] = []
    try:
        for projection in projections:
            # A consumer reads its streams with one XREADGROUP. On a cluster the streams of
            # different services live in different slots, so each service gets consumers of
            # its own: <stem>.<service>-<index>.
            groups = (
                [(f"{stem}.{service}", [service]) for service in projection.streams]
                if settings.cluster
                else [(stem, list(projection.streams))]
            )
            for group_stem, services in groups:
                names = await acquire_consumer_names(names_db, projection.name, group_stem, count)
                for service in services if settings.tenant_id is None else ():
                    # Idle until the service is partitioned (outbox partitions set).
                    member = PartitionMember(
                        projection,
                        service,
                        names[0],
                        redis=redis,
                        pool=pool,
                        keys=keys,
                        letters=DeadLetters(redis, keys, settings.dead_letter_ttl_s),
                        config=partition_config,
                        stop=stop,
                        metrics=probe.metrics,
                    )
                    tasks.append(
                        asyncio.create_task(
                            member.run(), name=f"{projection.name}/{service}/partitions"
                        )
                    )
                for name in names:
                    worker = ProjectionWorker(
                        projection,
                        redis=redis,
                        pool=pool,
                        keys=keys,
                        consumer=name,
                        config=config,
                        stop=stop,
                        host=socket.gethostname(),
                        pid=os.getpid(),
                        services=services,
                        metrics=probe.metrics,
                        heartbeats=probe.heartbeats,
                    )
                    tasks.append(
                        asyncio.create_task(worker.run(), name=f"{projection.name}/{name}")
                    )
        pruner = asyncio.create_task(
            _prune_inbox(pool, settings.inbox_retention_s, settings.outbox_schema, stop)
        )
        log.info(
            "event=projections_started projections=%s workers=%d stem=%s",
            ",".join(p.name for p in projections),
            count,
            stem,
        )
        stopper: asyncio.Task[Any] = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        crashed = [task for task in done if task is not stopper and task.exception()]
        stop.set()
        _, late = await asyncio.wait([*tasks, pruner], timeout=settings.shutdown_grace_s)
        for task in late:
            task.cancel()
        if late:
            log.warning("event=shutdown_grace_exceeded tasks=%d", len(late))
            await asyncio.wait(late, timeout=5)
        for task in crashed:
            log.error("event=worker_crashed task=%s", task.get_name(), exc_info=task.exception())
        log.info("event=projections_stopped")
        return 1 if crashed else 0
    finally:
        for task in tasks:
            task.cancel()
        await names_db.close()
        await pool.close()
        await redis.aclose()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
