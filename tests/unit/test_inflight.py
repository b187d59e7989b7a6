"""The batches in flight (consumer/inflight.py, InFlight) on their own, over real asyncio
tasks: poll settles the batches that ended in the order they started and never waits;
a batch that raised is settled as a failure with every record to retry; join waits for
every batch and then settles them in start order, or gives up after its timeout;
terminate cancels every batch and settles none; the counts follow."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest
import structlog

from consumer.inflight import InFlight
from consumer.records import BatchReport, InboundRecord
from consumer.testing import TOPIC, record

ALL = {(TOPIC, p) for p in range(4)}


class _Gated:
    """A processor whose batches each wait for their own gate: `finish(i)` ends batch i
    with every record durable, `finish(i, error)` makes it raise; an unopened gate never
    ends. Counts the batches that ended and those cancelled."""

    def __init__(self) -> None:
        self.started: list[list[InboundRecord]] = []
        self._gates: list[asyncio.Future[Exception | None]] = []
        self.ended = 0
        self.cancelled = 0

    async def process(self, records: Sequence[InboundRecord]) -> BatchReport:
        gate: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.started.append(list(records))
        self._gates.append(gate)
        try:
            error = await gate
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.ended += 1
        if error is not None:
            raise error
        return BatchReport(records=len(records), durable=list(records))

    async def housekeeping(self) -> None:
        """Nothing between batches."""

    def finish(self, i: int, error: Exception | None = None) -> None:
        self._gates[i].set_result(error)


class _Settled:
    """The on_settled callback: each report, with how many batches had ended by then."""

    def __init__(self, processor: _Gated) -> None:
        self._processor = processor
        self.reports: list[BatchReport] = []
        self.ended_then: list[int] = []

    def __call__(self, report: BatchReport) -> None:
        self.reports.append(report)
        self.ended_then.append(self._processor.ended)

    def partitions(self) -> list[int]:
        return [r.durable[0].partition if r.durable else r.retry[0].partition for r in self.reports]


def _inflight(max_batches: int = 4) -> tuple[InFlight, _Gated, _Settled]:
    processor = _Gated()
    settled = _Settled(processor)
    # batch_max_records 4: one record is a backlog, so each partition gets a batch.
    batches = InFlight(processor, settled, max_batches=max_batches, batch_max_records=4)
    return batches, processor, settled


def _one_each(*partitions: int) -> list[InboundRecord]:
    return [record(b"{}", partition=p, offset=10 + p) for p in partitions]


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def test_poll_settles_the_ended_batches_in_the_order_they_started() -> None:
    """Batches of partitions 0, 1, 2 start in that order; 2 ends, then 0, while 1 still
    runs: one poll settles 0 then 2 (start order, not end order) and leaves 1 running."""
    batches, processor, settled = _inflight()
    batches.submit(_one_each(0, 1, 2), ALL)
    await _until(lambda: len(processor.started) == 3)
    processor.finish(2)
    processor.finish(0)
    await _until(lambda: processor.ended == 2)

    batches.poll()

    assert settled.partitions() == [0, 2]
    assert len(batches) == 1
    assert batches.free(ALL) == ALL - {(TOPIC, 1)}
    batches.poll()
    assert len(settled.reports) == 2, "a batch is settled once"
    await batches.terminate()


async def test_poll_never_waits_for_a_running_batch() -> None:
    batches, processor, settled = _inflight()
    batches.submit(_one_each(0), ALL)
    await _until(lambda: len(processor.started) == 1)
    batches.poll()
    assert settled.reports == []
    assert len(batches) == 1
    await batches.terminate()


async def test_a_batch_that_raised_is_settled_as_a_failure_with_every_record_to_retry() -> None:
    """process() reports failures as values; one that raises is a bug: logged, and its
    records all go back for a retry, the batch counted as failed."""
    batches, processor, settled = _inflight()
    records = [record(b"{}", partition=0, offset=o) for o in range(3)]
    batches.submit(records, ALL)
    await _until(lambda: len(processor.started) == 1)
    processor.finish(0, RuntimeError("bug"))
    await _until(lambda: processor.ended == 1)
    with structlog.testing.capture_logs() as logs:
        batches.poll()
    (report,) = settled.reports
    assert report.failure == "RuntimeError"
    assert report.records == 3
    assert report.retry == records
    assert report.durable == []
    (crashed,) = [e for e in logs if e["event"] == "batch.crashed"]
    assert crashed["log_level"] == "error"


async def test_join_waits_for_every_batch_then_settles_them_in_start_order() -> None:
    """join returns once every batch ended; they are settled after the last one ended,
    in the order they started (not the order they ended)."""
    batches, processor, settled = _inflight()
    batches.submit(_one_each(0, 1), ALL)
    await _until(lambda: len(processor.started) == 2)
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, processor.finish, 1)
    loop.call_later(0.05, processor.finish, 0)

    await asyncio.wait_for(batches.join(), 5)

    assert len(batches) == 0
    assert settled.partitions() == [0, 1]
    assert settled.ended_then == [2, 2]


async def test_join_with_a_timeout_leaves_the_rest_running() -> None:
    batches, processor, settled = _inflight()
    batches.submit(_one_each(0, 1), ALL)
    await _until(lambda: len(processor.started) == 2)
    processor.finish(0)
    loop = asyncio.get_running_loop()
    began = loop.time()

    await asyncio.wait_for(batches.join(timeout_s=0.05), 2)

    assert 0.04 <= loop.time() - began < 2
    assert settled.partitions() == [0]
    assert len(batches) == 1
    assert processor.cancelled == 0, "a timed-out join cancels nothing"
    await batches.terminate()


async def test_join_of_nothing_returns_at_once() -> None:
    batches, _, settled = _inflight()
    await asyncio.wait_for(batches.join(), 1)
    assert settled.reports == []


async def test_terminate_cancels_every_batch_and_settles_none() -> None:
    """Running batches are cancelled (each gives its leases back on the way out); one
    that had ended but was not polled yet is not settled either: its records stay
    unfinished and are read again."""
    batches, processor, settled = _inflight()
    batches.submit(_one_each(0, 1, 2), ALL)
    await _until(lambda: len(processor.started) == 3)
    processor.finish(0)
    await _until(lambda: processor.ended == 1)

    await batches.terminate()

    assert processor.cancelled == 2
    assert settled.reports == []
    assert len(batches) == 0
    assert batches.free(ALL) == ALL


async def test_counts_slots_and_the_oldest_start() -> None:
    batches, processor, _ = _inflight(max_batches=2)
    assert len(batches) == 0
    assert not batches.full
    assert batches.oldest_start is None
    batches.submit(_one_each(0), ALL)
    first = batches.oldest_start
    await asyncio.sleep(0.01)
    batches.submit(_one_each(1), ALL)
    await _until(lambda: len(processor.started) == 2)
    assert len(batches) == 2
    assert batches.full
    assert batches.oldest_start == first
    assert [b.partitions for b in batches.running] == [
        frozenset({(TOPIC, 0)}),
        frozenset({(TOPIC, 1)}),
    ]
    processor.finish(0)
    await batches.join(timeout_s=1)
    assert batches.oldest_start is not None
    assert first is not None
    assert batches.oldest_start > first
    await batches.terminate()
    assert batches.oldest_start is None


@pytest.mark.parametrize("wakes", ["a batch ends", "the other is done", "the timeout"])
async def test_wait_any_returns_on_the_first_of_a_batch_the_other_or_the_timeout(
    wakes: str,
) -> None:
    batches, processor, _ = _inflight()
    batches.submit(_one_each(0), ALL)
    await _until(lambda: len(processor.started) == 1)
    other: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    if wakes == "a batch ends":
        processor.finish(0)
    elif wakes == "the other is done":
        other.set_result(None)
    timeout_s = 0.02 if wakes == "the timeout" else 5
    await asyncio.wait_for(batches.wait_any(timeout_s=timeout_s, also=other), 2)
    assert len(batches) == 1, "waiting settles nothing"
    await batches.terminate()
