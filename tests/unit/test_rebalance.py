"""Where a member starts the partitions it is assigned (Rebalance.on_assigned, through
Source.start_at_committed, into the Tracker), and what it does before partitions go
(Rebalance.on_revoked).

Every assigned partition is placed explicitly: at the group's committed offset (a fetch
under way when the assignment came may have taken records the bookkeeping did not own
yet, and dropped them: they must be read again), or at offset 0 when nothing is
committed (the reset policy's "earliest" asks the broker where the log starts, and the
embedded broker can name an offset past records it holds). A failure to read the
committed offsets leaves the partitions to be placed before the next fetch, with a
warning, and never crashes the member.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError, KafkaConnectionError, KafkaError

from consumer.inflight import InFlight
from consumer.rebalance import Rebalance
from consumer.records import BatchReport, InboundRecord, Partition
from consumer.settings import Settings
from consumer.source import Source
from consumer.testing import record
from tests.support import member

TOPIC = "in"
P0, P1, P2 = (TopicPartition(TOPIC, p) for p in range(3))


class FakeConsumer:
    """The two calls on_assigned makes, committed() and seek(), and what a fetch asks:
    assignment() and getmany() (nothing to return)."""

    def __init__(
        self,
        committed: dict[TopicPartition, int | None],
        *,
        fail: KafkaError | None = None,
        hang: bool = False,
        refuse_seek: set[TopicPartition] | None = None,
    ) -> None:
        self._committed = committed
        self.fail = fail
        self._hang = hang
        self._refuse_seek = refuse_seek or set()
        self.seeks: dict[TopicPartition, int] = {}

    async def committed(self, tp: TopicPartition) -> int | None:
        if self._hang:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail
        return self._committed[tp]

    def assignment(self) -> set[TopicPartition]:
        return set(self._committed)

    async def getmany(self, *_partitions: TopicPartition, **_kwargs: Any) -> dict[Any, Any]:
        return {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp in self._refuse_seek:
            raise IllegalStateError(f"No current assignment for partition {tp}")
        self.seeks[tp] = offset


class _Member:
    """The parts a rebalance touches: the source, the bookkeeping, the batches in flight
    and the commits (recorded, with how many batches were still running then)."""

    def __init__(self, consumer: FakeConsumer, request_timeout_s: float = 30.0) -> None:
        settings = Settings(kafka_request_timeout_s=request_timeout_s)
        self.source = Source(settings, client_id="test", consumer=consumer)
        self.tracker = member.tracker(settings)
        self.processor = _Held()
        self.batches = InFlight(
            self.processor,
            lambda report: self.tracker.settled(report, 0.0),
            max_batches=4,
            batch_max_records=4,
        )
        self.commits: list[tuple[set[Partition] | None, int]] = []
        self.rebalance = Rebalance(
            self.source, self.tracker, self.batches, commit=self._commit, lock=asyncio.Lock()
        )

    async def _commit(self, partitions: Iterable[Partition] | None) -> None:
        self.commits.append((None if partitions is None else set(partitions), len(self.batches)))


class _Held:
    """A processor whose batches end, every record durable, once released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def process(self, records: Sequence[InboundRecord]) -> BatchReport:
        await self.release.wait()
        return BatchReport(records=len(records), durable=list(records))

    async def housekeeping(self) -> None:
        """Nothing between batches."""


async def test_every_partition_starts_at_its_committed_offset_or_zero() -> None:
    """Partitions without a committed offset are positioned at 0, one with a committed
    offset at that offset (not where aiokafka's position stands); the member counts
    itself assigned."""
    consumer = FakeConsumer({P0: 7, P1: None, P2: None})
    m = _Member(consumer)
    with structlog.testing.capture_logs() as logs:
        await m.rebalance.on_assigned({P0, P1, P2})
    assert consumer.seeks == {P0: 7, P1: 0, P2: 0}
    assert m.tracker.has_assignment
    assert m.tracker.owned == {(TOPIC, 0), (TOPIC, 1), (TOPIC, 2)}
    (started,) = [e for e in logs if e["event"] == "partitions.start_at_zero"]
    assert started["partitions"] == [f"{TOPIC}:1", f"{TOPIC}:2"]


