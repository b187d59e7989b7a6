"""The member's bookkeeping, as one unit without Kafka: what it remembers between batches
and what it decides from it (docs/design.md, "Member bookkeeping").

Facts in:

    assigned(partitions)      a rebalance gave us these (fresh: nothing committed, start at 0)
    revoked(partitions)       a rebalance took these (after their offsets were committed)
    fetched(records)          new records of owned partitions came in
    settled(report, now)      a batch ended: durable records, records to retry, a failure
    committed(offsets)        the broker took these offsets

Decisions out:

    due(now, limit)           records whose retry is due, oldest first
    to_commit(partitions)     per partition, the lowest offset not yet durable (rule 8)
    pauses()                  which owned partitions must not be fetched now, and why
    positions()               where fetching goes on, per partition we fetched from
    lag(partition, end)       records of a partition not yet durable

Pauses follow from the state, never from a memory of what was paused: a partition is
paused while the member is *degraded* (records of a batch that failed on a dependency
still wait for their retry, or are in a batch retrying them), or while
more than MAX_PENDING_RECORDS of its records are unfinished, or its unfinished records hold
more than its share of MAX_PENDING_BYTES (the limit over the partitions owned), until half
of them are done: hysteresis. The bytes bound what a member holds when records of up to
3 MB pile up (deferred behind a lease, waiting for their retry): at most MAX_PENDING_BYTES
plus one fetch per partition. So a rebalance that takes away the failed records also ends the
degradation, a partition that comes back starts unpaused with nothing pending, and once
nothing is pending no partition is paused.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from consumer.offsets import OffsetLedger
from consumer.records import BatchReport, InboundRecord, Partition

DEGRADED = "degraded"


@dataclass(order=True, slots=True)
class _Retry:
    due: float
    attempt: int = field(compare=False)
    record: InboundRecord = field(compare=False)
    failed: bool = field(compare=False)  # a dependency failed (else: deferred)


def _partition(record: InboundRecord) -> Partition:
    return (record.topic, record.partition)


class RetryQueue:
    """Records to run again later, with exponential backoff per record."""

    def __init__(self, base_s: float, max_s: float) -> None:
        self._heap: list[_Retry] = []
        self._attempts: dict[tuple[str, int, int], int] = {}
        self._failed = 0  # entries of the heap whose batch failed on a dependency
        # Such records taken out for their retry, whose batch has not ended yet: the
        # failure is not over while they are in flight.
        self._failed_out: set[tuple[str, int, int]] = set()
        self._base_s = base_s
        self._max_s = max_s

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, record: InboundRecord, now: float, *, failed: bool = False) -> None:
        attempt = self._attempts.get(record.coordinates, 0) + 1
        self._attempts[record.coordinates] = attempt
        # Cap the exponent too: a long outage must not overflow the float.
        delay = min(self._base_s * 2 ** min(attempt - 1, 32), self._max_s)
        heapq.heappush(self._heap, _Retry(now + delay, attempt, record, failed))
        self._failed += failed
        self._failed_out.discard(record.coordinates)

    def settled(self, record: InboundRecord) -> None:
        self._attempts.pop(record.coordinates, None)
        self._failed_out.discard(record.coordinates)

    def ended(self, record: InboundRecord) -> None:
        """A record's batch ended and it is not retried here (its partition is gone)."""
        self._failed_out.discard(record.coordinates)

    def pop_due(
        self,
        now: float,
        limit: int,
        partitions: Collection[Partition] | None = None,
        max_bytes: int | None = None,
    ) -> list[InboundRecord]:
        """Records whose retry is due, oldest first; of `partitions` only, if given
        (the others stay queued: their partition has a batch in flight); at most
        `max_bytes` of them (but always one), if given."""
        out: list[InboundRecord] = []
        later: list[_Retry] = []
        taken = 0
        while self._heap and self._heap[0].due <= now and len(out) < limit:
            entry = heapq.heappop(self._heap)
            if partitions is not None and _partition(entry.record) not in partitions:
                later.append(entry)
                continue
            if max_bytes is not None and out and taken + entry.record.size > max_bytes:
                later.append(entry)
                break
            taken += entry.record.size
            self._failed -= entry.failed
            if entry.failed:
                self._failed_out.add(entry.record.coordinates)
            out.append(entry.record)
        for entry in later:
            heapq.heappush(self._heap, entry)
        return out

    def next_due_in(
        self, now: float, partitions: Collection[Partition] | None = None
    ) -> float | None:
        """Seconds until the next retry is due (of `partitions` only, if given)."""
        if partitions is None:
            return max(0.0, self._heap[0].due - now) if self._heap else None
        dues = [e.due for e in self._heap if _partition(e.record) in partitions]
        return max(0.0, min(dues) - now) if dues else None

    def has_failed(self) -> bool:
        """A record whose batch failed on a dependency waits, or is being retried."""
        return self._failed > 0 or bool(self._failed_out)

    def drop(self, partitions: set[Partition]) -> None:
        self._heap = [r for r in self._heap if _partition(r.record) not in partitions]
        heapq.heapify(self._heap)
        self._failed = sum(r.failed for r in self._heap)
        self._failed_out = {c for c in self._failed_out if (c[0], c[1]) not in partitions}
        for coords in [c for c in self._attempts if (c[0], c[1]) in partitions]:
            del self._attempts[coords]


