"""The hostile-input cases, one line each, and what each must become.

Every case is one or more inbound records (usually one) and the outcome the promise
gives it:

* ``STORED``: every message in it ends in exactly one row and exactly one
  ``message_created`` event per (phone_number_id, wamid), with the values as sent;
* ``ANNOUNCED_STATUS``: status updates (docs/design.md, "Statuses"), and any message
  beside them as ``STORED`` promises: every status (phone_number_id, id, word) ends in
  exactly one row of ``statuses``, its values as sent (``raw`` the status object, numbers
  as written); each message's ``message_state`` is the highest status of the order the
  case sent it (no row if it sent only words Meta may add); the highest, and every word
  not in the order, is announced by exactly one ``message_status_changed`` event; any
  other is either announced (it came while the state was below it) or ``stale`` (no
  event); a message's announced statuses reach the topic in increasing order; no dead
  letter. Copies cross partitions, so which of the lower statuses come stale is up to
  the order the members meet them; the rule above holds whatever that order;
* ``STATUS``: a valid webhook that creates nothing (changes of other fields, value-level
  errors): no row, no event, no dead letter;
* a dead-letter reason (``Reason``): each copy of each record ends on the dead-letter
  topic, once, at its own source (partition, offset), with that ``dlq.reason``; none of
  its messages is stored or announced.

The harness sends every record of every case twice, on two different partitions
(``Case.copies``), interleaved with good traffic. Values are built from small helpers so
that a case is one line; ``deep(n)`` stands for ``n`` levels of nesting, written into the
JSON text when the body is encoded (orjson itself cannot write more than 254 levels), and
``number(text)`` for a number written as `text` (1e-400, 30 digits: no encoder writes
them so). Bodies and what comes out are read with ``loads_exact``, every number as
written: an integer as an int, any other as a Decimal of its text (a float would turn
1e-400 into 0.0 and hide the very loss the cases look for).

The markers (``NAME_MARK``, ``TEXT_MARK``, ``SENDER_MARK``) are personal data by
construction: they are in contact names, text bodies and senders, and must never appear
in a member's log.
"""

from __future__ import annotations

import decimal
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from consumer import limits
from consumer.records import Reason

PNID = "106540352242922"
PNID_B = "106540352249999"
TIMESTAMP = "1749416383"
SENDER = "16505551234"
OBJECT = "whatsapp_business_account"

# Personal data that must never reach a log line (searched for as plain substrings).
NAME_MARK = "Qx7NameMark"
TEXT_MARK = "Qx7TextMark"
SENDER_MARK = "99137700424242"
MARKERS = (NAME_MARK, TEXT_MARK, SENDER_MARK)

STORED = "stored"
ANNOUNCED_STATUS = "announced status"
STATUS = "status"
KEPT = (STORED, ANNOUNCED_STATUS, STATUS)  # the outcomes that are not a dead letter
# In a case's `detail`: the database's own refusal (the constraint's name on PostgreSQL,
# the trigger's message on SQLite); the run knows which.
REFUSAL = "<the database's refusal>"
# What makes the database refuse a message (a CHECK constraint or a trigger the suite
# adds before the members start).
REFUSE_MARK = "refuse-me"

STATUS_W = "wamid.hostile.st."  # the ids of the statuses' messages

MAX_DEPTH = limits.MAX_JSON_DEPTH
# Where things sit in a body of one entry and one change (the body is level 1):
# body 1 > entry[] 2 > entry 3 > changes[] 4 > change 5 > value 6 > messages[] 7 >
# message 8 > text 9. A value nested n levels inside a container at level d reaches d + n.
MESSAGE_DEPTH = 8
TEXT_DEPTH = 9
STATUS_DEPTH = 8
# The order of the status words Meta documents (a reference reading, independent of
# consumer.statuses); any other word moves nothing and is announced as sent.
STATUS_ORDER = ("sent", "delivered", "failed", "read", "played")


@dataclass(frozen=True)
class Record:
    """One inbound record as the harness produces it."""

    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    # Headers whose names are raw bytes (Kafka allows any; not UTF-8 here): written by a
    # producer of their own, since aiokafka's only takes names it can encode.
    raw_headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True)
class Case:
    """A hostile input and its promised outcome."""

    name: str
    expect: str  # STORED, ANNOUNCED_STATUS, STATUS, or a dead-letter reason (Reason value)
    records: tuple[Record, ...]
    detail: str | None = None  # a dead letter's dlq.detail must contain this (or REFUSAL)
    depth: int | None = None  # the nesting the body is built to have (self-checked)
    copies: int = 2  # each record is sent this many times, each on another partition
    note: str = field(default="", compare=False)

    @property
    def dead(self) -> bool:
        return self.expect not in KEPT


# -- building bodies ---------------------------------------------------------------------

_DEEP = re.compile(rb'"@@deep:(\d+):(array|object)@@"')
_NUMBER = re.compile(rb'"@@number:([-+.0-9eE]+)@@"')


def deep(levels: int, kind: str = "array") -> str:
    """A placeholder for `levels` nested arrays (or objects) around one string."""
    return f"@@deep:{levels}:{kind}@@"


