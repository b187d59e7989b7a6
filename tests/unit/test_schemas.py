"""The JSON Schemas in schemas/ match what the consumer accepts and what it publishes."""

from __future__ import annotations

import copy
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from consumer import events, intake, testing
from consumer.records import (
    STATUS_EVENT_NAMESPACE,
    InboundRecord,
    Message,
    Reason,
    StatusUpdate,
    Webhook,
)

SCHEMAS = Path(__file__).parents[2] / "schemas"
FIXTURES = Path(__file__).parents[1] / "fixtures" / "webhooks"
FIXTURE_FILES = sorted(FIXTURES.glob("*.json"))
OCCURRED_AT = dt.datetime(2025, 6, 9, 12, 0, 0, 123456, tzinfo=dt.UTC)


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


@pytest.fixture(scope="module")
def webhook_schema() -> Draft202012Validator:
    return _validator("webhook.v1.json")


@pytest.fixture(scope="module")
def event_schema() -> Draft202012Validator:
    return _validator("message_created.v1.json")


def _record(body: bytes, *, partition: int = 3, offset: int = 42) -> InboundRecord:
    return InboundRecord(
        topic="whatsapp.webhooks",
        partition=partition,
        offset=offset,
        key=None,
        value=body,
        headers=(),
        timestamp_ms=1_749_416_383_000,
    )


def _messages(path: Path) -> tuple[Message, ...]:
    decoded = intake.decode(_record(path.read_bytes()), max_bytes=256 * 1024)
    assert isinstance(decoded, Webhook), decoded
    return decoded.messages


def _event(message: Message) -> dict[str, Any]:
    built = events.build(message, topic="whatsapp.message_created", occurred_at=OCCURRED_AT)
    body = orjson.loads(built.payload)
    assert isinstance(body, dict)
    return body


def _errors(validator: Draft202012Validator, instance: object) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]


@pytest.fixture
def text_event() -> dict[str, Any]:
    (message,) = _messages(FIXTURES / "text.json")
    return _event(message)


SCHEMA_FILES = ("webhook.v1.json", "message_created.v1.json", "message_status_changed.v1.json")


def test_schema_files_are_valid_draft_2020_12() -> None:
    """Every schema file is itself a valid draft 2020-12 schema with an $id and docs."""
    for name in SCHEMA_FILES:
        schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"]
        assert schema["title"]
        assert schema["description"]


def test_fixtures_exist() -> None:
    """The fixture directory is found, so the parametrized tests below are not vacuous."""
    assert len(FIXTURE_FILES) >= 5


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_fixture_webhook_validates(path: Path, webhook_schema: Draft202012Validator) -> None:
    """Every sample webhook body in tests/fixtures/webhooks conforms to webhook.v1.json."""
    body = json.loads(path.read_text(encoding="utf-8"))
    assert _errors(webhook_schema, body) == []


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_fixture_is_a_usable_webhook(path: Path) -> None:
    """Every fixture the schema accepts is also accepted by intake.decode (no DLQ)."""
    decoded = intake.decode(_record(path.read_bytes()), max_bytes=256 * 1024)
    assert isinstance(decoded, Webhook), decoded


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_events_from_fixture_validate(path: Path, event_schema: Draft202012Validator) -> None:
    """Each event events.build makes from a decoded fixture message conforms to
    message_created.v1.json (with format checking: uuid, date-time)."""
    for message in _messages(path):
        event = _event(message)
        assert _errors(event_schema, event) == []
        assert event["message"]["source_id"] == message.key.wamid


def test_fixtures_yield_events_of_several_types() -> None:
    """The fixtures exercise text, image and reaction content, so the event check covers
    content carried as additional properties of `message`."""
    seen = {m.type for path in FIXTURE_FILES for m in _messages(path)}
    assert {"text", "image", "reaction"} <= seen


def test_event_content_fields_are_carried(text_event: dict[str, Any]) -> None:
    """The event copies the message content (here `text`) next to the envelope fields."""
    assert text_event["message"]["text"] == {"body": "Does it come in another color?"}
    assert text_event["occurred_at"] == "2025-06-09T12:00:00.123456Z"
    assert text_event["source"] == {"topic": "whatsapp.webhooks", "partition": 3, "offset": 42}


