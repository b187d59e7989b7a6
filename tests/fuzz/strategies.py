"""Hypothesis strategies of WhatsApp webhook bodies that intake should accept: built from
the samples (tests/fixtures/webhooks) and from the numbers of consumer/limits.py.

They aim at the edges of the storage contract rather than at typical traffic:
identifiers of exactly their column's length (in ASCII, accented, CJK, emoji and other
four-byte characters), separators inside ids (``:``, ``#``, ``/``), numeric
phone_number_ids up to 2**64 - 1, nesting up to exactly ``limits.MAX_JSON_DEPTH``, free
text with NUL, bidi overrides and characters that only look like lone surrogates,
numbers at the ends of what JSON and orjson carry, several entries, changes, messages and
contacts per body. A small share (about 1 in 30: a nesting one level too deep) is refused
on purpose, so that the boundary itself is crossed.

Every value is a plain Python object that JSON round-trips exactly (no NaN, no infinity,
no lone surrogates, integers within orjson's 64-bit range): "the message as sent" is the
dict drawn here.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from hypothesis import strategies as st

from consumer import limits

FIXTURES = Path(__file__).parents[1] / "fixtures" / "webhooks"
SAMPLE_BYTES: dict[str, bytes] = {p.name: p.read_bytes() for p in sorted(FIXTURES.glob("*.json"))}
SAMPLES: dict[str, dict[str, Any]] = {n: json.loads(b) for n, b in SAMPLE_BYTES.items()}

# Where a message sits in a body: body, entry[], entry, changes[], change, value,
# messages[], message. A chain of containers under a message field may be this deep
# before the body is deeper than the limit. A contact's profile sits one level lower.
MESSAGE_LEVEL = 8
MESSAGE_NEST_MAX = limits.MAX_JSON_DEPTH - MESSAGE_LEVEL
PROFILE_NEST_MAX = limits.MAX_JSON_DEPTH - (MESSAGE_LEVEL + 1)

# Characters that are fine in an identifier (no control character, Unicode Cc) but odd:
# multi-byte (2, 3, 4 UTF-8 bytes), bidi overrides, zero-width, noncharacters, the BOM,
# line separators, a combining mark, the last code point.
ODD_CHARS = [
    "é",
    "ß",
    "中",
    "한",
    "😀",
    "👍",
    "\U0010ffff",
    "\U000e0001",
    "\u202e",
    "\u202d",
    "\u200b",
    "\u200d",
    "\ufeff",
    "\ufffd",
    "\ufffe",
    "\uffff",
    "\u2028",
    "\u2029",
    "\u0301",
    "\ud7ff",
    "\ue000",
    "\u00a0",
]
SEPARATORS = [":", "#", "/", ".", "-", "_", "=", "+", " ", "\\", '"', "'", "%", "*", "?"]
ID_CHARS = list("abcXYZ0189") + SEPARATORS + ODD_CHARS
# One code point each, so that ``fill * n`` is n characters.
FILL_CHARS = ["1", "A", "é", "中", "😀", "\U0010ffff", ":", "#", "/", "\u202e", "\ufffd"]
# Free text may hold anything: control characters (NUL first), terminal escapes, text that
# looks like a lone surrogate or an escape, quotes and backslashes.
TEXT_SPECIALS = [
    *ODD_CHARS,
    "\x00",
    "\x01",
    "\x1f",
    "\x7f",
    "\x85",
    "\x9f",
    "\x1b[31m",
    "\\ud800",
    "\\udc00",
    "\\u0000",
    '"',
    "\\",
    "\n",
    "\r\n",
    "\t",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",
]
BIG_NUMBERS = [
    18446744073709551615,  # 2**64 - 1: the largest integer orjson reads as an int
    9223372036854775807,
    -9223372036854775808,
    0,
    -0.0,
    0.0,
    1e308,
    -1e308,
    1.7976931348623157e308,
    5e-324,
    2.2250738585072014e-308,
    9e15,  # re-encoded by orjson as 9000000000000000.0: the largest growth per byte
    0.1,
    1e-7,
]


def exactly(n: int) -> st.SearchStrategy[str]:
    """Strings of exactly `n` characters: a short odd prefix, then one character
    repeated (1 to 4 UTF-8 bytes each)."""
    return st.builds(
        lambda prefix, fill: (prefix + fill * n)[:n],
        st.text(st.sampled_from(ID_CHARS), max_size=8),
        st.sampled_from(FILL_CHARS),
    )


def identifiers(max_chars: int, samples: list[str]) -> st.SearchStrategy[str]:
    """Valid identifiers for a column of `max_chars`: real ones, exactly the limit, one
    under it, short odd ones, arbitrary printable ones."""
    return st.one_of(
        st.sampled_from(samples),
        exactly(max_chars),
        exactly(max_chars - 1),
        st.text(st.sampled_from(ID_CHARS), min_size=1, max_size=12),
        st.text(
            st.characters(exclude_categories=("Cc", "Cs")),
            min_size=1,
            max_size=min(max_chars, 24),
        ),
    )


WAMIDS = identifiers(
    limits.WAMID_MAX,
    ["wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=", "wamid.TEST-0001"],
)
SENDERS = identifiers(limits.SENDER_MAX, ["16505551234", "US.13491208655302741918"])
TYPES = identifiers(
    limits.MESSAGE_TYPE_MAX, ["text", "image", "reaction", "interactive", "request_welcome"]
)
TIMESTAMPS = identifiers(limits.TIMESTAMP_MAX, ["1749416383", "0", "99999999999999999999"])
WA_IDS = identifiers(limits.CONTACT_WA_ID_MAX, ["16505551234", "US.13491208655302741918"])
# The business number as displayed: a string within its limit, or an integer (taken as
# its decimal string); null stands for none.
DISPLAY_PHONE_NUMBERS: st.SearchStrategy[str | int | None] = st.one_of(
    identifiers(limits.DISPLAY_PHONE_NUMBER_MAX, ["15550783881", "+1 555-078-3881"]),
    st.integers(0, 2**64 - 1),
    st.none(),
)
PHONE_NUMBER_IDS: st.SearchStrategy[str | int] = st.one_of(
    identifiers(limits.PHONE_NUMBER_ID_MAX, ["106540352242922", "1"]),
    st.integers(0, 2**64 - 1),
    st.integers(-(2**63), -1),
    st.sampled_from([18446744073709551615, 106540352242922, 0, -9223372036854775808]),
)

FREE_TEXT = st.one_of(
    st.text(max_size=20),
    st.lists(st.one_of(st.sampled_from(TEXT_SPECIALS), st.text(max_size=4)), max_size=8).map(
        "".join
    ),
    st.builds(lambda c, n: c * n, st.sampled_from(TEXT_SPECIALS + FILL_CHARS), st.integers(0, 500)),
)
NUMBERS = st.one_of(
    st.sampled_from(BIG_NUMBERS),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
JSON_LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, FREE_TEXT)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text(max_size=6) | st.sampled_from(TEXT_SPECIALS), children, max_size=3),
    ),
    max_leaves=6,
)
ENVELOPE = ("id", "from", "type", "timestamp")
EXTRA_FIELDS = st.dictionaries(
    st.one_of(
        st.sampled_from(["context", "errors", "referral", "source_id", "message", "\x00", ""]),
        st.text(max_size=8),
    ).filter(lambda k: k not in ENVELOPE),
    JSON_VALUES,
    max_size=2,
)


def nest_levels(max_levels: int) -> st.SearchStrategy[int]:
    """How many containers to chain under a field: exactly the most the body's depth
    limit allows, fewer, or none."""
    return st.one_of(st.just(max_levels), st.integers(0, max_levels), st.just(0))


def _chain(levels: int, leaf: Any, shape: str) -> Any:
    """`leaf` inside `levels` arrays and/or objects."""
    value = leaf
    for i in range(levels):
        as_list = shape == "list" or (shape == "mixed" and i % 2 == 1)
        value = [value] if as_list else {"n": value}
    return value


@st.composite
def nested(draw: st.DrawFn, max_levels: int) -> Any:
    """A chain of arrays and/or objects `levels` deep around one leaf."""
    levels = draw(nest_levels(max_levels))
    return _chain(levels, draw(JSON_LEAVES), draw(st.sampled_from(["list", "dict", "mixed"])))


def _content(message_type: str) -> st.SearchStrategy[dict[str, Any]]:
    """The type's own object, Meta-shaped for the common types."""
    by_type: dict[str, st.SearchStrategy[dict[str, Any]]] = {
        "text": st.fixed_dictionaries({"body": FREE_TEXT}),
        "image": st.fixed_dictionaries(
            {"caption": FREE_TEXT, "mime_type": st.just("image/jpeg"), "id": WA_IDS}
        ),
        "reaction": st.fixed_dictionaries(
            {"message_id": WAMIDS}, optional={"emoji": st.sampled_from(["👍", "\U0010ffff", ""])}
        ),
        "location": st.fixed_dictionaries({"latitude": NUMBERS, "longitude": NUMBERS}),
        "order": st.fixed_dictionaries(
            {
                "catalog_id": WA_IDS,
                "product_items": st.lists(
                    st.fixed_dictionaries({"quantity": NUMBERS, "item_price": NUMBERS}),
                    max_size=4,
                ),
            }
        ),
    }
    return by_type.get(message_type, st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3))


