"""A three-node Apache Kafka cluster (KRaft, loopback) under real members: start and
heal it, freeze and thaw a node, create replicated topics, find who leads a partition
and who coordinates a group, drive traffic, and audit what came out.

Shared by the idempotence test (tests/integration) and the cluster faults
(tests/faults/test_cluster_faults.py). Every lookup here asks with a short request
timeout and asks again on an error: a node may be dead or frozen while it runs, and a
client that happens to ask the frozen one would otherwise wait out aiokafka's 40 s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from consumer.settings import Settings
from consumer.tools import services, topics
from tests.support import kafka
from tests.support.bodies import text_webhook
from tests.support.config import unavailable
from tests.support.procs import ConsumerGroup

PARTITIONS = 4
SENDERS = 16  # conversations: keys spread over the outbound partitions
LOOKUP_TIMEOUT_MS = 3000  # a frozen node costs a lookup this long, not aiokafka's 40 s

# (partition, offset, event) of one outbound record.
Event = tuple[int, int, dict[str, Any]]
T = TypeVar("T")

# -- the cluster -------------------------------------------------------------------------


def new_cluster(nodes: int = 3) -> services.KafkaCluster:
    """A cluster of `nodes`, formatted, not started; the test is skipped (under CI:
    failed) when Apache Kafka cannot be had on this machine."""
    try:
        return services.KafkaCluster(nodes)
    except services.ServiceUnavailable as exc:
        unavailable("Apache Kafka", str(exc))


def freeze(node: services.KafkaNode) -> None:
    """SIGSTOP the node's JVM: its sockets stay open and accept, nothing answers, and
    none of its timers runs (its session with the controller lapses) until thawed."""
    if node.proc is not None and node.alive():
        node.proc.send_signal(signal.SIGSTOP)


def thaw(node: services.KafkaNode) -> None:
    """SIGCONT: harmless on a node that is not frozen."""
    if node.proc is not None and node.alive():
        node.proc.send_signal(signal.SIGCONT)


def heal(cluster: services.KafkaCluster, timeout_s: float = 90.0) -> None:
    """Every node running and thawed, each listing every other: the state a scenario
    starts from, whatever the one before left (a failed test may leave a node down or
    frozen)."""
    for node in cluster.nodes:
        thaw(node)
        if not node.alive():
            cluster.start_node(node)
    cluster.wait_ready(timeout_s)


def close(cluster: services.KafkaCluster) -> None:
    """Thaw every node (a frozen JVM would not act on the SIGTERM), then stop them all
    and remove the folders."""
    for node in cluster.nodes:
        thaw(node)
    with contextlib.suppress(Exception):
        cluster.close()


# -- topics, leaders, the coordinator ----------------------------------------------------


async def create_replicated(settings: Settings) -> None:
    """The run's topics, each partition on three nodes, min.insync.replicas=2 (acks=all
    then survives one node down)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        replicated = {
            "min.insync.replicas": "2",
            # As `topics create` sets it: a member refuses a topic below (Meta's 3 MB).
            "max.message.bytes": str(topics.default_max_message_bytes()),
        }
        await admin.create_topics(
            [
                NewTopic(settings.inbound_topic, PARTITIONS, 3, topic_configs=replicated),
                NewTopic(settings.outbound_topic, PARTITIONS, 3, topic_configs=replicated),
                NewTopic(settings.dlq_topic, 1, 3, topic_configs=replicated),
            ]
        )
    finally:
        await admin.close()