def test_event_id_is_stable_across_republish() -> None:
    """Building the event twice for the same (phone_number_id, wamid), even from another
    inbound record, gives the same event_id, message id and Kafka key, as the schema says."""
    body = (FIXTURES / "text.json").read_bytes()
    first = intake.decode(_record(body, partition=0, offset=1), max_bytes=256 * 1024)
    again = intake.decode(_record(body, partition=5, offset=99), max_bytes=256 * 1024)
    assert isinstance(first, Webhook)
    assert isinstance(again, Webhook)
    later = OCCURRED_AT + dt.timedelta(hours=1)
    a = events.build(first.messages[0], topic="out", occurred_at=OCCURRED_AT)
    b = events.build(again.messages[0], topic="out", occurred_at=later)
    assert a.event_id == b.event_id
    assert orjson.loads(a.payload)["message"]["id"] == orjson.loads(b.payload)["message"]["id"]
    assert a.key == b.key == b"106540352242922:16505551234"


def test_unknown_top_level_field_is_allowed(
    text_event: dict[str, Any], event_schema: Draft202012Validator
) -> None:
    """An event with an extra top-level field still validates (forward compatibility)."""
    text_event["trace_id"] = "abc"
    assert _errors(event_schema, text_event) == []


def _without(event: dict[str, Any], key: str) -> dict[str, Any]:
    broken = copy.deepcopy(event)
    del broken[key]
    return broken


def _with(event: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    broken = copy.deepcopy(event)
    target = broken
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return broken


BROKEN_EVENTS = {
    "missing_event_id": lambda e: _without(e, "event_id"),
    "missing_message": lambda e: _without(e, "message"),
    "missing_contact": lambda e: _without(e, "contact"),
    "wrong_event": lambda e: _with(e, ("event",), "message_updated"),
    "wrong_schema_version": lambda e: _with(e, ("schema_version",), 2),
    "event_id_not_uuid": lambda e: _with(e, ("event_id",), "wamid.HBgLMTY1"),
    "occurred_at_with_offset": lambda e: _with(e, ("occurred_at",), "2025-06-09T12:00:00+00:00"),
    "occurred_at_not_a_date": lambda e: _with(e, ("occurred_at",), "yesterday"),
    "display_phone_number_int": lambda e: _with(e, ("display_phone_number",), 15550783881),
    "message_without_source_id": lambda e: _with(
        e, ("message",), {k: v for k, v in e["message"].items() if k != "source_id"}
    ),
    "negative_offset": lambda e: _with(e, ("source", "offset"), -1),
    "partition_as_string": lambda e: _with(e, ("source", "partition"), "3"),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN_EVENTS))
def test_broken_event_fails_validation(
    breakage: str, text_event: dict[str, Any], event_schema: Draft202012Validator
) -> None:
    """A broken event (missing required field, wrong constant, malformed id or time,
    wrong type) is rejected by message_created.v1.json."""
    assert _errors(event_schema, text_event) == []
    broken = BROKEN_EVENTS[breakage](text_event)
    assert _errors(event_schema, broken) != []


def _text_body() -> dict[str, Any]:
    body = json.loads((FIXTURES / "text.json").read_text(encoding="utf-8"))
    assert isinstance(body, dict)
    return body


def _change_value(body: dict[str, Any]) -> dict[str, Any]:
    value = body["entry"][0]["changes"][0]["value"]
    assert isinstance(value, dict)
    return value


def _bad_object(body: dict[str, Any]) -> None:
    body["object"] = "page"


def _empty_entry(body: dict[str, Any]) -> None:
    body["entry"] = []


def _no_phone_number_id(body: dict[str, Any]) -> None:
    del _change_value(body)["metadata"]["phone_number_id"]


def _message_without_id(body: dict[str, Any]) -> None:
    del _change_value(body)["messages"][0]["id"]


def _message_with_empty_id(body: dict[str, Any]) -> None:
    _change_value(body)["messages"][0]["id"] = ""


def _message_without_from(body: dict[str, Any]) -> None:
    del _change_value(body)["messages"][0]["from"]


