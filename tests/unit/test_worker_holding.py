"""Which deliveries wait behind a failed event of their aggregate (projections.worker)."""

from __future__ import annotations

from outbox.projections.worker import _held_back
from outbox.streams.codec import MessagePriority, StreamMessage


def _message(aggregate: str | None, position: int | None) -> StreamMessage:
    return StreamMessage(
        id="1-0",
        stream="s",
        event_type="t",
        service="svc",
        data={},
        priority=MessagePriority.NORMAL,
        timestamp=0.0,
        retry_count=0,
        max_retries=3,
        correlation_id="c",
        aggregate_id=aggregate,
        position=position,
    )


def test_only_an_earlier_waiting_event_holds_a_delivery_back() -> None:
    waiting = {"a": 5}  # aggregate a's earliest event waiting for a retry is at position 5
    assert _held_back(_message("a", 6), waiting)
    # The failed event itself (position 4 < 5: its followers wait, it does not wait for them).
    assert not _held_back(_message("a", 4), waiting)
    assert not _held_back(_message("b", 6), waiting)
    assert not _held_back(_message(None, 6), waiting)


def test_without_positions_every_event_of_a_waiting_aggregate_is_held() -> None:
    assert _held_back(_message("a", None), {"a": 5})
    assert _held_back(_message("a", 1), {"a": None})
