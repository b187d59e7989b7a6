"""The composition root: the clients a member talks to, checked at start, and the flow
built over them (the pipeline and the outbox relay beside it; :data:`PIPELINE` is how a
member builds it, and what it needs opened first).

Startup checks turn a dependency that is not there into one clear line naming the
setting (``cannot reach Redis at REDIS_URL=...``), before the member joins its group.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from consumer import dedup
from consumer.crashpoints import CrashPoints
from consumer.errors import LeaseStoreError, StoreError
from consumer.metrics import Metrics
from consumer.outbox import MarkQueue
from consumer.pipeline import BatchProcessor, Pipeline, PipelineConfig
from consumer.publish import MAX_REQUEST_BYTES, Publisher, decide_idempotence, producer_config
from consumer.relay import Relay
from consumer.settings import Settings, mask_url
from consumer.source import require_topics, start_client
from consumer.store import Store

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


@dataclass(frozen=True, slots=True)
class FlowContext:
    """What a member has opened when it builds its flow (`backends`: None when the flow
    does not need them)."""

    settings: Settings
    backends: Backends | None
    publisher: Publisher
    worker_id: str
    crash: CrashPoints
    metrics: Metrics


BuildFlow = Callable[[FlowContext], Flow]
"""Builds a member's flow once its producer is open."""


@dataclass(frozen=True, slots=True)
class FlowFactory:
    """Which flow a member runs, and what must be opened for it.

    At startup the member opens and checks Redis and the database first when
    `needs_backends` (so that a missing one is named before the member joins its group),
    then the producer, then calls `build` with what it opened. `name` is logged
    (``service.started``, mode).
    """

    name: str
    build: BuildFlow
    needs_backends: bool


def publish_claim(settings: Settings) -> dt.timedelta:
    """How long whoever claims an outbox row may take to publish it before others may:
    a lease's worth plus one full produce timeout."""
    return dt.timedelta(seconds=settings.lease_ttl_s + settings.kafka_request_timeout_s)


def pipeline_config(settings: Settings) -> PipelineConfig:
    """The settings the pipeline reads."""
    s = settings
    return PipelineConfig(
        outbound_topic=s.outbound_topic,
        max_record_bytes=s.max_record_bytes,
        lease_ttl_s=s.lease_ttl_s,
        claim_for=publish_claim(s),
        redis_outage_policy=s.redis_outage_policy,
        app_secret=s.app_secret,
        debug=s.debug,
    )


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
    # The store's one crash point, hit inside a save's transaction (crash tests only).
    crash = CrashPoints(settings.crash_point)
    store = Store.open(
        settings.database_url,
        pool_size=settings.db_pool_size,
        timeout_s=settings.db_timeout_s,
        after_insert=(lambda: crash.hit("after_insert")) if crash.enabled else None,
    )
    try:
        # Migrated, and every pool connection opened with a save's statements prepared.
        await store.check(warm=settings.db_pool_size, claim_for=publish_claim(settings))
    except StoreError as exc:
        await redis.aclose()
        await store.close()
        url = mask_url(settings.database_url)
        raise StoreError(f"database at DATABASE_URL={url}: {exc}") from exc.__cause__
    return Backends(redis, store)


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


def pipeline_flow(context: FlowContext) -> Flow:
    """The pipeline and its outbox relay, sharing one MarkQueue (so that an outbox delete
    that failed after a publish is retried before the relay could announce it again)."""
    c, s = context, context.settings
    backends = c.backends
    assert backends is not None  # noqa: S101 - PIPELINE needs them: startup opened them
    leases = dedup.Leases(
        backends.redis,
        prefix=s.redis_key_prefix,
        lease_ttl_s=s.lease_ttl_s,
        done_ttl_s=s.done_ttl_s,
    )
    marks = MarkQueue(backends.store)
    relay = Relay(
        backends.store,
        c.publisher,
        worker_id=c.worker_id,
        interval_s=s.relay_interval_s,
        claim_for=publish_claim(s),
        metrics=c.metrics,
        marks=marks,
    )
    pipeline = Pipeline(
        pipeline_config(s),
        leases,
        backends.store,
        c.publisher,
        worker_id=c.worker_id,
        crash=c.crash,
        metrics=c.metrics,
        marks=marks,
    )
    return Flow(pipeline, relay, marks)


PIPELINE = FlowFactory("pipeline", pipeline_flow, needs_backends=True)
"""What ``python -m consumer run`` runs: the pipeline over Redis and the database."""
