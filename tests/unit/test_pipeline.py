"""Pipeline.process over in-memory leases, store and publisher; and the RetryQueue."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from consumer.errors import StoreError
from consumer.metrics import Metrics
from consumer.outbox import MarkQueue
from consumer.pipeline import Pipeline
from consumer.records import InboundRecord, Reason
from consumer.settings import Settings
from consumer.testing import (
    FakeLeases,
    FakePublisher,
    FakeStore,
    key,
    message,
    record,
    status,
    webhook,
)
from consumer.tracking import RetryQueue
from consumer.wiring import pipeline_config

FIXTURES = Path(__file__).parents[1] / "fixtures" / "webhooks"
NOW = dt.datetime(2025, 6, 9, 12, 0, tzinfo=dt.UTC)


class World:
    """A pipeline wired to fakes, with the fakes at hand."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.leases = FakeLeases()
        self.store = FakeStore()
        self.publisher = FakePublisher()
        self.pipeline = self.worker("w1", settings)

    def worker(self, worker_id: str, settings: Settings | None = None) -> Pipeline:
        """A member's pipeline over this world's Redis, database and topic."""
        return Pipeline(
            pipeline_config(settings or Settings()),
            self.leases,
            self.store,
            self.publisher,
            worker_id=worker_id,
            metrics=Metrics(),
            marks=MarkQueue(self.store),
            clock=lambda: NOW,
        )

    def published_ids(self) -> list[str]:
        return [e.event_id for e in self.publisher.published]

    async def stored_by_another_worker(self, *wamids: str) -> None:
        """Another member (same Redis, database and topic) stores and announces these."""
        report = await self.worker("w2").process(_records(webhook([message(w) for w in wamids])))
        assert report.stored == len(wamids)


@pytest.fixture
def world() -> World:
    return World()


def _records(*bodies: dict[str, object] | bytes, partition: int = 0) -> list[InboundRecord]:
    return [record(b, partition=partition, offset=i) for i, b in enumerate(bodies)]


def _coords(records: Sequence[InboundRecord]) -> list[tuple[str, int, int]]:
    return sorted(r.coordinates for r in records)


# -- the happy path ----------------------------------------------------------------


async def test_new_messages_are_stored_announced_and_durable(world: World) -> None:
    """New messages: one row and one published event each; every record is durable."""
    records = _records(
        webhook([message("wamid.A"), message("wamid.B")]),
        webhook([message("wamid.C")]),
    )
    report = await world.pipeline.process(records)

    keys = {key("wamid.A"), key("wamid.B"), key("wamid.C")}
    assert set(world.store.rows) == keys
    assert sorted(world.published_ids()) == sorted(k.event_id for k in keys)
    assert _coords(report.durable) == _coords(records)
    assert report.retry == []
    assert (report.stored, report.events, report.messages) == (3, 3, 3)
    assert report.failure is None
    assert world.store.unpublished() == set()  # outbox rows marked published
    assert world.leases.done_keys() == keys  # leases turned into done markers
    assert all(v.startswith("done:w1:") for v in world.leases.values.values())


async def test_same_key_twice_in_one_batch(world: World) -> None:
    """The same key in two records of a batch: one row, one event, both records durable."""
    records = _records(webhook([message("wamid.A")]), webhook([message("wamid.A")]))
    report = await world.pipeline.process(records)

    assert list(world.store.rows) == [key("wamid.A")]
    assert world.published_ids() == [key("wamid.A").event_id]
    assert _coords(report.durable) == _coords(records)
    assert report.dup_in_batch == 1
    assert world.store.saves == [[key("wamid.A")]]  # the duplicate never reached the DB


async def test_constructed_batch_fixture_stores_three_and_announces_three(
    world: World,
) -> None:
    """A batch body with a repeated wamid gives 3 rows and 3 message events (and its
    status's event), and is durable."""
    body = FIXTURES / "constructed_batch_multi_message.json"
    records = _records(body.read_bytes())
    report = await world.pipeline.process(records)
    assert len(world.store.rows) == 3
    kinds = Counter(orjson.loads(e.payload)["event"] for e in world.publisher.published)
    assert kinds == {"message_created": 3, "message_status_changed": 1}
    assert (report.messages, report.dup_in_batch, report.statuses) == (4, 1, 1)
    assert _coords(report.durable) == _coords(records)


