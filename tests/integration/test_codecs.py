"""Every compression codec Kafka has, through a real member: webhooks produced with gzip,
snappy, lz4 and zstd (one codec a partition, several records a batch) are all stored
and announced once, and nothing is dead-lettered. Without the codecs' library a member
could not read lz4, snappy or zstd at all, and retried the fetch forever."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from consumer.settings import Settings
from consumer.tools import topics
from tests.support import kafka, rawbatch
from tests.support.bodies import text_webhook
from tests.support.config import run_settings
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


async def test_a_topic_the_broker_compresses_with_zstd(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, postgres_url: str, tmp_path: Path
) -> None:
    """Apache Kafka, an inbound topic with compression.type=zstd: the broker recompresses
    every batch it takes (plain and lz4 here) into zstd, so a member reads zstd whatever
    the producers send. Every message stored and announced once, nothing dead-lettered.
    (Tansu 0.6 does not alter topic configs: this runs on Apache Kafka only.)"""
    s = run_settings(kafka_bootstrap, redis_url, key_prefix, postgres_url)
    await topics.create_topics(
        kafka_bootstrap, {s.inbound_topic: 2, s.outbound_topic: 1, s.dlq_topic: 1}
    )
    # AlterConfigs replaces a topic's whole set: the size topics create gave goes too.
    configs = {
        "compression.type": "zstd",
        "max.message.bytes": str(topics.default_max_message_bytes(s.max_record_bytes)),
    }
    await kafka.alter_topic(kafka_bootstrap, s.inbound_topic, configs)
    ends: dict[int, int] = {}
    for partition, codec in enumerate(("none", "lz4")):
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap,
            enable_idempotence=False,
            compression_type=None if codec == "none" else codec,
            linger_ms=20,
        )
        await producer.start()
        try:
            sends = [
                await producer.send(
                    s.inbound_topic, text_webhook("111", f"wamid.{codec}.{i}"), partition=partition
                )
                for i in range(PER_CODEC)
            ]
            ends[partition] = max([(await f).offset for f in sends]) + 1
        finally:
            await producer.stop()
    for partition in ends:
        held = await rawbatch.stored_codecs(kafka_bootstrap, s.inbound_topic, partition)
        assert held, f"partition {partition}: no batch fetched"
        assert set(held) == {rawbatch.ZSTD}, f"partition {partition} holds codecs {held}"
    group = ConsumerGroup(s, tmp_path)
    try:
        (member,) = group.start(1)
        await kafka.wait_committed(s, ends, timeout_s=60, explain=group.logs)
        expected = {("111", f"wamid.{c}.{i}") for c in ("none", "lz4") for i in range(PER_CODEC)}
        assert sorted(await kafka.rows(s)) == sorted(expected)
        events = await kafka.events(s)
        got = sorted((e["phone_number_id"], e["message"]["source_id"]) for e in events)
        assert got == sorted(expected)
        assert group.totals("dead_lettered") == 0
        assert member.proc.poll() is None, group.logs()
    finally:
        group.kill_all()