@st.composite
def messages(draw: st.DrawFn, senders: list[str]) -> dict[str, Any]:
    """One Meta message object: the four identifiers, the type's content, maybe other
    fields, maybe a chain of containers down to the depth limit."""
    message_type = draw(
        st.one_of(st.sampled_from(["text", "image", "reaction", "location", "order"]), TYPES)
    )
    msg: dict[str, Any] = {
        "from": draw(st.sampled_from(senders) | SENDERS),
        "id": draw(WAMIDS),
        "timestamp": draw(TIMESTAMPS),
        "type": message_type,
    }
    msg[message_type] = draw(_content(message_type))
    msg.update(draw(EXTRA_FIELDS))
    if draw(st.booleans()):
        msg["nested"] = draw(nested(MESSAGE_NEST_MAX))
    return msg


@st.composite
def contacts(draw: st.DrawFn, senders: list[str]) -> dict[str, Any]:
    """A contacts entry: a profile whose name may hold NUL, and a wa_id that is one of
    the senders, another identifier, a number or missing."""
    profile: dict[str, Any] = {"name": draw(FREE_TEXT)}
    if draw(st.booleans()):
        profile["username"] = draw(FREE_TEXT)
    if draw(st.booleans()):
        profile["nested"] = draw(nested(PROFILE_NEST_MAX))
    contact: dict[str, Any] = {"profile": profile}
    wa_id = draw(
        st.one_of(
            st.sampled_from(senders), WA_IDS, st.integers(0, 2**64 - 1), st.none(), st.just(...)
        )
    )
    if wa_id is not ...:
        contact["wa_id"] = wa_id
    return contact


