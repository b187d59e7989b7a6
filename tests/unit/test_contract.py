"""The storage contract in one place (consumer/limits.py) and everything that must agree
with it: the table definition, the JSON Schemas of both topics, and intake itself at the
boundaries. (The migrations are compared with the table definition on real databases in
tests/integration/test_contract_db.py.)"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from jsonschema import Draft202012Validator

from consumer import events, intake, limits
from consumer.records import Reason, Webhook
from consumer.schema import messages
from consumer.testing import message, record, status, webhook

SCHEMAS = Path(__file__).parents[2] / "schemas"
CONTROL = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"

# (table, column) -> the limit its VARCHAR length must be. (display_phone_number has no
# column: only the event carries it, and raw does not hold it.)
COLUMNS = {
    (messages, "phone_number_id"): limits.PHONE_NUMBER_ID_MAX,
    (messages, "source_id"): limits.WAMID_MAX,
    (messages, "sender"): limits.SENDER_MAX,
    (messages, "message_type"): limits.MESSAGE_TYPE_MAX,
    (messages, "message_timestamp"): limits.TIMESTAMP_MAX,
    (messages, "contact_wa_id"): limits.CONTACT_WA_ID_MAX,
}


def _schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    return loaded


def _at(schema: dict[str, Any], *path: str) -> dict[str, Any]:
    node: Any = schema
    for part in path:
        node = node[part]
    assert isinstance(node, dict)
    return node


WEBHOOK_FIELDS = {
    ("$defs", "metadata", "properties", "phone_number_id"): limits.PHONE_NUMBER_ID_MAX,
    ("$defs", "message", "properties", "id"): limits.WAMID_MAX,
    ("$defs", "message", "properties", "from"): limits.SENDER_MAX,
    ("$defs", "message", "properties", "type"): limits.MESSAGE_TYPE_MAX,
    ("$defs", "message", "properties", "timestamp"): limits.TIMESTAMP_MAX,
    ("$defs", "contact", "properties", "wa_id"): limits.CONTACT_WA_ID_MAX,
    ("$defs", "metadata", "properties", "display_phone_number"): limits.DISPLAY_PHONE_NUMBER_MAX,
    ("$defs", "status", "properties", "id"): limits.WAMID_MAX,
    ("$defs", "status", "properties", "status"): limits.STATUS_MAX,
    ("$defs", "status", "properties", "recipient_id"): limits.RECIPIENT_MAX,
    ("$defs", "status", "else", "properties", "recipient_user_id"): limits.RECIPIENT_MAX,
}
EVENT_FIELDS = {
    ("properties", "phone_number_id"): limits.PHONE_NUMBER_ID_MAX,
    ("$defs", "message", "properties", "source_id"): limits.WAMID_MAX,
    ("$defs", "message", "properties", "from"): limits.SENDER_MAX,
    ("$defs", "message", "properties", "type"): limits.MESSAGE_TYPE_MAX,
    ("$defs", "message", "properties", "timestamp"): limits.TIMESTAMP_MAX,
    ("$defs", "contact", "properties", "wa_id"): limits.CONTACT_WA_ID_MAX,
    ("properties", "display_phone_number"): limits.DISPLAY_PHONE_NUMBER_MAX,
}
STATUS_EVENT_FIELDS = {
    ("properties", "phone_number_id"): limits.PHONE_NUMBER_ID_MAX,
    ("properties", "display_phone_number"): limits.DISPLAY_PHONE_NUMBER_MAX,
    ("$defs", "status", "properties", "id"): limits.WAMID_MAX,
    ("$defs", "status", "properties", "status"): limits.STATUS_MAX,
    ("$defs", "status", "properties", "recipient_id"): limits.RECIPIENT_MAX,
    ("$defs", "status", "else", "properties", "recipient_user_id"): limits.RECIPIENT_MAX,
}
# A status's timestamp: Unix seconds as ASCII digits (intake._unix_seconds).
DIGITS = f"^[0-9]{{1,{limits.TIMESTAMP_MAX}}}$"


@pytest.mark.parametrize(
    ("column", "limit"), [(f"{t.name}.{c}", n) for (t, c), n in COLUMNS.items()]
)
def test_table_definition_has_the_limits(column: str, limit: int) -> None:
    """Each identifier column is a VARCHAR of exactly its limit."""
    _table, name = column.split(".")
    col = messages.c[name]
    assert isinstance(col.type, sa.String)
    assert col.type.length == limit


@pytest.mark.parametrize(
    ("schema", "fields"),
    [
        ("webhook.v1.json", WEBHOOK_FIELDS),
        ("message_created.v1.json", EVENT_FIELDS),
        ("message_status_changed.v1.json", STATUS_EVENT_FIELDS),
    ],
)
def test_schemas_have_the_limits(schema: str, fields: dict[tuple[str, ...], int]) -> None:
    """Both topics' contracts give each identifier its limit and forbid control
    characters in it, and the webhook's states the depth and size limits."""
    loaded = _schema(schema)
    for path, limit in fields.items():
        node = _at(loaded, *path)
        assert node["maxLength"] == limit, path
        assert node["pattern"] == CONTROL, path
    if schema == "webhook.v1.json":
        assert f"nests at most {limits.MAX_JSON_DEPTH} levels" in loaded["description"]
        assert f"more than {limits.MAX_OUTPUT_FACTOR} times its size" in loaded["description"]
        default = f"MAX_RECORD_BYTES ({limits.DEFAULT_MAX_RECORD_BYTES} by default"
        assert default in loaded["description"]


