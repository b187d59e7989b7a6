"""The work one record may cost is linear in its size (issue 24, item 3): intake refuses
(oversize) a record whose rows and events would hold more than MAX_OUTPUT_FACTOR times
its size, as when one contact's large profile is copied into thousands of messages; no
real webhook comes near the bound; and the memory decoding a record and building its
events takes is a small multiple of the record, measured with tracemalloc."""

from __future__ import annotations

import datetime as dt
import gc
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest

from consumer import engine, events, intake, limits, store
from consumer.ports import PendingMessage
from consumer.records import InboundRecord, Invalid, Reason, Webhook

ROOT = Path(__file__).parents[2]
SAMPLES = sorted((ROOT / "tests" / "fixtures" / "webhooks").glob("*.json")) + sorted(
    (ROOT / "consumer" / "samples").glob("*.json")
)
MAX = 256 * 1024  # MAX_RECORD_BYTES's default
TOPIC = "whatsapp.webhooks"
OCCURRED = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
NAME_MARK = "Qx7Sheena"
# What decoding a record and building its events may hold at its peak, in record sizes,
# as tracemalloc counts it: the Python objects of thousands of tiny values, and the
# buffers orjson reserves while encoding (it reserves far more than it writes; the pages
# it does not write are never resident, so the process's RSS grows less).
PEAK_FACTOR = 48


def _record(value: bytes) -> InboundRecord:
    return InboundRecord(TOPIC, 0, 0, None, value, (), 0)


def _tiny(n: int, sender: str = "1") -> dict[str, Any]:
    return {"from": sender, "id": f"w{n}", "timestamp": "1", "type": "t"}


def _body(msgs: list[dict[str, Any]], contacts: list[dict[str, Any]]) -> dict[str, Any]:
    value = {
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "1"},
        "contacts": contacts,
        "messages": msgs,
    }
    return {"entry": [{"changes": [{"field": "messages", "value": value}]}]}


def shared_name(size: int, messages: int, *, lone: bool = True) -> bytes:
    """The probe's shape: `messages` tiny messages and one contact whose name fills the
    record to `size` bytes (the lone contact, or matched to every sender by its wa_id)."""
    contact: dict[str, Any] = {"profile": {"name": ""}}
    if not lone:
        contact["wa_id"] = "1"
    contacts = [contact] if lone else [contact, {"wa_id": "2", "profile": {"name": "x"}}]
    empty = orjson.dumps(_body([_tiny(i) for i in range(messages)], contacts))
    contact["profile"]["name"] = NAME_MARK + "N" * (size - len(empty) - len(NAME_MARK))
    value = orjson.dumps(_body([_tiny(i) for i in range(messages)], contacts))
    assert len(value) == size
    return value


