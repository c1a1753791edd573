"""What the shipped metrics are, for the tests of the alert rules and the Grafana dashboard
(registered in tests/conftest.py).

- ``exported``: every metric name a Prometheus scraping the monitor and the daemons would hold,
  each with its label names: the monitor's live ``/metrics`` over a pipeline with data (a relay,
  projections, one of them failing into dead letters, a client consumer), and the daemons'
  metric definitions (``RelayMetrics``, ``ProjectionMetrics``), counters with ``_total``,
  histograms with ``_bucket`` (label ``le``), ``_sum`` and ``_count``.
- ``selectors``, ``unknown_uses``: what a PromQL expression selects, and what of it (metric
  names, label names in matchers and in ``by``/``without``/``on``/``ignoring``/``group_*``) is
  not exported.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import promql_parser
import pytest
from prometheus_client import Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from outbox.metrics import Histogram, ProjectionMetrics, RelayMetrics
from outbox.projections.examples import user_directory
from outbox.projections.projection import Projection
from outbox.settings import Settings
from outbox.streams.client import RedisStreamsClient
from outbox.streams.codec import StreamMessage
from tests.fixtures_monitor import MonitorFactory
from tests.fixtures_projections import Runner
from tests.fixtures_relay import StartRelay, emit_events, wait_until

#: Prometheus's own series for each scrape target, not any process's.
SCRAPE_METRICS = {"up": {"job", "instance"}}
#: Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"job", "instance"}

Exported = dict[str, set[str]]


def daemon_metrics() -> Exported:
    """The relay's and ``outbox project``'s metrics as their registries define them."""
    exported: Exported = {}
    for holder in (RelayMetrics(), ProjectionMetrics()):
        for metric in vars(holder).values():
            if isinstance(metric, Histogram):
                labels = set(metric.labels)
                exported[metric.name + "_bucket"] = labels | {"le"}
                exported[metric.name + "_sum"] = labels
                exported[metric.name + "_count"] = labels
            elif isinstance(metric, Counter):
                # prometheus_client keeps a metric's name and label names in these attributes.
                exported[metric._name + "_total"] = set(metric._labelnames)
            elif isinstance(metric, Gauge):
                exported[metric._name] = set(metric._labelnames)
    return exported


def scraped(text: str) -> Exported:
    """The names and label names of an exposition (samples, and their families' names)."""
    exported: Exported = {}
    for family in text_string_to_metric_families(text):
        exported.setdefault(family.name, set())
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
            exported[family.name].update(sample.labels)
    return exported


def selectors(node: Any) -> Iterator[str]:
    """The metric names a PromQL expression selects (promql_parser's AST)."""
    for name, _ in _selections(node):
        yield name


def _selections(node: Any) -> Iterator[tuple[str, set[str]]]:
    """Each vector selector: its metric name and the label names of its matchers."""
    if type(node).__name__ == "VectorSelector":
        yield node.name, {m.name for m in node.matchers.matchers}
        return
    for child in _children(node):
        yield from _selections(child)


def _children(node: Any) -> Iterator[Any]:
    for attr in ("lhs", "rhs", "expr", "args", "vector_selector", "param"):
        child = getattr(node, attr, None)
        for item in child if isinstance(child, list) else [child]:
            if item is not None:
                yield item


def _groupings(node: Any) -> Iterator[tuple[Any, set[str]]]:
    """Each node that groups or matches by label names, with those names."""
    modifier = getattr(node, "modifier", None)
    names: set[str] = set()
    if type(node).__name__ == "AggregateExpr" and modifier is not None:
        names |= set(modifier.labels)
    if type(node).__name__ == "BinaryExpr" and modifier is not None:
        if modifier.matching is not None:
            names |= set(modifier.matching.labels)
        names |= set(modifier.group_labels or [])
    if names:
        yield node, names
    for child in _children(node):
        yield from _groupings(child)


def unknown_uses(expr: str, exported: Exported) -> list[str]:
    """What ``expr`` uses that nothing exports, in words; empty when all of it is exported."""
    tree = promql_parser.parse(expr)
    known = {**exported, **SCRAPE_METRICS}
    problems = []
    for name, matched in _selections(tree):
        if name not in known:
            problems.append(f"metric {name} is not exported")
        elif unknown := matched - known[name] - TARGET_LABELS:
            problems.append(f"{name} has no label {sorted(unknown)}")
    for node, names in _groupings(tree):
        carried = set().union(*(known.get(n, set()) for n, _ in _selections(node)))
        if unknown := names - carried - TARGET_LABELS:
            problems.append(f"no metric under {node.prettify()!r} has label {sorted(unknown)}")
    return problems


@pytest.fixture
async def exported(
    monitor_server: MonitorFactory,
    start_relay: StartRelay,
    running: Runner,
    projection_settings: Settings,
    asyncpg_conn: asyncpg.Connection,
) -> Exported:
    """What the monitor (live, with data) and the daemons export (see the module doc)."""
    failing = Projection("metrics_failing", streams=["identity"])

    @failing.on("thing_happened")
    async def broken(event: StreamMessage, db: Any) -> None:
        raise RuntimeError("handler bug")

    await emit_events(asyncpg_conn, 20, services=("identity",))
    async with (
        monitor_server(refresh_interval_s=0.2) as live,
        start_relay(),
        running([user_directory, failing], projection_settings),
        RedisStreamsClient(prefix=projection_settings.stream_prefix) as client,
    ):
        # A consumer of the document's client, running: its heartbeat is a series.
        await client.consume_messages(["assets"], "worker-1", block_time=0)

        async def every_kind_of_series() -> bool:
            # A relay, consumers, groups, latencies and dead letters with samples, so their
            # labels can be checked.
            text = (await live.http.get("/metrics")).text
            dead = 'projection_dead_lettered_events_total{projection="metrics_failing"} 20.0'
            return dead in text and all(
                f"{name}{{" in text
                for name in (
                    "outbox_relay_heartbeat_age_seconds",
                    "projection_consumer_heartbeat_age_seconds",
                    "outbox_client_consumer_heartbeat_age_seconds",
                    "projection_lag_seconds",
                    "projection_processing_latency_seconds",
                )
            )

        await wait_until(every_kind_of_series, what="relay, consumer and group series")
        text = (await live.http.get("/metrics")).text
    exported = daemon_metrics()
    for name, labels in scraped(text).items():
        exported.setdefault(name, set()).update(labels)
    return exported