def test_status_timestamps_have_the_limit() -> None:
    """A status's timestamp: in the webhook 1-TIMESTAMP_MAX ASCII digits or an integer
    that has no more digits (within 64 bits, as intake reads integers exactly); in the
    event always the digits, as a string."""
    string, integer = _at(_schema("webhook.v1.json"), "$defs", "status", "properties", "timestamp")[
        "anyOf"
    ]
    assert string == {
        "type": "string",
        "minLength": 1,
        "maxLength": limits.TIMESTAMP_MAX,
        "pattern": DIGITS,
    }
    assert integer == {"type": "integer", "minimum": 0, "maximum": 2**64 - 1}
    assert len(str(integer["maximum"])) <= limits.TIMESTAMP_MAX
    event = _at(_schema("message_status_changed.v1.json"), "$defs", "status", "properties")
    assert event["timestamp"]["type"] == "string"
    assert event["timestamp"]["maxLength"] == limits.TIMESTAMP_MAX
    assert event["timestamp"]["pattern"] == DIGITS


def _body_with(field: str, value: str) -> dict[str, Any]:
    msg = message("wamid.A")
    msg[field] = value
    return webhook([msg])


@pytest.mark.parametrize(
    ("field", "limit"),
    [
        ("id", limits.WAMID_MAX),
        ("from", limits.SENDER_MAX),
        ("type", limits.MESSAGE_TYPE_MAX),
        ("timestamp", limits.TIMESTAMP_MAX),
    ],
)
@pytest.mark.parametrize("extra", [0, 1])
def test_intake_and_the_webhook_schema_agree_at_the_boundary(
    field: str, limit: int, extra: int
) -> None:
    """At the limit both the schema and intake accept; one character over, both refuse
    (intake as invalid_field); and likewise for a control character."""
    validator = Draft202012Validator(_schema("webhook.v1.json"))
    body = _body_with(field, "9" * (limit + extra))
    decoded = intake.decode(record(body), max_bytes=1 << 20)
    assert validator.is_valid(body) == (extra == 0)
    assert isinstance(decoded, Webhook) == (extra == 0)
    with_control = _body_with(field, "9\x1b")
    assert not validator.is_valid(with_control)
    refused = intake.decode(record(with_control), max_bytes=1 << 20)
    assert not isinstance(refused, Webhook)
    assert refused.reason is Reason.INVALID_FIELD


