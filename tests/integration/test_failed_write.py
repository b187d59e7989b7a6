"""docs/design.md, rule 4: a write that fails after the lock was taken does not make the
redelivery a duplicate (nor swallow it). Real Pipeline, real Redis leases, real Store;
fake publisher."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import pytest
import redis
import redis.asyncio as aioredis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from consumer.dedup import DONE_PREFIX, Leases
from consumer.engine import create_engine
from consumer.errors import BrokerError, StoreError
from consumer.events import OutboundEvent
from consumer.metrics import Metrics
from consumer.outbox import MarkQueue, unpack_events
from consumer.pipeline import Pipeline
from consumer.ports import UNCLAIMED, Claim, PendingMessage, PendingStatus, SaveResult
from consumer.records import InboundRecord, Invalid, MessageKey
from consumer.schema import messages, outbox
from consumer.settings import Settings
from consumer.store import Store
from consumer.wiring import pipeline_config

pytestmark = [pytest.mark.integration, pytest.mark.brokers]

PNID = "106540352242922"
WAMIDS = ("wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=", "wamid.SECOND")
KEYS = [MessageKey(PNID, w) for w in WAMIDS]
WORKER = "worker-a"


def _record(offset: int = 42) -> InboundRecord:
    """One inbound record: a webhook with two text messages."""
    msgs = [
        {
            "from": "16505551234",
            "id": w,
            "timestamp": "1749416383",
            "type": "text",
            "text": {"body": f"hello {w}"},
        }
        for w in WAMIDS
    ]
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PNID},
        "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
        "messages": msgs,
    }
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
    }
    return InboundRecord("whatsapp.webhooks", 0, offset, None, json.dumps(body).encode(), (), 0)


class FakePublisher:
    """In-memory stand-in for consumer.publish.Publisher; can fail the first N publishes."""

    def __init__(self, *, fail_publishes: int = 0) -> None:
        self.attempts: list[tuple[OutboundEvent, ...]] = []
        self.published: list[OutboundEvent] = []
        self.dead: list[Invalid] = []
        self._fail = fail_publishes

    async def publish(self, events: Sequence[OutboundEvent]) -> None:
        self.attempts.append(tuple(events))
        if self._fail > 0:
            self._fail -= 1
            raise BrokerError("broker unavailable (injected)")
        self.published.extend(events)

    async def dead_letter(self, invalid: Sequence[Invalid]) -> None:
        self.dead.extend(invalid)


class FailingFirstSave(Store):
    """A Store whose first transaction fails inside the database work, after the inserts.

    The failure is an OSError raised in the open transaction (as a dropped connection
    would), so the real Store rolls back and translates it to StoreError. At that moment
    it records what Redis holds for each key, to prove the lease was already taken.
    """

    def __init__(self, engine: AsyncEngine, leases: Leases, redis_url: str) -> None:
        super().__init__(engine, after_insert=self._fail_first)
        self.calls = 0
        self.leases_at_failure: dict[MessageKey, bytes | None] = {}
        self._leases = leases
        self._redis_url = redis_url
        self._saving: Sequence[PendingMessage] = ()

    async def save(
        self,
        pending: Sequence[PendingMessage],
        claim: Claim = UNCLAIMED,
        statuses: Sequence[PendingStatus] = (),
    ) -> SaveResult:
        self.calls += 1
        self._saving = pending
        return await super().save(pending, claim, statuses)

    def _fail_first(self) -> None:
        if self.calls > 1:
            return
        with redis.Redis.from_url(self._redis_url) as sync:
            for p in self._saving:
                self.leases_at_failure[p.message.key] = sync.get(self._leases.key(p.message.key))
        raise OSError("connection reset by peer (injected before commit)")


class LostCommitAnswer(Store):
    """A Store whose first save commits but then reports a failure (the answer was lost)."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.calls = 0

    async def save(
        self,
        pending: Sequence[PendingMessage],
        claim: Claim = UNCLAIMED,
        statuses: Sequence[PendingStatus] = (),
    ) -> SaveResult:
        self.calls += 1
        result = await super().save(pending, claim, statuses)
        if self.calls == 1:
            raise StoreError("connection lost while waiting for COMMIT's answer (injected)")
        return result


def _pipeline(settings: Settings, leases: Leases, store: Store, fake: FakePublisher) -> Pipeline:
    return Pipeline(
        pipeline_config(settings),
        leases,
        store,
        fake,
        worker_id=WORKER,
        metrics=Metrics(),
        marks=MarkQueue(store),
    )


@pytest.fixture
def settings(redis_url: str, database_url: str, key_prefix: str) -> Settings:
    return Settings(redis_url=redis_url, database_url=database_url, redis_key_prefix=key_prefix)


@pytest.fixture
def leases(settings: Settings, redis_client: aioredis.Redis) -> Leases:
    return Leases(
        redis_client,
        prefix=settings.redis_key_prefix,
        lease_ttl_s=settings.lease_ttl_s,
        done_ttl_s=settings.done_ttl_s,
    )


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(settings.database_url, pool_size=2, timeout_s=10)
    try:
        yield eng
    finally:
        await eng.dispose()


async def _rows(engine: AsyncEngine) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        result = await conn.execute(sa.select(messages.c.phone_number_id, messages.c.source_id))
        return sorted((r[0], r[1]) for r in result)


