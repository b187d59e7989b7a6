"""Kafka and database observations for tests: what was produced, committed, stored."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

from consumer import topics
from consumer.settings import Settings
from consumer.store import create_engine, messages, outbox


async def send(
    settings: Settings,
    records: Sequence[tuple[int, bytes]],
    headers: Sequence[tuple[str, bytes]] = (),
) -> dict[int, int]:
    """Produce (partition, value) records in order; returns end offset per partition."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_idempotence=False, acks="all"
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


async def read_all(settings: Settings, topic: str, idle_s: float = 1.5) -> list[Any]:
    return await topics.read_all(settings.kafka_bootstrap_servers, topic, idle_s=idle_s)


async def events(settings: Settings, idle_s: float = 1.5) -> list[dict[str, Any]]:
    return [
        orjson.loads(r.value) for r in await read_all(settings, settings.outbound_topic, idle_s)
    ]


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
    engine = create_engine(settings.database_url, pool_size=1, timeout_s=10)
    try:
        async with engine.connect() as conn:
            # The outbox holds only events not yet announced.
            result = await conn.execute(sa.select(sa.func.count()).select_from(outbox))
            return int(result.scalar_one())
    finally:
        await engine.dispose()
