"""The message_created event: stable ids, conversation key, payload fields."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer import events
from consumer.records import (
    EVENT_NAMESPACE,
    MESSAGE_NAMESPACE,
    InboundRecord,
    Message,
    MessageKey,
)
from consumer.testing import PNID, SENDER

OCCURRED = dt.datetime(2025, 6, 9, 12, 0, 0, 123456, tzinfo=dt.UTC)
SOURCE = InboundRecord("whatsapp.webhooks", 3, 42, None, b"{}", (), 1_749_416_383_000)


def _message(pnid: str = PNID, wamid: str = "wamid.A", sender: str = SENDER) -> Message:
    raw = {
        "from": sender,
        "id": wamid,
        "timestamp": "1749416383",
        "type": "text",
        "text": {"body": "Does it come in another color?"},
        "context": {"from": "15550783881", "id": "wamid.PREV"},
    }
    return Message(
        key=MessageKey(pnid, wamid),
        sender=sender,
        type="text",
        timestamp="1749416383",
        contact_wa_id=sender,
        contact_name="Sheena Nelson",
        contact_profile={"name": "Sheena Nelson"},
        display_phone_number="15550783881",
        raw=raw,
        source=SOURCE,
    )


def _payload(event: events.OutboundEvent) -> dict[str, Any]:
    body = orjson.loads(event.payload)
    assert isinstance(body, dict)
    return body


def test_event_id_is_deterministic() -> None:
    """The same (phone_number_id, wamid) always gives the same event_id, across builds."""
    first = events.build(_message(), topic="out", occurred_at=OCCURRED)
    later = events.build(_message(), topic="out", occurred_at=OCCURRED + dt.timedelta(hours=1))
    assert first.event_id == later.event_id == MessageKey(PNID, "wamid.A").event_id
    assert uuid.UUID(first.event_id).version == 5


def test_event_id_is_a_fixed_contract() -> None:
    """event_id is uuid5 over a fixed namespace: a value pinned so it never changes."""
    assert MessageKey("1", "w").event_id == str(
        uuid.uuid5(uuid.UUID("6f1d8c53-3f0e-4c1e-9a43-5d0f2b8e7a11"), "1\x1fw")
    )


@pytest.mark.parametrize(
    "other",
    [
        MessageKey(PNID, "wamid.B"),
        MessageKey("999", "wamid.A"),
        MessageKey(PNID + "w", "amid.A"),  # no ambiguity from concatenation
    ],
)
def test_event_id_differs_when_either_part_differs(other: MessageKey) -> None:
    """A different wamid or phone_number_id gives a different event_id and message id."""
    base = MessageKey(PNID, "wamid.A")
    assert base.event_id != other.event_id
    assert base.message_id != other.message_id


def test_message_id_and_event_id_differ() -> None:
    """The stored message's id and its event's id are different uuids."""
    key = MessageKey(PNID, "wamid.A")
    assert key.message_id != key.event_id


def test_key_is_phone_number_id_and_sender() -> None:
    """The Kafka key is b'{phone_number_id}:{from}', so one conversation stays ordered."""
    event = events.build(_message(sender="4477"), topic="out", occurred_at=OCCURRED)
    assert event.key == f"{PNID}:4477".encode()
    assert events.conversation_key("1", "2") == b"1:2"
    assert event.topic == "out"


def test_payload_carries_envelope_fields() -> None:
    """The payload has the event envelope: type, version, ids, number, contact, source."""
    m = _message()
    event = events.build(m, topic="out", occurred_at=OCCURRED)
    body = _payload(event)
    assert body["event"] == "message_created"
    assert body["schema_version"] == 1
    assert body["event_id"] == event.event_id
    assert body["phone_number_id"] == PNID
    assert body["display_phone_number"] == "15550783881"
    assert body["contact"] == {"wa_id": SENDER, "name": "Sheena Nelson"}
    assert body["source"] == {"topic": "whatsapp.webhooks", "partition": 3, "offset": 42}
    msg = body["message"]
    assert msg["id"] == m.key.message_id
    assert msg["source_id"] == "wamid.A"
    assert msg["from"] == SENDER
    assert msg["type"] == "text"
    assert msg["timestamp"] == "1749416383"


def test_payload_carries_content_fields() -> None:
    """Every non-envelope field of Meta's message (text body, context) is copied."""
    body = _payload(events.build(_message(), topic="out", occurred_at=OCCURRED))
    assert body["message"]["text"] == {"body": "Does it come in another color?"}
    assert body["message"]["context"] == {"from": "15550783881", "id": "wamid.PREV"}
    assert body["message"]["id"] != "wamid.A"  # the wamid moves to source_id


@pytest.mark.parametrize(
    "occurred_at",
    [
        OCCURRED,
        OCCURRED.replace(microsecond=0),
        OCCURRED.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30))),
    ],
)
def test_occurred_at_is_utc_with_z(occurred_at: dt.datetime) -> None:
    """occurred_at is ISO 8601 in UTC, ending in 'Z', whatever the input's zone."""
    body = _payload(events.build(_message(), topic="out", occurred_at=occurred_at))
    stamp = body["occurred_at"]
    assert stamp.endswith("Z")
    assert "+" not in stamp
    assert dt.datetime.fromisoformat(stamp) == occurred_at


def test_payload_is_identical_for_identical_input() -> None:
    """Building twice with the same inputs gives byte-identical payloads (outbox replay)."""
    a = events.build(_message(), topic="out", occurred_at=OCCURRED)
    b = events.build(_message(), topic="out", occurred_at=OCCURRED)
    assert a == b


@given(
    pnid=st.text(min_size=1, max_size=70).filter(lambda s: "\x1f" not in s),
    wamid=st.text(min_size=1, max_size=600),
)
def test_ids_are_exactly_uuid5(pnid: str, wamid: str) -> None:
    """The ids are computed without uuid.UUID objects, and are exactly what uuid.uuid5
    gives for the same name (any text, four-byte characters and separators included)."""
    key = MessageKey(pnid, wamid)
    name = f"{pnid}\x1f{wamid}"
    assert key.event_id == str(uuid.uuid5(EVENT_NAMESPACE, name))
    assert key.message_id == str(uuid.uuid5(MESSAGE_NAMESPACE, name))
