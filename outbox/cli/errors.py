"""Turn failures the user can act on into one line on stderr instead of a traceback."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from outbox.errors import OutboxError


def _is_connection_refused(error: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionRefusedError, OSError)) and "refused" in str(current):
            return True
        text = str(current)
        if "Connection refused" in text or "could not connect" in text.lower():
            return True
        current = current.__cause__ or current.__context__
    return False


def _secret_settings() -> frozenset[str]:
    """The names (lower case) of the settings that hold secrets."""
    from outbox.settings import Settings

    return frozenset(
        name
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    )


def report_failure(error: BaseException) -> int | None:
    """Print a one-line explanation and return the exit code, or None for a real bug."""
    if isinstance(error, OutboxError):
        print(f"outbox: {error}", file=sys.stderr)
        return 2
    if isinstance(error, ValidationError) and error.title == "Settings":
        # A bad value in the environment or .env: name each variable and what it should be.
        for problem in error.errors():
            variable = ".".join(str(part) for part in problem["loc"])
            # A secret's value (a token, a password, a key) never reaches the terminal or a log;
            # neither does the whole input a check across settings (no ``loc``) is given.
            shown = (
                "<hidden>"
                if not variable or variable.lower() in _secret_settings()
                else repr(problem.get("input"))
            )
            print(
                f"outbox: invalid setting {variable or 'combination'}={shown}: {problem['msg']}",
                file=sys.stderr,
            )
        print("  (README, Configuration, lists every setting and its default)", file=sys.stderr)
        return 2
    if _is_connection_refused(error):
        print(
            f"outbox: cannot reach a service: {error.__class__.__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}\n"
            "  PostgreSQL: check DATABASE_URL; start it with `make up` or `docker compose up -d "
            "postgres`.\n"
            "  Redis: check REDIS_STREAMS_URL; start it with `make up` or `docker compose up -d "
            "redis`.",
            file=sys.stderr,
        )
        return 2
    return None
