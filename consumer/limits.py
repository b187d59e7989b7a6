"""The storage contract: what intake accepts is what Redis, the database and the event
can hold (docs/design.md, rule 9). One place for every limit; the table definition
(``schema.py``), the migrations and the JSON Schemas in ``schemas/`` are checked against
these numbers by ``tests/unit/test_contract.py``.

Why these numbers (Meta's documentation and real payloads, with room for change):

* ``phone_number_id`` is a Graph API object id, a decimal string of 15-16 digits today.
* ``wamid`` is an opaque base64 string of about 60 characters today
  (``wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=``). Meta may change
  its format, so the column holds eight times that. With ``phone_number_id`` the unique
  index entry stays under PostgreSQL's B-tree limit (2704 bytes) even if every character
  took four UTF-8 bytes: (64 + 512) * 4 = 2304.
* ``from`` and a contact's ``wa_id`` are phone numbers (at most 15 digits, E.164) or
  business-scoped user ids such as ``US.13491208655302741918``.
* ``type`` is a word such as ``text``, ``interactive`` or ``request_welcome`` (15).
* ``timestamp`` is Unix seconds as a decimal string (10 digits until the year 2286).
* ``display_phone_number`` is the business number as shown, digits as Meta sends it
  (``15550783881``; E.164 has at most 15), room for a formatted one (``+1 555-078-3881``).
  Every event of its change copies it, so it is bounded like an identifier.
* Free text (a text body, a contact's name) is not limited beyond the record's size, and
  may hold any character Meta can send, NUL included: it is stored faithfully in JSON
  columns (PostgreSQL ``json``, which keeps ``\\u0000``; ``jsonb`` refuses it).
* Identifiers may hold no control character (Unicode category Cc, NUL included): the
  database's text columns refuse NUL, and the derived ids rely on ``\\x1f`` never being
  part of a ``phone_number_id`` (``records.MessageKey``).
* Output: every message's row and event copy parts of the record that many messages
  share (the change's numbers, the contact matched to the sender); see
  ``MAX_OUTPUT_FACTOR``.
* Nesting: Meta's deepest documented message (an order, an interactive reply) nests
  about twelve levels below the body. The event re-encodes the content two levels deeper
  than the message sits in the body; orjson re-encodes at most 254 levels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

# Identifier columns, in characters (VARCHAR(n) on PostgreSQL).
PHONE_NUMBER_ID_MAX: Final = 64
WAMID_MAX: Final = 512
SENDER_MAX: Final = 64
CONTACT_WA_ID_MAX: Final = 64
MESSAGE_TYPE_MAX: Final = 32
TIMESTAMP_MAX: Final = 20
# A status update's word (sent, delivered, read, played, failed, or one Meta adds) and
# who the message went to (a phone number, a group id or a business-scoped user id).
STATUS_MAX: Final = 32
RECIPIENT_MAX: Final = 64
# Not a column: the event's display_phone_number (and the change's, in raw form).
DISPLAY_PHONE_NUMBER_MAX: Final = 64

# Deepest nesting of arrays and objects a body may have (the body itself is level 1).
MAX_JSON_DEPTH: Final = 64

# The smallest produce request our producers are allowed (service, relay, DLQ replay):
# Apache Kafka's default for both the producer's max.request.size and the broker's
# message.max.bytes (1048588). Above it the request follows MAX_RECORD_BYTES (Sizes).
MAX_REQUEST_BYTES: Final = 1024 * 1024
# What an event adds to the message it copies from a record (ids, envelope, source
# coordinates, framing): a record of MAX_RECORD_BYTES must leave this much room.
EVENT_HEADROOM_BYTES: Final = 64 * 1024
# What a produce request holds beside an event's key and value: its framing and the
# event_id header.
EVENT_FRAMING_BYTES: Final = 4096
# What a record batch of one event holds beside its key and value, against a topic's
# max.message.bytes: the batch header (61 bytes), the record's framing and the
# event_id header (under 150 more).
EVENT_BATCH_FRAMING_BYTES: Final = 512
# An event's key and value together at the smallest request (MAX_REQUEST_BYTES).
MAX_EVENT_BYTES: Final = MAX_REQUEST_BYTES - EVENT_FRAMING_BYTES
# What an event adds to the parts of the body it copies: its own fields, ids, the source
# topic's name, the keys of its JSON. Well under this.
EVENT_ENVELOPE_BYTES: Final = 4096
# How much larger than its text a JSON value can come out of orjson: a number in short
# exponent form is written in full ("9e15," -> "9000000000000000.0,"); nothing else grows.
# A body at most this much smaller than an event needs no re-encoding to be measured.
JSON_GROWTH: Final = 4.5

# Meta's WhatsApp Cloud API POSTs webhook bodies of up to 3 MB (up to 1,000 updates in
# one). The default MAX_RECORD_BYTES takes that in either reading (3,000,000 bytes or
# 3 MiB): the value is the body, byte for byte; the inbound record's key and headers
# (the signature) are counted in RECORD_OVERHEAD_BYTES beside it.
DEFAULT_MAX_RECORD_BYTES: Final = 3 * 1024 * 1024
# The largest MAX_RECORD_BYTES Settings take: room above Meta's 3 MB for a change of
# theirs; every bound below (requests, fetches, decompression) is sized by the setting.
MAX_RECORD_BYTES_LIMIT: Final = 8 * 1024 * 1024
# What an inbound record holds beside its value (framing, key, headers), in a topic's
# max.message.bytes and in a decompressed batch (consumer/lenient.py).
RECORD_OVERHEAD_BYTES: Final = 64 * 1024
# Kafka counts a topic's max.message.bytes with 12 bytes of log overhead (offset and
# length) beyond a produce request: its default is 1 MiB + 12 = 1048588.
LOG_OVERHEAD_BYTES: Final = 12
# A fetch response's bytes (fetch_max_bytes) at the least: at small records it is the
# partitions' fetches, not this, that bound a response.
MIN_FETCH_BYTES: Final = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Sizes:
    """Every size that follows from MAX_RECORD_BYTES (``sizes``); docs/design.md,
    "The storage contract", says why each is what it is."""

    max_record_bytes: int
    # The largest produce request of each of our producers (max_request_size): a dead
    # letter keeps a whole record of MAX_RECORD_BYTES (deadletters.HEADROOM_BYTES
    # beside it), an event copies at most the record (EVENT_HEADROOM_BYTES beside it).
    request_bytes: int
    # An event's key and value together (intake and events.build refuse larger).
    max_event_bytes: int
    # The least max.message.bytes the inbound topic needs (a record of MAX_RECORD_BYTES
    # with its key and headers), and the dead-letter topic (its dead letter, whole).
    inbound_topic_bytes: int
    dlq_topic_bytes: int
    # What `topics create` sets on each topic (never below Kafka's default 1048588).
    topic_message_bytes: int
    # The consumer's fetch sizes: a partition's fetch takes a whole record of
    # MAX_RECORD_BYTES (Tansu does not hand over a larger one beyond the limit), a
    # response at most a few of them.
    partition_fetch_bytes: int
    fetch_max_bytes: int


@functools.lru_cache(maxsize=16)
def sizes(max_record_bytes: int) -> Sizes:
    """The sizes that follow from MAX_RECORD_BYTES."""
    request = max(MAX_REQUEST_BYTES, max_record_bytes + EVENT_HEADROOM_BYTES)
    wire = max_record_bytes + RECORD_OVERHEAD_BYTES
    partition_fetch = max(MAX_REQUEST_BYTES, wire)
    return Sizes(
        max_record_bytes=max_record_bytes,
        request_bytes=request,
        max_event_bytes=request - EVENT_FRAMING_BYTES,
        inbound_topic_bytes=wire,
        dlq_topic_bytes=wire,
        topic_message_bytes=max(request, wire) + LOG_OVERHEAD_BYTES,
        partition_fetch_bytes=partition_fetch,
        fetch_max_bytes=max(MIN_FETCH_BYTES, 2 * partition_fetch),
    )


# What one record may make its rows and events hold, estimated at decode: each message's
# own content about three times (the row's raw, its columns, the event: counted as three
# times the record's size), plus per message a fixed MESSAGE_OVERHEAD_BYTES (ids, the
# event's envelope, the source topic twice) and the parts it shares with other messages
# of the record (its contact's profile, the name twice, the wa_id twice; the change's
# phone_number_id three times and display number once). A record whose estimate passes
# MAX_OUTPUT_FACTOR times its size is dead-lettered (oversize): one contact's large
# profile copied into thousands of messages made 300 MB of events from 190 KB. The
# samples estimate 3.9-4.5 times their size; the most messages a record can hold (49
# bytes each, nothing shared) 22.5 times; a few messages may share a contact as large as
# the record (nine: 30 times). docs/design.md, "The storage contract", has the figures.
MESSAGE_OVERHEAD_BYTES: Final = 1024
MAX_OUTPUT_FACTOR: Final = 32
# And whatever the record's size, at most this much (the factor alone lets a record of
# 3 MiB make 96 MiB, and a batch of them gigabytes): 32 times a record of 1 MiB, three
# times what a real body of 3 MiB estimates (1,000 messages: about 10.5 MiB), so only
# records above 1 MiB meet it. docs/design.md, "The storage contract".
MAX_OUTPUT_BYTES: Final = 32 * 1024 * 1024
