"""The dead-letter stream (``<prefix>:dead_letter:events``): add, list, replay, purge.

A dead letter records where the entry came from (source stream, group, entry id), how often it
was tried, the last error and the original entry fields (``payload``, JSON), so it can be
replayed exactly: replay re-adds the original fields to the source stream, where every group
sees it again; projections absorb the copy with their inbox (DESIGN.md invariant 5). Entries
older than DEAD_LETTER_TTL are trimmed by each add (XADD MINID ~).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import exceptions as redis_errors

from outbox.streams.codec import entry_ms
from outbox.streams.connection import RedisClient, reply_text
from outbox.streams.errors import translate
from outbox.streams.keys import Keys

_PAGE = 500


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter entry, decoded."""

    id: str
    source_stream: str
    group: str
    entry_id: str
    attempts: int
    error: str
    event_id: str
    event_type: str
    consumer: str
    failed_at: datetime
    payload: dict[str, str]

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.failed_at.timestamp())

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source_stream": self.source_stream,
            "group": self.group,
            "entry_id": self.entry_id,
            "attempts": self.attempts,
            "error": self.error,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "consumer": self.consumer,
            "failed_at": self.failed_at.isoformat(),
            "payload": self.payload,
        }


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters a command applies to; ``None`` means any."""

    stream: str | None = None
    group: str | None = None
    event_type: str | None = None
    older_than_s: float | None = None
    newer_than_s: float | None = None

    def matches(self, letter: DeadLetter, keys: Keys) -> bool:
        if self.stream is not None:
            parsed = keys.parse_stream(letter.source_stream)
            service = parsed[0] if parsed else None
            if self.stream not in (letter.source_stream, service):
                return False
        if self.group is not None and letter.group != self.group:
            return False
        if self.event_type is not None and letter.event_type != self.event_type:
            return False
        if self.older_than_s is not None and letter.age_s < self.older_than_s:
            return False
        return not (self.newer_than_s is not None and letter.age_s > self.newer_than_s)


def dead_letter_fields(
    *,
    source_stream: str,
    group: str,
    entry_id: str,
    attempts: int,
    error: str,
    payload: Mapping[Any, Any],
    consumer: str,
) -> dict[str, str]:
    """The fields of a dead-letter entry (see module doc)."""
    original = {reply_text(k): reply_text(v) for k, v in payload.items()}
    return {
        "source_stream": source_stream,
        "group": group,
        "entry_id": entry_id,
        "attempts": str(attempts),
        "error": error[:2000],
        "event_id": original.get("event_id", ""),
        "event_type": original.get("event_type", ""),
        "consumer": consumer,
        "failed_at": datetime.now(UTC).isoformat(),
        "payload": json.dumps(original, ensure_ascii=False, separators=(",", ":")),
    }


def decode_dead_letter(entry_id: str, fields: Mapping[Any, Any]) -> DeadLetter:
    values = {reply_text(k): reply_text(v) for k, v in fields.items()}
    try:
        payload = json.loads(values.get("payload", "{}"))
    except ValueError:
        payload = {"raw": values.get("payload", "")}
    failed_text = values.get("failed_at")
    try:
        failed_at = datetime.fromisoformat(failed_text) if failed_text else None
    except ValueError:
        failed_at = None
    if failed_at is None:  # fall back to the entry id's milliseconds
        failed_at = datetime.fromtimestamp(entry_ms(entry_id) / 1000, UTC)
    return DeadLetter(
        id=entry_id,
        source_stream=values.get("source_stream", ""),
        group=values.get("group", ""),
        entry_id=values.get("entry_id", ""),
        attempts=int(values.get("attempts", "0") or 0),
        error=values.get("error", ""),
        event_id=values.get("event_id", ""),
        event_type=values.get("event_type", ""),
        consumer=values.get("consumer", ""),
        failed_at=failed_at,
        payload=payload if isinstance(payload, dict) else {"raw": str(payload)},
    )


class DeadLetters:
    """The dead-letter stream of one prefix."""

    def __init__(self, redis: RedisClient, keys: Keys, ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s

    def min_id(self) -> str:
        """Entries older than DEAD_LETTER_TTL fall below this id and are trimmed."""
        return str(int((time.time() - self.ttl_s) * 1000))

    def add_command(self, fields: Mapping[str, str]) -> tuple[str, ...]:
        """The XADD of one dead letter (trimming what is older than DEAD_LETTER_TTL): sent by
        :meth:`add`, or by a consumer in one round trip with the XACK of its source
        (:func:`streams.connection.raw_pipeline`)."""
        flat = [part for pair in fields.items() for part in pair]
        return ("XADD", self.keys.dead_letter, "MINID", "~", self.min_id(), "*", *flat)

    async def add(self, fields: Mapping[str, str]) -> str:
        command = self.add_command(fields)
        try:
            entry_id = await self.redis.execute_command(*command)
        except redis_errors.RedisError as error:
            raise translate(error, self.keys.dead_letter) from None
        return reply_text(entry_id)

    async def iterate(self, where: DeadLetterFilter | None = None) -> AsyncIterator[DeadLetter]:
        """Every dead letter matching ``where``, oldest first (paged XRANGE)."""
        start = "-"
        while True:
            try:
                page: Any = await self.redis.xrange(self.keys.dead_letter, min=start, count=_PAGE)
            except redis_errors.RedisError as error:
                raise translate(error, self.keys.dead_letter) from None
            for entry_id, fields in page:
                letter = decode_dead_letter(reply_text(entry_id), fields)
                if where is None or where.matches(letter, self.keys):
                    yield letter
            if len(page) < _PAGE:
                return
            start = "(" + reply_text(page[-1][0])

    async def select(self, where: DeadLetterFilter | None = None) -> list[DeadLetter]:
        return [letter async for letter in self.iterate(where)]

    async def get(self, entry_id: str) -> DeadLetter | None:
        try:
            page: Any = await self.redis.xrange(self.keys.dead_letter, min=entry_id, max=entry_id)
        except redis_errors.RedisError as error:
            raise translate(error, self.keys.dead_letter) from None
        return decode_dead_letter(reply_text(page[0][0]), page[0][1]) if page else None

    async def delete(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        try:
            return int(await self.redis.xdel(self.keys.dead_letter, *ids))
        except redis_errors.RedisError as error:
            raise translate(error, self.keys.dead_letter) from None

    async def count(self) -> int:
        try:
            return int(await self.redis.xlen(self.keys.dead_letter))
        except redis_errors.RedisError as error:
            raise translate(error, self.keys.dead_letter) from None

    async def replay(
        self,
        letters: Sequence[DeadLetter],
        *,
        keep: bool = False,
        into: list[str] | None = None,
    ) -> list[str]:
        """Re-add each letter's original fields to its source stream; then delete the letter.

        Idempotent in effect: a projection that already applied the event skips the copy
        (inbox). With ``keep`` the dead letters stay (for a dry run into a test stream).
        Returns the new entry ids; ``into`` receives them as they come, so a caller still
        knows how many were replayed when a later one fails (the audit log records that).
        """
        new_ids: list[str] = [] if into is None else into
        for letter in letters:
            if not letter.source_stream:
                continue
            try:
                original: dict[Any, Any] = dict(letter.payload)
                new_id = await self.redis.xadd(letter.source_stream, original)
                if not keep:
                    await self.redis.xdel(self.keys.dead_letter, letter.id)
            except redis_errors.RedisError as error:
                raise translate(error, letter.source_stream) from None
            new_ids.append(reply_text(new_id))
        return new_ids
