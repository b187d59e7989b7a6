"""Partitions added while members run (`topics grow`, Apache Kafka: Tansu refuses
CreatePartitions), under a steady load whose copies of one webhook sit on different
partitions, old and new.

Inbound: three members with KAFKA_METADATA_MAX_AGE_S=3 find the new partitions without a
restart (the group leader's metadata refresh, then a rebalance), start each at offset 0
(nothing the producers wrote there before the assignment is lost), and every message is
stored and announced once. Outbound: the members' producers find the new partitions of
the events topic and write there too; every event is still published once, read across
all partitions.
"""

from __future__ import annotations

import asyncio
import collections
import time
from datetime import datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumer import cli
from consumer.settings import Settings
from consumer.tools import topics
from tests.support import kafka
from tests.support.bodies import text_webhook
from tests.support.procs import ConsumerGroup

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BEFORE, AFTER = 4, 8  # the `group` fixture creates 4 partitions per topic
METADATA_AGE_S = 3.0
SENDERS = 32  # conversations: event keys spread over the outbound partitions
WAVE = 16  # messages per wave; every second one also goes to a second partition


@pytest.fixture
def broker() -> str:
    """Apache Kafka only: Tansu has no CreatePartitions (see test_tansu_refuses)."""
    return "apache"


class Load:
    """Waves of webhooks until stopped, each acknowledged before the next: message k of a
    wave goes to partition k mod n (n: the inbound topic's count now), and every second
    one also to partition (k + n/2) mod n, so that, once the topic has 8, copies of one
    wamid sit on an old partition (0-3) and a new one (4-7)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.partitions = BEFORE
        self.sent: list[int] = []
        self.copies: list[tuple[int, int]] = []  # partitions of each copied message
        self.stop = asyncio.Event()

    def wave(self) -> list[tuple[int, bytes]]:
        n, base = self.partitions, len(self.sent)
        records = []
        for k in range(WAVE):
            i = base + k
            body = text_webhook("111", f"wamid.G{i:06d}", sender=f"1650555{i % SENDERS:04d}")
            records.append((k % n, body))
            if k % 2 == 0:
                records.append(((k + n // 2) % n, body))
                self.copies.append((k % n, (k + n // 2) % n))
        self.sent.extend(range(base, base + WAVE))
        return records

    async def run(self) -> None:
        while not self.stop.is_set():
            # A producer per wave: its metadata lists the partitions there are now.
            await kafka.send(self.settings, self.wave())
            await asyncio.sleep(0.05)

    def expected(self) -> set[tuple[str, str]]:
        return {("111", f"wamid.G{i:06d}") for i in self.sent}


async def end_offsets(settings: Settings, topic: str, count: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(count)])
        return {tp.partition: int(end) for tp, end in ends.items()}
    finally:
        await consumer.stop()


def _at(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["timestamp"]).timestamp()


def _first_from(group: ConsumerGroup, topic: str, partitions: set[int]) -> float | None:
    """When a member first logged a message of one of `partitions` (LOG_LEVEL=DEBUG:
    message.stored, message.duplicate, message.deferred), the wall-clock time."""
    times = [
        _at(e)
        for m in group.procs
        for e in m.events()
        if str(e.get("event", "")).startswith("message.")
        and e.get("topic") == topic
        and e.get("partition") in partitions
    ]
    return min(times) if times else None


def _started_at_zero(group: ConsumerGroup) -> list[tuple[float, str]]:
    return [
        (_at(e), p)
        for m in group.procs
        for e in m.named("partitions.start_at_zero")
        for p in e["partitions"]
    ]


async def _audit(settings: Settings, group: ConsumerGroup, load: Load, outbound: int) -> list[Any]:
    """Lag 0 on every inbound partition, every member alive, nothing dead-lettered, each
    message stored once and announced once (the outbound topic read on all `outbound`
    partitions up to their ends). Returns the events' records."""
    inbound = AFTER if load.partitions == AFTER else BEFORE
    want = await end_offsets(settings, settings.inbound_topic, inbound)
    await kafka.wait_committed(settings, want, timeout_s=90, explain=group.logs)
    assert await kafka.committed(settings, list(want)) == want, "lag 0 everywhere"
    assert all(m.proc.poll() is None for m in group.procs), group.logs()
    assert not any(m.named("command.failed") for m in group.procs), group.logs()
    assert group.totals("dead_lettered") == 0, group.logs()
    dead = await topics.read_all(settings.kafka_bootstrap_servers, settings.dlq_topic, idle_s=2)
    assert dead == [], "no dead letter"

    expected = load.expected()
    rows = await kafka.rows(settings)
    assert collections.Counter(rows) == collections.Counter(dict.fromkeys(expected, 1))
    deadline = time.monotonic() + 60
    while (left := await kafka.unpublished(settings)) > 0:
        assert time.monotonic() < deadline, f"{left} outbox row(s) never published"
        await asyncio.sleep(0.25)
    ends = await end_offsets(settings, settings.outbound_topic, outbound)
    records = await topics.read_all(
        settings.kafka_bootstrap_servers, settings.outbound_topic, idle_s=3, ends=ends
    )
    assert len(records) == sum(ends.values()), "read the outbound topic to its ends"
    announced = collections.Counter(
        (e["phone_number_id"], e["message"]["source_id"])
        for e in (orjson.loads(r.value) for r in records)
    )
    assert announced == collections.Counter(dict.fromkeys(expected, 1)), "one event each"
    return records


@pytest.fixture
def members(group: ConsumerGroup) -> ConsumerGroup:
    group.start(3, kafka_metadata_max_age_s=METADATA_AGE_S)
    group.wait_all_assigned(timeout_s=60)
    return group


