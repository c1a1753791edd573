"""The daemons' own metrics: what the relay and the projection consumers of one process did.

The monitor's ``/metrics`` is the fleet's view, read from PostgreSQL and Redis; these are each
process's counters and histograms, served by :mod:`outbox.probes` on the process's own port
(``RELAY_METRICS_PORT``, ``PROJECTION_METRICS_PORT``). Names follow Prometheus's conventions:
base units in the name, counters end in ``_total``, no event or correlation id as a label.

Latencies are observed per event. prometheus_client's Histogram takes a lock and walks its
buckets for each value; at the relay's tens of thousands of events a second that is a visible
share of a core, so :class:`Histogram` here counts a batch's values with ``bisect`` and no lock
(every observer runs on the process's one event loop) and is rendered on scrape.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from outbox.streams.codec import entry_ms

if TYPE_CHECKING:
    from outbox.projections.apply import Outcome

#: Seconds from an event's emit (or XADD) to its publish (or apply): 1 ms to 10 min.
LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    600.0,
)
#: Seconds one publish round, batch apply or handler call takes: 0.1 ms to 10 s.
DURATION_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)
#: Events in one batch.
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


@dataclass
class _Series:
    counts: list[int]
    total: float = 0.0


@dataclass(eq=False)  # collectors are dict keys of their registry: hashed by identity
class Histogram(Collector):
    """A histogram per label values, observed in bulk (see the module doc)."""

    name: str
    documentation: str
    labels: tuple[str, ...]
    buckets: Sequence[float]
    _series: dict[tuple[str, ...], _Series] = field(default_factory=dict)

    def _of(self, labels: tuple[str, ...]) -> _Series:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series([0] * (len(self.buckets) + 1))
        return series

    def observe(self, value: float, *labels: str) -> None:
        series = self._of(labels)
        series.counts[bisect.bisect_left(self.buckets, value)] += 1
        series.total += value

    def observe_many(self, values: Iterable[float], *labels: str) -> None:
        # Sorted once (in C), then one bisection per bucket bound instead of one per value.
        ordered = sorted(values)
        if not ordered:
            return
        series = self._of(labels)
        counts, below = series.counts, 0
        for index, bound in enumerate(self.buckets):
            upto = bisect.bisect_right(ordered, bound)  # values <= bound
            counts[index] += upto - below
            below = upto
        counts[-1] += len(ordered) - below
        series.total += sum(ordered)

    def count(self, *labels: str) -> int:
        series = self._series.get(labels)
        return sum(series.counts) if series else 0

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))
        for labels, series in sorted(self._series.items()):
            cumulative, rows = 0, []
            for bound, count in zip([*self.buckets, math.inf], series.counts, strict=True):
                cumulative += count
                rows.append(("+Inf" if bound == math.inf else repr(float(bound)), cumulative))
            family.add_metric(list(labels), rows, series.total)
        yield family


def _counter(registry: CollectorRegistry, name: str, documentation: str, *labels: str) -> Counter:
    return Counter(name, documentation, labels, registry=registry)


def _histogram(
    registry: CollectorRegistry,
    name: str,
    documentation: str,
    labels: tuple[str, ...],
    buckets: Sequence[float],
) -> Histogram:
    histogram = Histogram(name, documentation, labels, buckets)
    registry.register(histogram)
    return histogram


class RelayMetrics:
    """One relay's metrics (outbox/relay/daemon.py observes them)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.published = _counter(
            r,
            "outbox_relay_events_published",
            "Events this relay added to their streams",
            "service",
        )
        self.skipped = _counter(
            r,
            "outbox_relay_events_skipped",
            "Events of a batch their stream already held (the watermark skipped them)",
            "service",
        )
        self.errors = _counter(
            r,
            "outbox_relay_errors",
            "Failed batch rounds, by what failed (database, redis, unexpected)",
            "kind",
        )
        self.leased = Gauge(
            "outbox_relay_leased_services", "Services this relay holds the lease of", registry=r
        )
        self.batch_size = _histogram(
            r,
            "outbox_relay_batch_size",
            "Events in one service's batch",
            ("service",),
            SIZE_BUCKETS,
        )
        self.publish_duration = _histogram(
            r,
            "outbox_relay_publish_duration_seconds",
            "One publish round: every ready service's batch to Redis and the replies",
            (),
            DURATION_BUCKETS_S,
        )
        self.emit_to_publish = _histogram(
            r,
            "outbox_relay_emit_to_publish_seconds",
            "From emit() (the row's occurred_at) to the event's XADD: commit to XADD, plus what "
            "the emitting transaction still did after emit()",
            ("service",),
            LATENCY_BUCKETS_S,
        )


class ProjectionMetrics:
    """The metrics of every projection consumer of one process (outbox/projections/worker.py)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.applied = _counter(
            r,
            "projection_events_applied",
            "Events applied to the read model (their handler ran and committed)",
            "projection",
        )
        self.duplicates = _counter(
            r,
            "projection_duplicates_skipped",
            "Deliveries of events the projection had already applied (the inbox skipped them)",
            "projection",
        )
        self.unhandled = _counter(
            r,
            "projection_events_unhandled",
            "Events of types the projection has no handler for (acknowledged, not applied)",
            "projection",
        )
        self.retries = _counter(
            r,
            "projection_retries_scheduled",
            "Failed events this process scheduled for another attempt",
            "projection",
        )
        self.dead_letters = _counter(
            r,
            "projection_dead_letters",
            "Events sent to the dead letters, by reason "
            "(malformed, retries_exhausted, upcast_failed, decrypt_failed)",
            "projection",
            "reason",
        )
        self.handler_duration = _histogram(
            r,
            "projection_handler_duration_seconds",
            "One handler call (an on_batch handler's call counts once)",
            ("projection", "event_type"),
            DURATION_BUCKETS_S,
        )
        self.batch_duration = _histogram(
            r,
            "projection_batch_apply_duration_seconds",
            "Applying one delivered batch: inbox claim, handlers and commit",
            ("projection",),
            DURATION_BUCKETS_S,
        )
        self.xadd_to_apply = _histogram(
            r,
            "projection_xadd_to_apply_seconds",
            "From the entry's XADD (its id's time, Redis's clock) to its apply's commit",
            ("projection",),
            LATENCY_BUCKETS_S,
        )
        self.emit_to_apply = _histogram(
            r,
            "projection_emit_to_apply_seconds",
            "Processing latency: from emit() (occurred_at) to the apply's commit",
            ("projection",),
            LATENCY_BUCKETS_S,
        )

    def batch_applied(self, projection: str, outcome: Outcome, seconds: float) -> None:
        """What one applied batch did; latencies of the applied events, measured now."""
        self.batch_duration.observe(seconds, projection)
        if outcome.applied:
            self.applied.labels(projection).inc(len(outcome.applied))
            now = time.time()
            self.xadd_to_apply.observe_many(
                (now - entry_ms(m.id) / 1000 for m in outcome.applied if m.id), projection
            )
            self.emit_to_apply.observe_many(
                (now - m.timestamp for m in outcome.applied if m.timestamp), projection
            )
        if outcome.duplicates:
            self.duplicates.labels(projection).inc(len(outcome.duplicates))
        if outcome.skipped:
            self.unhandled.labels(projection).inc(len(outcome.skipped))
        for event_type, handler_s in outcome.handler_seconds:
            self.handler_duration.observe(handler_s, projection, event_type)
