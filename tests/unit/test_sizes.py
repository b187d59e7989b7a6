"""The sizes that follow from MAX_RECORD_BYTES (Meta's webhook bodies reach 3 MB), and the
start check of the topics' max.message.bytes (consumer/limits.py, consumer/wiring.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from consumer import events, intake, limits, wiring
from consumer.errors import BrokerError, ConfigError, UnstorableError
from consumer.publish import producer_config
from consumer.records import Invalid, Message, Reason, Webhook
from consumer.settings import Settings
from consumer.source import consumer_config
from consumer.testing import message, record, webhook
from tests.support.bodies import large_webhook

MiB = 1024 * 1024


def test_the_default_takes_metas_3_mb_bodies() -> None:
    """3 MiB: Meta's 3 MB in either reading (3,000,000 bytes or 3 MiB)."""
    s = Settings()
    assert s.max_record_bytes == limits.DEFAULT_MAX_RECORD_BYTES == 3 * MiB >= 3_000_000
    sizes = s.sizes
    assert sizes.request_bytes == 3 * MiB + 64 * 1024
    assert sizes.max_event_bytes == sizes.request_bytes - 4096
    assert sizes.inbound_topic_bytes == sizes.dlq_topic_bytes == 3 * MiB + 64 * 1024
    assert sizes.topic_message_bytes == 3 * MiB + 64 * 1024 + 12 == 3211276
    assert sizes.partition_fetch_bytes == 3 * MiB + 64 * 1024
    assert sizes.fetch_max_bytes == 8 * MiB


@pytest.mark.parametrize(
    "max_record_bytes", [1, 100_000, 256 * 1024, 3 * MiB, limits.MAX_RECORD_BYTES_LIMIT]
)
def test_every_size_holds_what_it_must(max_record_bytes: int) -> None:
    """At any allowed MAX_RECORD_BYTES: a dead letter keeps a whole record, an event its
    record with the headroom, a partition's fetch takes a whole record with its key and
    headers, a response at least two; the topics `topics create` makes take all of it,
    never less than Kafka's defaults."""
    z = limits.sizes(max_record_bytes)
    assert z.request_bytes - limits.EVENT_HEADROOM_BYTES >= max_record_bytes  # dead letter
    assert z.max_event_bytes >= max_record_bytes + limits.EVENT_HEADROOM_BYTES - 4096
    assert z.request_bytes >= limits.MAX_REQUEST_BYTES
    assert z.partition_fetch_bytes >= max_record_bytes + limits.RECORD_OVERHEAD_BYTES
    assert z.partition_fetch_bytes >= limits.MAX_REQUEST_BYTES
    assert z.fetch_max_bytes >= 2 * z.partition_fetch_bytes
    assert z.topic_message_bytes >= max(z.request_bytes, z.inbound_topic_bytes, z.dlq_topic_bytes)
    assert z.topic_message_bytes >= 1048588


def test_the_clients_take_their_sizes_from_the_setting() -> None:
    s = Settings(max_record_bytes=5 * MiB)
    consumer = consumer_config(s, client_id="t")
    assert consumer["max_partition_fetch_bytes"] == 5 * MiB + 64 * 1024
    assert consumer["fetch_max_bytes"] == 2 * (5 * MiB + 64 * 1024)
    producer = producer_config(
        "k:9092", client_id="t", request_timeout_s=30, max_request_bytes=s.sizes.request_bytes
    )
    assert producer["max_request_size"] == 5 * MiB + 64 * 1024
    small = consumer_config(Settings(max_record_bytes=256 * 1024), client_id="t")
    assert (small["max_partition_fetch_bytes"], small["fetch_max_bytes"]) == (MiB, 8 * MiB)


def test_max_record_bytes_has_a_ceiling() -> None:
    Settings(max_record_bytes=limits.MAX_RECORD_BYTES_LIMIT)
    with pytest.raises(ConfigError, match=r"MAX_RECORD_BYTES: must be at most 8388608"):
        Settings(max_record_bytes=limits.MAX_RECORD_BYTES_LIMIT + 1)


# -- the start check of the topics -------------------------------------------------------

S = Settings(inbound_topic="in", outbound_topic="out", dlq_topic="dlq")
FITS = {"in": 3211276, "out": 3211276, "dlq": 3211276}


def test_topics_that_take_a_record_of_max_record_bytes_pass() -> None:
    limit = wiring.topics_fit(S, FITS)
    assert limit.max_bytes == S.sizes.max_event_bytes
    assert "MAX_RECORD_BYTES=3145728" in limit.why


@pytest.mark.parametrize(
    ("topic", "setting", "what"),
    [
        ("in", "INBOUND_TOPIC", "a record of MAX_RECORD_BYTES with its key and headers"),
        ("dlq", "DLQ_TOPIC", "the dead letter of a record of MAX_RECORD_BYTES"),
    ],
)
def test_an_inbound_or_dead_letter_topic_too_small_refuses_the_start(
    topic: str, setting: str, what: str
) -> None:
    """Kafka's default 1048588 is below what a 3 MB body (or its dead letter) needs: one
    line naming the setting, the topic, both numbers and the remedy."""
    with pytest.raises(ConfigError) as caught:
        wiring.topics_fit(S, {**FITS, topic: 1048588})
    said = str(caught.value)
    assert caught.value.setting == setting
    assert said.startswith(f"{setting}: {topic} has max.message.bytes=1048588, less than ")
    assert f"the 3211264 {what} (MAX_RECORD_BYTES=3145728) needs" in said
    assert "topics create sets 3211276" in said
    assert "\n" not in said


