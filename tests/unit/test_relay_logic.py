"""Pure logic of the relay: cursor order, backoff, adaptive polling, durations, fair share,
marks."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from outbox.envelope import MessagePriority
from outbox.relay.cursor import START, Cursor
from outbox.relay.leases import fair_share
from outbox.relay.marks import Marks
from outbox.relay.prune import parse_duration
from outbox.relay.wakeup import AdaptivePoll, Backoff
from outbox.streams.keys import Keys


def test_cursor_orders_by_txid_before_position() -> None:
    # A later transaction may hold lower positions: (11, 3) comes after (10, 5).
    assert Cursor(10, 5) < Cursor(11, 3)
    assert Cursor(10, 5) < Cursor(10, 6)
    assert sorted([Cursor(11, 3), Cursor(10, 6), Cursor(10, 5)]) == [
        Cursor(10, 5),
        Cursor(10, 6),
        Cursor(11, 3),
    ]


def test_cursor_text_round_trip() -> None:
    cursor = Cursor(2**40 + 7, 123456789012)
    assert str(cursor) == f"{2**40 + 7}:123456789012"
    assert Cursor.parse(str(cursor)) == cursor
    with pytest.raises(ValueError, match="not a cursor"):
        Cursor.parse("12")


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(0.1, 1.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(8)]
    bases = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    for delay, base in zip(delays, bases, strict=True):
        assert base / 2 <= delay <= base
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_adaptive_poll_is_immediate_on_a_backlog_and_backs_off_while_idle() -> None:
    poll = AdaptivePoll(0.001, 0.05)
    assert poll.after_poll(True, full=True) == 0
    assert poll.after_poll(True) == 0.001  # a trickle: let a few events gather
    idle = [poll.after_poll(False) for _ in range(8)]
    assert idle == [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.05, 0.05]
    assert poll.after_poll(True) == 0.001
    assert poll.after_poll(False) == 0.001


async def test_adaptive_poll_wait_ends_early_when_woken() -> None:
    poll = AdaptivePoll(0.001, 60)
    poll.wake()
    # A wake that came first ends the next wait at once (a 60 s wait would time the test out).
    await poll.wait(60)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(days=14)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "-1d", "7 days"])
def test_parse_duration_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_fair_share_covers_every_service() -> None:
    assert fair_share(7, 1) == 7
    assert fair_share(7, 2) == 4
    assert fair_share(7, 3) == 3
    assert fair_share(2, 5) == 1
    assert fair_share(7, 0) == 7
    for services in range(20):
        for relays in range(1, 6):
            assert fair_share(services, relays) * relays >= services


def test_marks_find_the_streams_redis_holds_less_of() -> None:
    keys = Keys("t")
    normal, high = keys.stream("identity"), keys.stream("identity", MessagePriority.HIGH)
    other = keys.stream("assets")
    marks = Marks(keys)
    marks.took("identity", {normal: Cursor(10, 5), high: Cursor(9, 7)})
    marks.took("assets", {other: Cursor(3, 1)})
    # Equal or ahead (another relay published more): no loss.
    assert marks.behind({normal: "10:5", high: "11:1", other: "3:1"}) == {}
    # Behind, gone, malformed (left to the publish script), not read: only the first two.
    held = {normal: "10:4", high: None, other: "not a cursor"}
    assert marks.behind(held) == {"identity": {normal: "10:4", high: ""}}
    assert marks.behind({}) == {}


def test_marks_rewind_to_the_lowest_watermark_left() -> None:
    keys = Keys("t")
    normal, high = keys.stream("identity"), keys.stream("identity", MessagePriority.HIGH)
    marks = Marks(keys)
    marks.took("identity", {normal: Cursor(10, 5), high: Cursor(9, 7)})
    assert marks.rewind("identity", {normal: "8:2"}) == Cursor(8, 2)
    assert marks.of("identity") == {normal: Cursor(8, 2), high: Cursor(9, 7)}
    # A stream that holds nothing: from the start, and it has no mark any more.
    assert marks.rewind("identity", {normal: "8:2", high: ""}) == START
    assert marks.of("identity") == {normal: Cursor(8, 2)}
    marks.forget("identity")
    assert marks.by_stream == {}