BROKEN_WEBHOOKS = {
    "object_not_waba": _bad_object,
    "empty_entry": _empty_entry,
    "no_phone_number_id": _no_phone_number_id,
    "message_without_id": _message_without_id,
    "message_with_empty_id": _message_with_empty_id,
    "message_without_from": _message_without_from,
}


@pytest.mark.parametrize("breakage", sorted(BROKEN_WEBHOOKS))
def test_broken_webhook_is_rejected_by_schema_and_intake(
    breakage: str, webhook_schema: Draft202012Validator
) -> None:
    """A webhook the consumer dead-letters is also invalid under webhook.v1.json, so the
    schema does not promise more than intake.decode accepts."""
    body = _text_body()
    BROKEN_WEBHOOKS[breakage](body)
    assert _errors(webhook_schema, body) != []
    decoded = intake.decode(_record(orjson.dumps(body)), max_bytes=256 * 1024)
    assert not isinstance(decoded, Webhook), decoded


def test_non_message_change_needs_no_metadata(webhook_schema: Draft202012Validator) -> None:
    """A change of another field (not "messages") is ignored by the consumer and needs no
    metadata in the schema either; the webhook is still usable."""
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "account_update", "value": {"event": "x"}}]}],
    }
    assert _errors(webhook_schema, body) == []
    decoded = intake.decode(_record(orjson.dumps(body)), max_bytes=256 * 1024)
    assert isinstance(decoded, Webhook)
    assert decoded.messages == ()
    assert decoded.ignored_changes == 1


def test_every_schema_file_is_checked_and_listed() -> None:
    """The schema files are exactly those checked here, and schemas/README.md lists each."""
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(SCHEMA_FILES)
    readme = (SCHEMAS / "README.md").read_text(encoding="utf-8")
    for name in SCHEMA_FILES:
        assert f"| `{name}` |" in readme, name


# -- message_status_changed -----------------------------------------------------------

STATUS_TOPIC = "whatsapp.events"
# The samples holding statuses, and how many each holds.
STATUS_FIXTURES = {
    "status_sent.json": 1,
    "status_failed.json": 1,
    "constructed_batch_multi_message.json": 1,
}


@pytest.fixture(scope="module")
def status_schema() -> Draft202012Validator:
    return _validator("message_status_changed.v1.json")


def _decoded(body: bytes | dict[str, Any]) -> Webhook:
    value = body if isinstance(body, bytes) else orjson.dumps(body)
    decoded = intake.decode(testing.record(value), max_bytes=1 << 20)
    assert isinstance(decoded, Webhook), decoded
    return decoded


def _status_event(update: StatusUpdate) -> tuple[events.OutboundEvent, dict[str, Any]]:
    built = events.build_status(update, topic=STATUS_TOPIC, occurred_at=OCCURRED_AT)
    body = json.loads(built.payload)  # the stdlib parser, as a consumer would
    assert isinstance(body, dict)
    return built, body


def _only_status_event(status: dict[str, Any]) -> tuple[events.OutboundEvent, dict[str, Any]]:
    (update,) = _decoded(testing.webhook(statuses=[status])).statuses
    return _status_event(update)


def test_status_fixtures_hold_statuses() -> None:
    """Every sample named as holding statuses decodes to that many, so the event checks
    below are not vacuous; no other sample holds one."""
    for path in FIXTURE_FILES:
        found = len(_decoded(path.read_bytes()).statuses)
        assert found == STATUS_FIXTURES.get(path.name, 0), path.name


@pytest.mark.parametrize("name", sorted(STATUS_FIXTURES))
def test_status_events_from_fixture_validate(
    name: str, status_schema: Draft202012Validator
) -> None:
    """Each event events.build_status makes from a sample's statuses conforms to
    message_status_changed.v1.json (with format checking: uuid, date-time), and says
    what the schema says it does: Meta's status object as sent, the key, the event_id."""
    raw = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    for update in _decoded((FIXTURES / name).read_bytes()).statuses:
        built, event = _status_event(update)
        assert _errors(status_schema, event) == []
        sent = next(
            s
            for entry in raw["entry"]
            for change in entry["changes"]
            for s in change["value"].get("statuses", [])
            if s["id"] == update.key.status_id
        )
        assert event["status"] == sent  # every field copied; timestamps are strings here
        assert event["event"] == "message_status_changed"
        assert event["phone_number_id"] == testing.PNID
        assert event["display_phone_number"] == "15550783881"
        assert event["occurred_at"] == "2025-06-09T12:00:00.123456Z"
        assert event["source"] == {"topic": testing.TOPIC, "partition": 0, "offset": 0}
        assert built.key == f"{testing.PNID}:{sent['recipient_id']}".encode()
        assert built.event_id == event["event_id"]


