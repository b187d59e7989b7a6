"""Numbers in content are carried as sent (issue 24): orjson reads an integer beyond 64
bits as a float and 1e-400 as 0.0, and refuses 1e400; intake reads a body holding such a
number exactly (the standard parser, each number orjson would change kept as an
orjson.Fragment of its text), so that the event and the JSON columns write it back digit
for digit. Every other number comes out as orjson reads it, and a body with none of them
is read by orjson alone."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from consumer import engine, events, intake
from consumer.records import Invalid, Reason, Webhook
from consumer.testing import message, record, webhook

FIXTURES = Path(__file__).parents[1] / "fixtures" / "webhooks"
MAX = 256 * 1024
OCCURRED = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

# Numbers orjson does not read exactly, as written in a body.
INEXACT = [
    "123456789012345678901234567890",
    "18446744073709551616",  # 2**64
    "-9223372036854775809",  # -2**63 - 1
    "1e-400",
    "-1e-400",
    "1e400",
    "-1E+400",
    "0.1000000000000000000001",
    "12345678901234567890.5",
    "9007199254740993.0",  # 2**53 + 1, written as a float
    "1" * 5000,  # beyond int()'s 4,300 digits
    "2.5e-999999999999999999999",
]
# Numbers orjson reads exactly, at the edges of what it reads.
EXACT = [
    "18446744073709551615",
    "-9223372036854775808",
    "9007199254740993",
    "1e308",
    "-1.7976931348623157e308",
    "5e-324",
    "2.2250738585072014e-308",
    "-0.0",
    "0.1",
    "9e15",
    "1.2345678901234567",
    "0",
]


def _body_with(number: str, *, at: str = "n") -> bytes:
    """A one-message webhook whose message holds `"n": [number]` (written into the text:
    no encoder writes these)."""
    text = orjson.dumps(webhook([message("wamid.N")]))
    return text.replace(b'"text":{', f'"{at}":[{number}],"text":{{'.encode(), 1)


def _number_in(text: bytes | str, name: str = "n") -> str:
    """The text of the number in `"n":[...]` of an encoded event or column."""
    raw = text.encode() if isinstance(text, str) else text
    start = raw.index(f'"{name}":['.encode()) + len(name) + 4
    return raw[start : raw.index(b"]", start)].decode()


def _decoded(value: bytes) -> Webhook:
    hook = intake.decode(record(value), max_bytes=MAX)
    assert isinstance(hook, Webhook), hook
    return hook


@pytest.mark.parametrize("number", INEXACT, ids=lambda n: n[:24])
def test_a_number_orjson_would_change_is_carried_as_sent(number: str) -> None:
    """The event's content and the row's raw column (the store's JSON serializer, for
    PostgreSQL and SQLite alike) hold the number's text exactly as sent."""
    (m,) = _decoded(_body_with(number)).messages
    assert isinstance(m.raw["n"][0], orjson.Fragment)
    event = events.build(m, topic="out", occurred_at=OCCURRED)
    assert _number_in(event.payload) == number
    assert _number_in(engine.json_dumps(m.raw)) == number


def test_inexact_numbers_in_a_contact_profile_are_kept_too() -> None:
    """The profile (the contact_profile column) is read the same way."""
    body = webhook([message("wamid.N")], contacts=[{"wa_id": "16505551234", "profile": {}}])
    text = orjson.dumps(body).replace(b'"profile":{}', b'"profile":{"n":[1e-400],"name":"x"}')
    (m,) = _decoded(text).messages
    assert m.contact_profile is not None
    assert _number_in(engine.json_dumps(m.contact_profile)) == "1e-400"
    assert m.contact_name == "x"


@pytest.mark.parametrize("number", EXACT)
def test_a_number_orjson_reads_exactly_is_read_as_orjson_reads_it(number: str) -> None:
    """In a body that takes the exact reading (it also holds 1e-400), every other number
    is the same Python value as orjson gives (type and repr: -0.0 stays -0.0)."""
    value = _body_with(f"{number},1e-400")
    (m,) = _decoded(value).messages
    got, kept = m.raw["n"]
    want = orjson.loads(f"[{number}]")[0]
    assert (type(got), repr(got)) == (type(want), repr(want))
    assert isinstance(kept, orjson.Fragment)


