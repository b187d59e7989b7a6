"""How a member cuts fetched records into batches in flight (Service._start_batches): a
partition with a backlog gets a batch of its own, so batches overlap; the small rest share
one batch; never more batches than free slots; no partition in two batches; records of a
partition no longer owned are not started."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from consumer.records import BatchReport, InboundRecord, Partition
from consumer.service import Service
from consumer.settings import Settings
from consumer.testing import TOPIC, record
from consumer.wiring import Flow


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


def _service(max_inflight: int, owned: range = range(4)) -> tuple[Service, _Held]:
    settings = Settings(batch_max_records=100, max_inflight_batches=max_inflight, metrics_port=0)
    service = Service(settings)
    held = _Held()
    service._flow = Flow(held)
    service.tracker.assigned({(TOPIC, p) for p in owned})
    return service, held


def _records(counts: dict[int, int]) -> list[InboundRecord]:
    return [record(b"{}", partition=p, offset=o) for p, n in counts.items() for o in range(n)]


def _plan(service: Service) -> list[frozenset[Partition]]:
    return sorted((b.partitions for b in service._inflight.values()), key=sorted)


async def _finish(service: Service, held: _Held) -> None:
    held.release.set()
    await asyncio.gather(*service._inflight)


async def test_a_backlog_gets_a_batch_per_partition_and_the_small_rest_one() -> None:
    service, held = _service(max_inflight=4)
    service._start_batches(_records({0: 60, 1: 25, 2: 3, 3: 2}))  # worthwhile: 100 // 4
    await asyncio.sleep(0)
    assert _plan(service) == [
        frozenset({(TOPIC, 0)}),
        frozenset({(TOPIC, 1)}),
        frozenset({(TOPIC, 2), (TOPIC, 3)}),
    ]
    assert sorted(len(b) for b in held.batches) == [5, 25, 60]
    await _finish(service, held)


async def test_never_more_batches_than_free_slots() -> None:
    service, held = _service(max_inflight=2)
    service._start_batches(_records({0: 40}))
    service._start_batches(_records({1: 40, 2: 40, 3: 40}))  # one slot left: one batch
    await asyncio.sleep(0)
    assert _plan(service) == [
        frozenset({(TOPIC, 0)}),
        frozenset({(TOPIC, 1), (TOPIC, 2), (TOPIC, 3)}),
    ]
    assert sum(len(b) for b in held.batches) == 160
    await _finish(service, held)


async def test_one_at_a_time_puts_everything_in_one_batch() -> None:
    service, held = _service(max_inflight=1)
    service._start_batches(_records({0: 50, 1: 50, 2: 1}))
    await asyncio.sleep(0)
    assert _plan(service) == [frozenset({(TOPIC, 0), (TOPIC, 1), (TOPIC, 2)})]
    await _finish(service, held)


async def test_records_of_a_partition_no_longer_owned_are_not_started() -> None:
    service, held = _service(max_inflight=4, owned=range(2))
    service._start_batches(_records({0: 30, 3: 30}))
    await asyncio.sleep(0)
    assert _plan(service) == [frozenset({(TOPIC, 0)})]
    assert [r.partition for b in held.batches for r in b] == [0] * 30
    await _finish(service, held)
