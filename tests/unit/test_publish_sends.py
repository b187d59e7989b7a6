"""The publisher waits for what it enqueued, also when a later send() fails: it returns
(and the batch fails, to be retried) only once no send of it is still under way."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
)

from consumer import events, intake
from consumer.errors import BrokerError, PartlyPublishedError, PublishPendingError
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


def _events(n: int = 3, *, text: str = "hello", tag: str = "") -> list[events.OutboundEvent]:
    hook = intake.decode(
        record(webhook([message(f"wamid.{tag}{i}", text=text) for i in range(n)])),
        max_bytes=1 << 20,
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


@pytest.mark.parametrize("how", ["a send fails", "send() raises"])
async def test_a_partly_acknowledged_publish_keeps_its_claims_and_its_retry_sends_the_rest(
    how: str,
) -> None:
    """Some events of a publish are acknowledged and another fails: the publish fails
    as PartlyPublishedError (the caller keeps its outbox claims: sending the rows again
    from elsewhere would land copies), and its retry sends only the failed event."""
    producer = _Held()
    if how == "send() raises":
        real_send = producer.send

        async def send(topic: str, **kwargs: Any) -> asyncio.Future[Any]:
            if len(producer.sent) == 2:
                raise KafkaConnectionError("the producer lost the broker")
            return await real_send(topic, **kwargs)

        producer.send = send  # type: ignore[method-assign]
    publisher = Publisher(producer, dlq_topic="dlq", max_request_bytes=1 << 20, wait_s=1.0)
    batch = _events()
    publishing = asyncio.create_task(publisher.publish(batch))
    await asyncio.sleep(0.01)
    producer.sent[0][1].set_result(_Acked())
    producer.sent[1][1].set_result(_Acked())
    if how == "a send fails":
        producer.sent[2][1].set_exception(KafkaConnectionError("reset"))
    with pytest.raises(PartlyPublishedError):
        await publishing
    assert isinstance(PartlyPublishedError("x"), PublishPendingError)
    sent_before = len(producer.sent)
    producer.send = _Held.send.__get__(producer)  # type: ignore[method-assign]
    retry = asyncio.create_task(publisher.publish(batch))
    await asyncio.sleep(0.01)
    assert len(producer.sent) == sent_before + 1, "the retry sent acknowledged events again"
    producer.release()
    await retry


async def test_a_publish_whose_every_send_failed_is_a_plain_broker_error() -> None:
    """Nothing acknowledged: nothing to keep, the claims go back (BrokerError, not
    PublishPendingError) and the retry sends every event."""
    producer = _Held()
    publisher = Publisher(producer, dlq_topic="dlq", max_request_bytes=1 << 20, wait_s=1.0)
    batch = _events()
    publishing = asyncio.create_task(publisher.publish(batch))
    await asyncio.sleep(0.01)
    producer.fail(KafkaConnectionError("reset"))
    with pytest.raises(BrokerError) as failed:
        await publishing
    assert not isinstance(failed.value, PublishPendingError)
    retry = asyncio.create_task(publisher.publish(batch))
    await asyncio.sleep(0.01)
    assert len(producer.sent) == 6
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


# -- an event the outbound topic refuses as too large ---------------------------------------


class _Topic:
    """A producer to a topic of one partition with a max.message.bytes: the records of one
    publish's send() calls share a batch, refused whole (MessageSizeTooLarge) when one of
    them is above the limit; send_batch() sends a batch of one."""

    def __init__(self, limit: int, log: list[tuple[str, bytes]]) -> None:
        self.limit = limit
        self.log = log  # (how, value) of every record the topic took
        self.batch: list[tuple[bytes, asyncio.Future[Any]]] = []
        self.stopped = False

    async def send(self, topic: str, *, value: bytes, **_kwargs: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self.batch:
            asyncio.get_running_loop().call_soon(self._drain)
        self.batch.append((value, future))
        return future

    def _drain(self) -> None:
        batch, self.batch = self.batch, []
        refused = any(len(v) > self.limit for v, _ in batch)
        for value, future in batch:
            if refused:
                future.set_exception(MessageSizeTooLargeError())
            else:
                self.log.append(("batch", value))
                future.set_result(object())

    async def partitions_for(self, _topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> Any:
        return _OneBatch()

    async def send_batch(self, batch: Any, _topic: str, *, partition: int) -> Any:
        assert partition == 0
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if len(batch.value) > self.limit:
            future.set_exception(MessageSizeTooLargeError())
        else:
            self.log.append(("alone", batch.value))
            future.set_result(object())
        return future

    async def stop(self) -> None:
        self.stopped = True


class _OneBatch:
    value = b""

    def append(self, *, value: bytes, **_kwargs: Any) -> object:
        self.value = value
        return object()

    def close(self) -> None:
        """Nothing more goes in."""


async def test_an_event_too_large_even_alone_is_dead_lettered_and_its_batch_mates_sent() -> None:
    """Three events in one refused batch (the second above the limit): each is sent again
    alone; the small ones are announced that way, the large one goes to the dead-letter
    topic as unstorable with the event as its value, and the publish succeeds, so its
    outbox row is not retried for ever. The producer is renewed after each refusal."""
    taken: list[tuple[str, bytes]] = []
    made: list[_Topic] = []

    async def renew() -> Any:
        made.append(_Topic(600, taken))
        return made[-1]

    letters = _Held("letters")
    counted: list[int] = []
    publisher = Publisher(
        _Topic(600, taken),
        dlq_topic="dlq",
        max_request_bytes=1 << 20,
        dead_letters=letters,
        renew=renew,
        wait_s=1.0,
        on_unpublishable=counted.append,
    )
    small = _events(3)
    big = _events(1, text="x" * 800, tag="big")[0]
    batch = [small[0], big, small[2]]
    publishing = asyncio.create_task(publisher.publish(batch))
    await asyncio.sleep(0.05)
    letters.release()
    await publishing
    assert taken == [("alone", small[0].payload), ("alone", small[2].payload)]
    assert counted == [1]
    assert publisher.renewals == 2, "after the shared batch, and after the event alone"
    assert [t for t, _ in letters.sent] == ["dlq"]


async def test_events_refused_for_another_reason_still_fail_the_publish() -> None:
    """Only "too large" is settled by a dead letter: any other failure fails the publish
    (the batch is retried), as before."""
    first = _Held("first")
    publisher = Publisher(first, dlq_topic="dlq", max_request_bytes=1 << 20, wait_s=1.0)
    publishing = asyncio.create_task(publisher.publish(_events(2)))
    await asyncio.sleep(0.01)
    first.fail(OutOfOrderSequenceNumber())
    with pytest.raises(BrokerError, match="OutOfOrderSequence"):
        await publishing