def _nested(levels: int, kind: bytes) -> bytes:
    if kind == b"array":
        return b"[" * levels + b'"x"' + b"]" * levels
    return b'{"d":' * levels + b'"x"' + b"}" * levels


def number(text: str) -> str:
    """A placeholder for a JSON number written exactly as `text`."""
    return f"@@number:{text}@@"


def encode(body: Any) -> bytes:
    """JSON text of `body`, with every ``deep(n)`` and ``number(text)`` written out."""
    text = _DEEP.sub(lambda m: _nested(int(m.group(1)), m.group(2)), orjson.dumps(body))
    return _NUMBER.sub(lambda m: m.group(1), text)


def loads_exact(text: bytes | str) -> Any:
    """JSON with every number as written: integers as int (any size), every other number
    as a Decimal of its text (-0.0 keeps its sign, 1e-400 is not 0.0)."""
    return json.loads(text, parse_float=decimal.Decimal)


def dumps_exact(value: Any) -> bytes:
    """JSON of a value read by loads_exact, its Decimals written as they were read."""
    return orjson.dumps(value, default=_decimal_text)


def _decimal_text(value: Any) -> orjson.Fragment:
    if isinstance(value, decimal.Decimal):
        return orjson.Fragment(str(value).encode())
    raise TypeError(type(value).__name__)


def message(
    wamid: Any,
    *,
    sender: Any = SENDER,
    type_: Any = "text",
    timestamp: Any = TIMESTAMP,
    text: Any = f"{TEXT_MARK} hello",
    **content: Any,
) -> dict[str, Any]:
    """One inbound message (a text message unless `text` is None), plus extra content."""
    m: dict[str, Any] = {"from": sender, "id": wamid, "timestamp": timestamp, "type": type_}
    if text is not None:
        m["text"] = {"body": text}
    m.update(content)
    return m


def value(
    *messages: dict[str, Any],
    pnid: Any = PNID,
    name: str = f"{NAME_MARK} Test",
    contacts: list[Any] | None = None,
    display: Any = "15550783881",
    **extra: Any,
) -> dict[str, Any]:
    """One change's value: metadata, the sender's contact (named `name`), the messages."""
    if contacts is None:
        sender = messages[0].get("from") if messages else None
        contact: dict[str, Any] = {"profile": {"name": name}}
        if isinstance(sender, str):
            contact["wa_id"] = sender
        contacts = [contact]
    v: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": display, "phone_number_id": pnid},
        "contacts": contacts,
    }
    if messages:
        v["messages"] = list(messages)
    v.update(extra)
    return v


def body(*values: dict[str, Any], obj: Any = OBJECT) -> dict[str, Any]:
    """A webhook body: one entry, one change per value."""
    changes = [{"field": "messages", "value": v} for v in values]
    return {"object": obj, "entry": [{"id": "1", "changes": changes}]}


def fields(*changes: tuple[Any, dict[str, Any]]) -> dict[str, Any]:
    """A webhook body: one entry, one change per (field, value)."""
    listed = [{"field": f, "value": v} for f, v in changes]
    return {"object": OBJECT, "entry": [{"id": "1", "changes": listed}]}


def hook(*messages: dict[str, Any], obj: Any = OBJECT, **value_args: Any) -> dict[str, Any]:
    """A webhook body of one change holding `messages`."""
    return body(value(*messages, **value_args), obj=obj)


def wamid_of(length: int, tag: str) -> str:
    """A wamid of exactly `length` characters, unique by `tag`."""
    head = f"wamid.hostile.{tag}."
    return head + "A" * (length - len(head))


def padded(prefix: str, length: int, fill: str = "7") -> str:
    return prefix + fill * (length - len(prefix))


# -- the two big records -----------------------------------------------------------------

BIG_MESSAGES = 1800
BIG_CONTACTS = 35_000
OVERSIZE_HEADER_BYTES = 1_900_000


def big_record() -> dict[str, Any]:
    """About 250 KB: 1,800 messages of three senders and 35,000 contacts (empty ones,
    then the three senders' own at the end, so that matching a sender to its contact
    by a scan would cost messages x contacts). No text: the messages are as small as
    Meta's envelope allows, to fit that many under MAX_RECORD_BYTES."""
    senders = [SENDER_MARK, "16505550001", "16505550002"]
    msgs = [
        message(f"w.big.{i:04d}", sender=senders[i % 3], text=None) for i in range(BIG_MESSAGES)
    ]
    contacts: list[Any] = [{} for _ in range(BIG_CONTACTS - len(senders))]
    contacts += [{"profile": {"name": f"{NAME_MARK} big {s[-1]}"}, "wa_id": s} for s in senders]
    return hook(*msgs, contacts=contacts)


def oversize_record() -> Record:
    """A body over the default MAX_RECORD_BYTES (3 MiB, Meta's 3 MB: about 3.2 MB)
    carrying a 1.9 MB header."""
    text = TEXT_MARK + "o" * (limits.DEFAULT_MAX_RECORD_BYTES + 50_000)
    return Record(
        encode(hook(message("wamid.hostile.oversize", text=text))),
        (("x-hostile-padding", b"h" * OVERSIZE_HEADER_BYTES),),
    )


