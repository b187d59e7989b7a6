"""A record whose header name is not UTF-8 (Kafka allows any bytes; aiokafka decodes
names as strict UTF-8): with consumer.lenient installed, a fetch returns it and its
neighbours instead of raising forever (which crash-looped every member of the group and
skipped the records before it)."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from consumer import lenient
from consumer.tools import topics

pytestmark = [pytest.mark.integration, pytest.mark.brokers]

# A producer that writes a header name of raw bytes: aiokafka's pure-Python record
# builder (AIOKAFKA_NO_EXTENSIONS=1) encodes names with str.encode, which this str
# subclass answers with bytes that are not UTF-8.
_PRODUCE = r"""
import asyncio, sys
from aiokafka import AIOKafkaProducer

class RawName(str):
    def encode(self, *args, **kwargs):
        return b"\xff\xfe-name"

async def main(bootstrap, topic, compression):
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=False,
        compression_type=compression or None, linger_ms=50,
    )
    await producer.start()
    try:
        sends = [
            await producer.send(topic, b"before", headers=[("ok", b"1")]),
            await producer.send(topic, b"bad", headers=[(RawName("x"), b"v"), ("ok", b"2")]),
            await producer.send(topic, b"after"),
        ]
        for send in sends:
            await send
    finally:
        await producer.stop()

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.parametrize("compression", ["", "gzip"])
async def test_a_header_name_that_is_not_utf8_does_not_stop_the_partition(
    bootstrap: str, compression: str
) -> None:
    """The three records (written in one batch, plain and compressed) come back in
    order; the bad name arrives with \\xNN escapes, the other headers as they were."""
    topic = f"lenient-{compression or 'plain'}-{os.getpid()}"
    await topics.create_topics(bootstrap, {topic: 1})
    env = {**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"}
    producer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PRODUCE, bootstrap, topic, compression, env=env
    )
    assert await producer.wait() == 0
    lenient.install()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        got: list[ConsumerRecord] = []
        while len(got) < 3:
            fetched = await consumer.getmany(timeout_ms=10_000)
            assert fetched, f"nothing fetched after {got}"
            got += [m for batch in fetched.values() for m in batch]
    finally:
        await consumer.stop()
    assert [m.value for m in got] == [b"before", b"bad", b"after"]
    assert [m.offset for m in got] == [0, 1, 2]
    assert list(got[0].headers) == [("ok", b"1")]
    assert list(got[1].headers) == [("\\xff\\xfe-name", b"v"), ("ok", b"2")]
