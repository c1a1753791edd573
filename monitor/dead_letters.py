"""Dead letters as the monitor shows them: filtered, masked, and the admin actions on them."""

from __future__ import annotations

import json
from typing import Any

from outbox.monitor.security import mask_fields
from outbox.streams.dead_letter import DeadLetter, DeadLetterFilter, DeadLetters


def present(letter: DeadLetter, masked: frozenset[str]) -> dict[str, Any]:
    """A dead letter for a response: the original entry's ``data`` decoded and masked."""
    body = letter.as_dict()
    payload = dict(body.pop("payload"))
    data_text = payload.pop("data", None)
    data: Any = None
    if data_text is not None:
        try:
            data = json.loads(data_text)
        except ValueError:
            data = data_text
    body["entry"] = mask_fields(payload, masked)
    body["data"] = mask_fields(data, masked)
    body["age_s"] = round(letter.age_s, 3)
    return body


async def select(
    dead_letters: DeadLetters, where: DeadLetterFilter, limit: int
) -> tuple[list[DeadLetter], int]:
    """The newest ``limit`` matches (newest first) and the total number that match."""
    matches = await dead_letters.select(where)
    return list(reversed(matches))[:limit], len(matches)