@pytest.mark.parametrize("extra", [0, 1])
def test_intake_and_both_schemas_agree_on_the_display_phone_number(extra: int) -> None:
    """At DISPLAY_PHONE_NUMBER_MAX both the webhook schema and intake accept, and the
    event carries it valid under the event schema; one more character, or a control
    character, and both refuse (intake as invalid_field)."""
    webhook_schema = Draft202012Validator(_schema("webhook.v1.json"))
    event_schema = Draft202012Validator(_schema("message_created.v1.json"))

    def body(display: str) -> dict[str, Any]:
        b = webhook([message("wamid.A")])
        b["entry"][0]["changes"][0]["value"]["metadata"]["display_phone_number"] = display
        return b

    wide = body("9" * (limits.DISPLAY_PHONE_NUMBER_MAX + extra))
    decoded = intake.decode(record(wide), max_bytes=1 << 20)
    assert webhook_schema.is_valid(wide) == (extra == 0)
    assert isinstance(decoded, Webhook) == (extra == 0)
    if isinstance(decoded, Webhook):
        event = events.build(decoded.messages[0], topic="out", occurred_at=dt.datetime.now(dt.UTC))
        assert event_schema.is_valid(json.loads(event.payload))
    else:
        assert decoded.reason is Reason.INVALID_FIELD
    with_control = body("1555\x1b")
    assert not webhook_schema.is_valid(with_control)
    refused = intake.decode(record(with_control), max_bytes=1 << 20)
    assert not isinstance(refused, Webhook)
    assert refused.reason is Reason.INVALID_FIELD


def test_the_webhook_schema_refuses_messages_under_another_field() -> None:
    """As intake does: a change of another field may hold no messages (but an empty
    list, or null); it is valid without them."""
    validator = Draft202012Validator(_schema("webhook.v1.json"))
    held = webhook([message("wamid.A")])
    held["entry"][0]["changes"][0]["field"] = "history"
    assert not validator.is_valid(held)
    assert not isinstance(intake.decode(record(held), max_bytes=1 << 20), Webhook)
    empty: list[object] | None
    for empty in ([], None):
        held["entry"][0]["changes"][0]["value"]["messages"] = empty
        assert validator.is_valid(held)
        assert isinstance(intake.decode(record(held), max_bytes=1 << 20), Webhook)


def _status_body(**fields: object) -> dict[str, Any]:
    """A webhook of one status, its fields changed; recipient_id None: removed."""
    raw: dict[str, Any] = {**status("wamid.A"), **fields}
    if raw["recipient_id"] is None:
        del raw["recipient_id"]
    return webhook(statuses=[raw])


STATUS_BOUNDARIES = {
    "id": limits.WAMID_MAX,
    "status": limits.STATUS_MAX,
    "recipient_id": limits.RECIPIENT_MAX,
    "recipient_user_id": limits.RECIPIENT_MAX,
    "timestamp": limits.TIMESTAMP_MAX,
}


@pytest.mark.parametrize(("field", "limit"), sorted(STATUS_BOUNDARIES.items()))
@pytest.mark.parametrize("extra", [0, 1])
def test_intake_and_both_status_schemas_agree_at_the_boundary(
    field: str, limit: int, extra: int
) -> None:
    """A status field at its limit: the webhook schema and intake accept, and the event
    built from it is valid under message_status_changed.v1.json; one character over, or
    a control character, and both refuse (intake as invalid_field). recipient_user_id is
    checked when it stands alone (no recipient_id)."""
    webhook_schema = Draft202012Validator(_schema("webhook.v1.json"))
    event_schema = Draft202012Validator(_schema("message_status_changed.v1.json"))
    alone = {"recipient_id": None} if field == "recipient_user_id" else {}
    wide = _status_body(**alone, **{field: "9" * (limit + extra)})
    decoded = intake.decode(record(wide), max_bytes=1 << 20)
    assert webhook_schema.is_valid(wide) == (extra == 0)
    assert isinstance(decoded, Webhook) == (extra == 0)
    if isinstance(decoded, Webhook):
        (update,) = decoded.statuses
        event = events.build_status(update, topic="out", occurred_at=dt.datetime.now(dt.UTC))
        assert event_schema.is_valid(json.loads(event.payload))
    else:
        assert decoded.reason is Reason.INVALID_FIELD
    with_control = _status_body(**alone, **{field: "9\x1b"})
    assert not webhook_schema.is_valid(with_control)
    refused = intake.decode(record(with_control), max_bytes=1 << 20)
    assert not isinstance(refused, Webhook)
    assert refused.reason is Reason.INVALID_FIELD


