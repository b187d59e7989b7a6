"""The publisher waits for what it enqueued, also when a later send() fails: it returns
(and the batch fails, to be retried) only once no send of it is still under way."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, OutOfOrderSequenceNumber

from consumer import events, intake
from consumer.errors import BrokerError
from consumer.publish import Publisher
from consumer.records import Invalid, Reason, Webhook
from consumer.testing import message, record, webhook

NOW = dt.datetime(2025, 6, 9, 12, 0, tzinfo=dt.UTC)


class _Producer:
    """send() enqueues (its future resolves 50 ms later); the third send() raises."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, **_kwargs: Any) -> asyncio.Future[Any]:
        if len(self.futures) == 2:
            raise KafkaConnectionError("the producer lost the broker")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.05, future.set_result, object())
        self.futures.append(future)
        return future


async def _send(publisher: Publisher, what: str) -> None:
    if what == "events":
        hook = intake.decode(
            record(webhook([message(f"wamid.{i}") for i in range(3)])), max_bytes=1 << 20
        )
        assert isinstance(hook, Webhook)
        await publisher.publish(
            [events.build(m, topic="out", occurred_at=NOW) for m in hook.messages]
        )
    else:
        await publisher.dead_letter(
            [Invalid(record(b"x", offset=i), Reason.NOT_JSON, "x") for i in range(3)]
        )


@pytest.mark.parametrize("what", ["events", "dead letters"])
async def test_a_failed_send_waits_for_the_sends_before_it(what: str) -> None:
    producer = _Producer()
    publisher = Publisher(producer, dlq_topic="dlq", max_request_bytes=1 << 20)
    with pytest.raises(BrokerError, match="lost the broker"):
        await _send(publisher, what)
    assert len(producer.futures) == 2
    assert all(f.done() for f in producer.futures), "returned with sends still under way"


# -- an idempotent events producer: bounded waits, no second send, renewal -----------------


class _Held:
    """A producer whose sends resolve only when told: `release()` acks them all, `fail()`
    fails them; `stopped` once stop() ran."""

    def __init__(self, name: str = "p") -> None:
        self.name = name
        self.sent: list[tuple[str, asyncio.Future[Any]]] = []
        self.stopped = False

    async def send(self, topic: str, **_kwargs: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((topic, future))
        return future

    def release(self) -> None:
        for _, f in self.sent:
            if not f.done():
                f.set_result(_Acked())

    def fail(self, exc: BaseException) -> None:
        for _, f in self.sent:
            if not f.done():
                f.set_exception(exc)

    async def stop(self) -> None:
        self.stopped = True


class _Acked:
    partition = 0
    offset = 0


def _events(n: int = 3) -> list[events.OutboundEvent]:
    hook = intake.decode(
        record(webhook([message(f"wamid.{i}") for i in range(n)])), max_bytes=1 << 20
    )
    assert isinstance(hook, Webhook)
    return [events.build(m, topic="out", occurred_at=NOW) for m in hook.messages]


async def test_a_publish_past_its_wait_fails_and_its_retry_waits_for_the_same_sends() -> None:
    """An idempotent batch is never expired: the publish gives up after wait_s, and the
    retry of the same events sends nothing new (a new send would land a second time)."""
    producer = _Held()
    publisher = Publisher(producer, dlq_topic="dlq", max_request_bytes=1 << 20, wait_s=0.05)
    batch = _events()
    with pytest.raises(BrokerError, match=r"3 of 3 message_created record\(s\) not acknowledged"):
        await publisher.publish(batch)
    assert len(producer.sent) == 3
    retry = asyncio.create_task(publisher.publish(batch))
    await asyncio.sleep(0.01)
    producer.release()
    await retry
    assert len(producer.sent) == 3, "the retry sent the events again"
    again = asyncio.create_task(publisher.publish(batch))
    await asyncio.sleep(0.01)
    assert len(producer.sent) == 6, "acknowledged sends are not remembered: a new publish sends"
    producer.release()
    await again


async def test_sends_acknowledged_after_their_publish_gave_up_count_for_its_retry() -> None:
    """The producer lands the sends after the publish gave up (the broker came back):
    the retry finds them acknowledged and sends nothing (a new send would be a copy), and
    a failed one is sent again."""
    producer = _Held()
    publisher = Publisher(producer, dlq_topic="dlq", max_request_bytes=1 << 20, wait_s=0.05)
    batch = _events()
    with pytest.raises(BrokerError, match="not acknowledged within"):
        await publisher.publish(batch)
    producer.sent[0][1].set_result(_Acked())
    producer.sent[1][1].set_result(_Acked())
    producer.sent[2][1].set_exception(OutOfOrderSequenceNumber())
    retry = asyncio.create_task(publisher.publish(batch))
    await asyncio.sleep(0.01)
    assert len(producer.sent) == 4, "only the failed send goes again"
    producer.release()
    await retry


async def test_a_failed_batch_renews_the_idempotent_producer_once() -> None:
    """A batch that fails for good leaves a gap in an idempotent producer's sequence
    (aiokafka does not reset it): the publisher makes a new producer, once for all the
    publishes that saw the failure, stops the old one, and the retry goes through."""
    first, second = _Held("first"), _Held("second")
    made = iter([second])
    counted: list[int] = []

    async def renew() -> Any:
        return next(made)

    publisher = Publisher(
        first,
        dlq_topic="dlq",
        max_request_bytes=1 << 20,
        renew=renew,
        wait_s=1.0,
        on_renewed=lambda: counted.append(1),
    )
    batches = [_events(2), _events(3)[2:]]
    both = asyncio.gather(*(publisher.publish(b) for b in batches), return_exceptions=True)
    await asyncio.sleep(0.01)
    first.fail(OutOfOrderSequenceNumber())
    results = await both
    assert all(isinstance(r, BrokerError) for r in results), results
    assert publisher.renewals == 1
    assert counted == [1], "counted once (wamid_guard_producer_renewals_total)"
    await asyncio.sleep(0)
    assert first.stopped, "the broken producer is stopped"
    retry = asyncio.create_task(publisher.publish(batches[0]))
    await asyncio.sleep(0.01)
    second.release()
    await retry
    assert len(second.sent) == 2


async def test_dead_letters_go_through_their_own_producer() -> None:
    events_producer, letters = _Held("events"), _Held("letters")
    publisher = Publisher(
        events_producer,
        dlq_topic="dlq",
        max_request_bytes=1 << 20,
        dead_letters=letters,
    )
    sending = asyncio.create_task(_send(publisher, "dead letters"))
    await asyncio.sleep(0.01)
    letters.release()
    await sending
    assert [t for t, _ in letters.sent] == ["dlq"] * 3
    assert events_producer.sent == []
    await publisher.close()
    assert events_producer.stopped
    assert letters.stopped
