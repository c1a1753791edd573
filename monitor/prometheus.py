"""``GET /metrics``: the snapshot in Prometheus text format.

Stream and server metrics use redis_exporter's names (``redis_stream_length``,
``redis_stream_group_messages_pending``, ``redis_stream_group_consumer_idle_seconds``,
``redis_commands_processed_total``, …, labels ``db``, ``stream``, ``group``, ``consumer``);
the rest are ``outbox_*`` and ``projection_*`` with base units in the name (``_seconds``,
``_total``). What grows is a counter, never a rate: Prometheus takes ``rate()`` over the window
a query asks for. The output passes ``promtool check metrics``. No event or correlation id is
ever a label (unbounded cardinality).

Tenants' streams (TENANT_STREAMS) are not series of their own: a stream, group and consumer
label per tenant would multiply the series by the number of tenants. Each tenant gets
``outbox_tenant_*`` series instead, labelled ``tenant`` (and ``group``): tenants times groups
series at most, documented in docs/monitor.md#tenants.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from outbox.streams.codec import entry_ms

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LEVELS = {"OK": 0, "WARN": 1, "ERR": 2}


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class SnapshotCollector(Collector):
    """Turns the latest snapshot (a dict) into metric families on each scrape."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot
        db = f"db{snap.get('redis_db', 0)}"  # redis_exporter's form

        length = _gauge("redis_stream_length", "Number of entries in the stream", ["db", "stream"])
        groups = _gauge("redis_stream_groups", "Consumer groups of the stream", ["db", "stream"])
        last_ms = _gauge(
            "redis_stream_last_generated_id",
            "Millisecond part of the stream's last generated id",
            ["db", "stream"],
        )
        pending = _gauge(
            "redis_stream_group_messages_pending",
            "Entries delivered to the group and not acknowledged",
            ["db", "stream", "group"],
        )
        consumers = _gauge(
            "redis_stream_group_consumers", "Consumers of the group", ["db", "stream", "group"]
        )
        lag = _gauge(
            "redis_stream_group_lag",
            "Entries of the stream not yet delivered to the group",
            ["db", "stream", "group"],
        )
        lag_s = _gauge(
            "projection_lag_seconds",
            "Age of the oldest entry not yet delivered to the group",
            ["stream", "group"],
        )
        oldest_pending = _gauge(
            "projection_oldest_pending_seconds",
            "Age of the oldest delivered but unacknowledged entry",
            ["stream", "group"],
        )
        consumer_pending = _gauge(
            "redis_stream_group_consumer_messages_pending",
            "Entries pending for the consumer",
            ["db", "stream", "group", "consumer"],
        )
        consumer_idle = _gauge(
            "redis_stream_group_consumer_idle_seconds",
            "Seconds since the consumer last interacted",
            ["db", "stream", "group", "consumer"],
        )
        for stream in snap.get("streams", []):
            if not stream.get("exists") or stream.get("tenant"):
                continue
            key = stream["key"]
            length.add_metric([db, key], stream["length"])
            groups.add_metric([db, key], len(stream["groups"]))
            last_ms.add_metric([db, key], entry_ms(stream["last_generated_id"]))
            for group in stream["groups"]:
                labels = [db, key, group["name"]]
                pending.add_metric(labels, group["pending"])
                consumers.add_metric(labels, len(group["consumers"]))
                lag.add_metric(labels, group["lag_entries"])
                lag_s.add_metric([key, group["name"]], group["lag_seconds"])
                oldest_pending.add_metric([key, group["name"]], group["oldest_pending_age_s"])
                for consumer in group["consumers"]:
                    consumer_pending.add_metric([*labels, consumer["name"]], consumer["pending"])
                    consumer_idle.add_metric(
                        [*labels, consumer["name"]], consumer["idle_ms"] / 1000
                    )
        yield from (
            length,
            groups,
            last_ms,
            pending,
            consumers,
            lag,
            lag_s,
            oldest_pending,
            consumer_pending,
            consumer_idle,
        )

        unpublished = _gauge(
            "outbox_unpublished_events", "Committed events not yet published", ["stream"]
        )
        oldest = _gauge(
            "outbox_oldest_unpublished_age_seconds",
            "Age of the oldest unpublished event (database clock)",
            ["stream"],
        )
        published_to = CounterMetricFamily(
            "outbox_published_events",
            "Entries ever added to the service's streams (XINFO STREAM entries-added)",
            labels=["stream"],
        )
        for row in snap.get("outbox", {}).get("streams", []):
            unpublished.add_metric([row["stream"]], row["unpublished"])
            oldest.add_metric([row["stream"]], row["oldest_unpublished_age_s"] or 0.0)
            published_to.add_metric([row["stream"]], row["published"])
        yield from (unpublished, oldest, published_to)

        holdback = _gauge(
            "outbox_oldest_write_transaction_age_seconds",
            "Age of the oldest write transaction of the outbox's database, running or prepared "
            "(holds the relay's horizon back until deferred)",
            [],
        )
        blocker = snap.get("outbox", {}).get("oldest_write_transaction")
        holdback.add_metric([], blocker["age_s"] if blocker else 0.0)
        yield holdback
        deferred = _gauge(
            "outbox_deferred_transactions",
            "Write transactions of the outbox's database the relays have deferred: they publish "
            "past them, and their events when they end (decision 0020)",
            [],
        )
        deferred.add_metric([], snap.get("outbox", {}).get("deferred_transactions", 0))
        yield deferred

        heartbeat = _gauge(
            "outbox_relay_heartbeat_age_seconds", "Seconds since the relay's heartbeat", ["relay"]
        )
        published = CounterMetricFamily(
            "outbox_relay_published_events", "Events published by the relay", labels=["relay"]
        )
        redis_losses = CounterMetricFamily(
            "outbox_relay_redis_losses",
            "Times the relay found that Redis had lost events it acknowledged (it publishes them"
            " again)",
            labels=["relay"],
        )
        for relay in snap.get("relays", []):
            # A relay that stopped cleanly has no heartbeat to age: its series ends, so an alert
            # on the age means "died", not "was stopped by a deploy".
            if not relay.get("stopped"):
                heartbeat.add_metric([relay["instance"]], relay["heartbeat_age_s"])
            published.add_metric([relay["instance"]], relay["published"])
            redis_losses.add_metric([relay["instance"]], relay.get("redis_losses", 0))
        yield from (heartbeat, published, redis_losses)

        processed = CounterMetricFamily(
            "projection_events_processed",
            "Events applied by the projection's consumers",
            labels=["projection"],
        )
        failures = CounterMetricFamily(
            "projection_handler_failures",
            "Handler failures (each retried or dead-lettered)",
            labels=["projection"],
        )
        retries = CounterMetricFamily(
            "projection_retries",
            "Failed deliveries that were retried",
            labels=["projection"],
        )
        dead_lettered = CounterMetricFamily(
            "projection_dead_lettered_events",
            "Events sent to the dead-letter stream",
            labels=["projection"],
        )
        consumer_heartbeat = _gauge(
            "projection_consumer_heartbeat_age_seconds",
            "Seconds since the consumer's heartbeat",
            ["projection", "consumer"],
        )
        # Computed from the database (the inbox's applied_at against the outbox's occurred_at),
        # not observed by this process: a gauge per statistic. Not a "quantile" label: that one
        # belongs to summaries, whose _count and _sum must be counters (promtool refuses it on
        # a gauge).
        latency = _gauge(
            "projection_processing_latency_seconds",
            "From emit() to the apply's commit over the newest events the projection applied"
            " within the monitor's window, by statistic (p50, p95, max)",
            ["projection", "statistic"],
        )
        for projection in snap.get("projections", []):
            figures = projection.get("processing_latency")
            if figures:
                for statistic in ("p50", "p95", "max"):
                    latency.add_metric([projection["name"], statistic], figures[f"{statistic}_s"])
            processed.add_metric([projection["name"]], projection["processed"])
            failures.add_metric([projection["name"]], projection["failures"])
            retries.add_metric([projection["name"]], projection["retries"])
            dead_lettered.add_metric([projection["name"]], projection["dead_lettered"])
            for consumer in projection["consumers"]:
                if consumer.get("stopped"):
                    continue  # as for relays: stopped cleanly, no heartbeat to age
                consumer_heartbeat.add_metric(
                    [projection["name"], consumer["consumer"]], consumer["heartbeat_age_s"]
                )
        yield from (processed, failures, retries, dead_lettered, consumer_heartbeat, latency)

        client_processed = CounterMetricFamily(
            "outbox_client_consumer_processed",
            "Messages acknowledged by a RedisStreamsClient consumer",
            labels=["group", "consumer"],
        )
        client_dead = CounterMetricFamily(
            "outbox_client_consumer_dead_lettered",
            "Messages a RedisStreamsClient consumer sent to the dead-letter stream",
            labels=["group", "consumer"],
        )
        client_heartbeat = _gauge(
            "outbox_client_consumer_heartbeat_age_seconds",
            "Seconds since the RedisStreamsClient consumer's heartbeat (Redis clock)",
            ["group", "consumer"],
        )
        for consumer in snap.get("consumers", []):
            labels = [consumer["group"], consumer["consumer"]]
            client_processed.add_metric(labels, consumer["processed"])
            client_dead.add_metric(labels, consumer["dead_lettered"])
            if not consumer["stopped"] and consumer["heartbeat_age_s"] is not None:
                client_heartbeat.add_metric(labels, consumer["heartbeat_age_s"])
        yield from (client_processed, client_dead, client_heartbeat)

        letters = snap.get("dead_letters", {})
        dead = _gauge("projection_dead_letters", "Entries in the dead-letter stream", [])
        dead.add_metric([], letters.get("count", 0))
        yield dead
        added = CounterMetricFamily(
            "outbox_dead_letters_added",
            "Entries ever added to the dead-letter stream, by any consumer",
            labels=[],
        )
        added.add_metric([], letters.get("added", 0))
        yield added

        yield from _tenant_metrics(snap)

        status = _gauge(
            "outbox_component_status",
            "0 OK, 1 WARN, 2 ERR per monitored component (not tenants' streams and consumers:"
            " see outbox_tenant_*)",
            ["component"],
        )
        tenant_keys = tuple(
            prefix
            for s in snap.get("streams", [])
            if s.get("tenant")
            for prefix in (f"group:{s['key']}/", f"stream:{s['key']}")
        )
        for component in snap.get("status", {}).get("components", []):
            name = component["component"]
            if name.startswith(tenant_keys) or name.startswith("client:tenant:"):
                continue
            status.add_metric([name], _LEVELS[component["level"]])
        yield status

        redis = snap.get("redis", {})
        if redis:
            for name, doc, key in (
                ("redis_memory_used_bytes", "Memory used by Redis", "used_memory_bytes"),
                ("redis_connected_clients", "Connected clients", "connected_clients"),
                ("redis_uptime_in_seconds", "Redis uptime", "uptime_seconds"),
            ):
                metric = _gauge(name, doc, [])
                metric.add_metric([], redis.get(key) or 0)
                yield metric
            # Not INFO's instantaneous_ops_per_sec (Redis's own rate over its last ~1.6 s): the
            # counter gives ops/s over any window, rate(redis_commands_processed_total[5m]).
            commands = CounterMetricFamily(
                "redis_commands_processed",
                "Commands processed by Redis (INFO total_commands_processed; on a cluster, summed"
                " over the primaries)",
                labels=[],
            )
            commands.add_metric([], redis.get("total_commands_processed") or 0)
            yield commands
            # redis_exporter's names; the hit ratio over a window is
            # rate(hits) / (rate(hits) + rate(misses)).
            for name, doc, key in (
                ("redis_keyspace_hits", "Successful key lookups (INFO keyspace_hits)", "hits"),
                ("redis_keyspace_misses", "Failed key lookups (INFO keyspace_misses)", "misses"),
            ):
                lookups = CounterMetricFamily(name, doc, labels=[])
                lookups.add_metric([], redis.get(f"keyspace_{key}") or 0)
                yield lookups
            nodes = redis.get("nodes") or []
            if nodes:  # a Redis Cluster: each primary on its own
                up = _gauge("outbox_redis_node_up", "1 when a cluster primary answered", ["node"])
                memory = _gauge(
                    "outbox_redis_node_memory_used_bytes",
                    "Memory used by one Redis Cluster primary",
                    ["node"],
                )
                for node in nodes:
                    up.add_metric([node["node"]], 0 if node.get("error") else 1)
                    if not node.get("error"):
                        memory.add_metric([node["node"]], node.get("used_memory_bytes") or 0)
                yield up
                yield memory


