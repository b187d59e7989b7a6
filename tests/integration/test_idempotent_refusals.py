"""A batch the broker refuses for good, with the producer idempotent (Apache Kafka).

aiokafka does not reset an idempotent producer's sequence after a refused batch: every
later batch to that partition fails with OutOfOrderSequenceNumber until the producer is
replaced. So the member renews its events producer after a failed batch, and sends dead
letters through a plain producer of their own. Both are proven here with a real member:
an outbound topic whose max.message.bytes is lowered below one event (that event is
dead-lettered as unstorable, the next one goes through without a restart), and a
dead-letter topic below one dead letter (it lands in its minimal form, and the next one
lands too).

Both limits are lowered after the member started: a member reads the topics' limits at
start, refuses a dead-letter topic too small for a record of MAX_RECORD_BYTES, and
dead-letters an event above the outbound topic's limit before storing it
(tests/integration/test_large_webhooks.py). What is left for the broker to refuse is a
limit lowered while members run."""

from __future__ import annotations

import collections
from pathlib import Path

import orjson
import pytest

from consumer.settings import Settings
from consumer.tools import topics
from tests.support import kafka
from tests.support.bodies import text_webhook
from tests.support.config import run_settings
from tests.support.procs import ConsumerGroup, wait_until

pytestmark = pytest.mark.integration

SMALL_LIMIT = 4000  # bytes: below one event of BIG_TEXT, above the others


async def _limit(settings: Settings, topic: str, max_bytes: int) -> None:
    await kafka.alter_topic(
        settings.kafka_bootstrap_servers, topic, {"max.message.bytes": str(max_bytes)}
    )


def _refused(done: list[dict[str, object]]) -> list[dict[str, object]]:
    return [d for d in done if "MessageSizeTooLarge" in str(d.get("failure", ""))]


@pytest.fixture
async def apache_settings(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, postgres_url: str
) -> Settings:
    """Two inbound partitions, one outbound and one dead-letter partition, on Apache
    Kafka; members run with KAFKA_IDEMPOTENCE=on."""
    s = run_settings(kafka_bootstrap, redis_url, key_prefix, postgres_url, kafka_idempotence="on")
    await topics.create_topics(
        kafka_bootstrap, {s.inbound_topic: 2, s.outbound_topic: 1, s.dlq_topic: 1}
    )
    return s


