"""KAFKA_IDEMPOTENCE for real: `auto` asks the broker for a producer id (Apache Kafka
grants one, Tansu refuses), `on` fails the start on a broker that refuses, and members
with idempotence on keep every event once and in order while the leader of an outbound
partition is SIGKILLed mid-run on a three-node cluster, and started again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from consumer.errors import ConfigError
from consumer.publish import decide_idempotence
from consumer.settings import Settings
from tests.support import cluster as kc
from tests.support import kafka
from tests.support.config import run_settings
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


async def test_leader_of_an_outbound_partition_killed_mid_run(
    redis_url: str, key_prefix: str, postgres_url: str, tmp_path: Path
) -> None:
    """Three nodes, topics replicated three times (min.insync.replicas=2), two members
    with KAFKA_IDEMPOTENCE=on; traffic flows while the leader of outbound partition 0
    is SIGKILLed and, a few seconds later, started again. No member crashes; every
    message is stored once and announced; each event_id is on the outbound topic exactly
    once (no copy from a retry); and on each partition, the events a member sent from
    one inbound partition are in the order that member sent them (one inbound
    partition's batches run one after the other; a batch sends in key order, not
    source offset order: kc.out_of_order). tests/faults/test_cluster_faults.py kills
    and freezes the other nodes that matter."""
    began = time.monotonic()
    cluster = kc.new_cluster(3)
    group: ConsumerGroup | None = None
    try:
        await asyncio.to_thread(cluster.start)
        started_s = time.monotonic() - began
        settings = run_settings(
            cluster.bootstrap, redis_url, key_prefix, postgres_url, kafka_idempotence="on"
        )
        await kc.create_replicated(settings)
        group = ConsumerGroup(settings, tmp_path)
        members = group.start(2)
        group.wait_all_assigned(members)
        for m in members:
            (line,) = m.named("producer.idempotence")
            assert line["enabled"] is True, line

        stop = asyncio.Event()
        sent: list[int] = []
        traffic = asyncio.create_task(kc.traffic(settings, stop, sent))
        await kc.until(lambda: group.totals("stored") >= 100, 30, group.logs)
        victim_id = await kc.leader(cluster.bootstrap, settings.outbound_topic, 0)
        victim = cluster.nodes[victim_id - 1]
        stored_before = group.totals("stored")
        cluster.kill(victim)
        killed_at = time.monotonic()
        # The controller moves the leadership once the node's session ends (9 s).
        while await kc.leader(cluster.bootstrap, settings.outbound_topic, 0) == victim_id:
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

        ends = await kafka.committed(settings, list(range(kc.PARTITIONS)))
        events = await kc.audit(settings, group, sent)
        duplicates = kc.copies(events)
        assert not duplicates, f"events written twice: {list(duplicates.items())[:5]}"
        assert len({e["event_id"] for _, _, e in events}) == len(events)

        retried = sum(m.log_path.read_text().count("Got error produce response") for m in members)
        assert retried > 0, "the kill hit publishes in flight: the producer retried them"
        slowest_s = max(e["duration_ms"] for m in members for e in m.named("batch.done")) / 1000
        by = kc.sent_by(group, settings.outbound_topic)
        assert all(len(who) == 1 for who in by.values()), "one member announced each"
        out_of_order = kc.out_of_order(group, settings.outbound_topic, events)
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
        kc.close(cluster)
