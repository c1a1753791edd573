"""``make bench``'s summary: each issue goal beside what was measured, and whether it was met."""

from __future__ import annotations

from bench.common import check
from bench.run_all import _host_line, _summary_rows


def test_check_compares_in_the_goal_direction() -> None:
    assert check("rate", 50_000, ">=", 50_000, " ev/s")["met"] is True
    assert check("rate", 49_999, ">=", 50_000, " ev/s")["met"] is False
    assert check("p99", 10.0, "<=", 10, " ms")["met"] is True
    assert check("p99", 10.01, "<=", 10, " ms")["met"] is False
    assert check("p99", 8.7, "<=", 10, " ms")["goal"] == "<= 10 ms"


def test_summary_rows_show_value_goal_and_verdict() -> None:
    result = {
        "benchmark": "relay",
        "checks": [
            check("drain", 44_842, ">=", 50_000, " ev/s"),
            check("vs naive", 59.1, ">=", 25, "x"),
        ],
    }
    assert _summary_rows("relay", result) == [
        "| relay | drain | 44842 ev/s | >= 50000 ev/s | **no** |",
        "| relay | vs naive | 59.1x | >= 25x | yes |",
    ]


def test_host_line_names_the_calibration() -> None:
    result = {
        "benchmark": "emit",
        "at": "2026-11-26T12:00:00Z",
        "machine": {
            "calibration": {
                "python_sum_range_1000_us": 14.9,
                "postgres_select_1": {"wall_us_p50": 180.0, "client_cpu_us": 90.0},
                "redis_ping": {"wall_us_p50": 120.0, "client_cpu_us": 60.0},
            }
        },
    }
    line = _host_line(result)
    for figure in ("14.9 µs", "180.0 µs", "120.0 µs"):
        assert figure in line
    assert "code" not in line
    commit = "6a21bab4282599428710f881336e8ad8703ad2c9"
    assert "(code 6a21bab428):" in _host_line({**result, "code": {"commit": commit}})
    modified = _host_line({**result, "code": {"commit": commit, "modified": True}})
    assert "(code 6a21bab428, modified):" in modified
    assert _host_line({"benchmark": "old", "at": "then"}) == "- old: then"
