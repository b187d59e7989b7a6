"""Decode a raw inbound record into a :class:`Webhook` or an :class:`Invalid`.

Meta batches: one body may hold several entries, each with several changes, each with
several messages. Every message of every change is returned, not just the first.
Statuses and value-level ``errors`` are valid webhooks that create no message.

Intake is the one gate of the storage contract (docs/design.md, rule 9): every field that
reaches Redis, the database or the event is checked here against ``limits.py`` (length,
control characters, nesting depth, type), so that what is accepted can be stored and
announced on every supported database. A record that breaks a limit is dead-lettered with
the field named. Details never quote the record's values: they are personal data, and may
be hostile (huge, deeply nested, full of terminal escapes).

The work per record is linear in its size: one parse, at most one walk of the tree (only
when the body has more brackets than the depth limit), contacts matched through a dict.
So is its output: a record whose rows and events would hold more than
``limits.MAX_OUTPUT_FACTOR`` times its size (a contact's profile shared by thousands of
messages), or more than ``limits.MAX_OUTPUT_BYTES`` whatever its size, is refused, as
estimated while decoding. A change of another field than
``messages`` is reported as ignored (``Webhook.ignored``), or refused if it holds
messages. Numbers orjson cannot carry exactly are read as written (see below).

With Meta's App Secret configured, a record must first prove it comes from Meta: its
``X-Hub-Signature-256`` header (any case) must be ``sha256=`` and the hex HMAC-SHA256 of
the raw value under the secret, checked on the bytes as received, before any parsing.
"""

from __future__ import annotations

import decimal
import hmac
import itertools
import json
import math
import re
import string
from typing import Any

import orjson

from consumer import limits
from consumer.records import (
    InboundRecord,
    Invalid,
    Message,
    MessageKey,
    Reason,
    StatusKey,
    StatusUpdate,
    Webhook,
)


