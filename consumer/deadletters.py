"""The dead-letter format: the one module that writes a dead letter and reads one back.

Every ``dlq.*`` header name is spelled here and nowhere else: :func:`build` and
:func:`minimal` make the record :class:`~consumer.publish.Publisher` sends to DLQ_TOPIC,
:func:`read` gives ``dlq list`` / ``dlq replay`` its fields and the original headers.

A dead letter (format 2) is:

* key: the inbound key, cut to :data:`KEY_MAX_BYTES` (``dlq.original_key_size`` then
  holds its size);
* value: the inbound value, cut to fit the produce request (``dlq.original_size``);
* headers, ours first: ``dlq.format`` (``2``, always the very first), ``dlq.reason``,
  ``dlq.detail`` (at most :data:`DETAIL_MAX_BYTES`, cut between UTF-8 characters),
  ``dlq.source.topic``, ``dlq.source.partition``, ``dlq.source.offset``,
  ``dlq.source.timestamp_ms``, ``dlq.failed_at_ms``, and when something was cut or left
  out ``dlq.original_size``, ``dlq.original_key_size``, ``dlq.dropped_headers`` (how many
  inbound headers did not fit) and ``dlq.omitted`` (minimal form only: ``key``,
  ``value``, ``headers``);
* then the inbound record's headers, in their order, each at most
  :data:`HEADER_MAX_BYTES` and all together at most :data:`HEADERS_MAX_BYTES` (name and
  value counted); a header whose name starts with ``dlq.`` is carried as
  ``dlq.inbound.<name>``, except ``dlq.replayed_from``.

So in a format-2 dead letter every ``dlq.*`` header is the project's own, except
``dlq.inbound.*`` (an inbound header, renamed) and ``dlq.replayed_from``, which is never
one of ours: ``dlq replay`` sets it on the record it re-sends to the inbound topic, and
the record carries it back if it is dead-lettered again. A forged ``dlq.reason`` on an
inbound record can therefore not be taken for ours, by this reader or any other (first
match, last match, a dict of the headers). Nothing authenticates a ``dlq.replayed_from``:
it is shown as what the record carried.

Format 1 (before ``dlq.format``) wrote our headers first, then the inbound headers raw.
:func:`read` takes the leading run of format-1 header names (each once) as ours and
everything after as the inbound headers, so a forged header after ours is an inbound
one there too. (A forged ``dlq.original_size`` right after ours would be misread as
ours; its only effect is that ``dlq replay`` refuses the record as truncated.)

Sizes: with the value cut to ``max_request_bytes - HEADROOM_BYTES``, everything else is
bounded well inside the headroom (key 1 KiB, inbound headers 16 KiB, ours about 2 KiB
with a 249-character topic name), so a dead letter fits one produce request of
``max_request_bytes``; :func:`minimal` is the fallback for a broker that still refuses
it (see Publisher.dead_letter).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from consumer.records import Invalid
from consumer.safetext import cut_utf8

FORMAT: Final = "dlq.format"
REASON: Final = "dlq.reason"
DETAIL: Final = "dlq.detail"
SOURCE_TOPIC: Final = "dlq.source.topic"
SOURCE_PARTITION: Final = "dlq.source.partition"
SOURCE_OFFSET: Final = "dlq.source.offset"
SOURCE_TIMESTAMP_MS: Final = "dlq.source.timestamp_ms"
FAILED_AT_MS: Final = "dlq.failed_at_ms"
# The value was cut (or, with OMITTED, left out): its size in the inbound record.
ORIGINAL_SIZE: Final = "dlq.original_size"
# The key was cut (or left out): its size in the inbound record.
ORIGINAL_KEY_SIZE: Final = "dlq.original_key_size"
# How many inbound headers are not in the dead letter (too large, or left out).
DROPPED_HEADERS: Final = "dlq.dropped_headers"
# Minimal form: what was left out, comma-separated from "key", "value", "headers".
OMITTED: Final = "dlq.omitted"
# Set by `dlq replay` on the record it sends to the inbound topic; never one of ours.
REPLAYED_FROM: Final = "dlq.replayed_from"
# The letter holds a message_created event this topic refused (its message is stored).
EVENT_TOPIC: Final = "dlq.event_topic"
# An inbound header named dlq.* is carried under this prefix (format 2).
INBOUND_PREFIX: Final = "dlq.inbound."

PREFIX: Final = "dlq."
VERSION: Final = 2

DETAIL_MAX_BYTES: Final = 1024
KEY_MAX_BYTES: Final = 1024
HEADER_MAX_BYTES: Final = 8 * 1024
HEADERS_MAX_BYTES: Final = 16 * 1024
# Room a dead letter keeps beside its value: our headers, key, inbound headers, framing.
HEADROOM_BYTES: Final = 64 * 1024

# What the format-1 publisher wrote before the inbound headers, in this order.
_FORMAT1_OWN: Final = frozenset(
    {
        REASON,
        DETAIL,
        SOURCE_TOPIC,
        SOURCE_PARTITION,
        SOURCE_OFFSET,
        SOURCE_TIMESTAMP_MS,
        FAILED_AT_MS,
        ORIGINAL_SIZE,
    }
)

Header = tuple[str, bytes | None]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A dead letter ready to send: key, value, headers."""

    key: bytes | None
    value: bytes | None
    headers: list[Header]