def test_status_event_of_a_failed_status_carries_its_errors() -> None:
    """A failed status's errors reach the event as sent (numbers included)."""
    (update,) = _decoded((FIXTURES / "status_failed.json").read_bytes()).statuses
    _, event = _status_event(update)
    assert event["status"]["status"] == "failed"
    assert event["status"]["errors"][0]["code"] == 131049


def test_status_event_id_is_the_documented_uuid5() -> None:
    """event_id is uuid5, in the namespace the schema names, of phone_number_id, id and
    the word joined by U+001F; the same status from another record has the same id."""
    schema = json.loads((SCHEMAS / "message_status_changed.v1.json").read_text())
    assert str(STATUS_EVENT_NAMESPACE) in schema["properties"]["event_id"]["description"]
    body = (FIXTURES / "status_sent.json").read_bytes()
    (first,) = _decoded(body).statuses
    again = intake.decode(testing.record(body, partition=5, offset=99), max_bytes=1 << 20)
    assert isinstance(again, Webhook)
    a, _ = _status_event(first)
    later = OCCURRED_AT + dt.timedelta(hours=1)
    b = events.build_status(again.statuses[0], topic=STATUS_TOPIC, occurred_at=later)
    name = f"{testing.PNID}\x1f{first.key.status_id}\x1fsent"
    assert a.event_id == b.event_id == str(uuid.uuid5(STATUS_EVENT_NAMESPACE, name))
    assert a.key == b.key


def test_status_event_shares_the_key_of_the_contacts_message_events() -> None:
    """A contact's message_created and message_status_changed events have one key, so
    they share a partition; and a phone_number_id holding ":" gets the long form."""
    hook = _decoded((FIXTURES / "constructed_batch_multi_message.json").read_bytes())
    message_event = events.build(hook.messages[0], topic=STATUS_TOPIC, occurred_at=OCCURRED_AT)
    status_event, _ = _status_event(hook.statuses[0])
    assert status_event.key == message_event.key == f"{testing.PNID}:{testing.SENDER}".encode()
    odd = testing.webhook(statuses=[testing.status("wamid.A")], pnid="1:2")
    built, _ = _status_event(_decoded(odd).statuses[0])
    assert built.key == f":3:1:2:{testing.SENDER}".encode()


def test_status_with_an_integer_timestamp_validates(
    webhook_schema: Draft202012Validator, status_schema: Draft202012Validator
) -> None:
    """Meta's timestamp as an integer: both schemas accept, and the event carries its
    digits as a string."""
    status = {**testing.status("wamid.A"), "timestamp": 1750030073}
    assert _errors(webhook_schema, testing.webhook(statuses=[status])) == []
    _, event = _only_status_event(status)
    assert event["status"]["timestamp"] == "1750030073"
    assert _errors(status_schema, event) == []
    with_string = copy.deepcopy(event)
    with_string["status"]["timestamp"] = 1750030073
    assert _errors(status_schema, with_string) != []  # the event's is always a string


def test_status_with_an_unknown_word_validates(
    webhook_schema: Draft202012Validator, status_schema: Draft202012Validator
) -> None:
    """A word Meta may add is accepted by both schemas and announced as sent."""
    status = testing.status("wamid.A", "deleted_for_everyone")
    assert _errors(webhook_schema, testing.webhook(statuses=[status])) == []
    _, event = _only_status_event(status)
    assert event["status"]["status"] == "deleted_for_everyone"
    assert _errors(status_schema, event) == []


GROUP_ID = "Y2FwaV9ncm91cDoxNzA1NTU1MDEzOToxMjAzNjM0MDQ2OTQyMzM4MjAZD"


