"""The values that flow through the pipeline and the member's bookkeeping: records,
messages, their keys, a partition, and a batch's report.

Outcomes are values, not exceptions: a record decodes to a :class:`Webhook` or an
:class:`Invalid`; a batch ends in a :class:`BatchReport`. Standard library only.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any, NamedTuple

Partition = tuple[str, int]
"""A topic partition: (topic, partition)."""

# Fixed namespaces: the ids derived from them are part of the outbound contract and
# must never change, so that a re-publish is recognisable downstream.
EVENT_NAMESPACE = uuid.UUID("6f1d8c53-3f0e-4c1e-9a43-5d0f2b8e7a11")
MESSAGE_NAMESPACE = uuid.UUID("0b7e4f3a-91c2-4d5e-8f60-2a1b3c4d5e6f")
STATUS_EVENT_NAMESPACE = uuid.UUID("3c9a1f52-7d4b-4e08-b6a2-9e5c0d7f1a24")
# Meta's status words (their order is in consumer/statuses.py): a metric's label is one
# of these or "other".
STATUS_WORDS = frozenset({"sent", "delivered", "read", "played", "failed"})


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """One Kafka record of the inbound topic, as fetched."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]  # a header's value may be null
    timestamp_ms: int
    # Set on a record that stands for records the client could not read (a batch that
    # does not decode, or decompresses beyond its bound: consumer/lenient.py): why, and
    # what. Never set from a record's own bytes.
    problem: tuple[Reason, str] | None = None

    @property
    def coordinates(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)

    @property
    def size(self) -> int:
        """The bytes this record holds: key, value and headers."""
        return (
            len(self.key or b"")
            + len(self.value or b"")
            + sum(len(k) + len(v or b"") for k, v in self.headers)
        )

    @property
    def dead_letter_key(self) -> RecordKey:
        """This record's identity for the dead-letter marker (docs/design.md, P4)."""
        return RecordKey(self.topic, self.partition, self.offset, self.timestamp_ms)

    def log_context(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True, slots=True)
