"""Fetches that survive a batch aiokafka cannot decode (docs/design.md, P6 and "Fetching").

:func:`install` puts a batch reader into aiokafka's fetcher. Every batch still goes
through aiokafka's own (C) record reader; around it:

* **A header name that is not UTF-8.** Kafka's protocol lets a header name be any bytes;
  aiokafka decodes names as strict UTF-8, and one that is not (a Go or C producer can
  write one) made every fetch of the partition raise, skipping the records before it in
  the fetch. When the C reader fails on a name, the batch is read again in Python with
  names read leniently (invalid bytes become ``\\xNN`` escapes), skipping the records
  already returned. The record then goes through the pipeline like any other: a mangled
  header name is just a header nobody reads.
* **A batch that cannot be decoded** (corrupt compressed data, a codec id Kafka does not
  define, a CRC-32C that does not match the bytes, records that do not parse) is the
  records' problem, not the broker's: aiokafka raised, and the partition was fetched
  again and again. Instead, the records read before the failure are returned, and one
  record stands for the rest: at the batch's last offset (so that committing past it
  commits past the batch), without key, value or headers, its value a :class:`Problem`
  (reason ``unreadable``, and what failed); the pipeline dead-letters it like any invalid
  record (``source.inbound`` turns the marker into ``InboundRecord.problem``). The
  batch's other offsets are never seen, as in a compacted topic. A CRC mismatch is
  treated so at once: over TCP the bytes arrived as the broker holds them, and fetching
  them again gives the same (Apache Kafka checks CRCs when a batch is produced, so it
  means the log itself is damaged; Tansu keeps what a producer sent).
* **Decompression is bounded.** aiokafka decompresses a batch whole before anything
  checks a size. Here a compressed batch is decompressed by ``consumer.inflate`` into at
  most :func:`limit` bytes (tied to MAX_RECORD_BYTES), then read by the C reader in
  place. The records that fit are returned; if the batch goes on, one record stands for
  the rest as above, with reason ``oversize``.

This reaches into aiokafka's fetcher (``aiokafka.consumer.fetcher.MemoryRecords``, and
the batch methods its ``PartitionRecords`` calls: ``validate_crc``, iteration,
``next_offset``); ``tests/integration/test_lenient_fetch.py`` and
``tests/hostile/test_hostile_batches.py`` fetch such batches from real brokers, so an
aiokafka upgrade that moves the hook fails there, not in production.
"""

from __future__ import annotations

import struct
from collections.abc import Generator, Iterator
from typing import Any

import structlog
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatch, _DefaultRecordBatchPy
from aiokafka.record.memory_records import _MemoryRecordsPy
from aiokafka.record.util import calc_crc32c

from consumer import inflate, limits
from consumer.records import Reason

log = structlog.get_logger(__name__)

# What a batch may decompress to: per record it declares, MAX_RECORD_BYTES for the value
# and RECORD_OVERHEAD_BYTES for its framing, key and headers; counted for at least
# MIN_RECORDS records (a batch holding one record too large is then still read, and
# the record dead-lettered by intake as oversize, its neighbours stored), and at most
# MAX_BATCH_BYTES (what one batch may cost in memory, whatever it claims) unless
# MIN_RECORDS records take more. At MAX_RECORD_BYTES of 256 KiB: 2.5 to 20 MiB; at the
# default 3 MiB, 24.5 MiB for any batch (eight records of the largest size; a producer's
# batch of many records holds about 1 MB). docs/design.md, "Fetching", says why.
RECORD_OVERHEAD_BYTES = limits.RECORD_OVERHEAD_BYTES
MIN_RECORDS = 8
MAX_BATCH_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_RECORD_BYTES = limits.DEFAULT_MAX_RECORD_BYTES  # Settings.max_record_bytes's

# A v2 batch's header, up to its records (DefaultRecordBatch.HEADER_STRUCT).
_HEADER_SIZE = 61
_LENGTH_AT, _CRC_AT, _ATTRIBUTES_AT, _COUNT_AT = 8, 17, 21, 57
_CODEC_MASK = 0x07
_DETAIL_CHARS = 300  # of an exception's message quoted in a dead letter's detail


class _Bound:
    max_record_bytes = DEFAULT_MAX_RECORD_BYTES


