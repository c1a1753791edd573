"""deploy/prometheus-alerts.yml: every rule parses, passes Prometheus's own ``promtool check
rules``, uses only metrics the monitor (live, with data) or the daemons export, with labels they
carry, and names in its annotations only labels those metrics carry."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from tests.fixtures_metrics import SCRAPE_METRICS, Exported, selectors, unknown_uses
from tests.fixtures_promtool import promtool_check_rules

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-alerts.yml"


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


def test_the_check_finds_a_metric_or_a_label_nothing_exports() -> None:
    exported = {"outbox_relay_emit_to_publish_seconds_bucket": {"service", "le"}}
    ok = (
        "histogram_quantile(0.99, sum by (le, service)"
        " (rate(outbox_relay_emit_to_publish_seconds_bucket[5m])))"
    )
    assert unknown_uses(ok, exported) == []
    assert unknown_uses("rate(outbox_relay_emit_to_publish_secs_bucket[5m]) > 0", exported) == [
        "metric outbox_relay_emit_to_publish_secs_bucket is not exported"
    ]
    assert unknown_uses(ok.replace("service", "stream"), exported) != []
    assert unknown_uses(
        'outbox_relay_emit_to_publish_seconds_bucket{projection="x"}', exported
    ) == ["outbox_relay_emit_to_publish_seconds_bucket has no label ['projection']"]


async def test_rules_use_what_the_monitor_and_the_daemons_export(exported: Exported) -> None:
    for rule in rules():
        problems = unknown_uses(rule["expr"], exported)
        assert not problems, f"{rule['alert']}: {problems}"
        used = set(selectors(promql_parser.parse(rule["expr"])))
        carried = set().union(*({**exported, **SCRAPE_METRICS}[name] for name in used))
        for text in rule["annotations"].values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                assert label in carried, f"{rule['alert']}: no metric in it has label {label!r}"