class Tracker:
    """The offset ledger, the retry queue, and the pause decisions of one member."""

    def __init__(
        self,
        *,
        max_pending: int,
        retry_backoff_s: float,
        retry_backoff_max_s: float,
        max_pending_bytes: int | None = None,
    ):
        self._max_pending = max_pending
        self._max_bytes = max_pending_bytes
        self.ledger = OffsetLedger()
        self.retries = RetryQueue(retry_backoff_s, retry_backoff_max_s)
        self._owned: set[Partition] = set()
        self._assigned = False  # an assignment arrived (possibly empty) and stands
        self._pressed: set[Partition] = set()  # paused for pending work, until half is done

    # -- facts ---------------------------------------------------------------------

    def assigned(self, partitions: Iterable[Partition], *, fresh: Iterable[Partition] = ()) -> None:
        """A rebalance gave us `partitions`; `fresh` ones start over at offset 0, so what
        was fetched of them before (from where the broker said the log starts) is
        forgotten: it will be fetched again, and must not count towards a commit."""
        self._owned |= set(partitions)
        self.ledger.forget(fresh)
        self._assigned = True
        self._press()  # the share of the bytes changed, and fresh ones hold nothing

    def revoked(self, partitions: Iterable[Partition]) -> None:
        """A rebalance took `partitions` (their offsets were committed first): their
        retries, pending offsets and pause state go; another member reads them from the
        committed offset."""
        gone = set(partitions)
        self._owned -= gone
        self.retries.drop(gone)
        self.ledger.forget(gone)
        self._pressed -= gone
        self._assigned = False
        self._press()  # fewer partitions: a larger share of the bytes each

    def fetched(self, records: Sequence[InboundRecord]) -> list[InboundRecord]:
        """Track new records; those of partitions no longer owned (revoked while the
        fetch was under way) are dropped and returned to nobody."""
        mine = [r for r in records if _partition(r) in self._owned]
        for r in mine:
            self.ledger.track(_partition(r), r.offset, r.size)
        self._press()
        return mine

    def settled(self, report: BatchReport, now: float) -> None:
        """A batch ended: durable records are done, the others wait for their retry
        (marked failed when the batch failed on a dependency)."""
        failed = report.failure is not None
        for r in report.durable:
            self.ledger.done(_partition(r), r.offset)
            self.retries.settled(r)
        for r in report.retry:
            if _partition(r) in self._owned:
                self.retries.add(r, now, failed=failed)
            else:
                self.retries.ended(r)
        self._press()

    def committed(self, offsets: Mapping[Partition, int]) -> None:
        self.ledger.committed(dict(offsets))

    # -- decisions -----------------------------------------------------------------

    @property
    def owned(self) -> frozenset[Partition]:
        return frozenset(self._owned)

    @property
    def has_assignment(self) -> bool:
        """An assignment arrived and was not revoked since (it may be empty: more
        members than partitions)."""
        return self._assigned

    @property
    def degraded(self) -> bool:
        """Records of a batch that failed on a dependency wait for their retry (or are in
        the batch retrying them: with batches overlapping, the loop decides pauses while
        a retry is in flight, and must not resume the partitions until it ends). It ends
        when those records are through (durable, or deferred by a batch that did not
        fail), or when a rebalance takes them away. Not when some other batch succeeds:
        batches overlap, and new records of a partition must not overtake its failed
        ones (docs/design.md, "Fetching")."""
        return self.retries.has_failed()

    def due(
        self,
        now: float,
        limit: int,
        partitions: Collection[Partition] | None = None,
        max_bytes: int | None = None,
    ) -> list[InboundRecord]:
        """Records whose retry is due (of `partitions` only, if given; at most
        `max_bytes` of them, but always one, if given)."""
        return self.retries.pop_due(now, limit, partitions, max_bytes)

    def next_due_in(
        self, now: float, partitions: Collection[Partition] | None = None
    ) -> float | None:
        return self.retries.next_due_in(now, partitions)

    def to_commit(self, partitions: Iterable[Partition] | None = None) -> dict[Partition, int]:
        """Offsets to commit now: the owned partitions (of `partitions`) that moved."""
        chosen = self._owned if partitions is None else self._owned & set(partitions)
        return self.ledger.to_commit(chosen)

    def pending(self, partition: Partition) -> int:
        return self.ledger.pending_count(partition)

    def pending_bytes(self, partition: Partition) -> int:
        """The bytes of the partition's unfinished records (keys, values, headers)."""
        return self.ledger.pending_bytes(partition)

    def pauses(self) -> dict[Partition, str]:
        """The owned partitions not to fetch now, each with why: ``degraded``, or
        ``pending=N``."""
        if self.degraded:
            return dict.fromkeys(self._owned, DEGRADED)
        return {p: self._why_pressed(p) for p in self._pressed}

    def positions(self) -> dict[Partition, int]:
        """Where fetching goes on, for each owned partition we fetched from."""
        out = {}
        for p in self._owned:
            nxt = self.ledger.next_offset(p)
            if nxt is not None:
                out[p] = nxt
        return out

    def lag(self, partition: Partition, end: int) -> int:
        """Records of `partition` below `end` that are not yet durable."""
        durable = self.ledger.committable(partition)
        return max(0, end - (end if durable is None else durable))

    # -- the pending-work hysteresis -----------------------------------------------

    def _press(self) -> None:
        """Pause a partition when its unfinished records reach MAX_PENDING_RECORDS, or
        hold its share of MAX_PENDING_BYTES; let it go when both are down to half (for a
        limit of 1: when none is left)."""
        limit = self._max_pending
        share = self.byte_share()
        for p in self._owned:
            n = self.pending(p)
            held = self.pending_bytes(p)
            if n >= limit or (share is not None and held >= share):
                self._pressed.add(p)
            elif n <= limit // 2 and (share is None or held <= share // 2):
                self._pressed.discard(p)

    def _why_pressed(self, p: Partition) -> str:
        """``pending=N`` (records), or ``pending_bytes=N`` when the bytes hold it."""
        n = self.pending(p)
        share = self.byte_share()
        if share is not None and self.pending_bytes(p) > share // 2 and n <= self._max_pending // 2:
            return f"pending_bytes={self.pending_bytes(p)}"
        return f"pending={n}"

    def byte_share(self) -> int | None:
        """The bytes a partition's unfinished records may hold before it is paused:
        MAX_PENDING_BYTES over the partitions owned (None: no byte limit)."""
        if self._max_bytes is None:
            return None
        return max(1, self._max_bytes // max(1, len(self._owned)))
