"""Static group membership on Apache Kafka: a member restarted within the session
timeout with the same KAFKA_GROUP_INSTANCE_ID gets its partitions back, and the other
member is not rebalanced (KIP-345 through aiokafka, with the consumer's own config)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

from consumer.settings import Settings
from consumer.source import consumer_config
from consumer.tools import topics

pytestmark = [pytest.mark.integration]


class _Seen(ConsumerRebalanceListener):  # type: ignore[misc] # aiokafka is untyped
    def __init__(self) -> None:
        self.events: list[tuple[str, frozenset[int]]] = []

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.events.append(("revoked", frozenset(tp.partition for tp in revoked)))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.events.append(("assigned", frozenset(tp.partition for tp in assigned)))


async def _member(s: Settings, topic: str, seen: _Seen) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(**consumer_config(s, client_id=s.kafka_group_instance_id))
    await consumer.start()
    consumer.subscribe([topic], listener=seen)
    return consumer


async def _poll_until(consumers: list[AIOKafkaConsumer], done: Any, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not done():
            for c in consumers:
                await c.getmany(timeout_ms=100)


async def test_restart_within_session_timeout_does_not_rebalance(kafka_bootstrap: str) -> None:
    topic = f"static-{uuid.uuid4().hex[:8]}"
    await topics.create_topics(kafka_bootstrap, {topic: 2})
    base = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        consumer_group=f"static-{uuid.uuid4().hex[:8]}",
        kafka_session_timeout_s=30,
    )
    seen_a, seen_b, seen_b2 = _Seen(), _Seen(), _Seen()
    a = await _member(base.replace(kafka_group_instance_id="member-a"), topic, seen_a)
    b = await _member(base.replace(kafka_group_instance_id="member-b"), topic, seen_b)
    b2 = None
    try:
        await _poll_until([a, b], lambda: len(a.assignment()) == 1 and len(b.assignment()) == 1, 60)
        settled = list(seen_a.events)
        b_had = {tp.partition for tp in b.assignment()}
        await b.stop()  # a static member sends no LeaveGroup
        b2 = await _member(base.replace(kafka_group_instance_id="member-b"), topic, seen_b2)
        await _poll_until([a, b2], lambda: bool(b2 and b2.assignment()), 20)
        for _ in range(20):  # a few more seconds of both polling: any rebalance shows
            await a.getmany(timeout_ms=100)
            await b2.getmany(timeout_ms=100)
        assert {tp.partition for tp in b2.assignment()} == b_had
        assert seen_a.events == settled, "the other member was rebalanced"
    finally:
        await a.stop()
        if b2 is not None:
            await b2.stop()