class _Reject(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


SIGNATURE_HEADER = "x-hub-signature-256"
_SIGNATURE_PREFIX = b"sha256="
_DIGEST_HEX_DIGITS = 64
_HEX_DIGITS = frozenset(string.hexdigits.encode())


def decode(
    record: InboundRecord, *, max_bytes: int, app_secret: bytes | None = None
) -> Webhook | Invalid:
    """Turn one record into a value; never raises for bad input.

    With `app_secret` (WHATSAPP_APP_SECRET, encoded once by the caller) the record's
    signature is checked first; without it no header is looked at.
    """
    if record.problem is not None:  # it stands for records the client could not read
        return Invalid(record, *record.problem)
    try:
        if app_secret:
            _check_signature(record, app_secret)
        body = _parse_body(record.value, max_bytes)
        return _webhook(record, body)
    except _Reject as rejected:
        return Invalid(record, rejected.reason, rejected.detail)
    except Exception as exc:  # noqa: BLE001 - one record's surprise must not stop the partition
        return Invalid(record, Reason.INTERNAL_ERROR, f"intake raised {type(exc).__name__}")


def sign(app_secret: bytes, value: bytes) -> bytes:
    """The X-Hub-Signature-256 value Meta sends for `value`: ``sha256=<hex digest>``."""
    return _SIGNATURE_PREFIX + hmac.digest(app_secret, value, "sha256").hex().encode()


def _check_signature(record: InboundRecord, app_secret: bytes) -> None:
    """Reject a record whose signature is missing, malformed or not the value's.

    Details name what is wrong, never the secret, the expected digest or the value sent.
    """
    found = [v for name, v in record.headers if name.lower() == SIGNATURE_HEADER]
    if not found:
        raise _Reject(Reason.SIGNATURE_MISSING, "no X-Hub-Signature-256 header")
    if len(found) > 1:
        # Which one would Meta have meant? Refuse to pick.
        raise _Reject(
            Reason.SIGNATURE_INVALID, f"{len(found)} X-Hub-Signature-256 headers, expected one"
        )
    header = (found[0] or b"").strip()
    if not header.startswith(_SIGNATURE_PREFIX):
        raise _Reject(Reason.SIGNATURE_INVALID, "X-Hub-Signature-256 does not start with sha256=")
    digest_hex = header[len(_SIGNATURE_PREFIX) :]
    if len(digest_hex) != _DIGEST_HEX_DIGITS:
        raise _Reject(
            Reason.SIGNATURE_INVALID,
            f"X-Hub-Signature-256 digest has {len(digest_hex)} characters, "
            f"expected {_DIGEST_HEX_DIGITS} hex digits",
        )
    if not _HEX_DIGITS.issuperset(digest_hex):
        raise _Reject(Reason.SIGNATURE_INVALID, "X-Hub-Signature-256 digest is not hexadecimal")
    expected = hmac.digest(app_secret, record.value or b"", "sha256")
    if not hmac.compare_digest(expected, bytes.fromhex(digest_hex.decode("ascii"))):
        raise _Reject(
            Reason.SIGNATURE_INVALID,
            "X-Hub-Signature-256 does not match the value (HMAC-SHA256 under WHATSAPP_APP_SECRET)",
        )


# Unicode category Cc: C0 controls (NUL included), DEL and the C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BRACKETS = (b"{", b"[")


def _parse_body(value: bytes | None, max_bytes: int) -> dict[str, Any]:
    if not value:
        raise _Reject(Reason.EMPTY, "record has no value")
    if len(value) > max_bytes:
        raise _Reject(Reason.OVERSIZE, f"{len(value)} bytes > MAX_RECORD_BYTES={max_bytes}")
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Reject(Reason.NOT_UTF8, f"invalid UTF-8 at byte {exc.start}") from None
    # A number orjson would not carry exactly sends the body through the exact reading.
    exact = _may_be_inexact(value)
    try:
        parsed: Any = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # orjson's own limit (1024) is far above ours
            raise _Reject(Reason.TOO_DEEP, _too_deep()) from None
        if not (exact and _BEYOND_A_DOUBLE in str(exc)):
            raise _Reject(Reason.NOT_JSON, str(exc)[:200]) from None
        parsed = None  # 1e400: valid JSON that orjson refuses; the exact reading takes it
    if parsed is not None and not isinstance(parsed, dict):
        raise _Reject(Reason.BAD_SHAPE, f"top level is {_kind(parsed)}, not an object")
    _check_depth(value)
    body = _read_exactly(value, validated=parsed is not None) if exact else parsed
    if not isinstance(body, dict):
        raise _Reject(Reason.BAD_SHAPE, f"top level is {_kind(body)}, not an object")
    _check_event_size(value, body, limits.sizes(max_bytes).max_event_bytes)
    return body


# -- numbers carried as sent ---------------------------------------------------------
#
# The event and the row carry a message's content as sent, numbers included; orjson reads
# an integer beyond 64 bits as a float (123456789012345678901234567890 comes out as
# 1.2345678901234568e+29), a float a double cannot hold as the nearest double (1e-400 as
# 0.0, 0.1000000000000000000001 as 0.1), and refuses one beyond a double's range (1e400).
# A number orjson does read exactly is an integer of at most 15 digits or a float of at
# most 15 significant digits and an exponent of at most two digits (within a double's
# normal range, where 15 digits always come back the same). So a body none of whose
# numbers has 16 characters of digits and points, or an exponent of three digits, is read
# by orjson alone, found so in about a microsecond a kilobyte (_may_be_inexact). The
# exact reading is the standard library's parser, whose number hooks keep a number orjson
# would change as an orjson.Fragment of its text, which orjson writes back verbatim into
# the event and the JSON columns; every other number comes out as orjson gives it.

# The body's bytes as classes: a digit or a point "0", e/E "e", a sign "+", a byte a
# number may follow (':', ',', '[') "s", anything else "x"; JSON whitespace is dropped
# (a number holds none). In that view a number starts right after an "s".
_NUMBER_VIEW = bytes(
    ord("0")
    if c in b"0123456789."
    else ord("e")
    if c in b"eE"
    else ord("+")
    if c in b"+-"
    else ord("s")
    if c in b":,["
    else ord("x")
    for c in range(256)
)
_WHITESPACE = b" \t\n\r"
# In the view: a number of 16 digits and points, or with a 3-digit exponent. The view
# turns the search into one for a literal ("s"), which the regular-expression engine
# runs at C speed; on the raw bytes the same search takes twenty times as long.
_INEXACT_IN_VIEW = re.compile(rb"s\+?0(?:0{15}|0*e\+?000)")


def _may_be_inexact(value: bytes) -> bool:
    """Whether the body may hold a number orjson does not read exactly. A match inside a
    string (a ':' followed by 16 digits in a text) only costs the exact reading."""
    return _INEXACT_IN_VIEW.search(value.translate(_NUMBER_VIEW, _WHITESPACE)) is not None


_BEYOND_A_DOUBLE = "number is infinity when parsed as double"
_I64_MIN = -(2**63)
_U64_MAX = 2**64 - 1
# An integer longer than '-' and 20 digits is beyond 64 bits (JSON has no leading zeros):
# it is kept as text without int(), whose time grows with the square of the digits (and
# which refuses more than 4,300).
_INT_CHARS = 21


def _read_exactly(value: bytes, *, validated: bool) -> Any:
    """The body read by the standard library's parser, numbers exactly. `validated`: orjson
    read the same text (so it is JSON as orjson takes it: no lone surrogate, no NaN); else
    orjson stopped at a number beyond a double, and the text after it is checked here.
    The depth is already checked (the standard parser recurses)."""
    try:
        body = json.loads(
            value.decode("utf-8"),
            parse_int=_exact_int,
            parse_float=_exact_float,
            parse_constant=_no_constant,
        )
    except ValueError as exc:  # json.JSONDecodeError, or _no_constant
        raise _Reject(Reason.NOT_JSON, str(exc)[:200]) from None
    if not validated:
        try:
            orjson.dumps(body)  # refuses a string holding a lone surrogate, as orjson.loads does
        except orjson.JSONEncodeError as exc:
            raise _Reject(Reason.NOT_JSON, str(exc)[:200]) from None
    return body


def _exact_int(text: str) -> int | orjson.Fragment:
    if len(text) <= _INT_CHARS:
        number = int(text)
        if _I64_MIN <= number <= _U64_MAX:
            return number
    return orjson.Fragment(text.encode())


def _exact_float(text: str) -> float | orjson.Fragment:
    """The float orjson would give, if it is the number written (its shortest form, which
    orjson writes back, has the same decimal value); else the text itself."""
    number = float(text)
    try:
        if math.isfinite(number) and decimal.Decimal(repr(number)) == decimal.Decimal(text):
            return number
    except (ArithmeticError, ValueError):  # an exponent beyond what decimal takes
        pass
    return orjson.Fragment(text.encode())


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # the standard parser takes NaN and Infinity


def _check_event_size(value: bytes, body: dict[str, Any], max_event_bytes: int) -> None:
    """Every event of the body must fit a produce request (of the size MAX_RECORD_BYTES
    sets: limits.sizes). An event copies parts of the body, re-encoded (numbers can come
    out longer: 9e15 is 9000000000000000.0), plus its envelope; so a body is measured
    re-encoded, once, when its own size does not already prove that it fits (a real
    webhook under 256 KiB never is; a larger one costs one encoding, about a millisecond
    a megabyte)."""
    room = max_event_bytes - limits.EVENT_ENVELOPE_BYTES
    if len(value) * limits.JSON_GROWTH <= room:
        return
    encoded = len(orjson.dumps(body))
    if encoded > room:
        raise _Reject(
            Reason.OVERSIZE,
            f"re-encoded for its events the body takes {encoded} bytes, more than the "
            f"{room} an event may copy",
        )


def _check_depth(value: bytes) -> None:
    """No deeper than MAX_JSON_DEPTH. Depth is at most the number of opening brackets,
    so a real webhook (a dozen or two) passes at the cost of two byte counts."""
    if sum(value.count(b) for b in _BRACKETS) <= limits.MAX_JSON_DEPTH:
        return
    if _depth(value) > limits.MAX_JSON_DEPTH:
        raise _Reject(Reason.TOO_DEEP, _too_deep())


def _depth(value: bytes) -> int:
    """The nesting depth of a valid JSON text, without recursion and at C speed for the
    most part: drop the strings, keep the brackets, and take the highest running sum."""
    brackets = _JSON_STRING.sub(b"", value).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(_STEP[b] for b in brackets), default=0)


