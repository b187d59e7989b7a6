"""Kafka administration the tools need: create topics, read topics from offset 0, completely.

No aiokafka error leaves this module: a failure comes out as
:class:`~consumer.errors.BrokerError`, the cause chained.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import KafkaError, for_code

from consumer import lenient, limits
from consumer.errors import BrokerError, ConfigError
from consumer.source import start_client

# The answers to CreateTopics that are not a failure: created, or there already.
_CREATED, _EXISTS, _INVALID_REPLICATION = 0, 36, 38


async def create_topics(
    bootstrap: str,
    partitions: dict[str, int],
    *,
    replication: int = 1,
    configs: Mapping[str, str] | None = None,
    max_record_bytes: int = limits.DEFAULT_MAX_RECORD_BYTES,
) -> None:
    """Create topics with `replication` replicas and the topic `configs` (see
    :func:`topic_configs`); existing ones are kept as they are (nothing is altered).
    Without max.message.bytes in `configs`, each topic gets the one a member of that
    MAX_RECORD_BYTES needs (``limits.sizes``: a member refuses to start on less).

    A replication factor above the brokers the cluster lists fails before anything is
    created, saying how many there are; any refusal of the broker's (Kafka answers each
    topic with an error code, it raises nothing) fails naming the topic and the error.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        if replication > 1:
            brokers = len((await admin.describe_cluster())["brokers"])
            if replication > brokers:
                raise BrokerError(
                    f"--replication-factor {replication} needs {replication} brokers, and "
                    f"the cluster at KAFKA_BOOTSTRAP_SERVERS={bootstrap} has {brokers}: ask "
                    f"for at most {brokers}, or add brokers"
                )
        wanted = {MAX_MESSAGE_BYTES_CONFIG: str(limits.sizes(max_record_bytes).topic_message_bytes)}
        wanted.update(configs or {})
        for name, count in partitions.items():
            topic = NewTopic(name, count, replication, topic_configs=dict(wanted))
            answer = (await admin.create_topics([topic])).to_object()
            for err in answer["topic_errors"]:
                code, said = err["error_code"], err.get("error_message")
                if code in (_CREATED, _EXISTS):
                    continue
                if code == _INVALID_REPLICATION:
                    raise BrokerError(
                        f"creating {name!r}: the broker refuses --replication-factor "
                        f"{replication}: {said}"
                    )
                raise BrokerError(
                    f"creating {name!r} failed: {for_code(code).__name__}: {said or code}"
                )
    except KafkaError as exc:
        raise BrokerError(f"creating topics {sorted(partitions)} failed: {exc!r}") from exc
    finally:
        await admin.close()


async def grow_partitions(
    bootstrap: str, topic: str, count: int, *, timeout_s: float = 30.0, wait_s: float = 10.0
) -> tuple[int, int]:
    """Give `topic` `count` partitions (CreatePartitions); return (before, after).

    Only growth: a count not above the topic's present one is refused with a
    ConfigError naming --partitions, before the broker is asked to change anything (Kafka
    cannot take partitions away, and the same count would do nothing). A topic that does
    not exist, or a broker that refuses (Tansu, the embedded broker, has no
    CreatePartitions), fails with a BrokerError saying so, the cause chained. Waits, for
    up to `wait_s`, until the broker's metadata lists the new count.
    """
    before = (await layout(bootstrap, [topic], wait_s=0.0)).get(topic)
    if before is None:
        raise BrokerError(
            f"{topic!r}: no such topic on KAFKA_BOOTSTRAP_SERVERS={bootstrap} (check the "
            "name, or create it: python -m consumer topics create)"
        )
    current = before[0]
    if count < current:
        raise ConfigError(
            "--partitions",
            f"is {count}, fewer than the {current} {topic!r} has: Kafka cannot take "
            "partitions away (a topic only grows)",
        )
    if count == current:
        raise ConfigError(
            "--partitions",
            f"is {count}, the count {topic!r} already has: nothing to grow (ask for more)",
        )
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        await start_client(admin, bootstrap, timeout_s)
        await asyncio.wait_for(admin.create_partitions({topic: NewPartitions(count)}), timeout_s)
    except TimeoutError as exc:
        raise BrokerError(
            f"{topic!r}: the broker did not answer the request for {count} partitions within "
            f"{timeout_s:g}s (it may still add them: `topics list` shows the count)"
        ) from exc
    except KafkaError as exc:
        raise BrokerError(
            f"{topic!r}: the broker refused to grow it from {current} to {count} "
            f"partitions: {_refusal(exc)}"
        ) from exc
    finally:
        await admin.close()
    after = (await layout_count(bootstrap, topic, count, wait_s)) or count
    return current, after


