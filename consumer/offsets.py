"""Which offsets may be committed: contiguous, ``lowest not-yet-durable offset``.

A record's offset is *done* when every message in it is stored (or found stored) and
announced, or the record was dead-lettered. Records can finish out of order (a deferred
one is retried later), so per partition we commit the lowest pending offset, or
``highest seen + 1`` when nothing is pending (docs/design.md, rule 8).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from consumer.records import Partition


@dataclass(slots=True)
class PartitionLedger:
    # Offsets not yet durable, each with the bytes its record holds (key, value, headers).
    pending: dict[int, int] = field(default_factory=dict)
    pending_bytes: int = 0
    next_offset: int | None = None  # highest seen + 1
    committed: int | None = None

    def committable(self) -> int | None:
        if self.pending:
            return min(self.pending)
        return self.next_offset


class OffsetLedger:
    """Per-partition bookkeeping of fetched, finished and committed offsets."""

    def __init__(self) -> None:
        self._parts: dict[Partition, PartitionLedger] = {}

    def track(self, partition: Partition, offset: int, size: int = 0) -> None:
        """A record (of `size` bytes) was fetched and is now in flight."""
        ledger = self._parts.setdefault(partition, PartitionLedger())
        if offset not in ledger.pending:
            ledger.pending[offset] = size
            ledger.pending_bytes += size
        if ledger.next_offset is None or offset + 1 > ledger.next_offset:
            ledger.next_offset = offset + 1

    def done(self, partition: Partition, offset: int) -> None:
        """A record is durable (stored and announced, or dead-lettered)."""
        ledger = self._parts.get(partition)
        if ledger is not None:
            ledger.pending_bytes -= ledger.pending.pop(offset, 0)

    def committable(self, partition: Partition) -> int | None:
        """The offset we would commit now (lowest not yet durable), if we saw any."""
        ledger = self._parts.get(partition)
        return ledger.committable() if ledger else None

    def next_offset(self, partition: Partition) -> int | None:
        """The offset after the highest one fetched (where fetching goes on), if any."""
        ledger = self._parts.get(partition)
        return ledger.next_offset if ledger else None

    def pending_count(self, partition: Partition) -> int:
        ledger = self._parts.get(partition)
        return len(ledger.pending) if ledger else 0

    def pending_bytes(self, partition: Partition) -> int:
        """The bytes of the partition's records not yet durable."""
        ledger = self._parts.get(partition)
        return ledger.pending_bytes if ledger else 0

    def to_commit(self, partitions: Iterable[Partition] | None = None) -> dict[Partition, int]:
        """Offsets that moved past what we last committed."""
        chosen = self._parts.keys() if partitions is None else partitions
        out = {}
        for p in chosen:
            ledger = self._parts.get(p)
            if ledger is None:
                continue
            offset = ledger.committable()
            if offset is not None and (ledger.committed is None or offset > ledger.committed):
                out[p] = offset
        return out

    def committed(self, offsets: dict[Partition, int]) -> None:
        for p, offset in offsets.items():
            ledger = self._parts.get(p)
            if ledger is not None:
                ledger.committed = offset

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Drop partitions we no longer own (after a revocation's commit)."""
        for p in partitions:
            self._parts.pop(p, None)

    def partitions(self) -> list[Partition]:
        return list(self._parts)
