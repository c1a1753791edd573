"""Routing rules: copy or route events to further streams (docs/routing.md, decision 0018).

A rule matches events by service, event type, priority and data fields, and names target
streams: a service (its stream under the key layout, the event's priority kept or fixed) or a
full stream key under the prefix. ``copy`` adds the event to the targets *as well as* its own
stream; ``route`` adds it to the targets *instead*. Every rule is matched against the event as
emitted: copies are never routed again, so rules cannot form cycles.

Exactly once per target: a stream's watermark is the cursor of the last event it took, and the
relay keeps one cursor per *origin* service. A stream that takes the events of several origins
(its own service's and copies from others) therefore has one watermark per origin
(:meth:`Keys.copy_watermark`, in the stream's slot): one watermark for all would skip every copy
whose cursor is below another origin's. A *lane* is one (stream, watermark) pair; its events are
one origin's, in that origin's cursor order.

Rules are read from ROUTING_RULES (JSON) or ROUTING_RULES_FILE (TOML or JSON) and validated when
the relay starts (:func:`load_routing`); an invalid rule stops it with the rule and field named.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from outbox.envelope import MessagePriority
from outbox.errors import ConfigurationError
from outbox.relay.cursor import OutboxRow
from outbox.streams.keys import DEAD_LETTER_SERVICE, METRICS_SERVICE, Keys
from outbox.validation import EVENT_TYPE_PATTERN, SERVICE_PATTERN

#: ``(stream, watermark key)``: the watermark key is empty for the stream's own service's
#: events (the stream's own watermark), else the origin's :meth:`Keys.copy_watermark`.
Lane = tuple[str, str]

_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_MATCH_KEYS = ("service", "event_type", "priority", "min_priority", "data")
_RULE_KEYS = ("name", "action", "to", "to_priority", *_MATCH_KEYS)
_RESERVED = (DEAD_LETTER_SERVICE, METRICS_SERVICE)
_SCALARS = (str, int, float, bool)


def _value_key(value: object) -> tuple[str, object] | None:
    """A comparable form of a JSON scalar: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    if isinstance(value, str):
        return ("string", value)
    if value is None:
        return ("null", None)
    return None  # objects and arrays never match


@dataclass(frozen=True, slots=True)
class Target:
    """Where a rule sends events: a service's stream (``priority`` None keeps the event's), or
    one stream key."""

    service: str | None = None
    stream: str | None = None
    priority: MessagePriority | None = None

    def stream_for(self, keys: Keys, priority: int) -> str:
        if self.stream is not None:
            return self.stream
        assert self.service is not None
        fixed = self.priority
        return keys.stream(self.service, MessagePriority(priority) if fixed is None else fixed)

    def streams(self, keys: Keys) -> list[str]:
        """Every stream this target can write."""
        if self.stream is not None:
            return [self.stream]
        assert self.service is not None
        if self.priority is not None:
            return [keys.stream(self.service, self.priority)]
        return keys.streams_of(self.service)


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated rule. A condition left out (None, or no ``data``) matches every event."""

    name: str
    action: Literal["copy", "route"]
    targets: tuple[Target, ...]
    services: frozenset[str] | None = None
    event_types: frozenset[str] | None = None
    priorities: frozenset[int] | None = None
    #: (dotted path, accepted values as :func:`_value_key`) — every one must hold.
    data: tuple[tuple[str, frozenset[tuple[str, object]]], ...] = ()

    def matches_head(self, event_type: str, priority: int) -> bool:
        """The conditions on the event's type and priority (the service is matched first)."""
        return (self.event_types is None or event_type in self.event_types) and (
            self.priorities is None or priority in self.priorities
        )