def tiny_messages(size: int) -> bytes:
    """As many of the smallest messages as fit `size` bytes, one short contact."""
    per = len(orjson.dumps(_tiny(10_000))) + 1
    contacts = [{"profile": {"name": "n"}}]
    head = len(orjson.dumps(_body([], contacts)))
    value = orjson.dumps(_body([_tiny(10_000 + i) for i in range((size - head) // per)], contacts))
    assert size - per < len(value) <= size
    return value


def big_record() -> bytes:
    """1,800 messages of three senders and 35,000 contacts, about 250 KB."""
    senders = ["16505551234", "16505550001", "16505550002"]
    msgs = [_tiny(i, senders[i % 3]) for i in range(1800)]
    contacts: list[dict[str, Any]] = [{} for _ in range(35_000 - 3)]
    contacts += [{"profile": {"name": f"{NAME_MARK} {s}"}, "wa_id": s} for s in senders]
    return orjson.dumps(_body(msgs, contacts))


def _decoded(value: bytes) -> Webhook | Invalid:
    return intake.decode(_record(value), max_bytes=MAX)


def output_bytes(hook: Webhook) -> int:
    """What the rows and events of a webhook's messages really hold: each event's key and
    payload, each row's values as the database is sent them (JSON columns as text)."""
    total = 0
    for m in hook.messages:
        event = events.build(m, topic="whatsapp.message_created", occurred_at=OCCURRED)
        total += len(event.key) + len(event.payload)
        row = store._message_row(PendingMessage(m, event), "0" * 36)
        for name, value in row.items():
            if name in ("raw", "contact_profile") and value is not None:
                total += len(engine.json_dumps(value).encode())
            elif isinstance(value, str):
                total += len(value.encode())
            elif value is not None:
                total += 8
    return total


def test_the_probe_is_refused_as_oversize() -> None:
    """Two records of 190 KB, one contact with a large name and thousands of tiny
    messages, made 301 MB of events: such a record is dead-lettered, the detail saying
    why (with the factor and the sizes), quoting nothing."""
    for value in (shared_name(190_000, 2000), shared_name(190_000, 2000, lone=False)):
        refused = _decoded(value)
        assert isinstance(refused, Invalid), "the probe's record was accepted"
        assert refused.reason is Reason.OVERSIZE
        assert f"more than {limits.MAX_OUTPUT_FACTOR} times" in refused.detail
        assert "2000 messages" in refused.detail
        assert "190000 bytes" in refused.detail
        assert NAME_MARK not in refused.detail


def test_a_few_messages_may_share_any_name() -> None:
    """Up to about MAX_OUTPUT_FACTOR / 3 messages may share a contact as large as the
    record: its copies stay within the bound. One message more than the bound allows is
    refused."""
    assert isinstance(_decoded(shared_name(MAX, 9)), Webhook)
    assert isinstance(_decoded(shared_name(MAX, 11)), Invalid)


def test_the_most_messages_a_record_holds_are_accepted() -> None:
    """Thousands of the smallest messages, nothing of size shared: linear, accepted."""
    hook = _decoded(tiny_messages(MAX))
    assert isinstance(hook, Webhook), hook
    assert len(hook.messages) > 4800


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_webhooks_are_far_from_the_bound(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every sample is accepted under a bound four times tighter than the real one (they
    estimate 3.9 to 4.5 times their size, most of it the fixed part of a message's row
    and event)."""
    monkeypatch.setattr(limits, "MAX_OUTPUT_FACTOR", limits.MAX_OUTPUT_FACTOR // 4)
    assert isinstance(_decoded(path.read_bytes()), Webhook)


def test_the_bound_is_checked_for_a_single_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check covers every record with messages (here: a real one, under a bound
    that is too tight for anything)."""
    monkeypatch.setattr(limits, "MAX_OUTPUT_FACTOR", 3)
    refused = _decoded((ROOT / "tests" / "fixtures" / "webhooks" / "text.json").read_bytes())
    assert isinstance(refused, Invalid)
    assert refused.reason is Reason.OVERSIZE


@pytest.mark.parametrize(
    "value",
    [
        *[p.read_bytes() for p in SAMPLES],
        tiny_messages(MAX),
        shared_name(MAX, 9),
        shared_name(MAX, 9, lone=False),
        shared_name(20_000, 9),
    ],
    ids=[p.name for p in SAMPLES] + ["tiny", "shared-lone", "shared-wa_id", "shared-small"],
)
def test_what_is_accepted_makes_at_most_the_bound(value: bytes) -> None:
    """The estimate holds: the rows and events of an accepted record really hold at most
    MAX_OUTPUT_FACTOR times its size."""
    hook = _decoded(value)
    assert isinstance(hook, Webhook), hook
    assert output_bytes(hook) <= limits.MAX_OUTPUT_FACTOR * len(value)


def _peak(value: bytes) -> tuple[int, Webhook | Invalid]:
    """The most memory decoding `value` and building the events of its messages held at
    once (what a member holds of one record until its batch is published)."""
    record = _record(value)
    gc.collect()
    tracemalloc.start()
    try:
        decoded = intake.decode(record, max_bytes=MAX)
        built = []
        if isinstance(decoded, Webhook):
            built = [events.build(m, topic="out", occurred_at=OCCURRED) for m in decoded.messages]
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del built
    return peak, decoded


@pytest.mark.parametrize(
    ("shape", "build", "accepted"),
    [
        ("probe: 190 KB, a contact name, 2000 messages", lambda: shared_name(190_000, 2000), False),
        ("the same at MAX_RECORD_BYTES, 3000 messages", lambda: shared_name(MAX, 3000), False),
        ("9 messages sharing a contact of the record's size", lambda: shared_name(MAX, 9), True),
        ("the most tiny messages a record holds", lambda: tiny_messages(MAX), True),
        ("1,800 messages and 35,000 contacts (the hostile suite's)", big_record, True),
    ],
    ids=["probe", "probe-max", "shared-within", "tiny", "big"],
)
def test_peak_memory_of_a_worst_record_is_a_small_multiple_of_its_size(
    shape: str, build: Any, accepted: bool
) -> None:
    """Decoding and building the events of a crafted worst case takes at most
    PEAK_FACTOR times the record's size. (Before the bound the probe's record took
    2 GB under tracemalloc, 10,900 times its size; 351 MB of RSS.)"""
    value = build()
    peak, decoded = _peak(value)
    assert isinstance(decoded, Webhook) == accepted, shape
    assert peak <= PEAK_FACTOR * len(value), (
        f"{shape}: {peak / 1e6:.1f} MB, {peak / len(value):.0f} times the record"
    )