def test_a_smaller_record_limit_starts_on_kafkas_defaults() -> None:
    s = S.replace(max_record_bytes=256 * 1024)
    default = {"in": 1048588, "out": 1048588, "dlq": 1048588}
    assert wiring.topics_fit(s, default).max_bytes == limits.MAX_EVENT_BYTES


def test_an_outbound_topic_below_the_request_lowers_the_event_limit() -> None:
    limit = wiring.topics_fit(S, {**FITS, "out": 1048588})
    assert limit.max_bytes == 1048588 - limits.EVENT_BATCH_FRAMING_BYTES
    assert "OUTBOUND_TOPIC out (max.message.bytes=1048588" in limit.why


def test_an_event_over_the_limit_is_unstorable_naming_the_limit() -> None:
    msg = message("wamid.big", text="x" * 5000)
    (m,) = _messages(msg)
    limit = wiring.topics_fit(S, {**FITS, "out": 4000})
    with pytest.raises(UnstorableError) as caught:
        events.build(m, topic="out", occurred_at=dt.datetime.now(dt.UTC), limit=limit)
    assert "more than the 3488 OUTBOUND_TOPIC out (max.message.bytes=4000" in str(caught.value)
    (small,) = _messages(message("wamid.small"))
    events.build(small, topic="out", occurred_at=dt.datetime.now(dt.UTC), limit=limit)


def _messages(msg: dict[str, Any]) -> tuple[Message, ...]:
    decoded = intake.decode(record(webhook([msg])), max_bytes=S.max_record_bytes)
    assert isinstance(decoded, Webhook), decoded
    return decoded.messages


async def test_a_broker_that_does_not_say_leaves_the_limits_unchecked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tansu closes the connection on DescribeConfigs: the member starts, its events
    limited by its produce request, and says so (topics.limits_unknown)."""

    async def exist(*_args: object) -> None:
        return None

    async def unknown(*_args: object) -> dict[str, int]:
        raise BrokerError("describing the configs failed") from ConnectionError("closed")

    monkeypatch.setattr(wiring, "require_topics", exist)
    monkeypatch.setattr(wiring, "topic_limits", unknown)
    limit = await wiring.check_topics(S)
    assert limit == wiring.request_event_limit(S)


async def test_the_check_reads_the_three_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Any] = []

    async def exist(*_args: object) -> None:
        return None

    async def found(_bootstrap: str, topics: list[str], timeout_s: float) -> dict[str, int]:
        asked.append((topics, timeout_s))
        return {**FITS, "dlq": 1048588}

    monkeypatch.setattr(wiring, "require_topics", exist)
    monkeypatch.setattr(wiring, "topic_limits", found)
    with pytest.raises(ConfigError, match=r"DLQ_TOPIC: dlq has max\.message\.bytes=1048588"):
        await wiring.check_topics(S)
    assert asked == [(["in", "out", "dlq"], wiring.LIMITS_TIMEOUT_S)]


# -- a record's output at 3 MB ---------------------------------------------------------


def test_a_real_3_mb_body_is_accepted_well_under_the_output_cap() -> None:
    """Meta's largest body (1,000 messages, 3 MB, a contact each) estimates about 10
    MiB of rows and events: three times under MAX_OUTPUT_BYTES. Decoding it and building
    all its events peaks (tracemalloc) at about 13 times its size."""
    import tracemalloc

    body = large_webhook(0)
    tracemalloc.start()
    try:
        decoded = intake.decode(record(body), max_bytes=Settings().max_record_bytes)
        assert isinstance(decoded, Webhook), decoded
        now = dt.datetime.now(dt.UTC)
        built = [events.build(m, topic="out", occurred_at=now) for m in decoded.messages]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(built) == 1000
    estimate = 3 * len(body) + 1000 * limits.MESSAGE_OVERHEAD_BYTES
    assert estimate * 3 < limits.MAX_OUTPUT_BYTES
    # Measured 13.3 times (40 MB): the parsed body, 1,000 events. docs/design.md.
    assert peak < 16 * len(body), f"peak {peak / len(body):.1f} times the record"


def test_a_3_mb_record_may_make_at_most_max_output_bytes() -> None:
    """32 times a 3 MiB record is 96 MiB; the absolute cap refuses what would make more
    than 32 MiB: 30,000 tiny messages (Meta sends at most 1,000) estimate 38 MiB."""
    msgs = [{"from": "1", "id": f"w{n}", "timestamp": "1", "type": "t"} for n in range(30_000)]
    body = webhook(msgs)
    value = record(body).value or b""
    pad = limits.DEFAULT_MAX_RECORD_BYTES - len(value) - 100
    body["entry"][0]["changes"][0]["value"]["padding"] = "p" * pad
    refused = intake.decode(record(body), max_bytes=limits.DEFAULT_MAX_RECORD_BYTES)
    assert isinstance(refused, Invalid), refused
    assert refused.reason is Reason.OVERSIZE
    assert f"more than the {limits.MAX_OUTPUT_BYTES} any record may make" in refused.detail
