"""Kafka and database observations for tests: what was produced, committed, stored."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from consumer.engine import create_engine
from consumer.schema import messages
from consumer.settings import Settings
from consumer.store import Store
from consumer.tools import topics


async def send(
    settings: Settings,
    records: Sequence[tuple[int, bytes]],
    headers: Sequence[tuple[str, bytes]] = (),
) -> dict[int, int]:
    """Produce (partition, value) records in order, in requests as large as the setting
    lets a webhook receiver make them (Meta's bodies reach 3 MB); returns end offset per
    partition."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_idempotence=False,
        acks="all",
        max_request_size=settings.sizes.request_bytes,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(settings.inbound_topic, value, partition=p, headers=list(headers))
            for p, value in records
        ]
        metas = [await f for f in futures]
    finally:
        await producer.stop()
    ends: dict[int, int] = collections.defaultdict(int)
    for m in metas:
        ends[m.partition] = max(ends[m.partition], m.offset + 1)
    return dict(ends)


async def send_each(settings: Settings, records: Sequence[tuple[int, bytes]]) -> list[int]:
    """Produce (partition, value) records in order; returns each record's offset."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_idempotence=False, acks="all"
    )
    await producer.start()
    try:
        futures = [
            await producer.send(settings.inbound_topic, value, partition=p) for p, value in records
        ]
        return [(await f).offset for f in futures]
    finally:
        await producer.stop()


async def committed(settings: Settings, partitions: Sequence[int]) -> dict[int, int]:
    return await topics.committed_offsets(
        settings.kafka_bootstrap_servers,
        settings.consumer_group,
        settings.inbound_topic,
        partitions,
    )


async def wait_committed(
    settings: Settings, ends: dict[int, int], timeout_s: float = 60, explain: Any = None
) -> None:
    """Wait until the group committed every produced offset (lag zero)."""
    deadline = time.monotonic() + timeout_s
    seen: dict[int, int] = {}
    while time.monotonic() < deadline:
        seen = await committed(settings, list(ends))
        if all(seen[p] >= end for p, end in ends.items()):
            return
        await asyncio.sleep(0.2)
    detail = explain() if callable(explain) else ""
    raise AssertionError(f"offsets not committed: want {ends}, have {seen}\n{detail}")


async def commit(settings: Settings, offsets: dict[int, int]) -> None:
    """Commit inbound offsets for the group from outside (as a member that left would)."""
    client = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    await client.start()
    try:
        tps = {TopicPartition(settings.inbound_topic, p): o for p, o in offsets.items()}
        client.assign(list(tps))
        await client.commit(tps)
    finally:
        await client.stop()


async def alter_topic(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    """Set configs of a topic (Apache Kafka; Tansu 0.6 does not alter configs). This is
    AlterConfigs, not the incremental form: every config of the topic not named here
    returns to the broker's default."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()


async def read_all(
    settings: Settings,
    topic: str,
    idle_s: float = topics.COMPLETE_IDLE_S,
    *,
    want: Iterable[tuple[int, int]] = (),
) -> list[Any]:
    """Every record of `topic` from offset 0; complete once every (partition, offset) in
    `want` arrived, else after `idle_s` of silence (see topics.read_all)."""
    return await topics.read_all(settings.kafka_bootstrap_servers, topic, idle_s=idle_s, want=want)


async def events(
    settings: Settings,
    idle_s: float = topics.COMPLETE_IDLE_S,
    *,
    want: Iterable[tuple[int, int]] = (),
) -> list[dict[str, Any]]:
    """The outbound topic's events, read as read_all reads."""
    records = await read_all(settings, settings.outbound_topic, idle_s, want=want)
    return [orjson.loads(r.value) for r in records]


async def rows(settings: Settings) -> list[tuple[str, str]]:
    """(phone_number_id, source_id) of every stored message."""
    engine = create_engine(settings.database_url, pool_size=1, timeout_s=10)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(sa.select(messages.c.phone_number_id, messages.c.source_id))
            return [(r[0], r[1]) for r in result]
    finally:
        await engine.dispose()


async def unpublished(settings: Settings) -> int:
    store = Store(create_engine(settings.database_url, pool_size=1, timeout_s=10))
    try:
        count, _age_s = await store.outbox_stats()  # the events not yet announced
        return count
    finally:
        await store.close()
