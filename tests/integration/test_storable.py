"""The storage contract end to end (docs/design.md, rule 9): whatever intake accepts as a
webhook, the event builder encodes and the store keeps, once, on PostgreSQL and SQLite.

The bodies come from tests/fuzz/strategies.py (the samples, and the numbers of
consumer/limits.py at and just under each limit). For every accepted body: each message's
``message_created`` event builds and names the wamid as ``message.source_id``; one save
inserts every message with its outbox row; a second save of the same messages is a
conflict for each; every row reads back with ``raw`` and ``contact_profile`` equal to what
was sent (NUL, -0.0 and 2**64 - 1 included) and the outbox holds the event's bytes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from consumer import events, intake, limits
from consumer.engine import create_engine
from consumer.outbox import unpack_events
from consumer.ports import PendingMessage
from consumer.records import InboundRecord, Invalid, Message, MessageKey, Reason, Webhook
from consumer.schema import messages, outbox
from consumer.settings import Settings
from consumer.store import Store
from tests.fuzz.contract import depth
from tests.fuzz.strategies import ENCODINGS, encode, sent_messages, webhook_bodies

pytestmark = pytest.mark.integration

MAX_RECORD_BYTES = Settings().max_record_bytes
# The events a member of the default MAX_RECORD_BYTES builds (its produce request's).
EVENT_LIMIT = events.EventLimit(Settings().sizes.max_event_bytes)
IN_TOPIC = "whatsapp.webhooks"
OUT_TOPIC = "whatsapp.message_created"
OCCURRED_AT = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
# Fields of the raw message the event carries under its own names (or replaces).
EVENT_OWN_FIELDS = frozenset({"id", "from", "timestamp", "type", "source_id"})
# Below this share of accepted bodies the strategies have drifted from their purpose.
MIN_ACCEPTANCE = 0.9


@dataclass
class Tally:
    """What the property test saw, for its report."""

    bodies: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    messages: int = 0
    ids_at_limit: int = 0  # accepted bodies with an identifier of exactly its limit
    deepest: int = 0  # accepted bodies nested exactly MAX_JSON_DEPTH deep

    def line(self) -> str:
        ratio = self.accepted / self.bodies if self.bodies else 0.0
        return (
            f"acceptance {self.accepted}/{self.bodies} = {ratio:.1%}; "
            f"{self.messages} messages stored; refused {self.refused or 'none'}; "
            f"accepted with an identifier at its limit {self.ids_at_limit}, "
            f"nested exactly {limits.MAX_JSON_DEPTH} deep {self.deepest}"
        )

    def count(self, hook: Webhook, body: dict[str, Any]) -> None:
        self.accepted += 1
        if any(_at_limit(m) for m in hook.messages):
            self.ids_at_limit += 1
            event("an identifier at its limit")
        if depth(body) == limits.MAX_JSON_DEPTH:
            self.deepest += 1
            event("nested exactly MAX_JSON_DEPTH deep")


def _at_limit(m: Message) -> bool:
    return (
        len(m.key.phone_number_id) == limits.PHONE_NUMBER_ID_MAX
        or len(m.key.wamid) == limits.WAMID_MAX
        or len(m.sender) == limits.SENDER_MAX
        or len(m.type) == limits.MESSAGE_TYPE_MAX
        or len(m.timestamp) == limits.TIMESTAMP_MAX
        or len(m.contact_wa_id or "") == limits.CONTACT_WA_ID_MAX
    )


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """Counts the bodies of one property run; afterwards reports the acceptance ratio
    (shown with ``-rP``, kept in the junit properties) and checks it."""
    seen = Tally()
    yield seen
    print(f"{request.node.nodeid}: {seen.line()}")
    request.node.user_properties.append(("acceptance", seen.line()))
    assert seen.bodies, "the property test ran no example"
    assert seen.accepted / seen.bodies >= MIN_ACCEPTANCE, seen.line()


def _canon(value: Any) -> bytes:
    """A value's exact JSON text: tells -0.0 from 0.0 and 1.0 from 1, unlike ==."""
    return orjson.dumps(value)


def _pending(hook: Webhook, sent: list[dict[str, Any]]) -> dict[MessageKey, PendingMessage]:
    """Each key's first message with its event, as the pipeline builds them; checks the
    event names the message and its number."""
    assert len(hook.messages) == len(sent)
    first: dict[MessageKey, PendingMessage] = {}
    for message, as_sent in zip(hook.messages, sent, strict=True):
        assert _canon(message.raw) == _canon(as_sent), "intake changed the message"
        if message.key in first:
            continue
        built = events.build(message, topic=OUT_TOPIC, occurred_at=OCCURRED_AT, limit=EVENT_LIMIT)
        payload = orjson.loads(built.payload)
        assert payload["message"]["source_id"] == message.key.wamid
        assert payload["phone_number_id"] == message.key.phone_number_id
        assert payload["event_id"] == built.event_id == message.key.event_id
        content = {k: v for k, v in as_sent.items() if k not in EVENT_OWN_FIELDS}
        assert _canon({k: payload["message"][k] for k in content}) == _canon(content)
        assert len(built.payload) + len(built.key) <= EVENT_LIMIT.max_bytes
        first[message.key] = PendingMessage(message, built)
    return first


