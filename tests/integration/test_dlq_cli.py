"""``outbox dlq list|show|replay|purge`` with filters and confirmation."""

from __future__ import annotations

import json

import pytest
import redis

from outbox.cli.main import main
from outbox.settings import Settings
from outbox.streams.dead_letter import dead_letter_fields
from outbox.streams.keys import Keys


def letter(
    client: redis.Redis, keys: Keys, service: str, event_type: str, n: int, error: str = "boom"
) -> str:
    """Add a dead letter of ``service``'s event number ``n`` to ``keys``' dead letters."""
    payload = {
        "event_id": f"00000000-0000-0000-0000-{n:012d}",
        "event_type": event_type,
        "service": service,
        "data": "{}",
        "priority": "normal",
        "correlation_id": "c",
    }
    fields = dead_letter_fields(
        source_stream=keys.stream(service),
        group=f"{service}_projection",
        entry_id=f"1-{n}",
        attempts=4,
        error=error,
        payload=payload,
        consumer="w-0",
    )
    return client.xadd(keys.dead_letter, fields).decode()  # type: ignore[arg-type,union-attr]


def test_dlq_commands(
    settings: Settings, sync_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = Keys(settings.stream_prefix)
    ids = [letter(sync_redis, keys, "identity", "user_created", n) for n in range(3)]
    ids.append(letter(sync_redis, keys, "assets", "asset_created", 9))

    assert main(["dlq", "list", "--stream", "identity", "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [item["id"] for item in listed] == ids[:3]

    assert main(["dlq", "show", ids[3]]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["event_type"] == "asset_created"
    assert shown["attempts"] == 4

    # A filtered set needs --yes; the count is shown first.
    assert main(["dlq", "replay", "--stream", "identity"]) == 1
    assert "3 dead letter(s) to replay" in capsys.readouterr().err
    assert sync_redis.xlen(keys.stream("identity")) == 0
    assert main(["dlq", "replay", "--stream", "identity", "--yes"]) == 0
    assert sync_redis.xlen(keys.stream("identity")) == 3
    assert sync_redis.xlen(keys.dead_letter) == 1
    replayed = sync_redis.xrange(keys.stream("identity"))
    assert replayed[0][1][b"event_type"] == b"user_created"

    assert main(["dlq", "list", "--older-than", "1h"]) == 0
    assert "0 dead letter(s)" in capsys.readouterr().err
    assert main(["dlq", "purge", "--all"]) == 1
    assert main(["dlq", "purge", "--all", "--yes"]) == 0
    assert sync_redis.xlen(keys.dead_letter) == 0


def test_an_id_that_is_not_a_dead_letter_fails_the_command(
    settings: Settings, sync_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ids that are dead letters are acted on; a mistyped or already handled one makes the
    command exit 1, so a script sees that not everything it named was done."""
    keys = Keys(settings.stream_prefix)
    kept, purged = (letter(sync_redis, keys, "identity", "user_created", n) for n in range(2))

    assert main(["dlq", "purge", purged, "1-1", "--yes"]) == 1
    captured = capsys.readouterr()
    assert "1 of the given ids are not dead letters" in captured.err
    assert captured.out == "purged 1 dead letter(s)\n"
    assert [entry_id.decode() for entry_id, _ in sync_redis.xrange(keys.dead_letter)] == [kept]

    assert main(["dlq", "replay", kept, "--keep"]) == 0
    assert main(["dlq", "replay", purged]) == 1
    captured = capsys.readouterr()
    assert "1 of the given ids are not dead letters" in captured.err
    assert captured.out.endswith("replayed 0 dead letter(s) to their source streams\n")
    assert sync_redis.xlen(keys.stream("identity")) == 1