async def test_inbound_grown_mid_run_loses_nothing(members: ConsumerGroup) -> None:
    group, settings = members, members.settings
    topic = settings.inbound_topic
    load = Load(settings)
    traffic = asyncio.create_task(load.run())
    try:
        await asyncio.sleep(3)
        sent_before = len(load.sent)
        asked = time.time()
        assert await topics.grow_partitions(settings.kafka_bootstrap_servers, topic, AFTER) == (
            BEFORE,
            AFTER,
        )
        grown = time.time()
        load.partitions = AFTER
        new = set(range(BEFORE, AFTER))
        deadline = time.monotonic() + 60
        while _first_from(group, topic, new) is None:
            assert time.monotonic() < deadline, "no record of a new partition consumed\n" + (
                group.logs()
            )
            assert not traffic.done(), traffic
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)  # more traffic on the 8 partitions, members at work
    finally:
        load.stop.set()
        await traffic
    await _audit(settings, group, load, outbound=BEFORE)

    # Every new partition was started at offset 0 by the member it went to (nothing was
    # committed for it), and the group committed all of it (the audit: lag 0 on all 8).
    starts = _started_at_zero(group)
    assert {p for _, p in starts} >= {f"{topic}:{n}" for n in new}, group.logs()
    ends = await end_offsets(settings, topic, AFTER)
    assert all(ends[n] > 0 for n in new), f"records written to every new partition: {ends}"
    assigned = min(t for t, p in starts if int(p.rsplit(":", 1)[1]) in new)
    first = _first_from(group, topic, new)
    assert first is not None
    # Records the producers wrote to the new partitions before any member held them:
    # stored all the same (the audit), so read from offset 0, not from "latest".
    written = await topics.read_all(settings.kafka_bootstrap_servers, topic, ends=ends, idle_s=3)
    early = [r for r in written if r.partition in new and r.timestamp / 1000 < assigned]
    assert early, "records on the new partitions before their assignment"
    after_growth = [(a, b) for a, b in load.copies[sent_before // 2 :] if max(a, b) >= BEFORE]
    assert after_growth, "copies of one wamid on an old and a new partition"
    print(
        f"\ngrow {BEFORE}->{AFTER}: request {grown - asked:.2f}s; growth -> new partitions "
        f"assigned (start_at_zero) {assigned - grown:.2f}s; growth -> first record of a new "
        f"partition consumed {first - grown:.2f}s (KAFKA_METADATA_MAX_AGE_S={METADATA_AGE_S:g});"
        f" messages {len(load.sent)} ({sent_before} before the growth), records "
        f"{sum(ends.values())}, of them on the new partitions {sum(ends[n] for n in new)}; "
        f"written there before the assignment {len(early)}; "
        f"copies old/new {len(after_growth)}; caught as duplicates "
        f"{sum(group.totals(n) for n in ('dup_done_marker', 'dup_database', 'dup_in_batch'))}"
        f", held {group.totals('held')}; rebalances seen "
        f"{sum(len(m.named('partitions.assigned')) for m in group.procs)} assignments"
    )


async def test_outbound_grown_mid_run_publishes_every_event_once(members: ConsumerGroup) -> None:
    group, settings = members, members.settings
    load = Load(settings)
    traffic = asyncio.create_task(load.run())
    try:
        await asyncio.sleep(3)
        grown = await topics.grow_partitions(
            settings.kafka_bootstrap_servers, settings.outbound_topic, AFTER
        )
        assert grown == (BEFORE, AFTER)
        grown_at = time.monotonic()

        async def written_to_new() -> bool:
            ends = await end_offsets(settings, settings.outbound_topic, AFTER)
            return any(ends[n] > 0 for n in range(BEFORE, AFTER))

        while not await written_to_new():
            assert time.monotonic() - grown_at < 60, "no event on a new partition\n" + (
                group.logs()
            )
            await asyncio.sleep(0.2)
        seen_after = time.monotonic() - grown_at
        await asyncio.sleep(3)
    finally:
        load.stop.set()
        await traffic
    records = await _audit(settings, group, load, outbound=AFTER)
    by_key: dict[bytes, set[int]] = collections.defaultdict(set)
    for r in records:
        by_key[r.key].add(r.partition)
    moved = sum(1 for parts in by_key.values() if len(parts) > 1)
    on_new = sum(1 for r in records if r.partition >= BEFORE)
    assert on_new > 0
    assert all(len(parts) <= 2 for parts in by_key.values()), "a key moves once at most"
    print(
        f"\noutbound {BEFORE}->{AFTER}: first event on a new partition {seen_after:.2f}s after "
        f"the growth; events {len(records)}, {on_new} on the new partitions; conversations "
        f"{len(by_key)}, {moved} of them on two partitions (old, then new)"
    )


def test_tansu_refuses_in_one_line(
    tansu_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The embedded broker has no CreatePartitions: `topics grow` fails with exit 1 and
    one line saying the broker refused and why."""
    tag = str(int(time.time() * 1000))
    for key, value in {
        "KAFKA_BOOTSTRAP_SERVERS": tansu_bootstrap,
        "INBOUND_TOPIC": f"in-{tag}",
        "OUTBOUND_TOPIC": f"out-{tag}",
        "DLQ_TOPIC": f"dlq-{tag}",
    }.items():
        monkeypatch.setenv(key, value)
    asyncio.run(topics.create_topics(tansu_bootstrap, {f"in-{tag}": BEFORE}))
    assert cli.main(["topics", "grow", "--partitions", str(AFTER)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(
        f"wamid-guard topics: 'in-{tag}': the broker refused to grow it from 4 to 8 "
        "partitions: IncompatibleBrokerVersion: this broker does not support adding "
        "partitions"
    ), err
    assert "Tansu" in err
