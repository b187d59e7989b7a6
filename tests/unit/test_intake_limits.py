"""intake.decode as the one gate of the storage contract (docs/design.md, rule 9):
every identifier against its limit in consumer/limits.py, no control characters, the
nesting depth, details that name the field and never quote the record, contacts in one
pass."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from consumer import intake, limits
from consumer.records import Invalid, Reason, Webhook
from consumer.testing import SENDER, message, record, webhook

MAX = 256 * 1024


def _decode(body: dict[str, Any] | bytes) -> Webhook | Invalid:
    return intake.decode(record(body), max_bytes=MAX)


def _accepted(body: dict[str, Any] | bytes) -> Webhook:
    decoded = _decode(body)
    assert isinstance(decoded, Webhook), decoded
    return decoded


def _refused(body: dict[str, Any] | bytes, reason: Reason) -> Invalid:
    decoded = _decode(body)
    assert isinstance(decoded, Invalid), decoded
    assert decoded.reason is reason, decoded
    return decoded


def _with(field: str, value: object) -> dict[str, Any]:
    """A one-message webhook whose message `field` is `value`."""
    msg = message("wamid.A")
    msg[field] = value
    return webhook([msg])


IDENTIFIERS = [
    pytest.param("id", limits.WAMID_MAX, id="wamid"),
    pytest.param("from", limits.SENDER_MAX, id="from"),
    pytest.param("type", limits.MESSAGE_TYPE_MAX, id="type"),
    pytest.param("timestamp", limits.TIMESTAMP_MAX, id="timestamp"),
]


@pytest.mark.parametrize(("field", "limit"), IDENTIFIERS)
def test_an_identifier_at_its_limit_is_accepted_one_more_is_refused(field: str, limit: int) -> None:
    """Exactly the column's length is stored; one character more is dead-lettered as
    invalid_field, naming the field and the limit, counted in characters (not bytes)."""
    at_limit = "é" * (limit - 1) + "1"
    hook = _accepted(_with(field, at_limit))
    assert len(hook.messages) == 1
    refused = _refused(_with(field, at_limit + "1"), Reason.INVALID_FIELD)
    assert f"messages[0].{field}" in refused.detail
    assert str(limit) in refused.detail


def test_phone_number_id_limit() -> None:
    """metadata.phone_number_id: 64 characters are a key; 65 are invalid_field."""
    pnid = "1" * limits.PHONE_NUMBER_ID_MAX
    assert _accepted(webhook([message("wamid.A")], pnid=pnid)).messages[0].key.phone_number_id
    refused = _refused(webhook([message("wamid.A")], pnid=pnid + "1"), Reason.INVALID_FIELD)
    assert "metadata.phone_number_id" in refused.detail


def _with_display(display: object) -> dict[str, Any]:
    """A one-message webhook whose metadata.display_phone_number is `display`."""
    body = webhook([message("wamid.A")])
    body["entry"][0]["changes"][0]["value"]["metadata"]["display_phone_number"] = display
    return body


def test_display_phone_number_limit() -> None:
    """metadata.display_phone_number, which every event of its change copies: 64
    characters (four-byte ones too) are carried; 65 are invalid_field, named."""
    at_limit = "\U0001f600" * (limits.DISPLAY_PHONE_NUMBER_MAX - 1) + "1"
    (m,) = _accepted(_with_display(at_limit)).messages
    assert m.display_phone_number == at_limit
    refused = _refused(_with_display(at_limit + "1"), Reason.INVALID_FIELD)
    assert "metadata.display_phone_number" in refused.detail
    assert str(limits.DISPLAY_PHONE_NUMBER_MAX) in refused.detail
    assert "\U0001f600" not in refused.detail


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x1f", "\x7f", "\x85", "\n", "\t"])
def test_a_control_character_in_the_display_phone_number_is_refused(char: str) -> None:
    """Like every identifier: the detail names the field and the code point, not the
    value."""
    refused = _refused(_with_display(f"1555{char}0783881"), Reason.INVALID_FIELD)
    assert "metadata.display_phone_number" in refused.detail
    assert f"U+{ord(char):04X}" in refused.detail
    assert "1555" not in refused.detail


@pytest.mark.parametrize(
    ("display", "carried"),
    [
        pytest.param("15550783881", "15550783881", id="string"),
        pytest.param("+1 555-078-3881", "+1 555-078-3881", id="formatted"),
        pytest.param(15550783881, "15550783881", id="integer"),
        pytest.param(None, None, id="null"),
        pytest.param(..., None, id="absent"),
    ],
)
def test_display_phone_number_forms(display: object, carried: str | None) -> None:
    """A string is carried as sent, an integer as its decimal string (as the
    phone_number_id), null or absent as null."""
    body = _with_display(display)
    if display is ...:
        del body["entry"][0]["changes"][0]["value"]["metadata"]["display_phone_number"]
    (m,) = _accepted(body).messages
    assert m.display_phone_number == carried


@pytest.mark.parametrize(
    "display",
    [
        pytest.param("", id="empty"),
        pytest.param(True, id="boolean"),
        pytest.param(1.5, id="float"),
        pytest.param(["Sheena Nelson"], id="array"),
        pytest.param({"n": "Sheena Nelson" * 1000}, id="object"),
    ],
)
def test_a_display_phone_number_that_is_not_one_is_refused(display: object) -> None:
    """Anything else is invalid_field (it used to become null silently, or be copied
    whole into every event): the detail says what it is, never what it holds."""
    refused = _refused(_with_display(display), Reason.INVALID_FIELD)
    assert "metadata.display_phone_number" in refused.detail
    assert "Sheena" not in refused.detail
    assert len(refused.detail) < 200


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x1f", "\x7f", "\x85", "\n", "\t"])
@pytest.mark.parametrize("field", ["id", "from", "type", "timestamp"])
def test_a_control_character_in_an_identifier_is_refused(field: str, char: str) -> None:
    """NUL (which text columns refuse), the separator of derived ids (\\x1f), terminal
    escapes and every other control character are invalid_field in an identifier; the
    detail names the code point, not the value."""
    refused = _refused(_with(field, f"ab{char}cd"), Reason.INVALID_FIELD)
    assert f"U+{ord(char):04X}" in refused.detail
    assert "ab" not in refused.detail


def test_a_control_character_in_the_phone_number_id_is_refused() -> None:
    """The phone_number_id too: it is half of every key."""
    _refused(webhook([message("wamid.A")], pnid="1065\x1f4035"), Reason.INVALID_FIELD)


def test_separators_and_odd_characters_are_fine_in_identifiers() -> None:
    """':', '#', '/', emoji and a bidi override are ordinary characters in an id: the
    keys are built so that they cannot collide (rule 11)."""
    wamid = "wamid.a:b#c/d\u202e\U0001f600"
    hook = _accepted(webhook([message(wamid)], pnid="1:2#3"))
    assert hook.messages[0].key.wamid == wamid
    assert hook.messages[0].key.phone_number_id == "1:2#3"


def test_free_text_keeps_nul_and_anything_else() -> None:
    """A text body and a contact name are free text: NUL, bidi and escapes are stored
    faithfully, not refused."""
    text = "a\x00b\u202ec\x1b[31m"
    body = webhook(
        [message("wamid.A", text=text)],
        contacts=[{"wa_id": SENDER, "profile": {"name": "N\x00me\u202e"}}],
    )
    (m,) = _accepted(body).messages
    assert m.raw["text"]["body"] == text
    assert m.contact_name == "N\x00me\u202e"


def test_a_contact_wa_id_is_an_identifier_too() -> None:
    """The lone contact's wa_id goes into a VARCHAR: too long or with a control
    character, it is invalid_field, named by its path."""
    long_id = "9" * (limits.CONTACT_WA_ID_MAX + 1)
    body = webhook([message("wamid.A")], contacts=[{"wa_id": long_id, "profile": {}}])
    assert "contacts[0].wa_id" in _refused(body, Reason.INVALID_FIELD).detail
    body = webhook([message("wamid.A")], contacts=[{"wa_id": "1\x002", "profile": {}}])
    _refused(body, Reason.INVALID_FIELD)


def _nest(depth: int, leaf: object = 1) -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def test_depth_at_the_limit_is_accepted_one_more_is_too_deep() -> None:
    """A body nesting exactly MAX_JSON_DEPTH levels (the body is level 1) is a webhook;
    one level more is too_deep. The message sits at level 8, so its content adds the
    rest."""
    base = 8  # body, entry[], {}, changes[], {}, value, messages[], message {}
    fits = _with("extra", _nest(limits.MAX_JSON_DEPTH - base))
    assert _accepted(fits)
    deep = _with("extra", _nest(limits.MAX_JSON_DEPTH - base + 1))
    assert "64" in _refused(deep, Reason.TOO_DEEP).detail


@pytest.mark.parametrize("depth", [300, 1000, 1100, 5000])
def test_very_deep_bodies_are_too_deep_without_recursion(depth: int) -> None:
    """Deep content, a deep `object` field, and bodies beyond orjson's own limit (1024)
    are all too_deep; nothing recurses (no RecursionError however deep)."""
    deep = b"[" * depth + b"1" + b"]" * depth
    content = json.dumps(_with("text", "DEEP")).encode().replace(b'"DEEP"', deep)
    _refused(content, Reason.TOO_DEEP)
    body = b'{"object": ' + deep + b', "entry": []}'
    _refused(body, Reason.TOO_DEEP)


def test_many_brackets_inside_strings_are_not_depth() -> None:
    """The fast path counts brackets in the raw bytes; brackets inside strings make it
    walk the tree, which finds the real (shallow) depth."""
    assert _accepted(webhook([message("wamid.A", text="[{" * 500)]))


@pytest.mark.parametrize(
    "obj",
    [
        "x" * 100_000,
        {"a": "\x1b[2J"},
        ["Sheena Nelson"],
        12,
    ],
)
def test_details_never_quote_the_record(obj: object) -> None:
    """A wrong `object` field is described by its kind, not quoted: details may be
    logged, and the value may be huge, personal or hostile."""
    refused = _refused(json.dumps({"object": obj, "entry": []}).encode(), Reason.BAD_SHAPE)
    assert len(refused.detail) < 120
    assert "Sheena" not in refused.detail
    assert "\x1b" not in refused.detail


def test_thousands_of_messages_and_contacts_decode_in_one_pass() -> None:
    """About 1,800 messages and 35,000 contacts in one record under MAX_RECORD_BYTES:
    every message is found, each with its own contact (the first of its wa_id), and
    messages without a matching contact get none (with several, never a guess)."""
    senders = [f"{i % 600:03d}" for i in range(1800)]
    contacts: list[dict[str, Any]] = [
        {"wa_id": s, "profile": {"name": f"n{s}"}} for s in senders[:600]
    ]
    contacts += [{}] * 34_400
    msgs = [
        {"from": s, "id": f"w{i}", "timestamp": "1", "type": "t"} for i, s in enumerate(senders)
    ]
    msgs.append({"from": "nobody", "id": "wx", "timestamp": "1", "type": "text"})
    body = json.dumps(webhook(msgs, contacts=contacts), separators=(",", ":")).encode()
    assert len(body) < MAX
    hook = _accepted(body)
    assert len(hook.messages) == 1801
    assert [m.contact_name for m in hook.messages[599:602]] == ["n599", "n000", "n001"]
    assert hook.messages[-1].contact_name is None


def test_a_surprise_inside_intake_is_an_invalid_not_an_exception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever raises inside decode (a bug) comes back as internal_error for that one
    record, naming the exception type."""

    def boom(*_args: object) -> None:
        raise KeyError("x")

    monkeypatch.setattr(intake, "_webhook", boom)
    refused = _refused(webhook([message("wamid.A")]), Reason.INTERNAL_ERROR)
    assert refused.detail == "intake raised KeyError"


