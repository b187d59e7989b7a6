"""Bounded decompression of a Kafka batch's records (docs/design.md, "Fetching").

aiokafka decompresses a whole batch before anything looks at its size: a gzip batch of
half a megabyte on the wire can hold 512 MiB of zeros, and a zstd one of 16 KB as much.
:func:`inflate` never writes more than `limit` bytes of output, for each codec Kafka
has, and says when the data would have gone on (``cut``):

* gzip: zlib's streaming decompressor, asked for at most ``limit + 1`` bytes.
* snappy: the xerial framing Java's client writes (a header, then blocks of a length and
  raw snappy) or one raw block; a raw block states its size first (a varint), so each is
  checked before it is decompressed, and the blocks beyond the limit are not.
* lz4 (frame format) and zstd: cramjam decompresses into a buffer of ours and stops,
  with an error, when the buffer is full. The buffer is sized from the frames' own
  headers (block sizes, the content size), never beyond ``limit + 1``: a small batch
  costs a small buffer. Headers that lie only cost a second try at ``limit + 1``.

The output is written after `reserve` free bytes (the caller puts a batch header
there), so that aiokafka's C reader can read the records in place.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import NamedTuple

import cramjam

NONE, GZIP, SNAPPY, LZ4, ZSTD = range(5)
NAMES = {GZIP: "gzip", SNAPPY: "snappy", LZ4: "lz4", ZSTD: "zstd"}

# Java's client (xerial snappy-java) writes this before the blocks; aiokafka reads a
# stream without it as one raw block.
XERIAL_HEADER = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
# What cramjam says when the output buffer is full (Rust's io::ErrorKind::WriteZero);
# tests/unit/test_inflate.py checks that it still does.
_FULL = "failed to write whole buffer"


class InflateError(Exception):
    """The data cannot be decompressed: corrupt, truncated, or an unknown codec."""


class Inflated(NamedTuple):
    buffer: bytearray  # `reserve` free bytes, then `size` bytes of output (maybe more room)
    size: int
    cut: bool  # the output goes on beyond the limit; `size` bytes are its first ones


def inflate(codec: int, data: memoryview, limit: int, *, reserve: int = 0) -> Inflated:
    """Decompress `data` (the records of a batch compressed with `codec`) to at most
    `limit` bytes; InflateError if it cannot be."""
    inflater = _INFLATERS.get(codec)
    if inflater is None:
        raise InflateError(f"compression codec id {codec} is not one Kafka defines (1-4)")
    try:
        return inflater(data, limit, reserve)
    except InflateError:
        raise
    except (zlib.error, cramjam.DecompressionError, ValueError, IndexError, struct.error) as exc:
        raise InflateError(f"{NAMES[codec]} data cannot be decompressed: {exc}") from exc


# -- gzip -------------------------------------------------------------------------------


def _gzip(data: memoryview, limit: int, reserve: int) -> Inflated:
    """One or more gzip members, as gzip.GzipFile reads them (zero padding between or
    after members is skipped); the CRC-32 and size of each member are checked by zlib."""
    out = bytearray(reserve)
    rest: bytes | memoryview = data
    while True:
        d = zlib.decompressobj(wbits=31)
        out += d.decompress(rest, limit + 1 - (len(out) - reserve))
        size = len(out) - reserve
        if size > limit:
            return Inflated(out, limit, cut=True)
        if not d.eof:
            raise InflateError("gzip data ends before the end of its stream")
        rest = d.unused_data.lstrip(b"\x00")
        if not rest:
            return Inflated(out, size, cut=False)


# -- snappy -----------------------------------------------------------------------------


def _snappy(data: memoryview, limit: int, reserve: int) -> Inflated:
    blocks = _xerial_blocks(data) if _is_xerial(data) else [data]
    sizes = [cramjam.snappy.decompress_raw_len(b) for b in blocks]
    kept, total = 0, 0
    for n in sizes:
        if total + n > limit:
            break
        kept, total = kept + 1, total + n
    out = bytearray(reserve + total)
    view = memoryview(out)
    at = reserve
    for block, n in zip(blocks[:kept], sizes, strict=False):
        got = cramjam.snappy.decompress_raw_into(block, view[at : at + n])
        if got != n:
            raise InflateError(f"a snappy block states {n} bytes and holds {got}")
        at += n
    view.release()
    return Inflated(out, total, cut=kept < len(blocks))


def _is_xerial(data: memoryview) -> bool:
    return len(data) > len(XERIAL_HEADER) and data[: len(XERIAL_HEADER)] == XERIAL_HEADER


def _xerial_blocks(data: memoryview) -> list[memoryview]:
    blocks = []
    pos = len(XERIAL_HEADER)
    while pos < len(data):
        if pos + 4 > len(data):
            raise InflateError("xerial snappy data ends inside a block length")
        (size,) = struct.unpack_from(">i", data, pos)
        pos += 4
        if size < 0 or pos + size > len(data):
            raise InflateError(f"a xerial snappy block of {size} bytes does not fit the data")
        blocks.append(data[pos : pos + size])
        pos += size
    return blocks


# -- lz4 and zstd: into a buffer sized from the frame headers ------------------------------


def _lz4(data: memoryview, limit: int, reserve: int) -> Inflated:
    return _into(cramjam.lz4.decompress_into, data, limit, reserve, _lz4_bound(data, limit))


def _zstd(data: memoryview, limit: int, reserve: int) -> Inflated:
    return _into(cramjam.zstd.decompress_into, data, limit, reserve, _zstd_bound(data, limit))


def _into(
    decompress_into: Callable[[memoryview, memoryview], int],
    data: memoryview,
    limit: int,
    reserve: int,
    bound: int,
) -> Inflated:
    """Decompress into a buffer of room for `bound` bytes (at most limit + 1); if the
    data holds more than the bound promised, once more with room for limit + 1."""
    room = min(bound, limit) + 1
    while True:
        out = bytearray(reserve + room)
        view = memoryview(out)
        try:
            size = decompress_into(data, view[reserve:])
        except cramjam.DecompressionError as exc:
            if _FULL not in str(exc):
                raise
            size = room  # the buffer is full, and the data goes on
        finally:
            view.release()
        if size < room:
            return Inflated(out, size, cut=False)
        if room > limit:
            return Inflated(out, limit, cut=True)
        room = limit + 1


_LZ4_MAGIC = 0x184D2204
_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE = range(0x184D2A50, 0x184D2A60)  # skippable frames, in both formats
_LZ4_BLOCK_MAX = {4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20}
_ZSTD_BLOCK_MAX = 128 << 10


# One frame's output bound and where it ends (stopping once above `room`), from where its
# magic number starts; None when the magic is not the format's.
_Frame = Callable[[memoryview, int, int, int], "tuple[int, int] | None"]


def _frames_bound(data: memoryview, limit: int, frame: _Frame) -> int:
    """An upper bound of the output of a run of frames (skippable ones skipped, each
    other one measured by `frame`); above `limit`, any number above it. Headers that do
    not parse give what was counted so far: the decompressor has the last word."""
    bound, pos, end = 0, 0, len(data)
    try:
        while pos < end and bound <= limit:
            (magic,) = struct.unpack_from("<I", data, pos)
            if magic in _SKIPPABLE:
                pos += 8 + struct.unpack_from("<I", data, pos + 4)[0]
                continue
            measured = frame(data, pos, magic, limit - bound)
            if measured is None:
                break
            size, pos = measured
            bound += size
    except (struct.error, IndexError):
        pass
    return bound


def _lz4_bound(data: memoryview, limit: int) -> int:
    """From the frames' block headers: a compressed block holds at most the frame's
    block size."""
    return _frames_bound(data, limit, _lz4_frame)


def _lz4_frame(data: memoryview, pos: int, magic: int, room: int) -> tuple[int, int] | None:
    flags, descriptor = data[pos + 4], data[pos + 5]
    block_max = _LZ4_BLOCK_MAX.get((descriptor >> 4) & 7)
    if magic != _LZ4_MAGIC or flags >> 6 != 1 or block_max is None:
        return None
    pos += 7 + (8 if flags & 0x08 else 0) + (4 if flags & 0x01 else 0)
    checksum = 4 if flags & 0x10 else 0
    bound = 0
    while bound <= room:
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if size == 0:
            break
        stored = size & 0x7FFFFFFF
        bound += stored if size & 0x80000000 else block_max
        pos += stored + checksum
    return bound, pos + (4 if flags & 0x04 else 0)


def _zstd_bound(data: memoryview, limit: int) -> int:
    """From the frames' headers (the content size when a frame states it) and block
    headers (a compressed block holds at most 128 KiB, or the window)."""
    return _frames_bound(data, limit, _zstd_frame)


def _zstd_frame(data: memoryview, pos: int, magic: int, room: int) -> tuple[int, int] | None:
    if magic != _ZSTD_MAGIC:
        return None
    pos, content_size, block_max, checksum = _zstd_frame_header(data, pos + 4)
    frame, pos = _zstd_blocks(data, pos, block_max, room)
    return (frame if content_size is None else min(frame, content_size)), pos + checksum


def _zstd_frame_header(data: memoryview, pos: int) -> tuple[int, int | None, int, int]:
    """After the magic: where the blocks start, the content size if stated, the largest
    block, the length of the checksum after the blocks (RFC 8878, 3.1.1.1)."""
    descriptor = data[pos]
    pos += 1
    single_segment = bool(descriptor & 0x20)
    window = 0
    if not single_segment:
        exponent, mantissa = data[pos] >> 3, data[pos] & 7
        pos += 1
        base = 1 << (10 + exponent)
        window = base + (base >> 3) * mantissa
    pos += (0, 1, 2, 4)[descriptor & 3]  # dictionary id
    field = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    content_size = None
    if field:
        content_size = int.from_bytes(data[pos : pos + field], "little")
        content_size += 256 if field == 2 else 0
        pos += field
    if single_segment:
        window = content_size or 0
    return pos, content_size, min(window, _ZSTD_BLOCK_MAX), 4 if descriptor & 0x04 else 0


def _zstd_blocks(data: memoryview, pos: int, block_max: int, room: int) -> tuple[int, int]:
    """The output bound of a frame's blocks (stopping once above `room`), and where they
    end."""
    bound = 0
    while bound <= room:
        if pos + 3 > len(data):
            raise IndexError("zstd block header")
        header = int.from_bytes(data[pos : pos + 3], "little")
        pos += 3
        kind, size = (header >> 1) & 3, header >> 3
        if kind == 0:  # raw
            bound, pos = bound + size, pos + size
        elif kind == 1:  # RLE: one byte, repeated
            bound, pos = bound + size, pos + 1
        elif kind == 2:  # compressed
            bound, pos = bound + block_max, pos + size
        else:
            raise IndexError("reserved zstd block type")
        if header & 1:  # the last block
            break
    return bound, pos


_INFLATERS: dict[int, Callable[[memoryview, int, int], Inflated]] = {
    GZIP: _gzip,
    SNAPPY: _snappy,
    LZ4: _lz4,
    ZSTD: _zstd,
}
