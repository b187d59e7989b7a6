"""Fetches that survive a record aiokafka cannot decode (docs/design.md, P6).

Kafka's protocol lets a header name be any bytes; aiokafka decodes header names as
strict UTF-8 while it unpacks a fetched batch, and a name that is not UTF-8 (a Go or C
producer can write one) makes every fetch of the partition raise ``UnicodeDecodeError``.
Worse, the records before it in the same fetch are then skipped without being returned.
So one crafted record would crash-loop every member that gets its partition, and lose
its neighbours.

:func:`install` puts a record reader into aiokafka's fetcher that decodes a batch with
aiokafka's own (C) reader and, only if that fails on a header name, decodes the batch
again in Python with header names read leniently (invalid bytes become ``\\xNN``
escapes), skipping the records already returned. The record then goes through the
pipeline like any other: its body is the webhook; a mangled header name is just a
header nobody reads (a signature header spelled in bytes that are not UTF-8 is not
Meta's). Nothing else changes: batches that decode are read at full speed.

This reaches into aiokafka's fetcher (``aiokafka.consumer.fetcher.MemoryRecords``);
``tests/integration/test_lenient_fetch.py`` fetches such a record from a real broker, so
an aiokafka upgrade that moves the hook fails there, not in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import structlog
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatch, _DefaultRecordBatchPy
from aiokafka.record.memory_records import _MemoryRecordsPy

log = structlog.get_logger(__name__)


def install() -> None:
    """Make every consumer of this process read fetched batches leniently. Idempotent."""
    fetcher.MemoryRecords = _LenientRecords


class _LenientRecords(_MemoryRecordsPy):  # type: ignore[misc] # final only for typing
    """aiokafka's pure-Python splitting of a fetch into batches (cheap: one length per
    batch); each v2 batch is wrapped in :class:`_Batch`."""

    def next_batch(self, *args: Any, **kwargs: Any) -> Any:
        data = self._next_slice
        batch = super().next_batch(*args, **kwargs)
        if isinstance(batch, DefaultRecordBatch) and data is not None:
            return _Batch(batch, data)
        return batch


class _Batch:
    """A fetched batch: aiokafka's own reader first, a lenient one if that fails."""

    __slots__ = ("_data", "_fast")

    def __init__(self, fast: Any, data: memoryview) -> None:
        self._fast = fast
        self._data = data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fast, name)

    def __next__(self) -> Any:  # the fetcher reads control batches with next()
        return next(self._fast)

    def __iter__(self) -> Iterator[Any]:
        returned = 0
        try:
            for record in self._fast:
                yield record
                returned += 1
        except (UnicodeDecodeError, CorruptRecordException) as exc:
            if not _undecodable_text(exc):
                raise
            log.warning(
                "kafka.header_name_not_utf8",
                base_offset=self._fast.base_offset,
                record=self._fast.base_offset + returned,
                note="header names read with \\xNN escapes",
            )
            for n, record in enumerate(_LenientBatch(self._data)):
                if n >= returned:
                    yield record


def _undecodable_text(exc: BaseException) -> bool:
    """aiokafka's C reader raises UnicodeDecodeError; its Python reader wraps it."""
    return isinstance(exc, UnicodeDecodeError) or isinstance(exc.__cause__, UnicodeDecodeError)


class _LenientBatch(_DefaultRecordBatchPy):  # type: ignore[misc] # aiokafka is untyped here
    """aiokafka's Python batch reader over a buffer whose slices decode leniently."""

    _buffer: bytearray

    def __init__(self, buffer: memoryview) -> None:
        super().__init__(buffer)
        self._buffer = _LenientBuffer(self._buffer)

    def _maybe_uncompress(self) -> None:
        super()._maybe_uncompress()
        if not isinstance(self._buffer, _LenientBuffer):
            self._buffer = _LenientBuffer(self._buffer)


class _LenientBuffer(bytearray):
    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        return _LenientBytes(item) if isinstance(index, slice) else item


class _LenientBytes(bytearray):
    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return super().decode(encoding, "backslashreplace")
