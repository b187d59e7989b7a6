"""Hypothesis strategies of inbound records for fuzzing ``intake.decode``.

Each draws a :class:`Case`: the record's value (and, for some, a signature header and the
App Secret to check it with) and the name of the generator that made it. The families:

* ``bytes``, ``tokens``: arbitrary bytes, and soups of JSON tokens and webhook keys;
* ``sample-bytes``: the samples with bytes flipped, inserted, deleted, duplicated, spliced;
* ``sample-tree``, ``limits-tree``: the samples and the structured bodies of
  ``strategies.py`` with values replaced by hostile ones (over-limit and control-character
  identifiers, wrong types, odd numbers, deep chains), or removed;
* ``limits``: the structured bodies as they are (mostly accepted);
* ``boundary``: one identifier at its limit, one over, empty, with a control character,
  of another type; numeric phone_number_ids past 64 bits;
* ``deep``: nesting at the body's top, in a message and in a profile, at and around
  ``MAX_JSON_DEPTH`` and orjson's own 1024, up to 100,000; brackets inside strings; cut;
* ``huge``: thousands of messages, contacts, entries, changes; one huge text; numbers that
  grow when re-encoded; up to ``max_bytes`` exactly (whitespace-padded) and just over;
* ``bad-utf8``: invalid UTF-8 (overlong, CESU surrogates, beyond U+10FFFF, truncated),
  lone and reversed surrogate escapes, a BOM, invalid escapes;
* ``dup-keys``: bodies with keys given twice (orjson keeps the last);
* ``signed``: any of the sample and structured cases with the App Secret set and a
  signature header that is right, wrong, malformed, doubled or missing.
"""

from __future__ import annotations

import copy
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import strategies as st

from consumer import intake, limits
from tests.fuzz.strategies import (
    ENCODINGS,
    FREE_TEXT,
    JSON_VALUES,
    NUMBERS,
    SAMPLE_BYTES,
    SAMPLES,
    encode,
    exactly,
    webhook_bodies,
)

APP_SECRET = b"fuzz-app-secret"


@dataclass(frozen=True, slots=True)
class Case:
    """One record to decode, and what made it."""

    kind: str
    value: bytes | None
    headers: tuple[tuple[str, Any], ...] = ()
    app_secret: bytes | None = None


# -- shared pieces ---------------------------------------------------------------------

SAMPLE_VARIANTS = [
    *SAMPLE_BYTES.values(),
    *(orjson.dumps(b) for b in SAMPLES.values()),
    *(json.dumps(b).encode() for b in SAMPLES.values()),
]
TOKENS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b":",
    b",",
    b" ",
    b"\n",
    b"null",
    b"true",
    b"false",
    b"0",
    b"-0",
    b"1",
    b"9e15",
    b"1e308",
    b"1e309",
    b"-1e400",
    b"18446744073709551615",
    b"18446744073709551616",
    b"NaN",
    b"Infinity",
    b'"entry"',
    b'"changes"',
    b'"value"',
    b'"field"',
    b'"messages"',
    b'"metadata"',
    b'"phone_number_id"',
    b'"contacts"',
    b'"wa_id"',
    b'"profile"',
    b'"id"',
    b'"from"',
    b'"type"',
    b'"timestamp"',
    b'"object"',
    b'"whatsapp_business_account"',
    b'"wamid.A"',
    b'"1"',
    b"\\u0000",
    b"\\ud800",
    b"\\udc00",
    b"\\ud83d\\ude00",
    b"\\",
    b"\\x",
    b"\x00",
    b"\x1f",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xef\xbb\xbf",
    "😀".encode(),
    "\u202e".encode(),
]
# Identifiers and fields of a message, with the limit of each.
ID_FIELDS = {
    "phone_number_id": limits.PHONE_NUMBER_ID_MAX,
    "id": limits.WAMID_MAX,
    "from": limits.SENDER_MAX,
    "type": limits.MESSAGE_TYPE_MAX,
    "timestamp": limits.TIMESTAMP_MAX,
    "wa_id": limits.CONTACT_WA_ID_MAX,
}