def max_value_bytes(max_request_bytes: int) -> int:
    """How much of the inbound value a dead letter keeps under a request limit."""
    return max(0, max_request_bytes - HEADROOM_BYTES)


def _own(invalid: Invalid, failed_at_ms: int, event_topic: str | None = None) -> list[Header]:
    record = invalid.record
    event = [(EVENT_TOPIC, event_topic.encode())] if event_topic is not None else []
    return [
        (FORMAT, str(VERSION).encode()),
        (REASON, str(invalid.reason).encode()),
        (DETAIL, cut_utf8(invalid.detail, DETAIL_MAX_BYTES)),
        (SOURCE_TOPIC, record.topic.encode()),
        (SOURCE_PARTITION, str(record.partition).encode()),
        (SOURCE_OFFSET, str(record.offset).encode()),
        (SOURCE_TIMESTAMP_MS, str(record.timestamp_ms).encode()),
        (FAILED_AT_MS, str(failed_at_ms).encode()),
        *event,
    ]


def carried_name(name: str) -> str:
    """The name an inbound header has in a dead letter (format 2)."""
    if name.startswith(PREFIX) and name != REPLAYED_FROM:
        return INBOUND_PREFIX + name
    return name


def _header_size(name: str, value: bytes | None) -> int:
    return len(name.encode("utf-8", "surrogatepass")) + len(value or b"")


def build(
    invalid: Invalid, *, max_value_bytes: int, failed_at_ms: int, event_topic: str | None = None
) -> Outgoing:
    """The dead letter of one bad record, bounded to fit (see the module doc);
    `event_topic`: the record is an event that topic refused (``dlq.event_topic``)."""
    record = invalid.record
    headers = _own(invalid, failed_at_ms, event_topic)
    value = record.value
    if value is not None and len(value) > max_value_bytes:
        headers.append((ORIGINAL_SIZE, str(len(value)).encode()))
        value = value[:max_value_bytes]
    key = record.key
    if key is not None and len(key) > KEY_MAX_BYTES:
        headers.append((ORIGINAL_KEY_SIZE, str(len(key)).encode()))
        key = key[:KEY_MAX_BYTES]
    carried: list[Header] = []
    total = dropped = 0
    for name, header_value in record.headers:
        name = carried_name(name)
        size = _header_size(name, header_value)
        if size > HEADER_MAX_BYTES or total + size > HEADERS_MAX_BYTES:
            dropped += 1
            continue
        total += size
        # aiokafka hands a null header value over as None, and sends None as null.
        carried.append((name, header_value))
    if dropped:
        headers.append((DROPPED_HEADERS, str(dropped).encode()))
    return Outgoing(key=key, value=value, headers=headers + carried)


def minimal(invalid: Invalid, *, failed_at_ms: int, event_topic: str | None = None) -> Outgoing:
    """Our headers only: no key, an empty value (a record needs a key or a value, and a
    null value is a tombstone), no inbound headers, and what was left out. For a dead
    letter the producer or the broker refused as too large."""
    record = invalid.record
    headers = _own(invalid, failed_at_ms, event_topic)
    omitted = []
    if record.key is not None:
        omitted.append("key")
        headers.append((ORIGINAL_KEY_SIZE, str(len(record.key)).encode()))
    if record.value is not None:
        omitted.append("value")
        headers.append((ORIGINAL_SIZE, str(len(record.value)).encode()))
    if record.headers:
        omitted.append("headers")
        headers.append((DROPPED_HEADERS, str(len(record.headers)).encode()))
    headers.append((OMITTED, ",".join(omitted).encode()))
    return Outgoing(key=None, value=b"", headers=headers)


