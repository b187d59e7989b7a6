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

With Meta's App Secret configured, a record must first prove it comes from Meta: its
``X-Hub-Signature-256`` header (any case) must be ``sha256=`` and the hex HMAC-SHA256 of
the raw value under the secret, checked on the bytes as received, before any parsing.
"""

from __future__ import annotations

import hmac
import itertools
import re
import string
from typing import Any

import orjson

from consumer import limits
from consumer.records import InboundRecord, Invalid, Message, MessageKey, Reason, Webhook


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
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # orjson's own limit (1024) is far above ours
            raise _Reject(Reason.TOO_DEEP, _too_deep()) from None
        raise _Reject(Reason.NOT_JSON, str(exc)[:200]) from None
    if not isinstance(body, dict):
        raise _Reject(Reason.BAD_SHAPE, f"top level is {_kind(body)}, not an object")
    _check_depth(value)
    _check_event_size(value, body)
    return body


def _check_event_size(value: bytes, body: dict[str, Any]) -> None:
    """Every event of the body must fit a produce request. An event copies parts of the
    body, re-encoded (numbers can come out longer: 9e15 is 9000000000000000.0), plus its
    envelope; so a body is measured re-encoded, once, when its own size does not already
    prove that it fits (never at the default MAX_RECORD_BYTES of a real webhook)."""
    room = limits.MAX_EVENT_BYTES - limits.EVENT_ENVELOPE_BYTES
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
    statuses = errors = ignored = 0
    for i, entry in enumerate(entries):
        for j, change in enumerate(_list(_obj(entry, f"entry[{i}]"), "changes", f"entry[{i}]")):
            where = f"entry[{i}].changes[{j}]"
            change = _obj(change, where)
            value = _obj(change.get("value"), f"{where}.value")
            if change.get("field", "messages") != "messages":
                ignored += 1
                continue
            found = _messages(record, value, where)
            messages.extend(found)
            statuses += len(_optional_list(value, "statuses", where))
            errors += len(_optional_list(value, "errors", where))
            if not found and "statuses" not in value and "errors" not in value:
                ignored += 1
    return Webhook(record, tuple(messages), statuses, errors, ignored)


def _messages(record: InboundRecord, value: dict[str, Any], where: str) -> list[Message]:
    raw_messages = _optional_list(value, "messages", where)
    if not raw_messages:
        return []  # statuses / errors only: no message needs the phone_number_id
    metadata = value.get("metadata")
    pnid = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    if isinstance(pnid, int) and not isinstance(pnid, bool):
        pnid = str(pnid)
    if not isinstance(pnid, str) or not pnid:
        raise _Reject(Reason.MISSING_PHONE_NUMBER_ID, f"{where}.value.metadata.phone_number_id")
    assert isinstance(metadata, dict)  # noqa: S101 - narrowed above; for mypy
    _check_id(pnid, f"{where}.value.metadata.phone_number_id", limits.PHONE_NUMBER_ID_MAX)
    display = metadata.get("display_phone_number")
    by_wa_id, lone = _contacts(_optional_list(value, "contacts", where))
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
        out.append(
            Message(
                key=MessageKey(pnid, wamid),
                sender=sender,
                type=_id(raw, "type", at, limits.MESSAGE_TYPE_MAX),
                timestamp=_id(raw, "timestamp", at, limits.TIMESTAMP_MAX),
                contact_wa_id=_contact_wa_id(contact, where),
                contact_name=_opt_str(profile.get("name")) if isinstance(profile, dict) else None,
                contact_profile=profile if isinstance(profile, dict) else None,
                display_phone_number=_opt_str(display),
                raw=raw,
                source=record,
            )
        )
    return out


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
