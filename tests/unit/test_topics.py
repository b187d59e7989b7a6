"""How the tools read a topic (consumer/tools/topics.py): from offset 0, and completely.

The embedded broker's ListOffsets(EARLIEST) can name an offset past records it holds,
and its partition ends lag about 5 s; these tests run read_topic/read_all against a fake
consumer that records where it was positioned and hands out scripted batches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from consumer.errors import BrokerError
from consumer.tools import topics

TOPIC = "out"


@dataclass
class Record:
    partition: int
    offset: int


class FakeConsumer:
    """Serves `batches` one per getmany; an empty getmany waits out its timeout."""

    instances: list[FakeConsumer] = []  # noqa: RUF012 - the test reads what was made

    def __init__(self, batches: list[list[Record]], **config: Any) -> None:
        self.config = config
        self.batches = batches  # shared: what one read takes, the next does not see
        self.seeks: dict[TopicPartition, int] = {}
        self.seeked_to_beginning = False
        self.seeked_to_end = False
        self.stopped = False
        FakeConsumer.instances.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = tps

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.seeked_to_beginning = True

    async def seek_to_end(self, *tps: TopicPartition) -> None:
        self.seeked_to_end = True

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[Record]]:
        if not self.batches:
            await asyncio.sleep(timeout_ms / 1000)  # a poll that finds nothing
            return {}
        out: dict[TopicPartition, list[Record]] = {}
        for r in self.batches.pop(0):
            out.setdefault(TopicPartition(TOPIC, r.partition), []).append(r)
        return out


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> list[list[Record]]:
    """The batches the fake consumer will hand out (a topic of 3 partitions)."""
    batches: list[list[Record]] = []
    FakeConsumer.instances = []

    async def three(bootstrap: str, topic: str) -> int:
        return 3

    monkeypatch.setattr(topics, "partition_count", three)
    monkeypatch.setattr(
        topics, "AIOKafkaConsumer", lambda **config: FakeConsumer(batches, **config)
    )
    return batches


async def test_from_the_beginning_means_offset_zero_of_every_partition(
    broker: list[list[Record]],
) -> None:
    """Every partition is positioned at offset 0 explicitly, never where the broker says
    the log starts; "earliest" stays the reset policy for an offset below the log start."""
    await topics.read_all("b", TOPIC, idle_s=0.3)
    (consumer,) = FakeConsumer.instances
    assert consumer.seeks == {TopicPartition(TOPIC, p): 0 for p in range(3)}
    assert not consumer.seeked_to_beginning
    assert consumer.config["auto_offset_reset"] == "earliest"
    assert consumer.stopped


async def test_following_from_the_end_still_seeks_to_the_end(broker: list[list[Record]]) -> None:
    """`tail --from-end` keeps asking the broker where each partition ends."""
    [r async for r in topics.read_topic("b", TOPIC, from_beginning=False, idle_s=0.3)]
    (consumer,) = FakeConsumer.instances
    assert consumer.seeked_to_end
    assert not consumer.seeks


async def test_a_complete_read_stops_soon_after_what_it_waits_for_arrived(
    broker: list[list[Record]],
) -> None:
    """Told which (partition, offset)s must be there, the read stops a settle after the
    last of them arrived, not after the long idle."""
    broker += [[Record(0, 0), Record(1, 0)], [Record(0, 1)]]
    started = time.monotonic()
    records = await topics.read_all(
        "b", TOPIC, idle_s=60, want=[(0, 0), (0, 1), (1, 0)], settle_s=0.2
    )
    assert [(r.partition, r.offset) for r in records] == [(0, 0), (1, 0), (0, 1)]
    assert time.monotonic() - started < 30, "stopped on completion, not on the idle"


async def test_end_offsets_and_counts_say_what_a_complete_read_waits_for(
    broker: list[list[Record]],
) -> None:
    """`ends` (partition -> end offset) and `at_least` (a record count) are complete when
    every partition reached its end and enough records arrived."""
    broker += [[Record(0, 0)], [Record(2, 0), Record(2, 1)]]
    records = await topics.read_all("b", TOPIC, idle_s=60, ends={0: 1, 1: 0, 2: 2}, settle_s=0.2)
    assert len(records) == 3
    broker += [[Record(0, 0)], [Record(1, 0)]]
    records = await topics.read_all("b", TOPIC, idle_s=60, at_least=2, settle_s=0.2)
    assert len(records) == 2


async def test_a_read_that_waits_for_missing_records_gives_up_after_the_idle(
    broker: list[list[Record]],
) -> None:
    """What never arrives is waited for `idle_s` without a record, then the read returns
    what it has (the caller checks what is missing)."""
    broker += [[Record(0, 0)]]
    started = time.monotonic()
    records = await topics.read_all("b", TOPIC, idle_s=0.5, want=[(0, 0), (0, 1)], settle_s=0.1)
    assert [(r.partition, r.offset) for r in records] == [(0, 0)]
    assert time.monotonic() - started >= 0.5


def test_the_default_idle_outlasts_the_broker_end_cache() -> None:
    """The embedded broker caches a partition's end for about 5 s: a complete read
    waits longer than that before it calls a topic idle."""
    assert topics.COMPLETE_IDLE_S > 5.0
    assert topics.SETTLE_S < topics.COMPLETE_IDLE_S


# -- no aiokafka error leaves the module ---------------------------------------------------


class FailingClient:
    """An aiokafka client whose `fail_at` step raises a KafkaError; records stop()."""

    instances: list[FailingClient] = []  # noqa: RUF012 - the test reads what was made

    def __init__(self, fail_at: str, **config: Any) -> None:
        self.fail_at = fail_at
        self.stopped = False
        FailingClient.instances.append(self)

    def _step(self, name: str) -> None:
        if name == self.fail_at:
            raise KafkaConnectionError(f"{name} failed")

    async def start(self) -> None:
        self._step("start")

    async def stop(self) -> None:
        self.stopped = True

    async def close(self) -> None:
        self.stopped = True

    def assign(self, tps: list[TopicPartition]) -> None:
        self._step("assign")

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._step("seek")

    async def seek_to_end(self, *tps: TopicPartition) -> None:
        self._step("seek_to_end")

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[Record]]:
        self._step("getmany")
        return {}

    async def committed(self, tp: TopicPartition) -> int | None:
        self._step("committed")
        return None

    async def partitions_for(self, topic: str) -> set[int]:
        self._step("partitions_for")
        return {0, 1, 2}

    async def create_topics(self, new_topics: list[Any]) -> None:
        self._step("create_topics")


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Make every aiokafka client of the module fail at the named step."""
    FailingClient.instances = []

    def fail_at(step: str) -> None:
        def make(*_args: Any, **config: Any) -> FailingClient:
            return FailingClient(step, **config)

        for name in ("AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient"):
            monkeypatch.setattr(topics, name, make)

    return fail_at