@dataclass(slots=True)
class ServicePlan:
    """The rules of one origin service, with the results of the data-free ones cached by
    (event type, priority): matching costs one dict lookup per event."""

    origin: str
    keys: Keys
    head_rules: tuple[Rule, ...]
    data_rules: tuple[Rule, ...]
    #: index of each data path in the row's ``route_data`` array
    path_index: Mapping[str, int]
    cache: dict[tuple[str, int], tuple[bool, tuple[Lane, ...]]] = field(default_factory=dict)
    lanes_by_stream: dict[str, Lane] = field(default_factory=dict)

    def lane(self, stream: str) -> Lane:
        lane = self.lanes_by_stream.get(stream)
        if lane is None:
            parsed = self.keys.parse_stream(stream)
            own = parsed is not None and parsed[0] == self.origin
            lane = (stream, "" if own else self.keys.copy_watermark(stream, self.origin))
            self.lanes_by_stream[stream] = lane
        return lane

    def _apply(self, rules: Sequence[Rule], priority: int, routed: bool, lanes: list[Lane]) -> bool:
        for rule in rules:
            routed = routed or rule.action == "route"
            for target in rule.targets:
                lane = self.lane(target.stream_for(self.keys, priority))
                if lane not in lanes:
                    lanes.append(lane)
        return routed

    def _head(self, event_type: str, priority: int) -> tuple[bool, tuple[Lane, ...]]:
        key = (event_type, priority)
        hit = self.cache.get(key)
        if hit is None:
            lanes: list[Lane] = []
            matched = [r for r in self.head_rules if r.matches_head(event_type, priority)]
            routed = self._apply(matched, priority, False, lanes)
            hit = self.cache[key] = (routed, tuple(lanes))
        return hit

    def lanes(self, own: str, row: OutboxRow) -> tuple[Lane, ...]:
        """The lanes of one event: its own stream ``own`` unless a ``route`` rule matched, then
        every matched rule's targets, each once."""
        event_type, priority = row["event_type"], row["priority"]
        routed, extra = self._head(event_type, priority)
        if self.data_rules:
            found = [
                r
                for r in self.data_rules
                if r.matches_head(event_type, priority) and self._data_holds(r, row)
            ]
            if found:
                lanes = list(extra)
                routed = self._apply(found, priority, routed, lanes)
                extra = tuple(lanes)
        if routed:
            return extra
        own_lane = (own, "")
        return (own_lane, *(lane for lane in extra if lane != own_lane))

    def _data_holds(self, rule: Rule, row: OutboxRow) -> bool:
        values = row["route_data"]
        if not values:
            return False
        decoded = json.loads(values) if isinstance(values, str) else values
        for path, accepted in rule.data:
            if _value_key(decoded[self.path_index[path]]) not in accepted:
                return False
        return True


class Routing:
    """The validated rules of a relay. Build with :func:`load_routing` or :meth:`parse`."""

    def __init__(self, rules: Sequence[Rule], keys: Keys) -> None:
        self.rules = tuple(rules)
        self.keys = keys
        paths: list[str] = []
        for rule in self.rules:
            for path, _ in rule.data:
                if path not in paths:
                    paths.append(path)
        #: The payload paths data conditions read, in the order of the row's ``route_data``.
        self.data_paths: tuple[str, ...] = tuple(paths)
        self._plans: dict[str, ServicePlan | None] = {}
        self._target_streams = sorted(
            {s for rule in self.rules for t in rule.targets for s in t.streams(keys)}
        )
        #: target service → why its streams cannot take events now (it is partitioned).
        self.blocked: dict[str, str] = {}

    @classmethod
    def parse(cls, rules: object, keys: Keys) -> Routing:
        """Validate rules given as a list of mappings (or ``{"rules": [...]}``)."""
        if isinstance(rules, Mapping):
            unknown = set(rules) - {"rules", "rule"}
            if unknown:
                raise ConfigurationError(
                    f"routing rules: unknown top-level key(s) {sorted(unknown)}; expected "
                    "'rules', a list of rules"
                )
            rules = rules.get("rules", rules.get("rule", []))
        if not isinstance(rules, list):
            raise ConfigurationError("routing rules: expected a list of rules")
        parsed = [_parse_rule(index, raw, keys) for index, raw in enumerate(rules, 1)]
        names = [rule.name for rule in parsed]
        for name in names:
            if names.count(name) > 1:
                raise ConfigurationError(f"routing rule {name!r}: name used by more than one rule")
        return cls(parsed, keys)

    def plan(self, origin: str) -> ServicePlan | None:
        """The rules that can match ``origin``'s events; None when none can (no cost)."""
        if origin in self._plans:
            return self._plans[origin]
        rules = [r for r in self.rules if r.services is None or origin in r.services]
        plan = None
        if rules:
            plan = ServicePlan(
                origin,
                self.keys,
                tuple(r for r in rules if not r.data),
                tuple(r for r in rules if r.data),
                {path: i for i, path in enumerate(self.data_paths)},
            )
        self._plans[origin] = plan
        return plan

    def target_streams(self) -> list[str]:
        """Every stream a rule can write, sorted (for trimming, and to keep their marks)."""
        return list(self._target_streams)

    def target_services(self) -> list[str]:
        """The services whose streams rules write (their partitioning is watched)."""
        found = set()
        for stream in self.target_streams():
            parsed = self.keys.parse_stream(stream)
            if parsed is not None:
                found.add(parsed[0])
        return sorted(found)

    def refusal(self, stream: str) -> str | None:
        """Why ``stream`` cannot take routed events now, or None."""
        parsed = self.keys.parse_stream(stream)
        return None if parsed is None else self.blocked.get(parsed[0])

    def keeps_mark(self, key: str) -> bool:
        """Whether a stored mark still names a lane these rules (or the service itself) use:
        the marks of copy lanes of removed rules are dropped."""
        copy = self.keys.parse_copy_watermark(key)
        return copy is None or copy[0] in self._target_streams


