"""The outbound events: ``message_created`` (contract: schemas/message_created.v1.json)
and ``message_status_changed`` (schemas/message_status_changed.v1.json)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import orjson

from consumer import limits, statuses
from consumer.errors import UnstorableError
from consumer.records import InboundRecord, Message, StatusUpdate

EVENT_TYPE = "message_created"
SCHEMA_VERSION = 1
# Fields of Meta's message object that the event carries under their own names;
# everything else of the raw message (text, image, reaction, context, errors...) is
# copied alongside as the content.
_ENVELOPE_FIELDS = frozenset({"id", "from", "timestamp", "type"})
STATUS_EVENT_TYPE = "message_status_changed"
# An encoded status event starts so (orjson keeps the keys in the order written).
_STATUS_PREFIX = b'{"event":"message_status_changed"'


@dataclass(frozen=True, slots=True)
class OutboundEvent:
    """An event ready to publish: what the outbox row holds, byte for byte."""

    event_id: str
    topic: str
    key: bytes
    payload: bytes


def conversation_key(phone_number_id: str, sender: str) -> bytes:
    """Kafka key: one contact's events of one number stay in order on one partition.

    ``{phone_number_id}:{from}``; Meta's phone_number_ids are numeric, so the first ``:``
    splits it. A phone_number_id holding a ``:`` would make two conversations share a key
    (``("1:2", "3")`` and ``("1", "2:3")``), so it takes a form no plain key can have:
    ``:{len}:{phone_number_id}:{from}`` (docs/design.md, rule 11).
    """
    if ":" in phone_number_id:
        return f":{len(phone_number_id)}:{phone_number_id}:{sender}".encode()
    return f"{phone_number_id}:{sender}".encode()


@dataclass(frozen=True, slots=True)
class EventLimit:
    """The largest event (key and value) a member sends, and what sets it: its produce
    request (MAX_RECORD_BYTES), or OUTBOUND_TOPIC's max.message.bytes as read at start
    when that is less (docs/design.md, "Events the outbound topic cannot take")."""

    max_bytes: int = limits.MAX_EVENT_BYTES
    why: str = "a produce request"


REQUEST_LIMIT = EventLimit()
"""The limit of the smallest produce request (tests, tools; a member sets its own)."""


def build(
    message: Message,
    *,
    topic: str,
    occurred_at: dt.datetime,
    limit: EventLimit = REQUEST_LIMIT,
) -> OutboundEvent:
    """The event for a message that is being stored now; UnstorableError (before
    anything is stored) if it is larger than `limit`."""
    key = message.key
    content = {k: v for k, v in message.raw.items() if k not in _ENVELOPE_FIELDS}
    body: dict[str, Any] = {
        "event": EVENT_TYPE,
        "schema_version": SCHEMA_VERSION,
        "event_id": key.event_id,
        "occurred_at": _rfc3339(occurred_at),
        "phone_number_id": key.phone_number_id,
        "display_phone_number": message.display_phone_number,
        "message": {
            **content,
            "id": key.message_id,
            "source_id": key.wamid,
            "from": message.sender,
            "type": message.type,
            "timestamp": message.timestamp,
        },
        "contact": {"wa_id": message.contact_wa_id, "name": message.contact_name},
        "source": _source(message.source),
    }
    event_key = conversation_key(key.phone_number_id, message.sender)
    return _encoded(key.event_id, body, event_key, topic, limit)


def build_status(
    update: StatusUpdate,
    *,
    topic: str,
    occurred_at: dt.datetime,
    limit: EventLimit = REQUEST_LIMIT,
) -> OutboundEvent:
    """The event for a status update, should it move its message's state forward:
    Meta's status object as sent (recipient, group fields, errors, pricing,
    conversation, biz_opaque_callback_data...), its word, message id and timestamp
    under their own names. Keyed by the conversation of the recipient, so a contact's
    message and status events share a partition. UnstorableError if larger than
    `limit`."""
    key = update.key
    content = {k: v for k, v in update.raw.items() if k not in _STATUS_ENVELOPE_FIELDS}
    body: dict[str, Any] = {
        "event": STATUS_EVENT_TYPE,
        "schema_version": SCHEMA_VERSION,
        "event_id": key.event_id,
        "occurred_at": _rfc3339(occurred_at),
        "phone_number_id": key.phone_number_id,
        "display_phone_number": update.display_phone_number,
        "status": {
            **content,
            "id": key.status_id,
            "status": key.status,
            "timestamp": update.timestamp,
        },
        "source": _source(update.source),
    }
    event_key = conversation_key(key.phone_number_id, update.recipient)
    return _encoded(key.event_id, body, event_key, topic, limit)


_STATUS_ENVELOPE_FIELDS = frozenset({"id", "status", "timestamp"})


def status_order(event: OutboundEvent) -> tuple[str, str, int] | None:
    """For a status event of a known word: (phone_number_id, message id, rank), the
    place its announcement must keep among the message's other status events; None
    for any other event. Read back from the payload (the stdlib parser: content may hold
    numbers orjson would not read)."""
    if not event.payload.startswith(_STATUS_PREFIX):
        return None
    body = json.loads(event.payload)
    status = body["status"]
    rank = statuses.rank(status["status"])
    return None if rank is None else (body["phone_number_id"], status["id"], rank)


def _source(record: InboundRecord) -> dict[str, Any]:
    """The coordinates of the inbound record an event's item was first stored from."""
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def _rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _encoded(
    event_id: str, body: dict[str, Any], event_key: bytes, topic: str, limit: EventLimit
) -> OutboundEvent:
    try:
        # A copy of its own length: orjson (3.12 on) hands back its whole buffer, at least
        # 4 KiB and about 12 times a long string's length, and an event lives until its
        # publish (a 600-byte event held 4 KiB; 2,000 of a 180 KB name's, 2 GB).
        payload = bytes(memoryview(orjson.dumps(body)))
    except (TypeError, orjson.JSONEncodeError) as exc:
        # Intake's limits make this unreachable; if it happens, it is this record's data.
        raise UnstorableError(f"the event cannot be encoded: {exc}") from exc
    size = len(payload) + len(event_key)
    if size > limit.max_bytes:
        raise UnstorableError(
            f"the event would be {size} bytes, more than the {limit.max_bytes} {limit.why} holds"
        )
    return OutboundEvent(event_id=event_id, topic=topic, key=event_key, payload=payload)