def _translated(info: pytest.ExceptionInfo[BrokerError]) -> None:
    assert isinstance(info.value.__cause__, KafkaError), "the cause is chained"
    assert all(c.stopped for c in FailingClient.instances), "every client is closed"


@pytest.mark.parametrize("step", ["start", "assign", "seek", "getmany"])
async def test_reading_a_topic_from_the_beginning_raises_broker_errors(
    failing: Callable[[str], None], step: str
) -> None:
    failing(step)
    with pytest.raises(BrokerError, match=TOPIC) as info:
        await topics.read_all("b", TOPIC, idle_s=0.3)
    _translated(info)


async def test_following_from_the_end_raises_broker_errors(
    failing: Callable[[str], None],
) -> None:
    failing("seek_to_end")
    with pytest.raises(BrokerError, match=TOPIC) as info:
        [r async for r in topics.read_topic("b", TOPIC, from_beginning=False, idle_s=0.3)]
    _translated(info)


@pytest.mark.parametrize("step", ["start", "partitions_for"])
async def test_counting_partitions_raises_broker_errors(
    failing: Callable[[str], None], step: str
) -> None:
    failing(step)
    with pytest.raises(BrokerError, match=TOPIC) as info:
        await topics.partition_count("b", TOPIC)
    _translated(info)


@pytest.mark.parametrize("step", ["start", "committed"])
async def test_reading_committed_offsets_raises_broker_errors(
    failing: Callable[[str], None], step: str
) -> None:
    failing(step)
    with pytest.raises(BrokerError, match="group") as info:
        await topics.committed_offsets("b", "group", TOPIC, [0, 1])
    _translated(info)


@pytest.mark.parametrize("step", ["start", "create_topics"])
async def test_creating_topics_raises_broker_errors(
    failing: Callable[[str], None], step: str
) -> None:
    failing(step)
    with pytest.raises(BrokerError, match=TOPIC) as info:
        await topics.create_topics("b", {TOPIC: 3})
    _translated(info)
