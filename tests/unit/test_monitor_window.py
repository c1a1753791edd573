"""A projection's figures over the monitor's window, from the counters of successive snapshots,
and how far back the processing latency query looks."""

from __future__ import annotations

from typing import Any

from outbox.monitor.collector import LATENCY_MIN_LOOKBACK_S, LATENCY_SAMPLE, Collector
from outbox.settings import Settings


def collector(window_s: float = 60.0) -> Collector:
    settings = Settings().model_copy(update={"monitor_window_s": window_s})
    return Collector(settings, pool=None, redis=None)  # type: ignore[arg-type]


def counts(processed: int, failures: int, retries: int) -> dict[str, Any]:
    return {"processed": processed, "failures": failures, "retries": retries}


def test_the_window_counts_what_happened_between_its_oldest_and_newest_observation() -> None:
    c = collector(window_s=60)
    assert c._window("projection:p", 0, counts(100, 5, 5)) is None  # one observation: no span
    c._window("projection:p", 30, counts(190, 15, 12))
    window = c._window("projection:p", 50, counts(230, 15, 12))
    assert window == {
        "span_s": 50.0,
        "applied": 130,
        "failures": 10,
        "retries": 7,
        "error_ratio": round(10 / 140, 4),
    }
    # 70 s: the observation at 0 s left the window.
    window = c._window("projection:p", 70, counts(230, 15, 12))
    assert window is not None
    assert (window["span_s"], window["applied"], window["failures"]) == (40.0, 40, 0)
    assert window["error_ratio"] == 0.0


def test_nothing_attempted_has_no_error_ratio_and_a_counter_that_went_down_counts_zero() -> None:
    c = collector()
    c._window("projection:p", 0, counts(50, 3, 3))
    window = c._window("projection:p", 10, counts(50, 3, 3))
    assert window is not None
    assert window["error_ratio"] is None
    # A consumer gone for an hour drops out of the projection's sums.
    window = c._window("projection:p", 20, counts(20, 1, 1))
    assert window is not None
    assert (window["applied"], window["failures"], window["retries"]) == (0, 0, 0)


def test_the_latency_lookback_shrinks_with_the_apply_rate() -> None:
    c = collector(window_s=300)
    assert c._latency_lookback_s() == 300  # no rate known yet: the whole window
    # Two projections applying 100 events/s between them: twice LATENCY_SAMPLE events' worth.
    c._record("projection:a", 0, 0, 0)
    c._record("projection:a", 10, 0, 600)
    c._record("projection:b", 0, 0, 0)
    c._record("projection:b", 10, 0, 400)
    assert c._latency_lookback_s() == 2 * LATENCY_SAMPLE / 100
    c._record("projection:a", 20, 0, 600_000)
    assert c._latency_lookback_s() == LATENCY_MIN_LOOKBACK_S
    # Idle: the whole window (few rows to read).
    idle = collector(window_s=300)
    idle._record("projection:a", 0, 0, 0)
    idle._record("projection:a", 10, 0, 0)
    assert idle._latency_lookback_s() == 300
