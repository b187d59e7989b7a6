"""WHATSAPP_APP_SECRET end to end: records signed by `produce` (as Meta signs) are stored and
announced; unsigned and wrongly signed ones go to the dead-letter topic with their reason
and coordinates. Real Pipeline, Redis leases, PostgreSQL store, broker and publisher."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from consumer.dedup import Leases
from consumer.engine import create_engine
from consumer.metrics import Metrics
from consumer.outbox import MarkQueue
from consumer.pipeline import Pipeline
from consumer.publish import Publisher, producer_config
from consumer.records import InboundRecord, MessageKey, Reason
from consumer.settings import Settings
from consumer.store import Store
from consumer.tools import produce
from consumer.wiring import pipeline_config
from tests.support import kafka
from tests.support.bodies import text_webhook

pytestmark = [pytest.mark.integration, pytest.mark.brokers]

SECRET = "integration-app-secret-4f2a"  # noqa: S105 - a made-up secret for the test
PNID = "106540352242922"
MAX_REQUEST_BYTES = 1024 * 1024


def _signature(value: bytes, secret: str = SECRET) -> bytes:
    return f"sha256={hmac.new(secret.encode(), value, hashlib.sha256).hexdigest()}".encode()


@pytest.fixture
def signed_settings(topic_settings: Settings) -> Settings:
    return topic_settings.replace(app_secret=SECRET)


@pytest.fixture
async def pipeline(
    signed_settings: Settings, redis_client: aioredis.Redis
) -> AsyncIterator[Pipeline]:
    """The real Pipeline over Redis, PostgreSQL and the broker, with the app secret set."""
    s = signed_settings
    leases = Leases(
        redis_client, prefix=s.redis_key_prefix, lease_ttl_s=s.lease_ttl_s, done_ttl_s=s.done_ttl_s
    )
    engine = create_engine(s.database_url, pool_size=2, timeout_s=10)
    producer = AIOKafkaProducer(
        **producer_config(
            s.kafka_bootstrap_servers,
            client_id="test-signature",
            request_timeout_s=10,
            max_request_bytes=MAX_REQUEST_BYTES,
        )
    )
    await producer.start()
    try:
        publisher = Publisher(producer, dlq_topic=s.dlq_topic, max_request_bytes=MAX_REQUEST_BYTES)
        store = Store(engine)
        yield Pipeline(
            pipeline_config(s),
            leases,
            store,
            publisher,
            worker_id="w-signature",
            metrics=Metrics(),
            marks=MarkQueue(store),
        )
    finally:
        await producer.stop()
        await engine.dispose()


async def _fetch_inbound(settings: Settings) -> list[InboundRecord]:
    """The inbound records as a consumer receives them (headers as the broker kept them)."""
    return [
        InboundRecord(
            topic=r.topic,
            partition=r.partition,
            offset=r.offset,
            key=r.key,
            value=r.value,
            headers=tuple(r.headers or ()),
            timestamp_ms=r.timestamp,
        )
        for r in await kafka.read_all(settings, settings.inbound_topic, idle_s=1.0)
    ]


async def test_signed_records_stored_others_dead_lettered(
    signed_settings: Settings, pipeline: Pipeline
) -> None:
    """With WHATSAPP_APP_SECRET: records `produce` signed (lower-case header, a stale one
    replaced) and one with an upper-case header name are stored and announced once;
    unsigned, other-secret, other-bytes and malformed ones are dead-lettered with
    signature_missing / signature_invalid, their source coordinates, and no secret."""
    s = signed_settings
    bootstrap, topic = s.kafka_bootstrap_servers, s.inbound_topic
    signed = {w: text_webhook(PNID, w) for w in ("wamid.SIGNED.1", "wamid.SIGNED.2")}
    await produce.produce(
        bootstrap,
        topic,
        list(signed.items()),
        duplicates=1,
        spread=True,
        headers=[("X-Hub-Signature-256", b"sha256=stale"), ("trace", b"t-1")],
        app_secret=SECRET,
    )
    upper = text_webhook(PNID, "wamid.SIGNED.UPPER")
    await kafka.send(s, [(1, upper)], headers=[("X-Hub-Signature-256", _signature(upper))])
    unsigned = text_webhook(PNID, "wamid.UNSIGNED")
    await produce.produce(bootstrap, topic, [("unsigned", unsigned)])  # no WHATSAPP_APP_SECRET
    other_secret = text_webhook(PNID, "wamid.OTHER_SECRET")
    other_bytes = text_webhook(PNID, "wamid.OTHER_BYTES")
    malformed = text_webhook(PNID, "wamid.MALFORMED")
    bad = [
        (other_secret, _signature(other_secret, "not-the-app-secret")),
        (other_bytes, _signature(upper)),
        (malformed, b"sha256=" + b"z" * 64),
    ]
    for value, header in bad:
        await kafka.send(s, [(2, value)], headers=[("x-hub-signature-256", header)])
    expected_reason = {
        unsigned: Reason.SIGNATURE_MISSING,
        other_secret: Reason.SIGNATURE_INVALID,
        other_bytes: Reason.SIGNATURE_INVALID,
        malformed: Reason.SIGNATURE_INVALID,
    }

    records = await _fetch_inbound(s)
    assert len(records) == 2 * len(signed) + 1 + len(expected_reason)
    report = await pipeline.process(records)

    assert report.failure is None
    assert report.retry == []
    assert sorted(r.coordinates for r in report.durable) == sorted(r.coordinates for r in records)
    assert report.dead_lettered == len(expected_reason)

    good_wamids = {*signed, "wamid.SIGNED.UPPER"}
    good_keys = {MessageKey(PNID, w) for w in good_wamids}
    assert sorted(await kafka.rows(s)) == sorted((PNID, w) for w in good_wamids)
    events = await kafka.events(s)
    assert sorted(e["event_id"] for e in events) == sorted(k.event_id for k in good_keys)

    want = {
        (r.topic, r.partition, r.offset): str(expected_reason[r.value])
        for r in records
        if r.value in expected_reason
    }
    dead = await kafka.read_all(s, s.dlq_topic)
    got = {}
    for d in dead:
        h = dict(d.headers)
        coords = (
            h["dlq.source.topic"].decode(),
            int(h["dlq.source.partition"]),
            int(h["dlq.source.offset"]),
        )
        got[coords] = h["dlq.reason"].decode()
        assert SECRET.encode() not in b"".join(v for _, v in d.headers)
        assert d.value in expected_reason, "a dead letter carries the original value"
    assert got == want
    assert len(dead) == len(want)