def _fail(index: int, raw: object, key: str, problem: str) -> ConfigurationError:
    name = raw.get("name") if isinstance(raw, Mapping) else None
    label = f"{name!r}" if isinstance(name, str) else f"#{index}"
    return ConfigurationError(f"routing rule {label}: {key}: {problem}")


def _names(
    index: int, raw: Mapping[str, Any], key: str, pattern: re.Pattern[str], what: str
) -> frozenset[str] | None:
    value = raw.get(key)
    if value is None:
        return None
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values:
        raise _fail(index, raw, key, f"expected a {what} or a non-empty list of them")
    for item in values:
        if not isinstance(item, str) or not pattern.match(item):
            raise _fail(index, raw, key, f"{item!r} is not a valid {what} ({pattern.pattern})")
    return frozenset(values)


def _priority(index: int, raw: Mapping[str, Any], key: str, value: object) -> MessagePriority:
    labels = [p.label for p in MessagePriority]
    if not isinstance(value, str) or value.strip().upper() not in MessagePriority.__members__:
        raise _fail(index, raw, key, f"{value!r} is not a priority (one of {', '.join(labels)})")
    return MessagePriority[value.strip().upper()]


def _priorities(index: int, raw: Mapping[str, Any]) -> frozenset[int] | None:
    listed, minimum = raw.get("priority"), raw.get("min_priority")
    if listed is not None and minimum is not None:
        raise _fail(index, raw, "priority", "give priority or min_priority, not both")
    if minimum is not None:
        low = _priority(index, raw, "min_priority", minimum)
        return frozenset(int(p) for p in MessagePriority if p >= low)
    if listed is None:
        return None
    values = [listed] if isinstance(listed, str) else listed
    if not isinstance(values, list) or not values:
        raise _fail(index, raw, "priority", "expected a priority or a non-empty list of them")
    return frozenset(int(_priority(index, raw, "priority", v)) for v in values)


def _data(
    index: int, raw: Mapping[str, Any]
) -> tuple[tuple[str, frozenset[tuple[str, object]]], ...]:
    value = raw.get("data")
    if value is None:
        return ()
    if not isinstance(value, Mapping) or not value:
        raise _fail(index, raw, "data", "expected a non-empty table of {path: value or [values]}")
    found = []
    for path, accepted in value.items():
        where = f"data.{path}"
        if not isinstance(path, str) or not all(path.split(".")):
            raise _fail(index, raw, where, "a path is field names joined by '.'")
        values = accepted if isinstance(accepted, list) else [accepted]
        if not values:
            raise _fail(index, raw, where, "an empty list matches no event")
        for item in values:
            if not isinstance(item, _SCALARS):
                raise _fail(index, raw, where, f"{item!r}: only strings, numbers and booleans")
        found.append((path, frozenset(k for k in map(_value_key, values) if k is not None)))
    return tuple(sorted(found, key=lambda pair: pair[0]))