class RecordKey:
    """A source record's identity: where it sits, and when it was written (so that a
    record at the same place of a topic deleted and created again is another record).
    Dead letters are guarded by it as messages are by their MessageKey: a record that a
    redelivery meets again after its dead letter was sent is not dead-lettered twice."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int


class MessageKey(NamedTuple):
    """A message's identity: the same wamid under two numbers is two messages.

    A named tuple, not a dataclass: a batch hashes and compares each key a dozen times,
    and a tuple does both in C. Its order is (phone_number_id, wamid)."""

    phone_number_id: str
    wamid: str

    @property
    def event_id(self) -> str:
        return _derive(_EVENT_NS, self.phone_number_id, self.wamid)

    @property
    def message_id(self) -> str:
        return _derive(_MESSAGE_NS, self.phone_number_id, self.wamid)


# The namespaces as bytes: the cache below hashes its arguments on every call, and a
# UUID hashes in Python, bytes in C.
_EVENT_NS = EVENT_NAMESPACE.bytes
_MESSAGE_NS = MESSAGE_NAMESPACE.bytes
_STATUS_NS = STATUS_EVENT_NAMESPACE.bytes


@functools.lru_cache(maxsize=65_536)
def _derive(namespace: bytes, phone_number_id: str, wamid: str) -> str:
    """uuid5 of ``phone_number_id \x1f wamid``: two different keys never share a name,
    because intake admits no control character (\x1f included) in a phone_number_id, so
    the first \x1f splits the name back into its two parts (docs/design.md, rule 11).
    The formula is part of the outbound contract and never changes. Cached: uuid5 is a
    SHA-1, and a batch asks for each id several times. Computed as ``uuid.uuid5`` does
    (RFC 4122 version 5), without building UUID objects, which is faster."""
    digest = bytearray(
        hashlib.sha1(  # noqa: S324 - uuid5 is SHA-1 by definition; not a security use
            namespace + f"{phone_number_id}\x1f{wamid}".encode()
        ).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class StatusKey(NamedTuple):
    """A status update's identity: this word, for this message, of this number
    (docs/design.md, "Statuses"). Three fields, so never equal to a MessageKey."""

    phone_number_id: str
    status_id: str  # the id (wamid) of the business's message the status is about
    status: str

    @property
    def event_id(self) -> str:
        """uuid5 of ``phone_number_id \x1f id \x1f status`` in STATUS_EVENT_NAMESPACE:
        intake admits no control character in any of the three, so the name splits back
        into its parts and two keys never share an event id."""
        return _derive(_STATUS_NS, self.phone_number_id, f"{self.status_id}\x1f{self.status}")

    @property
    def message(self) -> tuple[str, str]:
        """The message the status is about: (phone_number_id, id)."""
        return (self.phone_number_id, self.status_id)


ItemKey = MessageKey | StatusKey
"""What a batch stores once and announces once: a message, or a status update."""


@dataclass(frozen=True, slots=True)
class Message:
    """One inbound WhatsApp message found in a webhook."""

    key: MessageKey
    sender: str
    type: str
    timestamp: str
    contact_wa_id: str | None
    contact_name: str | None
    contact_profile: dict[str, Any] | None
    display_phone_number: str | None
    raw: dict[str, Any]
    source: InboundRecord

    def log_context(self) -> dict[str, Any]:
        return {
            **self.source.log_context(),
            "phone_number_id": self.key.phone_number_id,
            "wamid": self.key.wamid,
        }


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """One status update of a message the business sent (``value.statuses[]``)."""

    key: StatusKey
    timestamp: str  # Meta's: Unix seconds, as digits
    # Who the message went to: recipient_id, or recipient_user_id when Meta sends only
    # the business-scoped user id; the event's Kafka key is built from it.
    recipient: str
    display_phone_number: str | None
    raw: dict[str, Any]  # the status object as sent
    source: InboundRecord

    def log_context(self) -> dict[str, Any]:
        return {
            **self.source.log_context(),
            "phone_number_id": self.key.phone_number_id,
            "wamid": self.key.status_id,
            "status": self.key.status,
        }


Item = Message | StatusUpdate


@dataclass(frozen=True, slots=True)
class Webhook:
    """A usable webhook: its messages and status updates, plus counts of what creates
    none."""

    record: InboundRecord
    messages: tuple[Message, ...]
    statuses: tuple[StatusUpdate, ...] = ()
    errors: int = 0
    ignored_changes: int = 0
    # Each change that created nothing, as (where, field): its place in the body
    # ("entry[0].changes[1]") and its field as a metric label (intake.field_label:
    # one of Meta's field names, "messages" for one holding nothing, or "other").
    ignored: tuple[tuple[str, str], ...] = ()

    @property
    def items(self) -> tuple[Item, ...]:
        """What this webhook asks to store and announce: messages, then statuses."""
        return (*self.messages, *self.statuses) if self.statuses else self.messages

    def log_context(self) -> dict[str, Any]:
        return self.record.log_context()


class Reason(enum.StrEnum):
    """Why a record went to the dead-letter topic (the `dlq.reason` header)."""

    EMPTY = "empty"
    OVERSIZE = "oversize"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    BAD_SHAPE = "bad_shape"
    MESSAGE_WITHOUT_ID = "message_without_id"
    MISSING_PHONE_NUMBER_ID = "missing_phone_number_id"
    # Only with WHATSAPP_APP_SECRET set: no X-Hub-Signature-256 header, or a bad one.
    SIGNATURE_MISSING = "signature_missing"
    SIGNATURE_INVALID = "signature_invalid"
    # Nested deeper than limits.MAX_JSON_DEPTH.
    TOO_DEEP = "too_deep"
    # A field breaks the storage contract (limits.py): too long, a control character.
    INVALID_FIELD = "invalid_field"
    # Intake accepted it, but the database or the event encoder refused its data: the
    # record was isolated from its batch and the refusal's message is the detail.
    UNSTORABLE = "unstorable"
    # An unexpected exception while processing it; the detail names the exception type.
    INTERNAL_ERROR = "internal_error"
    # A fetched batch the client cannot decode (corrupt or unknown compression, a CRC
    # that does not match, records that do not parse): one dead letter stands for the
    # records of the batch not read, at the batch's last offset (consumer/lenient.py).
    UNREADABLE = "unreadable"


@dataclass(frozen=True, slots=True)
class Invalid:
    """A record that is not a usable webhook, and why."""

    record: InboundRecord
    reason: Reason
    detail: str

    def log_context(self) -> dict[str, Any]:
        return {**self.record.log_context(), "reason": str(self.reason)}


Decoded = Webhook | Invalid


@dataclass(slots=True)
class BatchReport:
    """What happened to one batch: counts for logs and metrics, records for offsets."""

    records: int = 0
    messages: int = 0
    stored: int = 0
    dup_done_marker: int = 0  # done markers the database confirmed
    # Done markers the database did not confirm (their message went through the fence),
    # and keys under the prefix that are not ours (docs/design.md, "Keys we did not write").
    markers_unconfirmed: int = 0
    foreign_keys: int = 0
    dup_database: int = 0
    dup_in_batch: int = 0
    held: int = 0
    statuses: int = 0
    # Statuses deferred: another member holds the lease or publishes the row, or an
    # earlier status of the message is not announced yet (docs/design.md, "Statuses").
    statuses_held: int = 0
    errors: int = 0
    # Changes that created nothing (not field "messages", or holding no message, status
    # or error); by field as a metric label (intake.field_label) in ignored_fields.
    ignored_changes: int = 0
    dead_lettered: int = 0
    dead_letters_repeated: int = 0  # records met again whose dead letter was sent already
    isolated: int = 0  # records refused by the database or the encoder, or that raised
    events: int = 0
    republished: int = 0
    leases_lost: int = 0
    failure: str | None = None
    ignored_fields: dict[str, int] = field(default_factory=dict)
    # Status updates by (word, outcome): announced, stale, duplicate, or ignored (with
    # STATUS_EVENTS off); a word Meta may add counts as "other" (a bounded label).
    status_outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    durable: list[InboundRecord] = field(default_factory=list)
    retry: list[InboundRecord] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Every count, by its field name, and how many records are to be retried."""
        out = {f.name: getattr(self, f.name) for f in _COUNT_FIELDS}
        out["retry"] = len(self.retry)
        return out

    def add(self, other: BatchReport) -> None:
        """Add another report's counts (not its records or failure) to these."""
        for f in _COUNT_FIELDS:
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        for (word, outcome), count in other.status_outcomes.items():
            self.count_status(word, outcome, count)

    def count_status(self, word: str, outcome: str, count: int = 1) -> None:
        label = (word if word in STATUS_WORDS else "other", outcome)
        self.status_outcomes[label] = self.status_outcomes.get(label, 0) + count

    def status_count(self, outcome: str) -> int:
        """The status updates of this outcome, whatever their word."""
        return sum(n for (_, o), n in self.status_outcomes.items() if o == outcome)


_COUNT_FIELDS = tuple(f for f in dataclasses.fields(BatchReport) if f.type == "int")
