"""deploy/grafana-dashboard.json: a Grafana dashboard that imports with any Prometheus data
source, whose every query Prometheus parses (``promtool check rules``) and uses only metrics and
labels the monitor (live, with data) or the daemons export."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from tests.fixtures_metrics import Exported, selectors, unknown_uses
from tests.fixtures_promtool import promtool_check_rules

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: Grafana's own variables in queries, and what Prometheus sees in their place.
GRAFANA_VARIABLES = {"$__rate_interval": "5m"}


def panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    return [p for p in found if p["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    """(panel title and refId, the PromQL Prometheus receives) for every target."""
    found = []
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            found.append((f"{panel['title']} {target['refId']}", expr))
    return found


def test_the_dashboard_asks_for_its_prometheus_data_source() -> None:
    document = json.loads(DASHBOARD.read_text())
    (variable,) = document["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    ids = [p["id"] for p in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["description"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        assert all(t["datasource"] == DATASOURCE for t in panel["targets"]), panel["title"]


def test_no_two_panels_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]


def test_prometheus_parses_every_query(tmp_path: Path) -> None:
    # promtool has no query checker; recording rules are parsed by Prometheus's own parser.
    rules = {
        "groups": [
            {
                "name": "grafana-dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": expr}
                    for n, (_, expr) in enumerate(queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    rc, output = promtool_check_rules(path)
    assert rc == 0, output
    assert f"SUCCESS: {len(queries())} rules found" in output


def test_the_panels_cover_the_shipped_figures() -> None:
    used = {name for _, expr in queries() for name in selectors(promql_parser.parse(expr))}
    for name in (
        "outbox_unpublished_events",
        "outbox_published_events_total",
        "redis_stream_group_lag",
        "redis_stream_group_messages_pending",
        "projection_dead_letters",
        "redis_memory_used_bytes",
        "redis_commands_processed_total",
        "redis_keyspace_hits_total",
        "redis_keyspace_misses_total",
        "outbox_relay_events_published_total",
        "outbox_relay_batch_size_bucket",
        "outbox_relay_emit_to_publish_seconds_bucket",
        "projection_emit_to_apply_seconds_bucket",
        "projection_handler_duration_seconds_bucket",
        "projection_handler_failures_total",
        "projection_retries_scheduled_total",
        "projection_dead_letters_total",
        "projection_processing_latency_seconds",
    ):
        assert name in used, name
    # The latency panels show p50, p95 and p99 from the histograms.
    exprs = " ".join(expr for _, expr in queries())
    for metric in ("outbox_relay_emit_to_publish_seconds", "projection_emit_to_apply_seconds"):
        for quantile in ("0.5", "0.95", "0.99"):
            assert re.search(rf"histogram_quantile\({quantile}, [^;]*{metric}_bucket", exprs)


async def test_every_query_uses_what_the_monitor_and_the_daemons_export(
    exported: Exported,
) -> None:
    for where, expr in queries():
        problems = unknown_uses(expr, exported)
        assert not problems, f"{where}: {problems}"
