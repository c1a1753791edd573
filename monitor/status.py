"""OK / WARN / ERR per component, from trends over the window rather than fixed counts.

- caught up at some point within the window → OK
- behind for the whole window but advancing → WARN ("advancing but not catching up")
- behind and not advancing over the window, or heartbeat lost → ERR
Each status carries its reason in words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Level = Literal["OK", "WARN", "ERR"]
_ORDER = {"OK": 0, "WARN": 1, "ERR": 2}


@dataclass(frozen=True)
class Status:
    level: Level
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "reason": self.reason}


@dataclass(frozen=True)
class Sample:
    """One observation of a component: how far behind, and a counter that grows with progress."""

    at: float
    behind: float
    progress: float


def worst(statuses: Sequence[Status]) -> Status:
    if not statuses:
        return Status("OK", "nothing to watch yet")
    return max(statuses, key=lambda s: _ORDER[s.level])


def trend(
    samples: Sequence[Sample], *, unit: str, window_s: float, now: float, min_span_s: float = 15.0
) -> Status:
    """Judge a backlog (``behind`` in ``unit``) by how it moved over the last ``window_s``.

    Until ``min_span_s`` of history exist, a backlog is WARN ("collecting history"): a verdict
    of "not advancing" needs time to be fair.
    """
    recent = [s for s in samples if s.at >= now - window_s]
    if not recent:
        return Status("WARN", "no data yet")
    current = recent[-1]
    if current.behind <= 0:
        return Status("OK", "caught up")
    if any(s.behind <= 0 for s in recent):
        return Status("OK", f"{current.behind:g} {unit} behind, caught up within the window")
    span = current.at - recent[0].at
    if len(recent) < 2 or span < min(min_span_s, window_s / 2):
        return Status("WARN", f"{current.behind:g} {unit} behind; collecting history")
    advanced = current.progress - recent[0].progress
    if advanced <= 0:
        return Status("ERR", f"{current.behind:g} {unit} behind and not advancing for {span:.0f} s")
    change = current.behind - recent[0].behind
    direction = "growing" if change > 0 else "shrinking" if change < 0 else "steady"
    return Status(
        "WARN",
        f"{current.behind:g} {unit} behind, advancing ({advanced / span:.1f}/s) "
        f"but not caught up in {span:.0f} s (backlog {direction})",
    )


#: A heartbeat older than this many intervals is lost.
LOST_AFTER_INTERVALS = 3


def heartbeat(age_s: float | None, interval_s: float, *, name: str) -> Status | None:
    """ERR when a heartbeat is older than LOST_AFTER_INTERVALS intervals; None while fresh."""
    if age_s is None:
        return Status("ERR", f"{name}: no heartbeat")
    if age_s > LOST_AFTER_INTERVALS * interval_s:
        return Status("ERR", f"{name}: heartbeat lost ({age_s:.0f} s ago)")
    return None