@pytest.mark.parametrize(
    ("timestamp", "valid"),
    [(0, True), (2**64 - 1, True), (2**64, False), (-1, False), (True, False)],
)
def test_intake_and_the_webhook_schema_agree_on_integer_timestamps(
    timestamp: int, valid: bool
) -> None:
    """An integer timestamp from 0 to 2**64-1 (20 digits) is taken by both, and the event
    carries its digits; beyond 64 bits, negative, or a boolean, both refuse."""
    webhook_schema = Draft202012Validator(_schema("webhook.v1.json"))
    event_schema = Draft202012Validator(_schema("message_status_changed.v1.json"))
    body = _status_body(timestamp=timestamp)
    decoded = intake.decode(record(body), max_bytes=1 << 20)
    assert webhook_schema.is_valid(body) == valid
    assert isinstance(decoded, Webhook) == valid
    if isinstance(decoded, Webhook):
        event = events.build_status(
            decoded.statuses[0], topic="out", occurred_at=dt.datetime.now(dt.UTC)
        )
        loaded = json.loads(event.payload)
        assert loaded["status"]["timestamp"] == str(timestamp)
        assert event_schema.is_valid(loaded)
    else:
        assert decoded.reason is Reason.INVALID_FIELD


def test_a_present_recipient_id_decides_in_both() -> None:
    """As in intake, a recipient_id present is the recipient: a bad one is refused even
    beside a good recipient_user_id, and a good one is taken whatever recipient_user_id
    holds."""
    validator = Draft202012Validator(_schema("webhook.v1.json"))
    bad = _status_body(recipient_id="", recipient_user_id="US.1")
    assert not validator.is_valid(bad)
    assert not isinstance(intake.decode(record(bad), max_bytes=1 << 20), Webhook)
    good = _status_body(recipient_user_id="U" * (limits.RECIPIENT_MAX + 1))
    assert validator.is_valid(good)
    assert isinstance(intake.decode(record(good), max_bytes=1 << 20), Webhook)


@pytest.mark.parametrize(
    "max_record_bytes",
    [1, 256 * 1024, limits.DEFAULT_MAX_RECORD_BYTES, limits.MAX_RECORD_BYTES_LIMIT],
)
def test_an_event_of_the_largest_record_fits_a_produce_request(max_record_bytes: int) -> None:
    """At any MAX_RECORD_BYTES the produce request follows: the headroom covers what an
    event adds to the message it copies, and a dead letter keeps the whole record."""
    sizes = limits.sizes(max_record_bytes)
    assert sizes.request_bytes >= max_record_bytes + limits.EVENT_HEADROOM_BYTES
    assert sizes.request_bytes >= limits.MAX_REQUEST_BYTES
    assert sizes.max_event_bytes > max_record_bytes
    assert sizes.max_event_bytes + limits.EVENT_FRAMING_BYTES == sizes.request_bytes


def test_the_unique_index_entry_fits_a_postgresql_btree_page() -> None:
    """(phone_number_id, source_id) at their limits, every character four UTF-8 bytes,
    stay under PostgreSQL's B-tree entry limit (2704 bytes)."""
    assert (limits.PHONE_NUMBER_ID_MAX + limits.WAMID_MAX) * 4 + 64 < 2704