def _refusal(exc: KafkaError) -> str:
    """Why a broker refused CreatePartitions, in words: Tansu 0.6 does not implement it."""
    name = type(exc).__name__
    said = str(exc) or name
    if name in ("UnsupportedVersionError", "IncompatibleBrokerVersion"):
        return (
            f"{name}: this broker does not support adding partitions (it offers no "
            "CreatePartitions request; Tansu, the embedded broker, has none): create a new "
            "topic with more partitions, or use Apache Kafka"
        )
    return f"{name}: {said}"


async def layout_count(bootstrap: str, topic: str, count: int, wait_s: float) -> int | None:
    """The partition count of `topic` once its metadata lists at least `count`, asking
    again for up to `wait_s` (a controller's change reaches the brokers a moment
    later); the last count seen if it never does, None if the topic is not listed."""
    deadline = time.monotonic() + wait_s
    while True:
        found = (await layout(bootstrap, [topic], wait_s=0.0)).get(topic)
        if (found is not None and found[0] >= count) or time.monotonic() >= deadline:
            return None if found is None else found[0]
        await asyncio.sleep(0.2)


async def layout(
    bootstrap: str, names: Iterable[str], wait_s: float = 10.0
) -> dict[str, tuple[int, int]]:
    """(partitions, replication factor) of each of `names` that exists. On a cluster a
    topic just created reaches every broker's metadata a moment later: asks again, for up
    to `wait_s`, until every name is there."""
    wanted = sorted(names)
    deadline = time.monotonic() + wait_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            await admin.start()
            described = await admin.describe_topics(wanted)
        except KafkaError as exc:
            raise BrokerError(f"describing topics {wanted} failed: {exc!r}") from exc
        finally:
            await admin.close()
        found = {
            d["topic"]: (len(d["partitions"]), len(d["partitions"][0]["replicas"]))
            for d in described
            if not d["error_code"] and d["partitions"]
        }
        if len(found) == len(wanted) or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(0.2)


# `topics create`: the inbound and outbound topics get the same count (a partition is the
# unit of parallelism: members beyond it idle); one partition is enough for dead letters,
# and keeps them in the order they failed.
DEFAULT_PARTITIONS = 4
DLQ_PARTITIONS = 1

# `topics create` on a cluster (docs/operations.md, "Broker settings wamid-guard needs").
DEFAULT_REPLICATION = 1
"""For a local broker; a production cluster wants 3."""
MAX_MESSAGE_BYTES = limits.MAX_REQUEST_BYTES + limits.LOG_OVERHEAD_BYTES
"""Kafka's default max.message.bytes (1048588: a produce request's 1 MiB plus a batch's
offset and length): `topics create` never sets less."""
MAX_MESSAGE_BYTES_CONFIG = "max.message.bytes"


def default_max_message_bytes(max_record_bytes: int = limits.DEFAULT_MAX_RECORD_BYTES) -> int:
    """What `topics create` sets on each topic (``--max-message-bytes``' default): the
    largest produce request a member of that MAX_RECORD_BYTES sends, or a record of it
    with 64 KiB of key and headers, plus Kafka's 12 bytes of log overhead; at least
    Kafka's default. 3211276 at the default MAX_RECORD_BYTES (3 MiB)."""
    return limits.sizes(max_record_bytes).topic_message_bytes


