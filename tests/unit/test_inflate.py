"""Bounded decompression (consumer/inflate.py): every codec Kafka has gives back exactly
what was compressed when it fits the limit, the first bytes and `cut` when it does not,
never writes more than the limit, and refuses corrupt or truncated data and codec ids
Kafka does not define. The bombs (512 MiB of zeros) cost the limit, not their size."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cramjam
import pytest

from consumer import inflate
from tests.support import rawbatch as rb

CODECS = {"gzip": rb.GZIP, "snappy": rb.SNAPPY, "lz4": rb.LZ4, "zstd": rb.ZSTD}
DATA = b"".join(
    b'{"object":"whatsapp_business_account","entry":[{"id":"%d","text":"%s"}]}'
    % (i, os.urandom(8).hex().encode())
    for i in range(2000)
)


def _inflate(codec: int, payload: bytes, limit: int, reserve: int = 0) -> inflate.Inflated:
    return inflate.inflate(codec, memoryview(payload), limit, reserve=reserve)


def _output(got: inflate.Inflated, reserve: int = 0) -> bytes:
    return bytes(got.buffer[reserve : reserve + got.size])


@pytest.mark.parametrize("codec", CODECS.values(), ids=CODECS.keys())
def test_within_the_limit_the_output_is_whole(codec: int) -> None:
    payload = rb.compress(codec, DATA)
    for limit in (len(DATA), len(DATA) + 1, 10 * len(DATA)):
        got = _inflate(codec, payload, limit, reserve=61)
        assert not got.cut
        assert _output(got, 61) == DATA
        assert len(got.buffer) <= 61 + limit + 1


@pytest.mark.parametrize("codec", CODECS.values(), ids=CODECS.keys())
def test_beyond_the_limit_the_first_bytes_and_cut(codec: int) -> None:
    """Never more than the limit; gzip, lz4 and zstd stop at it, snappy at the last
    block that fits (xerial blocks are 32 KiB)."""
    payload = rb.compress(codec, DATA)
    limit = len(DATA) // 3
    got = _inflate(codec, payload, limit)
    assert got.cut
    assert got.size <= limit
    assert got.size > (limit - 32 * 1024 if codec == rb.SNAPPY else limit - 1)
    assert _output(got) == DATA[: got.size]


def test_raw_snappy_states_its_size_and_is_not_decompressed_beyond_the_limit() -> None:
    """One raw block (no xerial framing): its size is read first; too large, nothing."""
    payload = bytes(cramjam.snappy.compress_raw(DATA))
    assert _output(_inflate(rb.SNAPPY, payload, len(DATA))) == DATA
    got = _inflate(rb.SNAPPY, payload, len(DATA) - 1)
    assert (got.cut, got.size) == (True, 0)


def test_gzip_reads_every_member_and_skips_zero_padding() -> None:
    """As gzip.GzipFile (aiokafka's reader) does."""
    one, two = rb.compress(rb.GZIP, b"first "), rb.compress(rb.GZIP, b"second")
    assert _output(_inflate(rb.GZIP, one + two + bytes(7), 100)) == b"first second"
    with pytest.raises(inflate.InflateError, match="gzip"):
        _inflate(rb.GZIP, one + b"garbage", 100)


def _zeros_gzip(n: int) -> bytes:
    return rb.gzip_bomb(n)  # a record head, the zeros, a header count


def _zeros_zstd(n: int) -> bytes:
    c = cramjam.zstd.Compressor(level=3)
    chunk = bytes(1 << 20)
    for _ in range(n >> 20):
        c.compress(chunk)
    return bytes(c.finish())


def _zeros_lz4(n: int) -> bytes:
    c = cramjam.lz4.Compressor(content_checksum=False, block_linked=False)
    chunk = bytes(1 << 20)
    for _ in range(n >> 20):
        c.compress(chunk)
    return bytes(c.finish())


def _zeros_snappy(n: int) -> bytes:
    block = bytes(cramjam.snappy.compress_raw(bytes(32 * 1024)))
    framing = struct.pack(">i", len(block)) + block
    return rb.XERIAL_HEADER + framing * (n // (32 * 1024))


BOMBS: dict[str, tuple[int, Callable[[int], bytes]]] = {
    "gzip": (rb.GZIP, _zeros_gzip),
    "snappy": (rb.SNAPPY, _zeros_snappy),
    "lz4": (rb.LZ4, _zeros_lz4),
    "zstd": (rb.ZSTD, _zeros_zstd),
}


def _peak_rss_reset() -> bool:
    """Reset this process's VmHWM (Linux: clear_refs 5); False if it cannot be."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("name", BOMBS)
def test_a_bomb_costs_the_limit_not_its_size(name: str) -> None:
    """512 MiB of zeros (0.5 MB of gzip, 16 KB of zstd) against a limit of 2 MiB: the
    first 2 MiB come back, and the process's peak memory grows by about that."""
    codec, make = BOMBS[name]
    payload = make(512 << 20)
    limit = 2 << 20
    measured = _peak_rss_reset()
    before = _peak_rss()
    got = _inflate(codec, payload, limit, reserve=61)
    grown = _peak_rss() - before
    assert got.cut
    assert limit - 32 * 1024 < got.size <= limit
    assert not any(got.buffer[61 + 16 : 61 + got.size]), "zeros (after gzip's record head)"
    if measured:
        assert grown < 32 << 20, f"{name}: peak memory grew by {grown >> 20} MiB"


@pytest.mark.parametrize("codec", CODECS.values(), ids=CODECS.keys())
def test_corrupt_data_is_refused(codec: int) -> None:
    payload = bytearray(rb.compress(codec, DATA))
    middle = len(payload) // 2
    payload[middle : middle + 64] = os.urandom(64)
    with pytest.raises(inflate.InflateError, match=inflate.NAMES[codec]):
        _inflate(codec, bytes(payload), 10 * len(DATA))


@pytest.mark.parametrize("codec", CODECS.values(), ids=CODECS.keys())
def test_truncated_data_is_refused(codec: int) -> None:
    payload = rb.compress(codec, DATA)
    with pytest.raises(inflate.InflateError, match=inflate.NAMES[codec]):
        _inflate(codec, payload[: len(payload) - 5], 10 * len(DATA))


@pytest.mark.parametrize("codec", CODECS.values(), ids=CODECS.keys())
def test_garbage_and_nothing_are_refused(codec: int) -> None:
    garbage = b"".join(hashlib.sha256(bytes([codec, i])).digest() for i in range(7))
    for payload in (b"", garbage):
        with pytest.raises(inflate.InflateError):
            _inflate(codec, payload, 16 << 20)  # above what the garbage may claim


@pytest.mark.parametrize("codec", [5, 6, 7, 0])
def test_a_codec_id_kafka_does_not_define_is_refused(codec: int) -> None:
    with pytest.raises(inflate.InflateError, match=f"codec id {codec} "):
        _inflate(codec, DATA, 1 << 20)


def test_a_frame_that_understates_its_size_costs_a_second_try_only() -> None:
    """A zstd frame whose blocks hold more than its header says: the decoder refuses
    it (the content size is checked), after one try at the limit."""
    frame = bytearray(cramjam.zstd.compress(DATA))
    descriptor = frame[4]
    assert descriptor >> 6 == 2, "a 4-byte content size"
    assert not descriptor & 0x03, "no dictionary id"
    at = 5 if descriptor & 0x20 else 6  # after the window descriptor, if any
    assert struct.unpack_from("<I", frame, at) == (len(DATA),)
    struct.pack_into("<I", frame, at, 100)
    with pytest.raises(inflate.InflateError, match="zstd"):
        _inflate(rb.ZSTD, bytes(frame), 10 * len(DATA))


def test_linked_lz4_blocks_and_zstd_without_a_content_size() -> None:
    """Frames as other clients write them: lz4 blocks that refer to earlier ones,
    zstd from a streaming compressor (no content size, as Java's zstd-jni)."""
    linked = cramjam.lz4.Compressor(block_linked=True)
    linked.compress(DATA)
    assert _output(_inflate(rb.LZ4, bytes(linked.finish()), len(DATA))) == DATA
    streaming = cramjam.zstd.Compressor()
    streaming.compress(DATA)
    assert _output(_inflate(rb.ZSTD, bytes(streaming.finish()), len(DATA))) == DATA


def test_cramjam_still_says_when_its_output_buffer_is_full() -> None:
    """inflate tells a full buffer (the data goes on) from corrupt data by this."""
    for module in (cramjam.zstd, cramjam.lz4):
        with pytest.raises(cramjam.DecompressionError, match=inflate._FULL):
            module.decompress_into(module.compress(DATA), bytearray(100))


def test_gzip_member_checksum_is_checked() -> None:
    payload = bytearray(rb.compress(rb.GZIP, DATA))
    payload[-8] ^= 0xFF  # the CRC-32 of the member
    with pytest.raises(inflate.InflateError, match="gzip"):
        _inflate(rb.GZIP, bytes(payload), 10 * len(DATA))
    assert zlib.crc32(DATA) != 0
