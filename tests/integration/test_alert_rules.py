"""deploy/prometheus-alerts.yml against a live monitor: every rule parses, passes Prometheus's own
``promtool check rules``, uses only metrics the monitor exports, and names in its annotations
only labels those metrics carry."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families

from outbox.projections.examples import user_directory
from outbox.settings import Settings
from outbox.streams.client import RedisStreamsClient
from tests.fixtures_monitor import MonitorFactory
from tests.fixtures_projections import Runner
from tests.fixtures_promtool import promtool_check_rules
from tests.fixtures_relay import StartRelay, emit_events, wait_until

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-alerts.yml"
# Prometheus's own metric for the scrape target, not the monitor's.
SCRAPE_METRICS = {"up"}


def selectors(node: Any) -> Iterator[str]:
    """The metric names a PromQL expression selects (promql_parser's AST)."""
    if type(node).__name__ == "VectorSelector":
        yield node.name
        return
    for attr in ("lhs", "rhs", "expr", "args", "vector_selector", "param"):
        child = getattr(node, attr, None)
        for item in child if isinstance(child, list) else [child]:
            if item is not None:
                yield from selectors(item)


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_every_rule_is_complete_and_parses() -> None:
    found = rules()
    assert found
    names = [rule["alert"] for rule in found]
    assert len(names) == len(set(names))
    for rule in found:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert list(selectors(promql_parser.parse(rule["expr"]))), rule["alert"]


def test_promtool_accepts_the_rules() -> None:
    rc, output = promtool_check_rules(RULES)
    assert rc == 0, output
    assert f"SUCCESS: {len(rules())} rules found" in output


async def test_rules_use_what_the_monitor_exports(
    monitor_server: MonitorFactory,
    start_relay: StartRelay,
    running: Runner,
    projection_settings: Settings,
    asyncpg_conn: asyncpg.Connection,
) -> None:
    await emit_events(asyncpg_conn, 20, services=("identity",))
    async with (
        monitor_server(refresh_interval_s=0.2) as live,
        start_relay(),
        running([user_directory], projection_settings),
        RedisStreamsClient(prefix=projection_settings.stream_prefix) as client,
    ):
        # A consumer of the document's client, running: its heartbeat is a series.
        await client.consume_messages(["assets"], "worker-1", block_time=0)

        async def every_kind_of_series() -> bool:
            # A relay, a consumer and a group with samples, so their labels can be checked.
            text = (await live.http.get("/metrics")).text
            return all(
                f"{name}{{" in text
                for name in (
                    "outbox_relay_heartbeat_age_seconds",
                    "projection_consumer_heartbeat_age_seconds",
                    "outbox_client_consumer_heartbeat_age_seconds",
                    "projection_lag_seconds",
                    "projection_dead_lettered_events_total",
                )
            )

        await wait_until(every_kind_of_series, what="relay, consumer and group series")
        text = (await live.http.get("/metrics")).text
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        labels.setdefault(family.name, set())
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
            labels[family.name].update(sample.labels)
    for rule in rules():
        used = set(selectors(promql_parser.parse(rule["expr"]))) - SCRAPE_METRICS
        missing = used - labels.keys()
        assert not missing, f"{rule['alert']} uses metrics the monitor does not export: {missing}"
        carried = set().union(*(labels[name] for name in used)) if used else set()
        for text_ in rule["annotations"].values():
            for label in re.findall(r"\$labels\.(\w+)", text_):
                assert label in carried, f"{rule['alert']}: no metric in it has label {label!r}"
