"""What the next batch is made of: retries that are due first, then new records.

A fetch waits for new records only until a batch in flight ends, since that batch's
partition is then free for the next fetch. A fetch that raises is logged, every
partition goes back to where the bookkeeping says it is, and the loop waits a little
before it tries again (docs/design.md, "Fetching").
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from consumer.errors import BrokerError
from consumer.inflight import InFlight
from consumer.metrics import Metrics
from consumer.records import InboundRecord, Partition
from consumer.source import Source
from consumer.tracking import Tracker

log = structlog.get_logger(__name__)


class Fetcher:
    """Fetches for a member's free partitions: due retries, then new records."""

    def __init__(
        self,
        source: Source,
        tracker: Tracker,
        batches: InFlight,
        metrics: Metrics,
        stop: asyncio.Event,
        *,
        batch_max_records: int,
        poll_timeout_s: float,
        backoff_s: float,
        batch_max_bytes: int | None = None,
    ) -> None:
        """`stop`: set when the member stops (it ends the wait after a failed fetch);
        `backoff_s`: that wait; `batch_max_bytes`: the most bytes of retries a batch
        takes (a fetch response's, as a batch of new records holds: records of 3 MB that
        wait, deferred, must not come back all in one batch and be decoded at once)."""
        self._batch_max_bytes = batch_max_bytes
        self._source = source
        self._tracker = tracker
        self._batches = batches
        self._metrics = metrics
        self._stop = stop
        self._batch_max_records = batch_max_records
        self._poll_timeout_s = poll_timeout_s
        self._backoff_s = backoff_s

    async def fetch(self, partitions: set[Partition]) -> list[InboundRecord]:
        """Retries of these partitions that are due, then new records to fill the batch.

        Waits up to `poll_timeout_s`, or until the next retry is due, for new records,
        but only until a batch in flight ends. Cutting aiokafka's wait short loses
        nothing: records leave its buffer only in the step that returns them.
        """
        now = time.monotonic()
        size = self._batch_max_records
        due = self._tracker.due(now, size, partitions, self._batch_max_bytes)
        if len(due) >= size or (
            self._batch_max_bytes is not None
            and sum(r.size for r in due) >= self._batch_max_bytes // 2
        ):
            return due
        timeout_s = self._poll_timeout_s
        next_retry = self._tracker.next_due_in(now, partitions)
        if next_retry is not None:
            timeout_s = min(timeout_s, next_retry)
        if due:
            timeout_s = 0
        fetch = self._source.fetch(
            timeout_s=timeout_s, max_records=size - len(due), partitions=partitions
        )
        getting = asyncio.create_task(fetch, name="fetch")
        if self._batches and timeout_s > 0:
            try:
                await self._batches.wait_any(also=getting)
            finally:
                if not getting.done():  # a batch ended first (or we are being cancelled)
                    getting.cancel()
        me = asyncio.current_task()
        try:
            new = await getting
        except asyncio.CancelledError:
            if me is not None and me.cancelling():
                raise
            new = []  # we cut the wait short
        except BrokerError as exc:
            await self._failed(exc)
            return due
        if me is not None and me.cancelling():
            # A forced stop came while the fetch was in its top-up, which takes a cancel
            # as "return what you have": the cancel reached the fetch and not us. Not
            # swallowed: the records go untracked and are read again by their next owner.
            raise asyncio.CancelledError
        new = self._tracker.fetched(new)
        self._metrics.records_consumed.inc(len(new))
        return due + new

    async def _failed(self, exc: BrokerError) -> None:
        """Log the error, put every partition back where the bookkeeping says it is, and
        wait `backoff_s` before the next try. The rewind matters because aiokafka, when
        unpacking a fetch fails half-way, moves past records it read but did not
        return."""
        self._metrics.dependency_error(exc)
        if exc.from_broker:
            log.warning("fetch.failed", error=str(exc))
        else:
            log.error("fetch.internal_error", error=str(exc), exc_info=exc.__cause__)
        await self._source.rewind(self._tracker.positions())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self._backoff_s)
