"""What every outcome of ``intake.decode`` must be: the storage contract as a checklist.

A record decodes to an :class:`Invalid` with a dead-letter :class:`Reason` (never
``internal_error``: that is intake's last-resort handler catching its own exception) or to
a :class:`Webhook` whose every message satisfies ``consumer/limits.py`` and can be
encoded by the store's JSON serializer and announced by ``events.build``.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import orjson

from consumer import events, limits
from consumer.errors import UnstorableError
from consumer.records import InboundRecord, Invalid, Message, Reason, StatusUpdate, Webhook

OUT_TOPIC = "whatsapp.message_created"
OCCURRED_AT = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
# A dead letter's detail names a field and a limit; it never quotes the record.
MAX_DETAIL_CHARS = 400
# Depth of a message object and of a contact's profile in a body (the body is level 1).
MESSAGE_LEVEL = 8
PROFILE_LEVEL = 9
# Events built per webhook: all of them up to this many messages, else the first ones
# and the largest (a record of thousands of messages is otherwise checked for minutes).
EVENTS_CHECKED = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def depth(value: Any) -> int:
    """Nesting depth of arrays and objects in a decoded value (a scalar is 0)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, level + 1) for child in children)
    return deepest


def problems(record: InboundRecord, outcome: object) -> list[str]:
    """Everything wrong with `outcome` as the decoding of `record` (empty if nothing)."""
    if isinstance(outcome, Invalid):
        return _invalid_problems(record, outcome)
    if isinstance(outcome, Webhook):
        return _webhook_problems(record, outcome)
    return [f"decode returned {type(outcome).__name__}, neither Webhook nor Invalid"]


def _invalid_problems(record: InboundRecord, invalid: Invalid) -> list[str]:
    found = []
    if not isinstance(invalid.reason, Reason):
        found.append(f"reason {invalid.reason!r} is not a Reason")
    if invalid.reason is Reason.INTERNAL_ERROR:
        found.append(f"intake raised inside its own code ({invalid.detail})")
    if invalid.record is not record:
        found.append("the Invalid does not carry the record it was given")
    if not isinstance(invalid.detail, str) or len(invalid.detail) > MAX_DETAIL_CHARS:
        found.append(f"detail is not a short string: {str(invalid.detail)[:80]!r}...")
    return found


def _webhook_problems(record: InboundRecord, hook: Webhook) -> list[str]:
    found = []
    if hook.record is not record:
        found.append("the Webhook does not carry the record it was given")
    if min(hook.errors, hook.ignored_changes) < 0:
        found.append("a negative count")
    for n, update in enumerate(hook.statuses):
        found.extend(f"statuses[{n}]: {p}" for p in _status_problems(record, update))
    for n, message in enumerate(hook.messages):
        found.extend(f"messages[{n}]: {p}" for p in _message_problems(record, message))
    for n in _events_to_build(hook.messages):
        found.extend(f"messages[{n}]: {p}" for p in _event_problems(hook.messages[n]))
    return found


def _identifier(value: object, name: str, max_chars: int, *, optional: bool = False) -> list[str]:
    """A string for a VARCHAR(max_chars) column: at most that long, no control character;
    non-empty unless optional (a contact's wa_id may be missing, or empty)."""
    if optional and (value is None or value == ""):
        return []
    if not isinstance(value, str) or not value:
        return [f"{name} is not a non-empty string: {type(value).__name__}"]
    found = []
    if len(value) > max_chars:
        found.append(f"{name} has {len(value)} characters > {max_chars}")
    bad = _CONTROL.search(value)
    if bad is not None:
        found.append(f"{name} holds control character U+{ord(bad.group()):04X}")
    return found


def _message_problems(record: InboundRecord, m: Message) -> list[str]:
    found = [
        *_identifier(m.key.phone_number_id, "phone_number_id", limits.PHONE_NUMBER_ID_MAX),
        *_identifier(m.key.wamid, "wamid", limits.WAMID_MAX),
        *_identifier(m.sender, "from", limits.SENDER_MAX),
        *_identifier(m.type, "type", limits.MESSAGE_TYPE_MAX),
        *_identifier(m.timestamp, "timestamp", limits.TIMESTAMP_MAX),
        *_identifier(m.contact_wa_id, "contact wa_id", limits.CONTACT_WA_ID_MAX, optional=True),
    ]
    if m.display_phone_number is not None:
        found += _identifier(
            m.display_phone_number, "display_phone_number", limits.DISPLAY_PHONE_NUMBER_MAX
        )
    if m.source is not record:
        found.append("the message does not carry its record")
    if m.contact_name is not None and not isinstance(m.contact_name, str):
        found.append(f"contact_name is {type(m.contact_name).__name__}")
    return found + _json_problems(m)