def test_status_with_group_fields_validates(
    webhook_schema: Draft202012Validator, status_schema: Draft202012Validator
) -> None:
    """A status of a message to a group (recipient_type, recipient_participant_id,
    pricing, biz_opaque_callback_data) validates in both schemas, its group fields
    copied, and is keyed by the recipient_id it names."""
    status = {
        **testing.status("wamid.G", "read", recipient=GROUP_ID),
        "recipient_type": "group",
        "recipient_participant_id": "16505550000",
        "biz_opaque_callback_data": "campaign-7",
        "pricing": {"billable": True, "pricing_model": "PMP", "category": "utility"},
    }
    assert _errors(webhook_schema, testing.webhook(statuses=[status])) == []
    built, event = _only_status_event(status)
    assert event["status"] == status
    assert _errors(status_schema, event) == []
    assert built.key == f"{testing.PNID}:{GROUP_ID}".encode()


def test_status_with_only_a_recipient_user_id_validates(
    webhook_schema: Draft202012Validator, status_schema: Draft202012Validator
) -> None:
    """A status naming only recipient_user_id is valid in both schemas, keyed by it."""
    status = {"id": "wamid.U", "status": "delivered", "timestamp": "1", "recipient_user_id": "US.1"}
    assert _errors(webhook_schema, testing.webhook(statuses=[status])) == []
    built, event = _only_status_event(status)
    assert _errors(status_schema, event) == []
    assert built.key == f"{testing.PNID}:US.1".encode()


@pytest.fixture
def sent_event() -> dict[str, Any]:
    (update,) = _decoded((FIXTURES / "status_sent.json").read_bytes()).statuses
    return _status_event(update)[1]


def _status_without(event: dict[str, Any], *keys: str) -> dict[str, Any]:
    return _with(event, ("status",), {k: v for k, v in event["status"].items() if k not in keys})


BROKEN_STATUS_EVENTS = {
    "missing_event_id": lambda e: _without(e, "event_id"),
    "missing_status": lambda e: _without(e, "status"),
    "missing_source": lambda e: _without(e, "source"),
    "missing_display_phone_number": lambda e: _without(e, "display_phone_number"),
    "wrong_event": lambda e: _with(e, ("event",), "message_created"),
    "wrong_schema_version": lambda e: _with(e, ("schema_version",), 2),
    "event_id_not_uuid": lambda e: _with(e, ("event_id",), "wamid.HBgLMTY1"),
    "occurred_at_with_offset": lambda e: _with(e, ("occurred_at",), "2025-06-09T12:00:00+00:00"),
    "status_without_id": lambda e: _status_without(e, "id"),
    "status_without_word": lambda e: _status_without(e, "status"),
    "status_without_timestamp": lambda e: _status_without(e, "timestamp"),
    "status_without_recipient": lambda e: _status_without(e, "recipient_id"),
    "status_word_empty": lambda e: _with(e, ("status", "status"), ""),
    "status_word_too_long": lambda e: _with(e, ("status", "status"), "x" * 33),
    "status_id_with_control": lambda e: _with(e, ("status", "id"), "wamid.\x00"),
    "timestamp_not_digits": lambda e: _with(e, ("status", "timestamp"), "2025-06-09"),
    "timestamp_too_long": lambda e: _with(e, ("status", "timestamp"), "1" * 21),
    "recipient_id_null": lambda e: _with(e, ("status", "recipient_id"), None),
    "negative_partition": lambda e: _with(e, ("source", "partition"), -1),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN_STATUS_EVENTS))
def test_broken_status_event_fails_validation(
    breakage: str, sent_event: dict[str, Any], status_schema: Draft202012Validator
) -> None:
    """A broken status event (missing required field or status field, wrong constant,
    malformed id, time or timestamp, no recipient) is rejected by the schema."""
    assert _errors(status_schema, sent_event) == []
    broken = BROKEN_STATUS_EVENTS[breakage](sent_event)
    assert _errors(status_schema, broken) != []


def test_status_event_allows_unknown_fields(
    sent_event: dict[str, Any], status_schema: Draft202012Validator
) -> None:
    """Extra fields at the top and in status validate (forward compatibility)."""
    sent_event["trace_id"] = "abc"
    sent_event["status"]["new_meta_field"] = {"x": [1, 2]}
    assert _errors(status_schema, sent_event) == []