# -- leases ------------------------------------------------------------------------


async def test_key_held_by_another_worker_defers_its_record(world: World) -> None:
    """A key another worker holds: its record retries, nothing stored; others are durable."""
    world.leases.hold(key("wamid.HELD"), owner="w2:9")
    held, free, mixed = _records(
        webhook([message("wamid.HELD")]),
        webhook([message("wamid.FREE")]),
        webhook([message("wamid.OTHER"), message("wamid.HELD")]),
    )
    report = await world.pipeline.process([held, free, mixed])

    assert _coords(report.retry) == _coords([held, mixed])
    assert _coords(report.durable) == _coords([free])
    assert key("wamid.HELD") not in world.store.rows
    assert key("wamid.HELD").event_id not in world.published_ids()
    assert world.leases.values[key("wamid.HELD")] == "w2:9"  # never touched
    assert set(world.store.rows) == {key("wamid.FREE"), key("wamid.OTHER")}
    assert report.held == 1


async def test_deferred_record_completes_once_the_other_worker_is_done(world: World) -> None:
    """Retrying a deferred record after the holder finished: durable, no new event."""
    world.leases.hold(key("wamid.HELD"), owner="w2:9")
    records = _records(webhook([message("wamid.OTHER"), message("wamid.HELD")]))
    first = await world.pipeline.process(records)
    assert first.retry == records

    del world.leases.values[key("wamid.HELD")]  # w2 gave it back, and stores it anew
    await world.stored_by_another_worker("wamid.HELD")
    second = await world.pipeline.process(records)
    assert second.durable == records
    assert second.retry == []
    assert (second.dup_done_marker, second.markers_unconfirmed) == (2, 0)
    # Each once: OTHER by us, HELD by the other worker.
    assert world.published_ids() == [key("wamid.OTHER").event_id, key("wamid.HELD").event_id]


async def test_done_marker_is_a_duplicate(world: World) -> None:
    """A key with a done marker the database confirms is a duplicate: durable, not
    stored again, no event."""
    await world.stored_by_another_worker("wamid.A")
    assert world.leases.done_keys() == {key("wamid.A")}
    saves = len(world.store.saves)
    records = _records(webhook([message("wamid.A")]))
    report = await world.pipeline.process(records)

    assert report.durable == records
    assert (report.dup_done_marker, report.markers_unconfirmed) == (1, 0)
    assert len(world.store.saves) == saves  # confirmed by a lookup, not an insert
    assert world.published_ids() == [key("wamid.A").event_id]  # the other worker's, once


async def test_done_marker_the_database_does_not_hold_is_overruled(world: World) -> None:
    """A Redis that outlived its database (a restore from backup, a lagging replica,
    another deployment sharing the prefix): the marker claims a message the database
    does not hold. The database is the authority: the message is stored and announced."""
    world.leases.mark_done(key("wamid.A"), owner="restored:1")
    records = _records(webhook([message("wamid.A"), message("wamid.B")]))
    report = await world.pipeline.process(records)

    assert report.durable == records
    assert (report.dup_done_marker, report.markers_unconfirmed, report.stored) == (0, 1, 2)
    assert set(world.store.rows) == {key("wamid.A"), key("wamid.B")}
    assert sorted(world.published_ids()) == sorted(
        [key("wamid.A").event_id, key("wamid.B").event_id]
    )
    assert world.leases.values[key("wamid.A")] == "done:restored:1"  # not ours: untouched
    # Met again: now the database confirms the marker.
    again = await world.pipeline.process(records)
    assert (again.dup_done_marker, again.markers_unconfirmed, again.events) == (2, 0, 0)


async def test_done_marker_of_an_unannounced_row_announces_it(world: World) -> None:
    """A marker whose row is stored but whose event is still in the outbox (the
    database was restored to a moment between the commit and the publish): not done,
    so the event is published."""
    await world.stored_by_another_worker("wamid.A")
    world.store.outbox[key("wamid.A").event_id].published = False
    records = _records(webhook([message("wamid.A")]))
    report = await world.pipeline.process(records)

    assert report.durable == records
    assert (report.markers_unconfirmed, report.republished) == (1, 1)
    assert world.store.unpublished() == set()


