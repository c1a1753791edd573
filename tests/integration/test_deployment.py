"""What the shipped deployment files promise: docker-compose.yml validated without Docker (against
the Compose specification's schema, as `make compose-check` does) and what no schema can see."""

from __future__ import annotations

import functools
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
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


# --- validation without Docker (scripts/compose_check.py, which `make compose-check` runs) ---

COMPOSE_CHECK = ROOT / "scripts" / "compose_check.py"


@functools.cache
def _compose_check_module() -> Any:
    """scripts/compose_check.py, imported (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("compose_check", COMPOSE_CHECK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_compose_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(COMPOSE_CHECK), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=path.parent,
    )


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    """The shipped file, interpolated with dummy secrets, passes the Compose specification's
    JSON schema (check-jsonschema's vendored compose-spec), and needs both secrets."""
    result = run_compose_check(ROOT / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid against the Compose specification" in result.stdout


BROKEN = {
    "a default password": (
        "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}@postgres",
        "${POSTGRES_PASSWORD:-postgres}@postgres",
        "POSTGRES_PASSWORD is used as",
    ),
    "an unknown depends_on condition": (
        "condition: service_completed_successfully",
        "condition: service_finished",
        "is not one of",
    ),
    "a misspelled key": ("    healthcheck:\n", "    healthchek:\n", "healthchek"),
    "a dependency on no service": ("      migrate:\n", "      migration:\n", "not a service"),
}


@pytest.mark.parametrize("broken", BROKEN, ids=list(BROKEN))
def test_compose_check_refuses_a_broken_file(broken: str, tmp_path: Path) -> None:
    old, new, complaint = BROKEN[broken]
    text = (ROOT / "docker-compose.yml").read_text()
    assert old in text, "the shipped file changed: update this case"
    path = tmp_path / "docker-compose.yml"
    path.write_text(text.replace(old, new, 1))
    result = run_compose_check(path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert complaint in result.stderr


@pytest.mark.parametrize(
    ("template", "env", "expected"),
    [
        ("$$HOME ${A}", {"A": "a"}, "$HOME a"),
        ("$A/$B.", {"A": "a"}, "a/."),
        ("${A:-x} ${A-x}", {"A": ""}, "x "),
        ("${A:-${B:-deep}}", {}, "deep"),
        ("${A:+set} ${B+set}", {"A": "a", "B": ""}, "set set"),
        ("${A:?} ${A?}", {"A": "a"}, "a a"),
    ],
)
def test_interpolation_follows_the_compose_specification(
    template: str, env: dict[str, str], expected: str
) -> None:
    assert _compose_check_module().interpolate(template, env) == expected


def test_a_required_variable_that_is_missing_names_itself() -> None:
    compose_check = _compose_check_module()
    with pytest.raises(compose_check.InterpolationError, match="REDIS_PASSWORD: set it"):
        compose_check.interpolate("${REDIS_PASSWORD:?set it}", {"REDIS_PASSWORD": ""})
    assert compose_check.interpolate("${REDIS_PASSWORD?set it}", {"REDIS_PASSWORD": ""}) == ""
