"""Trend-based statuses and the monitor's security helpers."""

from __future__ import annotations

import pytest

from outbox.monitor.security import mask_fields, origin_allowed, parse_names, token_matches
from outbox.monitor.status import Sample, Status, heartbeat, trend, worst
from outbox.settings import redact_url


def series(*points: tuple[float, float, float]) -> list[Sample]:
    return [Sample(at, behind, progress) for at, behind, progress in points]


def test_caught_up_now_is_ok() -> None:
    status = trend(series((0, 5, 0), (10, 0, 5)), unit="events", window_s=60, now=10)
    assert status == Status("OK", "caught up")


def test_caught_up_within_the_window_is_ok() -> None:
    status = trend(series((0, 0, 0), (30, 4, 9)), unit="events", window_s=60, now=30)
    assert status.level == "OK"
    assert "caught up within the window" in status.reason


def test_advancing_but_not_catching_up_is_warn() -> None:
    status = trend(
        series((0, 10, 0), (20, 15, 40), (40, 20, 80)), unit="events", window_s=60, now=40
    )
    assert status.level == "WARN"
    assert "advancing (2.0/s)" in status.reason
    assert "growing" in status.reason


def test_behind_and_not_advancing_is_err() -> None:
    status = trend(
        series((0, 10, 7), (20, 10, 7), (40, 12, 7)), unit="entries", window_s=60, now=40
    )
    assert status.level == "ERR"
    assert "not advancing for 40 s" in status.reason


def test_too_little_history_is_not_judged() -> None:
    status = trend(series((0, 10, 7), (3, 10, 7)), unit="events", window_s=60, now=3)
    assert status.level == "WARN"
    assert "collecting history" in status.reason


def test_samples_older_than_the_window_do_not_count() -> None:
    # Caught up long ago, stuck ever since.
    status = trend(series((0, 0, 0), (100, 3, 1), (130, 3, 1)), unit="events", window_s=60, now=130)
    assert status.level == "ERR"


def test_heartbeat() -> None:
    assert heartbeat(1.0, 2.0, name="relay") is None
    lost = heartbeat(7.0, 2.0, name="relay")
    assert lost is not None
    assert lost.level == "ERR"
    assert "heartbeat lost (7 s ago)" in lost.reason
    assert heartbeat(None, 2.0, name="relay") == Status("ERR", "relay: no heartbeat")


def test_worst() -> None:
    assert worst([Status("OK", "a"), Status("ERR", "b"), Status("WARN", "c")]).reason == "b"
    assert worst([]).level == "OK"


def test_masking_at_any_depth_case_insensitive() -> None:
    names = parse_names("password, Token,secret,email")
    data = {"user": {"Email": "a@b", "roles": [{"token": "t", "name": "x"}]}, "password": 1}
    assert mask_fields(data, names) == {
        "user": {"Email": "***", "roles": [{"token": "***", "name": "x"}]},
        "password": "***",
    }


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("postgresql://user:pw@db/app", "postgresql://user:***@db/app"),
        ("redis://host:6379", "redis://host:6379"),
        ("rediss://acl-user@host", "rediss://acl-user@host"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_token() -> None:
    assert token_matches("Bearer abc", "abc")
    assert token_matches("bearer abc", "abc")
    assert not token_matches("Bearer abd", "abc")
    assert not token_matches(None, "abc")
    assert not token_matches("Bearer abc", None)
    assert not token_matches("Basic abc", "abc")


def test_origin() -> None:
    assert origin_allowed(None, "127.0.0.1:8090", [])
    assert origin_allowed("http://127.0.0.1:8090", "127.0.0.1:8090", [])
    assert not origin_allowed("http://evil.example", "127.0.0.1:8090", [])
    assert origin_allowed("https://ops.example", "127.0.0.1:8090", ["https://ops.example"])