# A JSON string, escapes included (the "unrolled loop" form: linear, no backtracking).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def _too_deep() -> str:
    return f"nested deeper than {limits.MAX_JSON_DEPTH} levels of objects and arrays"


def _webhook(record: InboundRecord, body: dict[str, Any]) -> Webhook:
    obj = body.get("object", "whatsapp_business_account")
    if obj != "whatsapp_business_account":
        raise _Reject(Reason.BAD_SHAPE, f"object is {_kind(obj)}, not 'whatsapp_business_account'")
    entries = _list(body, "entry", "body")
    if not entries:
        raise _Reject(Reason.BAD_SHAPE, "entry is empty")
    messages: list[Message] = []
    statuses: list[StatusUpdate] = []
    errors = shared = 0
    ignored: list[tuple[str, str]] = []
    for i, entry in enumerate(entries):
        for j, change in enumerate(_list(_obj(entry, f"entry[{i}]"), "changes", f"entry[{i}]")):
            where = f"entry[{i}].changes[{j}]"
            change = _obj(change, where)
            value = _obj(change.get("value"), f"{where}.value")
            field = change.get("field", "messages")
            if field != "messages":
                _check_holds_no_messages(value, field, where)
                ignored.append((where, field_label(field)))
                continue
            found, shares = _messages(record, value, where)
            updates, status_shares = _statuses(record, value, where)
            messages.extend(found)
            statuses.extend(updates)
            shared += shares + status_shares
            errors += len(_optional_list(value, "errors", where))
            if not found and "statuses" not in value and "errors" not in value:
                ignored.append((where, "messages"))
    _check_output(record, len(messages) + len(statuses), shared)
    return Webhook(record, tuple(messages), tuple(statuses), errors, len(ignored), tuple(ignored))