async def _again(ask: Callable[[], Awaitable[T | None]], what: str, timeout_s: float) -> T:
    """`ask` until it answers something (None, an error or a timeout: again)."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            # A bootstrap may meet a frozen node, then a metadata request may too.
            answer = await asyncio.wait_for(ask(), LOOKUP_TIMEOUT_MS / 1000 * 5)
        except (KafkaError, OSError, TimeoutError) as exc:
            last = exc
        else:
            if answer is not None:
                return answer
        await asyncio.sleep(0.2)
    raise AssertionError(f"no answer for {what} within {timeout_s:g} s (last error: {last!r})")


async def leader(bootstrap: str, topic: str, partition: int, timeout_s: float = 30) -> int:
    """The node id that leads `topic`:`partition` in the metadata of some live node."""

    async def ask() -> int | None:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=LOOKUP_TIMEOUT_MS)
        try:
            await client.bootstrap()
            await client.force_metadata_update()
            found = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            return int(found) if found is not None and found >= 0 else None
        finally:
            await client.close()

    return await _again(ask, f"the leader of {topic}:{partition}", timeout_s)


async def coordinator(bootstrap: str, group_id: str, timeout_s: float = 30) -> int:
    """The node id that coordinates `group_id` (a FindCoordinator request)."""

    async def ask() -> int:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=LOOKUP_TIMEOUT_MS
        )
        try:
            await admin.start()
            return int(await admin.find_coordinator(group_id))
        finally:
            await admin.close()

    return await _again(ask, f"the coordinator of {group_id}", timeout_s)


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The end offset of each of `topic`'s partitions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: end for tp, end in ends.items()}
    finally:
        await consumer.stop()


# -- traffic -----------------------------------------------------------------------------


def body(i: int) -> bytes:
    return text_webhook("111", f"wamid.L{i:05d}", sender=f"1650555{i % SENDERS:04d}")


def expected(sent: list[int]) -> set[tuple[str, str]]:
    """(phone_number_id, source_id) of every message `traffic` sent."""
    return {("111", f"wamid.L{i:05d}") for i in sent}


def _wave(base: int, wave: int) -> list[tuple[int, bytes]]:
    """Wave `wave` of the traffic: messages base..base+19, five per inbound partition;
    every tenth wave re-sends its first record on the same partition (a redelivery)."""
    records = [((base + k) % PARTITIONS, body(base + k)) for k in range(20)]
    if wave % 10 == 9:
        records.append((base % PARTITIONS, body(base)))
    return records


async def traffic(settings: Settings, stop: asyncio.Event, sent: list[int]) -> None:
    """Waves of 20 records (5 per inbound partition) until `stop`, each acknowledged
    before the next is sent; `sent` counts them."""
    wave = 0
    while not stop.is_set():
        base = len(sent)
        await kafka.send(settings, _wave(base, wave))
        sent.extend(range(base, base + 20))
        wave += 1
        await asyncio.sleep(0.05)


async def flowing_traffic(settings: Settings, stop: asyncio.Event, sent: list[int]) -> None:
    """The same waves, through one producer, each record's send a task of its own: a
    partition whose leader is frozen holds up its own records only. (`traffic` waits for
    a wave's slowest partition, a producer per wave may pick the frozen node to bootstrap
    from, and a send waits while its partition's batch is full.) Every ack is awaited
    before it returns; a record the cluster never took fails the test."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_idempotence=False, acks="all"
    )
    await producer.start()
    sends: list[asyncio.Future[Any]] = []
    try:
        wave = 0
        while not stop.is_set():
            base = len(sent)
            for p, value in _wave(base, wave):
                send = producer.send(settings.inbound_topic, value, partition=p)
                sends.append(asyncio.ensure_future(send))
            sent.extend(range(base, base + 20))
            wave += 1
            await asyncio.sleep(0.05)
        for send in sends:
            await (await send)  # enqueued, then acknowledged
    finally:
        for send in sends:
            send.cancel()
        await producer.stop()