async def test_confirming_markers_fails_with_the_database(world: World) -> None:
    """The lookup that confirms markers fails: a dependency failure like any other,
    the batch retries and gives back the leases it took."""
    await world.stored_by_another_worker("wamid.A")
    world.store.fail_next_announced = True
    records = _records(webhook([message("wamid.A"), message("wamid.B")]))
    report = await world.pipeline.process(records)

    assert report.retry == records
    assert report.failure is not None
    assert report.failure.startswith("StoreError: confirming done markers")
    assert key("wamid.B") not in world.leases.values  # released
    assert key("wamid.B") not in world.store.rows


async def test_foreign_key_never_stalls_its_message(world: World) -> None:
    """A key under the prefix this project did not write (no TTL): the message goes
    through the database's fence without a lease, and the key is left alone."""
    world.leases.plant_foreign(key("wamid.A"), "staging-wrote-this")
    records = _records(webhook([message("wamid.A")]))
    report = await world.pipeline.process(records)

    assert report.durable == records
    assert (report.foreign_keys, report.stored, report.events) == (1, 1, 1)
    assert world.leases.values[key("wamid.A")] == "staging-wrote-this"
    again = await world.pipeline.process(records)  # the fence catches the copy
    assert (again.foreign_keys, again.dup_database, again.events) == (1, 1, 0)
    assert world.published_ids() == [key("wamid.A").event_id]


async def test_foreign_key_of_a_dead_letter_sends_it(world: World) -> None:
    """A bad record whose dead-letter key is foreign is dead-lettered all the same."""
    bad = _records(b"not json")
    world.leases.plant_foreign(bad[0].dead_letter_key)
    report = await world.pipeline.process(bad)

    assert report.durable == bad
    assert report.foreign_keys == 1
    assert [i.reason for i in world.publisher.dead_letters] == [Reason.NOT_JSON]


async def test_lease_store_failure_retries_everything(world: World) -> None:
    """Redis failing at acquire: every record with messages or statuses retries, nothing
    is stored; a record with neither is done."""
    world.leases.fail_on.add("acquire")
    records = _records(
        webhook([message("wamid.A")]),
        webhook(statuses=[status("wamid.OUT")]),
        webhook(statuses=[]),
    )
    report = await world.pipeline.process(records)

    assert report.retry == records[:2]
    assert report.durable == records[2:]  # nothing to store: no lease needed
    assert world.store.saves == []
    assert world.publisher.published == []
    assert report.failure is not None


async def test_fence_policy_keeps_going_without_redis() -> None:
    """REDIS_OUTAGE_POLICY=fence: with Redis down, messages are still stored once (the
    database fence) and announced, and the records are durable."""
    world = World(Settings(redis_outage_policy="fence"))
    world.leases.fail_on.update({"acquire", "release", "finish"})
    records = _records(webhook([message("wamid.A")]), webhook([message("wamid.A")]))
    report = await world.pipeline.process(records)
    again = await world.pipeline.process(records)

    assert report.durable == records
    assert again.durable == records
    assert set(world.store.rows) == {key("wamid.A")}
    assert world.published_ids() == [key("wamid.A").event_id]
    assert again.dup_database == 1


# -- store and publish failures ------------------------------------------------------


async def test_store_failure_releases_leases_and_retries(world: World) -> None:
    """A failed transaction: our leases are released, records retry, no event goes out."""
    world.store.fail_next_save = True
    records = _records(webhook([message("wamid.A")]), webhook([message("wamid.B")]))
    report = await world.pipeline.process(records)

    assert world.leases.owned_by("w1:") == set()
    assert world.leases.values == {}
    assert _coords(report.retry) == _coords(records)
    assert report.durable == []
    assert world.publisher.published == []
    assert world.store.rows == {}
    assert report.failure is not None
    assert "StoreError" in report.failure


async def test_store_failure_leaves_other_workers_leases_alone(world: World) -> None:
    """Releasing after a failure never deletes a lease another worker holds."""
    world.leases.hold(key("wamid.HELD"), owner="w2:1")
    world.store.fail_next_save = True
    await world.pipeline.process(_records(webhook([message("wamid.A"), message("wamid.HELD")])))
    assert world.leases.values == {key("wamid.HELD"): "w2:1"}


