"""intake.decode: every fixture, every dead-letter reason, contact choice, never raising."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from consumer import intake
from consumer.records import InboundRecord, Invalid, MessageKey, Reason, StatusKey, Webhook
from consumer.testing import PNID, SENDER, message, record, status, webhook

FIXTURES = Path(__file__).parents[1] / "fixtures" / "webhooks"
MAX = 256 * 1024


def _decode(value: bytes | dict[str, Any] | None, max_bytes: int = MAX) -> Webhook | Invalid:
    return intake.decode(record(value), max_bytes=max_bytes)


def _fixture(name: str) -> Webhook:
    decoded = _decode((FIXTURES / name).read_bytes())
    assert isinstance(decoded, Webhook), decoded
    return decoded


def _invalid(value: bytes | dict[str, Any] | None, max_bytes: int = MAX) -> Invalid:
    decoded = _decode(value, max_bytes)
    assert isinstance(decoded, Invalid), decoded
    return decoded


# -- fixtures ----------------------------------------------------------------------

SINGLE_MESSAGE = {
    "text.json": ("text", "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="),
    "image.json": ("image", "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="),
    "reaction.json": (
        "reaction",
        "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=",
    ),
    "reaction_removed.json": (
        "reaction",
        "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=",
    ),
    "unsupported_with_errors.json": (
        "unsupported",
        "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=",
    ),
    "bsuid_text.json": ("text", "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA="),
}


def test_every_fixture_is_covered() -> None:
    """Each webhook fixture on disk is checked by one of the fixture tests below."""
    known = {
        *SINGLE_MESSAGE,
        "constructed_batch_multi_message.json",
        "status_sent.json",
        "status_failed.json",
        "errors_value_level.json",
    }
    assert {p.name for p in FIXTURES.glob("*.json")} == known


@pytest.mark.parametrize(("name", "expected"), sorted(SINGLE_MESSAGE.items()))
def test_single_message_fixtures(name: str, expected: tuple[str, str]) -> None:
    """A one-message fixture decodes to exactly that message, keyed by number and wamid."""
    msg_type, wamid = expected
    hook = _fixture(name)
    assert len(hook.messages) == 1
    (m,) = hook.messages
    assert m.key == MessageKey(PNID, wamid)
    assert m.type == msg_type
    assert m.sender == SENDER
    assert m.display_phone_number == "15550783881"
    assert m.raw["id"] == wamid
    assert (len(hook.statuses), hook.errors, hook.ignored_changes) == (0, 0, 0)


def test_text_fixture_carries_contact_and_source() -> None:
    """The text fixture's message knows its contact, timestamp and source record."""
    hook = _fixture("text.json")
    (m,) = hook.messages
    assert m.contact_wa_id == SENDER
    assert m.contact_name == "Sheena Nelson"
    assert m.contact_profile == {"name": "Sheena Nelson"}
    assert m.timestamp == "1749416383"
    assert m.raw["text"] == {"body": "Does it come in another color?"}
    assert m.source is hook.record


def test_constructed_batch_yields_every_message_of_every_change() -> None:
    """A batch body yields all 4 messages (TEST-0001 twice) across entries, plus 1 status."""
    hook = _fixture("constructed_batch_multi_message.json")
    wamids = [m.key.wamid for m in hook.messages]
    assert wamids == ["wamid.TEST-0001", "wamid.TEST-0002", "wamid.TEST-0003", "wamid.TEST-0001"]
    assert all(m.key.phone_number_id == PNID for m in hook.messages)
    assert [m.type for m in hook.messages] == ["text", "image", "reaction", "text"]
    assert len(hook.statuses) == 1
    assert hook.errors == 0


@pytest.mark.parametrize("name", ["status_sent.json", "status_failed.json"])
def test_status_fixtures_have_no_messages(name: str) -> None:
    """A status webhook is valid and creates no message: 0 messages, 1 status."""
    hook = _fixture(name)
    assert hook.messages == ()
    assert len(hook.statuses) == 1
    assert hook.errors == 0


