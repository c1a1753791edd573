"""``outbox keys new`` and what a bad key setting prints: one clear line, never the key."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

OUTBOX = Path(sys.executable).with_name("outbox")


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(OUTBOX), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keys_new_prints_a_key_that_the_setting_takes() -> None:
    result = _run("keys", "new", "k7")
    assert result.returncode == 0, result.stderr
    key_id, _, key = result.stdout.strip().partition(":")
    assert key_id == "k7"
    assert len(base64.b64decode(key, validate=True)) == 32
    assert _run("keys", "new", "bad id").returncode == 2


def test_a_bad_key_setting_is_one_clear_line_without_the_key() -> None:
    short = base64.b64encode(b"0123456789abcdef").decode()
    result = _run("keys", "rotate", OUTBOX_ENCRYPTION_KEYS=f"k1:{short}")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "encryption key 'k1' is 16 bytes; AES-256 needs 32" in result.stderr
    assert short not in result.stderr
    result = _run("keys", "status", OUTBOX_ENCRYPTION_KEYS="")
    assert result.returncode == 2, result.stderr
    assert "no encryption key" in result.stderr
