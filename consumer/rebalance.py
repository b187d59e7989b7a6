"""What a member does when the group moves partitions.

Before partitions go away, the batches in flight finish and their offsets are committed,
so the next owner starts after what is durable (rule 8). Partitions that come in are
placed at the group's committed offset before any batch may commit. Both hold the
member's batch lock, which the poll loop holds while it settles, starts and commits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

import structlog

from consumer.inflight import InFlight
from consumer.records import Partition
from consumer.source import Source
from consumer.tracking import Tracker

log = structlog.get_logger(__name__)

Commit = Callable[[Iterable[Partition] | None], Awaitable[None]]


class Rebalance:
    """The member's rebalance callbacks (``Source.start`` calls them)."""

    def __init__(
        self,
        source: Source,
        tracker: Tracker,
        batches: InFlight,
        *,
        commit: Commit,
        lock: asyncio.Lock,
    ) -> None:
        """`commit`: commits what is durable of the given partitions (None: all)."""
        self._source = source
        self._tracker = tracker
        self._batches = batches
        self._commit = commit
        self._lock = lock

    async def on_revoked(self, revoked: set[Partition]) -> None:
        async with self._lock:  # the batches in flight finish first
            await self._batches.join()
            await self._commit(revoked)
            self._tracker.revoked(revoked)
        log.info("partitions.revoked", partitions=sorted(f"{t}:{p}" for t, p in revoked))

    async def on_assigned(self, assigned: set[Partition]) -> None:
        async with self._lock:  # no batch may commit before the positions are set
            fresh = await self._source.start_at_committed(assigned)
            self._tracker.assigned(assigned, fresh=fresh)
        log.info("partitions.assigned", partitions=sorted(f"{t}:{p}" for t, p in assigned))


class AssignmentWait:
    """How long the member has been without an assignment (joining the group, or in a
    rebalance), said every `every_s` seconds: a member that waits is never silent.

    `check` is called once per poll-loop turn; it returns the seconds waited when a line
    is due, else None."""

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._every_s = every_s
        self._clock = clock
        self._since: float | None = None
        self._next = 0.0

    def check(self, assigned: bool) -> float | None:
        now = self._clock()
        if assigned:
            self._since = None
            return None
        if self._since is None:
            self._since, self._next = now, now + self._every_s
            return None
        if now < self._next:
            return None
        self._next = now + self._every_s
        return now - self._since
