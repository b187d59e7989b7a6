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

from consumer import dedup, limits
from consumer.crashpoints import CrashPoints
from consumer.errors import BrokerError, ConfigError, LeaseStoreError, StoreError
from consumer.events import EventLimit
from consumer.metrics import Metrics
from consumer.outbox import MarkQueue
from consumer.pipeline import BatchProcessor, Pipeline, PipelineConfig
from consumer.publish import Publisher, decide_idempotence, producer_config
from consumer.relay import Relay
from consumer.settings import Settings, mask_url
from consumer.source import require_topics, start_client, topic_limits
from consumer.store import Store

log = structlog.get_logger(__name__)


@dataclass
class Backends:
    """Redis and the database, both answering."""

    redis: dedup.RedisClient
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
    # Takes the outbound topic's limit when it is read again while the member runs.
    limit_events: Callable[[EventLimit], None] | None = None


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
    # What check_topics found the largest event may be (None: the produce request's).
    event_limit: EventLimit | None = None


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


def pipeline_config(settings: Settings, event_limit: EventLimit | None = None) -> PipelineConfig:
    """The settings the pipeline reads, and the event limit check_topics found."""
    s = settings
    return PipelineConfig(
        outbound_topic=s.outbound_topic,
        max_record_bytes=s.max_record_bytes,
        lease_ttl_s=s.lease_ttl_s,
        claim_for=publish_claim(s),
        redis_outage_policy=s.redis_outage_policy,
        app_secret=s.app_secret,
        debug=s.debug,
        event_limit=event_limit or request_event_limit(s),
        status_events=s.status_events,
    )


def request_event_limit(settings: Settings) -> EventLimit:
    """The largest event a produce request of ours holds (MAX_RECORD_BYTES sets it)."""
    sizes = settings.sizes
    return EventLimit(
        sizes.max_event_bytes,
        f"a produce request of {sizes.request_bytes} bytes "
        f"(MAX_RECORD_BYTES={settings.max_record_bytes})",
    )


async def open_backends(settings: Settings) -> Backends:
    """Connect to Redis and the database, and check that both answer (and that the
    database is migrated)."""
    redis = dedup.connect(
        settings.redis_url, timeout_s=settings.redis_timeout_s, mode=settings.redis_mode
    )
    try:
        await check_redis(settings, redis)
    except LeaseStoreError:
        await redis.aclose()
        raise
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


async def check_redis(settings: Settings, redis: dedup.RedisClient) -> None:
    """Redis answers, and is what REDIS_MODE says: a cluster node under ``standalone``
    would fail every batch (CROSSSLOT), a single Redis under ``cluster`` every start."""
    url = mask_url(settings.redis_url)
    mode = settings.redis_mode
    try:
        await dedup.ping(redis)
    except LeaseStoreError as exc:
        hint = " with REDIS_MODE=cluster (is it a Redis Cluster node?)" if mode == "cluster" else ""
        raise LeaseStoreError(
            f"cannot reach Redis at REDIS_URL={url}{hint}: {exc.__cause__}"
        ) from exc.__cause__
    if isinstance(redis, Redis) and await dedup.cluster_enabled(redis) is True:
        raise LeaseStoreError(
            f"REDIS_URL={url} is a Redis Cluster node, and REDIS_MODE=standalone would send "
            "a batch's keys to one node (CROSSSLOT): set REDIS_MODE=cluster"
        )
    log.info("redis.checked", mode=mode)


# How long a member waits at start for the topics' max.message.bytes: Tansu 0.6 closes
# the connection on DescribeConfigs, a broker that does not answer must not hold a start.
LIMITS_TIMEOUT_S = 10.0


async def check_topics(settings: Settings) -> EventLimit:
    """The three topics a member uses exist (none is created as a side effect), and take
    what the member must write to them; returns the largest event it may send.

    Each topic's max.message.bytes is read (DescribeConfigs). The inbound topic must take
    a record of MAX_RECORD_BYTES with its key and headers, the dead-letter topic such a
    record's dead letter whole: else ConfigError (exit 2), one line naming the setting,
    the topic and both numbers. An outbound topic below the produce request only lowers
    the event limit: a larger event's record is dead-lettered as unstorable, before
    anything is stored (logged now as ``topics.outbound_limit``). A broker that does not
    say (Tansu) leaves the limits unchecked (``topics.limits_unknown``)."""
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
    by_request = request_event_limit(s)
    topics = [s.inbound_topic, s.outbound_topic, s.dlq_topic]
    try:
        found = await topic_limits(
            s.kafka_bootstrap_servers, topics, min(s.kafka_request_timeout_s, LIMITS_TIMEOUT_S)
        )
    except BrokerError as exc:
        log.warning(
            "topics.limits_unknown",
            error=str(exc),
            cause=repr(exc.__cause__) if exc.__cause__ else None,
            consequence="not checked; events are limited by the produce request only",
            max_event_bytes=by_request.max_bytes,
        )
        return by_request
    return topics_fit(s, found)


