"""The batches a member runs at once, each over partitions no other batch holds.

The verbs are those of arroyo's processing strategies: ``submit`` starts batches,
``poll`` settles the ones that ended, ``join`` waits for them (a rebalance, a stop),
``terminate`` cuts them short (a forced stop). Records of one partition are in one batch
at a time, so a partition is processed in order; batches of different partitions
overlap. A batch that ended is handed to ``on_settled`` once, in the order the batches
started; what that means for offsets and retries is the bookkeeping's (``tracking.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import structlog

from consumer.pipeline import BatchProcessor
from consumer.records import BatchReport, InboundRecord, Partition

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch being processed: its partitions, its records, and when it started (for
    liveness)."""

    partitions: frozenset[Partition]
    records: list[InboundRecord]
    started: float


class InFlight:
    """Batches running now, at most `max_batches` of them."""

    def __init__(
        self,
        processor: BatchProcessor,
        on_settled: Callable[[BatchReport], None],
        *,
        max_batches: int,
        batch_max_records: int,
    ) -> None:
        self._processor = processor
        self._on_settled = on_settled
        self._max_batches = max_batches
        self._batch_max_records = batch_max_records
        self._running: dict[asyncio.Task[BatchReport], Batch] = {}

    def __len__(self) -> int:
        return len(self._running)

    @property
    def running(self) -> list[Batch]:
        """The batches running now, in the order they started."""
        return list(self._running.values())

    @property
    def full(self) -> bool:
        return len(self._running) >= self._max_batches

    @property
    def oldest_start(self) -> float | None:
        """When the oldest batch still running started (None: none is running)."""
        return min((b.started for b in self._running.values()), default=None)

    def free(self, owned: Collection[Partition]) -> set[Partition]:
        """Owned partitions without a batch running. Paused ones are included: their
        retries still run, and the consumer returns no new records of them."""
        busy = {p for b in self._running.values() for p in b.partitions}
        return set(owned) - busy

    def submit(self, records: list[InboundRecord], owned: Collection[Partition]) -> None:
        """Start batches of these records, all of partitions that were free.

        A partition with a backlog (a quarter of `batch_max_records` or more) gets a
        batch of its own, so that they overlap. The small rest go together in one batch:
        under a light load, fewer and fuller batches cost less per record. Never more
        batches than free slots. Records of a partition not in `owned` (a rebalance came
        while they were fetched) are dropped: their new owner reads them again.
        """
        by_partition: dict[Partition, list[InboundRecord]] = {}
        for r in records:
            p = (r.topic, r.partition)
            if p in owned:
                by_partition.setdefault(p, []).append(r)
        worthwhile = max(1, self._batch_max_records // 4)
        plan = [[g] for g in by_partition.items() if len(g[1]) >= worthwhile]
        rest = [g for g in by_partition.items() if len(g[1]) < worthwhile]
        if rest:
            plan.append(rest)
        slots = max(1, self._max_batches - len(self._running))
        while len(plan) > slots:
            plan[-2:] = [plan[-2] + plan[-1]]
        for groups in plan:
            batch = [r for _, rs in groups for r in rs]
            task = asyncio.create_task(self._processor.process(batch), name="batch")
            self._running[task] = Batch(frozenset(p for p, _ in groups), batch, time.monotonic())

    def poll(self) -> None:
        """Settle every batch that ended, in the order they started (never waits)."""
        for task in [t for t in self._running if t.done()]:
            self._settle(task)

    async def wait_any(
        self, *, timeout_s: float | None = None, also: asyncio.Future[Any] | None = None
    ) -> None:
        """Wait until a batch ends, or `also` is done, or `timeout_s` passed."""
        waiting: set[asyncio.Future[Any]] = set(self._running)
        if also is not None:
            waiting.add(also)
        if not waiting:
            return
        await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)

    async def join(self, timeout_s: float | None = None) -> None:
        """Wait until every batch has ended, then settle them in the order they started.
        After `timeout_s`, settle those that ended and return with the others running."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while self._running:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return
            await asyncio.wait(set(self._running), timeout=left)
            self.poll()

    async def terminate(self) -> None:
        """Cut every batch short, without settling any: each gives its leases back on
        the way out, and its records stay unfinished (they are read again)."""
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        self._running.clear()

    def _settle(self, task: asyncio.Task[BatchReport]) -> None:
        batch = self._running.pop(task)
        if task.cancelled():
            return  # cut short: its records stay unfinished (redelivered)
        exc = task.exception()
        if exc is not None:  # process() reports failures; this is a bug, not a record's
            log.error("batch.crashed", error=type(exc).__name__, exc_info=exc)
            report = BatchReport(
                records=len(batch.records), failure=type(exc).__name__, retry=list(batch.records)
            )
        else:
            report = task.result()
        self._on_settled(report)
