"""REDIS_MODE=cluster against a real Redis Cluster (three masters, one replica each, on
loopback; TEST_REDIS_CLUSTER_URL to use one already running): the leases across many
slots, a pipeline batch through the real Leases, the startup checks, real members of a
group end to end (on Tansu and on Apache Kafka, `brokers`) and a master killed mid-run
(on Tansu: the fault suite's test_redis_cluster_master_killed kills one on both brokers
with the full audit, and the broker plays no part in the failover) (docs/design.md,
"Keys"; docs/operations.md, "Redis Cluster")."""

from __future__ import annotations

import asyncio
import collections
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from consumer import dedup, wiring
from consumer.errors import LeaseStoreError
from consumer.metrics import Metrics
from consumer.outbox import MarkQueue
from consumer.pipeline import Pipeline
from consumer.ports import LeaseState
from consumer.records import MessageKey, RecordKey
from consumer.settings import Settings
from consumer.store import Store
from consumer.testing import FakePublisher, message, record, webhook
from consumer.tools import embedded, services, topics
from tests.support import kafka
from tests.support.bodies import text_webhook
from tests.support.config import run_settings
from tests.support.procs import ConsumerGroup

pytestmark = [pytest.mark.integration]

PNID = "106540352242922"


@pytest.fixture
async def cluster(redis_cluster_url: str, cluster_key_prefix: str) -> AsyncIterator[RedisCluster]:
    client = dedup.connect(redis_cluster_url, timeout_s=5, mode="cluster")
    assert isinstance(client, RedisCluster)
    await dedup.ping(client)
    try:
        yield client
    finally:
        await client.aclose()


def _leases(client: dedup.RedisClient, prefix: str, lease_ttl_s: float = 30) -> dedup.Leases:
    return dedup.Leases(client, prefix=prefix, lease_ttl_s=lease_ttl_s, done_ttl_s=3600)


async def test_acquire_release_finish_across_many_slots(
    cluster: RedisCluster, cluster_key_prefix: str
) -> None:
    """1,500 message keys and a dead-letter key over more than a thousand slots on all
    three masters: every state the scripts know, answered in the batch's order."""
    leases = _leases(cluster, cluster_key_prefix)
    assert leases.cluster
    keys: list[Any] = [MessageKey(f"{PNID}{i % 5}", f"wamid.{i:06d}") for i in range(1500)]
    keys.append(RecordKey("whatsapp.webhooks", 2, 77, 1_700_000_000_000))
    names = [leases.key(k) for k in keys]
    assert len({key_slot(n.encode()) for n in names}) > 1000
    nodes = {cluster.get_node_from_key(n) for n in names}
    assert len({n.name for n in nodes if n is not None}) == 3, "all masters"

    assert set((await leases.acquire(keys, "a")).values()) == {LeaseState.ACQUIRED}
    held = await leases.acquire(keys, "b")
    assert list(held) == keys
    assert set(held.values()) == {LeaseState.HELD}
    assert await leases.release(keys, "b") == 0, "compare-and-delete: not b's"
    assert await cluster.get(names[0]) == b"a"

    half = keys[:750]
    assert await leases.finish(half, "a") == 750
    states = await leases.acquire(keys, "b")
    assert [states[k] for k in keys] == [LeaseState.DONE] * 750 + [LeaseState.HELD] * 751
    assert await leases.release(keys, "a") == 751, "the rest given back; markers stay"
    assert await cluster.get(names[0]) == b"done:a"
    assert 0 < await cluster.pttl(names[0]) <= 3600 * 1000
    assert await cluster.get(names[-1]) is None

    # A key no member wrote (no TTL) is foreign on whatever slot it lives.
    await cluster.set(names[1000], "someone-else")
    again = await leases.acquire([keys[1000], keys[1001]], "c")
    assert again == {keys[1000]: LeaseState.FOREIGN, keys[1001]: LeaseState.ACQUIRED}


