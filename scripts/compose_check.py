#!/usr/bin/env python3
"""Validate docker-compose.yml without Docker (run by scripts/compose-check.sh and by pytest).

1. Every use of a secret (``POSTGRES_PASSWORD``, ``REDIS_PASSWORD``) is ``${VAR:?message}``,
   so the file refuses to render without it: there is no default password anywhere.
2. Rendered without the secrets, the file fails, naming one.
3. Rendered with dummy secrets (and every other variable unset, so defaults apply), it is valid
   against the Compose specification's JSON schema (``check-jsonschema --builtin-schema
   vendor.compose-spec``), every ``depends_on`` names a service and every named volume is
   declared.

Interpolation follows the Compose specification: ``$$`` is a literal ``$``; ``$VAR``, ``${VAR}``,
``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}``,
``${VAR+alt}``, nested in defaults; values are interpolated, keys are not.
https://github.com/compose-spec/compose-spec/blob/main/12-interpolation.md

Usage: ``compose_check.py [FILE]`` (default: docker-compose.yml at the repository's root).
Exit 0: valid; 1: invalid (the reasons on stderr); 2: check-jsonschema is not installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD")
DUMMY_SECRET = "compose-check-only"
SCHEMA = "vendor.compose-spec"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class InterpolationError(ValueError):
    """A ``${VAR:?message}`` whose variable is unset, or a malformed ``${…}``."""


@dataclass(frozen=True)
class Reference:
    """One ``$VAR`` / ``${VAR<operator><argument>}`` in a value."""

    name: str
    operator: str  # "" for $VAR and ${VAR}
    argument: str


def _scan(text: str) -> Iterator[str | Reference]:
    """The literal pieces and the references of ``text``, in order (``$$`` is a literal ``$``)."""
    index = 0
    literal: list[str] = []
    while index < len(text):
        char = text[index]
        if char != "$":
            literal.append(char)
            index += 1
            continue
        following = text[index + 1 : index + 2]
        if following == "$":
            literal.append("$")
            index += 2
        elif following == "{":
            end = _closing_brace(text, index + 2)
            body = text[index + 2 : end]
            match = NAME.match(body)
            if match is None:
                raise InterpolationError(f"invalid interpolation {text[index : end + 1]!r}")
            rest = body[match.end() :]
            operator = next((op for op in OPERATORS if rest.startswith(op)), "")
            if rest and not operator:
                raise InterpolationError(f"invalid interpolation {text[index : end + 1]!r}")
            if literal:
                yield "".join(literal)
                literal = []
            yield Reference(match.group(), operator, rest[len(operator) :])
            index = end + 1
        elif (match := NAME.match(text, index + 1)) is not None:
            if literal:
                yield "".join(literal)
                literal = []
            yield Reference(match.group(), "", "")
            index = match.end()
        else:
            literal.append("$")
            index += 1
    if literal:
        yield "".join(literal)


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    index = start
    while index < len(text):
        if text.startswith("${", index):
            depth += 1
            index += 2
            continue
        if text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    raise InterpolationError(f"unterminated interpolation in {text!r}")


def references(text: str) -> Iterator[Reference]:
    """Every reference in ``text``, including those nested in defaults."""
    for piece in _scan(text):
        if isinstance(piece, Reference):
            yield piece
            yield from references(piece.argument)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    out: list[str] = []
    for piece in _scan(text):
        if isinstance(piece, str):
            out.append(piece)
            continue
        value = env.get(piece.name)
        is_set, non_empty = value is not None, bool(value)
        match piece.operator:
            case "":
                out.append(value or "")
            case ":-" | "-":
                use = non_empty if piece.operator == ":-" else is_set
                out.append(value if use and value is not None else interpolate(piece.argument, env))
            case ":?" | "?":
                if not (non_empty if piece.operator == ":?" else is_set):
                    message = interpolate(piece.argument, env) or "is required"
                    raise InterpolationError(f"{piece.name}: {message}")
                out.append(value or "")
            case _:  # ":+" | "+"
                use = non_empty if piece.operator == ":+" else is_set
                out.append(interpolate(piece.argument, env) if use else "")
    return "".join(out)


def render(data: Any, env: Mapping[str, str]) -> Any:
    """``data`` with every string value interpolated (mapping keys are left as they are)."""
    if isinstance(data, str):
        return interpolate(data, env)
    if isinstance(data, dict):
        return {key: render(value, env) for key, value in data.items()}
    if isinstance(data, list):
        return [render(value, env) for value in data]
    return data


def _strings(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for value in data.values():
            yield from _strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _strings(value)


def secret_problems(data: Any) -> list[str]:
    """Uses of a secret that are not ``${VAR:?…}``, and secrets the file never uses."""
    problems: list[str] = []
    used: set[str] = set()
    for text in _strings(data):
        for ref in references(text):
            if ref.name in SECRETS:
                used.add(ref.name)
                if ref.operator != ":?":
                    problems.append(
                        f"{ref.name} is used as {text!r}: it must be ${{{ref.name}:?…}}"
                    )
    problems.extend(f"{name} is never used" for name in SECRETS if name not in used)
    try:
        render(data, {})
    except InterpolationError as error:
        if not any(name in str(error) for name in SECRETS):
            problems.append(f"without the secrets it fails for another reason: {error}")
    else:
        problems.append(f"the file renders without {' and '.join(SECRETS)}")
    return problems


def reference_problems(rendered: Mapping[str, Any]) -> list[str]:
    """What the schema cannot see: ``depends_on`` and named volumes that point nowhere."""
    problems: list[str] = []
    services: Mapping[str, Any] = rendered.get("services") or {}
    volumes: Mapping[str, Any] = rendered.get("volumes") or {}
    for name, service in services.items():
        depends = service.get("depends_on") or []
        for other in depends if isinstance(depends, list) else depends.keys():
            if other not in services:
                problems.append(f"service {name} depends on {other}, which is not a service")
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
            named = source and not source.startswith(("/", ".", "~", "$"))
            if isinstance(volume, dict) and volume.get("type", "volume") != "volume":
                named = False
            if named and source not in volumes:
                problems.append(f"service {name} mounts volume {source}, which is not declared")
    return problems


def schema_problems(rendered: Any) -> list[str]:
    """Validation against the Compose specification's JSON schema, by check-jsonschema."""
    with tempfile.TemporaryDirectory() as tmp:
        instance = Path(tmp) / "docker-compose.json"
        instance.write_text(json.dumps(rendered))
        result = subprocess.run(
            [sys.executable, "-m", "check_jsonschema", "--builtin-schema", SCHEMA, str(instance)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    if result.returncode == 0:
        return []
    return [(result.stdout + result.stderr).strip() or f"check-jsonschema: {result.returncode}"]


def check(path: Path) -> list[str]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        return [f"{path} is not a mapping"]
    problems = secret_problems(data)
    try:
        rendered = render(data, dict.fromkeys(SECRETS, DUMMY_SECRET))
    except InterpolationError as error:
        return [*problems, f"does not render with dummy secrets: {error}"]
    return [*problems, *reference_problems(rendered), *schema_problems(rendered)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else "")
    parser.add_argument("file", nargs="?", type=Path, default=ROOT / "docker-compose.yml")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("check_jsonschema") is None:
        print(
            "compose-check: check-jsonschema is not installed (make setup installs it)",
            file=sys.stderr,
        )
        return 2
    problems = check(args.file)
    for problem in problems:
        print(f"compose-check: {args.file.name}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(
        f"compose-check: {args.file.name} is valid against the Compose specification's schema"
        f" and needs {' and '.join(SECRETS)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
