"""Meta's largest webhooks end to end: bodies of 3 MB holding 1,000 messages each, through
real members, on topics made as `topics create` makes them (max.message.bytes from
MAX_RECORD_BYTES); a member that refuses to start on a topic too small for them; an event
the outbound topic cannot take, dead-lettered as unstorable before anything is stored."""

from __future__ import annotations

import asyncio
import collections
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumer import limits
from consumer.settings import Settings
from consumer.tools import topics
from tests.support import kafka
from tests.support.bodies import LARGE_PNID as PNID
from tests.support.bodies import LARGE_WAMID_TAIL as WAMID_TAIL
from tests.support.bodies import large_webhook as big_body
from tests.support.bodies import text_webhook
from tests.support.procs import ConsumerGroup

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MESSAGES = 1000  # Meta: up to 1,000 updates in one body
# Under Meta's 3 MB in both readings: 3,000,000 bytes, and the default MAX_RECORD_BYTES.
BODY_MAX = 3_000_000


async def _create(settings: Settings, **overrides: dict[str, str]) -> None:
    """The run's topics as `topics create` makes them (`overrides`: a topic's configs)."""
    s = settings
    configs = topics.topic_configs(1, max_record_bytes=s.max_record_bytes)
    for name, count in ((s.inbound_topic, 2), (s.outbound_topic, 2), (s.dlq_topic, 1)):
        own = {**configs, **overrides.get(name, {})}
        await topics.create_topics(s.kafka_bootstrap_servers, {name: count}, configs=own)


@pytest.mark.brokers
async def test_3_mb_bodies_of_1000_messages_are_stored_and_announced(
    settings: Settings, tmp_path: Path
) -> None:
    """Bodies of 3,000,000 bytes with 1,000 messages each (Meta's limits), on two
    partitions: every message stored once and announced once, nothing dead-lettered.
    On Apache Kafka the member read the topics' limits; Tansu does not answer
    DescribeConfigs, and the member starts anyway, saying it could not check."""
    s = settings
    await _create(s)
    bodies = [big_body(n) for n in range(4)]
    assert all(2_900_000 < len(b) <= BODY_MAX for b in bodies), [len(b) for b in bodies]
    group = ConsumerGroup(s, tmp_path)
    try:
        (member,) = group.start(1)
        group.wait_all_assigned([member])
        ends = await kafka.send(s, [(n % 2, b) for n, b in enumerate(bodies)])
        await kafka.wait_committed(s, ends, timeout_s=180, explain=group.logs)
        rows = await kafka.rows(s)
        assert len(rows) == len(set(rows)) == 4 * MESSAGES
        events = await kafka.events(s, want=())
        announced = collections.Counter(e["message"]["source_id"] for e in events)
        assert len(announced) == 4 * MESSAGES
        assert set(announced.values()) == {1}
        assert await kafka.read_all(s, s.dlq_topic, idle_s=3) == []
        assert group.totals("dead_lettered") == 0, group.logs()
        assert await kafka.unpublished(s) == 0
        checked = member.named("topics.limits") + member.named("topics.limits_unknown")
        assert len(checked) == 1, group.logs()
        print(f"\n{checked[0]['event']}; peak RSS {member.peak_rss_bytes() / (1 << 20):.0f} MiB")
    finally:
        group.kill_all()


async def test_a_backlog_of_3_mb_bodies_keeps_a_member_bounded(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, postgres_url: str, tmp_path: Path
) -> None:
    """A backlog of maximum-size records (TEST_LARGE_BACKLOG, default 40; the docs' figure
    is from 200) waiting before the member starts: it works through them in batches its
    fetch sizes bound, and its peak resident set stays far below the backlog."""
    from tests.support.config import run_settings

    count = int(os.environ.get("TEST_LARGE_BACKLOG", "40"))
    s = run_settings(kafka_bootstrap, redis_url, key_prefix, postgres_url, log_level="INFO")
    await _create(s)
    template = big_body(0)
    marker = WAMID_TAIL.encode()
    ends: dict[int, int] = {}
    for start in range(0, count, 20):
        chunk = [
            (n % 2, template.replace(marker, f"{n:06d}".encode() + marker[6:]))
            for n in range(start, min(start + 20, count))
        ]
        ends = await kafka.send(s, chunk)
    group = ConsumerGroup(s, tmp_path)
    try:
        (member,) = group.start(1)
        await kafka.wait_committed(s, ends, timeout_s=60 + 3 * count, explain=group.logs)
        peak = member.peak_rss_bytes() / (1 << 20)
        backlog_mib = count * len(template) / (1 << 20)
        print(
            f"\nbacklog {count} x {len(template)} bytes ({backlog_mib:.0f} MiB): "
            f"peak RSS {peak:.0f} MiB"
        )
        assert len(await kafka.rows(s)) == count * MESSAGES
        assert group.totals("dead_lettered") == 0, group.logs()
        assert peak < 1024, f"peak RSS {peak:.0f} MiB"
    finally:
        group.kill_all()