async def test_two_pipelines_race_one_batch_on_the_cluster(
    cluster: RedisCluster, cluster_key_prefix: str, postgres_url: str
) -> None:
    """Two workers run the same records (Meta's copies on two partitions) at once through
    the real Pipeline over the cluster's leases and PostgreSQL: each message stored once
    and announced once; every key ends as a done marker; a redelivery is caught by the
    markers."""
    settings = Settings(
        redis_url="redis://127.0.0.1:1",
        redis_mode="cluster",
        database_url=postgres_url,
        redis_key_prefix=cluster_key_prefix,
    )
    bodies = [
        webhook([message(f"wamid.P{i}.{j}") for j in range(3)], pnid=f"{PNID}{i % 3}")
        for i in range(200)
    ]
    records = [record(b, partition=i % 2, offset=i) for i, b in enumerate(bodies)]
    expected = {(f"{PNID}{i % 3}", f"wamid.P{i}.{j}") for i in range(200) for j in range(3)}
    stores = [Store.open(postgres_url, pool_size=2, timeout_s=10) for _ in range(2)]
    publishers = [FakePublisher(), FakePublisher()]
    try:
        pipelines = [
            Pipeline(
                wiring.pipeline_config(settings),
                _leases(cluster, cluster_key_prefix),
                store,
                pub,
                worker_id=f"w{i}",
                metrics=Metrics(),
                marks=MarkQueue(store),
            )
            for i, (store, pub) in enumerate(zip(stores, publishers, strict=True))
        ]
        reports = await asyncio.gather(pipelines[0].process(records), pipelines[1].process(records))
        pending = [r for rep in reports for r in rep.retry]
        for _ in range(20):  # a message the other worker held: retried, as the member does
            if not pending:
                break
            await asyncio.sleep(0.1)
            rep = await pipelines[0].process(pending)
            pending = rep.retry
        assert not pending
        assert all(rep.failure is None for rep in reports)
        announced = collections.Counter(
            (doc["phone_number_id"], doc["message"]["source_id"])
            for p in publishers
            for doc in (json.loads(e.payload) for e in p.published)
        )
        assert announced == collections.Counter(expected), "announced once each"
        stored = collections.Counter(await kafka.rows(settings))
        assert stored == collections.Counter(expected), "stored once each"
        leases = _leases(cluster, cluster_key_prefix)
        for k in list(expected)[:50]:
            value = await cluster.get(leases.key(MessageKey(*k)))
            assert isinstance(value, bytes), k
            assert value.startswith(b"done:"), k

        again = await pipelines[1].process(records)
        assert again.stored == 0
        assert again.dup_done_marker == len(expected)
    finally:
        for store in stores:
            await store.close()


async def test_startup_names_a_mode_that_does_not_fit_the_redis(
    redis_url: str, redis_cluster_url: str
) -> None:
    """A cluster node under REDIS_MODE=standalone, and a single Redis under
    REDIS_MODE=cluster, fail at start with one line naming the settings."""
    standalone = Settings(redis_url=redis_cluster_url)
    client = dedup.connect(redis_cluster_url, timeout_s=2)
    try:
        with pytest.raises(LeaseStoreError, match=r"is a Redis Cluster node.*REDIS_MODE=cluster"):
            await wiring.check_redis(standalone, client)
    finally:
        await client.aclose()
    on_single = Settings(redis_url=redis_url.rsplit("/", 1)[0], redis_mode="cluster")
    client = dedup.connect(on_single.redis_url, timeout_s=2, mode="cluster")
    try:
        with pytest.raises(LeaseStoreError, match="REDIS_MODE=cluster") as info:
            await wiring.check_redis(on_single, client)
        assert info.value.__cause__ is not None
    finally:
        await client.aclose()
    good = Settings(redis_url=redis_cluster_url, redis_mode="cluster")
    client = dedup.connect(redis_cluster_url, timeout_s=2, mode="cluster")
    try:
        with structlog.testing.capture_logs() as logs:
            await wiring.check_redis(good, client)
        assert {"event": "redis.checked", "mode": "cluster", "log_level": "info"} in logs
    finally:
        await client.aclose()


# -- real members ---------------------------------------------------------------------