def _bad_identifiers(max_chars: int) -> st.SearchStrategy[Any]:
    """An identifier intake must refuse, or one at the edge it must accept."""
    control = st.sampled_from(["\x00", "\x1f", "\x7f", "\x85", "\x9f", "\n", "\x1b"])
    return st.one_of(
        exactly(max_chars),
        exactly(max_chars + 1),
        exactly(max_chars - 1),
        st.builds(lambda c, s: s[: max_chars - 1] + c, control, exactly(max_chars)),
        st.builds(lambda c, s: c + s, control, st.text(max_size=5)),
        st.sampled_from(["", " ", "\u202e", "\ufeff", "😀" * max_chars]),
        st.sampled_from([None, True, False, 0, -1, 1.5, -0.0, 2**64 - 1, [], {}, ["1"]]),
        st.sampled_from([1e308, 5e-324, -(2**63), 10**18, 10**19]),
    )


def _chain(levels: int, shape: str, leaf: Any) -> Any:
    value = leaf
    for i in range(levels):
        as_list = shape == "list" or (shape == "mixed" and i % 2 == 1)
        value = [value] if as_list else {"n": value}
    return value


_BAD_IDENTIFIERS = {name: _bad_identifiers(limit) for name, limit in ID_FIELDS.items()}
HOSTILE_VALUES = st.one_of(
    JSON_VALUES,
    NUMBERS,
    FREE_TEXT,
    _BAD_IDENTIFIERS["phone_number_id"],
    _BAD_IDENTIFIERS["id"],
    _BAD_IDENTIFIERS["type"],
    st.integers(1, 80).map(lambda n: _chain(n, "mixed", 1)),
)


def _nodes(value: Any) -> list[tuple[Any, Any]]:
    """(container, key or index) of every node below `value`, in a stable order."""
    out: list[tuple[Any, Any]] = []
    stack = [value]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            out.append((node, key))
            if isinstance(child, dict | list):
                stack.append(child)
    return out


def _mutate_tree(draw: st.DrawFn, body: Any) -> Any:
    """Replace, remove or duplicate 1-4 nodes of `body` (in place; returned). `body` must
    be the caller's own copy: strategies may hand out the same object twice."""
    for _ in range(draw(st.integers(1, 4))):
        nodes = _nodes(body)
        if not nodes:
            break
        parent, key = nodes[draw(st.integers(0, len(nodes) - 1))]
        action = draw(st.sampled_from(["replace", "replace", "remove", "wrap", "repeat"]))
        if action == "replace":
            parent[key] = copy.deepcopy(draw(HOSTILE_VALUES))
        elif action == "remove":
            del parent[key]
        elif action == "wrap":
            parent[key] = draw(st.sampled_from([[parent[key]], {"n": parent[key]}]))
        elif isinstance(parent[key], list):
            parent[key] = parent[key] * draw(st.integers(0, 3))
    return body


ENCODING_NAMES = st.sampled_from(sorted(ENCODINGS))

# -- the families ----------------------------------------------------------------------


def raw_bytes() -> st.SearchStrategy[Case]:
    return st.binary(max_size=2048).map(lambda v: Case("bytes", v))


def token_soup() -> st.SearchStrategy[Case]:
    return st.lists(st.sampled_from(TOKENS), max_size=120).map(
        lambda parts: Case("tokens", b"".join(parts))
    )


_BYTE_OPS = ["flip", "insert", "delete", "duplicate", "splice", "truncate"]