async def _clear(store: Store) -> None:
    """Empty both tables: each example starts from an empty database, so its wamids are
    new (and a shrunk example replays cleanly)."""
    async with store.engine.begin() as conn:
        await conn.execute(sa.delete(outbox))
        await conn.execute(sa.delete(messages))


async def _stored(store: Store) -> tuple[dict[MessageKey, Any], dict[str, bytes]]:
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(messages))).all()
        boxed = (await conn.execute(sa.select(outbox.c.events))).scalars().all()
    return (
        {MessageKey(r.phone_number_id, r.source_id): r for r in rows},
        {e.event_id: e.payload for blob in boxed for e in unpack_events(blob)},
    )


def _check_row(row: Any, message: Message) -> None:
    """A stored row is the message: identifiers, raw and profile as sent (NUL kept), the
    name's copy for display with U+FFFD for NUL."""
    assert row.id == message.key.message_id
    assert row.event_id == message.key.event_id
    assert (row.sender, row.message_type, row.message_timestamp) == (
        message.sender,
        message.type,
        message.timestamp,
    )
    assert row.contact_wa_id == message.contact_wa_id
    name = message.contact_name
    assert row.contact_name == (name.replace("\x00", "\ufffd") if name is not None else None)
    assert _canon(row.contact_profile) == _canon(message.contact_profile)
    assert _canon(row.raw) == _canon(message.raw)


async def _store_twice(store: Store, pending: dict[MessageKey, PendingMessage]) -> None:
    """Save, check what was inserted and read back, save again: all conflicts."""
    keys = frozenset(pending)
    saved = await store.save(list(pending.values()))
    assert saved.inserted == keys
    assert not saved.conflicts
    rows, boxed = await _stored(store)
    assert set(rows) == keys
    for key, p in pending.items():
        _check_row(rows[key], p.message)
        assert boxed[p.event.event_id] == p.event.payload
    again = await store.save(list(pending.values()))
    assert again.conflicts == keys
    assert not again.inserted
    rows, _ = await _stored(store)
    assert set(rows) == keys


def _record(value: bytes) -> InboundRecord:
    return InboundRecord(IN_TOPIC, 0, 0, None, value, (), 0)


@hsettings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one engine and database for the run
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(body=webhook_bodies(), encoding=st.sampled_from(sorted(ENCODINGS)))
async def test_what_intake_accepts_is_announced_and_stored_once(
    store: Store, tally: Tally, body: dict[str, Any], encoding: str
) -> None:
    """For any body intake accepts: every message's event builds (source_id is the
    wamid), the save inserts each key once with its outbox row, the rows read back equal
    to the messages as sent, and saving the same messages again is a conflict for each."""
    decoded = intake.decode(_record(encode(body, encoding)), max_bytes=MAX_RECORD_BYTES)
    tally.bodies += 1
    if isinstance(decoded, Invalid):
        reason = str(decoded.reason)
        tally.refused[reason] = tally.refused.get(reason, 0) + 1
        event(f"refused: {reason}")
        return
    event("accepted")
    tally.count(decoded, body)
    await _clear(store)
    pending = _pending(decoded, sent_messages(body))
    tally.messages += len(pending)
    if pending:
        await _store_twice(store, pending)


# -- the widest cases, one by one -----------------------------------------------------


def _body(value: dict[str, Any]) -> dict[str, Any]:
    change = {"field": "messages", "value": {"messaging_product": "whatsapp", **value}}
    return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}


def _accepted(value: bytes, max_bytes: int = MAX_RECORD_BYTES) -> Webhook:
    assert len(value) <= max_bytes
    decoded = intake.decode(_record(value), max_bytes=max_bytes)
    assert isinstance(decoded, Webhook), decoded
    return decoded


@pytest.mark.parametrize("char", ["1", "é", "中", "😀", "\U0010ffff"])
async def test_every_identifier_at_its_limit_in_wide_characters(store: Store, char: str) -> None:
    """All six identifiers at exactly their limit in characters of 1-4 UTF-8 bytes (the
    widest unique-index entry: (64 + 512) * 4 bytes), a NUL in the name and the text."""
    sender = char * limits.SENDER_MAX
    msg = {
        "from": sender,
        "id": char * (limits.WAMID_MAX - 2) + ":#",
        "timestamp": char * limits.TIMESTAMP_MAX,
        "type": char * limits.MESSAGE_TYPE_MAX,
        "text": {"body": "\x00\u202e" + char * 1000},
    }
    contact = {"profile": {"name": "A\x00B"}, "wa_id": sender[: limits.CONTACT_WA_ID_MAX]}
    metadata = {"phone_number_id": char * (limits.PHONE_NUMBER_ID_MAX - 1) + "/"}
    body = _body({"metadata": metadata, "contacts": [contact], "messages": [msg]})
    hook = _accepted(orjson.dumps(body))
    await _store_twice(store, _pending(hook, [msg]))


