"""A fetch that raises (the broker answered an error, or aiokafka could not unpack a
record) does not end the member: the loop logs it, rewinds every partition to where the
member's own bookkeeping says it is (aiokafka would otherwise move past records it had
read but not returned), waits a little and goes on; retries that were due are kept."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CorruptRecordException

from consumer.fetching import Fetcher
from consumer.metrics import Metrics
from consumer.settings import Settings
from consumer.source import Source
from consumer.testing import record
from consumer.tracking import Tracker
from tests.support import member

TP = TopicPartition("whatsapp.webhooks", 0)
OTHER = TopicPartition("whatsapp.webhooks", 1)


class _FailingConsumer:
    """Just what Source.fetch and Source.rewind touch: getmany raises `error` once."""

    def __init__(self, error: Exception) -> None:
        self.error: Exception | None = error
        self.seeks: list[tuple[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return {TP, OTHER}

    async def getmany(
        self, *_partitions: TopicPartition, **_kwargs: Any
    ) -> dict[TopicPartition, list[Any]]:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return {}

    async def position(self, tp: TopicPartition) -> int:
        return 9  # past what was read and not returned: never where a rewind goes

    async def committed(self, tp: TopicPartition) -> int | None:
        return 3

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


BOTH = {(TP.topic, TP.partition), (OTHER.topic, OTHER.partition)}


def _fetcher(consumer: _FailingConsumer) -> tuple[Fetcher, Tracker, Metrics]:
    settings = Settings(retry_backoff_s=0.01, retry_backoff_max_s=0.01, metrics_port=0)
    tracker = member.tracker(settings)
    tracker.assigned(BOTH)
    metrics = Metrics()
    source = Source(settings, client_id="test", consumer=consumer)
    return member.fetcher(settings, source, tracker, metrics), tracker, metrics


async def test_an_undecodable_fetch_rewinds_and_keeps_due_retries() -> None:
    """getmany raising a UnicodeDecodeError: the partition we read from is sought back to
    the offset after the last record we got (8), the other (never fetched from) to the
    group's committed offset (3), not to aiokafka's position (9, past records it read
    but did not return); a due retry is still returned; the next fetch works."""
    consumer = _FailingConsumer(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid"))
    fetcher, tracker, _ = _fetcher(consumer)
    tracker.ledger.track((TP.topic, TP.partition), 7)
    due = record(b"retry me", offset=2)
    tracker.retries.add(due, now=0.0)

    got = await fetcher.fetch(BOTH)

    assert got == [due]
    assert sorted(consumer.seeks) == [(TP, 8), (OTHER, 3)]
    assert await fetcher.fetch(BOTH) == []


async def test_a_broker_error_on_fetch_is_counted_as_a_kafka_dependency_error() -> None:
    """A KafkaError from getmany (here a CRC failure) is a dependency error of kafka in
    the metrics, and the member goes on."""
    consumer = _FailingConsumer(CorruptRecordException("Invalid CRC"))
    fetcher, _, metrics = _fetcher(consumer)

    assert await fetcher.fetch(BOTH) == []
    errors = metrics.registry.get_sample_value(
        "wamid_guard_dependency_errors_total",
        {"dependency": "kafka", "kind": "CorruptRecordException"},
    )
    assert errors == 1
