"""The outbox row's byte format (a batch's events in one value), how a batch's events
are split into rows, and the queue of published rows whose delete is to be retried.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from typing import Protocol

from consumer.errors import StoreError
from consumer.events import OutboundEvent
from consumer.ports import MessageStore

# Bytes of events per outbox row: a batch of large messages gets a few rows, so that no
# value comes near PostgreSQL's 1 GB and whoever is handed rows (a conflicting save, the
# relay) holds a bounded amount.
ROW_BYTES = 4 * 1024 * 1024
# Per event: the lengths of event_id, topic, key and payload, then those bytes.
_EVENT_HEADER = struct.Struct(">IIII")


class _HasEvent(Protocol):
    @property
    def event(self) -> OutboundEvent: ...


def assign_rows(pending: Sequence[_HasEvent]) -> list[str]:
    """The outbox row of each message (or status), should it be inserted: one new id
    for the batch, a next one whenever the events so far would pass ROW_BYTES."""
    row_id, size, ids = str(uuid.uuid4()), 0, []
    for p in pending:
        weight = len(p.event.payload) + len(p.event.key)
        if size and size + weight > ROW_BYTES:
            row_id, size = str(uuid.uuid4()), 0
        size += weight
        ids.append(row_id)
    return ids


def pack_events(events: Sequence[OutboundEvent]) -> bytes:
    """Events as one outbox row's ``events`` value (read back by :func:`unpack_events`)."""
    parts: list[bytes] = []
    for e in events:
        event_id, topic = e.event_id.encode(), e.topic.encode()
        parts += (
            _EVENT_HEADER.pack(len(event_id), len(topic), len(e.key), len(e.payload)),
            event_id,
            topic,
            e.key,
            e.payload,
        )
    return b"".join(parts)


def unpack_events(blob: bytes) -> list[OutboundEvent]:
    """The events of an outbox row's ``events`` value, in order."""
    events: list[OutboundEvent] = []
    pos, end = 0, len(blob)
    while pos < end:
        sizes = _EVENT_HEADER.unpack_from(blob, pos)
        pos += _EVENT_HEADER.size
        fields = []
        for size in sizes:
            fields.append(blob[pos : pos + size])
            pos += size
        if pos > end:
            raise ValueError("an outbox row's events end short")
        events.append(OutboundEvent(fields[0].decode(), fields[1].decode(), fields[2], fields[3]))
    return events


class MarkQueue:
    """Outbox rows whose events this process published but which it could not delete
    yet (the database failed right after the publish), retried until the delete works.

    Our claim on those rows stands for LEASE_TTL_S + KAFKA_REQUEST_TIMEOUT_S, and nobody
    else republishes a claimed row; retrying as soon as the database answers again keeps
    such an event announced once instead of leaving it to the relay to announce again.
    Shared by the pipeline and the relay of one process.
    """

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        # Published rows whose delete failed: carried by the next delete, or retried
        # by flush(). Not the deletes under way: a row is deleted by one statement at a
        # time, and a row being deleted now is not "unmarked".
        self._failed: set[str] = set()

    def __len__(self) -> int:
        return len(self._failed)

    async def mark(self, outbox_ids: Sequence[str]) -> int:
        """Delete these rows, and those whose delete failed before; on failure keep
        them all for the retry and raise. Returns how many of the rows deleted had
        failed before (retried now: with batches overlapping, the next batch's delete
        often carries them before the loop's housekeeping does)."""
        retrying = set(self._failed)
        await self._delete(set(outbox_ids) | retrying)
        return len(retrying)

    async def flush(self) -> int:
        """Retry the deletes that failed; returns how many went through. Raises StoreError."""
        retrying = set(self._failed)
        await self._delete(retrying)
        return len(retrying)

    async def _delete(self, ids: set[str]) -> None:
        if not ids:
            return
        try:
            await self._store.mark_published(sorted(ids))
        except StoreError:
            self._failed.update(ids)
            raise
        self._failed.difference_update(ids)