@pytest.mark.parametrize("name", ["status_sent.json", "status_failed.json"])
def test_webhook_schema_accepts_the_status_samples(
    name: str, webhook_schema: Draft202012Validator
) -> None:
    """The status samples conform to webhook.v1.json, their statuses checked as items
    (the schema does describe them: a status item without id would be refused)."""
    body = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    assert _errors(webhook_schema, body) == []
    del body["entry"][0]["changes"][0]["value"]["statuses"][0]["id"]
    assert _errors(webhook_schema, body) != []


GONE = object()
"""In a change of a status: remove the field."""


def _status_body(**change: object) -> dict[str, Any]:
    """status_sent.json with its status changed: a value GONE removes the field."""
    body: dict[str, Any] = json.loads((FIXTURES / "status_sent.json").read_text("utf-8"))
    status = _change_value(body)["statuses"][0]
    for name, value in change.items():
        if value is GONE:
            del status[name]
        else:
            status[name] = value
    return body


BROKEN_STATUSES: dict[str, tuple[dict[str, object], Reason]] = {
    "without_id": ({"id": GONE}, Reason.INVALID_FIELD),
    "without_status": ({"status": GONE}, Reason.INVALID_FIELD),
    "without_timestamp": ({"timestamp": GONE}, Reason.INVALID_FIELD),
    "without_recipient": ({"recipient_id": GONE}, Reason.INVALID_FIELD),
    "id_null": ({"id": None}, Reason.INVALID_FIELD),
    "timestamp_null": ({"timestamp": None}, Reason.INVALID_FIELD),
    "empty_id": ({"id": ""}, Reason.INVALID_FIELD),
    "empty_status": ({"status": ""}, Reason.INVALID_FIELD),
    "status_not_a_string": ({"status": 2}, Reason.INVALID_FIELD),
    "id_with_control": ({"id": "wamid.\x1f"}, Reason.INVALID_FIELD),
    "status_too_long": ({"status": "s" * 33}, Reason.INVALID_FIELD),
    "timestamp_not_digits": ({"timestamp": "1750030073.5"}, Reason.INVALID_FIELD),
    "timestamp_negative": ({"timestamp": -1}, Reason.INVALID_FIELD),
    "timestamp_empty": ({"timestamp": ""}, Reason.INVALID_FIELD),
    "timestamp_too_long": ({"timestamp": "1" * 21}, Reason.INVALID_FIELD),
    # recipient_id present decides, whatever recipient_user_id holds.
    "recipient_id_empty": ({"recipient_id": "", "recipient_user_id": "US.1"}, Reason.INVALID_FIELD),
    "recipient_id_null": (
        {"recipient_id": None, "recipient_user_id": "US.1"},
        Reason.INVALID_FIELD,
    ),
    "recipient_id_too_long": ({"recipient_id": "1" * 65}, Reason.INVALID_FIELD),
    "recipient_user_id_only_too_long": (
        {"recipient_id": GONE, "recipient_user_id": "U" * 65},
        Reason.INVALID_FIELD,
    ),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN_STATUSES))
def test_broken_status_is_rejected_by_schema_and_intake(
    breakage: str, webhook_schema: Draft202012Validator
) -> None:
    """A status the consumer dead-letters (no id, word, timestamp or recipient, or one
    breaking its limits) is also invalid under webhook.v1.json."""
    change, reason = BROKEN_STATUSES[breakage]
    body = _status_body(**change)
    assert _errors(webhook_schema, body) != []
    decoded = intake.decode(testing.record(orjson.dumps(body)), max_bytes=1 << 20)
    assert not isinstance(decoded, Webhook), decoded
    assert decoded.reason is reason


def test_statuses_need_a_phone_number_id(webhook_schema: Draft202012Validator) -> None:
    """A change with statuses and no metadata.phone_number_id is refused by both."""
    body = _status_body()
    del _change_value(body)["metadata"]["phone_number_id"]
    assert _errors(webhook_schema, body) != []
    decoded = intake.decode(testing.record(orjson.dumps(body)), max_bytes=1 << 20)
    assert not isinstance(decoded, Webhook)
    assert decoded.reason is Reason.MISSING_PHONE_NUMBER_ID
