"""A cluster, not only a broker: three Apache Kafka nodes (KRaft) on loopback, topics
replicated three times with min.insync.replicas=2, two real members with
KAFKA_IDEMPOTENCE=on, traffic flowing; mid-run, one node

* that leads an inbound partition is SIGKILLed, then started again;
* that coordinates the group is SIGKILLed, then started again;
* that leads an outbound partition is frozen (SIGSTOP) longer than the members'
  KAFKA_REQUEST_TIMEOUT_S, then thawed (SIGCONT).

Each time: every message is stored once and announced, no event is lost or made up,
the group commits every inbound record (lag back to zero), every member still runs and
none failed. No event is written twice, except under the frozen leader: a publish that
waited past the request timeout is redone, and may write its events again (same
event_id; FAULTS says how). tests/integration/test_idempotence.py kills the leader of
an outbound partition on a cluster of its own.

One cluster serves the module (a start costs 10-20 s); each scenario has topics, a
group, a key prefix and a database of its own, and finds every node running and thawed.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from consumer.settings import Settings
from consumer.tools import services
from tests.support import cluster as kc
from tests.support.config import run_settings
from tests.support.procs import ConsumerGroup

pytestmark = [pytest.mark.integration, pytest.mark.faults]

REQUEST_TIMEOUT_S = 5.0  # the members' KAFKA_REQUEST_TIMEOUT_S when a node freezes


@dataclass(frozen=True)
class Fault:
    """What strikes which node: the one holding `role` when the fault comes (the leader
    of partition 0 of the inbound or the outbound topic, or the group's coordinator).
    Without `frozen_s` it is SIGKILLed, and started again once the role has moved;
    with it, SIGSTOPped that long (the members' request timeout is then
    REQUEST_TIMEOUT_S), then SIGCONTed. `sign`: what a member logs when the fault bites
    ({victim}: the node's id), so a run where it missed fails. `copies`: whether the
    fault may make the group write an event a second time (same event_id)."""

    role: str  # "inbound leader", "coordinator", "outbound leader"
    sign: str
    frozen_s: float = 0.0
    copies: bool = False

    def bites(self, log_text: str, victim: int) -> int:
        """How often a member's log shows the fault: its `sign`, or, for a killed node,
        a connection it refused (a member with no fetch in flight at the kill meets the
        dead node when it reconnects: seen once in CI, the kill of an inbound leader)."""
        signs = [self.sign] + ([] if self.frozen_s else ["Unable connect to node with id {victim}"])
        return sum(log_text.count(sign.format(victim=victim)) for sign in signs)


FAULTS = [
    # Fetches from the node fail; the members go on with the new leader.
    pytest.param(
        Fault("inbound leader", sign="Failed fetch messages from {victim}"),
        id="inbound-leader-killed",
    ),
    # Heartbeats and commits fail; the members find the new coordinator.
    pytest.param(
        Fault("coordinator", sign="Marking the coordinator dead (node {victim})"),
        id="coordinator-killed",
    ),
    # Publishes outlast the request timeout. A publish that waited KAFKA_REQUEST_TIMEOUT_S
    # for its acks fails its batch, which gives back its outbox claims, while the
    # member's producer keeps the sends (idempotent: retried until they land). Its own
    # redo counts on those sends; the other member's relay, which may claim the rows at
    # once, sends the events anew through its own producer: copies, same event_id (in
    # some runs, when the relay comes round before the batch's own retry).
    pytest.param(
        Fault(
            "outbound leader",
            sign="Got error produce response: [Error 7] RequestTimedOutError",
            frozen_s=15.0,
            copies=True,
        ),
        id="outbound-leader-frozen",
    ),
]


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator[services.KafkaCluster]:
    """Three nodes for the module's scenarios; every node thawed before it stops."""
    cluster = kc.new_cluster(3)
    try:
        cluster.start()
        yield cluster
    finally:
        kc.close(cluster)


@pytest.fixture
def three_nodes(
    kafka_cluster: services.KafkaCluster, tmp_path: Path
) -> Iterator[services.KafkaCluster]:
    """The module's cluster, whole: every node running and thawed before the test, and
    thawed again after it (a failed scenario may leave its node frozen). The nodes'
    logs are copied next to the members' (the cluster's folder goes with it)."""
    kc.heal(kafka_cluster)
    try:
        yield kafka_cluster
    finally:
        for node in kafka_cluster.nodes:
            kc.thaw(node)
            with contextlib.suppress(OSError):
                shutil.copy(node.log_path, tmp_path / f"kafka-node-{node.node_id}.log")


async def holder(role: str, settings: Settings) -> int:
    """The node id that holds `role` now."""
    bootstrap = settings.kafka_bootstrap_servers
    if role == "coordinator":
        return await kc.coordinator(bootstrap, settings.consumer_group)
    topic = settings.inbound_topic if role == "inbound leader" else settings.outbound_topic
    return await kc.leader(bootstrap, topic, 0)


async def moved(role: str, settings: Settings, victim: int, since: float) -> float:
    """Seconds from `since` until `role` is no longer the victim's."""
    while True:
        if await holder(role, settings) != victim:
            return time.monotonic() - since
        await asyncio.sleep(0.5)


@dataclass
class Struck:
    """What the fault did: when `role` moved (None: not while the fault lasted), how
    long the node was down or frozen."""

    moved_s: float | None
    down_s: float


async def strike(
    fault: Fault, cluster: services.KafkaCluster, victim: int, settings: Settings
) -> Struck:
    """Kill or freeze node `victim`, and bring it back (every node listing every other)."""
    node = cluster.nodes[victim - 1]
    began = time.monotonic()
    if not fault.frozen_s:
        cluster.kill(node)
        # The controller moves what the node held once its session ends (9 s).
        try:
            moved_s: float | None = await asyncio.wait_for(
                moved(fault.role, settings, victim, began), 30
            )
        except TimeoutError:
            raise AssertionError(f"the {fault.role} never moved off node {victim}") from None
        await asyncio.sleep(2)
        cluster.start_node(node)
        await asyncio.to_thread(cluster.wait_ready, 60)
        return Struck(moved_s, time.monotonic() - began)
    kc.freeze(node)
    try:
        moved_s = None
        with contextlib.suppress(TimeoutError):
            moved_s = await asyncio.wait_for(
                moved(fault.role, settings, victim, began), fault.frozen_s
            )
        await asyncio.sleep(max(0.0, began + fault.frozen_s - time.monotonic()))
    finally:
        kc.thaw(node)
    down_s = time.monotonic() - began
    await asyncio.to_thread(cluster.wait_ready, 60)
    return Struck(moved_s, down_s)


def signs(group: ConsumerGroup) -> dict[str, int]:
    """What the members saw of the fault, from their logs."""
    lines = {
        name: sum(len(p.named(name)) for p in group.procs)
        for name in (
            "fetch.failed",
            "offsets.commit_failed",
            "offsets.commit_rejected",
            "batch.store_or_publish_failed",
            "partitions.assigned",
        )
    }
    text = "".join(p.log_path.read_text(errors="replace") for p in group.procs)
    lines["produce retries"] = text.count("Got error produce response")
    lines["coordinator lost"] = text.count("Marking the coordinator dead")
    return lines


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_node_fails_mid_run(
    fault: Fault,
    three_nodes: services.KafkaCluster,
    redis_url: str,
    key_prefix: str,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    """Two members with idempotence on; traffic flows while the node holding the fault's
    role is killed or frozen, then brought back, and the fault bites (`sign`). The
    promise holds (kc.audit). Every message has exactly one event_id, and an event's
    copies are on one partition. No event is written twice unless the fault may justify
    it (`copies`: the frozen leader), and then only where a publish failed and was
    redone. Without copies, one member announced each event, and the events a member
    sent from one inbound partition are, on each outbound partition, in the order it
    sent them (kc.out_of_order)."""
    began = time.monotonic()
    cluster = three_nodes
    overrides: dict[str, object] = {"kafka_idempotence": "on"}
    if fault.frozen_s:
        overrides["kafka_request_timeout_s"] = REQUEST_TIMEOUT_S
    settings = run_settings(cluster.bootstrap, redis_url, key_prefix, postgres_url, **overrides)
    await kc.create_replicated(settings)
    group = ConsumerGroup(settings, tmp_path)
    stop = asyncio.Event()
    traffic: asyncio.Task[None] | None = None
    try:
        members = group.start(2)
        group.wait_all_assigned(members)
        for m in members:
            (line,) = m.named("producer.idempotence")
            assert line["enabled"] is True, line

        sent: list[int] = []
        traffic = asyncio.create_task(kc.flowing_traffic(settings, stop, sent))
        await kc.until(lambda: group.totals("stored") >= 100, 30, group.logs)
        victim = await holder(fault.role, settings)
        stored_before = group.totals("stored")
        struck = await strike(fault, cluster, victim, settings)
        stored_during = group.totals("stored") - stored_before
        await asyncio.sleep(2)
        stop.set()
        await traffic

        events = await kc.audit(settings, group, sent)
        bit = sum(fault.bites(m.log_path.read_text(errors="replace"), victim) for m in members)
        assert bit > 0, f"the fault never bit (no {fault.sign!r}):\n{group.logs()}"
        duplicates = kc.copies(events)
        ids = kc.event_ids(events)
        assert all(len(v) == 1 for v in ids.values()), "one event_id per message"
        on = {(p, e["event_id"]) for p, _, e in events}
        assert len(on) == len({i for _, i in on}), "each event's copies on one partition"
        seen = signs(group)
        if duplicates:
            assert fault.copies, f"events written twice: {list(duplicates.items())[:5]}"
            assert seen["batch.store_or_publish_failed"] > 0, "copies only of a redone publish"
        if not fault.copies:
            by = kc.sent_by(group, settings.outbound_topic)
            assert all(len(who) == 1 for who in by.values()), "one member announced each"
            out_of_order = kc.out_of_order(group, settings.outbound_topic, events)
            assert not out_of_order, f"sent in one order, written in another: {out_of_order[:5]}"
        extra = sum(len(offsets) - 1 for offsets in duplicates.values())
        slowest_s = max(e["duration_ms"] for m in members for e in m.named("batch.done")) / 1000
        how = "frozen" if fault.frozen_s else "killed"
        after = "not while it lasted" if struck.moved_s is None else f"{struck.moved_s:.1f} s"
        print(
            f"\n{fault.role} {how}: {len(sent)} messages, {len(events)} events, {extra} "
            f"duplicates {list(duplicates.items())[:3]}, node {victim} {how} for "
            f"{struck.down_s:.1f} s (role moved after {after}), {stored_during} stored "
            f"meanwhile, {bit} x {fault.sign.format(victim=victim)!r}, slowest batch "
            f"{slowest_s:.1f} s, "
            + ", ".join(f"{k} {v}" for k, v in seen.items())
            + f", total {time.monotonic() - began:.1f} s"
        )
    finally:
        stop.set()
        if traffic is not None and not traffic.done():
            traffic.cancel()
            with contextlib.suppress(BaseException):
                await traffic
        group.kill_all()
