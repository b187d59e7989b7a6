"""The hostile cases at unit level, no services: the table is what it says it is, intake
gives each record the outcome its case promises, and the event of every message and
status update that must be stored carries it exactly.

These run in milliseconds; the end-to-end suite (test_hostile.py) proves the same
promise through real members, Redis, the database and the broker.
"""

from __future__ import annotations

import collections
import datetime as dt

import orjson
import pytest

from consumer import events, intake, limits
from consumer.records import InboundRecord, Invalid, Reason, Webhook
from consumer.settings import Settings
from tests.hostile.cases import (
    ANNOUNCED_STATUS,
    BIG_CONTACTS,
    BIG_MESSAGES,
    BIG_STATUSES,
    CASES,
    MARKERS,
    OVERSIZE_HEADER_BYTES,
    STATUS,
    STORED,
    Case,
    Record,
    loads_exact,
    messages_in,
    statuses_in,
)
from tests.hostile.harness import _conversation, difference
from tests.support.bodies import json_depth

pytestmark = pytest.mark.hostile

MAX_RECORD_BYTES = Settings().max_record_bytes
TOPIC = "whatsapp.webhooks"
OCCURRED = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

RECORDS = [(case, n) for case in CASES for n in range(len(case.records))]
RECORD_IDS = [f"{case.name} [{n}]" if len(case.records) > 1 else case.name for case, n in RECORDS]
KEPT = [
    c for c in CASES if c.expect in (STORED, ANNOUNCED_STATUS) and messages_in(c.records[0].value)
]
ANNOUNCED = [c for c in CASES if c.expect == ANNOUNCED_STATUS]


def _inbound(record: Record, offset: int = 7) -> InboundRecord:
    return InboundRecord(TOPIC, 1, offset, None, record.value, record.headers, 0)


def _decode(record: Record) -> Webhook | Invalid:
    try:
        return intake.decode(_inbound(record), max_bytes=MAX_RECORD_BYTES)
    except Exception as exc:  # noqa: BLE001 - the failure message names it
        pytest.fail(f"intake.decode raised {type(exc).__name__}: {str(exc)[:200]}")


def test_table_is_sound() -> None:
    """Case names are unique; no two cases (and no good webhook) share a message key; each
    declared depth is the body's real depth; the size cases sit on the right side of
    MAX_RECORD_BYTES; every dead-letter reason is one the product has."""
    names = collections.Counter(c.name for c in CASES)
    assert all(n == 1 for n in names.values()), [n for n, k in names.items() if k > 1]
    owners: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for case in CASES:
        for record in case.records:
            for m in messages_in(record.value):
                owners[m.key].add(case.name)
    shared = {k: v for k, v in owners.items() if len(v) > 1}
    assert not shared, f"cases share message keys: {shared}"
    assert not any(k[1].startswith("wamid.good.") for k in owners), "good traffic's wamids"
    for case in CASES:
        if case.depth is not None:
            got = [json_depth(r.value or b"") for r in case.records]
            assert got == [case.depth] * len(got), f"{case.name}: depth {got} != {case.depth}"
        if case.dead:
            assert case.expect in {str(r) for r in Reason}, case.expect
        assert case.copies >= 2, f"{case.name}: every case is sent at least twice"
    big = next(c for c in CASES if len(messages_in(c.records[0].value)) == BIG_MESSAGES)
    value = big.records[0].value or b""
    assert 240_000 < len(value) < MAX_RECORD_BYTES
    assert len(orjson.loads(value)["entry"][0]["changes"][0]["value"]["contacts"]) == BIG_CONTACTS
    oversize = next(c for c in CASES if c.expect == str(Reason.OVERSIZE)).records[0]
    assert len(oversize.value or b"") > MAX_RECORD_BYTES
    assert sum(len(v) for _, v in oversize.headers) >= OVERSIZE_HEADER_BYTES
    assert limits.MAX_JSON_DEPTH + 1 < 300, "the depth-300 cases must be too deep"


def test_status_cases_are_sound() -> None:
    """An ANNOUNCED_STATUS case holds statuses, all under a change of field "messages";
    no other kept case holds any; the statuses of one message are all in one case (its
    state is that case's to audit); the two 1,000-status bodies are there."""
    about: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for case in CASES:
        held = [s for r in case.records for s in statuses_in(r.value)]
        for s in held:
            about[s.message].add(case.name)
        if case.expect == ANNOUNCED_STATUS:
            assert held, f"{case.name}: an ANNOUNCED_STATUS case holds statuses"
            assert all(s.change_field == "messages" for s in held), case.name
        elif not case.dead:
            assert not held, f"{case.name}: statuses outside an ANNOUNCED_STATUS case"
    shared = {k: v for k, v in about.items() if len(v) > 1}
    assert not shared, f"cases share the messages their statuses are about: {shared}"
    counts = [len(statuses_in(c.records[0].value)) for c in ANNOUNCED]
    assert counts.count(BIG_STATUSES) == 2, "1,000 statuses of 1,000 messages, and one copied"