def test_value_level_errors_fixture() -> None:
    """A value-level errors webhook is valid with 0 messages and 1 error."""
    hook = _fixture("errors_value_level.json")
    assert hook.messages == ()
    assert hook.errors == 1
    assert len(hook.statuses) == 0


# -- reasons -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, b""])
def test_empty_value(value: bytes | None) -> None:
    """A record without a value (tombstone or empty) is Invalid(EMPTY)."""
    assert _invalid(value).reason is Reason.EMPTY


def test_oversize() -> None:
    """A value longer than max_bytes is Invalid(OVERSIZE), even if it is a good webhook."""
    body = (FIXTURES / "text.json").read_bytes()
    invalid = _invalid(body, max_bytes=len(body) - 1)
    assert invalid.reason is Reason.OVERSIZE
    assert str(len(body)) in invalid.detail


def test_exactly_max_bytes_is_accepted() -> None:
    """A value of exactly max_bytes is not oversize."""
    body = (FIXTURES / "text.json").read_bytes()
    assert isinstance(_decode(body, max_bytes=len(body)), Webhook)


def test_not_utf8() -> None:
    """Bytes that are not UTF-8 are Invalid(NOT_UTF8)."""
    assert _invalid(b'{"object": "\xff\xfe"}').reason is Reason.NOT_UTF8


@pytest.mark.parametrize("value", [b"{not json", b"NaN", b'{"entry": [}', b"\x00"])
def test_not_json(value: bytes) -> None:
    """UTF-8 that does not parse as JSON is Invalid(NOT_JSON)."""
    assert _invalid(value).reason is Reason.NOT_JSON


def _without_entry() -> dict[str, Any]:
    body = webhook([message("wamid.A")])
    del body["entry"]
    return body


def _with_object(obj: object) -> dict[str, Any]:
    body = webhook([message("wamid.A")])
    body["object"] = obj
    return body


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"[]", id="top-level-list"),
        pytest.param(b'"text"', id="top-level-string"),
        pytest.param(b"42", id="top-level-number"),
        pytest.param(_without_entry(), id="entry-missing"),
        pytest.param({"object": "whatsapp_business_account", "entry": []}, id="entry-empty"),
        pytest.param({"entry": {"changes": []}}, id="entry-not-list"),
        pytest.param(_with_object("page"), id="object-wrong"),
        pytest.param(_with_object(None), id="object-null"),
        pytest.param({"entry": ["x"]}, id="entry-item-not-object"),
        pytest.param({"entry": [{"id": "1"}]}, id="changes-missing"),
        pytest.param({"entry": [{"changes": [{"field": "messages"}]}]}, id="value-missing"),
        pytest.param(
            webhook([message("wamid.A")]) | {"entry": [{"changes": [{"value": []}]}]},
            id="value-not-object",
        ),
        pytest.param(webhook(["not an object"]), id="message-not-object"),
        pytest.param(webhook([{"id": "wamid.A", "type": "text", "timestamp": "1"}]), id="no-from"),
        pytest.param(webhook([{"id": "wamid.A", "from": SENDER, "timestamp": "1"}]), id="no-type"),
        pytest.param(
            webhook([{"id": "wamid.A", "from": SENDER, "type": "text"}]), id="no-timestamp"
        ),
        pytest.param(
            {"entry": [{"changes": [{"value": {"statuses": "read"}}]}]}, id="statuses-not-list"
        ),
    ],
)
def test_bad_shape(value: bytes | dict[str, Any]) -> None:
    """JSON that is not a WhatsApp webhook of the expected shape is Invalid(BAD_SHAPE)."""
    assert _invalid(value).reason is Reason.BAD_SHAPE


