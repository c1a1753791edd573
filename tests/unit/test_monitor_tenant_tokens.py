"""MONITOR_TENANT_TOKENS: checked at start with a message that names the entry, never its token;
and who each header is (monitor/tenancy.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from outbox.monitor.tenancy import EVERYONE, Access, Viewer, scope_snapshot
from outbox.settings import Settings, parse_tenant_tokens

OUTBOX = Path(sys.executable).with_name("outbox")
TOKEN = "s3cr3t-t0ken-value-XYZ"


def test_pairs_are_parsed_and_a_tenant_may_have_several_tokens() -> None:
    text = f" acme:{TOKEN} , globex:{TOKEN}2,acme:{TOKEN}3,"
    assert parse_tenant_tokens(text) == [
        ("acme", TOKEN),
        ("globex", f"{TOKEN}2"),
        ("acme", f"{TOKEN}3"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{TOKEN}", "entry 1: expected <tenant>:<token>"),
        (f"Acme:{TOKEN}", "entry 1: invalid tenant id 'Acme'"),
        (f"events:{TOKEN}", "entry 1: invalid tenant id 'events'"),
        ("acme:short", "entry 1 (acme): a token is 16 to 512 characters"),
        (f"acme:{TOKEN},globex:{TOKEN}", "entry 2: a token is given twice"),
        (" , ", "names no <tenant>:<token>"),
    ],
)
def test_a_bad_entry_is_named_without_its_token(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="MONITOR_TENANT_TOKENS") as raised:
        parse_tenant_tokens(text)
    assert message in str(raised.value)
    assert TOKEN not in str(raised.value)
    assert "short" not in str(raised.value)


def test_a_tenant_token_may_not_be_the_admin_token() -> None:
    with pytest.raises(ValidationError, match="equals MONITOR_ADMIN_TOKEN"):
        Settings(
            monitor_admin_token=SecretStr(TOKEN), monitor_tenant_tokens=SecretStr(f"a:{TOKEN}")
        )


def test_the_command_line_reports_a_bad_value_without_showing_it() -> None:
    env = {**os.environ, "MONITOR_TENANT_TOKENS": f"Acme:{TOKEN}"}
    result = subprocess.run(
        [str(OUTBOX), "check"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "outbox: invalid setting MONITOR_TENANT_TOKENS=<hidden>" in result.stderr
    assert "invalid tenant id 'Acme'" in result.stderr
    assert TOKEN not in result.stderr
    assert "Traceback" not in result.stderr


def test_who_a_header_is() -> None:
    settings = Settings(
        monitor_admin_token=SecretStr("admin-token-0123456789"),
        monitor_tenant_tokens=SecretStr(f"acme:{TOKEN}"),
    )
    access = Access(settings)
    assert access.identify("Bearer admin-token-0123456789") == EVERYONE
    assert access.identify(f"Bearer {TOKEN}") == Viewer("acme")
    assert access.identify(f"bearer {TOKEN}") == Viewer("acme")
    assert access.identify(TOKEN) is None
    assert access.identify(None) is None
    assert access.identify(f"Bearer {TOKEN}x") is None
    # Without tenant tokens reads stay open, as they always were.
    assert Access(Settings()).identify(None) == EVERYONE


def test_a_tenant_snapshot_keeps_nothing_of_others() -> None:
    snapshot = {
        "outbox": {
            "db_now": 1.0,
            "streams": [{"stream": "assets"}],
            "oldest_write_transaction": {},
        },
        "relays": [{"instance": "r"}],
        "streams": [
            {"key": "p:tenant:acme:assets:events", "tenant": "acme"},
            {"key": "p:tenant:globex:assets:events", "tenant": "globex"},
            {"key": "p:assets:events", "tenant": None},
        ],
        "projections": [{"name": "x"}],
        "consumers": [{"group": "g", "consumer": "c", "tenant": "globex"}],
        "dead_letters": {"count": 9, "added": 9},
        "partitions": [{"projection": "x"}],
        "tenants": [
            {"tenant": "acme", "dead_letters": {"count": 1, "added": 2}},
            {"tenant": "globex", "dead_letters": {"count": 5, "added": 5}},
        ],
        "redis": {"used_memory_bytes": 1},
        "status": {
            "overall": {"level": "ERR", "reason": "x"},
            "components": [
                {
                    "component": "group:p:tenant:acme:assets:events/g",
                    "level": "WARN",
                    "reason": "a",
                },
                {
                    "component": "group:p:tenant:globex:assets:events/g",
                    "level": "ERR",
                    "reason": "b",
                },
                {"component": "client:tenant:globex/g/c", "level": "ERR", "reason": "c"},
                {"component": "outbox:assets", "level": "ERR", "reason": "d"},
            ],
        },
    }
    scoped = scope_snapshot(snapshot, "acme")
    assert "globex" not in repr(scoped)
    assert [s["key"] for s in scoped["streams"]] == ["p:tenant:acme:assets:events"]
    assert scoped["dead_letters"] == {"count": 1, "added": 2}
    assert scoped["status"]["overall"]["level"] == "WARN"
    assert scoped["redis"] is None
    assert scoped["relays"] == []
    assert scoped["outbox"]["streams"] == []
    assert scope_snapshot(snapshot, None) is snapshot