def _tenant_metrics(snap: dict[str, Any]) -> Iterable[Metric]:
    """Per tenant: entries in its streams, per group its lag and pending entries over all of
    them, its dead letters and its unpublished events."""
    length = _gauge(
        "outbox_tenant_stream_entries", "Entries in the tenant's event streams", ["tenant"]
    )
    lag = _gauge(
        "outbox_tenant_group_lag",
        "Entries of the tenant's streams not yet delivered to the group",
        ["tenant", "group"],
    )
    pending = _gauge(
        "outbox_tenant_group_messages_pending",
        "Entries of the tenant's streams delivered to the group and not acknowledged",
        ["tenant", "group"],
    )
    lag_s = _gauge(
        "outbox_tenant_group_lag_seconds",
        "Age of the oldest entry of the tenant's streams not yet delivered to the group",
        ["tenant", "group"],
    )
    entries: dict[str, int] = {}
    groups: dict[tuple[str, str], list[float]] = {}
    for stream in snap.get("streams", []):
        tenant = stream.get("tenant")
        if (
            not tenant
            or not stream.get("exists")
            or stream["key"].endswith((":dead_letter:events", ":{dead_letter}:events"))
        ):
            continue
        entries[tenant] = entries.get(tenant, 0) + stream["length"]
        for group in stream["groups"]:
            figures = groups.setdefault((tenant, group["name"]), [0, 0, 0.0])
            figures[0] += group["lag_entries"]
            figures[1] += group["pending"]
            figures[2] = max(figures[2], group["lag_seconds"])
    for tenant, count in sorted(entries.items()):
        length.add_metric([tenant], count)
    for (tenant, name), (behind, unacked, seconds) in sorted(groups.items()):
        lag.add_metric([tenant, name], behind)
        pending.add_metric([tenant, name], unacked)
        lag_s.add_metric([tenant, name], seconds)
    dead = _gauge(
        "outbox_tenant_dead_letters", "Entries in the tenant's dead-letter stream", ["tenant"]
    )
    unpublished = _gauge(
        "outbox_tenant_unpublished_events",
        "The tenant's committed events not yet published (each service counted up to a cap)",
        ["tenant"],
    )
    for summary in snap.get("tenants", []):
        dead.add_metric([summary["tenant"]], summary["dead_letters"]["count"])
        unpublished.add_metric([summary["tenant"]], summary["unpublished"])
    yield from (length, lag, pending, lag_s, dead, unpublished)


def render(snapshot: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)
