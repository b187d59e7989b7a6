"""Fixtures of the fault suite: each scenario's consumers reach PostgreSQL and Redis
through fault proxies (tests/support/proxy.py), and may get a Redis, a Redis Cluster
or a broker of their own to restart, kill a node of, or freeze."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import make_url

from consumer.settings import Settings
from consumer.tools import embedded
from consumer.tools.services import (
    KafkaCluster,
    PostgresServer,
    RedisClusterServer,
    ServiceUnavailable,
    start_redis_cluster,
)
from tests.faults.harness import FaultRun, Profile
from tests.support.config import unavailable
from tests.support.procs import ConsumerGroup
from tests.support.proxy import ThreadedProxy


class FaultEnv:
    """Everything one scenario owns; torn down by the fixture."""

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        pg: ThreadedProxy,
        redis: ThreadedProxy,
        *,
        broker: str = "tansu",
    ) -> None:
        self.settings = settings
        self.broker = broker  # the test's broker (tests marked `brokers` run on each)
        self.workdir = workdir
        self.pg = pg
        self.redis = redis
        self.own_redis: embedded.ServiceProcess | None = None
        # Tansu (a process) or a one-node Apache Kafka: either can pause() and resume().
        self.own_broker: embedded.ServiceProcess | KafkaCluster | None = None
        self.own_pg: PostgresServer | None = None
        self.own_redis_cluster: RedisClusterServer | None = None
        self.broker_proxy: ThreadedProxy | None = None
        self.group: ConsumerGroup | None = None

    def with_own_redis(self) -> None:
        """A redis-server of this scenario's own, so it can be restarted."""
        self.own_redis = embedded.start_redis(self.workdir)
        self.redis.stop()
        self.redis = ThreadedProxy(embedded.LOOPBACK, self.own_redis.port)
        self.redis.start()
        self.settings = self.settings.replace(
            redis_url=f"redis://{embedded.LOOPBACK}:{self.redis.port}/0"
        )

    def restart_own_redis(self) -> None:
        """Kill the scenario's Redis and start an empty one on the same port."""
        assert self.own_redis is not None
        port = self.own_redis.port
        self.own_redis.proc.kill()
        self.own_redis.proc.wait(10)
        self.own_redis = embedded.start_redis(self.workdir, port=port)

    def with_own_redis_cluster(self, node_timeout_ms: int = 2000) -> RedisClusterServer:
        """A Redis Cluster of this scenario's own (three masters, one replica each), so a
        master can be killed: the members run with REDIS_MODE=cluster against it. Reached
        directly, not through the proxy: a cluster client follows the node addresses the
        cluster announces."""
        try:
            self.own_redis_cluster = start_redis_cluster(node_timeout_ms=node_timeout_ms)
        except ServiceUnavailable as exc:
            unavailable("Redis Cluster", str(exc))
        self.redis.stop()
        self.settings = self.settings.replace(
            redis_url=self.own_redis_cluster.url, redis_mode="cluster"
        )
        return self.own_redis_cluster

    def with_own_postgres(self) -> None:
        """A PostgreSQL server of this scenario's own, so it can really be restarted or
        crashed. Still reached through the proxy, which passes the server's own goodbye
        (its error message, then FIN) on as it is, and can add latency."""
        self.own_pg = PostgresServer()
        self.own_pg.start()
        url = make_url(self.own_pg.create_database("wamid_guard"))
        self.pg.stop()
        self.pg = ThreadedProxy(embedded.LOOPBACK, self.own_pg.port)
        self.pg.start()
        self.settings = self.settings.replace(
            database_url=url.set(port=self.pg.port).render_as_string(hide_password=False)
        )

    def with_own_broker(self) -> None:
        """A broker of this scenario's own (Tansu, or a one-node Apache Kafka for the
        `apache` run), advertised through a proxy, so it can be frozen and its
        connections cut without touching the other tests' broker: clients bootstrap
        through the proxy and are told to come back through it."""
        listen = embedded.free_port()
        self.broker_proxy = ThreadedProxy(embedded.LOOPBACK, listen)
        self.broker_proxy.start()
        if self.broker == "apache":
            try:
                # A fault scenario's topics are small: half the session broker's heap does.
                cluster = KafkaCluster(
                    1, port=listen, heap="512m", advertised_port=self.broker_proxy.port
                )
            except ServiceUnavailable as exc:  # TEST_KAFKA_BOOTSTRAP answers; no Java here
                unavailable("Apache Kafka", str(exc))
            self.own_broker = cluster  # torn down by close(), even if it fails to start
            cluster.start()
        else:
            self.own_broker = embedded.start_broker(
                self.workdir, port=listen, advertised_port=self.broker_proxy.port
            )
        self.settings = self.settings.replace(
            kafka_bootstrap_servers=f"{embedded.LOOPBACK}:{self.broker_proxy.port}"
        )

    async def run(self, name: str, *, crash: bool = False, partitions: int = 4) -> FaultRun:
        from consumer.tools import topics

        s = self.settings
        await topics.create_topics(
            s.kafka_bootstrap_servers,
            {s.inbound_topic: partitions, s.outbound_topic: partitions, s.dlq_topic: 1},
        )
        self.group = ConsumerGroup(s, self.workdir)
        return FaultRun(name, self.group, partitions=partitions, crash=crash, broker=self.broker)

    def close(self) -> None:
        if self.group is not None:
            self.group.kill_all()
        for proxy in (self.pg, self.redis, self.broker_proxy):
            if proxy is not None:
                proxy.stop()
        if isinstance(self.own_broker, KafkaCluster):
            # Its folder goes with it: keep the node's log with the members' (tmp_path).
            with contextlib.suppress(OSError):
                shutil.copy(self.own_broker.nodes[0].log_path, self.workdir / "kafka.log")
            self.own_broker.close()
        for service in (self.own_redis, self.own_broker):
            if isinstance(service, embedded.ServiceProcess):
                service.stop()
        if self.own_pg is not None:
            self.own_pg.close()
        if self.own_redis_cluster is not None:
            self.own_redis_cluster.close()


@pytest.fixture
def fault_env(
    settings: Settings, redis_url: str, postgres_url: str, tmp_path: Path, broker: str
) -> Iterator[FaultEnv]:
    """The test's settings, with PostgreSQL and Redis reached through fault proxies and
    timings short enough for faults to bite within seconds."""
    db = make_url(postgres_url)
    pg = ThreadedProxy(db.host or embedded.LOOPBACK, db.port or 5432)
    pg.start()
    r = urlsplit(redis_url)
    redis = ThreadedProxy(r.hostname or embedded.LOOPBACK, r.port or 6379)
    redis.start()
    settings = settings.replace(
        redis_url=f"redis://{embedded.LOOPBACK}:{redis.port}{r.path or '/0'}",
        database_url=db.set(host=embedded.LOOPBACK, port=pg.port).render_as_string(
            hide_password=False
        ),
        batch_max_records=20,
        lease_ttl_s=3.0,
        kafka_request_timeout_s=5.0,
        db_timeout_s=3.0,
        redis_timeout_s=1.0,
        relay_interval_s=1.0,
    )
    env = FaultEnv(settings, tmp_path, pg, redis, broker=broker)
    try:
        yield env
    finally:
        env.close()


@pytest.fixture
def profile() -> Profile:
    return Profile.current()
