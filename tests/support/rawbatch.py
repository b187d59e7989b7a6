"""Kafka record batches (format v2) built byte by byte, and produced as they are.

A client never writes a corrupt batch, an unknown codec id or a decompression bomb, so
the tests that need one build it here and send it in a ProduceRequest of their own
(aiokafka's low-level client): what the broker stores is exactly these bytes, if it
accepts them.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cramjam
from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.util import calc_crc32c

# BaseOffset, Length, PartitionLeaderEpoch, Magic, CRC, Attributes, LastOffsetDelta,
# FirstTimestamp, MaxTimestamp, ProducerId, ProducerEpoch, BaseSequence, RecordCount.
HEADER = struct.Struct(">qiibIhiqqqhii")
ATTRIBUTES_AT = 21  # the CRC covers the bytes from here to the end

NONE, GZIP, SNAPPY, LZ4, ZSTD = range(5)


def varint(n: int) -> bytes:
    """Kafka's zigzag varint."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def record_head(
    offset_delta: int,
    value_len: int,
    *,
    key: bytes | None = None,
    headers_len: int = 1,
    timestamp_delta: int = 0,
) -> bytes:
    """A record's bytes up to its value (its length counts the value and `headers_len`
    bytes of headers that follow, their count included: 1 for none)."""
    body = (
        b"\x00"  # attributes
        + varint(timestamp_delta)
        + varint(offset_delta)
        + (varint(-1) if key is None else varint(len(key)) + key)
        + varint(value_len)
    )
    return varint(len(body) + value_len + headers_len) + body


def record(
    offset_delta: int,
    value: bytes,
    *,
    key: bytes | None = None,
    headers: Sequence[tuple[bytes, bytes | None]] = (),
    timestamp_delta: int = 0,
) -> bytes:
    encoded = varint(len(headers)) + b"".join(
        varint(len(name)) + name + (varint(-1) if v is None else varint(len(v)) + v)
        for name, v in headers
    )
    head = record_head(
        offset_delta, len(value), key=key, headers_len=len(encoded), timestamp_delta=timestamp_delta
    )
    return head + value + encoded


def records(values: Iterable[bytes]) -> tuple[bytes, int]:
    """Records of these values at offset deltas 0, 1, ...; the bytes and the count."""
    parts = [record(i, v) for i, v in enumerate(values)]
    return b"".join(parts), len(parts)


def batch(
    payload: bytes,
    *,
    count: int,
    last_offset_delta: int | None = None,
    codec: int = NONE,
    attributes: int | None = None,
    timestamp_ms: int = 1_700_000_000_000,
    crc: int | None = None,
    base_offset: int = 0,
) -> bytes:
    """A v2 batch around `payload` (the records, compressed as `codec` says, or any
    bytes); the CRC computed unless `crc` gives one."""
    attrs = codec if attributes is None else attributes
    last = count - 1 if last_offset_delta is None else last_offset_delta
    header = HEADER.pack(
        base_offset,
        HEADER.size - 12 + len(payload),
        -1,
        2,
        0,
        attrs,
        last,
        timestamp_ms,
        timestamp_ms,
        -1,
        -1,
        -1,
        count,
    )
    data = bytearray(header + payload)
    struct.pack_into(
        ">I", data, 17, calc_crc32c(bytes(data[ATTRIBUTES_AT:])) if crc is None else crc
    )
    return bytes(data)


def compress(codec: int, data: bytes) -> bytes:
    """`data` as Kafka's clients compress it (snappy in xerial framing, as Java's)."""
    if codec == GZIP:
        c = zlib.compressobj(6, zlib.DEFLATED, 31)
        return c.compress(data) + c.flush()
    if codec == SNAPPY:
        return xerial(data)
    if codec == LZ4:
        compressor = cramjam.lz4.Compressor(content_checksum=False, block_linked=False)
        compressor.compress(data)
        return bytes(compressor.finish())
    if codec == ZSTD:
        return bytes(cramjam.zstd.compress(data, level=3))
    raise ValueError(codec)


XERIAL_HEADER = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)


def xerial(data: bytes, block: int = 32 * 1024) -> bytes:
    """Snappy in the xerial framing Java's client writes: a header, then blocks of
    (big-endian int32 length, raw snappy)."""
    out = [XERIAL_HEADER]
    for i in range(0, len(data), block):
        raw = bytes(cramjam.snappy.compress_raw(data[i : i + block]))
        out += [struct.pack(">i", len(raw)), raw]
    return b"".join(out)


def gzip_bomb(value_bytes: int, *, before: bytes = b"", offset_delta: int = 0) -> bytes:
    """A gzip payload: `before` (whole records), then one record whose value is
    `value_bytes` zeros, compressed as it is streamed (never held in memory). 512 MiB
    of zeros take about 0.5 MB."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [c.compress(before), c.compress(record_head(offset_delta, value_bytes))]
    zeros = bytes(1 << 20)
    left = value_bytes
    while left:
        n = min(left, len(zeros))
        out.append(c.compress(zeros[:n]))
        left -= n
    out += [c.compress(varint(0)), c.flush()]  # no headers
    return b"".join(out)


@dataclass(frozen=True)
class Produced:
    error: str | None  # the broker's error name, None when it took the batch
    offset: int  # the batch's base offset, -1 when refused


class RawProducer:
    """Sends a batch's bytes as the record set of one ProduceRequest (acks=all), on one
    connection for many sends."""

    def __init__(self, bootstrap: str) -> None:
        self._client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=60_000)

    async def __aenter__(self) -> RawProducer:
        await self._client.bootstrap()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()

    async def send(self, topic: str, partition: int, data: bytes) -> Produced:
        await self._client._wait_on_metadata(topic)
        leader = self._client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = ProduceRequest(None, -1, 60_000, [(topic, [(partition, data)])])
        response = await self._client.send(leader, request)
        _, parts = response.topics[0]
        _, code, offset, *_ = parts[0]
        if code:
            return Produced(for_code(code).__name__, -1)
        return Produced(None, int(offset))


async def produce(bootstrap: str, topic: str, partition: int, data: bytes) -> Produced:
    """One batch, on a connection of its own."""
    async with RawProducer(bootstrap) as producer:
        return await producer.send(topic, partition, data)


async def stored_codecs(bootstrap: str, topic: str, partition: int) -> list[int]:
    """The codec of every batch the broker holds in a partition from offset 0 (its
    attributes as the log has them: what a consumer is handed), read by a FetchRequest
    of our own."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=60_000)
    await client.bootstrap()
    try:
        await client._wait_on_metadata(topic)
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = FetchRequest(500, 1, 64 << 20, 0, [(topic, [(partition, 0, 64 << 20)])])
        response = await client.send(leader, request)
    finally:
        await client.close()
    _, parts = response.topics[0]
    _, code, *_, data = parts[0]
    if code:
        raise AssertionError(f"fetch of {topic}-{partition}: {for_code(code).__name__}")
    codecs, at = [], 0
    while at + HEADER.size <= len(data):
        (length,) = struct.unpack_from(">i", data, at + 8)
        (attributes,) = struct.unpack_from(">h", data, at + ATTRIBUTES_AT)
        codecs.append(attributes & 0x07)
        at += 12 + length
    return codecs
