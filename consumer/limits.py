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

from typing import Final

# Identifier columns, in characters (VARCHAR(n) on PostgreSQL).
PHONE_NUMBER_ID_MAX: Final = 64
WAMID_MAX: Final = 512
SENDER_MAX: Final = 64
CONTACT_WA_ID_MAX: Final = 64
MESSAGE_TYPE_MAX: Final = 32
TIMESTAMP_MAX: Final = 20
# Not a column: the event's display_phone_number (and the change's, in raw form).
DISPLAY_PHONE_NUMBER_MAX: Final = 64

# Deepest nesting of arrays and objects a body may have (the body itself is level 1).
MAX_JSON_DEPTH: Final = 64

# The largest produce request any of our producers sends (service, relay, DLQ replay):
# Apache Kafka's default for both the producer's max.request.size and the broker's
# message.max.bytes (1048588). Events and dead letters are built to fit it.
MAX_REQUEST_BYTES: Final = 1024 * 1024
# What an event adds to the message it copies from a record (ids, envelope, source
# coordinates, framing): a record of MAX_RECORD_BYTES must leave this much room.
EVENT_HEADROOM_BYTES: Final = 64 * 1024
# An event's key and value together: what one produce request holds, less its framing
# and the event_id header.
MAX_EVENT_BYTES: Final = MAX_REQUEST_BYTES - 4096
# What an event adds to the parts of the body it copies: its own fields, ids, the source
# topic's name, the keys of its JSON. Well under this.
EVENT_ENVELOPE_BYTES: Final = 4096
# How much larger than its text a JSON value can come out of orjson: a number in short
# exponent form is written in full ("9e15," -> "9000000000000000.0,"); nothing else grows.
# A body at most this much smaller than an event needs no re-encoding to be measured.
JSON_GROWTH: Final = 4.5
# The largest MAX_RECORD_BYTES that still lets every event fit one produce request.
MAX_RECORD_BYTES_LIMIT: Final = MAX_REQUEST_BYTES - EVENT_HEADROOM_BYTES

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
