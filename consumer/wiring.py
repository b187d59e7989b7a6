"""The composition root: the clients a member talks to, checked at start, and the flow
built over them (the pipeline and the outbox relay beside it; :data:`PIPELINE` is how a
member builds it, and what it needs opened first).

Startup checks turn a dependency that is not there into one clear line naming the
setting (``cannot reach Redis at REDIS_URL=...``), before the member joins its group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa
import structlog
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from sqlalchemy.exc import SQLAlchemyError

from consumer import dedup
from consumer.crashpoints import CrashPoints
from consumer.errors import LeaseStoreError, StoreError
from consumer.metrics import Metrics
from consumer.pipeline import BatchProcessor, Pipeline, publish_claim
from consumer.publish import MAX_REQUEST_BYTES, Publisher, decide_idempotence, producer_config
from consumer.relay import Relay
from consumer.settings import Settings, mask_url
from consumer.source import require_topics, start_client
from consumer.store import MarkQueue, Store, create_engine, database_problem

log = structlog.get_logger(__name__)


@dataclass
class Backends:
    """Redis and the database, both answering."""

    redis: Redis
    store: Store

    async def close(self) -> None:
        await self.redis.aclose()
        await self.store.close()


@dataclass
class Flow:
    """What a member runs each batch through, and the relay that runs beside it."""

    processor: BatchProcessor
    relay: Relay | None = None
    marks: MarkQueue | None = None


class BuildFlow(Protocol):
    """Builds a member's flow once its producer is open (`backends`: None when the flow
    does not need them)."""

    def __call__(
        self,
        settings: Settings,
        backends: Backends | None,
        publisher: Publisher,
        *,
        worker_id: str,
        crash: CrashPoints,
        metrics: Metrics,
    ) -> Flow: ...


@dataclass(frozen=True, slots=True)
class FlowFactory:
    """Which flow a member runs, and what must be opened for it.

    At startup the member opens and checks Redis and the database first when
    `needs_backends` (so that a missing one is named before the member joins its group),
    then the producer, then calls `build`. `name` is logged (``service.started``, mode).
    """

    name: str
    build: BuildFlow
    needs_backends: bool


async def open_backends(settings: Settings) -> Backends:
    """Connect to Redis and the database, and check that both answer (and that the
    database is migrated)."""
    redis = dedup.connect(settings.redis_url, timeout_s=settings.redis_timeout_s)
    try:
        await dedup.ping(redis)
    except LeaseStoreError as exc:
        await redis.aclose()
        raise LeaseStoreError(
            f"cannot reach Redis at REDIS_URL={mask_url(settings.redis_url)}: {exc.__cause__}"
        ) from exc.__cause__
    store = Store(
        create_engine(
            settings.database_url, pool_size=settings.db_pool_size, timeout_s=settings.db_timeout_s
        )
    )
    try:
        await _check_database(store, settings)
    except StoreError:
        await redis.aclose()
        await store.close()
        raise
    return Backends(redis, store)


async def _check_database(store: Store, settings: Settings) -> None:
    """The database answers and is migrated; else one line saying which of: unreachable,
    does not exist, not migrated, a file that cannot be opened."""
    url = mask_url(settings.database_url)
    try:
        async with store.engine.connect() as conn:
            # The columns the newest revision added: a database migrated by an older
            # release is "not migrated" too, not a failure of every batch later.
            await conn.execute(sa.text("SELECT outbox_id FROM messages WHERE 1 = 0"))
            await conn.execute(sa.text("SELECT id, events FROM outbox WHERE 1 = 0"))
        # Every pool connection opened, a save's statements prepared on each.
        await store.warm(settings.db_pool_size, claim_for=publish_claim(settings))
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"database at DATABASE_URL={url}: {database_problem(exc)}") from exc


async def check_topics(settings: Settings) -> None:
    """The three topics a member uses exist (none is created as a side effect)."""
    s = settings
    await require_topics(
        s.kafka_bootstrap_servers,
        {
            "INBOUND_TOPIC": s.inbound_topic,
            "OUTBOUND_TOPIC": s.outbound_topic,
            "DLQ_TOPIC": s.dlq_topic,
        },
        s.kafka_request_timeout_s,
    )


async def start_publisher(
    settings: Settings, *, client_id: str, on_renewed: Callable[[], None] | None = None
) -> Publisher:
    """The member's producing: one producer for events and dead letters, or, when
    KAFKA_IDEMPOTENCE makes it idempotent (logged: ``producer.idempotence``), an
    idempotent one for events, renewed after a batch that fails, and a plain one for
    dead letters (:class:`consumer.publish.Publisher` says why)."""
    s = settings
    idempotence = await decide_idempotence(
        s.kafka_idempotence, s.kafka_bootstrap_servers, timeout_s=s.kafka_request_timeout_s
    )
    log.info("producer.idempotence", enabled=idempotence.enabled, reason=idempotence.reason)
    if not idempotence.enabled:
        producer = await start_producer(s, client_id=client_id)
        return Publisher(
            producer, dlq_topic=s.dlq_topic, max_request_bytes=MAX_REQUEST_BYTES, debug=s.debug
        )

    async def renew() -> AIOKafkaProducer:
        return await start_producer(s, client_id=client_id, idempotence=True)

    events = await renew()
    try:
        dead_letters = await start_producer(s, client_id=f"{client_id}-dlq")
    except BaseException:
        await events.stop()
        raise
    return Publisher(
        events,
        dlq_topic=s.dlq_topic,
        max_request_bytes=MAX_REQUEST_BYTES,
        debug=s.debug,
        dead_letters=dead_letters,
        renew=renew,
        wait_s=s.kafka_request_timeout_s,
        on_renewed=on_renewed,
    )


async def start_producer(
    settings: Settings, *, client_id: str, idempotence: bool = False
) -> AIOKafkaProducer:
    """A started producer (acks=all, no linger: :func:`consumer.publish.producer_config`)."""
    producer = AIOKafkaProducer(
        **producer_config(
            settings.kafka_bootstrap_servers,
            client_id=client_id,
            request_timeout_s=settings.kafka_request_timeout_s,
            max_request_bytes=MAX_REQUEST_BYTES,
            idempotence=idempotence,
        )
    )
    await start_client(producer, settings.kafka_bootstrap_servers, settings.kafka_request_timeout_s)
    return producer


def pipeline_flow(
    settings: Settings,
    backends: Backends,
    publisher: Publisher,
    *,
    worker_id: str,
    crash: CrashPoints,
    metrics: Metrics,
) -> Flow:
    """The pipeline and its outbox relay, sharing one MarkQueue (so that an outbox delete
    that failed after a publish is retried before the relay could announce it again)."""
    s = settings
    leases = dedup.Leases(
        backends.redis,
        prefix=s.redis_key_prefix,
        lease_ttl_s=s.lease_ttl_s,
        done_ttl_s=s.done_ttl_s,
    )
    marks = MarkQueue(backends.store)
    relay = Relay(
        backends.store,
        publisher,
        worker_id=worker_id,
        interval_s=s.relay_interval_s,
        claim_for=publish_claim(s),
        metrics=metrics,
        marks=marks,
    )
    pipeline = Pipeline(
        s,
        leases,
        backends.store,
        publisher,
        worker_id=worker_id,
        crash=crash,
        metrics=metrics,
        marks=marks,
    )
    return Flow(pipeline, relay, marks)


def _build_pipeline(
    settings: Settings,
    backends: Backends | None,
    publisher: Publisher,
    *,
    worker_id: str,
    crash: CrashPoints,
    metrics: Metrics,
) -> Flow:
    assert backends is not None  # noqa: S101 - PIPELINE needs them: startup opened them
    return pipeline_flow(
        settings, backends, publisher, worker_id=worker_id, crash=crash, metrics=metrics
    )


PIPELINE = FlowFactory("pipeline", _build_pipeline, needs_backends=True)
"""What ``python -m consumer run`` runs: the pipeline over Redis and the database."""
