"""Kafka administration the tools need: create topics, read records until idle."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from consumer.errors import BrokerError


async def create_topics(bootstrap: str, partitions: dict[str, int]) -> None:
    """Create topics (replication 1 is for local brokers); existing ones are kept."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        for name, count in partitions.items():
            try:
                await admin.create_topics([NewTopic(name, count, 1)])
            except TopicAlreadyExistsError:
                continue
    except KafkaError as exc:
        raise BrokerError(f"creating topics {sorted(partitions)} failed: {exc!r}") from exc
    finally:
        await admin.close()


async def partition_count(bootstrap: str, topic: str) -> int:
    """How many partitions `topic` has (waits for the metadata to show it)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    try:
        await producer.start()
        return len(await producer.partitions_for(topic))
    except KafkaError as exc:
        raise BrokerError(f"reading the partitions of {topic!r} failed: {exc!r}") from exc
    finally:
        await producer.stop()


async def committed_offsets(
    bootstrap: str, group: str, topic: str, partitions: Iterable[int]
) -> dict[int, int]:
    """The group's committed offset of each partition (0 where nothing is committed)."""
    client = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await client.start()
    try:
        return {p: (await client.committed(TopicPartition(topic, p))) or 0 for p in partitions}
    finally:
        await client.stop()


async def read_topic(
    bootstrap: str, topic: str, *, from_beginning: bool = True, idle_s: float | None = 2.0
) -> AsyncIterator[ConsumerRecord]:
    """Yield records of every partition of `topic`, without joining a group.

    With `idle_s`, stop after that long without a new record ("read until idle": Tansu's
    end offsets are unreliable, see DESIGN); with None, follow forever.
    """
    count = await partition_count(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(count)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        last = time.monotonic()
        while idle_s is None or time.monotonic() - last < idle_s:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    last = time.monotonic()
                    yield record
    finally:
        await consumer.stop()


async def read_all(bootstrap: str, topic: str, *, idle_s: float = 1.5) -> list[ConsumerRecord]:
    """Every record of `topic`, read until idle (see read_topic)."""
    return [r async for r in read_topic(bootstrap, topic, idle_s=idle_s)]
