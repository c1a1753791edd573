"""Collects one snapshot of everything the monitor shows, with rates and statuses.

A snapshot costs a fixed handful of PostgreSQL queries and two pipelined Redis round trips
(``monitor/redis_stats.py``), whatever the number of streams. Each component keeps a short
series of observations (``MONITOR_WINDOW``) that gives its rate and its trend-based status.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg

from outbox.monitor import redis_stats, sources
from outbox.monitor.redis_stats import StreamStats
from outbox.monitor.status import LOST_AFTER_INTERVALS, Sample, Status, heartbeat, trend, worst
from outbox.partitioning import Partition, Partitioning
from outbox.settings import Settings
from outbox.streams.connection import RedisClient
from outbox.streams.keys import Keys

#: Rates (published/s, applied/s) are taken over this much recent history.
RATE_WINDOW_S = 30.0
#: A write transaction open longer than this is reported as holding the relay back.
HOLDBACK_WARN_S = 60.0
#: Processing latency is taken over the newest this many events of each projection.
LATENCY_SAMPLE = 2_000
#: ... applied within the window, or within the span in which all projections together applied
#: about twice that many at their recent rate (so one snapshot's query reads a bounded number of
#: inbox rows however busy the projections are), but never less than this.
LATENCY_MIN_LOOKBACK_S = 5.0


class Clock(Protocol):
    def __call__(self) -> float: ...


@dataclass(frozen=True)
class ProjectionCounts:
    """One observation of a projection's counters (its consumers' sums)."""

    at: float
    processed: int
    failures: int
    retries: int


class Collector:
    """Builds snapshots; ``latest()`` reuses one younger than ``max_age_s``."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        redis: RedisClient,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.keys = Keys.for_settings(settings)
        self.clock = clock
        self.window_s = settings.monitor_window_s
        self.samples: dict[str, deque[Sample]] = {}
        self.projection_counts: dict[str, deque[ProjectionCounts]] = {}
        self._latest: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()
        self.configured_services = [
            s.strip() for s in settings.monitor_services.split(",") if s.strip()
        ]
        #: Tenants shown even before the relay published anything of theirs: those with a token.
        self.known_tenants = sorted({tenant for tenant, _ in settings.tenant_tokens()})

    async def latest(self, max_age_s: float = 1.0) -> dict[str, Any]:
        async with self._lock:
            if self._latest and self.clock() - self._latest[0] <= max_age_s:
                return self._latest[1]
            snapshot = await self.collect()
            return snapshot

    @property
    def _heartbeat_interval_s(self) -> float:
        """The interval heartbeats are judged by (relays and consumers beat at least this often
        with default settings)."""
        return max(self.settings.refresh_interval_s, 5.0)

    @property
    def relay_alive_s(self) -> float:
        """A relay whose heartbeat is younger than this is taken at its word when it reports a
        service it is publishing again: exactly while its status is not "heartbeat lost"."""
        return LOST_AFTER_INTERVALS * self._heartbeat_interval_s

    async def collect(self) -> dict[str, Any]:
        started = self.clock()
        async with self.pool.acquire() as conn:
            schema = self.settings.outbox_schema
            outbox = await sources.outbox_side(conn, self.relay_alive_s, schema)
            relays = await sources.relay_side(conn, schema)
            projections = await sources.projection_side(conn, schema)
            latency = await sources.processing_latency(
                conn,
                [p["name"] for p in projections],
                self._latency_lookback_s(),
                LATENCY_SAMPLE,
                schema,
            )
            partitionings, owners = await sources.partition_side(conn, schema)
            tenant_services, tenant_backlog = await sources.tenant_side(conn, self.keys, schema)
        for projection in projections:
            projection["processing_latency"] = latency.get(projection["name"])
        reports = await sources.client_consumers(self.redis, self.keys)
        tenant_rows: list[dict[str, Any]] = []
        services = sorted(
            set(self.configured_services)
            | {row["stream"] for row in outbox["streams"]}
            | {stream for relay in relays for stream in relay.get("streams", [])}
            | {
                parsed[0]
                for report in reports
                for key in report.streams
                if (parsed := self.keys.parse_stream(key)) is not None
            }
        )
        keys = [
            key
            for service in services
            for partition in partitionings.get(service, Partitioning()).every_partition()
            for key in self.keys.streams_of(service, partition)
        ]
        keys += [self.keys.dead_letter, self.keys.metrics]
        tenants = sorted(set(tenant_services) | set(tenant_backlog) | set(self.known_tenants))
        tenant_of: dict[str, str] = {}
        for tenant in tenants:
            own = self.keys.for_tenant(tenant)
            for service in sorted(tenant_services.get(tenant, ())):
                tenant_of.update(dict.fromkeys(own.streams_of(service), tenant))
            tenant_of[own.dead_letter] = tenant
        keys += list(tenant_of)
        redis_now, streams, server = await redis_stats.collect(self.redis, keys)
        for tenant in tenants:
            tenant_reports = await sources.client_consumers(
                self.redis, self.keys.for_tenant(tenant)
            )
            tenant_rows += sources.client_consumer_rows(tenant_reports, redis_now, tenant)
        dead_letter = next((s for s in streams if s.key == self.keys.dead_letter), None)
        # Published per service: entries ever added to its streams (XINFO STREAM entries-added),
        # exact and cheap; the relay's watermark keeps re-publishes out of it.
        added = {s.key: s.entries_added or 0 for s in streams}
        for row in outbox["streams"]:
            every = partitionings.get(row["stream"], Partitioning()).every_partition()
            row["published"] = sum(
                added.get(k, 0) for p in every for k in self.keys.streams_of(row["stream"], p)
            ) + sum(
                added.get(k, 0)
                for t in tenants
                if row["stream"] in tenant_services.get(t, ())
                for k in self.keys.for_tenant(t).streams_of(row["stream"])
            )
        by_key = {s.key: s for s in streams}
        snapshot: dict[str, Any] = {
            "at": datetime.now(UTC).isoformat(),
            "db_now": outbox["db_now"],
            "redis_now": redis_now,
            "prefix": self.settings.stream_prefix,
            "redis_db": _db_number(self.settings.redis_streams_url.get_secret_value()),
            "outbox": outbox,
            "relays": relays,
            "streams": [
                {**s.as_dict(), "tenant": tenant_of.get(s.key)}
                for s in streams
                if s.exists or s.error
            ],
            "projections": projections,
            "consumers": sources.client_consumer_rows(reports, redis_now) + tenant_rows,
            "dead_letters": _dead_letter_count(dead_letter),
            "tenants": [
                {
                    "tenant": tenant,
                    "streams": [
                        k
                        for k, t in tenant_of.items()
                        if t == tenant and k in by_key and by_key[k].exists
                    ],
                    "dead_letters": _dead_letter_count(
                        by_key.get(self.keys.for_tenant(tenant).dead_letter)
                    ),
                    "unpublished": sum(tenant_backlog.get(tenant, {}).values()),
                    "unpublished_capped": any(
                        n >= sources.UNPUBLISHED_COUNT_CAP
                        for n in tenant_backlog.get(tenant, {}).values()
                    ),
                }
                for tenant in tenants
            ],
            "partitions": self._partitions(owners, streams),
            "redis": server,
        }
        now = self.clock()
        snapshot["status"] = self._observe(snapshot, now)
        snapshot["collect_ms"] = round((self.clock() - started) * 1000, 2)
        self._latest = (now, snapshot)
        return snapshot

    def _partitions(
        self, owners: list[dict[str, Any]], streams: list[StreamStats]
    ) -> list[dict[str, Any]]:
        """Each projection partition with its owner and its lag: the entries of its streams
        after the projection's group, which the owner keeps at its checkpoint."""
        by_key = {stats.key: stats for stats in streams}
        rows = []
        for owner in owners:
            partition = Partition(owner["epoch"], owner["partition"])
            lag = 0
            for key in self.keys.streams_of(owner["service"], partition):
                stats = by_key.get(key)
                if stats is None:
                    continue
                group = next((g for g in stats.groups if g.name == owner["projection"]), None)
                lag += group.lag_entries if group is not None else stats.length
            rows.append({**owner, "lag_entries": lag})
        return rows

    def _latency_lookback_s(self) -> float:
        """How far back the processing latency query looks (see LATENCY_MIN_LOOKBACK_S)."""
        rates = [
            self._rate(samples)
            for name, samples in self.samples.items()
            if name.startswith("projection:")
        ]
        total = sum(rate for rate in rates if rate)
        if total <= 0:
            return self.window_s
        return min(self.window_s, max(LATENCY_MIN_LOOKBACK_S, 2 * LATENCY_SAMPLE / total))

    def _window(self, name: str, now: float, projection: dict[str, Any]) -> dict[str, Any] | None:
        """What a projection did over the window: events applied, handler failures, retries,
        and the share of handler attempts that failed. None until two observations exist."""
        counts = self.projection_counts.setdefault(name, deque())
        counts.append(
            ProjectionCounts(
                now, projection["processed"], projection["failures"], projection["retries"]
            )
        )
        while counts and counts[0].at < now - self.window_s:
            counts.popleft()
        if len(counts) < 2:
            return None
        first, last = counts[0], counts[-1]
        # A consumer gone for an hour drops out of the sums: a counter that went down is 0.
        applied = max(0, last.processed - first.processed)
        failures = max(0, last.failures - first.failures)
        retries = max(0, last.retries - first.retries)
        attempts = applied + failures
        return {
            "span_s": round(last.at - first.at, 1),
            "applied": applied,
            "failures": failures,
            "retries": retries,
            "error_ratio": round(failures / attempts, 4) if attempts else None,
        }

    def _record(self, name: str, now: float, behind: float, progress: float) -> deque[Sample]:
        """Append one observation of a component and forget those older than the window."""
        samples = self.samples.setdefault(name, deque())
        samples.append(Sample(now, behind, progress))
        while samples and samples[0].at < now - self.window_s:
            samples.popleft()
        return samples

    def _rate(self, samples: deque[Sample]) -> float | None:
        """Progress per second over the last RATE_WINDOW_S (counter resets count as 0)."""
        if len(samples) < 2:
            return None
        newest = samples[-1]
        oldest = next((s for s in samples if s.at >= newest.at - RATE_WINDOW_S), samples[0])
        if oldest is newest:
            oldest = samples[-2]
        span = newest.at - oldest.at
        return round(max(0.0, newest.progress - oldest.progress) / span, 2) if span > 0 else None

    def _observe(self, snapshot: dict[str, Any], now: float) -> dict[str, Any]:
        """Record this snapshot's figures per component; derive rates and statuses from them.

        Each component keeps its own short series, so the cost is linear in the number of
        components, not in components times history.
        """
        components: list[dict[str, str]] = []
        seen: set[str] = set()
        interval = self._heartbeat_interval_s

        for row in snapshot["outbox"]["streams"]:
            name = f"outbox:{row['stream']}"
            seen.add(name)
            samples = self._record(name, now, row["unpublished"], row["published"])
            row["publish_rate_per_s"] = self._rate(samples)
            backlog = trend(samples, unit="events", window_s=self.window_s, now=now)
            components.append(_component(name, "outbox", backlog))

        for relay in snapshot["relays"]:
            name = f"relay:{relay['instance']}"
            if relay["stopped"]:
                components.append(_component(name, "relay", Status("OK", "stopped cleanly")))
                continue
            status: Status | None = heartbeat(relay["heartbeat_age_s"], interval, name="relay")
            if status is None and relay["stream_errors"]:
                stopped = ", ".join(f"{k}: {v}" for k, v in relay["stream_errors"].items())
                status = Status("ERR", f"streams stopped: {stopped}")
            if status is None and relay.get("republishing"):
                services = ", ".join(sorted(relay["republishing"]))
                status = Status("WARN", f"publishing again events Redis lost: {services}")
            if status is None and relay.get("last_error"):
                status = Status("WARN", f"last error: {relay['last_error']}")
            components.append(_component(name, "relay", status or Status("OK", "heartbeat fresh")))

        for stream in snapshot["streams"]:
            if stream.get("error"):
                name = f"stream:{stream['key']}"
                components.append(_component(name, "stream", Status("ERR", stream["error"])))
            for group in stream["groups"]:
                name = f"group:{stream['key']}/{group['name']}"
                seen.add(name)
                # Progress: entries delivered to the group (its read counter, else the id time).
                progress = group["entries_read"]
                if progress is None:
                    progress = redis_stats.id_ms(group["last_delivered_id"]) or 0
                behind = group["lag_entries"] + group["pending"]
                samples = self._record(name, now, behind, progress)
                lag = trend(samples, unit="entries", window_s=self.window_s, now=now)
                components.append(_component(name, "group", lag))

        for projection in snapshot["projections"]:
            name = f"projection:{projection['name']}"
            seen.add(name)
            samples = self._record(name, now, 0, projection["processed"])
            projection["processing_rate_per_s"] = self._rate(samples)
            projection["window"] = self._window(name, now, projection)
            for consumer in projection["consumers"]:
                lost = heartbeat(
                    consumer["heartbeat_age_s"], interval, name=f"consumer {consumer['consumer']}"
                )
                if lost is not None and not consumer["stopped"]:
                    components.append(
                        _component(f"{name}/{consumer['consumer']}", "consumer", lost)
                    )

        for consumer in snapshot["consumers"]:
            name = client_component(consumer)
            seen.add(name)
            samples = self._record(name, now, 0, consumer["processed"])
            consumer["processing_rate_per_s"] = self._rate(samples)
            if consumer["stopped"]:
                continue
            beat = heartbeat(
                consumer["heartbeat_age_s"],
                consumer["heartbeat_interval_s"],
                name=f"consumer {consumer['consumer']}",
            )
            components.append(_component(name, "consumer", beat or Status("OK", "heartbeat fresh")))

        blocker = snapshot["outbox"].get("oldest_write_transaction")
        if blocker and blocker["age_s"] > HOLDBACK_WARN_S:
            holds = (
                "is deferred: the relay publishes past it, its own events wait for it"
                if blocker.get("deferred")
                else "holds the relay back"
            )
            components.append(
                _component(
                    "postgres:horizon",
                    "outbox",
                    Status(
                        "WARN",
                        f"{_who(blocker)} ({blocker['database']}) open for "
                        f"{blocker['age_s']:.0f} s {holds}",
                    ),
                )
            )
        for gone in set(self.samples) - seen:
            del self.samples[gone]
        for gone in set(self.projection_counts) - seen:
            del self.projection_counts[gone]
        overall = worst([Status(c["level"], c["reason"]) for c in components])  # type: ignore[arg-type]
        return {"overall": overall.as_dict(), "components": components}


def client_component(consumer: dict[str, Any]) -> str:
    """The status component of a client consumer (a tenant's: ``client:tenant:<t>/…``)."""
    tenant = consumer.get("tenant")
    scope = f"tenant:{tenant}/" if tenant else ""
    return f"client:{scope}{consumer['group']}/{consumer['consumer']}"


def _dead_letter_count(stats: StreamStats | None) -> dict[str, int]:
    return {
        "count": stats.length if stats else 0,
        "added": (stats.entries_added or 0) if stats else 0,
    }


def _component(name: str, kind: str, status: Status) -> dict[str, str]:
    return {"component": name, "kind": kind, **status.as_dict()}


def _db_number(url: str) -> int:
    tail = url.split("?", 1)[0].rsplit("/", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else 0


def _who(blocker: dict[str, Any]) -> str:
    if blocker["pid"] is None:
        return f"prepared transaction {blocker['gid']!r}"
    return f"write transaction pid {blocker['pid']}"