async def _cluster_settings(
    bootstrap: str, url: str, prefix: str, postgres_url: str, **overrides: object
) -> Settings:
    settings = run_settings(
        bootstrap, url, prefix, postgres_url, redis_mode="cluster", log_level="INFO", **overrides
    )
    await topics.create_topics(
        settings.kafka_bootstrap_servers,
        {settings.inbound_topic: 4, settings.outbound_topic: 4, settings.dlq_topic: 1},
    )
    return settings


def _audit(
    rows: list[tuple[str, str]], events: list[dict[str, Any]], expected: set[tuple[str, str]]
) -> None:
    stored = collections.Counter(rows)
    assert stored == collections.Counter(expected), (
        f"stored once each: {len(stored)} of {len(expected)} keys, "
        f"{sum(v > 1 for v in stored.values())} twice"
    )
    announced = collections.Counter(
        (e["phone_number_id"], e["message"]["source_id"]) for e in events
    )
    assert announced == collections.Counter(expected), (
        f"announced once each: {len(announced)} of {len(expected)} keys, "
        f"{sum(v > 1 for v in announced.values())} twice"
    )


@pytest.mark.slow
@pytest.mark.brokers
async def test_group_on_the_cluster_end_to_end(
    bootstrap: str,
    redis_cluster_url: str,
    cluster_key_prefix: str,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    """Two `python -m consumer run` members with REDIS_URL naming a cluster node and
    REDIS_MODE=cluster, on each broker: every message stored once and announced once,
    Meta's copies on other partitions included."""
    settings = await _cluster_settings(
        bootstrap, redis_cluster_url, cluster_key_prefix, postgres_url
    )
    group = ConsumerGroup(settings, tmp_path)
    try:
        procs = group.start(2)
        group.wait_all_assigned(procs)
        records = []
        expected = set()
        for i in range(150):
            pnid = f"{PNID}{i % 4}"
            body = text_webhook(pnid, f"wamid.G{i}.a", f"wamid.G{i}.b")
            expected |= {(pnid, f"wamid.G{i}.a"), (pnid, f"wamid.G{i}.b")}
            records.append((i % 4, body))
            if i % 3 == 0:
                records.append(((i + 1) % 4, body))  # a copy on another partition
        ends = await kafka.send(settings, records)
        await kafka.wait_committed(settings, ends, timeout_s=90, explain=group.logs)
        _audit(await kafka.rows(settings), await kafka.events(settings), expected)
        for p in procs:
            assert p.named("redis.checked")[0]["mode"] == "cluster", group.logs()
            assert p.proc.poll() is None
        assert not [e for p in procs for e in p.named("batch.done") if e.get("failure")], (
            group.logs()
        )
    finally:
        group.kill_all()


@pytest.fixture
def own_cluster() -> Iterator[services.RedisClusterServer]:
    """A cluster of this test's own, to kill a node of (never the session's, nor one
    that TEST_REDIS_CLUSTER_URL names)."""
    try:
        cluster = services.start_redis_cluster(node_timeout_ms=2000)
    except services.ServiceUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.close()


def _scrape(port: int) -> dict[str, float]:
    url = f"http://{embedded.LOOPBACK}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("wamid_guard_dependency_errors_total{") and 'dependency="redis"' in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("replica", ["in_sync", "emptied"])
async def test_a_master_killed_mid_run(
    broker: str,
    bootstrap: str,
    own_cluster: services.RedisClusterServer,
    postgres_url: str,
    tmp_path: Path,
    replica: str,
) -> None:
    """A master SIGKILLed while two members work, its replica promoted: every message
    still stored once and announced once, the Redis errors meanwhile counted as
    dependency errors and retried, both members alive at the end. `emptied`: the
    promoted replica is flushed as it takes over, the worst a failover can lose (every
    lease and done marker of the shard; a real one loses what it had not yet copied):
    the database fence keeps the promise. Then the first rounds are delivered again."""
    prefix = "kill"
    ports = [embedded.free_port(), embedded.free_port()]
    settings = await _cluster_settings(
        bootstrap,
        own_cluster.url,
        prefix,
        postgres_url,
        redis_timeout_s=2.0,
        lease_ttl_s=10.0,
    )
    group = ConsumerGroup(settings, tmp_path)
    figures: dict[str, Any] = {}
    try:
        procs = [group.start(1, metrics_port=port)[0] for port in ports]
        group.wait_all_assigned(procs)
        expected: set[tuple[str, str]] = set()
        rounds, per_round = 30, 40
        ends: dict[int, int] = {}

        async def produce() -> None:
            for r in range(rounds):
                batch = []
                for i in range(per_round):
                    pnid = f"{PNID}{i % 4}"
                    wamid = f"wamid.K{r}.{i}"
                    expected.add((pnid, wamid))
                    body = text_webhook(pnid, wamid)
                    batch.append((i % 4, body))
                    if i % 4 == 0:
                        batch.append(((i + 2) % 4, body))  # Meta's copy, other partition
                for p, end in (await kafka.send(settings, batch)).items():
                    ends[p] = max(ends.get(p, 0), end)
                await asyncio.sleep(0.25)

        producing = asyncio.create_task(produce())
        await _wait_for(lambda: sum(len(p.named("batch.done")) for p in procs) >= 10, 60, group)
        victim = own_cluster.masters()[0]
        replicas = own_cluster.replicas_of(victim)
        assert replicas, "every master has a replica"
        keys_before = await asyncio.to_thread(_dbsize, victim.port)
        killed_at = time.monotonic()
        own_cluster.kill(victim)
        promoted = await asyncio.to_thread(own_cluster.wait_failover, replicas, 60.0)
        figures["failover_s"] = round(time.monotonic() - killed_at, 2)
        if replica == "emptied":
            await asyncio.to_thread(_flush, promoted.port)
        figures["keys_on_master_at_kill"] = keys_before
        figures["keys_on_promoted_replica"] = await asyncio.to_thread(_dbsize, promoted.port)
        await producing
        again = [
            (i % 4, text_webhook(f"{PNID}{i % 4}", f"wamid.K{r}.{i}"))
            for r in range(5)
            for i in range(per_round)
        ]  # Meta's retries of the first rounds, after the failover
        for part, end in (await kafka.send(settings, again)).items():
            ends[part] = max(ends.get(part, 0), end)
        await kafka.wait_committed(settings, ends, timeout_s=180, explain=group.logs)
        figures["drained_s"] = round(time.monotonic() - killed_at, 2)
        rows = await kafka.rows(settings)
        events = await kafka.events(settings)
        figures["replica"] = replica
        figures["broker"] = broker
        figures["messages"] = len(expected)
        figures["rows"] = len(rows)
        figures["events"] = len(events)
        _audit(rows, events, expected)

        lease_failures = [
            e
            for p in procs
            for e in p.named("batch.done")
            if str(e.get("failure", "")).startswith("lease:")
        ]
        warnings = [
            e
            for p in procs
            for name in ("lease.release_failed", "lease.finish_failed")
            for e in p.named(name)
        ]
        scraped = [_scrape(port) for port in ports]
        figures["batches_failed_on_leases"] = len(lease_failures)
        figures["lease_warnings"] = len(warnings)
        figures["redis_dependency_errors"] = {k: v for s in scraped for k, v in s.items()}
        for name in ("leases_lost", "dup_done_marker", "dup_database", "held"):
            figures[name] = sum(int(e.get(name, 0)) for p in procs for e in p.named("batch.done"))
        print("\nfailover figures:", json.dumps(figures))
        assert sum(v for s in scraped for v in s.values()) >= 1, (figures, group.logs())
        assert lease_failures or warnings, group.logs()
        for p in procs:
            assert p.proc.poll() is None, f"member {p.index} died:\n{p.log_tail()}"
    finally:
        group.kill_all()
        services.cluster_delete_keys(own_cluster.url, prefix)


def _flush(port: int) -> None:
    import redis

    client = redis.Redis(host=embedded.LOOPBACK, port=port, socket_timeout=2)
    try:
        client.flushall()
    finally:
        client.close()


def _dbsize(port: int) -> int:
    import redis

    client = redis.Redis(host=embedded.LOOPBACK, port=port, socket_timeout=2)
    try:
        return int(client.dbsize())
    finally:
        client.close()


async def _wait_for(condition: Any, timeout_s: float, group: ConsumerGroup) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s:\n{group.logs()}")
        await asyncio.sleep(0.1)
