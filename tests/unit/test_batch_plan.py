"""How a member cuts fetched records into batches in flight (InFlight.submit): a
partition with a backlog gets a batch of its own, so batches overlap; the small rest share
one batch; never more batches than free slots; no partition in two batches; records of a
partition no longer owned are not started."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from consumer.inflight import InFlight
from consumer.records import BatchReport, InboundRecord, Partition
from consumer.testing import TOPIC, record


class _Held:
    """A processor whose batches stay in flight until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.batches: list[list[InboundRecord]] = []

    async def process(self, records: Sequence[InboundRecord]) -> BatchReport:
        self.batches.append(list(records))
        await self.release.wait()
        return BatchReport(records=len(records), durable=list(records))

    async def housekeeping(self) -> None:
        """Nothing between batches."""


OWNED = {(TOPIC, p) for p in range(4)}


def _batches(max_inflight: int) -> tuple[InFlight, _Held]:
    held = _Held()
    batches = InFlight(held, lambda _report: None, max_batches=max_inflight, batch_max_records=100)
    return batches, held


def _records(counts: dict[int, int]) -> list[InboundRecord]:
    return [record(b"{}", partition=p, offset=o) for p, n in counts.items() for o in range(n)]


def _plan(batches: InFlight) -> list[frozenset[Partition]]:
    return sorted((b.partitions for b in batches.running), key=sorted)


async def _finish(batches: InFlight, held: _Held) -> None:
    held.release.set()
    await asyncio.wait_for(batches.join(), 5)


async def test_a_backlog_gets_a_batch_per_partition_and_the_small_rest_one() -> None:
    batches, held = _batches(max_inflight=4)
    batches.submit(_records({0: 60, 1: 25, 2: 3, 3: 2}), OWNED)  # worthwhile: 100 // 4
    await asyncio.sleep(0)
    assert _plan(batches) == [
        frozenset({(TOPIC, 0)}),
        frozenset({(TOPIC, 1)}),
        frozenset({(TOPIC, 2), (TOPIC, 3)}),
    ]
    assert sorted(len(b) for b in held.batches) == [5, 25, 60]
    await _finish(batches, held)


async def test_never_more_batches_than_free_slots() -> None:
    batches, held = _batches(max_inflight=2)
    batches.submit(_records({0: 40}), OWNED)
    batches.submit(_records({1: 40, 2: 40, 3: 40}), OWNED)  # one slot left: one batch
    await asyncio.sleep(0)
    assert _plan(batches) == [
        frozenset({(TOPIC, 0)}),
        frozenset({(TOPIC, 1), (TOPIC, 2), (TOPIC, 3)}),
    ]
    assert sum(len(b) for b in held.batches) == 160
    await _finish(batches, held)


async def test_one_at_a_time_puts_everything_in_one_batch() -> None:
    batches, held = _batches(max_inflight=1)
    batches.submit(_records({0: 50, 1: 50, 2: 1}), OWNED)
    await asyncio.sleep(0)
    assert _plan(batches) == [frozenset({(TOPIC, 0), (TOPIC, 1), (TOPIC, 2)})]
    await _finish(batches, held)


async def test_records_of_a_partition_no_longer_owned_are_not_started() -> None:
    batches, held = _batches(max_inflight=4)
    batches.submit(_records({0: 30, 3: 30}), {(TOPIC, 0), (TOPIC, 1)})
    await asyncio.sleep(0)
    assert _plan(batches) == [frozenset({(TOPIC, 0)})]
    assert [r.partition for b in held.batches for r in b] == [0] * 30
    await _finish(batches, held)
