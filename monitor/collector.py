"""Collects one snapshot of everything the monitor shows, and keeps a short history of them.

A snapshot costs one PostgreSQL round trip per source (outbox, relays, projections) and two
pipelined Redis round trips (``monitor/redis_stats.py``), whatever the number of streams. The
history (``MONITOR_WINDOW``) gives rates and the trend-based statuses.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
import redis.asyncio as aioredis

from monitor import redis_stats, sources
from monitor.status import Sample, Status, heartbeat, trend, worst
from outbox.settings import Settings
from streams.keys import Keys


class Clock(Protocol):
    def __call__(self) -> float: ...


class Collector:
    """Builds snapshots; ``latest()`` reuses one younger than ``max_age_s``."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.keys = Keys(settings.stream_prefix)
        self.clock = clock
        self.window_s = settings.monitor_window_s
        self.history: deque[tuple[float, dict[str, Any]]] = deque()
        self._latest: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()
        self.configured_services = [
            s.strip() for s in settings.monitor_services.split(",") if s.strip()
        ]

    async def latest(self, max_age_s: float = 1.0) -> dict[str, Any]:
        async with self._lock:
            if self._latest and self.clock() - self._latest[0] <= max_age_s:
                return self._latest[1]
            snapshot = await self.collect()
            return snapshot

    async def collect(self) -> dict[str, Any]:
        started = self.clock()
        async with self.pool.acquire() as conn:
            outbox = await sources.outbox_side(conn)
            relays = await sources.relay_side(conn)
            projections = await sources.projection_side(conn)
        services = sorted(
            set(self.configured_services)
            | {row["stream"] for row in outbox["streams"]}
            | {stream for relay in relays for stream in relay.get("streams", [])}
        )
        keys = [key for service in services for key in self.keys.streams_of(service)]
        keys += [self.keys.dead_letter, self.keys.metrics]
        redis_now, streams = await redis_stats.collect(self.redis, keys)
        server = await redis_stats.server_info(self.redis)
        dead_letter = next((s for s in streams if s.key == self.keys.dead_letter), None)
        # Published per service: entries ever added to its streams (XINFO STREAM entries-added),
        # exact and cheap; the relay's watermark keeps re-publishes out of it.
        added = {s.key: s.entries_added or 0 for s in streams}
        for row in outbox["streams"]:
            row["published"] = sum(added.get(k, 0) for k in self.keys.streams_of(row["stream"]))
        snapshot: dict[str, Any] = {
            "at": datetime.now(UTC).isoformat(),
            "db_now": outbox["db_now"],
            "redis_now": redis_now,
            "prefix": self.settings.stream_prefix,
            "redis_db": _db_number(self.settings.redis_streams_url.get_secret_value()),
            "outbox": outbox,
            "relays": relays,
            "streams": [asdict(s) for s in streams if s.exists or s.error],
            "projections": projections,
            "dead_letters": {"count": dead_letter.length if dead_letter else 0},
            "redis": server,
        }
        now = self.clock()
        self._add_rates(snapshot, now)
        snapshot["status"] = self._statuses(snapshot, now)
        snapshot["collect_ms"] = round((self.clock() - started) * 1000, 2)
        self.history.append((now, snapshot))
        while self.history and self.history[0][0] < now - self.window_s:
            self.history.popleft()
        self._latest = (now, snapshot)
        return snapshot

    def _oldest(self, now: float) -> tuple[float, dict[str, Any]] | None:
        return self.history[0] if self.history and self.history[0][0] < now else None

    def _add_rates(self, snapshot: dict[str, Any], now: float) -> None:
        """Per-second rates from the oldest snapshot still in the window."""
        oldest = self._oldest(now)
        span = now - oldest[0] if oldest else 0.0
        before = oldest[1] if oldest else {}
        published_before = {r["stream"]: r["published"] for r in _get(before, "outbox", "streams")}
        for row in snapshot["outbox"]["streams"]:
            earlier = published_before.get(row["stream"])
            row["publish_rate_per_s"] = (
                round((row["published"] - earlier) / span, 2)
                if span > 0 and earlier is not None
                else None
            )
        processed_before = {p["name"]: p for p in before.get("projections", [])}
        for projection in snapshot["projections"]:
            earlier_p = processed_before.get(projection["name"])
            projection["processing_rate_per_s"] = (
                round(max(0, projection["processed"] - earlier_p["processed"]) / span, 2)
                if span > 0 and earlier_p
                else None
            )

    def _statuses(self, snapshot: dict[str, Any], now: float) -> dict[str, Any]:
        components: list[dict[str, str]] = []
        history = [*self.history, (now, snapshot)]

        def series(extract: Any) -> list[Sample]:
            out = []
            for at, snap in history:
                value = extract(snap)
                if value is not None:
                    out.append(Sample(at, *value))
            return out

        for row in snapshot["outbox"]["streams"]:
            stream = row["stream"]

            def outbox_value(
                snap: dict[str, Any], stream: str = stream
            ) -> tuple[float, float] | None:
                for r in _get(snap, "outbox", "streams"):
                    if r["stream"] == stream:
                        return float(r["unpublished"]), float(r["published"])
                return None

            backlog = trend(series(outbox_value), unit="events", window_s=self.window_s, now=now)
            components.append(_component(f"outbox:{stream}", "outbox", backlog))

        interval = self.settings.refresh_interval_s
        for relay in snapshot["relays"]:
            if relay["stopped"]:
                components.append(
                    _component(
                        f"relay:{relay['instance']}", "relay", Status("OK", "stopped cleanly")
                    )
                )
                continue
            status: Status | None = heartbeat(
                relay["heartbeat_age_s"], max(interval, 5.0), name="relay"
            )
            if status is None and relay["stream_errors"]:
                stopped = ", ".join(f"{k}: {v}" for k, v in relay["stream_errors"].items())
                status = Status("ERR", f"streams stopped: {stopped}")
            if status is None and relay.get("last_error"):
                status = Status("WARN", f"last error: {relay['last_error']}")
            components.append(
                _component(
                    f"relay:{relay['instance']}", "relay", status or Status("OK", "heartbeat fresh")
                )
            )

        for stream in snapshot["streams"]:
            if stream.get("error"):
                components.append(
                    _component(f"stream:{stream['key']}", "stream", Status("ERR", stream["error"]))
                )
            for group in stream["groups"]:
                key, name = stream["key"], group["name"]

                def group_value(
                    snap: dict[str, Any], key: str = key, name: str = name
                ) -> tuple[float, float] | None:
                    for s in snap.get("streams", []):
                        if s["key"] == key:
                            for g in s["groups"]:
                                if g["name"] == name:
                                    behind = g["lag_entries"] + g["pending"]
                                    progress = redis_stats.id_ms(g["last_delivered_id"]) or 0
                                    return float(behind), float(progress) + float(
                                        g["entries_read"] or 0
                                    )
                    return None

                lag = trend(series(group_value), unit="entries", window_s=self.window_s, now=now)
                components.append(_component(f"group:{key}/{name}", "group", lag))

        for projection in snapshot["projections"]:
            for consumer in projection["consumers"]:
                lost = heartbeat(
                    consumer["heartbeat_age_s"],
                    max(interval, 5.0),
                    name=f"consumer {consumer['consumer']}",
                )
                if lost is not None and not consumer["stopped"]:
                    components.append(
                        _component(
                            f"projection:{projection['name']}/{consumer['consumer']}",
                            "consumer",
                            lost,
                        )
                    )

        blocker = snapshot["outbox"].get("oldest_write_transaction")
        if blocker and blocker["age_s"] > 60:
            components.append(
                _component(
                    "postgres:horizon",
                    "outbox",
                    Status(
                        "WARN",
                        f"write transaction pid {blocker['pid']} open for {blocker['age_s']:.0f} s "
                        "holds the relay back",
                    ),
                )
            )
        overall = worst([Status(c["level"], c["reason"]) for c in components])  # type: ignore[arg-type]
        return {"overall": overall.as_dict(), "components": components}


def _component(name: str, kind: str, status: Status) -> dict[str, str]:
    return {"component": name, "kind": kind, **status.as_dict()}


def _get(snapshot: dict[str, Any], *path: str) -> list[dict[str, Any]]:
    value: Any = snapshot
    for key in path:
        if not isinstance(value, dict):
            return []
        value = value.get(key, {})
    return value if isinstance(value, list) else []


def _db_number(url: str) -> int:
    tail = url.split("?", 1)[0].rsplit("/", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else 0
