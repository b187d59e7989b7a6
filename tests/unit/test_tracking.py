"""The member's bookkeeping (consumer/tracking.py) without Kafka: offsets, retries and
the pause decisions, through rebalances, failures and backpressure; including the three
bugs of the old Service (a failure then a rebalance paused a partition forever; a
partition that came back escaped MAX_PENDING_RECORDS; a limit of 1 never resumed)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from aiokafka import TopicPartition

from consumer.records import BatchReport, InboundRecord
from consumer.settings import Settings
from consumer.source import Source
from consumer.testing import TOPIC, record
from consumer.tracking import DEGRADED, Tracker

P0, P1, P2 = ((TOPIC, n) for n in range(3))


def _tracker(max_pending: int = 10) -> Tracker:
    return Tracker(max_pending=max_pending, retry_backoff_s=1.0, retry_backoff_max_s=8.0)


def _records(partition: int, offsets: range) -> list[InboundRecord]:
    return [record(b"{}", partition=partition, offset=o) for o in offsets]


def _report(
    *,
    durable: Sequence[InboundRecord] = (),
    retry: Sequence[InboundRecord] = (),
    failure: str | None = None,
) -> BatchReport:
    return BatchReport(durable=list(durable), retry=list(retry), failure=failure)


def test_offsets_commit_up_to_the_lowest_unfinished_record() -> None:
    """Rule 8: with offset 1 deferred, the commit stays at 1 whatever finishes above it;
    once 1 is done it jumps to the end; a committed offset is not offered again."""
    t = _tracker()
    t.assigned({P0})
    batch = t.fetched(_records(0, range(4)))
    t.settled(_report(durable=[batch[0], batch[2], batch[3]], retry=[batch[1]]), now=0.0)
    assert t.to_commit() == {P0: 1}
    t.committed({P0: 1})
    assert t.to_commit() == {}
    (again,) = t.due(now=5.0, limit=10)
    t.settled(_report(durable=[again]), now=5.0)
    assert t.to_commit() == {P0: 4}


def test_records_of_partitions_not_owned_are_dropped() -> None:
    """A fetch that brings records of a partition revoked meanwhile: they are not
    tracked, not processed, and nothing of that partition is committed."""
    t = _tracker()
    t.assigned({P0})
    got = t.fetched(_records(0, range(2)) + _records(1, range(2)))
    assert {r.partition for r in got} == {0}
    assert set(t.to_commit({P0, P1})) <= {P0}


def test_a_failed_batch_pauses_everything_until_a_batch_succeeds() -> None:
    """A dependency failure: every owned partition is paused (degraded) while the failed
    records wait; their successful retry lifts it."""
    t = _tracker()
    t.assigned({P0, P1})
    batch = t.fetched(_records(0, range(2)))
    t.settled(_report(retry=batch, failure="StoreError: down"), now=0.0)
    assert t.degraded
    assert t.pauses() == {P0: DEGRADED, P1: DEGRADED}
    due = t.due(now=10.0, limit=10)
    t.settled(_report(durable=due), now=10.0)
    assert not t.degraded
    assert t.pauses() == {}


def test_a_failure_stays_degraded_while_its_retry_is_in_flight() -> None:
    """With batches overlapping, pauses are decided while a retry is in flight: taking the
    failed records out for their retry does not end the degradation (the partitions would
    be resumed and paused again with every retry); its batch ending does, when it
    succeeds, and a revocation of their partition does too."""
    t = _tracker()
    t.assigned({P0, P1})
    batch = t.fetched(_records(0, range(2)))
    t.settled(_report(retry=batch, failure="StoreError: down"), now=0.0)
    due = t.due(now=10.0, limit=10)
    assert len(due) == 2
    assert t.degraded, "the retry is in flight: still degraded"
    t.settled(_report(retry=due, failure="StoreError: still down"), now=10.0)
    assert t.degraded
    due = t.due(now=100.0, limit=10)
    t.settled(_report(durable=due[:1], retry=due[1:]), now=100.0)
    assert not t.degraded, "the last batch succeeded"
    again = t.due(now=1000.0, limit=10)
    t.settled(_report(retry=again, failure="StoreError: down"), now=1000.0)
    t.due(now=2000.0, limit=10)
    assert t.degraded
    t.revoked({P0})
    assert not t.degraded, "its partition went away with the retry in flight"


def test_another_partitions_batch_ending_later_does_not_end_a_failure() -> None:
    """Batches overlap: batch Y of P1 starts, batch X of P0 fails on a dependency, then Y
    succeeds. P0's failed records still wait for their backoff, so nothing may resume
    (new records of P0 would be stored before its failed ones: a contact's events out of
    order). Only a batch of P0 that succeeds ends it."""
    t = _tracker()
    t.assigned({P0, P1})
    y = t.fetched(_records(1, range(3)))
    x = t.fetched(_records(0, range(3)))
    t.settled(_report(retry=x, failure="StoreError: down"), now=0.0)
    t.settled(_report(durable=y), now=0.1)
    assert t.degraded
    assert t.pauses() == {P0: DEGRADED, P1: DEGRADED}
    more = t.fetched(_records(1, range(3, 5)))  # fetched before the pause took effect
    t.settled(_report(durable=more), now=0.2)
    assert t.degraded, "still no batch of P0 has succeeded"
    due = t.due(now=10.0, limit=10)
    assert [r.offset for r in due] == [0, 1, 2]
    t.settled(_report(durable=due), now=10.0)
    assert not t.degraded
    assert t.pauses() == {}


def test_a_deferred_record_of_the_same_partition_does_not_end_a_failure() -> None:
    """A record of P0 was deferred (another worker held its lease); then a batch of P0
    failed on a dependency. The deferred record falls due first and its batch succeeds:
    the failed record still waits, so P0 stays paused (found by the state machine)."""
    t = _tracker()
    t.assigned({P0})
    deferred, failed = t.fetched(_records(0, range(2)))
    t.settled(_report(durable=[], retry=[deferred]), now=0.0)  # held: deferred
    t.settled(_report(retry=[failed], failure="StoreError: down"), now=0.5)
    (due,) = t.due(now=1.2, limit=10)  # the deferred one is due first (1 s backoff)
    assert due is deferred
    t.settled(_report(durable=[due]), now=1.2)
    assert t.degraded, "the failed record still waits"
    assert t.pauses() == {P0: DEGRADED}
    (again,) = t.due(now=10.0, limit=10)
    t.settled(_report(durable=[again]), now=10.0)
    assert not t.degraded


def test_a_failure_followed_by_a_rebalance_does_not_pause_forever() -> None:
    """The old bug: the failed records' partition is revoked (their retries go with it)
    and another partition is assigned: nothing is degraded any more, the new partition
    is fetched at once (its records will show whether the dependency is back)."""
    t = _tracker()
    t.assigned({P0})
    batch = t.fetched(_records(0, range(3)))
    t.settled(_report(retry=batch, failure="StoreError: down"), now=0.0)
    assert t.pauses() == {P0: DEGRADED}
    t.revoked({P0})
    t.assigned({P1})
    assert not t.degraded
    assert t.pauses() == {}


def test_a_partition_that_comes_back_is_held_to_the_limit_again() -> None:
    """The old bug: a partition paused for pending work is revoked and assigned again
    during an outage; it comes back with nothing pending (unpaused), and as soon as its
    pending work reaches the limit again it is paused again."""
    t = _tracker(max_pending=10)
    t.assigned({P0})
    t.fetched(_records(0, range(10)))
    assert t.pauses() == {P0: "pending=10"}
    t.revoked({P0})
    t.assigned({P0})
    assert t.pauses() == {}
    t.fetched(_records(0, range(20, 30)))
    assert t.pauses() == {P0: "pending=10"}


def test_backpressure_lets_go_at_half_the_limit() -> None:
    """Paused at MAX_PENDING_RECORDS, resumed only when half is done (no flapping)."""
    t = _tracker(max_pending=10)
    t.assigned({P0})
    batch = t.fetched(_records(0, range(10)))
    t.settled(_report(durable=batch[:4], retry=batch[4:]), now=0.0)
    assert P0 in t.pauses(), "6 pending: still over half"
    due = t.due(now=10.0, limit=1)
    t.settled(_report(durable=due), now=10.0)
    assert t.pauses() == {}, "5 pending: half the limit, let go"


def test_a_limit_of_one_resumes() -> None:
    """The old bug: MAX_PENDING_RECORDS=1 paused a partition with one record pending and
    never resumed it (`pending < 1 // 2` is never true); now it resumes when none is."""
    t = _tracker(max_pending=1)
    t.assigned({P0})
    (r,) = t.fetched(_records(0, range(1)))
    assert t.pauses() == {P0: "pending=1"}
    t.settled(_report(durable=[r]), now=0.0)
    assert t.pauses() == {}


def test_nothing_pending_and_dependencies_healthy_means_nothing_paused() -> None:
    """After any history, once every record is durable and the last batch succeeded, no
    partition is paused."""
    t = _tracker(max_pending=2)
    t.assigned({P0, P1, P2})
    a = t.fetched(_records(0, range(2)) + _records(1, range(2)))
    t.settled(_report(retry=a, failure="LeaseStoreError: down"), now=0.0)
    t.revoked({P2})
    due = t.due(now=100.0, limit=10)
    t.settled(_report(durable=due), now=100.0)
    assert all(t.pending(p) == 0 for p in t.owned)
    assert t.pauses() == {}


def test_an_assignment_is_known_until_revoked() -> None:
    """has_assignment (readiness) holds from an assignment, even an empty one, until the
    next revocation."""
    t = _tracker()
    assert not t.has_assignment
    t.assigned(set())
    assert t.has_assignment
    t.revoked(set())
    assert not t.has_assignment


def test_fresh_partitions_forget_what_was_fetched_before_the_seek() -> None:
    """A partition started over at 0 (nothing committed) forgets offsets fetched from
    where the broker said the log starts: they will be fetched again."""
    t = _tracker()
    t.assigned({P0})
    t.fetched(_records(0, range(5, 8)))
    t.assigned({P0}, fresh={P0})
    assert t.to_commit() == {}
    assert t.positions() == {}


def test_positions_and_lag() -> None:
    """Where fetching goes on (for a rewind), and how many records are not durable."""
    t = _tracker()
    t.assigned({P0, P1})
    batch = t.fetched(_records(0, range(4)))
    t.settled(_report(durable=batch[:2], retry=batch[2:]), now=0.0)
    assert t.positions() == {P0: 4}
    assert t.lag(P0, end=10) == 8
    assert t.lag(P1, end=10) == 0, "nothing fetched yet: no lag known to the member"


class _PausingConsumer:
    """What Source.apply_pauses touches of aiokafka's consumer."""

    def __init__(self, assigned: set[tuple[str, int]], paused: set[tuple[str, int]]) -> None:
        self.assigned = {TopicPartition(t, n) for t, n in assigned}
        self.paused_now = {TopicPartition(t, n) for t, n in paused}

    def assignment(self) -> set[object]:
        return set(self.assigned)

    def paused(self) -> set[object]:
        return set(self.paused_now)

    def pause(self, *tps: object) -> None:
        self.paused_now.update(tps)

    def resume(self, *tps: object) -> None:
        self.paused_now.difference_update(tps)