def _status_problems(record: InboundRecord, u: StatusUpdate) -> list[str]:
    """A status update: its identifiers fit their columns and its lease key, the
    timestamp is Meta's (digits), its raw object and event can be encoded."""
    found = [
        *_identifier(u.key.phone_number_id, "phone_number_id", limits.PHONE_NUMBER_ID_MAX),
        *_identifier(u.key.status_id, "id", limits.WAMID_MAX),
        *_identifier(u.key.status, "status", limits.STATUS_MAX),
        *_identifier(u.recipient, "recipient", limits.RECIPIENT_MAX),
        *_identifier(u.timestamp, "timestamp", limits.TIMESTAMP_MAX),
    ]
    if not (u.timestamp.isascii() and u.timestamp.isdigit()):
        found.append("the timestamp is not Unix seconds")
    if u.source is not record:
        found.append("the status does not carry its record")
    if not isinstance(u.raw, dict) or u.raw.get("id") != u.key.status_id:
        found.append("raw is not the status object")
    try:
        built = events.build_status(u, topic=OUT_TOPIC, occurred_at=OCCURRED_AT)
    except Exception as exc:  # noqa: BLE001 - any escape is the finding
        return [*found, f"events.build_status raised {type(exc).__name__}: {exc}"]
    if len(built.payload) + len(built.key) > limits.MAX_EVENT_BYTES:
        found.append("the status event is larger than MAX_EVENT_BYTES")
    return found


def _json_problems(m: Message) -> list[str]:
    """The raw message and the profile: objects, within the depth limit where they sit,
    encodable by the store's JSON serializer."""
    if not isinstance(m.raw, dict):
        return [f"raw is {type(m.raw).__name__}, not an object"]
    found = []
    envelope = (m.raw.get("id"), m.raw.get("from"), m.raw.get("type"), m.raw.get("timestamp"))
    if envelope != (m.key.wamid, m.sender, m.type, m.timestamp):
        found.append("the identifiers are not the raw message's")
    if MESSAGE_LEVEL - 1 + depth(m.raw) > limits.MAX_JSON_DEPTH:
        found.append(f"raw nests {depth(m.raw)} levels below level {MESSAGE_LEVEL}")
    profile = m.contact_profile
    if profile is not None and not isinstance(profile, dict):
        found.append(f"contact_profile is {type(profile).__name__}")
    elif profile is not None and PROFILE_LEVEL - 1 + depth(profile) > limits.MAX_JSON_DEPTH:
        found.append(f"contact_profile nests {depth(profile)} levels")
    for name, value in (("raw", m.raw), ("contact_profile", profile)):
        try:
            orjson.dumps(value)  # the store's JSON column serializer
        except (TypeError, orjson.JSONEncodeError) as exc:
            found.append(f"the store cannot encode {name}: {exc}")
    return found


def _events_to_build(messages: tuple[Message, ...]) -> list[int]:
    if len(messages) <= EVENTS_CHECKED:
        return list(range(len(messages)))
    largest = max(range(len(messages)), key=lambda n: len(orjson.dumps(messages[n].raw)))
    return sorted({*range(EVENTS_CHECKED - 1), largest})


def _event_problems(m: Message) -> list[str]:
    try:
        built = events.build(m, topic=OUT_TOPIC, occurred_at=OCCURRED_AT)
    except UnstorableError as exc:
        return [f"events.build refused an accepted message: {exc}"]
    except Exception as exc:  # noqa: BLE001 - any escape is the finding
        return [f"events.build raised {type(exc).__name__}: {exc}"]
    found = []
    if len(built.payload) + len(built.key) > limits.MAX_EVENT_BYTES:
        found.append("the event is larger than MAX_EVENT_BYTES")
    payload = orjson.loads(built.payload)
    if payload["message"]["source_id"] != m.key.wamid:
        found.append("the event's message.source_id is not the wamid")
    return found
