"""The JSON Schemas in schemas/ match what the consumer accepts and what it publishes."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from consumer import events, intake
from consumer.records import InboundRecord, Message, Webhook

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


def test_schema_files_are_valid_draft_2020_12() -> None:
    """Both schema files are themselves valid draft 2020-12 schemas with an $id and docs."""
    for name in ("webhook.v1.json", "message_created.v1.json"):
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