@st.composite
def mutated_samples(draw: st.DrawFn) -> Case:
    """A sample's bytes with 1-8 byte-level edits."""
    value = bytearray(draw(st.sampled_from(SAMPLE_VARIANTS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(_BYTE_OPS))
        at = draw(st.integers(0, len(value)))
        span = draw(st.integers(1, 64))
        if op == "flip" and value:
            value[at % len(value)] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            value[at:at] = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del value[at : at + span]
        elif op == "duplicate":
            value[at:at] = value[at : at + span] * draw(st.integers(1, 50))
        elif op == "splice":
            other = draw(st.sampled_from(SAMPLE_VARIANTS))
            start = draw(st.integers(0, len(other)))
            value[at:at] = other[start : start + span * 8]
        else:
            del value[at:]
    return Case("sample-bytes", bytes(value))


@st.composite
def mutated_sample_trees(draw: st.DrawFn) -> Case:
    return Case("sample-tree", encode(draw(_SAMPLE_TREES), draw(ENCODING_NAMES)))


def _value(case: Case) -> bytes:
    return case.value or b""


@st.composite
def _mutated_sample_bodies(draw: st.DrawFn) -> Any:
    return _mutate_tree(draw, copy.deepcopy(SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))]))


_SAMPLE_TREES = _mutated_sample_bodies()


@st.composite
def mutated_limit_trees(draw: st.DrawFn) -> Case:
    body = _mutate_tree(draw, copy.deepcopy(draw(webhook_bodies())))
    return Case("limits-tree", encode(body, draw(ENCODING_NAMES)))


@st.composite
def structured(draw: st.DrawFn) -> Case:
    return Case("limits", encode(draw(webhook_bodies()), draw(ENCODING_NAMES)))


def _one_message_body(
    msg: dict[str, Any], pnid: Any = "106540352242922", contacts: list[Any] | None = None
) -> dict[str, Any]:
    value: dict[str, Any] = {"metadata": {"phone_number_id": pnid}, "messages": [msg]}
    if contacts is not None:
        value["contacts"] = contacts
    return {"entry": [{"changes": [{"field": "messages", "value": value}]}]}


def _message(wamid: str = "wamid.A", sender: str = "16505551234") -> dict[str, Any]:
    return {"from": sender, "id": wamid, "timestamp": "1749416383", "type": "text"}


@st.composite
def boundary_identifiers(draw: st.DrawFn) -> Case:
    """A one-message body with one identifier at, over or under its limit, empty, with a
    control character, or of another type."""
    name = draw(st.sampled_from(sorted(ID_FIELDS)))
    value = draw(_BAD_IDENTIFIERS[name])
    msg = _message()
    if name == "phone_number_id":
        body = _one_message_body(msg, pnid=value)
    elif name == "wa_id":
        body = _one_message_body(msg, contacts=[{"wa_id": value, "profile": {"name": "x"}}])
    else:
        msg[name] = value
        body = _one_message_body(msg)
    return Case("boundary", encode(body, draw(ENCODING_NAMES)))


_DEPTHS = [1, 2, 55, 56, 57, 58, 63, 64, 65, 66, 100, 1000, 1023, 1024, 1025, 1026, 5000, 100_000]
_HOLE = b'"@@HOLE@@"'


def _deep_bytes(levels: int, shape: str) -> bytes:
    opens = {"list": [b"["], "dict": [b'{"k":'], "mixed": [b"[", b'{"k":']}[shape]
    closes = {b"[": b"]", b'{"k":': b"}"}
    parts = [opens[i % len(opens)] for i in range(levels)]
    return b"".join(parts) + b"1" + b"".join(closes[p] for p in reversed(parts))


@st.composite
def deep(draw: st.DrawFn) -> Case:
    """Nesting at and around MAX_JSON_DEPTH and orjson's 1024, up to 100,000 levels, at
    the top, under a message or a profile; brackets inside strings; cut short."""
    levels = draw(st.sampled_from(_DEPTHS) | st.integers(1, 2000))
    shape = draw(st.sampled_from(["list", "dict", "mixed"]))
    where = draw(st.sampled_from(["top", "message", "profile", "in-string", "unclosed"]))
    if where == "top":
        value = b'{"entry":' + _deep_bytes(levels, shape) + b"}"
    elif where == "in-string":
        text = draw(st.sampled_from(["[", "{", '\\"[', "\\\\[", '"{', "[\\u005b"])) * levels
        body = orjson.dumps(_one_message_body(_message() | {"text": {"body": "@"}}))
        value = body.replace(b'"@"', b'"' + text.encode() + b'"')
    elif where == "unclosed":
        value = _deep_bytes(levels, shape)
        value = value[: draw(st.integers(0, len(value)))]
    else:
        msg = _message() | {"x": "@@HOLE@@"}
        contacts = [{"wa_id": "16505551234", "profile": {"name": "n", "x": "@@HOLE@@"}}]
        body = orjson.dumps(_one_message_body(msg, contacts=contacts))
        inner = _deep_bytes(levels, shape)
        first, rest = body.split(_HOLE, 1)
        value = (
            first + inner + rest.replace(_HOLE, b"1")
            if where == "message"
            else first + b"1" + rest.replace(_HOLE, inner)
        )
    return Case("deep", value)