def install(max_record_bytes: int | None = None) -> None:
    """Make every consumer of this process read fetched batches as described above, a
    compressed batch bounded by `max_record_bytes` (MAX_RECORD_BYTES; None keeps the
    bound installed before, the setting's default at first). Idempotent; one bound for
    the process (a member installs its own setting)."""
    if max_record_bytes is not None:
        if max_record_bytes < 1:
            raise ValueError(f"max_record_bytes must be at least 1, not {max_record_bytes}")
        _Bound.max_record_bytes = max_record_bytes
    fetcher.MemoryRecords = _LenientRecords


def limit(record_count: int) -> int:
    """The most bytes a compressed batch declaring `record_count` records may decompress
    to."""
    per_record = _Bound.max_record_bytes + RECORD_OVERHEAD_BYTES
    floor = MIN_RECORDS * per_record
    return max(floor, min(record_count * per_record, MAX_BATCH_BYTES))


class Problem(bytes):
    """The (empty) value of a record that stands for records the client could not read:
    why, and what. Only this module makes one; no record read from a broker is one."""

    reason: Reason
    detail: str

    def __new__(cls, reason: Reason, detail: str) -> Problem:
        self = super().__new__(cls)
        self.reason = reason
        self.detail = detail
        return self


class _Stand:
    """A record made here, with what aiokafka's fetcher reads of one."""

    __slots__ = ("offset", "timestamp", "timestamp_type", "value")
    key = None
    headers = ()
    checksum = None

    def __init__(self, offset: int, timestamp: int | None, timestamp_type: int, value: Problem):
        self.offset = offset
        self.timestamp = timestamp
        self.timestamp_type = timestamp_type
        self.value = value


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
    """A fetched v2 batch, read by aiokafka's reader, never raising out of the fetcher."""

    __slots__ = ("_crc_ok", "_data", "_fast", "_last")

    def __init__(self, fast: Any, data: memoryview) -> None:
        self._fast = fast
        self._data = data
        self._crc_ok = True
        self._last = -1  # the highest offset returned (or stood for)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fast, name)

    def __next__(self) -> Any:  # the fetcher reads control batches with next()
        return next(self._fast)

    def validate_crc(self) -> bool:
        """The fetcher's check (before it reads the batch): a mismatch would raise out
        of it, and the partition would be fetched forever. It is remembered instead, and
        the batch stood for by one ``unreadable`` record."""
        self._crc_ok = bool(self._fast.validate_crc())
        return True

    @property
    def next_offset(self) -> int:
        """Where the fetcher goes on after this batch: after its last offset, and never
        back to or before a record returned (a header that lies must not make the
        fetcher read the batch again forever)."""
        fast = self._fast
        return max(int(fast.next_offset), int(fast.base_offset) + 1, self._last + 1)

    def __iter__(self) -> Iterator[Any]:
        fast = self._fast
        if not self._crc_ok:
            return self._stand_for(Reason.UNREADABLE, self._crc_mismatch(), -1)
        codec = fast.attributes & _CODEC_MASK
        if codec == inflate.NONE:
            return self._read(fast, self._data)
        return self._read_compressed(codec)

    # -- reading ---------------------------------------------------------------------

    def _read(self, reader: Any, data: memoryview) -> Generator[Any, None, bool]:
        """The records of `reader`, then one standing for the rest if reading failed
        (then False is returned)."""
        last = -1
        returned = 0
        try:
            for record in reader:
                last = record.offset
                yield record
                returned += 1
        except MemoryError:
            raise  # the host's problem, not the batch's: fetched again
        except Exception as exc:  # noqa: BLE001 - nothing a batch holds may stop a partition
            if _undecodable_text(exc):
                try:
                    for n, record in enumerate(_LenientBatch(data)):
                        if n >= returned:
                            last = record.offset
                            yield record
                except MemoryError:
                    raise
                except Exception as again:  # noqa: BLE001 - as above
                    exc = again
                else:
                    log.warning(
                        "kafka.header_name_not_utf8",
                        base_offset=self._fast.base_offset,
                        record=self._fast.base_offset + returned,
                        note="header names read with \\xNN escapes",
                    )
                    return True
            self._last = max(self._last, last)
            yield from self._stand_for(Reason.UNREADABLE, _quote(exc), last)
            return False
        finally:
            self._last = max(self._last, last)
        return True

    def _read_compressed(self, codec: int) -> Iterator[Any]:
        data, fast = self._data, self._fast
        count = _count(data)
        bound = limit(count)
        try:
            got = inflate.inflate(codec, data[_HEADER_SIZE:], bound, reserve=_HEADER_SIZE)
        except inflate.InflateError as exc:
            yield from self._stand_for(Reason.UNREADABLE, _quote(exc), -1)
            return
        # The same batch, uncompressed: its header (the codec cleared) before the output.
        buffer = got.buffer
        buffer[:_HEADER_SIZE] = data[:_HEADER_SIZE]
        attributes = fast.attributes & ~_CODEC_MASK
        struct.pack_into(">h", buffer, _ATTRIBUTES_AT, attributes)
        end = _HEADER_SIZE + got.size
        if got.cut:
            whole, end = _whole_records(buffer, _HEADER_SIZE, end, count)
            struct.pack_into(">i", buffer, _COUNT_AT, whole)
        struct.pack_into(">i", buffer, _LENGTH_AT, end - 12)
        view = memoryview(buffer)[:end]
        read = yield from self._read(DefaultRecordBatch(view), view)
        if read and got.cut:
            why = (
                f"it decompresses to more than {bound} bytes (MAX_RECORD_BYTES="
                f"{_Bound.max_record_bytes} and {RECORD_OVERHEAD_BYTES} more a record, for "
                f"{count} records, at least {MIN_RECORDS}, at most {MAX_BATCH_BYTES} bytes "
                "unless that is less)"
            )
            yield from self._stand_for(Reason.OVERSIZE, why, self._last)

    def _stand_for(self, reason: Reason, why: str, last: int) -> Iterator[Any]:
        """One record standing for the batch's records after `last` (the highest offset
        returned, -1 if none), at the batch's last offset; nothing if there are none."""
        fast = self._fast
        base = fast.base_offset
        first = max(base, last + 1)
        final = base + max(int(fast.last_offset_delta), 0)
        detail = (
            f"a batch of {_count(self._data)} records at offsets {base}..{final} "
            f"({_codec_name(fast.attributes)}) could not be read from offset {first}: {why}"
        )
        if first > final:  # every offset the batch declares was returned
            log.warning("kafka.batch_tail_not_read", base_offset=base, detail=detail)
            return
        log.warning(
            "kafka.batch_not_read",
            base_offset=base,
            offsets=f"{first}..{final}",
            reason=str(reason),
            detail=detail,
        )
        self._last = max(self._last, final)
        log_append = bool(fast.attributes & 0x08)
        timestamp = fast.max_timestamp if log_append else fast.first_timestamp
        yield _Stand(
            final, None if timestamp == -1 else timestamp, int(log_append), Problem(reason, detail)
        )

    def _crc_mismatch(self) -> str:
        computed = calc_crc32c(bytes(self._data[_ATTRIBUTES_AT:]))
        return (
            f"its CRC-32C is {self._fast.crc:#010x}, its bytes give {computed:#010x} "
            "(the batch is damaged where the broker keeps it)"
        )


