"""The fault suite: several real consumer processes on a 4-partition topic, real Redis,
PostgreSQL and broker; inject a fault mid-stream, heal, drain, audit (see harness.py).

FAULT_PROFILE=long runs bigger traffic and more kills; FAULT_REPORT=path collects the
figures that docs/reliability.md reports.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import signal
import time

import pytest

from tests.faults.conftest import FaultEnv
from tests.faults.harness import Profile
from tests.support.procs import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CRASH_POINTS = [
    "after_lease",
    "after_insert",
    "after_commit",
    "after_publish",
    "after_offset_commit",
]


@pytest.mark.brokers
async def test_concurrent_duplicates_same_and_other_partitions(fault_env: FaultEnv) -> None:
    """No fault but Meta's: copies of one webhook on the same and on other partitions,
    read by three members at once. Exactly one row and one event per message; one row
    per status update, and one event for each that moves its message forward."""
    run = await fault_env.run("duplicates (same and other partitions)")
    run.start(3)
    run.group.wait_all_assigned()
    await run.send_all()
    figures = await run.audit(await run.drain())
    caught = (
        figures.lock_conflicts
        + figures.insert_conflicts
        + run.group.totals("dup_done_marker")
        + run.group.totals("dup_in_batch")
    )
    assert caught >= figures.duplicates_injected, "every duplicate was caught by some layer"


@pytest.mark.brokers
@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_sigkill_at_each_step(fault_env: FaultEnv, point: str) -> None:
    """SIGKILL at a given step of the flow (test-only crash point), a replacement starts,
    and the promise holds."""
    run = await fault_env.run(f"SIGKILL {point}", crash=True)
    (victim,) = run.start(1, crash_point=f"{point}:3")
    run.start(2)
    run.group.wait_all_assigned()
    await run.send_all()
    assert victim.wait(60) == -signal.SIGKILL, victim.log_tail()
    assert victim.named("crashpoint.kill"), "the crash point was reached"
    run.start(1)  # the orchestrator's replacement
    run.healed()
    await run.audit(await run.drain())


@pytest.mark.brokers
async def test_sigkill_at_random(fault_env: FaultEnv, profile: Profile) -> None:
    """Members SIGKILLed at random moments while the stream flows, each replaced."""
    run = await fault_env.run("SIGKILL at random", crash=True)
    run.start(3)
    run.group.wait_all_assigned()
    rng = random.Random(11)  # noqa: S311 - reproducible choice of victims
    waves = len(run.traffic.waves)
    kills = 0
    for wave in range(waves):
        await run.send_wave(wave)
        if kills < profile.kills:
            run.wait_batches(2 + 3 * wave)
            alive = [p for p in run.group.procs if p.proc.poll() is None]
            victim = rng.choice(alive)
            await asyncio.sleep(rng.uniform(0.0, 0.5))  # a random moment, not a boundary
            victim.signal(signal.SIGKILL)
            victim.wait(10)
            kills += 1
            run.start(1)
    run.healed()
    figures = await run.audit(await run.drain(), kills=kills)
    assert figures.rebalances >= 1


@pytest.mark.brokers
async def test_sigstop_past_session_timeout(fault_env: FaultEnv) -> None:
    """A member frozen (SIGSTOP) longer than its session and its leases, then thawed:
    the group moves on without it, and its late work is fenced (no duplicate row)."""
    run = await fault_env.run("SIGSTOP past the session timeout", crash=True)
    victim, *_ = run.start(3)
    run.group.wait_all_assigned()
    await run.send_wave(0)
    wait_until(lambda: len(victim.named("batch.done")) >= 1, 60, run.group.logs)
    victim.signal(signal.SIGSTOP)
    for wave in range(1, len(run.traffic.waves)):
        await run.send_wave(wave)
    frozen_s = fault_env.settings.kafka_session_timeout_s * 2
    await asyncio.sleep(frozen_s)  # the fault itself: frozen past session and lease
    thawed_at = dt.datetime.now(dt.UTC)
    victim.signal(signal.SIGCONT)
    run.healed()
    figures = await run.audit(await run.drain(), frozen_s=frozen_s)
    assert victim.proc.poll() is None, "the thawed member lives on"
    assert figures.rebalances >= 1
    # Thawed, it learns that the group moved on: its partitions are revoked before it
    # joins again. Had it finished a batch meanwhile, its commit was refused
    # (offsets.commit_rejected, never fatal: it lives on); whether it had one depends on
    # where the freeze caught it, so that line is not required. Its records went to the
    # others and were deduplicated (the audit above).
    revoked = [
        e
        for e in victim.named("partitions.revoked")
        if e["partitions"] and dt.datetime.fromisoformat(e["timestamp"]) >= thawed_at
    ]
    assert revoked, victim.log_tail()


@pytest.mark.brokers
async def test_scale_out_and_in(fault_env: FaultEnv) -> None:
    """Members join and one leaves (SIGTERM) mid-stream: in-flight work finished,
    offsets committed on revocation, no stall, exactly one event per message."""
    run = await fault_env.run("scale out 1->3, in 3->2")
    (first,) = run.start(1)
    run.group.wait_all_assigned()
    await run.send_wave(0)
    run.wait_batches(2)
    run.start(2)
    await run.send_wave(1)
    run.wait_batches(6)
    first.signal(signal.SIGTERM)
    for wave in range(2, len(run.traffic.waves)):
        await run.send_wave(wave)
    assert first.wait(30) == 0, first.log_tail()
    run.healed()
    figures = await run.audit(await run.drain())
    assert figures.rebalances >= 2


async def test_redis_restart_without_persistence(fault_env: FaultEnv) -> None:
    """Redis restarts empty mid-stream (done markers and leases gone): the database
    fence catches the redeliveries; exactly one row and one event per message."""
    fault_env.with_own_redis()
    run = await fault_env.run("Redis restart without persistence")
    run.start(3)
    run.group.wait_all_assigned()
    await run.send_wave(0)
    await run.drain()
    fault_env.restart_own_redis()
    # Meta redelivers what was already stored: only the database can tell now.
    await run.send_wave(0)
    for wave in range(1, len(run.traffic.waves)):
        await run.send_wave(wave)
    run.healed()
    figures = await run.audit(await run.drain())
    assert figures.insert_conflicts > 0, "the fence, not Redis, caught the redeliveries"


@pytest.mark.brokers
async def test_redis_cluster_master_killed(fault_env: FaultEnv) -> None:
    """REDIS_MODE=cluster against a Redis Cluster of three masters, one replica each:
    a master SIGKILLed mid-stream, a wave sent while its slots have no master, its
    replica promoted (cluster-node-timeout 2 s). The batches whose keys fall on the dead
    master's slots fail and are retried until the cluster is whole again; exactly one
    row and one event per message, nothing lost, every member alive."""
    cluster = fault_env.with_own_redis_cluster(node_timeout_ms=2000)
    run = await fault_env.run("Redis Cluster master SIGKILLed, replica promoted")
    run.start(3)
    run.group.wait_all_assigned()
    await run.send_wave(0)
    run.wait_batches(2)
    victim = cluster.masters()[0]
    replicas = cluster.replicas_of(victim)
    assert replicas, "every master has a replica"
    killed_at = time.monotonic()
    cluster.kill(victim)
    await run.send_wave(1)  # its keys meet slots whose master is gone
    await asyncio.to_thread(cluster.wait_failover, replicas, 30.0)
    failover_s = round(time.monotonic() - killed_at, 2)
    for wave in range(2, len(run.traffic.waves)):
        await run.send_wave(wave)
    run.healed()
    drain_s = await run.drain()
    procs = run.group.procs
    lease_failures = [f for f in run.batch_failures() if f.startswith("lease")]
    warned = ("lease.release_failed", "lease.finish_failed")
    warnings = sum(len(p.named(name)) for p in procs for name in warned)
    await run.audit(
        drain_s,
        failover_s=failover_s,
        batches_failed_on_leases=len(lease_failures),
        lease_warnings=warnings,
    )
    assert lease_failures or warnings, f"the kill did not bite:\n{run.group.logs()}"
    for p in procs:
        assert p.named("redis.checked")[0]["mode"] == "cluster", p.log_tail()
        assert p.proc.poll() is None, f"member {p.index} died:\n{p.log_tail()}"


@pytest.mark.parametrize("policy", ["pause", "fence"])
async def test_redis_outage(fault_env: FaultEnv, policy: str) -> None:
    """Redis unreachable for a while: with `pause` the partitions wait and retry, with
    `fence` consumption goes on on the database alone; either way nothing is lost and
    processing resumes by itself."""
    fault_env.settings = fault_env.settings.replace(redis_outage_policy=policy)
    run = await fault_env.run(f"Redis outage (policy {policy})", crash=policy == "fence")
    run.start(3)
    run.group.wait_all_assigned()
    await run.send_wave(0)
    run.wait_batches(2)
    fault_env.redis.refuse(True)
    for wave in range(1, len(run.traffic.waves)):
        await run.send_wave(wave)
    if policy == "pause":
        run.wait_failed_batch(lambda failure: failure.startswith("lease"))
    else:
        wait_until(
            lambda: any(p.named("lease.unavailable_fence_only") for p in run.group.procs),
            60,
            run.group.logs,
        )
    await asyncio.sleep(3)  # the outage lasts a while
    fault_env.redis.refuse(False)
    run.healed()
    await run.audit(await run.drain())


async def test_lease_expires_under_a_slow_write(fault_env: FaultEnv) -> None:
    """The database is slow enough that leases run out while writes are in flight:
    another member takes the key, the unique constraint keeps one row."""
    fault_env.settings = fault_env.settings.replace(lease_ttl_s=1.0, db_timeout_s=10.0)
    run = await fault_env.run("lease expiry under a slow write", crash=True)
    run.start(3)
    run.group.wait_all_assigned()
    fault_env.pg.set_delay(0.15)  # every round trip to PostgreSQL now costs 0.3 s
    await run.send_all()
    run.wait_batches(6, timeout_s=120)
    fault_env.pg.set_delay(0)
    run.healed()
    lost = run.group.totals("leases_lost")
    await run.audit(await run.drain(), leases_lost=lost)
    assert lost > 0, "leases really ran out while their writes were in flight"


async def test_database_outage(fault_env: FaultEnv) -> None:
    """PostgreSQL unreachable (connections reset, new ones refused) for a while, as in
    a restart: batches fail and retry with backoff, partitions pause, no offset passes
    unstored work, and it all resumes by itself."""
    run = await fault_env.run("PostgreSQL outage / restart")
    run.start(3)
    run.group.wait_all_assigned()
    await run.send_wave(0)
    run.wait_batches(2)
    fault_env.pg.refuse(True)
    for wave in range(1, len(run.traffic.waves)):
        await run.send_wave(wave)
    run.wait_failed_batch(lambda failure: "StoreError" in failure)
    await asyncio.sleep(3)  # the outage lasts a while
    fault_env.pg.refuse(False)
    run.healed()
    figures = await run.audit(await run.drain())
    assert any(p.named("partition.paused") for p in run.group.procs), "partitions paused"
    assert figures.rows == figures.messages


@pytest.mark.parametrize("mode", ["fast", "immediate"], ids=["clean-restart", "crash-recovery"])
async def test_postgres_restarted(fault_env: FaultEnv, mode: str) -> None:
    """A real PostgreSQL server restarted mid-stream, while batches are writing: `fast`
    ends every session (what a restart by an operator or a failover does), `immediate`
    crashes it (transactions in flight are lost; the WAL is replayed at the next start).
    Batches fail and retry, partitions pause, nothing is lost or doubled, and it all
    resumes by itself on the same connection settings."""
    fault_env.with_own_postgres()
    assert fault_env.own_pg is not None
    name = "PostgreSQL restart" if mode == "fast" else "PostgreSQL crash and recovery"
    run = await fault_env.run(name)
    run.start(3)
    run.group.wait_all_assigned()
    await run.send_wave(0)
    run.wait_batches(2)
    # 50 ms each way on every round trip: a batch's transaction lasts long enough that
    # the stop lands in the middle of some, and their sessions die mid-transaction.
    fault_env.pg.set_delay(0.05)
    await run.send_wave(1)
    run.wait_batches(run.batches_done() + 1)
    fault_env.own_pg.stop(mode)
    for wave in range(2, len(run.traffic.waves)):
        await run.send_wave(wave)
    run.wait_failed_batch(lambda failure: "StoreError" in failure)
    await asyncio.sleep(2)  # down a while: retries meet a refused port
    fault_env.pg.set_delay(0)
    fault_env.own_pg.start()
    run.healed()
    drain_s = await run.drain()
    killed = [
        f for f in run.batch_failures() if "StoreError" in f and "Connect call failed" not in f
    ]
    figures = await run.audit(drain_s, batches_killed_mid_write=len(killed))
    assert killed, "no session died while a batch was writing"
    assert any(p.named("partition.paused") for p in run.group.procs), "partitions paused"
    assert figures.rows == figures.messages
    server_log = fault_env.own_pg.log_path.read_text(errors="replace")
    if mode == "immediate":
        assert "automatic recovery in progress" in server_log, "the restart was a crash"
    else:
        assert "database system was shut down at" in server_log, "the restart was clean"


@pytest.mark.parametrize("forward", [True, False], ids=["commit-happened", "commit-lost"])
async def test_connection_reset_during_commit(fault_env: FaultEnv, forward: bool) -> None:
    """The connection drops during COMMIT: when the commit really happened the retry
    finds the rows "already stored" (and publishes their outbox rows once); when it did
    not, the retry stores them. No duplicate row, no duplicate event."""
    run = await fault_env.run(
        "connection reset during COMMIT (" + ("committed" if forward else "not committed") + ")"
    )
    # The relays stay quiet after their first round (before the traffic): every COMMIT
    # the trigger can meet is then a batch's (its save, or the delete of its outbox
    # rows), not an idle relay's claim, which made "the fault bit" a matter of timing.
    run.start(3, relay_interval_s=3600.0)
    run.group.wait_all_assigned()
    fault_env.pg.reset_after(b"COMMIT", forward=forward, times=3)
    await run.send_all()
    fault_env.pg.wait_triggered(3, timeout=60)
    run.healed()
    figures = await run.audit(await run.drain(), resets=fault_env.pg.triggered)
    if forward:
        assert figures.insert_conflicts > 0, "a committed batch came back as already stored"


async def test_outbox_delete_lost_after_publish(fault_env: FaultEnv) -> None:
    """The database connection drops as a member deletes the outbox rows of events it
    has just published: the deletes are retried while its claim on the rows stands, so
    each event is still announced exactly once (not left for the relay to repeat)."""
    run = await fault_env.run("outbox delete lost after publish")
    run.start(3)
    run.group.wait_all_assigned()
    fault_env.pg.reset_after(b"DELETE FROM outbox", forward=False, times=3)
    await run.send_all()
    fault_env.pg.wait_triggered(3, timeout=60)
    run.healed()
    await run.audit(await run.drain(), resets=fault_env.pg.triggered)
    retried = sum(len(p.named("outbox.marked_after_retry")) for p in run.group.procs)
    assert retried > 0, "the lost deletes were retried"


@pytest.mark.brokers
async def test_broker_frozen_then_resumed(fault_env: FaultEnv) -> None:
    """The broker freezes (SIGSTOP) past the session timeout, then resumes: no loss, no
    offset past unfinished work, recovery without a restart."""
    fault_env.with_own_broker()
    run = await fault_env.run("broker frozen (SIGSTOP) then resumed", crash=True)
    run.start(3)
    run.group.wait_all_assigned()
    await run.send_wave(0)
    run.wait_batches(2)
    assert fault_env.own_broker is not None
    fault_env.own_broker.pause()
    await asyncio.sleep(fault_env.settings.kafka_session_timeout_s + 2)
    fault_env.own_broker.resume()
    for wave in range(1, len(run.traffic.waves)):
        await run.send_wave(wave)
    run.healed()
    await run.audit(await run.drain(timeout_s=180))
    assert all(p.proc.poll() is None for p in run.group.procs), "no member died"


@pytest.mark.brokers
@pytest.mark.parametrize("which", ["outbound", "dead-letter"])
async def test_output_topic_failing(fault_env: FaultEnv, which: str) -> None:
    """Every request naming the outbound (or the dead-letter) topic is reset for a while:
    the topic is unavailable while consuming still works. Batches retry, nothing is
    acknowledged before it is announced or dead-lettered, and everything drains."""
    fault_env.with_own_broker()
    run = await fault_env.run(f"{which} topic failing")
    run.start(3)
    run.group.wait_all_assigned()
    await run.send_wave(0)
    run.wait_batches(2)
    proxy = fault_env.broker_proxy
    assert proxy is not None
    s = fault_env.settings
    topic = s.outbound_topic if which == "outbound" else s.dlq_topic
    proxy.reset_after(topic.encode(), forward=False, times=10_000)
    for wave in range(1, len(run.traffic.waves)):
        await run.send_wave(wave)
    # A publish that fails (BrokerError), or that gives up waiting while an idempotent
    # producer keeps its sends (PublishPendingError, Apache Kafka).
    failed = ("BrokerError", "PublishPendingError") if which == "outbound" else ("dead-letter",)
    run.wait_failed_batch(lambda failure: any(f in failure for f in failed), timeout_s=90)
    proxy.clear_triggers()
    run.healed()
    await run.audit(await run.drain(timeout_s=180), resets=proxy.triggered)


# One CI run on 2026-11-28 lost 12 events here (rows stored, offsets committed, events
# not found on the outbound topic); 56 runs since (20 of them under two CPU burners, 30
# with the outage landing mid-batch as below) were clean. The audit now also checks that
# every event the broker acknowledged reads back where it was put: see docs/reliability.md.
@pytest.mark.brokers
async def test_broker_unreachable(fault_env: FaultEnv) -> None:
    """Every connection to the broker is cut and refused for a while (longer than the
    session timeout), starting while batches are in flight: no loss, no offset past
    unfinished work, the members rejoin and drain without a restart."""
    fault_env.with_own_broker()
    run = await fault_env.run("broker unreachable", crash=True)
    run.start(3)
    run.group.wait_all_assigned()
    await run.send_wave(0)
    await run.send_wave(1)
    run.wait_batches(1)
    proxy = fault_env.broker_proxy
    assert proxy is not None
    proxy.refuse(True)
    await asyncio.sleep(fault_env.settings.kafka_session_timeout_s + 2)
    proxy.refuse(False)
    for wave in range(2, len(run.traffic.waves)):
        await run.send_wave(wave)
    run.healed()
    await run.audit(await run.drain(timeout_s=180))
    assert all(p.proc.poll() is None for p in run.group.procs), "no member died"
