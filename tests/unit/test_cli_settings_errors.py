"""A bad value in the environment is one clear line per variable and exit 2, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

OUTBOX = Path(sys.executable).with_name("outbox")


@pytest.mark.parametrize("command", [["check"], ["project"], ["relay"], ["dlq", "list"]])
def test_invalid_settings_are_named_with_what_they_should_be(command: list[str]) -> None:
    env = {**os.environ, "PROCESSOR_WORKERS": "abc", "OUTBOX_EVENT_LOOP": "trio"}
    result = subprocess.run(
        [str(OUTBOX), *command], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert any(
        line.startswith("outbox: invalid setting PROCESSOR_WORKERS='abc'")
        and "valid integer" in line
        for line in lines
    )
    assert any(
        line.startswith("outbox: invalid setting OUTBOX_EVENT_LOOP='trio'")
        and "'auto', 'uvloop' or 'asyncio'" in line
        for line in lines
    )
    assert "coroutine" not in result.stderr  # nothing was started


def test_an_unknown_log_format_is_named_before_anything_logs() -> None:
    env = {**os.environ, "LOG_FORMAT": "xml"}
    result = subprocess.run(
        [str(OUTBOX), "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[0].startswith("outbox: invalid setting LOG_FORMAT='xml'")
    assert "'text' or 'json'" in result.stderr
    assert "Traceback" not in result.stderr
