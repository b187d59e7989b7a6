"""Text that came from a record, made safe to print: one place for the escaping.

Whatever a record carries (a key, a header, a detail built from its body, a field of an
event) can reach an operator's terminal through ``dlq`` and ``tail``. A raw ESC starts an
ANSI sequence (recolour, move the cursor, retitle the window, rewrite earlier lines); a
bidi override (U+202E) or an isolate reorders what follows; an invisible character makes
two different values look the same. So every character that is *unsafe* is escaped
visibly before it is printed:

* category ``Cc``: C0 controls (NUL, ESC, CR, newline, tab, ...), DEL and C1 (U+0080 to
  U+009F, among them the one-byte CSI U+009B);
* category ``Cf``: format characters, among them the bidi marks, embeddings, overrides
  and isolates (U+061C, U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069), zero-width
  characters (U+200B to U+200D, U+2060, U+FEFF), the soft hyphen and the tag characters;
* ``Zl`` / ``Zp`` (U+2028, U+2029: some terminals and editors break lines there), ``Cs``
  (lone surrogates, which cannot even be encoded for output);
* the Hangul fillers (U+115F, U+1160, U+3164, U+FFA0): letters by category, blank on
  screen.

The only raw newline in the tools' output is the one ending a line, written by us.

Three forms:

* :func:`quote`: a JSON string literal (so valid JSON and unambiguous: backslash and quote
  are escaped too), with every unsafe character as ``\\uXXXX``;
* :func:`token`: the text itself when it is one plain word (safe, no space, quote or
  backslash), else :func:`quote` of it; for fields such as a reason or a topic name;
* :func:`json_line`: an object as one line of JSON (orjson leaves DEL, C1 and the bidi
  controls raw; they are escaped as ``\\uXXXX``, surrogate pairs above U+FFFF).

:func:`escape` shows unsafe characters as ``\\x1b``, ``\\u202e`` or ``\\U000e0001`` in
free text (an error message), and :func:`clip` / :func:`cut_utf8` bound long values.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Final

import orjson

_UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_BLANK_LETTERS: Final = frozenset({0x115F, 0x1160, 0x3164, 0xFFA0})
# Everything outside printable ASCII is a candidate; most text is ASCII, so the
# Unicode lookup runs only on the rest.
_CANDIDATE: Final = re.compile(r"[^\x20-\x7e]")
ELLIPSIS: Final = "…"


def is_unsafe(char: str) -> bool:
    """True for a character that must not reach a terminal raw (see the module doc)."""
    code = ord(char)
    if 0x20 <= code < 0x7F:
        return False
    return unicodedata.category(char) in _UNSAFE_CATEGORIES or code in _BLANK_LETTERS


def _visible(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _replace_unsafe(text: str, escape_one: Any) -> str:
    def one(match: re.Match[str]) -> str:
        char = match.group()
        return str(escape_one(char)) if is_unsafe(char) else char

    return _CANDIDATE.sub(one, text)


def escape(text: str) -> str:
    """Free text with every unsafe character shown as ``\\x1b``, ``\\u202e`` or
    ``\\U000e0001``; everything else (backslashes included) as it is."""
    return _replace_unsafe(text, _visible)


def quote(text: str) -> str:
    """A JSON string literal of `text`, every unsafe character as ``\\uXXXX``."""
    return _replace_unsafe(orjson.dumps(_encodable(text)).decode(), _json_escape)


def token(text: str) -> str:
    """`text` itself if it is one plain word, else :func:`quote` of it."""
    if text and not any(c.isspace() or c in '"\\' or is_unsafe(c) for c in text):
        return text
    return quote(text)


def json_line(obj: Any) -> str:
    """`obj` as one line of valid JSON with no unsafe character raw."""
    try:
        encoded = orjson.dumps(obj)
    except orjson.JSONEncodeError:
        encoded = orjson.dumps(_scrub(obj))
    return _replace_unsafe(encoded.decode(), _json_escape)


def clip(text: str, width: int) -> str:
    """At most `width` characters; a cut one ends with an ellipsis."""
    return text if len(text) <= width else text[: max(0, width - 1)] + ELLIPSIS


def cut_utf8(text: str, max_bytes: int) -> bytes:
    """`text` as UTF-8, at most `max_bytes` long, cut between characters (never inside
    one)."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= max_bytes:
        return data
    end = max_bytes
    # Back up over continuation bytes (10xxxxxx) to the start of the cut character.
    while end > 0 and data[end] & 0xC0 == 0x80:
        end -= 1
    return data[:end]


def _encodable(text: str) -> str:
    """orjson refuses lone surrogates (no UTF-8 for them): spell them out instead."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join(_visible(c) if unicodedata.category(c) == "Cs" else c for c in text)
    return text


def _scrub(obj: Any) -> Any:
    """`obj` with every string made encodable (see :func:`_encodable`)."""
    if isinstance(obj, str):
        return _encodable(obj)
    if isinstance(obj, dict):
        return {_encodable(str(k)): _scrub(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_scrub(v) for v in obj]
    return obj