async def _outbox(engine: AsyncEngine) -> dict[str, tuple[bytes, bool]]:
    async with engine.connect() as conn:
        result = await conn.execute(sa.select(outbox.c.events))
        return {e.event_id: (e.payload, False) for r in result for e in unpack_events(r[0])}


async def test_failed_write_after_lease_then_redelivery_stores_and_publishes_once(
    settings: Settings, leases: Leases, redis_client: aioredis.Redis, engine: AsyncEngine
) -> None:
    """A transaction failing after the leases were taken releases them: the redelivery
    stores and announces each message exactly once."""
    store = FailingFirstSave(engine, leases, settings.redis_url)
    publisher = FakePublisher()
    pipeline = _pipeline(settings, leases, store, publisher)
    record = _record()

    first = await pipeline.process([record])
    first_token = f"{WORKER}:1"
    assert store.leases_at_failure == dict.fromkeys(KEYS, first_token.encode()), "lease before save"
    assert first.retry == [record]
    assert first.durable == []
    assert first.failure is not None
    assert "StoreError" in first.failure
    assert await _rows(engine) == [], "the failed transaction rolled back"
    assert publisher.attempts == []
    for key in KEYS:
        assert await redis_client.get(leases.key(key)) is None, "first token's lease left behind"

    second = await pipeline.process([record])  # the redelivery
    assert second.durable == [record]
    assert second.retry == []
    assert second.stored == len(KEYS)
    assert await _rows(engine) == sorted((k.phone_number_id, k.wamid) for k in KEYS)
    assert sorted(e.event_id for e in publisher.published) == sorted(k.event_id for k in KEYS)
    assert await _outbox(engine) == {}, "published rows leave the outbox"
    for key in KEYS:
        assert await redis_client.get(leases.key(key)) == f"{DONE_PREFIX}{WORKER}:2".encode()

    third = await pipeline.process([record])  # Meta retries once more: done markers skip it
    assert third.durable == [record]
    assert third.dup_done_marker == len(KEYS)
    assert len(publisher.published) == len(KEYS)
    assert len(await _rows(engine)) == len(KEYS)


async def test_lost_commit_answer_redelivery_publishes_the_stored_event_once(
    settings: Settings, leases: Leases, redis_client: aioredis.Redis, engine: AsyncEngine
) -> None:
    """A commit whose answer is lost leaves a stored, unannounced row: the redelivery is a
    database duplicate that announces the outbox event once, not a second row."""
    store = LostCommitAnswer(engine)
    publisher = FakePublisher()
    pipeline = _pipeline(settings, leases, store, publisher)
    record = _record()

    first = await pipeline.process([record])
    assert first.retry == [record]
    assert len(await _rows(engine)) == len(KEYS), "the commit went through"
    stored_outbox = await _outbox(engine)
    assert not any(published for _, published in stored_outbox.values())
    for key in KEYS:
        assert await redis_client.get(leases.key(key)) is None

    second = await pipeline.process([record])
    assert second.durable == [record]
    assert second.dup_database == len(KEYS)
    assert second.republished == len(KEYS)
    assert {e.event_id: e.payload for e in publisher.published} == {
        event_id: payload for event_id, (payload, _) in stored_outbox.items()
    }
    assert len(publisher.published) == len(KEYS)
    assert len(await _rows(engine)) == len(KEYS)
    assert await _outbox(engine) == {}, "published rows leave the outbox"


async def test_publish_fails_after_commit_redelivery_republishes_same_event(
    settings: Settings, leases: Leases, redis_client: aioredis.Redis, engine: AsyncEngine
) -> None:
    """A publish failing after commit: the redelivery re-publishes the same event_id and bytes
    from the outbox, keeps one row, and marks the outbox row published."""
    store = Store(engine)
    publisher = FakePublisher(fail_publishes=1)
    pipeline = _pipeline(settings, leases, store, publisher)
    record = _record()

    first = await pipeline.process([record])
    assert first.retry == [record]
    assert first.failure is not None
    assert "BrokerError" in first.failure
    assert publisher.published == []
    (attempted,) = publisher.attempts
    assert sorted(e.event_id for e in attempted) == sorted(k.event_id for k in KEYS)
    assert len(await _rows(engine)) == len(KEYS), "committed before the publish"
    assert not any(published for _, published in (await _outbox(engine)).values())
    for key in KEYS:
        assert await redis_client.get(leases.key(key)) is None, "lease released for the retry"

    second = await pipeline.process([record])
    assert second.durable == [record]
    assert second.stored == 0
    assert second.dup_database == len(KEYS)
    assert second.republished == len(KEYS)
    assert sorted(publisher.published, key=lambda e: e.event_id) == sorted(
        attempted, key=lambda e: e.event_id
    ), "same event_id, topic, key and payload bytes as the failed attempt"
    assert await _rows(engine) == sorted((k.phone_number_id, k.wamid) for k in KEYS)
    assert await _outbox(engine) == {}, "published rows leave the outbox"
    for key in KEYS:
        assert await redis_client.get(leases.key(key)) == f"{DONE_PREFIX}{WORKER}:2".encode()

    third = await pipeline.process([record])
    assert third.durable == [record]
    assert len(publisher.published) == len(KEYS), "announced once after success"
