"""`produce` says what the bodies it sent hold, and `tail` what it read, as counts."""

from __future__ import annotations

import collections

from consumer.tools import produce
from consumer.tools.tail import kind_of, summary


def test_the_bundled_samples_hold_distinct_messages_and_statuses() -> None:
    """Each sample message and status has an id of its own (Meta's docs reuse one), so
    the report of the bundled samples is 9 messages, 3 statuses, and the errors-only
    body that holds neither."""
    found = produce.contents(produce.sample_bodies(), 1 << 22)
    assert found == produce.Contents(messages=9, statuses=3, empty=1, unusable=0)
    assert found.describe() == (
        "they hold 9 unique messages and 3 unique status updates: expect 9 message_created "
        "and at most 3 message_status_changed (a status at or below its message's state "
        "is stored, not announced); 1 body holding neither (errors, other fields)"
    )


def test_the_report_counts_bodies_for_the_dead_letter_topic() -> None:
    bodies = [("a", b"not json"), ("b", b"{}")]
    found = produce.contents(bodies, 1 << 20)
    assert found == produce.Contents(messages=0, statuses=0, empty=0, unusable=2)
    assert found.describe().endswith("; 2 bodies for the dead-letter topic")
    assert produce.count(1, "body", "bodies") == "1 body"
    assert produce.count(0, "body", "bodies") == "0 bodies"


def test_tail_counts_each_kind_on_exit() -> None:
    values = [
        b'{"event": "message_created"}',
        b'{"event": "message_status_changed"}',
        b'{"event": "message_created"}',
        b"[1]",
        None,
    ]
    kinds = collections.Counter(kind_of(v) for v in values)
    assert summary("out", kinds) == (
        "5 event(s) read from out: message_created 2, message_status_changed 1, other 2"
    )
    assert summary("out", collections.Counter()) == "0 event(s) read from out"