async def test_the_consumer_pauses_follow_the_decision_for_owned_partitions_only() -> None:
    """Source.apply_pauses makes the consumer's pauses equal the decision for the
    partitions the bookkeeping owns; one aiokafka still lists after its revocation is
    left alone (no resume logged for a partition given up)."""
    consumer = _PausingConsumer(assigned={P0, P1, P2}, paused={P1, P2})
    source = Source(Settings(), client_id="t", consumer=consumer)
    source.apply_pauses({P0: "pending=10"}, owned={P0, P1})
    assert source.paused() == {P0, P2}, "P0 paused, P1 resumed, P2 (not owned) untouched"


def _sized(partition: int, offsets: range, size: int) -> list[InboundRecord]:
    """Records whose key, value and headers hold `size` bytes in all."""
    out = []
    for r in _records(partition, offsets):
        head = sum(len(k) + len(v or b"") for k, v in r.headers)
        out.append(dataclasses.replace(r, key=None, value=b"x" * (size - head)))
    return out


def test_records_holding_their_share_of_the_bytes_pause_their_partition() -> None:
    """Three 2 MB records pile up (deferred) far below MAX_PENDING_RECORDS: the partition
    is paused once they hold its share of MAX_PENDING_BYTES (the limit over the two
    partitions owned), the other partition, holding little, is not, and the paused one is
    let go when its records hold half the share."""
    mb = 1024 * 1024
    t = Tracker(
        max_pending=5000, max_pending_bytes=12 * mb, retry_backoff_s=1.0, retry_backoff_max_s=8.0
    )
    t.assigned({P0, P1})
    assert t.byte_share() == 6 * mb
    got = t.fetched(_sized(0, range(3), 2 * mb) + _sized(1, range(1), 1000))
    assert t.pending_bytes(P0) == 6 * mb
    assert t.pending_bytes(P1) == 1000
    assert t.pauses() == {P0: f"pending_bytes={6 * mb}"}
    t.settled(_report(retry=got[:3], durable=got[3:]), now=0.0)
    assert t.pending_bytes(P1) == 0
    assert P0 in t.pauses(), "deferred records still hold their bytes"
    first, second, third = t.due(now=10.0, limit=3)
    t.settled(_report(durable=[first], retry=[second, third]), now=10.0)
    assert t.pauses() == {P0: f"pending_bytes={4 * mb}"}, "above half the share"
    t.settled(_report(durable=t.due(now=100.0, limit=1)), now=100.0)
    assert t.pending_bytes(P0) == 2 * mb
    assert t.pauses() == {}, "a third of the share: let go"