_NUMBER_TOKENS = [
    b"9e15",
    b"-0",
    b"-0.0",
    b"1e308",
    b"1e-400",
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"123456789012345678901234567890",
    b"5e-324",
]
_LIST_SHAPES = [
    "messages",
    "same-wamid",
    "contacts",
    "same-wa-id",
    "entries",
    "changes",
    "statuses",
]
_HUGE_SHAPES = [
    *_LIST_SHAPES,
    "text",
    "numbers",
    "empty-strings",
    "brackets-in-strings",
    "shallow-brackets",
    "deep-tail",
]


def _fill(head: bytes, item: Callable[[int], bytes], tail: bytes, target: int) -> bytes:
    """head + items joined by commas + tail, as many items as keep it within `target`."""
    parts = [head]
    size = len(head) + len(tail)
    n = 0
    while True:
        piece = item(n) if n == 0 else b"," + item(n)
        if size + len(piece) > target:
            break
        parts.append(piece)
        size += len(piece)
        n += 1
    parts.append(tail)
    return b"".join(parts)


def _number(n: int) -> bytes:
    return str(n).encode()


_VALUE_HEAD = b'{"entry":[{"changes":[{"value":{"metadata":{"phone_number_id":"1"},'
_VALUE_TAIL = b"]}}]}]}"


def _huge_lists(shape: str, target: int, text: bytes) -> bytes:
    def msg(n: int) -> bytes:
        wamid = b"0" if shape == "same-wamid" else _number(n)
        return (
            b'{"from":"1","id":"w'
            + wamid
            + b'","timestamp":"1","type":"text","text":{"body":'
            + text
            + b"}}"
        )

    def contact(n: int) -> bytes:
        wa_id = b"1" if shape == "same-wa-id" else _number(n)
        return b'{"wa_id":"' + wa_id + b'","profile":{"name":' + text + b"}}"

    def change(n: int) -> bytes:
        return b'{"value":{"metadata":{"phone_number_id":"1"},"messages":[' + msg(n) + b"]}}"

    if shape in ("messages", "same-wamid"):
        return _fill(_VALUE_HEAD + b'"messages":[', msg, _VALUE_TAIL, target)
    if shape in ("contacts", "same-wa-id"):
        head = _VALUE_HEAD + b'"messages":[' + msg(0) + b'],"contacts":['
        return _fill(head, contact, _VALUE_TAIL, target)
    if shape == "entries":
        return _fill(b'{"entry":[', lambda n: b'{"changes":[' + change(n) + b"]}", b"]}", target)
    if shape == "changes":
        return _fill(b'{"entry":[{"changes":[', change, b"]}]}", target)
    status = b'{"id":"w%d","status":"read","timestamp":"1","recipient_id":"1"}'
    return _fill(_VALUE_HEAD + b'"statuses":[', lambda n: status % n, _VALUE_TAIL, target)