async def test_records_fetched_before_the_seek_do_not_count_towards_a_commit() -> None:
    """Offsets fetched from where the broker's "earliest" pointed before the seek are
    forgotten: they are fetched again from 0, and a commit must not pass offsets 0.."""
    consumer = FakeConsumer({P0: 7, P1: None})
    m = _Member(consumer)
    ledger = m.tracker.ledger
    ledger.track((TOPIC, 0), 7)
    ledger.track((TOPIC, 1), 5)
    ledger.done((TOPIC, 1), 5)
    await m.rebalance.on_assigned({P0, P1})
    assert ledger.committable((TOPIC, 1)) is None
    assert ledger.committable((TOPIC, 0)) == 7, "a committed partition is untouched"


async def test_failure_to_read_committed_offsets_places_them_before_the_next_fetch() -> None:
    """A broker error while reading the committed offsets: no seek, a warning naming the
    fallback, no exception out of the rebalance listener; the next fetch places them."""
    consumer = FakeConsumer({P0: 4, P1: None}, fail=KafkaConnectionError("connection refused"))
    m = _Member(consumer)
    with structlog.testing.capture_logs() as logs:
        await m.rebalance.on_assigned({P0, P1})
    assert consumer.seeks == {}
    assert m.tracker.has_assignment
    (warning,) = [e for e in logs if e["event"] == "partitions.committed_unknown"]
    assert warning["log_level"] == "warning"
    assert warning["fallback"] == "placed before the next fetch"
    assert "KafkaConnectionError" in warning["error"]
    consumer.fail = None
    await m.source.fetch(timeout_s=0, max_records=1, partitions={(TOPIC, 0), (TOPIC, 1)})
    assert consumer.seeks == {P0: 4, P1: 0}, "placed by the next fetch"


async def test_committed_offsets_that_never_come_are_given_up_after_the_request_timeout() -> None:
    """aiokafka retries a retriable failure without end; the member waits at most
    KAFKA_REQUEST_TIMEOUT_S, then leaves the partitions to the next fetch to place."""
    consumer = FakeConsumer({}, hang=True)
    m = _Member(consumer, request_timeout_s=0.2)
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(m.rebalance.on_assigned({P0}), 10)
    assert consumer.seeks == {}
    assert [e for e in logs if e["event"] == "partitions.committed_unknown"]


async def test_a_partition_lost_before_the_seek_is_skipped() -> None:
    """A seek refused because the partition is no longer assigned (another rebalance
    began) is logged; the other partitions are still positioned."""
    consumer = FakeConsumer({P0: None, P1: None}, refuse_seek={P0})
    m = _Member(consumer)
    with structlog.testing.capture_logs() as logs:
        await m.rebalance.on_assigned({P0, P1})
    assert consumer.seeks == {P1: 0}
    assert [e for e in logs if e["event"] == "partition.seek_failed"]


async def test_revoked_partitions_wait_for_the_batches_in_flight_then_commit() -> None:
    """Before partitions go, the batches in flight end and are settled, the revoked
    partitions are committed with no batch running, and the bookkeeping lets them go."""
    consumer = FakeConsumer({P0: None, P1: None})
    m = _Member(consumer)
    await m.rebalance.on_assigned({P0, P1})
    m.batches.submit([record(b"{}", partition=0, offset=3)], m.tracker.owned)
    asyncio.get_running_loop().call_later(0.02, m.processor.release.set)
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(m.rebalance.on_revoked({(TOPIC, 0)}), 5)
    assert m.commits == [({(TOPIC, 0)}, 0)]
    assert len(m.batches) == 0
    assert m.tracker.owned == {(TOPIC, 1)}
    (revoked,) = [e for e in logs if e["event"] == "partitions.revoked"]
    assert revoked["partitions"] == [f"{TOPIC}:0"]