def test_a_share_below_one_record_still_moves() -> None:
    """MAX_PENDING_BYTES at its smallest legal value (one record of the largest size)
    over many partitions: each partition's share is below one record, so it is paused
    with one record held and let go when that one is done, never stuck."""
    t = Tracker(
        max_pending=5000, max_pending_bytes=3000, retry_backoff_s=1.0, retry_backoff_max_s=8.0
    )
    t.assigned({P0, P1, P2})
    assert t.byte_share() == 1000
    (r,) = t.fetched(_sized(0, range(1), 3000))
    assert P0 in t.pauses()
    t.settled(_report(durable=[r]), now=0.0)
    assert t.pauses() == {}


def test_held_bytes_go_with_their_partition() -> None:
    """A revoked partition's bytes, and those of one that starts over (fresh), are
    forgotten: they count towards nobody's share."""
    t = Tracker(
        max_pending=5000, max_pending_bytes=10_000, retry_backoff_s=1.0, retry_backoff_max_s=8.0
    )
    t.assigned({P0, P1})
    t.fetched(_sized(0, range(3), 2000) + _sized(1, range(3), 2000))
    t.revoked({P0})
    assert t.pending_bytes(P0) == 0
    t.assigned({P1}, fresh={P1})
    assert t.pending_bytes(P1) == 0
    assert t.pauses() == {}


def test_due_retries_come_back_a_fetch_response_at_a_time() -> None:
    """Deferred 3 MB records all due at once come back in batches of at most
    `max_bytes` (a fetch response's), never all together: each batch decodes its
    records at once, about 13 MiB a body (a member under a 400 MiB cap was killed when
    eleven came back in one batch). One record larger than the bound still comes back."""
    mb = 1024 * 1024
    t = Tracker(max_pending=5000, retry_backoff_s=1.0, retry_backoff_max_s=8.0)
    t.assigned({P0})
    waiting = t.fetched(_sized(0, range(11), 3 * mb))
    t.settled(_report(retry=waiting), now=0.0)
    batches = []
    while got := t.due(now=10.0, limit=1000, max_bytes=8 * mb):
        batches.append(len(got))
        t.settled(_report(durable=got), now=10.0)
    assert batches == [2, 2, 2, 2, 2, 1]
    (big,) = t.fetched(_sized(0, range(11, 12), 9 * mb))
    t.settled(_report(retry=[big]), now=10.0)
    assert t.due(now=20.0, limit=1000, max_bytes=8 * mb) == [big]