# -- a topic too small, an event too large (Apache Kafka: Tansu keeps no topic configs) ---


@pytest.mark.parametrize(
    ("setting", "which"), [("INBOUND_TOPIC", "inbound_topic"), ("DLQ_TOPIC", "dlq_topic")]
)
async def test_a_member_refuses_a_topic_too_small_for_a_3_mb_body(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    postgres_url: str,
    tmp_path: Path,
    setting: str,
    which: str,
) -> None:
    """A topic at Kafka's default max.message.bytes (1048588) cannot take a body of
    MAX_RECORD_BYTES (or its dead letter): the member exits 2 before it joins the group,
    with one line naming the setting, the topic and both numbers."""
    from tests.support.config import run_settings

    s = run_settings(kafka_bootstrap, redis_url, key_prefix, postgres_url)
    topic = getattr(s, which)
    await _create(s, **{topic: {"max.message.bytes": "1048588"}})
    group = ConsumerGroup(s, tmp_path)
    try:
        (member,) = group.start(1)
        assert member.wait(60) == 2, group.logs()
        lines = [
            line for line in member.log_tail(200).splitlines() if line.startswith("wamid-guard")
        ]
        assert lines == [
            f"wamid-guard run: {setting}: {topic} has max.message.bytes=1048588, less than "
            f"the {s.sizes.inbound_topic_bytes} "
            + (
                "a record of MAX_RECORD_BYTES with its key and headers"
                if which == "inbound_topic"
                else "the dead letter of a record of MAX_RECORD_BYTES"
            )
            + " (MAX_RECORD_BYTES=3145728) needs: raise the topic's max.message.bytes "
            "(python -m consumer topics create sets 3211276) or lower MAX_RECORD_BYTES"
        ], group.logs()
        assert not member.named("partitions.assigned")
    finally:
        group.kill_all()


async def test_an_event_over_the_outbound_limit_is_dead_lettered_as_unstorable(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, postgres_url: str, tmp_path: Path
) -> None:
    """An outbound topic limited to 64 KiB: a message whose event would be larger is
    dead-lettered as unstorable with the limit named, before anything is stored (no
    row, no outbox row, no retry, no producer renewal); its neighbours are stored and
    announced once; the record is in the dead-letter topic whole."""
    from tests.support.config import run_settings

    s = run_settings(kafka_bootstrap, redis_url, key_prefix, postgres_url, kafka_idempotence="on")
    await _create(s, **{s.outbound_topic: {"max.message.bytes": "65536"}})
    big = text_webhook(PNID, "wamid.too-big", text="x" * 100_000)
    group = ConsumerGroup(s, tmp_path)
    try:
        (member,) = group.start(1)
        group.wait_all_assigned([member])
        (warned,) = member.named("topics.outbound_limit")
        assert warned["max_event_bytes"] == 65536 - limits.EVENT_BATCH_FRAMING_BYTES
        ends = await kafka.send(
            s,
            [
                (0, text_webhook(PNID, "wamid.ok-1")),
                (0, big),
                (0, text_webhook(PNID, "wamid.ok-2")),
            ],
        )
        await kafka.wait_committed(s, ends, timeout_s=60, explain=group.logs)
        assert sorted(w for _p, w in await kafka.rows(s)) == ["wamid.ok-1", "wamid.ok-2"]
        events = await kafka.events(s, idle_s=3)
        assert sorted(e["message"]["source_id"] for e in events) == ["wamid.ok-1", "wamid.ok-2"]
        (letter,) = await kafka.read_all(s, s.dlq_topic, idle_s=3)
        headers: dict[str, Any] = dict(letter.headers)
        assert headers["dlq.reason"] == b"unstorable"
        detail = headers["dlq.detail"].decode()
        assert f"OUTBOUND_TOPIC {s.outbound_topic} (max.message.bytes=65536" in detail, detail
        assert letter.value == big
        assert await kafka.unpublished(s) == 0
        assert not member.named("producer.renewed"), group.logs()
        assert not [d for d in member.named("batch.done") if d.get("failure")], group.logs()
    finally:
        group.kill_all()


