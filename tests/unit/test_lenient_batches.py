"""Batches aiokafka cannot decode, or that decompress beyond the bound, through aiokafka's
own fetcher code (PartitionRecords, as a fetch runs it) with consumer.lenient installed:
the records read are returned, one record stands for the rest (at the batch's last
offset, reason `unreadable` or `oversize`), the fetcher moves past the batch, and the
next batch is read as usual. Nothing raises out of the fetcher."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.consumer.fetcher import PartitionRecords

from consumer import intake, lenient
from consumer.records import BatchReport, Invalid, Reason, Webhook
from consumer.source import inbound
from consumer.tracking import Tracker
from tests.support import rawbatch as rb
from tests.support.bodies import text_webhook

TP = TopicPartition("in", 0)
VALUES = [text_webhook("111", f"wamid.{i}") for i in range(3)]
GOOD, N = rb.records(VALUES)
CODECS = {"none": rb.NONE, "gzip": rb.GZIP, "snappy": rb.SNAPPY, "lz4": rb.LZ4, "zstd": rb.ZSTD}


@pytest.fixture(autouse=True)
def _installed() -> Iterator[None]:
    lenient.install(256 * 1024)
    yield
    lenient.install(lenient.DEFAULT_MAX_RECORD_BYTES)


def _fetch(*batches: bytes, at: int = 0, check_crcs: bool = True) -> tuple[list[Any], int]:
    """The ConsumerRecords a fetch of these batches returns from offset `at`, and where
    the fetcher would fetch next."""
    records = lenient._LenientRecords(b"".join(batches))
    partition = PartitionRecords(TP, records, None, at, None, None, check_crcs, 0)
    return list(partition), partition.next_fetch_offset


def _values(got: list[Any]) -> list[tuple[int, Any]]:
    return [
        (m.offset, m.value.reason if isinstance(m.value, lenient.Problem) else m.value) for m in got
    ]


def _good(base: int, codec: int = rb.NONE) -> bytes:
    payload = GOOD if codec == rb.NONE else rb.compress(codec, GOOD)
    return rb.batch(payload, count=N, codec=codec, base_offset=base)


AFTER = [(10, VALUES[0]), (11, VALUES[1]), (12, VALUES[2])]


@pytest.mark.parametrize("codec", CODECS.values(), ids=CODECS.keys())
def test_every_codec_is_read_as_before(codec: int) -> None:
    got, next_offset = _fetch(_good(7, codec), _good(10, codec))
    assert _values(got) == [(7, VALUES[0]), (8, VALUES[1]), (9, VALUES[2]), *AFTER]
    assert next_offset == 13


@pytest.mark.parametrize("codec", [rb.GZIP, rb.SNAPPY, rb.LZ4, rb.ZSTD])
def test_corrupt_compressed_data_is_one_unreadable_record(codec: int) -> None:
    payload = bytearray(rb.compress(codec, GOOD * 20))
    payload[len(payload) // 2 :] = bytes(len(payload) - len(payload) // 2)
    bad = rb.batch(bytes(payload), count=N * 20, codec=codec, base_offset=0, last_offset_delta=9)
    got, next_offset = _fetch(bad, _good(10))
    assert _values(got) == [(9, Reason.UNREADABLE), *AFTER]
    assert next_offset == 13
    detail = got[0].value.detail
    assert "at offsets 0..9" in detail, detail
    assert inflate_name(codec) in detail, detail
    assert (got[0].key, got[0].headers, got[0].timestamp) == (None, (), 1_700_000_000_000)


def inflate_name(codec: int) -> str:
    return {rb.GZIP: "gzip", rb.SNAPPY: "snappy", rb.LZ4: "lz4", rb.ZSTD: "zstd"}[codec]


@pytest.mark.parametrize("codec", [5, 6, 7])
def test_a_codec_id_kafka_does_not_define_is_one_unreadable_record(codec: int) -> None:
    got, next_offset = _fetch(rb.batch(GOOD, count=N, codec=codec, base_offset=7), _good(10))
    assert _values(got) == [(9, Reason.UNREADABLE), *AFTER]
    assert f"codec id {codec} " in got[0].value.detail
    assert next_offset == 13


def test_a_crc_mismatch_is_one_unreadable_record_without_reading_the_batch() -> None:
    """The bytes are not what the producer checksummed: none of them is trusted."""
    bad = rb.batch(GOOD, count=N, base_offset=7, crc=0x12345678)
    got, next_offset = _fetch(_good(4), bad, _good(10))
    assert _values(got) == [
        (4, VALUES[0]),
        (5, VALUES[1]),
        (6, VALUES[2]),
        (9, Reason.UNREADABLE),
        *AFTER,
    ]
    assert "CRC-32C is 0x12345678" in got[3].value.detail
    assert next_offset == 13
    unchecked, _ = _fetch(bad, check_crcs=False)
    assert [m.value for m in unchecked] == VALUES, "without check_crcs: read as it is"


@pytest.mark.parametrize("codec", [rb.NONE, rb.GZIP, rb.ZSTD])
def test_records_that_do_not_parse_after_good_ones(codec: int) -> None:
    """The records before the one that does not parse are returned once; one record
    stands for the rest."""
    broken = GOOD + rb.record(3, b"x")[:-2] + b"\xff\xff"
    payload = broken if codec == rb.NONE else rb.compress(codec, broken)
    bad = rb.batch(payload, count=5, codec=codec, base_offset=5)
    got, next_offset = _fetch(bad, _good(10))
    assert _values(got) == [
        (5, VALUES[0]),
        (6, VALUES[1]),
        (7, VALUES[2]),
        (9, Reason.UNREADABLE),
        *AFTER,
    ]
    assert "from offset 8" in got[3].value.detail
    assert next_offset == 13


def test_trailing_bytes_after_every_declared_record_lose_nothing() -> None:
    """Every offset the batch declares was returned: nothing to stand for (logged)."""
    got, next_offset = _fetch(rb.batch(GOOD + b"junk", count=N, base_offset=7), _good(10))
    assert _values(got) == [(7, VALUES[0]), (8, VALUES[1]), (9, VALUES[2]), *AFTER]
    assert next_offset == 13


def test_a_gzip_bomb_returns_what_fits_and_one_oversize_record() -> None:
    """512 MiB of zeros after the good records, in one gzip batch of four records: the
    three are returned, the fourth stands as oversize; memory stays at the bound."""
    bomb = rb.gzip_bomb(512 << 20, before=GOOD, offset_delta=N)
    got, next_offset = _fetch(rb.batch(bomb, count=N + 1, codec=rb.GZIP, base_offset=6), _good(10))
    assert _values(got) == [
        (6, VALUES[0]),
        (7, VALUES[1]),
        (8, VALUES[2]),
        (9, Reason.OVERSIZE),
        *AFTER,
    ]
    detail = got[3].value.detail
    assert f"more than {lenient.limit(N + 1)} bytes" in detail
    assert "from offset 9" in detail
    assert next_offset == 13


def test_the_bound() -> None:
    """At least MIN_RECORDS records' worth of MAX_RECORD_BYTES and the overhead, at most
    MAX_BATCH_BYTES unless that is less; set by install. At 256 KiB: 2.5 to 20 MiB (64
    records' worth); at the default 3 MiB, eight records' worth whatever the batch
    declares (24.5 MiB)."""
    lenient.install(256 * 1024)
    per = 256 * 1024 + lenient.RECORD_OVERHEAD_BYTES
    assert lenient.limit(1) == lenient.limit(0) == lenient.MIN_RECORDS * per == 2_621_440
    assert lenient.limit(20) == 20 * per
    assert lenient.limit(64) == lenient.limit(100_000) == lenient.MAX_BATCH_BYTES == 20_971_520
    lenient.install(lenient.DEFAULT_MAX_RECORD_BYTES)
    big = 3 * 1024 * 1024 + lenient.RECORD_OVERHEAD_BYTES
    assert lenient.limit(1) == lenient.limit(100_000) == 8 * big == 25_690_112
    lenient.install(1024)
    assert lenient.limit(1) == lenient.MIN_RECORDS * (1024 + lenient.RECORD_OVERHEAD_BYTES)
    lenient.install()
    assert lenient.limit(1) == lenient.MIN_RECORDS * (1024 + lenient.RECORD_OVERHEAD_BYTES)
    with pytest.raises(ValueError, match="at least 1"):
        lenient.install(0)


def test_the_default_bound_is_the_settings_default() -> None:
    from consumer.settings import Settings

    assert Settings().max_record_bytes == lenient.DEFAULT_MAX_RECORD_BYTES


def test_a_batch_just_within_the_bound_is_read_whole() -> None:
    """Records up to the bound exactly are all returned; one byte more, and the last one
    stands as oversize."""
    lenient.install(1024)
    bound = lenient.limit(1)
    value = next(b"v" * n for n in range(bound, 0, -1) if len(rb.record(0, b"v" * n)) == bound)
    exact = rb.record(0, value)
    assert len(exact) == bound, (len(exact), bound)
    whole, _ = _fetch(rb.batch(rb.compress(rb.GZIP, exact), count=1, codec=rb.GZIP))
    assert _values(whole) == [(0, value)]
    over = rb.record(0, value + b"v")
    cut, _ = _fetch(rb.batch(rb.compress(rb.GZIP, over), count=1, codec=rb.GZIP))
    assert _values(cut) == [(0, Reason.OVERSIZE)]


def test_a_fetch_from_inside_the_batch_after_its_stand_in_moves_on() -> None:
    """A rewind to after the stand-in (it was dead-lettered) skips it; to before it (not
    yet done) returns it again, at the same offset."""
    bad = rb.batch(GOOD + b"\xff", count=5, base_offset=5)
    got, _ = _fetch(bad, _good(10), at=10)
    assert _values(got) == AFTER
    again, _ = _fetch(bad, _good(10), at=8)
    assert _values(again) == [(9, Reason.UNREADABLE), *AFTER]


def test_a_header_that_lies_about_the_last_offset_never_moves_the_fetcher_back() -> None:
    lying = rb.batch(GOOD, count=N, base_offset=7, last_offset_delta=-5)
    got, next_offset = _fetch(lying)
    assert [m.offset for m in got] == [7, 8, 9]
    assert next_offset == 10


def test_a_header_name_that_is_not_utf8_in_a_compressed_batch() -> None:
    """The lenient header reader reads the bounded, decompressed batch."""
    records = GOOD + rb.record(3, b"bad", headers=[(b"\xff\xfe", b"v"), (b"ok", b"2")])
    got, _ = _fetch(rb.batch(rb.compress(rb.ZSTD, records), count=4, codec=rb.ZSTD))
    assert [m.value for m in got] == [*VALUES, b"bad"]
    assert list(got[3].headers) == [("\\xff\\xfe", b"v"), ("ok", b"2")]


def test_the_stand_in_becomes_an_invalid_record_with_its_coordinates() -> None:
    """source.inbound carries the problem; intake.decode dead-letters it as it is, a
    real record with an empty value stays `empty`."""
    bad = rb.batch(b"\x1f\x8bnot gzip", count=4, codec=rb.GZIP, base_offset=20)
    (stand,), _ = _fetch(bad)
    record = inbound(stand)
    assert (record.topic, record.partition, record.offset) == ("in", 0, 23)
    assert (record.value, record.key, record.headers) == (b"", None, ())
    assert record.problem is not None
    assert record.problem[0] is Reason.UNREADABLE
    decoded = intake.decode(record, max_bytes=256 * 1024)
    assert isinstance(decoded, Invalid)
    assert (decoded.reason, decoded.detail) == record.problem
    (empty,), _ = _fetch(rb.batch(rb.record(0, b""), count=1))
    plain = inbound(empty)
    assert plain.problem is None
    assert intake.decode(plain, max_bytes=256 * 1024).reason is Reason.EMPTY  # type: ignore[union-attr]
    (good,), _ = _fetch(rb.batch(rb.record(0, VALUES[0]), count=1))
    assert isinstance(intake.decode(inbound(good), max_bytes=256 * 1024), Webhook)


def test_the_bookkeeping_commits_past_a_batch_stood_for() -> None:
    """The batch's other offsets are never seen (a gap, as in a compacted topic): the
    commit and the lag reach the batch's end once the stand-in is dead-lettered."""
    bad = rb.batch(b"\x1f\x8bnot gzip", count=4, codec=rb.GZIP, base_offset=3)
    got, _ = _fetch(_good(0), bad)
    tracker = Tracker(max_pending=100, retry_backoff_s=1.0, retry_backoff_max_s=8.0)
    partition = ("in", 0)
    tracker.assigned({partition})
    fetched = tracker.fetched([inbound(m) for m in got])
    assert [r.offset for r in fetched] == [0, 1, 2, 6]
    assert tracker.positions() == {partition: 7}
    tracker.settled(BatchReport(durable=fetched), now=0.0)
    assert tracker.to_commit() == {partition: 7}
    assert tracker.lag(partition, end=7) == 0


def test_a_bomb_within_the_bound_is_a_record_like_any() -> None:
    """The tests' bombs are well-formed records: under a bound they fit, one is read
    whole (and intake dead-letters its value as oversize)."""
    lenient.install(2 << 20)
    for codec, payload in ((rb.GZIP, rb.gzip_bomb(1 << 20)), (rb.ZSTD, None)):
        if payload is None:
            payload = rb.compress(codec, rb.record(0, bytes(1 << 20)))
        (record,), _ = _fetch(rb.batch(payload, count=1, codec=codec))
        assert record.value == bytes(1 << 20)