async def test_publish_failure_then_retry_republishes_same_event_once(world: World) -> None:
    """Publish fails after commit: released, retried; the rerun re-announces the outbox row."""
    world.publisher.fail_next_publish = True
    records = _records(webhook([message("wamid.A")]))

    first = await world.pipeline.process(records)
    assert first.retry == records
    assert first.durable == []
    assert world.leases.owned_by("w1:") == set()
    assert key("wamid.A") in world.store.rows  # committed before the publish failed
    assert world.store.unpublished() == {key("wamid.A").event_id}
    assert world.publisher.published == []
    stored_event = world.store.outbox[key("wamid.A").event_id].event

    second = await world.pipeline.process(records)
    assert second.durable == records
    assert second.retry == []
    assert second.dup_database == 1
    assert (second.stored, second.republished) == (0, 1)
    assert world.publisher.published == [stored_event]  # same event_id and bytes
    assert Counter(world.published_ids()) == Counter({key("wamid.A").event_id: 1})
    assert world.store.unpublished() == set()
    assert world.leases.done_keys() == {key("wamid.A")}


async def test_indeterminate_commit_then_retry_announces_once(world: World) -> None:
    """A commit whose answer was lost: retry finds the row and publishes its event once."""
    world.store.fail_next_save_after_commit = True
    records = _records(webhook([message("wamid.A"), message("wamid.B")]))

    first = await world.pipeline.process(records)
    assert first.retry == records
    assert world.publisher.published == []
    assert world.leases.values == {}

    second = await world.pipeline.process(records)
    assert second.durable == records
    assert sorted(world.published_ids()) == sorted(
        [key("wamid.A").event_id, key("wamid.B").event_id]
    )
    assert len(world.store.rows) == 2


async def test_a_batch_claims_as_itself_and_takes_back_only_ended_batches_claims(
    world: World,
) -> None:
    """Outbox rows are claimed by the batch (its lease token), not the worker. A later
    batch may take back the claims of a batch that failed after sending its save (the
    commit may have happened), and never those of a batch that finished or still runs:
    two batches of one worker in flight at once must not both take one row."""
    world.store.fail_next_save_after_commit = True
    await world.pipeline.process(_records(webhook([message("wamid.A")])))
    await world.pipeline.process(_records(webhook([message("wamid.B")])))
    await world.pipeline.process(_records(webhook([message("wamid.C")])))
    tokens = [token for what, _, token in world.leases.calls if what == "acquire"]
    assert [c for c, _ in world.store.claimants] == tokens
    assert [r for _, r in world.store.claimants] == [
        frozenset(),
        frozenset({tokens[0]}),  # the lost commit's batch ended: its rows are ours again
        frozenset({tokens[0]}),  # the batch that finished is not among them
    ]


async def test_already_published_conflict_is_not_republished(world: World) -> None:
    """A key stored and announced earlier (done marker expired) is durable, not re-sent."""
    records = _records(webhook([message("wamid.A")]))
    await world.pipeline.process(records)
    world.leases.values.clear()  # the done marker ran out
    report = await world.pipeline.process(records)
    assert report.durable == records
    assert report.dup_database == 1
    assert len(world.publisher.published) == 1


async def test_bookkeeping_failures_after_publish_keep_records_durable(world: World) -> None:
    """mark_published or finish failing after a good publish still counts as durable."""
    world.store.fail_mark_published = True
    world.leases.fail_on.add("finish")
    records = _records(webhook([message("wamid.A")]))
    report = await world.pipeline.process(records)
    assert report.durable == records
    assert world.published_ids() == [key("wamid.A").event_id]


async def test_a_failed_outbox_delete_is_retried_between_batches(world: World) -> None:
    """The database fails right after a good publish: the row's delete is kept and
    retried between batches (while our claim keeps others off it), so the event is not
    left for the relay to announce a second time."""
    world.store.fail_mark_published = True
    await world.pipeline.process(_records(webhook([message("wamid.A")])))
    assert world.store.unpublished() == {key("wamid.A").event_id}
    assert len(world.pipeline.marks) == 1
    await world.pipeline.housekeeping()  # still down: kept, no exception
    assert len(world.pipeline.marks) == 1
    world.store.fail_mark_published = False
    await world.pipeline.housekeeping()
    assert len(world.pipeline.marks) == 0
    assert world.store.unpublished() == set()
    assert world.published_ids() == [key("wamid.A").event_id], "announced once"


