"""The fetch's top-up (consumer/source.py, Source.fetch): a fetch that found records but
fewer than a batch waits one short step more for the chunk aiokafka asked for when the
first was taken, so records that came while the partition's last batch ran join this
batch instead of the one after. A full fetch and an empty one skip it; a cancel during
the top-up returns what the first step took (those records left aiokafka's buffer: a
dropped list would be records the member never processes); an error in the top-up is a
fetch error like any other (the caller rewinds to its own bookkeeping)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from consumer import source
from consumer.errors import BrokerError
from consumer.settings import Settings
from consumer.source import Source
from tests.support import member

TP = TopicPartition("whatsapp.webhooks", 0)
PARTS = {(TP.topic, TP.partition)}


class _Record:
    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = TP.topic, TP.partition, offset
        self.key, self.value, self.headers, self.timestamp = None, b"{}", (), 0


class _ScriptedConsumer:
    """getmany answers from a script, one step per call: a list of offsets, an
    exception to raise, or "block" (waits until cancelled). Records each call."""

    def __init__(self, *steps: list[int] | Exception | str) -> None:
        self.steps = list(steps)
        self.calls: list[dict[str, Any]] = []
        self.blocked = asyncio.Event()  # set when a "block" step is waiting
        self.seeks: list[tuple[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def committed(self, tp: TopicPartition) -> int | None:
        return None

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[_Record]]:
        self.calls.append(
            {"partitions": partitions, "timeout_ms": timeout_ms, "max_records": max_records}
        )
        step = self.steps.pop(0) if self.steps else []
        if isinstance(step, Exception):
            raise step
        if step == "block":
            self.blocked.set()
            await asyncio.Event().wait()
        assert isinstance(step, list)
        return {TP: [_Record(o) for o in step]} if step else {}


def _source(consumer: _ScriptedConsumer) -> Source:
    return Source(Settings(metrics_port=0), client_id="test", consumer=consumer)


async def test_a_short_fetch_is_topped_up_in_order_with_a_short_wait() -> None:
    consumer = _ScriptedConsumer([4, 5], [6, 7, 8])
    got = await _source(consumer).fetch(timeout_s=0.5, max_records=10, partitions=PARTS)
    assert [r.offset for r in got] == [4, 5, 6, 7, 8]
    first, top_up = consumer.calls
    assert first == {"partitions": (TP,), "timeout_ms": 500, "max_records": 10}
    assert top_up == {
        "partitions": (TP,),
        "timeout_ms": int(source.TOP_UP_S * 1000),
        "max_records": 8,
    }


@pytest.mark.parametrize(
    ("first", "why"),
    [([1, 2, 3], "a full batch (a backlog) needs nothing more"), ([], "nothing came")],
)
async def test_no_top_up_after_a_full_or_an_empty_fetch(first: list[int], why: str) -> None:
    consumer = _ScriptedConsumer(first, [99])
    got = await _source(consumer).fetch(timeout_s=0.5, max_records=3, partitions=PARTS)
    assert [r.offset for r in got] == first, why
    assert len(consumer.calls) == 1, why


async def test_no_top_up_after_a_fetch_responses_worth_of_bytes() -> None:
    """Records of Meta's 3 MB: a first step that took a fetch response's worth
    (`fetch.max.bytes`, 8 MiB at the default MAX_RECORD_BYTES) is the batch, so a batch
    holds at most two responses' bytes, whatever BATCH_MAX_RECORDS says."""
    big = Settings(metrics_port=0).sizes.fetch_max_bytes // 3 + 1

    class Large(_ScriptedConsumer):
        async def getmany(
            self, *partitions: TopicPartition, timeout_ms: int, max_records: int
        ) -> dict[TopicPartition, list[_Record]]:
            got = await super().getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
            for r in got.get(TP, []):
                r.value = b"x" * big
            return got

    consumer = Large([1, 2, 3], [99])
    got = await _source(consumer).fetch(timeout_s=0.5, max_records=1000, partitions=PARTS)
    assert [r.offset for r in got] == [1, 2, 3]
    assert len(consumer.calls) == 1