def _targets(index: int, raw: Mapping[str, Any], keys: Keys) -> tuple[Target, ...]:
    to = raw.get("to")
    values = [to] if isinstance(to, str) else to
    if not isinstance(values, list) or not values:
        problem = "a route without targets would drop every event it matches"
        if raw.get("action", "copy") == "copy":
            problem = "a copy without targets does nothing"
        raise _fail(index, raw, "to", f"expected a non-empty list of targets ({problem})")
    fixed = raw.get("to_priority", "keep")
    priority = None if fixed == "keep" else _priority(index, raw, "to_priority", fixed)
    targets: list[Target] = []
    for item in values:
        if not isinstance(item, str):
            raise _fail(index, raw, "to", f"{item!r} is not a service name or stream key")
        if ":" in item:
            parsed = keys.parse_partition(item)
            if parsed is None:
                layout = "tagged" if keys.tagged else "document"
                example = keys.stream("alerts")
                raise _fail(
                    index,
                    raw,
                    "to",
                    f"{item!r} is not an event stream under the prefix {keys.prefix!r} in the "
                    f"{layout} key layout (e.g. {example!r}, or a service name)",
                )
            service, partition, _ = parsed
            if partition.epoch:
                raise _fail(index, raw, "to", f"{item!r} is a partition stream (decision 0014)")
            if raw.get("to_priority") is not None:
                raise _fail(
                    index, raw, "to_priority", "applies to service targets only, not stream keys"
                )
            target = Target(stream=item)
        else:
            if not SERVICE_PATTERN.match(item):
                raise _fail(index, raw, "to", f"{item!r} is not a valid service name")
            service = item
            target = Target(service=item, priority=priority)
        if service in _RESERVED:
            raise _fail(index, raw, "to", f"{item!r} is a reserved stream ({service})")
        overlap = set(target.streams(keys)) & {s for t in targets for s in t.streams(keys)}
        if overlap:
            raise _fail(index, raw, "to", f"{item!r} names a stream twice ({sorted(overlap)[0]})")
        targets.append(target)
    return tuple(targets)


def _parse_rule(index: int, raw: object, keys: Keys) -> Rule:
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"routing rule #{index}: expected a table of fields")
    unknown = sorted(set(raw) - set(_RULE_KEYS))
    if unknown:
        raise _fail(index, raw, unknown[0], f"unknown field (known: {', '.join(_RULE_KEYS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not _RULE_NAME.match(name):
        raise _fail(index, raw, "name", f"required, matching {_RULE_NAME.pattern}")
    action = raw.get("action", "copy")
    if action not in ("copy", "route"):
        raise _fail(index, raw, "action", f"{action!r}: expected 'copy' or 'route'")
    if not any(raw.get(key) is not None for key in _MATCH_KEYS):
        raise _fail(
            index,
            raw,
            "match",
            f"no condition: give at least one of {', '.join(_MATCH_KEYS)} (a rule for every "
            "event of every service is almost certainly a mistake)",
        )
    services = _names(index, raw, "service", SERVICE_PATTERN, "service name")
    return Rule(
        name=name,
        action=action,
        targets=_targets(index, raw, keys),
        services=services,
        event_types=_names(index, raw, "event_type", EVENT_TYPE_PATTERN, "event type"),
        priorities=_priorities(index, raw),
        data=_data(index, raw),
    )


def read_rules(text: str | None, file: str | None) -> object:
    """The rules as data, from ROUTING_RULES (JSON text) or ROUTING_RULES_FILE (``.toml``, else
    JSON); None when neither is set."""
    if text and file:
        raise ConfigurationError("set ROUTING_RULES or ROUTING_RULES_FILE, not both")
    if file:
        path = Path(file)
        try:
            content = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigurationError(f"ROUTING_RULES_FILE {file}: {error.strerror}") from None
        try:
            if path.suffix == ".toml":
                return tomllib.loads(content)
            return json.loads(content)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
            raise ConfigurationError(f"ROUTING_RULES_FILE {file}: {error}") from None
    if text and text.strip():
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigurationError(f"ROUTING_RULES is not JSON: {error}") from None
    return None


def load_routing(settings: Any, keys: Keys) -> Routing | None:
    """The relay's routing rules from its settings (ROUTING_RULES or ROUTING_RULES_FILE),
    validated; None when there are none. Raises ConfigurationError naming the rule and field."""
    rules = read_rules(settings.routing_rules, settings.routing_rules_file)
    if rules is None:
        return None
    routing = Routing.parse(rules, keys)
    return routing if routing.rules else None