@pytest.mark.parametrize(("case", "index"), RECORDS, ids=RECORD_IDS)
def test_intake_decides_each_record(case: Case, index: int) -> None:
    """intake.decode gives each record its case's outcome without raising: the promised
    dead-letter reason (with a detail that quotes no personal data), or a webhook holding
    exactly the messages and status updates as sent (for `unstorable` cases too: intake
    accepts those, the database refuses them), or for a change of another field or
    value-level errors a webhook with neither, the change or the errors counted."""
    record = case.records[index]
    decoded = _decode(record)
    if case.dead and case.expect != str(Reason.UNSTORABLE):
        assert isinstance(decoded, Invalid), (
            f"case {case.name!r}: expected dead letter {case.expect!r}, got a webhook of "
            f"{len(decoded.messages)} message(s)"
        )
        assert decoded.reason == case.expect, (
            f"case {case.name!r}: expected {case.expect!r}, got {str(decoded.reason)!r} "
            f"({decoded.detail[:200]!r})"
        )
        if case.detail is not None:
            assert case.detail in decoded.detail, (
                f"case {case.name!r}: the detail {decoded.detail[:200]!r} does not name "
                f"{case.detail!r}"
            )
        leaked = [m for m in MARKERS if m in decoded.detail]
        assert not leaked, f"case {case.name!r}: the detail quotes personal data {leaked}"
        return
    assert isinstance(decoded, Webhook), (
        f"case {case.name!r}: expected {case.expect!r}, got dead letter "
        f"{str(decoded.reason)!r} ({decoded.detail[:200]!r})"
    )
    if case.expect == STATUS:
        assert not decoded.messages, f"case {case.name!r}: created messages"
        assert not decoded.statuses, f"case {case.name!r}: created status updates"
        counted = decoded.errors + decoded.ignored_changes
        assert counted >= 1, f"case {case.name!r}: neither errors nor changes were counted"
        return
    statuses = [(*s.key, s.timestamp, s.recipient, _exact(s.raw)) for s in decoded.statuses]
    want_statuses = [
        (*s.key, str(s.timestamp), s.recipient, s.raw) for s in statuses_in(record.value)
    ]
    assert len(statuses) == len(want_statuses), (
        f"case {case.name!r}: {len(want_statuses)} status(es) sent, {len(statuses)} decoded"
    )
    for got_status, want_status in zip(statuses, want_statuses, strict=True):
        assert got_status[:5] == want_status[:5], f"case {case.name!r}: {got_status[:5]}"
        d = difference(want_status[5], got_status[5], "raw")
        assert d is None, f"case {case.name!r}: {want_status[1][:40]!r}: {d}"
    expected = messages_in(record.value)
    got = [
        (m.key.phone_number_id, m.key.wamid, m.sender, m.type, m.timestamp, m.contact_name)
        for m in decoded.messages
    ]
    want = [(*e.key, e.sender, e.type, e.timestamp, e.contact_name) for e in expected]
    assert got == want, f"case {case.name!r}: expected messages {want[:3]}, got {got[:3]}"


@pytest.mark.parametrize("case", KEPT, ids=[c.name for c in KEPT])
def test_event_carries_each_message_exactly(case: Case) -> None:
    """The message_created event of every message a stored case holds encodes, fits a
    produce request, and carries the key, the sender, the contact's name and the content
    exactly as sent (a NUL, a bidi override, u64 and 1e308 and -0.0, 1e-400 and integers
    beyond 64 bits, depth MAX)."""
    for record in case.records:
        decoded = _decode(record)
        assert isinstance(decoded, Webhook), f"case {case.name!r}: {decoded}"
        for m, want in zip(decoded.messages, messages_in(record.value), strict=True):
            try:
                event = events.build(m, topic="out", occurred_at=OCCURRED)
            except Exception as exc:  # noqa: BLE001 - the failure message names it
                pytest.fail(f"case {case.name!r}: events.build raised {exc!r:.200}")
            assert len(event.payload) + len(event.key) < limits.MAX_REQUEST_BYTES
            body = loads_exact(event.payload)
            msg = body["message"]
            assert (body["phone_number_id"], msg["source_id"]) == want.key, case.name
            assert (msg["from"], msg["type"], msg["timestamp"]) == (
                want.sender,
                want.type,
                want.timestamp,
            ), case.name
            assert body["contact"]["name"] == want.contact_name, (
                f"case {case.name!r}: contact.name {body['contact']['name']!r}, "
                f"expected {want.contact_name!r}"
            )
            content = {
                k: v
                for k, v in msg.items()
                if k not in ("id", "source_id", "from", "type", "timestamp")
            }
            assert difference(want.content, content, "message") is None, (
                f"case {case.name!r}: {difference(want.content, content, 'message')}"
            )


def _exact(raw: object) -> object:
    """What intake holds, as the harness reads it back: numbers as written."""
    return loads_exact(orjson.dumps(raw))


@pytest.mark.parametrize("case", ANNOUNCED, ids=[c.name for c in ANNOUNCED])
def test_status_event_carries_each_status_exactly(case: Case) -> None:
    """The message_status_changed event of every status update an ANNOUNCED_STATUS case
    holds encodes, fits a produce request, is keyed by the recipient's conversation, and
    carries the status object as sent (its timestamp as a string): huge errors and
    pricing, a NUL, numbers beyond 64 bits, depth MAX, 4-byte characters."""
    for record in case.records:
        decoded = _decode(record)
        assert isinstance(decoded, Webhook), f"case {case.name!r}: {decoded}"
        for u, want in zip(decoded.statuses, statuses_in(record.value), strict=True):
            try:
                event = events.build_status(u, topic="out", occurred_at=OCCURRED)
            except Exception as exc:  # noqa: BLE001 - the failure message names it
                pytest.fail(f"case {case.name!r}: events.build_status raised {exc!r:.200}")
            assert len(event.payload) + len(event.key) < limits.MAX_REQUEST_BYTES
            assert event.key == _conversation(want.key[0], want.recipient), (
                case.name,
                event.key[:80],
            )
            body = loads_exact(event.payload)
            assert body["event"] == "message_status_changed", case.name
            assert body["event_id"] == u.key.event_id == event.event_id, case.name
            assert body["phone_number_id"] == want.key[0], case.name
            d = difference(want.event_status, body["status"], "status")
            assert d is None, f"case {case.name!r}: {d}"