def growing_numbers() -> dict[str, Any]:
    """256 KiB of numbers that orjson writes back 3.8 times longer (9e15 ->
    9000000000000000.0): an event of nearly a megabyte, which must still fit (at the
    default MAX_RECORD_BYTES, and at 256 KiB, the former default, whose produce request
    is 1 MiB)."""
    numbers = "@@numbers@@"
    return hook(message("wamid.hostile.growing", numbers=numbers))


def encode_growing() -> bytes:
    text = encode(growing_numbers())
    room = 256 * 1024 - len(text) - 64
    return text.replace(b'"@@numbers@@"', b"[" + b",".join([b"9e15"] * (room // 5)) + b"]")


PROBE_BYTES = 190_000
PROBE_MESSAGES = 2000


def probe_record() -> dict[str, Any]:
    """The outside probe's shape: about 190 KB, one contact whose name fills it, and
    thousands of tiny messages that each would copy the name into a row and an event
    (two of these made 301 MB of events and 599 MiB of database)."""
    msgs = [
        message(f"w.p{i}", sender="1", timestamp="1", type_="t", text=None)
        for i in range(PROBE_MESSAGES)
    ]
    empty = len(orjson.dumps(hook(*msgs, name="")))
    return hook(*msgs, name=NAME_MARK + "N" * (PROBE_BYTES - empty - len(NAME_MARK)))


FORGED_HEADERS = (
    ("dlq.reason", b"forged"),
    ("dlq.source.offset", b"999999"),
    ("dlq.source.partition", b"9"),
)


def status_of(
    wamid: Any,
    word: Any = "delivered",
    *,
    recipient: Any = SENDER_MARK,
    timestamp: Any = TIMESTAMP,
    **content: Any,
) -> dict[str, Any]:
    """One status update of a message the business sent (`recipient` None: no
    recipient_id), plus extra content (pricing, errors, recipient_user_id...)."""
    s: dict[str, Any] = {"id": wamid, "status": word, "timestamp": timestamp}
    if recipient is not None:
        s["recipient_id"] = recipient
    s.update(content)
    return s


def status_hook(
    *updates: dict[str, Any], messages: tuple[dict[str, Any], ...] = (), **value_args: Any
) -> dict[str, Any]:
    """A webhook body of one change holding `updates` (and `messages`, if any); no
    contacts unless there are messages (Meta sends none with statuses)."""
    if not messages:
        value_args.setdefault("contacts", [])
    return body(value(*messages, statuses=list(updates), **value_args))


# What Meta puts in a status of a business-initiated conversation.
CONVERSATION = {"id": "72b14d6bd5407799e66f64d1b338e567", "origin": {"type": "marketing"}}
PRICING = {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "marketing"}
BIG_STATUSES = 1000  # Meta sends at most 1,000 updates in one body


def thousand_statuses() -> dict[str, Any]:
    """Meta's largest body of statuses: 1,000 updates of 1,000 messages, every word of
    the order, each with its conversation and pricing."""
    return status_hook(
        *(
            status_of(
                f"{STATUS_W}k.{i:04d}",
                STATUS_ORDER[i % len(STATUS_ORDER)],
                recipient=f"1650555{i % 97:04d}",
                conversation=CONVERSATION,
                pricing=PRICING,
            )
            for i in range(BIG_STATUSES)
        )
    )


def huge_status() -> dict[str, Any]:
    """A failed status whose errors and pricing are large free content: 250 KB of text,
    a NUL, numbers beyond 64 bits and below a double's range (stored as sent)."""
    errors = [
        {
            "code": 131049,
            "title": TEXT_MARK + "t" * 100_000,
            "message": f"{TEXT_MARK} a\x00b \u202e",
            "error_data": {"details": "d" * 100_000},
            "href": "/documentation/business-messaging/whatsapp/support/error-codes",
        }
    ]
    pricing = {
        **PRICING,
        "category": "c" * 50_000,
        "big": number("123456789012345678901234567890"),
        "tiny": number("1e-400"),
        "negzero": -0.0,
        "u64": 18446744073709551615,
    }
    return status_hook(status_of(STATUS_W + "huge", "failed", errors=errors, pricing=pricing))


# -- the table ---------------------------------------------------------------------------


def _records(items: tuple[Any, ...]) -> tuple[Record, ...]:
    out = []
    for item in items:
        if isinstance(item, Record):
            out.append(item)
        elif isinstance(item, bytes | None):
            out.append(Record(item))
        else:
            out.append(Record(encode(item)))
    return tuple(out)


def stored(name: str, *items: Any, **kw: Any) -> Case:
    return Case(name, STORED, _records(items), **kw)


def status(name: str, *items: Any, **kw: Any) -> Case:
    return Case(name, STATUS, _records(items), **kw)


def dead(name: str, reason: Reason, *items: Any, **kw: Any) -> Case:
    return Case(name, str(reason), _records(items), **kw)


TOO_DEEP = Reason.TOO_DEEP
INVALID = Reason.INVALID_FIELD
W = "wamid.hostile."


def announced(name: str, *items: Any, **kw: Any) -> Case:
    return Case(name, ANNOUNCED_STATUS, _records(items), **kw)


S = STATUS_W
ST = "statuses[0]"  # where a dead letter's detail names the first status of a body
EMOJI_ID = "\U0001f600" * limits.WAMID_MAX
GROUP = "120363025246125486"  # a group's id, the recipient of a message to a group

CASES: tuple[Case, ...] = (
    # nesting: the body is level 1, each object or array inside adds one
    dead("text.body nested to depth 300", TOO_DEEP, hook(message(W + "deep300.text", text=deep(300 - TEXT_DEPTH))), depth=300),  # noqa: E501
    dead("extra field nested to depth 300", TOO_DEEP, hook(message(W + "deep300.field", extra=deep(300 - MESSAGE_DEPTH, "object"))), depth=300),  # noqa: E501
    dead("`object` nested 1000 levels", TOO_DEEP, hook(message(W + "deep1000.object"), obj=deep(999)), depth=1000),  # noqa: E501
    dead("body nested 1100 levels (orjson stops at 1024)", TOO_DEEP, hook(message(W + "deep1100", extra=deep(1100 - MESSAGE_DEPTH))), depth=1100),  # noqa: E501
    stored("depth exactly MAX_JSON_DEPTH", hook(message(W + "depth.max", extra=deep(MAX_DEPTH - MESSAGE_DEPTH))), depth=MAX_DEPTH),  # noqa: E501
    dead("depth MAX_JSON_DEPTH + 1", TOO_DEEP, hook(message(W + "depth.max1", extra=deep(MAX_DEPTH + 1 - MESSAGE_DEPTH))), depth=MAX_DEPTH + 1),  # noqa: E501
    # identifier lengths (limits.py)
    stored("wamid of 300 characters", hook(message(wamid_of(300, "w300")))),
    stored("wamid of WAMID_MAX characters", hook(message(wamid_of(limits.WAMID_MAX, "wmax")))),
    dead("wamid of WAMID_MAX + 1 characters", INVALID, hook(message(wamid_of(limits.WAMID_MAX + 1, "wmax1")))),  # noqa: E501
    stored("phone_number_id of PHONE_NUMBER_ID_MAX", hook(message(W + "pnid.max"), pnid=padded("1065", limits.PHONE_NUMBER_ID_MAX))),  # noqa: E501
    dead("phone_number_id of PHONE_NUMBER_ID_MAX + 1", INVALID, hook(message(W + "pnid.max1"), pnid=padded("1065", limits.PHONE_NUMBER_ID_MAX + 1))),  # noqa: E501
    stored("phone_number_id as a JSON integer", hook(message(W + "pnid.int"), pnid=106540352240001)),  # noqa: E501
    stored("from of SENDER_MAX", hook(message(W + "from.max", sender=padded(SENDER_MARK, limits.SENDER_MAX)))),  # noqa: E501
    dead("from of SENDER_MAX + 1", INVALID, hook(message(W + "from.max1", sender=padded(SENDER_MARK, limits.SENDER_MAX + 1)))),  # noqa: E501
    stored("type of MESSAGE_TYPE_MAX", hook(message(W + "type.max", type_="t" * limits.MESSAGE_TYPE_MAX))),  # noqa: E501
    dead("type of MESSAGE_TYPE_MAX + 1", INVALID, hook(message(W + "type.max1", type_="t" * (limits.MESSAGE_TYPE_MAX + 1)))),  # noqa: E501
    stored("timestamp of TIMESTAMP_MAX", hook(message(W + "ts.max", timestamp="1" * limits.TIMESTAMP_MAX))),  # noqa: E501
    dead("timestamp of TIMESTAMP_MAX + 1", INVALID, hook(message(W + "ts.max1", timestamp="1" * (limits.TIMESTAMP_MAX + 1)))),  # noqa: E501
    # control characters: never in an identifier, kept as sent in free text
    dead("NUL in the wamid", INVALID, hook(message(W + "nul\x00wamid"))),
    dead("NUL in the phone_number_id", INVALID, hook(message(W + "nul.pnid"), pnid="10654\x0003522")),  # noqa: E501
    dead("NUL in from", INVALID, hook(message(W + "nul.from", sender=SENDER_MARK[:6] + "\x00" + SENDER_MARK[6:]))),  # noqa: E501
    dead("ESC in the wamid", INVALID, hook(message(W + "esc\x1b[31m"))),
    dead("DEL in the wamid", INVALID, hook(message(W + "del\x7f"))),
    dead("U+001F in the wamid", INVALID, hook(message(W + "us\x1fx"))),
    stored("NUL inside a text body", hook(message(W + "nul.text", text=f"{TEXT_MARK} a\x00b"))),
    stored("NUL in a contact's name", hook(message(W + "nul.name"), name=f"{NAME_MARK}\x00nul")),
    stored("bidi override in a contact's name", hook(message(W + "bidi.name"), name=f"{NAME_MARK}\u202eevil")),  # noqa: E501
    stored("wamid with emoji, U+202E, #, : and /", hook(message(W + "\U0001f600\u202e#:/x"))),
    # separators: keys built by joining two fields must not collide
    stored("':' collision in one record", body(value(message("3"), pnid="1:2"), value(message("2:3"), pnid="1"))),  # noqa: E501
    stored("':' collision in two records", hook(message("6"), pnid="4:5"), hook(message("5:6"), pnid="4")),  # noqa: E501
    stored("'#' collision in one record", body(value(message("3"), pnid="1#2"), value(message("2#3"), pnid="1"))),  # noqa: E501
    stored("'#' collision in two records", hook(message("6"), pnid="4#5"), hook(message("5#6"), pnid="4")),  # noqa: E501
    stored("same wamid under two phone_number_ids", body(value(message(W + "shared"), pnid=PNID), value(message(W + "shared"), pnid=PNID_B))),  # noqa: E501
    # size
    stored("1,800 messages and 35,000 contacts in one 250 KB record", big_record()),
    dead("over MAX_RECORD_BYTES with a 1.9 MB header", Reason.OVERSIZE, oversize_record()),
    stored("numbers that grow 3.8x when re-encoded, 256 KiB", encode_growing()),
    # the record itself: a header name that is not UTF-8 (aiokafka's reader refuses it)
    stored("a header name that is not UTF-8", Record(encode(hook(message(W + "raw.header"))), raw_headers=((b"\xff\xfe-hostile", b"v"),))),  # noqa: E501
    # a contact's wa_id is an identifier too
    dead("a contact wa_id of CONTACT_WA_ID_MAX + 1", INVALID, hook(message(W + "contact.long"), contacts=[{"profile": {"name": NAME_MARK}, "wa_id": "9" * (limits.CONTACT_WA_ID_MAX + 1)}])),  # noqa: E501
    # the display number, copied into every event of its change, is an identifier too
    stored("display_phone_number of DISPLAY_PHONE_NUMBER_MAX", hook(message(W + "display.max"), display=padded("+1 555", limits.DISPLAY_PHONE_NUMBER_MAX))),  # noqa: E501
    dead("display_phone_number of DISPLAY_PHONE_NUMBER_MAX + 1", INVALID, hook(message(W + "display.max1"), display=padded("+1 555", limits.DISPLAY_PHONE_NUMBER_MAX + 1)), detail="display_phone_number"),  # noqa: E501
    dead("ESC in the display_phone_number", INVALID, hook(message(W + "display.esc"), display="1555\x1b[2J0783881"), detail="display_phone_number"),  # noqa: E501
    # amplification: one contact's large name shared by thousands of messages
    dead("a 190 KB record: one contact's 80 KB name, 2,000 tiny messages (the probe)", Reason.OVERSIZE, probe_record(), detail=f"more than {limits.MAX_OUTPUT_FACTOR} times"),  # noqa: E501
    # not field "messages": counted and ignored, or dead-lettered if they hold messages
    dead("messages under a change of field null", Reason.BAD_SHAPE, fields((None, value(message(W + "field.null")))), detail="field is null"),  # noqa: E501
    dead("messages under a change of field 'Messages'", Reason.BAD_SHAPE, fields(("Messages", value(message(W + "field.Messages")))), detail="not 'messages'"),  # noqa: E501
    status("a change of another field, no messages", fields(("account_update", {"event": "VERIFIED_ACCOUNT", "note": NAME_MARK}))),  # noqa: E501
    stored("a message change beside changes of other fields", fields(("message_template_status_update", {"event": "APPROVED"}), ("messages", value(message(W + "field.beside"))), ("zz_undocumented", {"messages": []}))),  # noqa: E501
    # content the event and the row must carry exactly
    stored("large numbers and floats", hook(message(W + "numbers", numbers={"u64": 18446744073709551615, "big": 1e308, "negzero": -0.0}))),  # noqa: E501
    stored("integers beyond 64 bits and 1e-400 in a text message, carried as sent", hook(message(W + "numbers.exact", numbers={"big": number("123456789012345678901234567890"), "u64p1": number("18446744073709551616"), "i64m1": number("-9223372036854775809"), "tiny": number("1e-400"), "negtiny": number("-1e-400"), "huge": number("1E+400"), "long": number("0.1000000000000000000001"), "u64": 18446744073709551615}))),  # noqa: E501
    # shape
    dead("not JSON, with forged dlq.* headers", Reason.NOT_JSON, Record(b"{not json " + TEXT_MARK.encode(), FORGED_HEADERS)),  # noqa: E501
    dead("id given as a number", Reason.MESSAGE_WITHOUT_ID, hook(message(12345))),
    dead("from given as an object", Reason.BAD_SHAPE, hook(message(W + "from.object", sender={"n": SENDER_MARK}))),  # noqa: E501
    dead("empty value", Reason.EMPTY, b""),
    dead("invalid UTF-8", Reason.NOT_UTF8, b'{"object": "\xff\xfe ' + TEXT_MARK.encode() + b'"}'),
    dead("not JSON", Reason.NOT_JSON, b"this is not json " + TEXT_MARK.encode()),
    status("value-level errors only", body(value(errors=[{"code": 131000, "title": f"{TEXT_MARK} Something went wrong"}], contacts=[]))),  # noqa: E501
    # statuses (docs/design.md, "Statuses"): stored once, announced forward only
    dead("NUL in a status word, nested deep within the limit", INVALID, status_hook(status_of(S + "nul.word", "read\x00", odd=deep(MAX_DEPTH - 4 - STATUS_DEPTH))), depth=MAX_DEPTH - 4, detail=f"{ST}.status holds a control character (U+0000) at 4"),  # noqa: E501
    announced("a status word Meta may add, alone and beside sent", status_hook(status_of(S + "word.new", "sent"), status_of(S + "word.new", "deleted"), status_of(S + "word.alone", "pending"))),  # noqa: E501
    announced("a status word in capitals (READ is not read)", status_hook(status_of(S + "word.caps", "READ"), status_of(S + "word.caps", "delivered"))),  # noqa: E501
    announced("':' and '#' in a status id", status_hook(status_of(S + "sep:1#2:x#s:3"))),
    announced("':' collision between a status's id and its word", status_hook(status_of(S + "c:3", "sent"), status_of(S + "c", "3:sent"))),  # noqa: E501
    announced("':' collision of phone_number_id and status id", body(value(statuses=[status_of("9")], pnid="7:8", contacts=[]), value(statuses=[status_of("8:9")], pnid="7", contacts=[]))),  # noqa: E501
    dead("U+001F in a status id", INVALID, status_hook(status_of(S + "us\x1fx")), detail=f"{ST}.id holds a control character (U+001F)"),  # noqa: E501
    dead("C1 control U+0085 in a status word", INVALID, status_hook(status_of(S + "c1.word", "read\x85")), detail=f"{ST}.status holds a control character (U+0085)"),  # noqa: E501
    announced("'{slot}' hash tags in status ids", status_hook(status_of(S + "{slot}.1", "read"), status_of("{" + S + "slot}.2", "sent"), status_of(S + "{}.3", "played"))),  # noqa: E501
    announced("unicode in a status id and word", status_hook(status_of(S + "uni.\U0001f600\u202e\u4e2d\u0301", "read"), status_of(S + "uni.\U0001f600\u202e\u4e2d\u0301", "\u2705 visto"))),  # noqa: E501
    announced("status id of WAMID_MAX characters", status_hook(status_of(wamid_of(limits.WAMID_MAX, "st.max"), "read"))),  # noqa: E501
    dead("status id of WAMID_MAX + 1 characters", INVALID, status_hook(status_of(wamid_of(limits.WAMID_MAX + 1, "st.max1"))), detail=f"{ST}.id has {limits.WAMID_MAX + 1} characters"),  # noqa: E501
    announced("the widest status key: phone_number_id, id and word at their limits, 4-byte characters", status_hook(status_of(EMOJI_ID, "sent"), status_of(EMOJI_ID, "\U0001f4e8" * limits.STATUS_MAX), pnid=padded("1065", limits.PHONE_NUMBER_ID_MAX, "8"))),  # noqa: E501
    dead("status word of STATUS_MAX + 1 characters", INVALID, status_hook(status_of(S + "word.max1", "w" * (limits.STATUS_MAX + 1))), detail=f"{ST}.status has {limits.STATUS_MAX + 1} characters"),  # noqa: E501
    announced("recipient_id of RECIPIENT_MAX", status_hook(status_of(S + "rcpt.max", recipient=padded(SENDER_MARK, limits.RECIPIENT_MAX)))),  # noqa: E501
    dead("recipient_id of RECIPIENT_MAX + 1", INVALID, status_hook(status_of(S + "rcpt.max1", recipient=padded(SENDER_MARK, limits.RECIPIENT_MAX + 1))), detail=f"{ST}.recipient_id has"),  # noqa: E501
    announced("recipient_user_id only", status_hook(status_of(S + "bsuid", "read", recipient=None, recipient_user_id="US.13491208655302741918"))),  # noqa: E501
    dead("recipient_id null beside a recipient_user_id", INVALID, status_hook(status_of(S + "rcpt.null", recipient=None, recipient_id=None, recipient_user_id="US.13491208655302741918")), detail=f"{ST}.recipient_id is null"),  # noqa: E501
    dead("a status without a recipient", INVALID, status_hook(status_of(S + "rcpt.none", recipient=None)), detail=f"{ST}.recipient_user_id is null"),  # noqa: E501
    dead("a status id given as a number", INVALID, status_hook(status_of(12345)), detail=f"{ST}.id is a number"),  # noqa: E501
    dead("statuses without metadata.phone_number_id", Reason.MISSING_PHONE_NUMBER_ID, status_hook(status_of(S + "no.pnid"), pnid=None), detail="value.metadata.phone_number_id"),  # noqa: E501
    announced("status timestamp as a JSON integer", status_hook(status_of(S + "ts.int", "sent", timestamp=1749416383))),  # noqa: E501
    announced("status timestamp of TIMESTAMP_MAX digits", status_hook(status_of(S + "ts.max", timestamp="9" * limits.TIMESTAMP_MAX))),  # noqa: E501
    dead("status timestamp '1.5'", INVALID, status_hook(status_of(S + "ts.frac", timestamp="1.5")), detail=f"{ST}.timestamp is"),  # noqa: E501
    dead("status timestamp a negative integer", INVALID, status_hook(status_of(S + "ts.neg", timestamp=-1749416383)), detail=f"{ST}.timestamp is a number"),  # noqa: E501
    dead("status timestamp of TIMESTAMP_MAX + 1 digits", INVALID, status_hook(status_of(S + "ts.max1", timestamp="1" * (limits.TIMESTAMP_MAX + 1))), detail=f"{ST}.timestamp is"),  # noqa: E501
    announced("huge free content in a status's errors and pricing: 250 KB, NUL, numbers as written", huge_status()),  # noqa: E501
    announced("a status nested to exactly MAX_JSON_DEPTH", status_hook(status_of(S + "depth.max", odd=deep(MAX_DEPTH - STATUS_DEPTH))), depth=MAX_DEPTH),  # noqa: E501
    dead("a status nested to MAX_JSON_DEPTH + 1", TOO_DEEP, status_hook(status_of(S + "depth.max1", odd=deep(MAX_DEPTH + 1 - STATUS_DEPTH, "object"))), depth=MAX_DEPTH + 1),  # noqa: E501
    announced("1,000 statuses of 1,000 messages in one body (Meta's most)", thousand_statuses()),
    announced("one status copied 1,000 times in one body", status_hook(*[status_of(S + "x1000", "delivered", pricing=PRICING)] * BIG_STATUSES)),  # noqa: E501
    announced("a group's read twice: one participant announced, the other a duplicate", status_hook(*(status_of(S + "group", "read", recipient=GROUP, recipient_type="group", recipient_participant_id=p, timestamp=t) for p, t in (("16505550101", "1749416390"), ("16505550102", "1749416399"))))),  # noqa: E501
    announced("out-of-order statuses across records and copies", status_hook(status_of(S + "ooo", "played")), status_hook(status_of(S + "ooo", "sent"), status_of(S + "ooo", "read")), status_hook(status_of(S + "ooo", "delivered")), status_hook(status_of(S + "ooo", "failed"))),  # noqa: E501
    announced("out-of-order statuses in one body", status_hook(status_of(S + "ooo.one", "read"), status_of(S + "ooo.one", "sent"), status_of(S + "ooo.one", "delivered"))),  # noqa: E501
    announced("a failed status and a late delivered in another record", status_hook(status_of(S + "failed.late", "failed", errors=[{"code": 131049, "title": "not delivered"}])), status_hook(status_of(S + "failed.late", "delivered"))),  # noqa: E501
    announced("a status about an inbound message's wamid, beside it", status_hook(status_of(W + "both", "read"), messages=(message(W + "both"),))),  # noqa: E501
    dead("statuses under a change of field null", Reason.BAD_SHAPE, fields((None, value(statuses=[status_of(S + "field.null", "read")], contacts=[]))), detail="value holds statuses"),  # noqa: E501
    status("an empty statuses list under another field", fields(("history", value(statuses=[], contacts=[])))),  # noqa: E501
    # intake accepts, the database refuses (a CHECK constraint / trigger the suite adds)
    dead("refused by the database", Reason.UNSTORABLE, hook(message(W + REFUSE_MARK + ".alone")), detail=REFUSAL),  # noqa: E501
    dead("refused message beside a good one in one record", Reason.UNSTORABLE, hook(message(W + "refusal.neighbour"), message(W + REFUSE_MARK + ".mixed")), detail=REFUSAL),  # noqa: E501
)  # fmt: skip

BY_NAME = {c.name: c for c in CASES}


def chosen(spec: str | None = None) -> tuple[Case, ...]:
    """The cases a run sends: all, or (``HOSTILE_CASES=deep,NUL``, to work on a few)
    those whose name holds one of the comma-separated words (any case); a word with a
    leading ``!`` leaves out the cases whose name holds it."""
    words = [w.strip().lower() for w in (spec or "").split(",") if w.strip()]
    wanted = [w for w in words if not w.startswith("!")]
    unwanted = [w[1:] for w in words if w.startswith("!")]
    return tuple(
        c
        for c in CASES
        if (not wanted or any(w in c.name.lower() for w in wanted))
        and not any(w in c.name.lower() for w in unwanted)
    )


# -- what a body holds (a reference reading, independent of consumer.intake) -------------


@dataclass(frozen=True)
class Expected:
    """A message as sent: what its row and its event must say."""

    key: tuple[str, str]
    sender: Any
    type: Any
    timestamp: Any
    contact_name: str | None
    contact_wa_id: str | None
    raw: dict[str, Any]

    @property
    def content(self) -> dict[str, Any]:
        """What the event copies from the message besides the envelope."""
        return {k: v for k, v in self.raw.items() if k not in ("id", "from", "timestamp", "type")}


def messages_in(value_bytes: bytes | None) -> list[Expected]:
    """Every message a body holds, under a change of any field, read leniently (nothing
    if it does not parse), numbers exactly (loads_exact)."""
    parsed = _parse(value_bytes)
    return [] if parsed is None else list(_walk(parsed))


def ignored_in(value_bytes: bytes | None) -> int:
    """The changes of a body that create nothing: of a field other than "messages", or
    holding no messages, statuses or errors."""
    parsed = _parse(value_bytes)
    entries = parsed.get("entry") if isinstance(parsed, dict) else None
    count = 0
    for entry in entries if isinstance(entries, list) else []:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else []:
            if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
                continue
            v = change["value"]
            if change.get("field", "messages") != "messages" or not (
                v.get("messages") or "statuses" in v or "errors" in v
            ):
                count += 1
    return count


def _parse(value_bytes: bytes | None) -> Any:
    """The body exactly, or as orjson reads it if it nests too deep for the standard
    parser, or None if it is not JSON."""
    try:
        return loads_exact(value_bytes or b"")
    except RecursionError:
        pass
    except ValueError:
        return None
    try:
        return orjson.loads(value_bytes or b"")
    except orjson.JSONDecodeError:
        return None


def _walk(parsed: Any) -> Iterator[Expected]:
    entries = parsed.get("entry") if isinstance(parsed, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else []:
            v = change.get("value") if isinstance(change, dict) else None
            if isinstance(v, dict):
                yield from _value_messages(v)


def _value_messages(v: dict[str, Any]) -> Iterator[Expected]:
    metadata = v.get("metadata")
    pnid = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    if isinstance(pnid, int) and not isinstance(pnid, bool):
        pnid = str(pnid)
    contacts = [c for c in v.get("contacts") or [] if isinstance(c, dict)]
    by_wa_id: dict[Any, dict[str, Any]] = {}
    for c in contacts:
        if isinstance(c.get("wa_id"), str):
            by_wa_id.setdefault(c["wa_id"], c)
    lone = contacts[0] if len(contacts) == 1 else None
    raw_messages = v.get("messages")
    for raw in raw_messages if isinstance(raw_messages, list) else []:
        if not isinstance(raw, dict) or not isinstance(pnid, str):
            continue
        wamid = raw.get("id")
        if not isinstance(wamid, str):
            continue
        sender = raw.get("from")
        contact = by_wa_id.get(sender, lone) if isinstance(sender, str) else lone
        profile = contact.get("profile") if contact else None
        name = profile.get("name") if isinstance(profile, dict) else None
        wa_id = contact.get("wa_id") if contact else None
        yield Expected(
            key=(pnid, wamid),
            sender=sender,
            type=raw.get("type"),
            timestamp=raw.get("timestamp"),
            contact_name=name if isinstance(name, str) else None,
            contact_wa_id=wa_id if isinstance(wa_id, str) else None,
            raw=raw,
        )


@dataclass(frozen=True)
class ExpectedStatus:
    """A status update as sent: what its row of ``statuses`` and its event must say."""

    key: tuple[str, str, str]  # (phone_number_id, id, word)
    recipient: Any  # recipient_id, or recipient_user_id when recipient_id is absent
    timestamp: Any  # as sent: digits, or an integer
    display: Any  # the change's metadata.display_phone_number
    raw: dict[str, Any]
    change_field: Any = "messages"  # the field of the change it came in

    @property
    def message(self) -> tuple[str, str]:
        """The message it is about: (phone_number_id, id)."""
        return self.key[:2]

    @property
    def word(self) -> str:
        return self.key[2]

    @property
    def rank(self) -> int | None:
        return status_rank(self.word)

    @property
    def event_status(self) -> dict[str, Any]:
        """The event's ``status``: the object as sent, its timestamp as a string."""
        return {
            **self.raw,
            "id": self.key[1],
            "status": self.word,
            "timestamp": str(self.timestamp),
        }


def status_rank(word: str) -> int | None:
    """The word's place in STATUS_ORDER (1 for sent), None for a word Meta may add."""
    return STATUS_ORDER.index(word) + 1 if word in STATUS_ORDER else None


def statuses_in(value_bytes: bytes | None) -> list[ExpectedStatus]:
    """Every well-formed status update a body holds, under a change of any field (each
    says which), read leniently like messages_in."""
    parsed = _parse(value_bytes)
    entries = parsed.get("entry") if isinstance(parsed, dict) else None
    out = []
    for entry in entries if isinstance(entries, list) else []:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else []:
            v = change.get("value") if isinstance(change, dict) else None
            if isinstance(v, dict):
                out += _value_statuses(v, change.get("field", "messages"))
    return out


def _value_statuses(v: dict[str, Any], change_field: Any) -> list[ExpectedStatus]:
    metadata = v.get("metadata")
    pnid = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    display = metadata.get("display_phone_number") if isinstance(metadata, dict) else None
    if isinstance(pnid, int) and not isinstance(pnid, bool):
        pnid = str(pnid)
    if isinstance(display, int) and not isinstance(display, bool):
        display = str(display)
    raw_statuses = v.get("statuses")
    out = []
    for raw in raw_statuses if isinstance(raw_statuses, list) else []:
        if not isinstance(raw, dict) or not isinstance(pnid, str):
            continue
        sid, word = raw.get("id"), raw.get("status")
        if not isinstance(sid, str) or not isinstance(word, str):
            continue
        recipient = raw.get("recipient_id" if "recipient_id" in raw else "recipient_user_id")
        out.append(
            ExpectedStatus(
                (pnid, sid, word), recipient, raw.get("timestamp"), display, raw, change_field
            )
        )
    return out
