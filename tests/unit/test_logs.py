"""LOG_FORMAT=json: each record is one JSON object on one line, with the message's fields."""

from __future__ import annotations

import calendar
import io
import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from outbox.cli.logs import JsonFormatter
from outbox.settings import Settings


class Captured:
    """A logger whose records go through the JSON formatter into a string."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.log = logging.getLogger("outbox.test_logs")

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]

    def only(self) -> dict[str, Any]:
        (record,) = self.records()
        return record


@pytest.fixture
def captured() -> Iterator[Captured]:
    capture = Captured()
    handler = logging.StreamHandler(capture.stream)
    handler.setFormatter(JsonFormatter())
    capture.log.addHandler(handler)
    capture.log.setLevel(logging.DEBUG)
    capture.log.propagate = False
    yield capture
    capture.log.removeHandler(handler)
    capture.log.propagate = True


class RedisUnavailableError(Exception):
    pass


def test_a_value_with_spaces_and_equals_signs_stays_one_field(captured: Captured) -> None:
    error = RedisUnavailableError("Redis is unreachable: Error 111 connecting x=1 y = 2")
    captured.log.warning(
        "event=relay_backoff error=%s delay_s=%.3f attempt=%d", repr(error), 0.4567, 3
    )
    record = captured.only()
    del record["timestamp"]
    assert record == {
        "level": "warning",
        "logger": "outbox.test_logs",
        "event": "relay_backoff",
        "error": "RedisUnavailableError('Redis is unreachable: Error 111 connecting x=1 y = 2')",
        "delay_s": 0.457,
        "attempt": 3,
    }


def test_numeric_placeholders_become_numbers_and_the_others_text(captured: Captured) -> None:
    captured.log.info(
        "event=relay_started instance=%s leases=%s batch_size=%d rate=%.1f repr=%r",
        "relay-1",
        True,
        500,
        12.25,
        7,
    )
    record = captured.only()
    assert record["batch_size"] == 500
    assert record["rate"] == 12.2  # as the text format shows it: %.1f
    assert record["leases"] == "True"
    assert record["repr"] == "7"
    assert record["instance"] == "relay-1"


def test_a_number_json_cannot_hold_is_kept_as_text(captured: Captured) -> None:
    captured.log.info("event=demo_progress rate_per_s=%.1f", float("nan"))
    assert captured.only()["rate_per_s"] == "nan"


def test_literal_values_and_messages_without_arguments(captured: Captured) -> None:
    captured.log.info("event=migrated examples=true")
    captured.log.info("event=projections_stopped")
    first, second = captured.records()
    assert (first["event"], first["examples"]) == ("migrated", "true")
    assert second["event"] == "projections_stopped"
    assert set(second) == {"timestamp", "level", "logger", "event"}


def test_a_message_without_event_is_kept_whole(captured: Captured) -> None:
    captured.log.info("Running upgrade %s -> %s, partitions key=value", "0006", "0007")
    record = captured.only()
    assert record["message"] == "Running upgrade 0006 -> 0007, partitions key=value"
    assert set(record) == {"timestamp", "level", "logger", "message"}


def test_text_before_the_first_key_is_the_message(captured: Captured) -> None:
    captured.log.info("relay says event=%s count=%d", "hello", 2)
    record = captured.only()
    assert (record["message"], record["event"], record["count"]) == ("relay says", "hello", 2)


def test_a_message_that_is_not_a_format_string_is_split_at_its_keys(captured: Captured) -> None:
    class Message:
        def __str__(self) -> str:
            return "event=custom error=Timeout after 5 s count=3"

    captured.log.info(Message())
    captured.log.info("event=%(name)s size=%(size)d", {"name": "mapping", "size": 4})
    custom, mapping = captured.records()
    assert (custom["event"], custom["error"], custom["count"]) == (
        "custom",
        "Timeout after 5 s",
        "3",
    )
    assert (mapping["event"], mapping["size"]) == ("mapping", "4")


def test_a_field_named_like_a_record_key_keeps_its_value(captured: Captured) -> None:
    captured.log.info("event=odd level=%s logger=%s", "deep", "mine")
    record = captured.only()
    assert (record["level"], record["logger"]) == ("info", "outbox.test_logs")
    assert (record["level_"], record["logger_"]) == ("deep", "mine")


def test_an_exception_is_a_string_field_on_the_same_line(captured: Captured) -> None:
    try:
        raise RedisUnavailableError("lost\nthe connection")
    except RedisUnavailableError:
        captured.log.exception("event=relay_unexpected_error instance=%s", "r1")
    (line,) = captured.lines()
    record = json.loads(line)
    assert record["level"] == "error"
    assert record["event"] == "relay_unexpected_error"
    assert record["instance"] == "r1"
    assert record["exception"].startswith("Traceback (most recent call last):")
    assert record["exception"].endswith("RedisUnavailableError: lost\nthe connection")


def test_one_line_per_record_whatever_the_values_hold(captured: Captured) -> None:
    captured.log.info("event=a text=%s", "two\nlines\r\nand a tab\t")
    captured.log.info("a plain message\nover two lines")
    captured.log.info("event=b unicode=%s", "ünïcode ✓")
    assert len(captured.lines()) == 3
    first, second, third = captured.records()
    assert first["text"] == "two\nlines\r\nand a tab\t"
    assert second["message"] == "a plain message\nover two lines"
    assert third["unicode"] == "ünïcode ✓"


def test_timestamp_is_utc_iso_8601_with_milliseconds(captured: Captured) -> None:
    before = time.time()
    captured.log.info("event=tick")
    after = time.time()
    stamp = captured.only()["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp), stamp
    seconds = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    logged = seconds + int(stamp[20:23]) / 1000
    assert int(before * 1000) / 1000 <= logged <= after


def test_levels_are_lowercase(captured: Captured) -> None:
    captured.log.debug("event=a")
    captured.log.critical("event=b")
    assert [r["level"] for r in captured.records()] == ["debug", "critical"]


@pytest.mark.parametrize(
    "key", ["password", "redis_password", "secret", "client_secret", "admin_token"]
)
def test_fields_named_like_secrets_are_redacted(captured: Captured, key: str) -> None:
    captured.log.info(f"event=configured {key}=%s port=%d", "hunter2", 5432)
    record = captured.only()
    assert record[key] == "***"
    assert record["port"] == 5432
    assert "hunter2" not in captured.stream.getvalue()


def test_urls_with_credentials_are_redacted_wherever_they_are(captured: Captured) -> None:
    captured.log.info(
        "event=connecting url=%s error=%r",
        "postgresql://outbox:hunter2@db:5432/opsconductor",
        ConnectionError("redis://:hunter2@redis:6379/0 refused"),
    )
    captured.log.warning("cannot reach rediss://user:hunter2@cache:6380/1 now")
    try:
        raise ConnectionError("redis+sentinel://u:hunter2@s1:26379,s2:26379/mymaster")
    except ConnectionError:
        captured.log.exception("event=lost")
    assert "hunter2" not in captured.stream.getvalue()
    connecting, warning, lost = captured.records()
    assert connecting["url"] == "postgresql://outbox:***@db:5432/opsconductor"
    assert connecting["error"] == "ConnectionError('redis://:***@redis:6379/0 refused')"
    assert warning["message"] == "cannot reach rediss://user:***@cache:6380/1 now"
    assert "redis+sentinel://u:***@s1:26379,s2:26379/mymaster" in lost["exception"]


def test_urls_without_a_password_are_left_alone(captured: Captured) -> None:
    captured.log.info(
        "event=redis_connected url=%s other=%s",
        "redis://127.0.0.1:6379/0",
        "redis://acl-user@127.0.0.1:6379/0",
    )
    record = captured.only()
    assert record["url"] == "redis://127.0.0.1:6379/0"
    assert record["other"] == "redis://acl-user@127.0.0.1:6379/0"


def test_log_format_setting_defaults_to_text_and_ignores_case() -> None:
    assert Settings().log_format == "text"
    assert Settings(LOG_FORMAT=" JSON ").log_format == "json"  # type: ignore[call-arg]