def _count(data: memoryview) -> int:
    """The record count a v2 batch's header declares (-1: no whole header; brokers refuse
    such a batch)."""
    if len(data) < _HEADER_SIZE:
        return -1
    return int(struct.unpack_from(">i", data, _COUNT_AT)[0])


def _whole_records(buffer: bytearray, start: int, end: int, count: int) -> tuple[int, int]:
    """How many whole records (at most `count`) lie in buffer[start:end], and where they
    end: each starts with its length, a zigzag varint."""
    pos, whole = start, 0
    while whole < count:
        length, shift, at = 0, 0, pos
        while at < end and shift < 64:
            byte = buffer[at]
            at += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        else:
            break  # the length itself is cut, or not a varint
        length = (length >> 1) ^ -(length & 1)
        if length < 0 or at + length > end:
            break
        pos, whole = at + length, whole + 1
    return whole, pos


def _codec_name(attributes: int) -> str:
    codec = attributes & _CODEC_MASK
    return "uncompressed" if codec == inflate.NONE else inflate.NAMES.get(codec, f"codec {codec}")


def _quote(exc: BaseException) -> str:
    """The exception for a detail: its type (aiokafka's errors say it themselves) and
    message, bounded."""
    text = str(exc)
    if not isinstance(exc, inflate.InflateError) and type(exc).__name__ not in text:
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


def _undecodable_text(exc: BaseException) -> bool:
    """aiokafka's C reader raises UnicodeDecodeError; its Python reader wraps it."""
    return isinstance(exc, UnicodeDecodeError) or isinstance(exc.__cause__, UnicodeDecodeError)


class _LenientBatch(_DefaultRecordBatchPy):  # type: ignore[misc] # aiokafka is untyped here
    """aiokafka's Python batch reader over a buffer whose slices decode leniently (an
    uncompressed batch: a compressed one was decompressed, bounded, before)."""

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
