"""Where a member starts the partitions it is assigned (Service.on_assigned, through
Source.start_at_committed, into the Tracker).

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

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError, KafkaConnectionError, KafkaError

from consumer.service import Service
from consumer.settings import Settings
from consumer.source import Source

TOPIC = "in"
P0, P1, P2 = (TopicPartition(TOPIC, p) for p in range(3))


class FakeConsumer:
    """The two calls on_assigned makes: committed() and seek()."""

    def __init__(
        self,
        committed: dict[TopicPartition, int | None],
        *,
        fail: KafkaError | None = None,
        hang: bool = False,
        refuse_seek: set[TopicPartition] | None = None,
    ) -> None:
        self._committed = committed
        self._fail = fail
        self._hang = hang
        self._refuse_seek = refuse_seek or set()
        self.seeks: dict[TopicPartition, int] = {}

    async def committed(self, tp: TopicPartition) -> int | None:
        if self._hang:
            await asyncio.Event().wait()
        if self._fail is not None:
            raise self._fail
        return self._committed[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp in self._refuse_seek:
            raise IllegalStateError(f"No current assignment for partition {tp}")
        self.seeks[tp] = offset


def _service(consumer: FakeConsumer, request_timeout_s: float = 30.0) -> Service:
    settings = Settings(kafka_request_timeout_s=request_timeout_s)
    service = Service(settings)
    service._source = Source(settings, client_id="test", consumer=consumer)
    return service


async def test_every_partition_starts_at_its_committed_offset_or_zero() -> None:
    """Partitions without a committed offset are positioned at 0, one with a committed
    offset at that offset (not where aiokafka's position stands); the member counts
    itself assigned."""
    consumer = FakeConsumer({P0: 7, P1: None, P2: None})
    service = _service(consumer)
    with structlog.testing.capture_logs() as logs:
        await service.on_assigned({P0, P1, P2})
    assert consumer.seeks == {P0: 7, P1: 0, P2: 0}
    assert service.tracker.has_assignment
    assert service.tracker.owned == {(TOPIC, 0), (TOPIC, 1), (TOPIC, 2)}
    (started,) = [e for e in logs if e["event"] == "partitions.start_at_zero"]
    assert started["partitions"] == [f"{TOPIC}:1", f"{TOPIC}:2"]


async def test_records_fetched_before_the_seek_do_not_count_towards_a_commit() -> None:
    """Offsets fetched from where the broker's "earliest" pointed before the seek are
    forgotten: they are fetched again from 0, and a commit must not pass offsets 0.."""
    consumer = FakeConsumer({P0: 7, P1: None})
    service = _service(consumer)
    ledger = service.tracker.ledger
    ledger.track((TOPIC, 0), 7)
    ledger.track((TOPIC, 1), 5)
    ledger.done((TOPIC, 1), 5)
    await service.on_assigned({P0, P1})
    assert ledger.committable((TOPIC, 1)) is None
    assert ledger.committable((TOPIC, 0)) == 7, "a committed partition is untouched"


async def test_failure_to_read_committed_offsets_places_them_before_the_next_fetch() -> None:
    """A broker error while reading the committed offsets: no seek, a warning naming the
    fallback, no exception out of the rebalance listener; the next fetch places them."""
    consumer = FakeConsumer({}, fail=KafkaConnectionError("connection refused"))
    service = _service(consumer)
    with structlog.testing.capture_logs() as logs:
        await service.on_assigned({P0, P1})
    assert consumer.seeks == {}
    assert service.tracker.has_assignment
    (warning,) = [e for e in logs if e["event"] == "partitions.committed_unknown"]
    assert warning["log_level"] == "warning"
    assert warning["fallback"] == "placed before the next fetch"
    assert "KafkaConnectionError" in warning["error"]
    assert service._source is not None
    assert service._source._unplaced == {(TOPIC, 0), (TOPIC, 1)}


async def test_committed_offsets_that_never_come_are_given_up_after_the_request_timeout() -> None:
    """aiokafka retries a retriable failure without end; the member waits at most
    KAFKA_REQUEST_TIMEOUT_S, then leaves the partitions to the next fetch to place."""
    consumer = FakeConsumer({}, hang=True)
    service = _service(consumer, request_timeout_s=0.2)
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(service.on_assigned({P0}), 10)
    assert consumer.seeks == {}
    assert [e for e in logs if e["event"] == "partitions.committed_unknown"]


async def test_a_partition_lost_before_the_seek_is_skipped() -> None:
    """A seek refused because the partition is no longer assigned (another rebalance
    began) is logged; the other partitions are still positioned."""
    consumer = FakeConsumer({P0: None, P1: None}, refuse_seek={P0})
    service = _service(consumer)
    with structlog.testing.capture_logs() as logs:
        await service.on_assigned({P0, P1})
    assert consumer.seeks == {P1: 0}
    assert [e for e in logs if e["event"] == "partition.seek_failed"]