def topics_fit(settings: Settings, found: dict[str, int]) -> EventLimit:
    """check_topics' verdict on the topics' max.message.bytes (`found`, by topic)."""
    s, sizes = settings, settings.sizes
    fix = (
        f"raise the topic's max.message.bytes (python -m consumer topics create sets "
        f"{sizes.topic_message_bytes}) or lower MAX_RECORD_BYTES"
    )
    for setting, topic, needed, what in (
        (
            "INBOUND_TOPIC",
            s.inbound_topic,
            sizes.inbound_topic_bytes,
            "a record of MAX_RECORD_BYTES with its key and headers",
        ),
        (
            "DLQ_TOPIC",
            s.dlq_topic,
            sizes.dlq_topic_bytes,
            "the dead letter of a record of MAX_RECORD_BYTES",
        ),
    ):
        if found[topic] < needed:
            raise ConfigError(
                setting,
                f"{topic} has max.message.bytes={found[topic]}, less than the {needed} {what} "
                f"(MAX_RECORD_BYTES={s.max_record_bytes}) needs: {fix}",
            )
    log.info("topics.limits", **{t: found[t] for t in (s.inbound_topic, s.dlq_topic)})
    return outbound_event_limit(s, found[s.outbound_topic])


async def recheck_outbound(settings: Settings) -> EventLimit | None:
    """The event limit from OUTBOUND_TOPIC's max.message.bytes as it is now (read
    again after the topic refused an event: its limit was lowered while the member
    ran); None when the broker does not say (logged)."""
    s = settings
    try:
        found = await topic_limits(
            s.kafka_bootstrap_servers,
            [s.outbound_topic],
            min(s.kafka_request_timeout_s, LIMITS_TIMEOUT_S),
        )
    except BrokerError as exc:
        log.warning("topics.outbound_limit_unknown", error=str(exc))
        return None
    return outbound_event_limit(s, found[s.outbound_topic])


def outbound_event_limit(settings: Settings, outbound: int) -> EventLimit:
    """The largest event to send to an outbound topic of max.message.bytes `outbound`:
    the produce request's, or less (logged ``topics.outbound_limit``)."""
    s = settings
    by_request = request_event_limit(s)
    by_topic = outbound - limits.EVENT_BATCH_FRAMING_BYTES
    if by_topic >= by_request.max_bytes:
        return by_request
    limit = EventLimit(
        max(by_topic, 0),
        f"OUTBOUND_TOPIC {s.outbound_topic} (max.message.bytes={outbound}, less "
        f"{limits.EVENT_BATCH_FRAMING_BYTES} of framing)",
    )
    log.warning(
        "topics.outbound_limit",
        topic=s.outbound_topic,
        max_message_bytes=outbound,
        max_event_bytes=limit.max_bytes,
        consequence="a larger event's record is dead-lettered as unstorable",
    )
    return limit


async def start_publisher(
    settings: Settings,
    *,
    client_id: str,
    on_renewed: Callable[[], None] | None = None,
    on_unpublishable: Callable[[int], None] | None = None,
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
            producer,
            dlq_topic=s.dlq_topic,
            max_request_bytes=s.sizes.request_bytes,
            debug=s.debug,
            on_unpublishable=on_unpublishable,
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
        max_request_bytes=s.sizes.request_bytes,
        debug=s.debug,
        dead_letters=dead_letters,
        renew=renew,
        wait_s=s.kafka_request_timeout_s,
        on_renewed=on_renewed,
        on_unpublishable=on_unpublishable,
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
            max_request_bytes=settings.sizes.request_bytes,
            idempotence=idempotence,
            metadata_max_age_s=settings.kafka_metadata_max_age_s,
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
        cluster=s.redis_mode == "cluster",
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
        pipeline_config(s, c.event_limit),
        leases,
        backends.store,
        c.publisher,
        worker_id=c.worker_id,
        crash=c.crash,
        metrics=c.metrics,
        marks=marks,
    )
    return Flow(pipeline, relay, marks, limit_events=pipeline.limit_events)


PIPELINE = FlowFactory("pipeline", pipeline_flow, needs_backends=True)
"""What ``python -m consumer run`` runs: the pipeline over Redis and the database."""
