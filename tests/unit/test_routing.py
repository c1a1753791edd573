"""Routing rules: parsing, validation (errors name the rule and field) and matching."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from outbox.envelope import MessagePriority
from outbox.errors import ConfigurationError
from outbox.relay.routing import Routing, load_routing, read_rules
from outbox.settings import Settings
from outbox.streams.keys import Keys

KEYS = Keys("opsconductor")
COMMUNICATION = "opsconductor:communication:events"
ALERTS = {
    "name": "alerts-to-communication",
    "event_type": ["alert_triggered", "vulnerability_detected"],
    "to": ["communication"],
}


def _row(
    event_type: str = "thing_happened",
    priority: MessagePriority = MessagePriority.NORMAL,
    data: list[Any] | None = None,
) -> dict[str, Any]:
    return {
        "event_type": event_type,
        "priority": int(priority),
        "route_data": None if data is None else json.dumps(data),
    }


def _lanes(routing: Routing, service: str, row: dict[str, Any]) -> list[tuple[str, str]]:
    plan = routing.plan(service)
    own = KEYS.stream(service, MessagePriority(row["priority"]))
    return [(own, "")] if plan is None else list(plan.lanes(own, row))


def _error(rules: object, keys: Keys = KEYS) -> str:
    with pytest.raises(ConfigurationError) as raised:
        Routing.parse(rules, keys)
    return str(raised.value)


def test_the_opsconductor_example_copies_alerts_to_communication_with_a_watermark_per_origin() -> (
    None
):
    routing = Routing.parse([ALERTS], KEYS)
    assets = KEYS.stream("assets")
    copy = (COMMUNICATION, KEYS.copy_watermark(COMMUNICATION, "assets"))
    assert _lanes(routing, "assets", _row("alert_triggered")) == [(assets, ""), copy]
    assert _lanes(routing, "assets", _row("asset_created")) == [(assets, "")]
    # The priority is kept: a critical alert goes to communication's critical stream.
    critical = KEYS.stream("communication", MessagePriority.CRITICAL)
    assert _lanes(routing, "network", _row("vulnerability_detected", MessagePriority.CRITICAL)) == [
        (KEYS.stream("network", MessagePriority.CRITICAL), ""),
        (critical, KEYS.copy_watermark(critical, "network")),
    ]
    # communication's own alerts are in its stream once, under its own watermark.
    assert _lanes(routing, "communication", _row("alert_triggered")) == [(COMMUNICATION, "")]
    assert routing.target_streams() == sorted(KEYS.streams_of("communication"))
    assert routing.target_services() == ["communication"]
    assert routing.data_paths == ()


def test_a_route_sends_events_instead_of_to_their_own_stream() -> None:
    routing = Routing.parse(
        [
            {
                "name": "audit-away",
                "action": "route",
                "service": "identity",
                "event_type": "login_failed",
                "to": ["security", "system"],
                "to_priority": "high",
            },
            {
                "name": "bulk",
                "action": "route",
                "event_type": "metrics_sampled",
                "to": "opsconductor:bulk:events",
            },
        ],
        KEYS,
    )
    security = KEYS.stream("security", MessagePriority.HIGH)
    system_high = KEYS.stream("system", MessagePriority.HIGH)
    assert _lanes(routing, "identity", _row("login_failed")) == [
        (security, KEYS.copy_watermark(security, "identity")),
        (system_high, KEYS.copy_watermark(system_high, "identity")),
    ]
    assert _lanes(routing, "identity", _row("user_created")) == [(KEYS.stream("identity"), "")]
    bulk = "opsconductor:bulk:events"
    assert _lanes(routing, "ai", _row("metrics_sampled")) == [
        (bulk, KEYS.copy_watermark(bulk, "ai"))
    ]
    # A route to the service's own stream of another priority: the same origin, so the stream's
    # own watermark.
    own = Routing.parse(
        [
            {
                "name": "up",
                "action": "route",
                "event_type": "x",
                "to": "ai",
                "to_priority": "critical",
            }
        ],
        KEYS,
    )
    critical = KEYS.stream("ai", MessagePriority.CRITICAL)
    assert _lanes(own, "ai", _row("x")) == [(critical, "")]


def test_priority_lists_and_minimums() -> None:
    routing = Routing.parse(
        [
            {"name": "urgent", "min_priority": "high", "to": "system"},
            {
                "name": "quiet",
                "priority": ["low"],
                "service": "ai",
                "to": "opsconductor:bulk:events",
            },
        ],
        KEYS,
    )
    urgent = [s for s, _ in _lanes(routing, "ai", _row(priority=MessagePriority.HIGH))]
    assert urgent == [
        KEYS.stream("ai", MessagePriority.HIGH),
        KEYS.stream("system", MessagePriority.HIGH),
    ]
    normal = _lanes(routing, "ai", _row(priority=MessagePriority.NORMAL))
    assert normal == [(KEYS.stream("ai"), "")]
    low = [s for s, _ in _lanes(routing, "ai", _row(priority=MessagePriority.LOW))]
    assert low == [KEYS.stream("ai"), "opsconductor:bulk:events"]


def test_data_conditions_match_equal_values_and_membership_on_dotted_paths() -> None:
    routing = Routing.parse(
        [
            {
                "name": "prod-critical",
                "data": {"severity": ["high", "critical"], "host.env": "prod", "count": 3},
                "to": "communication",
            },
            {"name": "flagged", "data": {"flag": True}, "to": "system"},
        ],
        KEYS,
    )
    # route_data holds the values at data_paths, in that order.
    assert routing.data_paths == ("count", "host.env", "severity", "flag")

    def targets(values: list[Any]) -> list[str]:
        return [s for s, _ in _lanes(routing, "assets", _row(data=values))][1:]

    assert targets([3, "prod", "critical", None]) == [COMMUNICATION]
    assert targets([3.0, "prod", "high", False]) == [COMMUNICATION]  # 3 is 3.0 in JSON
    assert targets([3, "dev", "high", None]) == []
    assert targets([3, "prod", "low", None]) == []
    assert targets([None, "prod", "high", None]) == []  # absent
    assert targets(["3", "prod", "high", None]) == []  # a string is not a number
    assert targets([1, None, None, True]) == [KEYS.stream("system")]
    assert targets([1, None, None, 1]) == []  # 1 is not true
    assert targets([3, {"a": 1}, "high", None]) == []  # an object never matches


def test_several_rules_naming_one_target_add_the_event_once() -> None:
    routing = Routing.parse(
        [ALERTS, {"name": "assets-all", "service": "assets", "to": ["communication", "system"]}],
        KEYS,
    )
    streams = [s for s, _ in _lanes(routing, "assets", _row("alert_triggered"))]
    assert streams == [KEYS.stream("assets"), COMMUNICATION, KEYS.stream("system")]


def test_tagged_layout_targets_share_the_target_streams_slot() -> None:
    keys = Keys("opsconductor", tagged=True)
    routing = Routing.parse([ALERTS], keys)
    plan = routing.plan("assets")
    assert plan is not None
    own = keys.stream("assets")
    [_, (stream, watermark)] = plan.lanes(own, _row("alert_triggered"))
    assert stream == "opsconductor:{communication}:events"
    assert watermark == "opsconductor:{communication}:events:watermark:from:assets"
    assert keys.parse_copy_watermark(watermark) == (stream, "assets")
    # A stream key of the document layout is not one of this layout's streams.
    assert "not an event stream" in _error([{**ALERTS, "to": [COMMUNICATION]}], keys)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({**ALERTS, "colour": "red"}, "'alerts-to-communication': colour: unknown field"),
        ({"event_type": "x", "to": "system"}, "#1: name: required"),
        ({**ALERTS, "action": "move"}, "action: 'move': expected 'copy' or 'route'"),
        ({"name": "all", "to": "system"}, "'all': match: no condition"),
        ({**ALERTS, "event_type": []}, "event_type: expected a event type or a non-empty list"),
        ({**ALERTS, "event_type": ["Alert!"]}, "event_type: 'Alert!' is not a valid event type"),
        ({**ALERTS, "service": ["Assets"]}, "service: 'Assets' is not a valid service name"),
        ({**ALERTS, "priority": ["urgent"]}, "priority: 'urgent' is not a priority"),
        ({**ALERTS, "min_priority": "extreme"}, "min_priority: 'extreme' is not a priority"),
        ({**ALERTS, "priority": "high", "min_priority": "low"}, "not both"),
        ({**ALERTS, "to_priority": "max"}, "to_priority: 'max' is not a priority"),
        ({**ALERTS, "data": {}}, "data: expected a non-empty table"),
        ({**ALERTS, "data": {"a..b": 1}}, "data.a..b: a path is field names joined by '.'"),
        ({**ALERTS, "data": {"severity": []}}, "data.severity: an empty list matches no event"),
        ({**ALERTS, "data": {"severity": [{"x": 1}]}}, "only strings, numbers and booleans"),
        ({**ALERTS, "to": []}, "to: expected a non-empty list of targets (a copy without"),
        (
            {**ALERTS, "action": "route", "to": []},
            "a route without targets would drop every event it matches",
        ),
        ({**ALERTS, "to": ["other:communication:events"]}, "is not an event stream under the"),
        ({**ALERTS, "to": ["opsconductor:communication"]}, "is not an event stream under the"),
        ({**ALERTS, "to": ["opsconductor:assets.1.0:events"]}, "is a partition stream"),
        ({**ALERTS, "to": ["Communication"]}, "to: 'Communication' is not a valid service name"),
        ({**ALERTS, "to": ["dead_letter"]}, "is a reserved stream"),
        ({**ALERTS, "to": ["communication", "communication"]}, "names a stream twice"),
        ({**ALERTS, "to": ["communication", COMMUNICATION]}, "names a stream twice"),
        (
            {**ALERTS, "to": [COMMUNICATION], "to_priority": "high"},
            "to_priority: applies to service targets only",
        ),
    ],
)
def test_invalid_rules_are_refused_naming_the_rule_and_field(
    rule: dict[str, Any], expected: str
) -> None:
    assert expected in _error([rule])


def test_rule_names_are_unique_and_the_top_level_is_a_list() -> None:
    assert "name used by more than one rule" in _error([ALERTS, ALERTS])
    assert "expected a list of rules" in _error("alerts")
    assert "unknown top-level key(s) ['rulez']" in _error({"rulez": []})
    assert "#2: expected a table of fields" in _error([ALERTS, "x"])


def test_rules_from_the_setting_or_a_toml_or_json_file(tmp_path: Path) -> None:
    toml = tmp_path / "routing.toml"
    toml.write_text(
        "[[rules]]\n"
        'name = "alerts-to-communication"\n'
        'event_type = ["alert_triggered", "vulnerability_detected"]\n'
        'to = ["communication"]\n',
        encoding="utf-8",
    )
    from_toml = load_routing(Settings(routing_rules_file=str(toml)), KEYS)
    from_env = load_routing(Settings(routing_rules=json.dumps([ALERTS])), KEYS)
    assert from_toml is not None
    assert from_env is not None
    assert from_toml.rules == from_env.rules
    as_json = tmp_path / "routing.json"
    as_json.write_text(json.dumps({"rules": [ALERTS]}), encoding="utf-8")
    from_json = load_routing(Settings(routing_rules_file=str(as_json)), KEYS)
    assert from_json is not None
    assert from_json.rules == from_env.rules
    # None, or an empty list: no routing at all (the relay's plain path).
    assert load_routing(Settings(), KEYS) is None
    assert load_routing(Settings(routing_rules="[]"), KEYS) is None


def test_unreadable_rule_sources_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        read_rules("[]", str(tmp_path / "x.toml"))
    with pytest.raises(ConfigurationError, match="ROUTING_RULES is not JSON"):
        read_rules("[{", None)
    with pytest.raises(ConfigurationError, match=r"ROUTING_RULES_FILE .*missing\.toml"):
        read_rules(None, str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rules]\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"bad\.toml"):
        read_rules(None, str(bad))


def test_marks_of_copies_no_rule_makes_any_more_are_not_kept() -> None:
    routing = Routing.parse([ALERTS], KEYS)
    assert routing.keeps_mark(KEYS.copy_watermark(COMMUNICATION, "assets"))
    assert not routing.keeps_mark(KEYS.copy_watermark(KEYS.stream("system"), "assets"))
    assert routing.keeps_mark(KEYS.stream("assets"))


def test_the_rules_in_docs_routing_md_are_valid() -> None:
    import re
    import tomllib

    text = (Path(__file__).resolve().parents[2] / "docs" / "routing.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    assert len(blocks) == 2
    parsed = [Routing.parse(tomllib.loads(block), KEYS) for block in blocks]
    assert [r.name for p in parsed for r in p.rules] == [
        "alerts-to-communication",
        "automation-criticals-to-pager",
        "prod-incidents",
    ]
    [env] = re.findall(r"ROUTING_RULES='(.*?)'", text)
    assert Routing.parse(json.loads(env), KEYS).rules == parsed[0].rules
