"""KAFKA_IDEMPOTENCE for real: `auto` asks the broker for a producer id (Apache Kafka
grants one, Tansu refuses), `on` fails the start on a broker that refuses, and members
with idempotence on keep every event once and in order while the leader of an outbound
partition is SIGKILLed mid-run on a three-node cluster, and started again."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient

from consumer.errors import ConfigError
from consumer.publish import decide_idempotence
from consumer.settings import Settings
from consumer.tools import services, topics
from tests.support import kafka
from tests.support.bodies import text_webhook
from tests.support.config import run_settings, unavailable
from tests.support.procs import ConsumerGroup, wait_until

pytestmark = pytest.mark.integration


async def test_auto_is_on_for_apache_kafka_and_off_for_tansu(
    kafka_bootstrap: str, tansu_bootstrap: str
) -> None:
    apache = await decide_idempotence("auto", kafka_bootstrap, timeout_s=10)
    assert apache.enabled, apache.reason
    assert "granted a producer id" in apache.reason
    tansu = await decide_idempotence("auto", tansu_bootstrap, timeout_s=10)
    assert not tansu.enabled, tansu.reason
    assert "InitProducerId" in tansu.reason
    off = await decide_idempotence("off", kafka_bootstrap, timeout_s=10)
    assert (off.enabled, off.reason) == (False, "KAFKA_IDEMPOTENCE=off")
    with pytest.raises(ConfigError) as refused:
        await decide_idempotence("on", tansu_bootstrap, timeout_s=10)
    assert refused.value.setting == "KAFKA_IDEMPOTENCE"
    assert (await decide_idempotence("on", kafka_bootstrap, timeout_s=10)).enabled


@pytest.mark.slow
async def test_a_member_with_idempotence_on_does_not_start_on_tansu(
    topic_settings: Settings, tmp_path: Path
) -> None:
    """`on` against a broker that refuses a producer id: the member exits 2 at start,
    saying so and naming the setting; `auto` logs what it chose and why."""
    group = ConsumerGroup(topic_settings, tmp_path)
    try:
        (refused,) = group.start(1, kafka_idempotence="on")
        assert refused.wait(60) == 2, refused.log_tail()
        said = refused.log_path.read_text()
        assert "KAFKA_IDEMPOTENCE: is on, but the broker" in said, said
        (auto,) = group.start(1, kafka_idempotence="auto")
        wait_until(lambda: bool(auto.named("producer.idempotence")), 30, auto.log_tail)
        (line,) = auto.named("producer.idempotence")
        assert line["enabled"] is False
        assert "UnknownError" in line["reason"]
    finally:
        group.kill_all()


# -- a leader killed mid-run -------------------------------------------------------------

PARTITIONS = 4
SENDERS = 16  # conversations: keys spread over the outbound partitions


async def _create_replicated(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        replicated = {"min.insync.replicas": "2"}
        await admin.create_topics(
            [
                NewTopic(settings.inbound_topic, PARTITIONS, 3, topic_configs=replicated),
                NewTopic(settings.outbound_topic, PARTITIONS, 3, topic_configs=replicated),
                NewTopic(settings.dlq_topic, 1, 3, topic_configs=replicated),
            ]
        )
    finally:
        await admin.close()


async def _leader(bootstrap: str, topic: str, partition: int) -> int:
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        for _ in range(50):
            await client.force_metadata_update()
            leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            if leader is not None and leader >= 0:
                return int(leader)
            await asyncio.sleep(0.2)
    finally:
        await client.close()
    raise AssertionError(f"no leader for {topic}:{partition}")


def _body(i: int) -> bytes:
    return text_webhook("111", f"wamid.L{i:05d}", sender=f"1650555{i % SENDERS:04d}")


async def _traffic(settings: Settings, stop: asyncio.Event, sent: list[int]) -> None:
    """Waves of 20 records (5 per inbound partition) until `stop`; `sent` counts them.
    Every tenth wave re-sends its first record on the same partition (a redelivery)."""
    wave = 0
    while not stop.is_set():
        base = len(sent)
        records = [((base + k) % PARTITIONS, _body(base + k)) for k in range(20)]
        if wave % 10 == 9:
            records.append((base % PARTITIONS, _body(base)))
        await kafka.send(settings, records)
        sent.extend(range(base, base + 20))
        wave += 1
        await asyncio.sleep(0.05)


def _sent_by(group: ConsumerGroup, topic: str) -> dict[str, list[int]]:
    """event_id -> the members that logged its ack (record.acked, LOG_LEVEL=DEBUG)."""
    out: dict[str, list[int]] = collections.defaultdict(list)
    for p in group.procs:
        for e in p.named("record.acked"):
            if e.get("topic") == topic:
                out[e["event_id"]].append(p.index)
    return out


async def test_leader_of_an_outbound_partition_killed_mid_run(
    redis_url: str, key_prefix: str, postgres_url: str, tmp_path: Path
) -> None:
    """Three nodes, topics replicated three times (min.insync.replicas=2), two members
    with KAFKA_IDEMPOTENCE=on; traffic flows while the leader of outbound partition 0
    is SIGKILLed and, a few seconds later, started again. No member crashes; every
    message is stored once and announced; each event_id is on the outbound topic exactly
    once (no copy from a retry); and on each partition, the events a member sent from
    one inbound partition are in the order of their source offsets, which is the order
    that member sent them (one inbound partition's batches run one after the other)."""
    began = time.monotonic()
    try:
        cluster = services.KafkaCluster(3)
    except services.ServiceUnavailable as exc:
        unavailable("Apache Kafka", str(exc))
    group: ConsumerGroup | None = None
    try:
        await asyncio.to_thread(cluster.start)
        started_s = time.monotonic() - began
        settings = run_settings(
            cluster.bootstrap, redis_url, key_prefix, postgres_url, kafka_idempotence="on"
        )
        await _create_replicated(settings)
        group = ConsumerGroup(settings, tmp_path)
        members = group.start(2)
        group.wait_all_assigned(members)
        for m in members:
            (line,) = m.named("producer.idempotence")
            assert line["enabled"] is True, line

        stop = asyncio.Event()
        sent: list[int] = []
        traffic = asyncio.create_task(_traffic(settings, stop, sent))
        await _until(lambda: group.totals("stored") >= 100, 30, group.logs)
        victim_id = await _leader(cluster.bootstrap, settings.outbound_topic, 0)
        victim = cluster.nodes[victim_id - 1]
        stored_before = group.totals("stored")
        cluster.kill(victim)
        killed_at = time.monotonic()
        # The controller moves the leadership once the node's session ends (9 s).
        while await _leader(cluster.bootstrap, settings.outbound_topic, 0) == victim_id:
            assert time.monotonic() - killed_at < 30, "the leadership never moved"
            await asyncio.sleep(0.5)
        failover_s = time.monotonic() - killed_at
        await asyncio.sleep(2)
        stored_without = group.totals("stored") - stored_before
        cluster.start_node(victim)
        await asyncio.to_thread(cluster.wait_ready, 60)
        down_s = time.monotonic() - killed_at
        await asyncio.sleep(2)
        stop.set()
        await traffic

        ends = await kafka.committed(settings, list(range(PARTITIONS)))
        expected = {("111", f"wamid.L{i:05d}") for i in sent}
        want = await _inbound_ends(settings)
        await kafka.wait_committed(settings, want, timeout_s=60, explain=group.logs)
        assert [m.proc.poll() for m in members] == [None, None], group.logs()
        assert not any(m.named("command.failed") for m in members), group.logs()

        rows = await kafka.rows(settings)
        assert collections.Counter(rows) == collections.Counter(dict.fromkeys(expected, 1))
        records = await topics.read_all(cluster.bootstrap, settings.outbound_topic, idle_s=3)
        events = [(r.partition, r.offset, orjson.loads(r.value)) for r in records]
        announced = {(e["phone_number_id"], e["message"]["source_id"]) for _, _, e in events}
        assert announced == expected, "every stored message announced, no phantom"
        copies = collections.Counter((p, e["event_id"]) for p, _, e in events)
        duplicates = {k: n for k, n in copies.items() if n > 1}
        assert not duplicates, f"events written twice: {list(duplicates.items())[:5]}"
        assert len({e["event_id"] for _, _, e in events}) == len(events)
        assert await kafka.unpublished(settings) == 0

        retried = sum(m.log_path.read_text().count("Got error produce response") for m in members)
        assert retried > 0, "the kill hit publishes in flight: the producer retried them"
        slowest_s = max(e["duration_ms"] for m in members for e in m.named("batch.done")) / 1000
        by = _sent_by(group, settings.outbound_topic)
        assert all(len(who) == 1 for who in by.values()), "one member announced each"
        out_of_order = _out_of_order(events, by)
        assert not out_of_order, f"sent in one order, written in another: {out_of_order[:5]}"
        print(
            f"\nleader kill: {len(sent)} messages, {len(events)} events, 0 duplicates, "
            f"cluster start {started_s:.1f} s, node {victim_id} down {down_s:.1f} s "
            f"(leader moved after {failover_s:.1f} s), "
            f"{stored_without} stored while it was down, {retried} produce retries, slowest "
            f"batch {slowest_s:.1f} s, committed before the drain {sum(ends.values())}, "
            f"total {time.monotonic() - began:.1f} s"
        )
    finally:
        if group is not None:
            group.kill_all()
        with contextlib.suppress(Exception):
            cluster.close()


async def _until(
    condition: Callable[[], bool], timeout_s: float, explain: Callable[[], str]
) -> None:
    """wait_until, letting the event loop (the traffic task) run meanwhile."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s: {explain()}")
        await asyncio.sleep(0.1)


async def _inbound_ends(settings: Settings) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.inbound_topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: end for tp, end in ends.items()}
    finally:
        await consumer.stop()


def _out_of_order(
    events: list[tuple[int, int, dict[str, Any]]], by: dict[str, list[int]]
) -> list[tuple[int, int, int, int, int]]:
    """(partition, member, inbound partition, offset, previous offset) wherever a
    member's events from one inbound partition go back in source offset on an outbound
    partition."""
    last: dict[tuple[int, int, int], int] = {}
    bad = []
    for partition, _offset, e in sorted(events, key=lambda x: (x[0], x[1])):
        member = by[e["event_id"]][0]
        source = e["source"]
        key = (partition, member, source["partition"])
        previous = last.get(key, -1)
        if source["offset"] < previous:
            bad.append((partition, member, source["partition"], source["offset"], previous))
        last[key] = source["offset"]
    return bad