async def test_a_failed_outbox_delete_is_carried_by_the_next_batch_and_counted() -> None:
    """With batches overlapping, the next batch's delete often carries the rows whose
    delete failed before the loop's housekeeping does: MarkQueue says how many of the
    rows it deleted had failed before (the evidence the fault suite looks for)."""
    store = FakeStore()
    marks = MarkQueue(store)
    store.fail_mark_published = True
    with pytest.raises(StoreError):
        await marks.mark(["e1", "e2"])
    store.fail_mark_published = False
    assert await marks.mark(["e3"]) == 2
    assert len(marks) == 0
    assert await marks.mark(["e4"]) == 0


async def test_a_delete_under_way_is_neither_unmarked_nor_repeated() -> None:
    """While one batch's delete is under way, the loop's housekeeping and the next
    batch's delete leave its rows alone: nothing failed, so nothing is retried, counted
    as unmarked or logged as marked after a retry."""
    store = FakeStore()
    marks = MarkQueue(store)
    deleted: list[list[str]] = []
    gate = asyncio.Event()

    async def slow_mark_published(outbox_ids: Sequence[str]) -> None:
        deleted.append(list(outbox_ids))
        if "e1" in outbox_ids:
            await gate.wait()

    store.mark_published = slow_mark_published  # type: ignore[method-assign]
    first = asyncio.create_task(marks.mark(["e1", "e2"]))
    await asyncio.sleep(0)
    assert deleted == [["e1", "e2"]]
    assert len(marks) == 0
    assert await marks.flush() == 0
    assert await marks.mark(["e3"]) == 0
    gate.set()
    assert await first == 0
    assert deleted == [["e1", "e2"], ["e3"]]


# -- invalid input and statuses ------------------------------------------------------


async def test_invalid_records_are_dead_lettered_and_durable(world: World) -> None:
    """Bad records go to the dead-letter topic with their reason and become durable."""
    records = _records(b"{not json", b"", webhook([message("wamid.A")]))
    report = await world.pipeline.process(records)

    assert world.publisher.dead_letter_calls == 1
    assert [(i.record.offset, i.reason) for i in world.publisher.dead_letters] == [
        (0, Reason.NOT_JSON),
        (1, Reason.EMPTY),
    ]
    assert _coords(report.durable) == _coords(records)
    assert report.dead_lettered == 2
    assert world.published_ids() == [key("wamid.A").event_id]


async def test_dead_letter_failure_retries_those_records(world: World) -> None:
    """If the dead-letter send fails, the bad records retry; good ones are still durable."""
    world.publisher.fail_next_dead_letter = True
    bad, good = _records(b"[]", webhook([message("wamid.A")]))
    report = await world.pipeline.process([bad, good])

    assert report.retry == [bad]
    assert report.durable == [good]
    assert report.dead_lettered == 0
    assert report.failure is not None


async def test_statuses_are_stored_once_and_announced_forward_only(world: World) -> None:
    """Statuses go through the lease and the fence like messages: each forward move is
    announced once, a stale or repeated one is stored as seen (or found) and not
    announced, and every record is durable."""
    records = _records(
        webhook(statuses=[status("wamid.OUT", "delivered"), status("wamid.OUT", "sent")]),
        webhook(statuses=[status("wamid.OUT", "read"), status("wamid.OUT", "delivered")]),
    )
    report = await world.pipeline.process(records)

    assert report.durable == records
    assert report.statuses == 4
    words = [orjson.loads(e.payload)["status"]["status"] for e in world.publisher.published]
    assert words == ["sent", "delivered", "read"]  # the order's order within a batch
    assert report.status_outcomes == {
        ("sent", "announced"): 1,
        ("delivered", "announced"): 1,
        ("read", "announced"): 1,
        ("delivered", "duplicate"): 1,
    }
    again = await world.pipeline.process(_records(webhook(statuses=[status("wamid.OUT", "sent")])))
    assert again.status_outcomes == {("sent", "duplicate"): 1}
    late = await world.pipeline.process(_records(webhook(statuses=[status("wamid.OUT", "failed")])))
    assert late.status_outcomes == {("failed", "stale"): 1}  # read is above failed
    assert len(world.publisher.published) == 3