@st.composite
def message_changes(draw: st.DrawFn) -> dict[str, Any]:
    """A change of field ``messages`` with 1-3 messages and 0-3 contacts."""
    senders = draw(st.lists(SENDERS, min_size=1, max_size=3))
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": draw(DISPLAY_PHONE_NUMBERS),
            "phone_number_id": draw(PHONE_NUMBER_IDS),
        },
        "contacts": draw(st.lists(contacts(senders), max_size=3)),
        "messages": draw(st.lists(messages(senders), min_size=1, max_size=3)),
    }
    if draw(st.booleans()):
        value["statuses"] = [
            {"id": draw(WAMIDS), "status": "read", "timestamp": "1", "recipient_id": "15551234567"}
        ]
    change: dict[str, Any] = {"value": value}
    if draw(st.booleans()):
        change["field"] = "messages"  # the default when missing
    return change


OTHER_CHANGES = st.sampled_from(
    [
        {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}},
        {
            "field": "messages",
            "value": {
                "metadata": {"phone_number_id": "106540352242922"},
                "statuses": [
                    {
                        "id": "wamid.OUT",
                        "status": "sent",
                        "timestamp": "1750030073",
                        "recipient_id": "16505551234",
                    }
                ],
            },
        },
        {"field": "messages", "value": {"errors": [{"code": 131000, "title": "\x00"}]}},
    ]
).map(copy.deepcopy)