def default_min_insync(replication: int) -> int:
    """2 from 3 replicas on (an ack survives one broker lost, and writes go on with one
    down); 1 below (with 2 replicas, 2 would stop every write while one broker is down)."""
    return 2 if replication >= 3 else 1


def topic_configs(
    replication: int,
    min_insync: int | None = None,
    max_message_bytes: int | None = None,
    *,
    max_record_bytes: int = limits.DEFAULT_MAX_RECORD_BYTES,
) -> dict[str, str]:
    """The configs `topics create` gives each topic, checked: a bad value raises
    ConfigError naming its option. Kafka takes a min.insync.replicas above the replication
    factor without a word and applies the replication factor instead (docs/operations.md),
    so the topic would not do what it says."""
    if replication < 1:
        raise ConfigError("--replication-factor", f"must be 1 or more, not {replication}")
    isr = default_min_insync(replication) if min_insync is None else min_insync
    if isr < 1:
        raise ConfigError("--min-insync-replicas", f"must be 1 or more, not {isr}")
    if isr > replication:
        raise ConfigError(
            "--min-insync-replicas",
            f"is {isr}, more than --replication-factor {replication}: Kafka would accept "
            f"it and apply {replication} (every replica) instead",
        )
    least = default_max_message_bytes(max_record_bytes)
    if max_message_bytes is None:
        max_message_bytes = least
    if max_message_bytes < least:
        raise ConfigError(
            "--max-message-bytes",
            f"is {max_message_bytes}, less than {least}: with MAX_RECORD_BYTES="
            f"{max_record_bytes} records, events and dead letters are up to "
            f"{limits.sizes(max_record_bytes).request_bytes} bytes, and a member refuses "
            "to start on an inbound or dead-letter topic that cannot take them",
        )
    return {"min.insync.replicas": str(isr), MAX_MESSAGE_BYTES_CONFIG: str(max_message_bytes)}


async def list_topics(
    bootstrap: str, timeout_s: float = 30.0, wait_s: float = 0.0
) -> dict[str, int]:
    """Every topic (internal ones left out) with its partition count. Lists first and
    describes only what exists, so that no topic is created by asking. With `wait_s`, a
    broker that does not answer yet is asked again until it does, for that long."""
    deadline = time.monotonic() + wait_s
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
        )
        try:
            await start_client(admin, bootstrap, timeout_s)
            break
        except BrokerError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.5)
    try:
        names = sorted(t for t in await admin.list_topics() if not t.startswith("__"))
        described = await admin.describe_topics(names) if names else []
    except KafkaError as exc:
        raise BrokerError(f"listing the topics of {bootstrap} failed: {exc!r}") from exc
    finally:
        await admin.close()
    return {d["topic"]: len(d["partitions"]) for d in described if not d["error_code"]}


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
    try:
        await client.start()
        return {p: (await client.committed(TopicPartition(topic, p))) or 0 for p in partitions}
    except KafkaError as exc:
        raise BrokerError(
            f"reading the offsets group {group!r} committed on {topic!r} failed: {exc!r}"
        ) from exc
    finally:
        await client.stop()


