"""A data error is not an outage (docs/design.md, rule 10), over in-memory fakes.

A record whose data the database refuses, or whose processing raises something
unexpected, is isolated by splitting its batch until it is alone, and dead-lettered
(``unstorable`` / ``internal_error``); its neighbours are stored and announced; every
lease is given back; a dependency failure still retries everything and dead-letters
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from consumer import events
from consumer.errors import StoreError, UnstorableError
from consumer.events import OutboundEvent
from consumer.ports import UNCLAIMED, Claim, PendingMessage, PendingStatus, SaveResult
from consumer.records import InboundRecord, Invalid, Message, Reason
from consumer.testing import key, message, record, webhook
from tests.unit.test_pipeline import World


def _batch(*wamid_groups: tuple[str, ...]) -> list[InboundRecord]:
    """One record per group, each holding those messages, at offsets 0, 1, 2..."""
    return [
        record(webhook([message(w) for w in group]), offset=i)
        for i, group in enumerate(wamid_groups)
    ]


def _offsets(records: list[InboundRecord]) -> list[int]:
    return sorted(r.offset for r in records)


@pytest.mark.parametrize("culprit", [0, 3, 7])
async def test_a_refused_record_is_dead_lettered_alone(culprit: int) -> None:
    """One record of eight holds a message the database refuses: that record, and only
    it, goes to the DLQ as unstorable with the database's message; the other seven are
    stored, announced and durable; no lease is left behind."""
    world = World()
    groups: list[tuple[str, ...]] = [(f"wamid.{i}",) for i in range(8)]
    groups[culprit] = (f"wamid.{culprit}", "wamid.bad")
    world.store.refuse.add("wamid.bad")
    records = _batch(*groups)

    report = await world.pipeline.process(records)

    (letter,) = world.publisher.dead_letters
    assert letter.record.offset == culprit
    assert letter.reason is Reason.UNSTORABLE
    assert "fake CHECK constraint" in letter.detail
    assert _offsets(report.durable) == list(range(8))
    assert report.retry == []
    assert report.failure is None
    stored = {k.wamid for k in world.store.rows}
    assert stored == {f"wamid.{i}" for i in range(8) if i != culprit}
    assert sorted(world.published_ids()) == sorted(key(w).event_id for w in stored)
    assert world.leases.owned_by("w1") == set(), "every lease was released or finished"
    assert (report.isolated, report.dead_lettered, report.stored) == (1, 1, 7)
    assert report.messages == 9


async def test_several_refused_records_are_each_found() -> None:
    """Three refused records among sixteen: each is found and dead-lettered at its own
    offset; the thirteen others are stored once."""
    world = World()
    bad = {2, 9, 15}
    world.store.refuse.update(f"wamid.{i}" for i in bad)
    records = _batch(*[(f"wamid.{i}",) for i in range(16)])

    report = await world.pipeline.process(records)

    assert sorted(d.record.offset for d in world.publisher.dead_letters) == sorted(bad)
    assert {d.reason for d in world.publisher.dead_letters} == {Reason.UNSTORABLE}
    assert len(world.store.rows) == 13
    assert len(world.publisher.published) == 13
    assert _offsets(report.durable) == list(range(16))


async def test_a_redelivered_copy_of_a_refused_message_is_judged_on_its_own() -> None:
    """The refused message arrives twice in one batch (two records): both copies are
    dead-lettered, each at its own offset, and neither is stored."""
    world = World()
    world.store.refuse.add("wamid.bad")
    records = _batch(("wamid.a",), ("wamid.bad",), ("wamid.b",), ("wamid.bad",))

    await world.pipeline.process(records)

    assert sorted(d.record.offset for d in world.publisher.dead_letters) == [1, 3]
    assert {k.wamid for k in world.store.rows} == {"wamid.a", "wamid.b"}


async def test_an_unexpected_exception_is_an_internal_error_of_that_record() -> None:
    """The store raises something no adapter translated (a bug met by one record's
    data): that record is dead-lettered as internal_error naming the exception type; the
    member goes on with the others."""
    world = World()
    world.store.explode.add("wamid.boom")
    records = _batch(("wamid.a",), ("wamid.boom",), ("wamid.b",))

    report = await world.pipeline.process(records)

    (letter,) = world.publisher.dead_letters
    assert (letter.record.offset, letter.reason) == (1, Reason.INTERNAL_ERROR)
    assert letter.detail == "RuntimeError while storing the record"
    assert {k.wamid for k in world.store.rows} == {"wamid.a", "wamid.b"}
    assert _offsets(report.durable) == [0, 1, 2]
    assert world.leases.owned_by("w1") == set()


async def test_an_event_that_cannot_be_built_is_unstorable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Building a record's event fails (the encoder refuses its content): it is
    isolated and dead-lettered before anything of it is committed."""
    world = World()
    real_build = events.build

    def build(m: Message, **kwargs: Any) -> OutboundEvent:
        if m.key.wamid == "wamid.deep":
            raise UnstorableError("the event cannot be encoded: too deep")
        return real_build(m, **kwargs)

    monkeypatch.setattr(events, "build", build)
    records = _batch(("wamid.a",), ("wamid.deep",))

    await world.pipeline.process(records)

    (letter,) = world.publisher.dead_letters
    assert (letter.record.offset, letter.reason) == (1, Reason.UNSTORABLE)
    assert {k.wamid for k in world.store.rows} == {"wamid.a"}