async def test_status_events_off_counts_statuses_and_stores_nothing(world: World) -> None:
    """STATUS_EVENTS=off: a statuses-only record is durable at once, no lease, no row,
    no event; its statuses are counted as ignored."""
    pipeline = world.worker("w1", Settings(status_events=False))
    records = _records(webhook(statuses=[status("wamid.OUT", "read")]))
    report = await pipeline.process(records)

    assert report.durable == records
    assert report.statuses == 1
    assert report.status_outcomes == {("read", "ignored"): 1}
    assert world.leases.calls == []
    assert world.store.saves == []
    assert world.publisher.publish_calls == 0


async def test_each_batch_uses_a_fresh_token(world: World) -> None:
    """Two batches of one worker lease with different tokens, both prefixed by worker_id."""
    await world.pipeline.process(_records(webhook([message("wamid.A")])))
    await world.pipeline.process(_records(webhook([message("wamid.B")])))
    tokens = [token for what, _, token in world.leases.calls if what == "acquire"]
    assert len(tokens) == 2
    assert tokens[0] != tokens[1]
    assert all(t.startswith("w1:") for t in tokens)


# -- RetryQueue --------------------------------------------------------------------


def _rec(partition: int = 0, offset: int = 0) -> InboundRecord:
    return record(b"{}", partition=partition, offset=offset)


def test_retry_backoff_doubles_and_is_capped() -> None:
    """Each retry of one record waits twice as long, up to max_s."""
    queue = RetryQueue(base_s=0.5, max_s=3.0)
    r = _rec()
    delays = []
    for _ in range(6):
        queue.add(r, now=100.0)
        delays.append(queue.next_due_in(100.0))
        assert queue.pop_due(1000.0, limit=10) == [r]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_retry_backoff_stays_capped_for_long_outages() -> None:
    """After very many attempts the delay is still max_s (no overflow, no crash)."""
    queue = RetryQueue(base_s=0.2, max_s=5.0)
    r = _rec()
    for _ in range(1100):  # ~1.5 h of retries every 5 s during an outage
        queue.add(r, now=0.0)
        assert queue.pop_due(10.0, limit=1) == [r]
    queue.add(r, now=0.0)
    assert queue.next_due_in(0.0) == 5.0


def test_settled_resets_backoff() -> None:
    """After a record settles, its next retry starts again at base_s."""
    queue = RetryQueue(base_s=1.0, max_s=60.0)
    r = _rec()
    for _ in range(3):
        queue.add(r, now=0.0)
        queue.pop_due(100.0, limit=1)
    queue.settled(r)
    queue.add(r, now=0.0)
    assert queue.next_due_in(0.0) == 1.0


def test_backoff_is_per_record() -> None:
    """Retries of one record do not lengthen another record's backoff."""
    queue = RetryQueue(base_s=1.0, max_s=60.0)
    a, b = _rec(offset=1), _rec(offset=2)
    queue.add(a, now=0.0)
    queue.pop_due(100.0, limit=1)
    queue.add(a, now=0.0)
    queue.add(b, now=0.0)
    assert queue.pop_due(1.0, limit=10) == [b]
    assert queue.pop_due(2.0, limit=10) == [a]


def test_pop_due_respects_due_time_and_limit() -> None:
    """pop_due returns only due records, earliest first, at most `limit` of them."""
    queue = RetryQueue(base_s=1.0, max_s=60.0)
    records = [_rec(offset=i) for i in range(4)]
    for i, r in enumerate(records):
        queue.add(r, now=float(i))  # due at 1, 2, 3, 4
    assert queue.pop_due(0.5, limit=10) == []
    assert queue.next_due_in(0.5) == 0.5
    assert queue.pop_due(3.0, limit=2) == records[:2]
    assert queue.pop_due(3.0, limit=2) == [records[2]]
    assert len(queue) == 1
    assert queue.pop_due(10.0, limit=10) == [records[3]]
    assert queue.next_due_in(10.0) is None


