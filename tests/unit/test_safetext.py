"""safetext: what a record carries never reaches a terminal raw, and JSON stays JSON."""

from __future__ import annotations

import unicodedata

import orjson
import pytest

from consumer import safetext
from consumer.tools.tail import format_event

ANSI = "\x1b[2J\x1b[31mred\x1b]0;title\x07"
BIDI = "".join(map(chr, [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]))
HOSTILE = f"a{ANSI}\x00nul\x7fdel\x9bcsi\x85nel{BIDI}\u200b\ufeff\u2028\u2029\U000e0001z\n\t\r"


def _raw_unsafe(text: str) -> list[str]:
    """Every character a terminal must not get raw, by the module's own definition."""
    return [c for c in text if safetext.is_unsafe(c)]


@pytest.mark.parametrize(
    "char",
    [
        "\x00",
        "\x1b",
        "\n",
        "\t",
        "\r",
        "\x7f",
        "\x80",
        "\x9b",
        "\x9f",
        *BIDI,
        "\u200b",
        "\u200d",
        "\u2060",
        "\ufeff",
        "\u00ad",
        "\u2028",
        "\u2029",
        "\U000e0001",
        "\U000e007f",
        "\u3164",
        "\ud800",
    ],
)
def test_unsafe_characters(char: str) -> None:
    """C0, DEL, C1, every bidi control, format and invisible characters are unsafe."""
    assert safetext.is_unsafe(char)


@pytest.mark.parametrize("char", ["a", " ", "~", "é", "€", "中", "😀", "\u00a0", "\\", '"'])
def test_safe_characters(char: str) -> None:
    """Printable text (any script, emoji, spaces) is left alone."""
    assert not safetext.is_unsafe(char)


def test_every_cf_character_is_unsafe() -> None:
    """All of Unicode category Cf is escaped, not only the bidi controls."""
    cf = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"]
    assert len(cf) > 150
    assert all(safetext.is_unsafe(c) for c in cf)