async def test_a_dependency_failure_is_not_a_data_error() -> None:
    """The database failing (a connection lost) retries the whole batch and dead-letters
    nothing, however the batch could be split."""
    world = World()
    world.store.fail_next_save = True
    records = _batch(("wamid.a",), ("wamid.b",), ("wamid.c",))

    report = await world.pipeline.process(records)

    assert world.publisher.dead_letters == []
    assert _offsets(report.retry) == [0, 1, 2]
    assert report.failure is not None
    assert "StoreError" in report.failure
    assert len(world.store.saves) == 1, "a dependency failure is not bisected"


async def test_a_dependency_failure_during_the_search_retries_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refusal starts the search; the database then goes away: what was not yet
    judged is retried, nothing is dead-lettered by mistake."""
    world = World()
    world.store.refuse.add("wamid.bad")
    saves_before_failure = 1
    original = world.store.save

    async def save(
        pending: Sequence[PendingMessage],
        claim: Claim = UNCLAIMED,
        statuses: Sequence[PendingStatus] = (),
    ) -> SaveResult:
        if len(world.store.saves) >= saves_before_failure:
            world.store.saves.append([p.message.key for p in pending])
            raise StoreError("fake database: gone")
        return await original(pending, claim, statuses)

    monkeypatch.setattr(world.store, "save", save)
    records = _batch(("wamid.a",), ("wamid.bad",), ("wamid.b",), ("wamid.c",))

    report = await world.pipeline.process(records)

    assert world.publisher.dead_letters == []
    assert _offsets(report.retry) == [0, 1, 2, 3]
    assert report.failure is not None


async def test_a_bug_outside_any_record_retries_and_does_not_raise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception escaping the batch's own steps (here: dead-lettering raises a
    TypeError) is the last line of defence's: process() returns, the records are
    retried, the failure is reported."""
    world = World()

    async def broken(invalid: Sequence[Invalid]) -> None:
        raise TypeError("a bug")

    monkeypatch.setattr(world.publisher, "dead_letter", broken)
    records = [record(b"not json", offset=0), record(webhook([message("wamid.a")]), offset=1)]

    report = await world.pipeline.process(records)

    assert report.failure == "internal error: TypeError"
    assert _offsets(report.durable) == [1], "what was stored stays durable"
    assert _offsets(report.retry) == [0]


async def test_intake_surprise_is_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """intake.decode itself never raises: an exception inside it becomes an Invalid
    with reason internal_error for that record only."""
    from consumer import intake

    def explode(*_args: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(intake, "_webhook", explode)
    world = World()
    report = await world.pipeline.process([record(webhook([message("wamid.a")]))])

    (letter,) = world.publisher.dead_letters
    assert letter.reason is Reason.INTERNAL_ERROR
    assert letter.detail == "intake raised RecursionError"
    assert report.durable
    assert not report.retry


# -- a dead letter is sent once ------------------------------------------------------


async def test_a_redelivered_bad_record_is_not_dead_lettered_twice() -> None:
    """The same bad record (same coordinates) met again, as after a rebalance that moved
    its partition before its offset was committed: its dead letter is not sent again,
    and it is durable; a bad record at another offset is its own dead letter."""
    world = World()
    first = [record(b"not json", offset=4)]
    await world.pipeline.process(first)
    again = await world.pipeline.process([record(b"not json", offset=4)])
    other = await world.pipeline.process([record(b"not json", offset=5)])

    assert [d.record.offset for d in world.publisher.dead_letters] == [4, 5]
    assert _offsets(again.durable) == [4]
    assert (again.dead_lettered, again.dead_letters_repeated) == (0, 1)
    assert other.dead_lettered == 1
    assert world.leases.owned_by("w1") == set()


async def test_a_bad_record_another_member_is_dead_lettering_is_retried() -> None:
    """Another member holds the record's dead-letter lease: not yet, not skip (rule 5):
    the record is retried, nothing is sent."""
    world = World()
    bad = record(b"not json", offset=7)
    world.leases.hold(bad.dead_letter_key)

    report = await world.pipeline.process([bad])

    assert world.publisher.dead_letters == []
    assert report.retry == [bad]
    assert report.failure is None


async def test_a_failed_dead_letter_gives_its_lease_back() -> None:
    """The dead-letter topic refuses: the record is retried and its lease released, so
    the retry (ours or another member's) sends it."""
    world = World()
    world.publisher.fail_next_dead_letter = True
    bad = record(b"not json", offset=1)

    first = await world.pipeline.process([bad])
    second = await world.pipeline.process([bad])

    assert first.retry == [bad]
    assert second.durable == [bad]
    assert len(world.publisher.dead_letters) == 1
