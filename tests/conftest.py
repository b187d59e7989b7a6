"""Shared fixtures: real services on loopback, one key space / database / topic set per test.

Each service is the one answering at its ``TEST_*`` address, else one started for the
session by ``consumer.tools.services`` on a free loopback port and stopped at its end
(README, "Services for tests"):

* Kafka protocol: Tansu (``TEST_TANSU_BOOTSTRAP``) for every test, and Apache Kafka
  (``TEST_KAFKA_BOOTSTRAP``, ``TEST_KAFKA_VERSION``) for the tests marked ``brokers``,
  which run once per broker ``TEST_BROKER`` selects (``tansu``, ``apache`` or ``both``,
  the default). Without Java or Maven the Apache Kafka runs are skipped, saying why;
  under ``CI=true`` they fail instead.
* Redis: ``TEST_REDIS_URL``; every test gets its own key prefix.
* PostgreSQL: ``TEST_POSTGRES_URL`` (an admin connection); every test that asks gets a
  fresh database, migrated with Alembic, dropped afterwards.
* SQLite: a file in the test's tmp_path, migrated with Alembic.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
import structlog
from sqlalchemy.engine import make_url

from consumer import migrate
from consumer.engine import create_engine
from consumer.settings import Settings
from consumer.store import Store
from consumer.tools import embedded, services, topics
from tests.support.config import run_settings, unavailable
from tests.support.procs import ConsumerGroup

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
BROKERS = ("tansu", "apache")


def selected_brokers() -> tuple[str, ...]:
    """TEST_BROKER: which brokers the `brokers` tests run on."""
    raw = os.environ.get("TEST_BROKER", "both").strip().lower()
    if raw == "both":
        return BROKERS
    if raw not in BROKERS:
        raise pytest.UsageError(f"TEST_BROKER must be tansu, apache or both, not {raw!r}")
    return (raw,)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("brokers") and "broker" in metafunc.fixturenames:
        metafunc.parametrize("broker", selected_brokers())


_LAZY_LOGGER = type(structlog.get_logger())


@pytest.fixture(autouse=True)
def _uncached_loggers() -> Iterator[None]:
    """structlog caches a module's logger on its first use when configured to
    (logs.configure does, and some tests run the CLI in-process): a logger cached under
    one test's configuration would keep writing there, hiding later tests' lines from
    structlog.testing.capture_logs. After each test, the package's loggers forget."""
    yield
    for name, module in list(sys.modules.items()):
        logger = getattr(module, "log", None) if name.startswith("consumer") else None
        if isinstance(logger, _LAZY_LOGGER):
            logger.__dict__.pop("bind", None)


def _service(name: str, *, reuse: bool = True) -> Iterator[str]:
    """The service `name` for the session: the one answering at its TEST_* address, else
    one of our own (stopped when the session ends)."""
    try:
        handle = services.ensure(name, own_port=True, reuse=reuse)
    except services.ServiceUnavailable as exc:
        unavailable(name, str(exc))
    try:
        yield handle.address
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def tansu_bootstrap() -> Iterator[str]:
    """Tansu, the embedded default broker: our own unless TEST_TANSU_BOOTSTRAP names one
    (a broker on its default port, 9092, may be a person's, or the README test's)."""
    yield from _service("tansu", reuse=bool(os.environ.get("TEST_TANSU_BOOTSTRAP")))


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Apache Kafka (KRaft), the broker users deploy."""
    yield from _service("kafka")


@pytest.fixture
def broker() -> str:
    """The broker a test runs on: Tansu, unless the test is marked `brokers` (then
    pytest_generate_tests gives each selected broker a run)."""
    return "tansu"


@pytest.fixture
def bootstrap(broker: str, request: pytest.FixtureRequest) -> str:
    """The bootstrap address of the test's broker."""
    return str(
        request.getfixturevalue("tansu_bootstrap" if broker == "tansu" else "kafka_bootstrap")
    )


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis for the session."""
    yield from _service("redis")


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A Redis key space of the test's own, emptied afterwards: the done markers live
    for days, and the machine's Redis outlives the test run."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield prefix
    embedded.delete_keys(redis_url, prefix)


@pytest.fixture
async def redis_client(redis_url: str, key_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=embedded.key_pattern(key_prefix))]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A Redis Cluster for the session (REDIS_MODE=cluster): the one answering at
    TEST_REDIS_CLUSTER_URL, else three masters and three replicas of our own on free
    loopback ports, stopped at the end. Tests that kill a node start their own."""
    given = os.environ.get("TEST_REDIS_CLUSTER_URL", "")
    if given and services.redis_cluster_answers(given):
        yield given
        return
    try:
        cluster = services.start_redis_cluster()
    except services.ServiceUnavailable as exc:
        unavailable("Redis Cluster", str(exc))
    try:
        yield cluster.url
    finally:
        cluster.close()


@pytest.fixture
def cluster_key_prefix(redis_cluster_url: str) -> Iterator[str]:
    """A key space of the test's own on the session's Redis Cluster, emptied afterwards."""
    prefix = f"c{uuid.uuid4().hex[:12]}"
    yield prefix
    services.cluster_delete_keys(redis_cluster_url, prefix)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A PostgreSQL server for the session, as a URL that may create databases."""
    yield from _service("postgres")


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def postgres_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test."""
    name = f"wg_{uuid.uuid4().hex[:12]}"
    admin = _asyncpg_dsn(pg_admin_url)

    async def _admin(sql: str) -> None:
        try:
            conn = await asyncpg.connect(admin, timeout=5)
        except (OSError, asyncpg.PostgresError) as exc:
            raise RuntimeError(
                f"PostgreSQL at TEST_POSTGRES_URL={pg_admin_url} is needed by this test: {exc}"
            ) from exc
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite database file for one test."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'wamid-guard.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Both supported databases, one test run each."""
    name = "postgres_url" if request.param == "postgresql" else "sqlite_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A Store over a fresh, migrated database of each kind (one engine per test)."""
    s = Store(create_engine(database_url, pool_size=2, timeout_s=10))
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def settings(bootstrap: str, redis_url: str, key_prefix: str, postgres_url: str) -> Settings:
    """Settings for one test: its own topics, group, key prefix and database."""
    return run_settings(bootstrap, redis_url, key_prefix, postgres_url)


@pytest.fixture
async def topic_settings(settings: Settings) -> Settings:
    """`settings` with its topics created: 4 inbound partitions."""
    await topics.create_topics(
        settings.kafka_bootstrap_servers,
        {settings.inbound_topic: 4, settings.outbound_topic: 4, settings.dlq_topic: 1},
    )
    return settings


@pytest.fixture
def group(topic_settings: Settings, tmp_path: Path) -> Iterator[ConsumerGroup]:
    """Start and stop real `python -m consumer run` processes; killed at teardown."""
    g = ConsumerGroup(topic_settings, tmp_path)
    try:
        yield g
    finally:
        g.kill_all()


def fixture_body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()