def test_real_webhooks_are_read_by_orjson_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """No sample holds a number orjson would change: none pays for the exact reading."""

    def refuse(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("the exact reading was used")

    monkeypatch.setattr(json, "loads", refuse)  # the exact reading's parser
    for path in sorted(FIXTURES.glob("*.json")):
        assert isinstance(intake.decode(record(path.read_bytes()), max_bytes=MAX), Webhook)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(b'{"a":1e400,"b":NaN}', id="NaN-after-1e400"),
        pytest.param(b'{"a":1e400,"b":-Infinity}', id="Infinity-after-1e400"),
        pytest.param(b'{"a":1e400,"b":"\\ud800"}', id="lone-surrogate-after-1e400"),
        pytest.param(b'{"a":1e400,"b":[1,]}', id="trailing-comma-after-1e400"),
        pytest.param(b'{"a":1e400,"b":"\x01"}', id="raw-control-after-1e400"),
        pytest.param(b'{"a":1e-400,"b":NaN}', id="NaN-after-1e-400"),
    ],
)
def test_the_exact_reading_refuses_what_orjson_refuses(text: bytes) -> None:
    """orjson stops at 1e400 without reading on: what follows is checked by the exact
    reading and refused as orjson would refuse it (not_json), never accepted."""
    decoded = intake.decode(record(text), max_bytes=MAX)
    assert isinstance(decoded, Invalid), decoded
    assert decoded.reason is Reason.NOT_JSON


def test_a_deep_body_with_a_huge_number_is_too_deep_not_a_recursion_error() -> None:
    """The standard parser recurses: the depth is checked before it reads."""
    deep = b"[" * 5000 + b"1e400" + b"]" * 5000
    decoded = intake.decode(record(b'{"a":' + deep + b"}"), max_bytes=MAX)
    assert isinstance(decoded, Invalid)
    assert decoded.reason is Reason.TOO_DEEP


def test_an_integer_phone_number_id_beyond_64_bits_is_still_refused() -> None:
    """Only content is carried as text: an identifier must be a string or a 64-bit
    integer, whichever path read the body."""
    value = orjson.dumps(webhook([message("wamid.N")])).replace(
        b'"phone_number_id":"106540352242922"', b'"phone_number_id":123456789012345678901234'
    )
    decoded = intake.decode(record(value), max_bytes=MAX)
    assert isinstance(decoded, Invalid)
    assert decoded.reason is Reason.MISSING_PHONE_NUMBER_ID


def _exactly_read_by_orjson(text: str) -> bool:
    """Whether orjson reads this JSON number as the same value it is written as."""
    try:
        got = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    if isinstance(got, int):
        return decimal.Decimal(got) == decimal.Decimal(text)
    return math.isfinite(got) and decimal.Decimal(repr(got)) == decimal.Decimal(text)


_DIGITS = st.text("0123456789", min_size=1, max_size=30).map(lambda d: d.lstrip("0") or "0")
NUMBERS = st.builds(
    lambda sign, whole, frac, exp: f"{sign}{whole}{frac}{exp}",
    st.sampled_from(["", "-"]),
    _DIGITS,
    st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=25).map(lambda d: "." + d)),
    st.one_of(
        st.just(""),
        st.builds(
            lambda e, s, d: f"{e}{s}{d}",
            st.sampled_from("eE"),
            st.sampled_from(["", "+", "-"]),
            st.text("0123456789", min_size=1, max_size=4),
        ),
    ),
)


# Where a number may stand in a body, and the whitespace JSON allows before it.
PLACES = ['{{"a":{}}}', '{{"a": {}}}', '{{"a":[0,{}]}}', '{{"a":[0,\n  {}]}}', '{{"a":[{}]}}']


@hsettings(max_examples=3000, database=None, deadline=None)
@given(NUMBERS, st.sampled_from(PLACES))
def test_every_number_orjson_would_change_is_found(number: str, place: str) -> None:
    """The quick test on the raw bytes (_may_be_inexact) misses no number orjson reads
    inexactly, however it is written and wherever it stands: the rule that a number of at
    most 15 digits and points and an exponent of at most two digits is exact holds."""
    if not _exactly_read_by_orjson(number):
        assert intake._may_be_inexact(place.format(number).encode()), place.format(number)


@hsettings(max_examples=500, database=None, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False) | st.integers(), max_size=8))
def test_numbers_json_writes_come_back_as_orjson_reads_them(numbers: list[Any]) -> None:
    """Whatever the standard library writes (17-digit floats, 5e-324, big integers), the
    decoded content is orjson's reading where orjson is exact, and the text where not."""
    value = _body_with(json.dumps(numbers)[1:-1] or "0")
    (m,) = _decoded(value).messages
    for got, sent in zip(m.raw["n"], numbers or [0], strict=True):
        if isinstance(got, orjson.Fragment):
            assert not _exactly_read_by_orjson(json.dumps(sent))
        else:
            assert (type(got), repr(got)) == (type(sent), repr(sent))
