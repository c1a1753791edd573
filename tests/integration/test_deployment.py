"""What the shipped deployment files promise (beyond what `docker compose config` validates)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def redis_conf() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (ROOT / "deploy" / "redis.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            settings.setdefault(key, []).append(value)
    return settings


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_redis_never_evicts_and_keeps_an_append_only_file() -> None:
    conf = redis_conf()
    assert conf["maxmemory-policy"] == ["noeviction"]
    assert conf["appendonly"] == ["yes"]
    assert conf["appendfsync"] == ["everysec"]
    assert "requirepass" not in conf


def test_no_password_is_written_down() -> None:
    """Every secret is a required variable (``${X:?}``), or empty = disabled (the admin token)."""
    assert "opsconductor-streams-2024" not in (ROOT / "docker-compose.yml").read_text()
    secrets = 0
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "AUTH", "TOKEN")):
                secrets += 1
                assert re.fullmatch(r"\$\{[A-Z_]+:(\?[^}]*|-)\}", str(value)), (name, key)
            if key == "DATABASE_URL":
                assert "${POSTGRES_PASSWORD:?" in str(value), name
    assert secrets >= 4


def test_services_and_their_order() -> None:
    services = compose()["services"]
    assert services["redis"]["image"] == "redis:7.4"
    assert services["relay"]["deploy"]["replicas"] == 2
    for name in ("postgres", "redis", "monitor"):
        assert "healthcheck" in services[name], name
    for name in ("relay", "projections", "monitor", "demo"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    ports = services["monitor"]["ports"]
    assert all(str(p).startswith("127.0.0.1:") for p in ports)