async def test_deferred_3_mb_bodies_are_held_to_max_pending_bytes(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, postgres_url: str, tmp_path: Path
) -> None:
    """Maximum-size records that cannot finish pile up: each of 12 bodies of 3 MB carries
    one wamid whose lease another member holds, so every record is deferred and waits
    for its retry. Far below MAX_PENDING_RECORDS, the bytes stop them: with
    MAX_PENDING_BYTES=8 MiB the partition is paused (`pending_bytes=`) and the member's
    gauge of held bytes never exceeds the limit plus one fetch, where without the bound
    all 36 MB would be held. When the lease goes, every message is stored and announced
    once (the shared wamid too), and nothing is dead-lettered."""
    from consumer import dedup
    from consumer.records import MessageKey
    from consumer.tools import embedded
    from tests.support.config import run_settings

    count, limit = 12, 8 * 1024 * 1024
    port = embedded.free_port()
    s = run_settings(
        kafka_bootstrap,
        redis_url,
        key_prefix,
        postgres_url,
        log_level="INFO",
        max_pending_bytes=limit,
        metrics_port=port,
        retry_backoff_max_s=1.0,
    )
    configs = topics.topic_configs(1, max_record_bytes=s.max_record_bytes)
    for name, partitions in ((s.inbound_topic, 1), (s.outbound_topic, 1), (s.dlq_topic, 1)):
        await topics.create_topics(s.kafka_bootstrap_servers, {name: partitions}, configs=configs)
    shared = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQheld"
    template = big_body(0)
    marker = WAMID_TAIL.encode()
    first = f"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQ{0:04d}{0:05d}{WAMID_TAIL}".encode()
    assert template.count(first) == 1
    bodies = []
    for n in range(count):
        body = template.replace(first, shared.encode()).replace(
            marker, f"{n:06d}".encode() + marker[6:]
        )
        bodies.append(body)
    held = dedup.lease_key(s.redis_key_prefix, MessageKey(PNID, shared))
    client = dedup.connect(s.redis_url, timeout_s=5)
    group = ConsumerGroup(s, tmp_path)

    async def hold() -> None:
        """Another member's batch holding the lease: renewed within LEASE_TTL_S, as a
        lease lives (a longer TTL would be overruled as foreign)."""
        while True:
            await client.set(held, b"another-member-batch", px=int(s.lease_ttl_s * 500))
            await asyncio.sleep(1)

    holder = asyncio.create_task(hold())
    try:
        await asyncio.sleep(0.1)
        (member,) = group.start(1)
        group.wait_all_assigned([member])
        base = f"http://{embedded.LOOPBACK}:{port}/metrics"
        ends = await kafka.send(s, [(0, b) for b in bodies])
        share = limit + s.sizes.partition_fetch_bytes
        most = 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not member.named("partition.paused"):
            most = max(most, _held_bytes(base))
            await asyncio.sleep(0.2)
        (paused,) = member.named("partition.paused")
        assert paused["why"].startswith("pending_bytes="), paused
        for _ in range(25):  # five seconds paused: the held bytes stay put
            most = max(most, _held_bytes(base))
            await asyncio.sleep(0.2)
        assert 0 < most <= share, f"{most} bytes held, limit {limit} + one fetch"
        assert await kafka.rows(s) == [] or all(w != shared for _p, w in await kafka.rows(s))
        holder.cancel()
        await client.delete(held)
        await kafka.wait_committed(s, ends, timeout_s=180, explain=group.logs)
        rows = await kafka.rows(s)
        assert len(rows) == len(set(rows)) == count * (MESSAGES - 1) + 1
        events = await kafka.events(s, want=())
        announced = collections.Counter(e["message"]["source_id"] for e in events)
        assert len(announced) == count * (MESSAGES - 1) + 1
        assert set(announced.values()) == {1}
        assert group.totals("dead_lettered") == 0, group.logs()
        assert member.proc.poll() is None, group.logs()
        print(
            f"\n{count} deferred bodies of {len(bodies[0])} bytes: at most {most} bytes held "
            f"(limit {limit}), peak RSS {member.peak_rss_bytes() / (1 << 20):.0f} MiB"
        )
    finally:
        holder.cancel()
        group.kill_all()
        await client.aclose()


def _held_bytes(url: str) -> int:
    """The member's wamid_guard_pending_bytes, summed over its partitions."""
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback URL
        text = resp.read().decode()
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "wamid_guard_pending_bytes"
        )
    )