@pytest.mark.parametrize(
    "msg",
    [
        pytest.param({"from": SENDER, "type": "text", "timestamp": "1"}, id="missing"),
        pytest.param({"id": "", "from": SENDER, "type": "text", "timestamp": "1"}, id="empty"),
        pytest.param({"id": 17, "from": SENDER, "type": "text", "timestamp": "1"}, id="number"),
        pytest.param({"id": None, "from": SENDER, "type": "text", "timestamp": "1"}, id="null"),
    ],
)
def test_message_without_id(msg: dict[str, Any]) -> None:
    """A message whose id is missing, empty or not a string is Invalid(MESSAGE_WITHOUT_ID)."""
    invalid = _invalid(webhook([message("wamid.OK"), msg]))
    assert invalid.reason is Reason.MESSAGE_WITHOUT_ID
    assert "messages[1]" in invalid.detail


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param(None, id="no-metadata"),
        pytest.param({"display_phone_number": "1555"}, id="no-pnid"),
        pytest.param({"phone_number_id": ""}, id="empty-pnid"),
        pytest.param({"phone_number_id": None}, id="null-pnid"),
        pytest.param({"phone_number_id": True}, id="bool-pnid"),
        pytest.param({"phone_number_id": ["1"]}, id="list-pnid"),
        pytest.param("106540352242922", id="metadata-not-object"),
    ],
)
def test_messages_without_phone_number_id(metadata: object) -> None:
    """Messages without metadata.phone_number_id are Invalid(MISSING_PHONE_NUMBER_ID)."""
    body = webhook([message("wamid.A")], pnid=None)
    if metadata is not None:
        body["entry"][0]["changes"][0]["value"]["metadata"] = metadata
    assert _invalid(body).reason is Reason.MISSING_PHONE_NUMBER_ID