def test_drop_removes_revoked_partitions() -> None:
    """drop(partitions) removes those partitions' entries and resets their attempts."""
    queue = RetryQueue(base_s=1.0, max_s=60.0)
    keep, gone = _rec(partition=0, offset=5), _rec(partition=1, offset=5)
    for _ in range(2):
        queue.add(keep, now=0.0)
        queue.add(gone, now=0.0)
    queue.drop({("whatsapp.webhooks", 1)})
    assert len(queue) == 2
    assert queue.pop_due(100.0, limit=10) == [keep, keep]
    queue.add(gone, now=0.0)  # reassigned later: backoff starts over
    assert queue.next_due_in(0.0) == 1.0


# -- cut short, and the order of a failure's clean-up ----------------------------------


async def test_a_cancel_after_the_publish_gives_the_leases_back(world: World) -> None:
    """A forced stop while the batch does its bookkeeping after a good publish: the
    leases still processing go back (the redelivery is not kept waiting for
    LEASE_TTL_S), and the batch's token ends, so the member may take back its claims."""
    blocked = asyncio.Event()

    async def mark_published(outbox_ids: Sequence[str]) -> None:
        blocked.set()
        await asyncio.Event().wait()

    world.store.mark_published = mark_published  # type: ignore[method-assign]
    batch = asyncio.create_task(world.pipeline.process(_records(webhook([message("wamid.A")]))))
    await asyncio.wait_for(blocked.wait(), 5)
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    assert world.published_ids() == [key("wamid.A").event_id]
    assert world.leases.owned_by("w1") == set(), "no processing lease left behind"
    assert world.pipeline._reclaimable() == ("w1:1",)


async def test_a_failed_batch_ends_only_after_giving_its_claims_back(world: World) -> None:
    """Design rule 7: a batch counts as ended (its claims anyone of the member's may
    take back) once it runs no more: after it released its leases and its claims, not
    before."""
    seen: list[tuple[str, tuple[str, ...]]] = []

    async def release_claims(outbox_ids: Sequence[str], claimant: str) -> None:
        seen.append((claimant, world.pipeline._reclaimable()))

    world.store.release_claims = release_claims  # type: ignore[method-assign]
    world.publisher.fail_next_publish = True
    report = await world.pipeline.process(_records(webhook([message("wamid.A")])))
    assert report.failure is not None
    assert seen == [("w1:1", ())], "still running while it gave its claims back"
    assert world.pipeline._reclaimable() == ("w1:1",)


async def test_a_partly_acknowledged_publish_keeps_its_claims(world: World) -> None:
    """One event of the batch's outbox row acknowledged, the other failed: the claims
    stand (a relay sending the row again would land a copy of the first), and the
    member's retry announces the second, each once."""
    released: list[str] = []

    async def release_claims(outbox_ids: Sequence[str], claimant: str) -> None:
        released.append(claimant)

    world.store.release_claims = release_claims  # type: ignore[method-assign]
    world.publisher.partly_next_publish = True
    hook = webhook([message("wamid.A"), message("wamid.B")])
    report = await world.pipeline.process(_records(hook))
    assert report.failure is not None
    assert "PartlyPublishedError" in report.failure
    assert released == [], "claims kept"
    assert world.pipeline._reclaimable() == ("w1:1",)
    retry = await world.pipeline.process(_records(hook))
    assert retry.failure is None
    assert sorted(world.published_ids()) == sorted(
        [key("wamid.A").event_id, key("wamid.B").event_id]
    )


async def test_a_publish_still_under_way_keeps_its_claims(world: World) -> None:
    """A publish that gave up while its sends go on (an idempotent producer never expires
    them): the batch fails, its leases go back, but its outbox claims stand, so no other
    member's relay sends the events again while they may still land; the batch has
    ended, so the member's own retry takes the rows back at once."""
    released: list[str] = []

    async def release_claims(outbox_ids: Sequence[str], claimant: str) -> None:
        released.append(claimant)

    world.store.release_claims = release_claims  # type: ignore[method-assign]
    world.publisher.pending_next_publish = True
    report = await world.pipeline.process(_records(webhook([message("wamid.A")])))
    assert report.failure is not None
    assert "PublishPendingError" in report.failure
    assert released == [], "claims kept"
    assert world.leases.owned_by("w1") == set(), "leases given back"
    assert world.pipeline._reclaimable() == ("w1:1",)
    retry = await world.pipeline.process(_records(webhook([message("wamid.A")])))
    assert retry.failure is None
    assert world.published_ids() == [key("wamid.A").event_id]
