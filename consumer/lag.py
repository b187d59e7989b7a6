"""The gauges only the poll loop can see: assignment, pauses, pending work, lag.

Lag is the partition's end minus the offset the member would commit. The end is the
high watermark of the last fetch; a paused partition is not fetched, so its end is asked
of the broker now and then (every few seconds, in the background) or its lag would stand
still while it grows.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from consumer.errors import BrokerError
from consumer.metrics import Metrics
from consumer.records import Partition
from consumer.source import Source
from consumer.tracking import Tracker

log = structlog.get_logger(__name__)

_ENDS_EVERY_S = 5.0


class LagSampler:
    def __init__(self, source: Source, tracker: Tracker, metrics: Metrics) -> None:
        self._source = source
        self._tracker = tracker
        self._metrics = metrics
        self._ends: dict[Partition, int] = {}  # broker end offsets of paused partitions
        self._ends_task: asyncio.Task[None] | None = None
        self._ends_at = 0.0

    def sample(self) -> None:
        m = self._metrics
        m.last_poll.set(time.time())
        owned = sorted(self._tracker.owned)
        paused = self._source.paused()
        m.assigned_partitions.set(len(owned))
        m.paused_partitions.set(len(paused))
        m.set_pending(
            [(t, n, self._tracker.pending((t, n))) for t, n in owned],
            [(t, n, self._tracker.pending_bytes((t, n))) for t, n in owned],
        )
        lags = []
        for p in owned:
            fetched = self._source.highwater(p)
            if fetched is None and p not in self._ends:
                continue
            end = max(fetched or 0, self._ends.get(p, 0))
            lags.append((p[0], p[1], self._tracker.lag(p, end)))
        m.set_lag(lags)
        self._refresh_ends(paused)

    def stop(self) -> None:
        if self._ends_task is not None:
            self._ends_task.cancel()

    def _refresh_ends(self, paused: set[Partition]) -> None:
        """Ask the broker, now and then, how far the paused partitions have grown."""
        now = time.monotonic()
        self._ends = {p: o for p, o in self._ends.items() if p in paused}
        if not paused or now - self._ends_at < _ENDS_EVERY_S:
            return
        if self._ends_task is not None and not self._ends_task.done():
            return
        self._ends_at = now
        self._ends_task = asyncio.create_task(self._fetch_ends(paused), name="lag-ends")

    async def _fetch_ends(self, partitions: set[Partition]) -> None:
        try:
            ends = await self._source.end_offsets(partitions)
        except BrokerError as exc:  # the broker may be the reason we paused
            log.debug("lag.end_offsets_failed", error=str(exc))
            return
        paused = self._source.paused()
        self._ends.update({p: o for p, o in ends.items() if p in paused})