# Meta's documented webhook fields of a WhatsApp Business Account: the values a change's
# field is counted under (wamid_guard_changes_ignored_total); any other is "other", so
# that no label comes from the input.
WEBHOOK_FIELDS: frozenset[str] = frozenset(
    {
        "account_alerts",
        "account_review_update",
        "account_update",
        "automatic_events",
        "business_capability_update",
        "calls",
        "flows",
        "history",
        "message_template_components_update",
        "message_template_quality_update",
        "message_template_status_update",
        "messages",
        "partner_solutions",
        "payment_configuration_update",
        "phone_number_name_update",
        "phone_number_quality_update",
        "security",
        "smb_app_state_sync",
        "smb_message_echoes",
        "template_category_update",
        "user_preferences",
    }
)
OTHER_FIELD = "other"


def field_label(field: object) -> str:
    """A change's field as a metric label: one of WEBHOOK_FIELDS, or "other"."""
    return field if isinstance(field, str) and field in WEBHOOK_FIELDS else OTHER_FIELD


def _check_holds_no_messages(value: dict[str, Any], field: object, where: str) -> None:
    """A change of another field is ignored, but not one holding messages or statuses
    (`"field": null`, `"Messages"`): ignoring it would drop them without a trace."""
    for kind in ("messages", "statuses"):
        held = value.get(kind)
        if held is None or held == []:
            continue
        named = f"'{field}'" if field_label(field) != OTHER_FIELD else _kind(field)
        raise _Reject(
            Reason.BAD_SHAPE,
            f"{where}.value holds {kind}, but {where}.field is {named}, not 'messages'",
        )


def _check_output(record: InboundRecord, messages: int, shared: int) -> None:
    """The rows and events of a record's messages and status updates (`messages`
    counts both) may hold at most MAX_OUTPUT_FACTOR times its size (limits.py):
    estimated from what decoding found, no copy made."""
    if not messages:
        return
    size = len(record.value or b"")
    estimate = 3 * size + messages * limits.MESSAGE_OVERHEAD_BYTES + shared
    if estimate > limits.MAX_OUTPUT_FACTOR * size:
        raise _Reject(
            Reason.OVERSIZE,
            f"its {messages} messages would make about {estimate} bytes of rows and events "
            f"(their shared parts copied into each: a contact's profile, the display "
            f"number), more than {limits.MAX_OUTPUT_FACTOR} times the record's {size} bytes",
        )
    if estimate > limits.MAX_OUTPUT_BYTES:
        raise _Reject(
            Reason.OVERSIZE,
            f"its {messages} messages would make about {estimate} bytes of rows and events, "
            f"more than the {limits.MAX_OUTPUT_BYTES} any record may make "
            f"(MAX_OUTPUT_BYTES; the record has {size} bytes)",
        )


