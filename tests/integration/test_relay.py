"""The outbox relay against real databases: abandoned rows are re-published once."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt

import pytest

from consumer import events, intake
from consumer.engine import create_engine
from consumer.errors import BrokerError, PublishPendingError
from consumer.metrics import Metrics
from consumer.outbox import MarkQueue
from consumer.ports import Claim, EventSink, PendingMessage
from consumer.records import Invalid
from consumer.relay import Relay
from consumer.store import Store
from consumer.testing import FakePublisher, record, webhook
from consumer.testing import message as meta_message
from tests.support.dbclock import pass_time

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)


def _pending(count: int) -> list[PendingMessage]:
    body = webhook([meta_message(f"wamid.R{i}") for i in range(count)])
    decoded = intake.decode(record(body), max_bytes=1 << 20)
    assert not isinstance(decoded, Invalid)
    return [
        PendingMessage(m, events.build(m, topic="out", occurred_at=T0)) for m in decoded.messages
    ]


def _relay(store: Store, publisher: EventSink, worker: str) -> Relay:
    return Relay(
        store,
        publisher,
        worker_id=worker,
        interval_s=1.0,
        claim_for=dt.timedelta(seconds=30),
        metrics=Metrics(),
        marks=MarkQueue(store),
        batch=7,
    )


CLAIM = dt.timedelta(seconds=60)


async def test_relay_publishes_abandoned_rows_once(database_url: str) -> None:
    """Rows committed but never published (a crash between commit and publish) are
    re-published with their stored bytes once their inserter's claim ran out, then
    marked; rows still claimed by their inserter are left to it."""
    store = Store(create_engine(database_url, pool_size=2, timeout_s=10))
    try:
        pending = _pending(20)
        for i in range(0, 20, 2):  # ten rows: more than the relay's batch of seven
            await store.save(pending[i : i + 2], Claim("inserter", CLAIM))
        await pass_time(store, 30)
        publisher = FakePublisher()
        relay = _relay(store, publisher, "w1")
        assert await relay.relay_once() == 0, "rows still claimed by the inserter are not taken"
        await pass_time(store, 31)
        count, age_s = await store.outbox_stats()
        assert count == 20, "backlog"
        assert 61 <= age_s < 71, f"age of the oldest, by the database's clock: {age_s}"
        assert await relay.relay_once() == 7
        assert await relay.relay_once() == 3
        sent = {e.event_id: e.payload for e in publisher.published}
        assert sent == {p.event.event_id: p.event.payload for p in pending}
        assert len(publisher.published) == 20
        assert await relay.relay_once() == 0, "published rows are not taken again"
        assert await store.outbox_stats() == (0, 0.0)
        counted = relay.metrics.registry.get_sample_value(
            "wamid_guard_events_published_total", {"path": "relay"}
        )
        assert counted == 20
    finally:
        await store.close()


async def test_unfinished_claim_expires_and_is_taken_over(database_url: str) -> None:
    """A relay that claimed rows and died before publishing blocks them only until its
    claim runs out; then another relay publishes them."""
    store = Store(create_engine(database_url, pool_size=2, timeout_s=10))
    try:
        await store.save(_pending(3), Claim("inserter", CLAIM))
        await pass_time(store, 120)
        claimed = await store.claim_unpublished(
            claimant="dead", claim_for=dt.timedelta(seconds=30), limit=10
        )
        assert len(claimed.events) == 3
        assert len(claimed.outbox_ids) == 1
        publisher = FakePublisher()
        other = _relay(store, publisher, "w2")
        assert await other.relay_once() == 0, "claimed rows are not taken while claimed"
        await pass_time(store, 31)
        assert await other.relay_once() == 1
        assert len(publisher.published) == 3
    finally:
        await store.close()


async def test_a_publish_still_under_way_keeps_the_relays_claim(database_url: str) -> None:
    """A relay whose publish gave up while its sends go on (PublishPendingError) keeps
    its claim: another relay does not send the events again until the claim runs out;
    a publish that failed outright gives the claim back at once."""
    store = Store(create_engine(database_url, pool_size=2, timeout_s=10))
    try:
        await store.save(_pending(3), Claim("inserter", CLAIM))
        await pass_time(store, 120)
        pending = FakePublisher(pending_next_publish=True)
        with pytest.raises(PublishPendingError):
            await _relay(store, pending, "w1").relay_once()
        other = FakePublisher()
        assert await _relay(store, other, "w2").relay_once() == 0, "the claim stands"
        await pass_time(store, 31)
        failing = FakePublisher(fail_next_publish=True)
        with pytest.raises(BrokerError):
            await _relay(store, failing, "w3").relay_once()
        assert await _relay(store, other, "w2").relay_once() == 1, "given back at once"
        assert len(other.published) == 3
    finally:
        await store.close()


async def test_conflict_on_a_row_another_batch_is_publishing_is_deferred(
    database_url: str,
) -> None:
    """A duplicate that meets a fresh unpublished row claimed by another batch gets it
    back as in flight (defer, don't publish twice), even when that batch is one of the
    same worker's (it may still be running); once the claimant is named as ended
    (`reclaim`), or its claim runs out, the row comes back to be published, once."""
    store = Store(create_engine(database_url, pool_size=2, timeout_s=10))
    try:
        pending = _pending(2)
        await store.save(pending, Claim("a:1", CLAIM))
        keys = {p.message.key for p in pending}
        await pass_time(store, 1)
        other = await store.save(pending, Claim("b:1", CLAIM))
        assert other.in_flight == keys
        assert other.to_publish == ()
        sibling = await store.save(pending, Claim("a:2", CLAIM, frozenset({"a:0"})))
        assert sibling.in_flight == keys, "a running batch's row is not its sibling's"
        mine = await store.save(pending, Claim("a:3", CLAIM, frozenset({"a:1"})))
        assert mine.in_flight == frozenset()
        assert {e.event_id for e in mine.to_publish} == {p.event.event_id for p in pending}
        again = await store.save(pending, Claim("a:4", CLAIM, frozenset({"a:1"})))
        assert again.in_flight == keys, "a:3 took it over; a:1's name no longer holds it"
        await pass_time(store, 61)
        late = await store.save(pending, Claim("b:2", CLAIM))
        assert late.in_flight == frozenset()
        assert len(late.to_publish) == 2
    finally:
        await store.close()


async def test_concurrent_relays_do_not_fight(postgres_url: str) -> None:
    """Eight relays of eight instances, each with its own engine, racing over the same
    backlog on PostgreSQL: every row is published exactly once."""
    seed = Store(create_engine(postgres_url, pool_size=2, timeout_s=10))
    pending = _pending(300)
    for i in range(0, 300, 5):  # sixty rows
        await seed.save(pending[i : i + 5])
    await seed.close()
    stores = [Store(create_engine(postgres_url, pool_size=2, timeout_s=10)) for _ in range(8)]
    publishers = [FakePublisher() for _ in stores]
    relays = [
        _relay(s, p, f"w{i}") for i, (s, p) in enumerate(zip(stores, publishers, strict=True))
    ]
    gate = asyncio.Barrier(len(relays))

    async def drain(relay: Relay) -> None:
        await gate.wait()
        while await relay.relay_once():
            pass

    try:
        await asyncio.gather(*(drain(r) for r in relays))
    finally:
        for s in stores:
            await s.close()
    counts = collections.Counter(e.event_id for p in publishers for e in p.published)
    assert len(counts) == 300
    assert set(counts.values()) == {1}
    assert sum(1 for p in publishers if p.published) > 1, "the work was really shared"