async def test_the_top_up_waits_no_longer_than_the_fetch_was_asked_to() -> None:
    """A fetch asked not to wait (retries are due) is not topped up; a fetch asked to
    wait less than the top-up's step waits only that long."""
    consumer = _ScriptedConsumer([4, 5], [6])
    got = await _source(consumer).fetch(timeout_s=0, max_records=10, partitions=PARTS)
    assert [r.offset for r in got] == [4, 5]
    assert len(consumer.calls) == 1
    consumer = _ScriptedConsumer([4, 5], [6])
    got = await _source(consumer).fetch(timeout_s=0.002, max_records=10, partitions=PARTS)
    assert [r.offset for r in got] == [4, 5, 6]
    assert [c["timeout_ms"] for c in consumer.calls] == [2, 2]


async def test_a_cancel_during_the_top_up_returns_what_the_first_step_took() -> None:
    """The service cancels a fetch when a batch ends first; records already out of
    aiokafka's buffer must come back to it, or their partition would move on without
    them (the next fetch starts after them)."""
    consumer = _ScriptedConsumer([4, 5], "block")
    task = asyncio.create_task(
        _source(consumer).fetch(timeout_s=0.5, max_records=10, partitions=PARTS)
    )
    await consumer.blocked.wait()  # the top-up is waiting
    assert len(consumer.calls) == 2
    task.cancel()
    got = await task
    assert [r.offset for r in got] == [4, 5]


async def test_a_cancel_during_the_first_step_is_a_cancel() -> None:
    consumer = _ScriptedConsumer("block")
    task = asyncio.create_task(
        _source(consumer).fetch(timeout_s=0.5, max_records=10, partitions=PARTS)
    )
    await consumer.blocked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_error_in_the_top_up_keeps_the_first_steps_records() -> None:
    """The first step's records have left aiokafka's buffer: they are returned, and the
    error comes with the next fetch, before it asks aiokafka for anything. The rewind
    that follows puts the partition after them (aiokafka may have moved further, past
    records it read in the failed step), even with no bookkeeping of its own yet (a
    partition freshly assigned)."""
    consumer = _ScriptedConsumer([4, 5], KafkaConnectionError("broker went away"))
    src = _source(consumer)
    got = await src.fetch(timeout_s=0.5, max_records=10, partitions=PARTS)
    assert [r.offset for r in got] == [4, 5]
    with pytest.raises(BrokerError, match="broker went away") as caught:
        await src.fetch(timeout_s=0.5, max_records=10, partitions=PARTS)
    assert isinstance(caught.value.__cause__, KafkaConnectionError)
    assert len(consumer.calls) == 2, "the deferred error asked aiokafka nothing"
    await src.rewind({})
    assert consumer.seeks == [(TP, 6)]


async def test_a_rewind_of_a_partition_never_returned_goes_to_the_committed_offset() -> None:
    """A getmany that fails before returning anything of a freshly assigned partition:
    the rewind places it at the group's committed offset (here none: 0), not where
    aiokafka's position stands."""
    consumer = _ScriptedConsumer(KafkaConnectionError("corrupt"))
    src = _source(consumer)
    with pytest.raises(BrokerError):
        await src.fetch(timeout_s=0.5, max_records=10, partitions=PARTS)
    await src.rewind({})
    assert consumer.seeks == [(TP, 0)]


async def test_a_forced_stop_during_the_top_up_is_not_swallowed() -> None:
    """The loop cancelled while its fetch waits in the top-up: the fetch returns the
    first step's records (a cancel of the fetch alone means "return what you have"),
    but the loop's own cancel still ends the loop, so a forced stop does not go on to
    start another batch."""
    consumer = _ScriptedConsumer([4, 5], "block")
    settings = Settings(metrics_port=0)
    tracker = member.tracker(settings)
    tracker.assigned(PARTS)
    fetcher = member.fetcher(settings, _source(consumer), tracker)
    fetching = asyncio.create_task(fetcher.fetch(set(PARTS)))
    await asyncio.wait_for(consumer.blocked.wait(), 5)
    fetching.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetching
    assert tracker.positions() == {}, "nothing tracked: read again by the next owner"