# --- reading --------------------------------------------------------------------------


def _text(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", "replace")


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Parsed:
    """A dead letter's headers read out: ours by name, and the inbound record's."""

    version: int
    own: Mapping[str, str] = field(default_factory=dict)
    originals: tuple[Header, ...] = ()

    def get(self, name: str) -> str | None:
        """One of our headers, as text."""
        return self.own.get(name)

    def get_int(self, name: str) -> int | None:
        return _int(self.own.get(name))

    @property
    def reason(self) -> str | None:
        return self.own.get(REASON)

    @property
    def detail(self) -> str:
        return self.own.get(DETAIL, "")

    @property
    def source_topic(self) -> str | None:
        return self.own.get(SOURCE_TOPIC)

    @property
    def source_partition(self) -> int | None:
        return self.get_int(SOURCE_PARTITION)

    @property
    def source_offset(self) -> int | None:
        return self.get_int(SOURCE_OFFSET)

    @property
    def source_fields(self) -> tuple[str | None, str | None, str | None]:
        """Topic, partition and offset of the inbound record, as written."""
        return (
            self.own.get(SOURCE_TOPIC),
            self.own.get(SOURCE_PARTITION),
            self.own.get(SOURCE_OFFSET),
        )

    @property
    def failed_at_ms(self) -> int | None:
        return self.get_int(FAILED_AT_MS)

    @property
    def original_size(self) -> int | None:
        """The inbound value's size, when the value was cut or left out."""
        return self.get_int(ORIGINAL_SIZE)

    @property
    def original_key_size(self) -> int | None:
        """The inbound key's size, when the key was cut or left out."""
        return self.get_int(ORIGINAL_KEY_SIZE)

    @property
    def dropped_headers(self) -> int:
        """How many inbound headers are not in the dead letter."""
        return self.get_int(DROPPED_HEADERS) or 0

    @property
    def omitted(self) -> tuple[str, ...]:
        """Minimal form: what was left out (``key``, ``value``, ``headers``)."""
        text = self.own.get(OMITTED)
        return tuple(p for p in text.split(",") if p) if text else ()

    @property
    def replayed_from(self) -> str | None:
        """The latest ``dlq.replayed_from`` the inbound record carried (a replay's
        origin, as the record says; not verified)."""
        marks = [v for k, v in self.originals if k == REPLAYED_FROM]
        return _text(marks[-1]) if marks else None

    @property
    def complete(self) -> bool:
        """True if key, value and every inbound header are all there, uncut (a marker
        that is present but unreadable counts as a cut)."""
        cut = any(h in self.own for h in (ORIGINAL_SIZE, ORIGINAL_KEY_SIZE, OMITTED))
        return not cut and self.own.get(DROPPED_HEADERS, "0") == "0"


def read(headers: Sequence[Header]) -> Parsed:
    """Our fields and the inbound headers of a dead letter of either format."""
    if headers and headers[0][0] == FORMAT:
        return _read_format2(headers)
    return _read_format1(headers)


def _read_format2(headers: Sequence[Header]) -> Parsed:
    own: dict[str, str] = {}
    originals: list[Header] = []
    version = _int(_text(headers[0][1])) or VERSION
    for name, value in headers[1:]:
        if name.startswith(INBOUND_PREFIX):
            originals.append((name[len(INBOUND_PREFIX) :], value))
        elif name.startswith(PREFIX) and name != REPLAYED_FROM:
            own.setdefault(name, _text(value))
        else:
            originals.append((name, value))
    return Parsed(version=version, own=own, originals=tuple(originals))


def _read_format1(headers: Sequence[Header]) -> Parsed:
    own: dict[str, str] = {}
    for name, value in headers:
        if name not in _FORMAT1_OWN or name in own:
            break
        own[name] = _text(value)
    return Parsed(version=1, own=own, originals=tuple(headers[len(own) :]))