# Reading a topic completely on the embedded broker (Tansu 0.6) needs two precautions:
#
# * From offset 0, not from "earliest": when several producers write the first batches of
#   an empty partition at once, a later batch can be stored before the one at offset 0,
#   and ListOffsets(EARLIEST) then names that batch's offset (5, 80...), so
#   seek_to_beginning and auto_offset_reset="earliest" start past records that are there.
#   On Apache Kafka an offset below the log start is answered OffsetOutOfRange, and then
#   auto_offset_reset="earliest" applies: seek(tp, 0) is right on both.
# * Long enough: Tansu caches a partition's end for about 5 s, so the newest records can
#   stay invisible that long even to a reader at offset 0. A read that stops after a
#   shorter silence can miss acknowledged records.
COMPLETE_IDLE_S = 6.0
"""Silence after which a read that must be complete gives up waiting (> the 5 s cache)."""
SETTLE_S = 1.0
"""Silence after which a read stops once everything it was told to wait for arrived."""


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    from_beginning: bool = True,
    idle_s: float | None = COMPLETE_IDLE_S,
    until: Callable[[], bool] | None = None,
    settle_s: float = SETTLE_S,
) -> AsyncIterator[ConsumerRecord]:
    """Yield records of every partition of `topic`, without joining a group.

    `from_beginning` positions every partition at offset 0 (see above), else at its end.
    Stops after `idle_s` without a new record ("read until idle"; None: follow forever),
    or, once `until()` holds (it sees the records yielded so far), after `settle_s`
    without one.
    """
    count = await partition_count(bootstrap, topic)
    lenient.install()  # a record aiokafka cannot decode must not end the read
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        # Only where offset 0 is below the log start (Apache Kafka after retention).
        auto_offset_reset="earliest" if from_beginning else "latest",
        # A whole record of the largest size a member writes (a dead letter of a 3 MB
        # body) in one partition's fetch, on any broker.
        max_partition_fetch_bytes=2 * default_max_message_bytes(),
    )
    try:
        try:
            await consumer.start()
            tps = [TopicPartition(topic, p) for p in range(count)]
            consumer.assign(tps)
            if from_beginning:
                for tp in tps:
                    consumer.seek(tp, 0)
            else:
                await consumer.seek_to_end(*tps)
        except KafkaError as exc:
            raise BrokerError(f"reading {topic!r} failed: {exc!r}") from exc
        last = time.monotonic()
        while True:
            quiet = time.monotonic() - last
            if until is not None and quiet >= settle_s and until():
                return
            if idle_s is not None and quiet >= idle_s:
                return
            try:
                batch = await consumer.getmany(timeout_ms=200)
            except KafkaError as exc:
                raise BrokerError(f"reading {topic!r} failed: {exc!r}") from exc
            for records in batch.values():
                for record in records:
                    last = time.monotonic()
                    yield record
    finally:
        await consumer.stop()


class _Expected:
    """What a complete read waits for, crossed off as records arrive."""

    def __init__(
        self, want: Iterable[tuple[int, int]], ends: Mapping[int, int] | None, at_least: int
    ) -> None:
        self.missing = set(want)
        self.behind = {p: end for p, end in (ends or {}).items() if end > 0}
        self.at_least = at_least
        self.count = 0
        self.asked = bool(self.missing or self.behind or at_least)

    def arrived(self, record: ConsumerRecord) -> None:
        self.count += 1
        self.missing.discard((record.partition, record.offset))
        if self.behind.get(record.partition, 0) <= record.offset + 1:
            self.behind.pop(record.partition, None)

    def complete(self) -> bool:
        return not self.missing and not self.behind and self.count >= self.at_least


async def read_all(
    bootstrap: str,
    topic: str,
    *,
    idle_s: float = COMPLETE_IDLE_S,
    want: Iterable[tuple[int, int]] = (),
    ends: Mapping[int, int] | None = None,
    at_least: int = 0,
    settle_s: float = SETTLE_S,
) -> list[ConsumerRecord]:
    """Every record of `topic`, each partition read from offset 0.

    Told what must be there (every (partition, offset) in `want`, every partition up to
    its end offset in `ends`, at least `at_least` records: what the broker acknowledged),
    the read stops `settle_s` after the last record once all of it arrived. Either way
    it stops after `idle_s` without a record (the default outlasts the broker's end
    cache); what it read by then is all there is, and a caller that knew what to expect
    checks it.
    """
    expected = _Expected(want, ends, at_least)
    out: list[ConsumerRecord] = []
    async for record in read_topic(
        bootstrap,
        topic,
        idle_s=idle_s,
        until=expected.complete if expected.asked else None,
        settle_s=settle_s,
    ):
        expected.arrived(record)
        out.append(record)
    return out