def _reference_depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_reference_depth(v) for v in value), default=0)
    return 0


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\\\ab\u00e9:,'),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet='[]{}"\\\\ab', max_size=4), children, max_size=4)
    ),
    max_leaves=40,
)


@hsettings(max_examples=500, database=None, deadline=None)
@given(_JSON)
def test_depth_of_the_raw_text_is_the_depth_of_the_value(value: object) -> None:
    """The byte-level depth (strings dropped, brackets summed) equals the depth of the
    parsed value, whatever brackets, quotes and escapes the strings hold."""
    assert intake._depth(json.dumps(value).encode()) == _reference_depth(value)


def _numbers_body(size: int, number: bytes) -> bytes:
    head = json.dumps(webhook([message("wamid.N")])).encode()
    cut = head.index(b'"text": {')
    filler = (size - len(head)) // (len(number) + 1)
    return head[:cut] + b'"x": [' + b",".join([number] * filler) + b"], " + head[cut:]


@pytest.mark.parametrize(
    ("limit", "size"),
    [
        # The largest MAX_RECORD_BYTES whose produce request is still Kafka's 1 MiB.
        (limits.MAX_REQUEST_BYTES - limits.EVENT_HEADROOM_BYTES, 400_000),
        # The default (3 MiB, Meta's bodies): the request follows it, to 3 MiB + 64 KiB.
        (limits.DEFAULT_MAX_RECORD_BYTES, 1_000_000),
    ],
)
def test_a_body_whose_events_would_not_fit_is_oversize_at_intake(limit: int, size: int) -> None:
    """Numbers that orjson writes back longer (9e15 -> 9000000000000000.0) can make an
    event larger than a produce request although the record is within MAX_RECORD_BYTES:
    intake measures such a body re-encoded and refuses it as oversize (it never reaches
    the store to be refused there); the same size of numbers that do not grow passes."""
    refused = intake.decode(record(_numbers_body(size, b"9e15")), max_bytes=limit)
    assert isinstance(refused, Invalid)
    assert refused.reason is Reason.OVERSIZE
    assert "re-encoded" in refused.detail
    assert str(limits.sizes(limit).max_event_bytes - limits.EVENT_ENVELOPE_BYTES) in refused.detail
    fine = intake.decode(record(_numbers_body(size, b"9")), max_bytes=limit)
    assert isinstance(fine, Webhook), fine


def test_a_body_small_enough_is_not_re_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The re-encoding is only for bodies whose size does not already prove their events
    fit: a record at the default MAX_RECORD_BYTES is never encoded twice."""

    def refuse(*_args: object, **_kwargs: object) -> bytes:
        raise AssertionError("orjson.dumps called at intake")

    body = _numbers_body(200_000, b"9e15")
    monkeypatch.setattr(orjson, "dumps", refuse)
    assert isinstance(intake.decode(record(body), max_bytes=MAX), Webhook)