async def test_a_record_full_of_messages_is_stored_once(store: Store) -> None:
    """A record holding thousands of small messages (distinct wamids; as many as fit
    256 KiB, the former default; at 3 MiB so many would pass MAX_OUTPUT_BYTES): one save
    inserts them all, the next conflicts on them all (no statement parameter limit is
    reached on either database)."""
    msgs = [{"from": "1", "id": f"w{n}", "timestamp": "1", "type": "t"} for n in range(6000)]
    body = _body({"metadata": {"phone_number_id": 1}, "messages": msgs})
    while len(orjson.dumps(body)) > 256 * 1024:
        del msgs[-100:]
    hook = _accepted(orjson.dumps(body))
    assert len(hook.messages) > 4000
    await _store_twice(store, _pending(hook, msgs))


def _growing_numbers(max_bytes: int) -> bytes:
    """A one-message record of `max_bytes` whose message is a list of ``9e15``: orjson
    writes each back as ``9000000000000000.0``, 3.8 times its size (the most any JSON
    text grows when re-encoded)."""
    head = (
        b'{"entry":[{"changes":[{"value":{"metadata":{"phone_number_id":"1"},'
        b'"messages":[{"id":"w","from":"1","type":"t","timestamp":"1","x":['
    )
    tail = b"]}]}}]}]}"
    count = (max_bytes - len(head) - len(tail) + 1) // len(b"9e15,")
    return head + b",".join([b"9e15"] * count) + tail


async def test_numbers_that_grow_when_re_encoded_still_fit_the_event(store: Store) -> None:
    """At the default MAX_RECORD_BYTES, the largest record of numbers that orjson writes
    back 3.8 times larger that intake takes (about 820 KB: its event, 3.1 MB, fills the
    produce request) makes its event, and is stored as read."""
    room = EVENT_LIMIT.max_bytes - limits.EVENT_ENVELOPE_BYTES
    hook = _accepted(_growing_numbers(int(room / 3.85)))
    (message,) = hook.messages
    await _store_twice(store, _pending(hook, [message.raw]))


@pytest.mark.parametrize(
    "size", [256 * 1024, 275_000, 400_000, MAX_RECORD_BYTES, limits.MAX_RECORD_BYTES_LIMIT]
)
def test_at_any_allowed_record_size_what_intake_accepts_can_be_announced(size: int) -> None:
    """With MAX_RECORD_BYTES anywhere up to the largest value Settings allow, a record of
    numbers that grow when re-encoded is either accepted and makes its event, or refused
    at intake as oversize (never accepted and then refused as unstorable). At 275,000
    bytes and above it does not fit (the produce request grows with MAX_RECORD_BYTES
    from 960 KiB on, by the record's size, not 3.8 times it): intake says so."""
    assert Settings(max_record_bytes=size).max_record_bytes == size
    decoded = intake.decode(_record(_growing_numbers(size)), max_bytes=size)
    if isinstance(decoded, Webhook):
        (message,) = decoded.messages
        limit = events.EventLimit(limits.sizes(size).max_event_bytes)
        event = events.build(message, topic=OUT_TOPIC, occurred_at=OCCURRED_AT, limit=limit)
        assert len(event.payload) <= limit.max_bytes
    else:
        assert decoded.reason is Reason.OVERSIZE, decoded
        assert "re-encoded" in decoded.detail
    assert isinstance(decoded, Webhook) == (size < 275_000)


def _batch_of_full_records(records: int, per_record: int) -> list[PendingMessage]:
    """`records` records intake accepts, each of `per_record` small messages (distinct
    wamids across the batch), with their events: one poll's batch."""
    pending: list[PendingMessage] = []
    for r in range(records):
        msgs = [
            {"from": "1", "id": f"w{r}.{n}", "timestamp": "1", "type": "t"}
            for n in range(per_record)
        ]
        hook = _accepted(
            orjson.dumps(_body({"metadata": {"phone_number_id": "1"}, "messages": msgs}))
        )
        pending.extend(_pending(hook, msgs).values())
    return pending


async def test_a_batch_with_more_messages_than_query_arguments(postgres_url: str) -> None:
    """One poll's batch of accepted records holding 36,000 messages in all can be marked
    published, stored, and stored again as conflicts on PostgreSQL. (Marking comes
    first because it fails fastest.)"""
    store = Store(create_engine(postgres_url, pool_size=2, timeout_s=30))
    try:
        pending = _batch_of_full_records(9, 4000)
        await store.mark_published([p.event.event_id for p in pending])
        saved = await store.save(pending)
        assert len(saved.inserted) == len(pending)
        again = await store.save(pending)
        assert len(again.conflicts) == len(pending)
    finally:
        await store.close()
