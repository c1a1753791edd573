"""The README documents every setting and every subcommand."""

from __future__ import annotations

from pathlib import Path

from outbox.cli.main import build_parser
from outbox.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_has_its_environment_variable_in_the_readme() -> None:
    missing = []
    for name, field in Settings.model_fields.items():
        variable = field.validation_alias.choices[0]  # type: ignore[union-attr]
        if f"`{variable}`" not in README:
            missing.append(f"{name} ({variable})")
    assert missing == []


def test_every_subcommand_is_in_the_readme() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(commands) >= {"migrate", "relay", "project", "monitor", "demo", "dlq"}
    for command in commands:
        assert f"`outbox {command}" in README, command
