"""Batches a client cannot decode, or that decompress to hundreds of megabytes, through a
real member on each broker (docs/design.md, "Fetching"): written as raw bytes in a
ProduceRequest of our own, each in a partition with good webhooks before and after.

Every good message is stored and announced once; each bad batch the broker took is
dead-lettered once, at its last offset, with reason `unreadable` or `oversize` and the
batch's offsets in the detail; the group's commits reach every partition's end; the
member is alive at the end, never failed a fetch, and its peak memory stayed far below
what decompressing a bomb would cost (512 MiB for the output alone).

What a broker takes differs: Apache Kafka checks a batch when it is produced (the CRC,
the codec, and the records, decompressing them), and refuses all but the bombs; Tansu
keeps what it is sent, refusing only a codec id Kafka does not define. REFUSED says which
broker refuses which batch, and is checked too: a broker that starts taking one puts it
under test, one that stops fails here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cramjam
import pytest

from consumer.settings import Settings
from consumer.tools import topics
from tests.hostile.harness import dead_letter
from tests.support import kafka
from tests.support import rawbatch as rb
from tests.support.bodies import text_webhook
from tests.support.procs import ConsumerGroup

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.hostile, pytest.mark.brokers]

BOMB_BYTES = 512 << 20
GOOD_AROUND = 3  # good webhooks before and after each bad batch, one batch each
# The member's peak RSS must stay under this: a member runs at about 80 MiB here (120-150
# under the bench's load); the bombs cost their bound, 2.5 MiB each (one record declared);
# decompressing one whole, as aiokafka does, took the member to 1.1 GiB.
PEAK_RSS_BOUND = 256 << 20


@dataclass(frozen=True)
class Bad:
    name: str
    reason: str  # of its dead letter
    count: int  # records the batch declares
    good_inside: int  # records of it that are read (and stored) before the bad part
    data: bytes


def _good_records(name: str, n: int) -> tuple[bytes, list[bytes]]:
    values = [text_webhook("111", f"wamid.{name}.in.{i}") for i in range(n)]
    return rb.records(values)[0], values


def _bad_batches() -> list[Bad]:
    """One of each kind; the batches declare 4 records."""
    out = []
    payload = bytearray(rb.compress(rb.GZIP, _good_records("gz", 4)[0]))
    payload[20:] = os.urandom(len(payload) - 20)
    out.append(Bad("corrupt_gzip", "unreadable", 4, 0, rb.batch(bytes(payload), count=4, codec=1)))
    zstd = bytearray(rb.compress(rb.ZSTD, _good_records("zs", 4)[0]))
    zstd[12:] = bytes(len(zstd) - 12)
    out.append(Bad("corrupt_zstd", "unreadable", 4, 0, rb.batch(bytes(zstd), count=4, codec=4)))
    good, _ = _good_records("crc", 4)
    out.append(Bad("crc_mismatch", "unreadable", 4, 0, rb.batch(good, count=4, crc=0xDEADBEEF)))
    two, _ = _good_records("unparsable", 2)
    broken = two + rb.record(2, b"x")[:-1] + b"\x7f\x7f\x7f"
    out.append(Bad("unparsable", "unreadable", 4, 2, rb.batch(broken, count=4)))
    out.append(Bad("unknown_codec", "unreadable", 4, 0, rb.batch(good, count=4, codec=5)))
    gzip_bomb = rb.gzip_bomb(BOMB_BYTES)
    out.append(Bad("gzip_bomb", "oversize", 1, 0, rb.batch(gzip_bomb, count=1, codec=1)))
    out.append(Bad("zstd_bomb", "oversize", 1, 0, rb.batch(_zstd_bomb(), count=1, codec=4)))
    return out


def _zstd_bomb() -> bytes:
    """One record of BOMB_BYTES zeros, zstd (16 KB), compressed as it is streamed."""
    c = cramjam.zstd.Compressor(level=3)
    c.compress(rb.record_head(0, BOMB_BYTES))
    zeros = bytes(1 << 20)
    for _ in range(BOMB_BYTES >> 20):
        c.compress(zeros)
    c.compress(rb.varint(0))
    return bytes(c.finish())


# The batches each broker refuses on produce (with the error it answers).
REFUSED = {
    "tansu": {"unknown_codec": "UnknownError"},
    "apache": {
        "corrupt_gzip": "UnknownError",
        "corrupt_zstd": "UnknownError",
        "crc_mismatch": "CorruptRecordException",
        "unparsable": "UnknownError",
        "unknown_codec": "UnknownError",
    },
}


async def test_bad_batches_are_dead_lettered_and_their_neighbours_stored(
    settings: Settings, broker: str, tmp_path: Path
) -> None:
    bad = _bad_batches()
    await topics.create_topics(
        settings.kafka_bootstrap_servers,
        {settings.inbound_topic: len(bad), settings.outbound_topic: 4, settings.dlq_topic: 1},
    )
    expected: set[tuple[str, str]] = set()
    ends: dict[int, int] = {}
    taken: dict[int, tuple[Bad, int]] = {}  # partition: the bad batch, its last offset
    refused: dict[str, str] = {}
    async with rb.RawProducer(settings.kafka_bootstrap_servers) as producer:
        for p, b in enumerate(bad):

            async def good(side: str, p: int = p, b: Bad = b) -> None:
                for i in range(GOOD_AROUND):
                    wamid = f"wamid.{b.name}.{side}.{i}"
                    sent = await producer.send(
                        settings.inbound_topic,
                        p,
                        rb.batch(rb.record(0, text_webhook("111", wamid)), count=1),
                    )
                    assert sent.error is None, sent
                    expected.add(("111", wamid))
                    ends[p] = sent.offset + 1

            await good("before")
            sent = await producer.send(settings.inbound_topic, p, b.data)
            if sent.error is None:
                taken[p] = (b, sent.offset + b.count - 1)
                expected.update(("111", f"wamid.{b.name}.in.{i}") for i in range(b.good_inside))
            else:
                refused[b.name] = sent.error
            await good("after")
    assert refused == REFUSED[broker], f"what {broker} refuses on produce changed"

    group = ConsumerGroup(settings, tmp_path)
    try:
        (member,) = group.start(1)
        await kafka.wait_committed(settings, ends, timeout_s=90, explain=group.logs)
        rows = await kafka.rows(settings)
        assert sorted(rows) == sorted(expected), "every good message stored once"
        events = await kafka.events(settings)
        announced = [(e["phone_number_id"], e["message"]["source_id"]) for e in events]
        assert sorted(announced) == sorted(expected), "every good message announced once"

        letters = [
            dead_letter(r)
            for r in await kafka.read_all(
                settings, settings.dlq_topic, want={(0, i) for i in range(len(taken))}
            )
        ]
        by_source = {letter.source: letter for letter in letters}
        assert len(letters) == len(by_source) == len(taken), letters
        for p, (b, last) in taken.items():
            letter = by_source.get((p, last))
            assert letter is not None, f"{b.name}: no dead letter at {p}:{last} in {letters}"
            assert letter.topic == settings.inbound_topic
            assert letter.reason == b.reason, (b.name, letter)
            assert f"offsets {last - b.count + 1}..{last}" in letter.detail, (b.name, letter)
        assert group.totals("dead_lettered") == len(taken)

        assert member.proc.poll() is None, group.logs()
        assert not member.named("fetch.internal_error"), group.logs()
        assert not member.named("fetch.failed"), group.logs()
        peak = member.peak_rss_bytes()
        print(f"{broker}: the member's peak RSS {peak / 2**20:.0f} MiB")
        assert peak < PEAK_RSS_BOUND, f"peak RSS {peak >> 20} MiB"
    finally:
        group.kill_all()