async def test_an_event_refused_as_too_large_is_dead_lettered_and_the_producer_renewed(
    apache_settings: Settings, tmp_path: Path
) -> None:
    """An event above the outbound topic's limit, lowered after the member started (its
    message already stored): the batch is refused, the event is sent once more alone,
    refused again, and dead-lettered as unstorable with the event as the letter's value
    (``dlq.event_topic``); its record is committed while the limit is still low, never
    retried for ever. Each refusal renews the producer: the next event, to the same
    outbound partition, is announced without a restart (without the renewal the
    sequence gap would refuse every later batch). The member then reads the topic's
    limit again: a second large webhook is dead-lettered whole before it is stored (a
    letter `dlq replay` can send again), with no refusal. Once the limit is raised,
    later events go through; every event announced is announced once."""
    s = apache_settings
    group = ConsumerGroup(s, tmp_path)
    try:
        (member,) = group.start(1)
        group.wait_all_assigned([member])
        (line,) = member.named("producer.idempotence")
        assert line["enabled"] is True, line
        await _limit(s, s.outbound_topic, SMALL_LIMIT)

        await kafka.send(s, [(0, text_webhook("111", "wamid.small-1"))])
        wait_until(lambda: group.totals("stored") >= 1, 30, group.logs)
        await kafka.send(s, [(0, text_webhook("111", "wamid.big", text="x" * 8000))])
        await kafka.send(s, [(1, text_webhook("111", "wamid.small-2"))])
        await kafka.wait_committed(s, {0: 2, 1: 1}, timeout_s=60, explain=group.logs)
        wait_until(lambda: bool(member.named("topics.outbound_limit_applied")), 30, group.logs)
        second = text_webhook("111", "wamid.big-2", text="y" * 8000)
        await kafka.send(s, [(0, second)])
        await kafka.wait_committed(s, {0: 3, 1: 1}, timeout_s=60, explain=group.logs)
        await _limit(s, s.outbound_topic, topics.default_max_message_bytes())
        await kafka.send(s, [(1, text_webhook("111", "wamid.small-3"))])
        await kafka.wait_committed(s, {0: 3, 1: 2}, timeout_s=60, explain=group.logs)

        assert sorted(w for _p, w in await kafka.rows(s)) == [
            "wamid.big",
            "wamid.small-1",
            "wamid.small-2",
            "wamid.small-3",
        ]
        events = await kafka.events(s, idle_s=3)
        announced = collections.Counter(e["message"]["source_id"] for e in events)
        assert announced == {"wamid.small-1": 1, "wamid.small-2": 1, "wamid.small-3": 1}
        letter, whole = await topics.read_all(s.kafka_bootstrap_servers, s.dlq_topic, idle_s=3)
        assert whole.value == second, "the second one's record, whole, before storing"
        whole_headers = dict(whole.headers)
        assert whole_headers["dlq.reason"] == b"unstorable"
        assert "dlq.event_topic" not in whole_headers
        assert f"OUTBOUND_TOPIC {s.outbound_topic}".encode() in whole_headers["dlq.detail"]
        headers = dict(letter.headers)
        assert headers["dlq.reason"] == b"unstorable"
        assert headers["dlq.event_topic"] == s.outbound_topic.encode()
        assert b"refused this message_created event" in headers["dlq.detail"]
        assert headers["dlq.source.topic"] == s.inbound_topic.encode()
        assert headers["dlq.source.offset"] == b"1"
        event = orjson.loads(letter.value)
        assert event["message"]["source_id"] == "wamid.big"
        assert headers["event_id"] == event["event_id"].encode()
        assert await kafka.unpublished(s) == 0
        (unpublishable,) = member.named("event.unpublishable")
        assert unpublishable["topic"] == s.outbound_topic
        assert member.proc.poll() is None, group.logs()
        assert not member.named("command.failed"), group.logs()
        renewed = member.named("producer.renewed")
        assert len(renewed) == 2, renewed  # the refused batch, then the event alone
        assert all("MessageSizeTooLarge" in r["cause"] for r in renewed), renewed
    finally:
        group.kill_all()


async def test_a_dead_letter_refused_as_too_large_does_not_block_the_next(
    apache_settings: Settings, tmp_path: Path
) -> None:
    """A dead letter above the dead-letter topic's limit is sent again in its minimal
    form, and a later dead letter lands too: they go through a plain producer, which a
    refused batch does not break (an idempotent one would refuse every later batch).
    The limit is lowered after the start (a member refuses to start on it)."""
    s = apache_settings
    group = ConsumerGroup(s, tmp_path)
    try:
        (member,) = group.start(1)
        group.wait_all_assigned([member])
        await _limit(s, s.dlq_topic, SMALL_LIMIT)
        # A first letter that lands: the broker then holds the producer's sequence for
        # the partition (with none, Kafka 3.9 takes any first sequence, gap or not).
        await kafka.send(s, [(0, b"not json")])
        await kafka.wait_committed(s, {0: 1}, timeout_s=60, explain=group.logs)
        await kafka.send(s, [(0, b"not json " + b"y" * 20_000)])
        await kafka.wait_committed(s, {0: 2}, timeout_s=60, explain=group.logs)
        await kafka.send(s, [(0, b"not json either"), (1, text_webhook("111", "wamid.ok"))])
        await kafka.wait_committed(s, {0: 3, 1: 1}, timeout_s=60, explain=group.logs)

        letters = await topics.read_all(s.kafka_bootstrap_servers, s.dlq_topic, idle_s=3)
        offsets = sorted(int(dict(r.headers)["dlq.source.offset"]) for r in letters)
        assert offsets == [0, 1, 2], offsets
        assert len(member.named("dlq.minimal")) == 1, group.logs()
        assert member.proc.poll() is None, group.logs()
        assert not member.named("producer.renewed"), "dead letters never touch the events producer"
    finally:
        group.kill_all()