def _huge_value(shape: str, target: int, text: bytes, number: bytes) -> bytes:
    """A body of `shape` of about `target` bytes, space-padded to exactly `target`."""
    if shape in _LIST_SHAPES:
        value = _huge_lists(shape, target, text)
    else:
        head = _VALUE_HEAD + b'"messages":[{"from":"1","id":"w","timestamp":"1","type":"t","x":'
        tail = b"}" + _VALUE_TAIL
        budget = target - len(head) - len(tail)
        if shape in ("text", "brackets-in-strings"):
            unit = (text[1:-1] or b"x") if shape == "text" else b"[{"
            middle = b'"' + unit * max(0, (budget - 2) // len(unit)) + b'"'
        else:
            unit = {"numbers": number, "empty-strings": b'""'}.get(shape, b"[{}]")
            # deep-tail: a walk over every bracket before the one chain too deep is found
            end = b"," + _deep_bytes(57, "list") + b"]" if shape == "deep-tail" else b"]"
            middle = _fill(b"[", lambda n: unit, end, budget)
        value = head + middle + tail
    return value + b" " * max(0, target - len(value))


@st.composite
def huge(draw: st.DrawFn, max_bytes: int) -> Case:
    """Bodies of up to max_bytes (exactly, or one byte over) built from many parts."""
    shape = draw(st.sampled_from(_HUGE_SHAPES))
    target = draw(
        st.sampled_from([max_bytes, max_bytes + 1, max_bytes - 1])
        | st.integers(max_bytes // 16, max_bytes)
    )
    text = orjson.dumps(
        draw(st.sampled_from(["hi", "\x00", "\u202e😀", '"\\', "中" * 20, "\x00" * 50]))
    )
    number = draw(st.sampled_from(_NUMBER_TOKENS))
    return Case("huge", _huge_value(shape, target, text, number))


_BAD_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xc0\x80",
    b"\xc1\xbf",
    b"\xc3",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xed\xa0\xbd\xed\xb8\x80",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xef\xbb\xbf",
]
_BAD_ESCAPES = [
    b"\\ud800",
    b"\\udc00",
    b"\\udfff",
    b"\\ud800\\u0041",
    b"\\udc00\\ud800",
    b"\\ud800\\ud800",
    b"\\ud83d",
    b"\\uD83D\\uDE00",
    b"\\udbff\\udfff",
    b"\\u12",
    b"\\x41",
    b"\\U0001F600",
    b"\\",
    b"\\u0000",
]


@st.composite
def bad_utf8(draw: st.DrawFn) -> Case:
    """A body with invalid UTF-8 or a surrogate or bad escape inside a string (or
    anywhere), or a BOM in front."""
    base = draw(st.sampled_from(SAMPLE_VARIANTS) | mutated_sample_trees().map(_value))
    insert = draw(st.sampled_from(_BAD_UTF8 + _BAD_ESCAPES))
    where = draw(st.sampled_from(["in-string", "anywhere", "front"]))
    at = 0 if where == "front" else draw(st.integers(0, len(base)))
    if where == "in-string":  # just after the next quote (a string's first character)
        at = base.find(b'"', at) + 1
    return Case("bad-utf8", base[:at] + insert + base[at:])


def _dumps_with_duplicates(
    value: Any, dup: Any, every: int, dup_last: bool, counter: list[int]
) -> bytes:
    """JSON of `value` where every `every`-th object key is given twice: once with its
    value, once with `dup` (first or last; orjson keeps the last)."""
    if isinstance(value, dict):
        items = []
        for key, child in value.items():
            counter[0] += 1
            k = orjson.dumps(key) + b":"
            pair = k + _dumps_with_duplicates(child, dup, every, dup_last, counter)
            if counter[0] % every == 0:
                extra = k + orjson.dumps(dup)
                items.extend([pair, extra] if dup_last else [extra, pair])
            else:
                items.append(pair)
        return b"{" + b",".join(items) + b"}"
    if isinstance(value, list):
        children = (_dumps_with_duplicates(c, dup, every, dup_last, counter) for c in value)
        return b"[" + b",".join(children) + b"]"
    return orjson.dumps(value)


@st.composite
def duplicate_keys(draw: st.DrawFn) -> Case:
    """Keys given twice, the second time (the one orjson keeps) or the first with a
    hostile value."""
    body = draw(st.sampled_from(list(SAMPLES.values())) | _SAMPLE_TREES)
    dup = draw(HOSTILE_VALUES)
    every = draw(st.integers(1, 12))
    value = _dumps_with_duplicates(body, dup, every, draw(st.booleans()), [0])
    return Case("dup-keys", value)


# Fixed odd values, run once each.
FIXED_CASES = [
    Case("misc", v)
    for v in [
        None,
        b"",
        b" ",
        b"{}",
        b"[]",
        b"null",
        b'""',
        b"0",
        b'{"entry":[]}',
        b'{"entry":[{}]}',
        b'{"entry":[{"changes":[]}]}',
        b'{"entry":[{"changes":[{}]}]}',
        b'{"entry":[{"changes":[{"value":{}}]}]}',
        b'{"entry":[{"changes":[{"value":{"messages":[]}}]}]}',
        b'{"entry":[{"changes":[{"value":{"messages":[{}]}}]}]}',
        b'{"object":null,"entry":[]}',
        b'{"entry":null}',
        b"\x00",
        b"\xef\xbb\xbf{}",
    ]
]

_SIGNATURES = [
    "right",
    "right-upper-name",
    "right-padded",
    "wrong",
    "missing",
    "two",
    "short",
    "not-hex",
    "sha1",
    "empty",
    "none",
]


@st.composite
def signed(draw: st.DrawFn) -> Case:
    """A sample or structured case, checked against the App Secret, with a signature
    header that is right, wrong, malformed, doubled or missing."""
    inner = draw(mutated_samples() | mutated_sample_trees() | boundary_identifiers())
    value = inner.value or b""
    right = intake.sign(APP_SECRET, value)
    variant = draw(st.sampled_from(_SIGNATURES))
    headers: dict[str, list[tuple[str, Any]]] = {
        "right": [("x-hub-signature-256", right)],
        "right-upper-name": [("X-Hub-Signature-256", right)],
        "right-padded": [("x-hub-signature-256", b" " + right + b"\n")],
        "wrong": [("x-hub-signature-256", intake.sign(b"other", value))],
        "missing": [("content-type", b"application/json")],
        "two": [("x-hub-signature-256", right), ("X-HUB-SIGNATURE-256", right)],
        "short": [("x-hub-signature-256", right[:-1])],
        "not-hex": [("x-hub-signature-256", right[:-1] + b"g")],
        "sha1": [("x-hub-signature-256", b"sha1=" + hmac.digest(APP_SECRET, value, "sha1"))],
        "empty": [("x-hub-signature-256", b"")],
        "none": [("x-hub-signature-256", None)],
    }
    return Case(f"signed-{variant}", inner.value, tuple(headers[variant]), APP_SECRET)


def families(max_bytes: int) -> dict[str, st.SearchStrategy[Case]]:
    """Each family of cases by name (the `kind` of its cases; ``signed`` cases are
    ``signed-<variant>``)."""
    return {
        "bytes": raw_bytes(),
        "tokens": token_soup(),
        "sample-bytes": mutated_samples(),
        "sample-tree": mutated_sample_trees(),
        "limits": structured(),
        "limits-tree": mutated_limit_trees(),
        "boundary": boundary_identifiers(),
        "deep": deep(),
        "huge": huge(max_bytes),
        "bad-utf8": bad_utf8(),
        "dup-keys": duplicate_keys(),
        "signed": signed(),
    }


# How a run's cases are shared among the families: the cheap byte-level ones most, the
# structured ones (slow to generate) and the huge ones (slow to decode) less. What the
# shares leave (after FIXED_CASES) is run as a mix of every family.
SHARES = {
    "bytes": 0.10,
    "tokens": 0.10,
    "sample-bytes": 0.14,
    "sample-tree": 0.10,
    "limits": 0.06,
    "limits-tree": 0.06,
    "boundary": 0.08,
    "deep": 0.08,
    "huge": 0.06,
    "bad-utf8": 0.08,
    "dup-keys": 0.06,
    "signed": 0.06,
}


def mixed(max_bytes: int) -> st.SearchStrategy[Case]:
    """Every family in one strategy."""
    return st.one_of(*families(max_bytes).values(), st.sampled_from(FIXED_CASES))