def test_numeric_phone_number_id_is_used_as_string() -> None:
    """An integer phone_number_id keys the message by its decimal string."""
    body = webhook([message("wamid.A")])
    body["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = 106540352242922
    hook = _decode(body)
    assert isinstance(hook, Webhook)
    assert hook.messages[0].key == MessageKey(PNID, "wamid.A")


def test_statuses_are_decoded_with_their_keys() -> None:
    """Every status of the change is returned, keyed by (phone_number_id, id, word); an
    integer timestamp is taken as its digits, a word Meta may add is kept as sent, and
    a status naming only recipient_user_id is addressed to it."""
    statuses = [
        status("wamid.A", "sent"),
        {**status("wamid.A", "read"), "timestamp": 1749416400},
        {**status("wamid.B", "deleted_for_everyone")},
        {"id": "wamid.C", "status": "delivered", "timestamp": "1", "recipient_user_id": "US.1"},
    ]
    hook = _decode(webhook(statuses=statuses))
    assert isinstance(hook, Webhook)
    assert [u.key for u in hook.statuses] == [
        StatusKey(PNID, "wamid.A", "sent"),
        StatusKey(PNID, "wamid.A", "read"),
        StatusKey(PNID, "wamid.B", "deleted_for_everyone"),
        StatusKey(PNID, "wamid.C", "delivered"),
    ]
    assert hook.statuses[1].timestamp == "1749416400"
    assert [u.recipient for u in hook.statuses][2:] == [SENDER, "US.1"]
    assert hook.statuses[0].raw == statuses[0]


@pytest.mark.parametrize(
    ("change", "reason", "detail"),
    [
        ({"id": None}, Reason.INVALID_FIELD, "statuses[0].id is null, not a string"),
        ({"id": ""}, Reason.INVALID_FIELD, "statuses[0].id is a string of 0 characters"),
        ({"id": "w" * 513}, Reason.INVALID_FIELD, "statuses[0].id has 513 characters, at most 512"),
        ({"id": "w\x00"}, Reason.INVALID_FIELD, "statuses[0].id holds a control character"),
        ({"status": None}, Reason.INVALID_FIELD, "statuses[0].status is null"),
        ({"status": "r" * 33}, Reason.INVALID_FIELD, "statuses[0].status has 33 characters"),
        ({"status": "read\x00"}, Reason.INVALID_FIELD, "statuses[0].status holds a control"),
        ({"timestamp": "1.5"}, Reason.INVALID_FIELD, "statuses[0].timestamp is a string of 3"),
        ({"timestamp": -1}, Reason.INVALID_FIELD, "statuses[0].timestamp is a number, not Unix"),
        ({"timestamp": "1" * 21}, Reason.INVALID_FIELD, "statuses[0].timestamp is a string of 21"),
        ({"timestamp": None}, Reason.INVALID_FIELD, "statuses[0].timestamp is null"),
        ({"recipient_id": None}, Reason.INVALID_FIELD, "statuses[0].recipient_id is null"),
        ({"recipient_id": "1" * 65}, Reason.INVALID_FIELD, "statuses[0].recipient_id has 65"),
    ],
)
def test_a_bad_status_dead_letters_its_record_naming_the_field(
    change: dict[str, object], reason: Reason, detail: str
) -> None:
    """A status that cannot be stored, keyed or announced as it is: the whole record is
    dead-lettered with the field named (never a status silently dropped)."""
    bad = {**status("wamid.A", "read"), **change}
    out = _decode(webhook(statuses=[status("wamid.B", "sent"), bad][1:]))
    assert isinstance(out, Invalid)
    assert out.reason is reason
    assert detail in out.detail


def test_statuses_need_the_phone_number_id() -> None:
    """A status is keyed under its number: without one the record is dead-lettered."""
    out = _decode(webhook(statuses=[status("wamid.A")], pnid=None))
    assert isinstance(out, Invalid)
    assert out.reason is Reason.MISSING_PHONE_NUMBER_ID


def test_errors_only_change_without_phone_number_id_is_valid() -> None:
    """A value-level errors change needs no phone_number_id either."""
    body = webhook(pnid=None)
    body["entry"][0]["changes"][0]["value"]["errors"] = [{"code": 1}, {"code": 2}]
    hook = _decode(body)
    assert isinstance(hook, Webhook)
    assert (len(hook.messages), hook.errors) == (0, 2)


def test_other_fields_are_ignored_not_invalid() -> None:
    """A change for another field (e.g. account_update) is counted as ignored."""
    body = webhook([message("wamid.A")])
    body["entry"][0]["changes"].append({"field": "account_update", "value": {"event": "x"}})
    hook = _decode(body)
    assert isinstance(hook, Webhook)
    assert [m.key.wamid for m in hook.messages] == ["wamid.A"]
    assert hook.ignored_changes == 1
    assert hook.ignored == (("entry[0].changes[1]", "account_update"),)


def _with_change(field: object, value: dict[str, Any]) -> dict[str, Any]:
    """A webhook of one good message, then a change of `field` (... : no field key)."""
    body = webhook([message("wamid.A")])
    change: dict[str, Any] = {"value": value}
    if field is not ...:
        change["field"] = field
    body["entry"][0]["changes"].append(change)
    return body


@pytest.mark.parametrize(
    ("field", "said"),
    [
        pytest.param(None, "null", id="null"),
        pytest.param("Messages", "a string of 8 characters", id="Messages"),
        pytest.param("messages ", "a string of 9 characters", id="trailing-space"),
        pytest.param("history", "'history'", id="documented-other"),
        pytest.param(7, "a number", id="number"),
    ],
)
def test_messages_under_another_field_are_dead_lettered_not_dropped(
    field: object, said: str
) -> None:
    """A change that is not field "messages" but holds messages used to be skipped whole:
    no row, no dead letter, no trace. It is bad_shape now, the detail naming where and
    what the field is (a documented name, or its kind), never the messages."""
    value = webhook([message("wamid.B", text="Sheena's secret")])["entry"][0]["changes"][0]
    invalid = _invalid(_with_change(field, value["value"]))
    assert invalid.reason is Reason.BAD_SHAPE
    assert "entry[0].changes[1]" in invalid.detail
    assert said in invalid.detail
    assert "Sheena" not in invalid.detail
    assert "Messages" not in invalid.detail


@pytest.mark.parametrize("field", [None, "Messages", "statuses"])
def test_statuses_under_another_field_are_dead_lettered_not_dropped(field: object) -> None:
    """Statuses, like messages, under a change of another field: bad_shape, naming
    where, never silently ignored."""
    value = webhook(statuses=[status("wamid.OUT", "read")])["entry"][0]["changes"][0]
    invalid = _invalid(_with_change(field, value["value"]))
    assert invalid.reason is Reason.BAD_SHAPE
    assert "entry[0].changes[1].value holds statuses" in invalid.detail


@pytest.mark.parametrize(
    ("field", "value", "label"),
    [
        pytest.param("account_update", {"event": "x"}, "account_update", id="documented"),
        pytest.param("history", {"statuses": []}, "history", id="empty-statuses"),
        pytest.param("zz_Sheena_field", {"event": "x"}, "other", id="undocumented"),
        pytest.param(None, {"event": "x"}, "other", id="null"),
        pytest.param("Messages", {"messages": []}, "other", id="Messages-empty"),
        pytest.param("history", {"messages": None}, "history", id="null-messages"),
        pytest.param("messages", {"messaging_product": "whatsapp"}, "messages", id="empty"),
    ],
)
def test_a_change_without_messages_is_counted_by_a_bounded_field_label(
    field: object, value: dict[str, Any], label: str
) -> None:
    """A change that creates nothing is reported, where it is and under which field: one
    of Meta's documented names, "messages" for a messages change holding nothing, and
    "other" for anything else (never a label taken from the input)."""
    hook = _decode(_with_change(field, value))
    assert isinstance(hook, Webhook), hook
    assert [m.key.wamid for m in hook.messages] == ["wamid.A"]
    assert hook.ignored == (("entry[0].changes[1]", label),)
    assert hook.ignored_changes == 1
    assert label in intake.WEBHOOK_FIELDS | {intake.OTHER_FIELD}


def test_a_change_without_a_field_is_a_messages_change() -> None:
    """No `field` key at all is read as "messages" (as before): its messages are
    stored, not refused."""
    value = webhook([message("wamid.B")])["entry"][0]["changes"][0]["value"]
    hook = _decode(_with_change(..., value))
    assert isinstance(hook, Webhook), hook
    assert [m.key.wamid for m in hook.messages] == ["wamid.A", "wamid.B"]
    assert hook.ignored == ()


def test_same_wamid_under_two_numbers_is_two_keys() -> None:
    """The same wamid under two phone_number_ids gives two distinct message keys."""
    body = webhook([message("wamid.A")], pnid="111")
    other = webhook([message("wamid.A")], pnid="222")
    body["entry"].extend(other["entry"])
    hook = _decode(body)
    assert isinstance(hook, Webhook)
    assert [m.key for m in hook.messages] == [
        MessageKey("111", "wamid.A"),
        MessageKey("222", "wamid.A"),
    ]


# -- contacts ------------------------------------------------------------------------


def _contact(wa_id: str, name: str) -> dict[str, Any]:
    return {"profile": {"name": name}, "wa_id": wa_id}


def test_sender_contact_is_chosen_among_several() -> None:
    """With several contacts, each message gets its own sender's contact."""
    contacts = [_contact("111", "Alice"), _contact("222", "Bob")]
    hook = _decode(
        webhook([message("wamid.A", "222"), message("wamid.B", "111")], contacts=contacts)
    )
    assert isinstance(hook, Webhook)
    assert [(m.contact_wa_id, m.contact_name) for m in hook.messages] == [
        ("222", "Bob"),
        ("111", "Alice"),
    ]


def test_no_contact_name_when_several_and_none_match() -> None:
    """With several contacts and none for the sender, no name is guessed."""
    contacts = [_contact("111", "Alice"), _contact("222", "Bob")]
    hook = _decode(webhook([message("wamid.A", "333")], contacts=contacts))
    assert isinstance(hook, Webhook)
    (m,) = hook.messages
    assert (m.contact_wa_id, m.contact_name, m.contact_profile) == (None, None, None)


def test_lone_contact_is_the_senders_even_without_wa_id_match() -> None:
    """A single contact entry belongs to the sender (username-only senders)."""
    hook = _decode(webhook([message("wamid.A", "333")], contacts=[_contact("111", "Alice")]))
    assert isinstance(hook, Webhook)
    assert hook.messages[0].contact_name == "Alice"


def test_no_contacts_means_no_name() -> None:
    """Without a contacts list the message has no contact fields."""
    hook = _decode(webhook([message("wamid.A")]))
    assert isinstance(hook, Webhook)
    assert (hook.messages[0].contact_wa_id, hook.messages[0].contact_name) == (None, None)


# -- never raises --------------------------------------------------------------------

_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    _LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=25,
)
# Webhook-shaped bodies with arbitrary leaves: reaches the deeper paths of decode.
_MESSAGE_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.just("wamid.X"), JSON_VALUES),
        "from": st.one_of(st.just(SENDER), JSON_VALUES),
        "type": st.one_of(st.just("text"), JSON_VALUES),
        "timestamp": st.one_of(st.just("1"), JSON_VALUES),
        "text": JSON_VALUES,
    },
)
_VALUE_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "metadata": st.one_of(
            st.fixed_dictionaries({}, optional={"phone_number_id": JSON_VALUES}), JSON_VALUES
        ),
        "messages": st.one_of(st.lists(_MESSAGE_LIKE, max_size=3), JSON_VALUES),
        "contacts": st.one_of(
            st.lists(
                st.fixed_dictionaries({}, optional={"wa_id": JSON_VALUES, "profile": JSON_VALUES})
            ),
            JSON_VALUES,
        ),
        "statuses": JSON_VALUES,
        "errors": JSON_VALUES,
    },
)
WEBHOOK_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "object": st.one_of(st.just("whatsapp_business_account"), JSON_VALUES),
        "entry": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "changes": st.lists(
                        st.fixed_dictionaries(
                            {},
                            optional={
                                "field": st.one_of(st.just("messages"), JSON_VALUES),
                                "value": st.one_of(_VALUE_LIKE, JSON_VALUES),
                            },
                        ),
                        max_size=3,
                    )
                },
            ),
            max_size=3,
        ),
    },
)
_PROPERTY = hsettings(
    max_examples=300, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _check_outcome(value: bytes, decoded: object) -> None:
    assert isinstance(decoded, Webhook | Invalid)
    if isinstance(decoded, Invalid):
        assert isinstance(decoded.reason, Reason)
        assert decoded.record.value == value
    else:
        for m in decoded.messages:
            assert m.key.phone_number_id
            assert isinstance(m.key.wamid, str)
            assert m.key.wamid


@_PROPERTY
@given(st.binary(max_size=512))
def test_decode_never_raises_for_arbitrary_bytes(value: bytes) -> None:
    """decode returns Webhook or Invalid for any bytes whatsoever."""
    _check_outcome(value, intake.decode(_raw(value), max_bytes=MAX))


@_PROPERTY
@given(JSON_VALUES, st.booleans())
def test_decode_never_raises_for_arbitrary_json(value: object, ascii_only: bool) -> None:
    """decode returns Webhook or Invalid for any JSON value."""
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    _check_outcome(body, intake.decode(_raw(body), max_bytes=MAX))


@_PROPERTY
@given(WEBHOOK_LIKE)
def test_decode_never_raises_for_webhook_shaped_json(value: dict[str, Any]) -> None:
    """decode returns Webhook or Invalid for webhook-shaped JSON with arbitrary leaves."""
    body = json.dumps(value).encode()
    _check_outcome(body, intake.decode(_raw(body), max_bytes=MAX))


def _raw(value: bytes) -> InboundRecord:
    return record(value)