def _messages(
    record: InboundRecord, value: dict[str, Any], where: str
) -> tuple[list[Message], int]:
    """A change's messages, and the bytes their rows and events will copy of the parts
    they share (see _check_output)."""
    raw_messages = _optional_list(value, "messages", where)
    if not raw_messages:
        return [], 0  # statuses / errors only
    pnid, display = _number(value, where)
    by_wa_id, lone = _contacts(_optional_list(value, "contacts", where))
    # Every row and event of the change copies these: the phone_number_id in the row, the
    # event and its key, the display number in the event.
    per_message = 3 * _utf8_len(pnid) + _utf8_len(display)
    contact_shares: dict[int, int] = {}  # by the contact's index: each measured once
    shared = 0
    out = []
    for k, raw in enumerate(raw_messages):
        at = f"{where}.value.messages[{k}]"
        raw = _obj(raw, at)
        wamid = raw.get("id")
        if not isinstance(wamid, str) or not wamid:
            raise _Reject(Reason.MESSAGE_WITHOUT_ID, f"{at}.id")
        _check_id(wamid, f"{at}.id", limits.WAMID_MAX)
        sender = _id(raw, "from", at, limits.SENDER_MAX)
        contact = by_wa_id.get(sender, lone)
        profile = contact[1].get("profile") if contact else None
        if not isinstance(profile, dict):
            profile = None
        contact_wa_id = _contact_wa_id(contact, where)
        contact_name = _opt_str(profile.get("name")) if profile is not None else None
        shared += per_message
        if contact is not None:
            share = contact_shares.get(contact[0])
            if share is None:
                share = contact_shares[contact[0]] = _contact_share(
                    profile, contact_name, contact_wa_id
                )
            shared += share
        out.append(
            Message(
                key=MessageKey(pnid, wamid),
                sender=sender,
                type=_id(raw, "type", at, limits.MESSAGE_TYPE_MAX),
                timestamp=_id(raw, "timestamp", at, limits.TIMESTAMP_MAX),
                contact_wa_id=contact_wa_id,
                contact_name=contact_name,
                contact_profile=profile,
                display_phone_number=display,
                raw=raw,
                source=record,
            )
        )
    return out, shared


def _number(value: dict[str, Any], where: str) -> tuple[str, str | None]:
    """The change's metadata.phone_number_id (an integer taken as its decimal string)
    and display_phone_number: what every message and status of the change is keyed
    under."""
    metadata = value.get("metadata")
    pnid = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    if isinstance(pnid, int) and not isinstance(pnid, bool):
        pnid = str(pnid)
    if not isinstance(pnid, str) or not pnid:
        raise _Reject(Reason.MISSING_PHONE_NUMBER_ID, f"{where}.value.metadata.phone_number_id")
    assert isinstance(metadata, dict)  # noqa: S101 - narrowed above; for mypy
    _check_id(pnid, f"{where}.value.metadata.phone_number_id", limits.PHONE_NUMBER_ID_MAX)
    return pnid, _display_phone_number(metadata, where)


def _statuses(
    record: InboundRecord, value: dict[str, Any], where: str
) -> tuple[list[StatusUpdate], int]:
    """A change's status updates, and the bytes their rows and events copy of what
    they share (the phone_number_id, the display number), as for messages.

    Each must have its message's ``id``, a ``status`` word (one Meta may add is kept as
    sent), Meta's ``timestamp`` (Unix seconds: digits, or an integer), and who it went
    to (``recipient_id``, or ``recipient_user_id``); else the record is dead-lettered
    naming the field (docs/design.md, "Statuses")."""
    raw_statuses = _optional_list(value, "statuses", where)
    if not raw_statuses:
        return [], 0
    pnid, display = _number(value, where)
    per_status = 3 * _utf8_len(pnid) + _utf8_len(display)
    out = []
    for k, raw in enumerate(raw_statuses):
        at = f"{where}.value.statuses[{k}]"
        raw = _obj(raw, at)
        status_id = _field(raw, "id", at, limits.WAMID_MAX)
        word = _field(raw, "status", at, limits.STATUS_MAX)
        recipient_field = "recipient_id" if "recipient_id" in raw else "recipient_user_id"
        recipient = _field(raw, recipient_field, at, limits.RECIPIENT_MAX)
        out.append(
            StatusUpdate(
                key=StatusKey(pnid, status_id, word),
                timestamp=_unix_seconds(raw, at),
                recipient=recipient,
                display_phone_number=display,
                raw=raw,
                source=record,
            )
        )
    return out, per_status * len(out)


def _field(parent: dict[str, Any], name: str, where: str, max_chars: int) -> str:
    """A status's identifier field: a non-empty string within the contract, else the
    record is dead-lettered as invalid_field naming it."""
    value = parent.get(name)
    if not isinstance(value, str) or not value:
        raise _Reject(Reason.INVALID_FIELD, f"{where}.{name} is {_kind(value)}, not a string")
    _check_id(value, f"{where}.{name}", max_chars)
    return value