async def until(
    condition: Callable[[], bool], timeout_s: float, explain: Callable[[], str]
) -> None:
    """wait_until, letting the event loop (the traffic task) run meanwhile."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s: {explain()}")
        await asyncio.sleep(0.1)


# -- the audit ---------------------------------------------------------------------------


async def audit(
    settings: Settings, group: ConsumerGroup, sent: list[int], timeout_s: float = 60
) -> list[Event]:
    """Drain, then check what every scenario promises: the group committed every inbound
    record (lag zero), every member still runs and none failed, each message is stored
    once and announced, nothing else is announced, and the outbox is empty. Returns the
    outbound topic's records, read up to its end offsets, for the scenario's own checks
    (copies, order)."""
    want = await end_offsets(settings, settings.inbound_topic)
    await kafka.wait_committed(settings, want, timeout_s=timeout_s, explain=group.logs)
    assert all(m.proc.poll() is None for m in group.procs), group.logs()
    assert not any(m.named("command.failed") for m in group.procs), group.logs()

    messages = expected(sent)
    rows = await kafka.rows(settings)
    assert collections.Counter(rows) == collections.Counter(dict.fromkeys(messages, 1))
    deadline = time.monotonic() + timeout_s
    while (left := await kafka.unpublished(settings)) > 0:
        assert time.monotonic() < deadline, f"{left} outbox row(s) never published"
        await asyncio.sleep(0.25)
    records = await topics.read_all(
        settings.kafka_bootstrap_servers,
        settings.outbound_topic,
        idle_s=3,
        ends=await end_offsets(settings, settings.outbound_topic),
    )
    events = [(r.partition, r.offset, orjson.loads(r.value)) for r in records]
    announced = {(e["phone_number_id"], e["message"]["source_id"]) for _, _, e in events}
    assert announced == messages, "every stored message announced, no phantom"
    return events


def copies(events: list[Event]) -> dict[tuple[int, str], list[int]]:
    """(partition, event_id) -> the offsets it was written at, where more than one."""
    written: dict[tuple[int, str], list[int]] = collections.defaultdict(list)
    for p, o, e in events:
        written[(p, e["event_id"])].append(o)
    return {k: offsets for k, offsets in written.items() if len(offsets) > 1}


def event_ids(events: list[Event]) -> dict[tuple[str, str], set[str]]:
    """(phone_number_id, source_id) -> the event_ids announcing it."""
    out: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for _, _, e in events:
        out[(e["phone_number_id"], e["message"]["source_id"])].add(e["event_id"])
    return out


def sent_by(group: ConsumerGroup, topic: str) -> dict[str, list[int]]:
    """event_id -> the members that logged its ack (record.acked, LOG_LEVEL=DEBUG)."""
    out: dict[str, list[int]] = collections.defaultdict(list)
    for p in group.procs:
        for e in p.named("record.acked"):
            if e.get("topic") == topic:
                out[e["event_id"]].append(p.index)
    return out


def out_of_order(
    group: ConsumerGroup, topic: str, events: list[Event]
) -> list[tuple[int, int, int, int, int]]:
    """(member, inbound partition, outbound partition, offset, previous offset)
    wherever a member's events from one inbound partition were written to an outbound
    partition in another order than the member sent them.

    A member's record.acked lines (LOG_LEVEL=DEBUG) come in the order it sent the
    records of one publish, and one inbound partition's publishes one after the other
    (its batches run one at a time), so per inbound partition they are in send order.
    That is not source offset order: a batch stores, and so announces, its messages in
    key order (locks taken in one order). Each ack must also name the record that is
    there on the topic."""
    at = {(p, o): e for p, o, e in events}
    last: dict[tuple[int, int, int], int] = {}
    bad = []
    for m in group.procs:
        for ack in m.named("record.acked"):
            if ack.get("topic") != topic:
                continue
            partition, offset = ack["partition"], ack["offset"]
            e = at.get((partition, offset))
            assert e is not None, f"acked, not on the topic: {ack}"
            assert e["event_id"] == ack["event_id"], f"acked, another event there: {ack}"
            key = (m.index, e["source"]["partition"], partition)
            previous = last.get(key, -1)
            if offset < previous:
                bad.append((*key, offset, previous))
            last[key] = offset
    return bad
