"""The publisher waits for what it enqueued, also when a later send() fails: it returns
(and the batch fails, to be retried) only once no send of it is still under way."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

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