@st.composite
def from_limits(draw: st.DrawFn) -> dict[str, Any]:
    """A body of 1-2 entries of 1-2 changes, built from the limits."""
    entries = []
    for _ in range(draw(st.integers(1, 2))):
        changes = draw(st.lists(message_changes() | OTHER_CHANGES, min_size=1, max_size=2))
        entries.append({"id": draw(WA_IDS), "changes": changes})
    body: dict[str, Any] = {"entry": entries}
    if draw(st.booleans()):
        body["object"] = "whatsapp_business_account"  # the default when missing
    return body


_REPLACEABLE: list[tuple[str, st.SearchStrategy[Any]]] = [
    ("id", WAMIDS),
    ("from", SENDERS),
    ("type", TYPES),
    ("timestamp", TIMESTAMPS),
]


def _vary_message(draw: st.DrawFn, msg: dict[str, Any]) -> None:
    for name, strategy in _REPLACEABLE:
        if draw(st.booleans()):
            msg[name] = draw(strategy)
    if isinstance(msg.get("text"), dict) and draw(st.booleans()):
        msg["text"]["body"] = draw(FREE_TEXT)
    msg.update(draw(EXTRA_FIELDS))


def _vary_value(draw: st.DrawFn, value: dict[str, Any]) -> None:
    if draw(st.booleans()):
        value["metadata"]["phone_number_id"] = draw(PHONE_NUMBER_IDS)
    for contact in value.get("contacts", []):
        if draw(st.booleans()):
            contact["profile"]["name"] = draw(FREE_TEXT)
    if "messages" not in value:
        return
    senders = [m["from"] for m in value["messages"]]
    for msg in value["messages"]:
        _vary_message(draw, msg)
    value["messages"].extend(draw(st.lists(messages(senders), max_size=2)))


@st.composite
def from_samples(draw: st.DrawFn) -> dict[str, Any]:
    """A sample with some of its identifiers, texts and names replaced, fields and
    messages added, entries repeated."""
    body = copy.deepcopy(SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))])
    for entry in body["entry"]:
        for change in entry["changes"]:
            _vary_value(draw, change["value"])
    if draw(st.booleans()):
        body["entry"] = copy.deepcopy(body["entry"] * draw(st.integers(2, 3)))
    return body


@st.composite
def webhook_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Webhook bodies as Python objects, mostly ones intake accepts: about 1 in 30 is one
    level deeper than the limit (a chain of exactly MAX_JSON_DEPTH containers under a
    top-level field), which intake must refuse. Decided once per body, by a draw of its
    own: per field, or as a one_of branch (which Hypothesis may switch off or favour for
    a whole run), the share of refused bodies swung from 4% to 14% between runs."""
    body: dict[str, Any] = draw(st.one_of(from_samples(), from_limits()))
    # Not 0, nor 29: Hypothesis draws a range's ends far more often than 1 in 30 (the
    # simplest choice, 0, came up for 30% of bodies drawn after a large one).
    if draw(st.integers(0, 29)) == 13:
        shape = draw(st.sampled_from(["list", "dict", "mixed"]))
        body["beyond_the_limit"] = _chain(limits.MAX_JSON_DEPTH, draw(JSON_LEAVES), shape)
    return body


# -- encodings -------------------------------------------------------------------------

ENCODINGS: dict[str, Callable[[Any], bytes]] = {
    # \uXXXX escapes for everything beyond ASCII, surrogate pairs for emoji.
    "json-ascii": lambda body: json.dumps(body).encode(),
    "json-utf8": lambda body: json.dumps(body, ensure_ascii=False).encode(),
    "orjson": orjson.dumps,
    "json-indented": lambda body: json.dumps(body, indent=2, ensure_ascii=False).encode(),
}


def encode(body: Any, encoding: str) -> bytes:
    return ENCODINGS[encoding](body)


def sent_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The message objects of a body in the order intake finds them (entries, changes of
    field ``messages``, messages): what each decoded message was sent as."""
    out = []
    for entry in body["entry"]:
        for change in entry["changes"]:
            if change.get("field", "messages") == "messages":
                out.extend(change["value"].get("messages", []))
    return out