def _unix_seconds(parent: dict[str, Any], where: str) -> str:
    """Meta's timestamp: Unix seconds, 1-20 ASCII digits (an integer is taken as its
    decimal string)."""
    value = parent.get("timestamp")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= limits.TIMESTAMP_MAX
        or not (value.isascii() and value.isdigit())
    ):
        raise _Reject(
            Reason.INVALID_FIELD,
            f"{where}.timestamp is {_kind(value)}, not Unix seconds "
            f"(1-{limits.TIMESTAMP_MAX} digits)",
        )
    return value


def _display_phone_number(metadata: dict[str, Any], where: str) -> str | None:
    """metadata.display_phone_number, checked like an identifier (every event of the
    change copies it); an integer is taken as its decimal string; absent or null: None."""
    display = metadata.get("display_phone_number")
    if display is None:
        return None
    if isinstance(display, int) and not isinstance(display, bool):
        display = str(display)
    if not isinstance(display, str) or not display:
        raise _Reject(
            Reason.INVALID_FIELD,
            f"{where}.value.metadata.display_phone_number is {_kind(display)}, not a phone number",
        )
    _check_id(
        display, f"{where}.value.metadata.display_phone_number", limits.DISPLAY_PHONE_NUMBER_MAX
    )
    return display


def _contact_share(profile: dict[str, Any] | None, name: str | None, wa_id: str | None) -> int:
    """What each message matched to this contact copies of it: the profile (the row's
    contact_profile), the name twice (the row's contact_name, the event's contact.name),
    the wa_id twice (the row, the event). Measured once per contact, not per message."""
    share = 2 * (_utf8_len(name) + _utf8_len(wa_id))
    if profile is not None:
        share += len(orjson.dumps(profile))
    return share


def _utf8_len(text: str | None) -> int:
    return len(text.encode("utf-8", "surrogatepass")) if text else 0


# A contact entry and its index in the change's contacts (to name it in a dead letter).
_Contact = tuple[int, dict[str, Any]]


def _contacts(raw: list[Any]) -> tuple[dict[str, _Contact], _Contact | None]:
    """A change's contacts by wa_id (the first of each), and the lone contact: a single
    entry is the sender's even without a wa_id match (username-only senders), but with
    several we never guess another person's name. One pass: a record with thousands of
    messages and contacts costs no more than its size."""
    by_wa_id: dict[str, _Contact] = {}
    lone: _Contact | None = None
    entries = 0
    for n, entry in enumerate(raw):
        if not isinstance(entry, dict):
            continue
        entries += 1
        lone = (n, entry)
        wa_id = entry.get("wa_id")
        if isinstance(wa_id, str) and wa_id not in by_wa_id:
            by_wa_id[wa_id] = lone
    return by_wa_id, (lone if entries == 1 else None)


def _contact_wa_id(contact: _Contact | None, where: str) -> str | None:
    if contact is None:
        return None
    n, entry = contact
    wa_id = entry.get("wa_id")
    if not isinstance(wa_id, str):
        return None
    _check_id(wa_id, f"{where}.value.contacts[{n}].wa_id", limits.CONTACT_WA_ID_MAX)
    return wa_id


def _check_id(value: str, where: str, max_chars: int) -> None:
    """An identifier the database keeps in a VARCHAR and the lease key is built from."""
    if len(value) > max_chars:
        raise _Reject(
            Reason.INVALID_FIELD, f"{where} has {len(value)} characters, at most {max_chars}"
        )
    bad = _CONTROL.search(value)
    if bad is not None:
        raise _Reject(
            Reason.INVALID_FIELD,
            f"{where} holds a control character (U+{ord(bad.group()):04X}) at {bad.start()}",
        )


def _kind(value: object) -> str:
    """What a value is, without quoting it (it may be huge, deep or hostile)."""
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return {dict: "an object", list: "an array", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Reject(Reason.BAD_SHAPE, f"{where} is not an object")
    return value


def _list(parent: dict[str, Any], name: str, where: str) -> list[Any]:
    value = parent.get(name)
    if not isinstance(value, list):
        raise _Reject(Reason.BAD_SHAPE, f"{where}.{name} is missing or not a list")
    return value


def _optional_list(parent: dict[str, Any], name: str, where: str) -> list[Any]:
    if name not in parent:
        return []
    return _list(parent, name, f"{where}.value")


def _id(parent: dict[str, Any], name: str, where: str, max_chars: int) -> str:
    value = parent.get(name)
    if not isinstance(value, str) or not value:
        raise _Reject(Reason.BAD_SHAPE, f"{where}.{name} is missing or not a string")
    _check_id(value, f"{where}.{name}", max_chars)
    return value


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None
