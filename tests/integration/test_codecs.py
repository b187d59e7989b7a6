"""Every compression codec Kafka has, through a real member: webhooks produced with gzip,
snappy, lz4 and zstd (one codec a partition, several records a batch) are all stored
and announced once, and nothing is dead-lettered. Without the codecs' library a member
could not read lz4, snappy or zstd at all, and retried the fetch forever."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer

from consumer.settings import Settings
from tests.support import kafka
from tests.support.bodies import text_webhook
from tests.support.procs import ConsumerGroup

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.brokers]

CODECS = ("gzip", "snappy", "lz4", "zstd")
PER_CODEC = 20


async def _produce(settings: Settings, codec: str, partition: int) -> int:
    """PER_CODEC webhooks in batches compressed with `codec`; the end offset."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_idempotence=False,
        compression_type=codec,
        linger_ms=20,
    )
    await producer.start()
    try:
        sends = [
            await producer.send(
                settings.inbound_topic,
                text_webhook("111", f"wamid.{codec}.{i}"),
                partition=partition,
            )
            for i in range(PER_CODEC)
        ]
        offsets = [(await s).offset for s in sends]
        return int(max(offsets)) + 1
    finally:
        await producer.stop()


async def test_every_codec_is_read_stored_and_announced(group: ConsumerGroup) -> None:
    settings = group.settings
    ends = {p: await _produce(settings, codec, p) for p, codec in enumerate(CODECS)}
    (member,) = group.start(1)
    await kafka.wait_committed(settings, ends, timeout_s=60, explain=group.logs)
    expected = {("111", f"wamid.{codec}.{i}") for codec in CODECS for i in range(PER_CODEC)}
    rows = await kafka.rows(settings)
    assert sorted(rows) == sorted(expected), "one row per message, every codec"
    events = await kafka.events(settings)
    assert sorted((e["phone_number_id"], e["message"]["source_id"]) for e in events) == sorted(
        expected
    )
    assert group.totals("dead_lettered") == 0
    assert member.proc.poll() is None, group.logs()