def test_escape_shows_each_character_visibly() -> None:
    """Free text: \\x for the first 256 code points, \\u and \\U above; the rest stays."""
    assert safetext.escape("\x1b[31mred") == "\\x1b[31mred"
    assert safetext.escape("a\x00b") == "a\\x00b"
    assert safetext.escape("\x7f\x9b") == "\\x7f\\x9b"
    assert safetext.escape("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert safetext.escape("\U000e0041") == "\\U000e0041"
    assert safetext.escape("café 中 😀 \\n") == "café 中 😀 \\n"
    assert _raw_unsafe(safetext.escape(HOSTILE)) == []


def test_quote_is_valid_json_with_nothing_raw() -> None:
    """A quoted value is a JSON string literal holding exactly the text, with every unsafe
    character as \\uXXXX (orjson alone writes DEL, C1 and U+202E raw)."""
    quoted = safetext.quote(HOSTILE)
    assert _raw_unsafe(quoted) == []
    assert orjson.loads(quoted) == HOSTILE
    assert "\\u202e" in quoted
    assert "\\u007f" in quoted
    assert "\\u009b" in quoted
    assert "\\udb40\\udc01" in quoted, "above U+FFFF as a surrogate pair"
    assert safetext.quote('say "hi" \\') == '"say \\"hi\\" \\\\"'


def test_quote_spells_out_lone_surrogates() -> None:
    """A lone surrogate (no UTF-8 for it) is shown, not a crash."""
    quoted = safetext.quote("a\udc80b")
    assert orjson.loads(quoted) == "a\\udc80b"


def test_token_keeps_plain_words_and_quotes_the_rest() -> None:
    """A plain word stays bare; anything that could shift or fake a column is quoted."""
    assert safetext.token("not_json") == "not_json"
    assert safetext.token("in-topic:0:17") == "in-topic:0:17"
    assert safetext.token("café") == "café"
    assert safetext.token("") == '""'
    assert safetext.token("a b") == '"a b"'
    assert safetext.token('a"b') == '"a\\"b"'
    assert safetext.token("a\\b") == '"a\\\\b"'
    assert safetext.token("x\u202ey") == '"x\\u202ey"'
    assert safetext.token("\x1b[2J") == '"\\u001b[2J"'
    assert safetext.token("a\u00a0b") == '"a\u00a0b"'


def test_json_line_is_one_valid_line() -> None:
    """An object with hostile strings in keys and values: one line, valid JSON, the same
    data back, no unsafe character raw."""
    obj = {"k" + BIDI: [HOSTILE, {"n": 1, "x": None}], "b": True}
    line = safetext.json_line(obj)
    assert "\n" not in line
    assert _raw_unsafe(line) == []
    assert orjson.loads(line) == obj


def test_json_line_survives_lone_surrogates() -> None:
    """orjson refuses lone surrogates; json_line spells them out instead of failing."""
    line = safetext.json_line({"h": ["a\ud800"]})
    assert orjson.loads(line) == {"h": ["a\\ud800"]}


def test_clip_bounds_long_values() -> None:
    """clip keeps at most `width` characters and marks the cut."""
    assert safetext.clip("abc", 3) == "abc"
    assert safetext.clip("abcd", 3) == "ab…"
    assert len(safetext.clip("y" * 1_000_000, 80)) == 80


def test_long_hostile_values_stay_bounded() -> None:
    """A long value of escapes grows at most by the escape's width per character."""
    shown = safetext.quote(safetext.clip("\u202e" * 100_000, 80))
    assert len(shown) <= 2 + 80 * 6


@pytest.mark.parametrize(
    ("text", "limit", "cut"),
    [
        ("abc", 10, b"abc"),
        ("aé", 2, b"a"),
        ("aé", 3, "aé".encode()),
        ("€€", 4, "€".encode()),
        ("€€", 5, "€".encode()),
        ("😀x", 3, b""),
        ("😀x", 4, "😀".encode()),
        ("😀x", 5, "😀x".encode()),
    ],
)
def test_cut_utf8_never_splits_a_character(text: str, limit: int, cut: bytes) -> None:
    """The cut is at most `limit` bytes and ends between two characters."""
    got = safetext.cut_utf8(text, limit)
    assert got == cut
    got.decode("utf-8")


def test_cut_utf8_of_a_long_detail() -> None:
    """A 1 MB detail of three-byte characters becomes valid UTF-8 of at most 1024 bytes."""
    got = safetext.cut_utf8("€" * 400_000, 1024)
    assert len(got) == 1023
    assert got.decode() == "€" * 341


# --- tail's rendering (consumer.tools.tail.format_event) -------------------------------


def _event() -> bytes:
    """An event as the service's encoder writes it: orjson leaves U+202E and DEL raw."""
    return orjson.dumps(
        {
            "event": "message_created",
            "event_id": "e-1",
            "phone_number_id": "15550001111",
            "message": {
                "source_id": "wamid.\u202eA\x7f",
                "from": "\u202e1555",
                "type": "text\x1b[2J",
                "text": {"body": "hi \x1b[31m\u2066\x00"},
            },
        }
    )


def test_tail_line_escapes_every_field() -> None:
    """`tail`: identifiers that are not plain words are quoted and escaped."""
    line = format_event(0, 7, _event(), as_json=False)
    assert _raw_unsafe(line) == []
    assert line == (
        '0:7 message_created event_id=e-1 phone_number_id=15550001111 from="\\u202e1555" '
        'type="text\\u001b[2J" wamid="wamid.\\u202eA\\u007f"'
    )


def test_tail_line_of_a_status_event() -> None:
    """`tail` shows both kinds: a status event's line names its word and message, the
    fields escaped like a message's."""
    event = orjson.dumps(
        {
            "event": "message_status_changed",
            "event_id": "e-2",
            "phone_number_id": "15550001111",
            "status": {
                "id": "wamid.\u202eB",
                "status": "read",
                "timestamp": "1749416390",
                "recipient_id": "\x1b[2J",
            },
        }
    )
    line = format_event(0, 8, event, as_json=False)
    assert _raw_unsafe(line) == []
    assert line == (
        "0:8 message_status_changed event_id=e-2 phone_number_id=15550001111 status=read "
        'wamid="wamid.\\u202eB" timestamp=1749416390'
    )


def test_tail_json_is_valid_and_escaped() -> None:
    """`tail --json`: the event on one line, valid JSON, the same values, nothing raw."""
    line = format_event(0, 7, _event(), as_json=True)
    assert _raw_unsafe(line) == []
    assert orjson.loads(line) == orjson.loads(_event())


def test_tail_of_records_that_are_not_events() -> None:
    """Not JSON: a placeholder with the size (and valid JSON with --json); JSON of another
    shape: the placeholder; no content of either is printed."""
    junk = b"\x1b[2Jnot json"
    assert format_event(1, 2, junk, as_json=False) == "1:2 <not an event of ours: 12 bytes>"
    assert orjson.loads(format_event(1, 2, junk, as_json=True)) == {
        "partition": 1,
        "offset": 2,
        "not_json_bytes": 12,
    }
    other = orjson.dumps({"event": "\x1b[2J", "x": 1})
    assert format_event(1, 3, other, as_json=False).startswith("1:3 <not an event of ours")
    assert format_event(1, 4, b"[1, 2]", as_json=False).startswith("1:4 <not an event of ours")
    assert format_event(1, 5, None, as_json=False).startswith("1:5 <not an event of ours")
