"""The dead-letter format (consumer.deadletters) and how Publisher.dead_letter sends it.

Building and reading are checked together: what the publisher writes for a record is
what `dlq list` / `dlq replay` read back, whatever headers, key or value the record had.
Sizes are checked with the estimate aiokafka's producer applies to max_request_size.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from consumer import deadletters as dl
from consumer.errors import BrokerError
from consumer.limits import MAX_REQUEST_BYTES
from consumer.publish import Publisher
from consumer.records import InboundRecord, Invalid, Reason

SIGNATURE = ("x-hub-signature-256", b"sha256=0123abcd")
FORGED = (
    ("dlq.reason", b"empty"),
    ("dlq.source.offset", b"999999"),
    ("dlq.replayed_from", b"forged:0:1"),
    ("dlq.format", b"1"),
    ("dlq.inbound.x", b"already prefixed"),
)
BIG = 1_900_000


def _invalid(
    *,
    key: bytes | None = b"k",
    value: bytes | None = b"not json",
    headers: tuple[tuple[str, Any], ...] = (SIGNATURE,),
    reason: Reason = Reason.NOT_JSON,
    detail: str = "Expecting value: line 1",
    topic: str = "webhooks",
) -> Invalid:
    return Invalid(
        InboundRecord(topic, 3, 455, key, value, headers, 1_700_000_000_000), reason, detail
    )


def _build(invalid: Invalid, max_request_bytes: int = MAX_REQUEST_BYTES) -> dl.Outgoing:
    return dl.build(
        invalid,
        max_value_bytes=dl.max_value_bytes(max_request_bytes),
        failed_at_ms=1_800_000_000_000,
    )


def _wire_size(letter: dl.Outgoing) -> int:
    """What aiokafka's producer compares with max_request_size."""
    return int(
        DefaultRecordBatchBuilder.estimate_size_in_bytes(letter.key, letter.value, letter.headers)
    )


# --- building and reading -------------------------------------------------------------


def test_our_headers_come_first_and_the_format_leads() -> None:
    """dlq.format first, then reason, detail, source, failure time; then the inbound
    headers in their order."""
    letter = _build(_invalid(headers=(SIGNATURE, ("t", b"1"))))
    assert [name for name, _ in letter.headers] == [
        "dlq.format",
        "dlq.reason",
        "dlq.detail",
        "dlq.source.topic",
        "dlq.source.partition",
        "dlq.source.offset",
        "dlq.source.timestamp_ms",
        "dlq.failed_at_ms",
        "x-hub-signature-256",
        "t",
    ]
    assert (letter.key, letter.value) == (b"k", b"not json")


def test_a_dead_letter_reads_back() -> None:
    """read() gives back what build() was given: reason, detail, source, failure time,
    and the inbound headers exactly (a null header value stays null)."""
    headers = (SIGNATURE, ("null", None), ("t", b"\x00\xff"))
    parsed = dl.read(_build(_invalid(headers=headers)).headers)
    assert parsed.version == 2
    assert parsed.reason == "not_json"
    assert parsed.detail == "Expecting value: line 1"
    assert parsed.source_fields == ("webhooks", "3", "455")
    assert (parsed.source_partition, parsed.source_offset) == (3, 455)
    assert parsed.failed_at_ms == 1_800_000_000_000
    assert parsed.originals == headers
    assert parsed.complete
    assert parsed.replayed_from is None


def test_forged_dlq_headers_are_never_ours() -> None:
    """Inbound dlq.* headers are carried renamed (dlq.replayed_from as it is, being never
    ours): every reader (ours, first match, last match, a dict) sees our reason and
    coordinates, and the inbound headers come back exactly."""
    letter = _build(_invalid(headers=(*FORGED, SIGNATURE)))
    names = [name for name, _ in letter.headers]
    assert names[8:] == [
        "dlq.inbound.dlq.reason",
        "dlq.inbound.dlq.source.offset",
        "dlq.replayed_from",
        "dlq.inbound.dlq.format",
        "dlq.inbound.dlq.inbound.x",
        "x-hub-signature-256",
    ]
    as_dict = dict(letter.headers)
    assert as_dict["dlq.reason"] == b"not_json"
    assert as_dict["dlq.source.offset"] == b"455"
    assert as_dict["dlq.format"] == b"2"
    assert names.count("dlq.reason") == 1
    parsed = dl.read(letter.headers)
    assert parsed.reason == "not_json"
    assert parsed.source_offset == 455
    assert parsed.originals == (*FORGED, SIGNATURE)
    assert parsed.replayed_from == "forged:0:1", "what the record carried, shown as such"


def test_every_reason_builds_and_reads_back() -> None:
    """Each Reason (the new ones too) is written and read as its plain name."""
    for reason in Reason:
        parsed = dl.read(_build(_invalid(reason=reason)).headers)
        assert parsed.reason == str(reason)


def test_detail_is_cut_between_characters() -> None:
    """dlq.detail holds at most 1024 bytes of valid UTF-8, never a partial character."""
    letter = _build(_invalid(detail="é" * 5000))
    detail = dict(letter.headers)["dlq.detail"]
    assert detail is not None
    assert len(detail) == 1024
    assert detail.decode("utf-8") == "é" * 512
    letter = _build(_invalid(detail="x" + "€" * 5000))
    detail = dict(letter.headers)["dlq.detail"]
    assert detail is not None
    assert len(detail) == 1024
    assert detail.decode("utf-8") == "x" + "€" * 341


def test_a_huge_key_header_and_value_still_fit_one_request() -> None:
    """A record with a 1.9 MB key, a 1.9 MB header and a 1.9 MB value: the dead letter fits
    MAX_REQUEST_BYTES, says what was cut, and keeps the headers that fit."""
    invalid = _invalid(
        key=b"K" * BIG,
        value=b"V" * BIG,
        headers=(("big", b"H" * BIG), SIGNATURE),
    )
    letter = _build(invalid)
    assert _wire_size(letter) <= MAX_REQUEST_BYTES
    assert letter.key == b"K" * dl.KEY_MAX_BYTES
    assert letter.value == b"V" * dl.max_value_bytes(MAX_REQUEST_BYTES)
    parsed = dl.read(letter.headers)
    assert parsed.original_key_size == BIG
    assert parsed.original_size == BIG
    assert parsed.dropped_headers == 1
    assert parsed.originals == (SIGNATURE,)
    assert not parsed.complete


def test_inbound_headers_are_bounded_one_by_one_and_together() -> None:
    """Each inbound header at most HEADER_MAX_BYTES, all at most HEADERS_MAX_BYTES (name
    and value counted); what does not fit is dropped and counted, the rest keep order."""
    many = tuple((f"h{i:02d}", b"x" * 1000) for i in range(40))
    letter = _build(_invalid(headers=(("too-big", b"y" * dl.HEADER_MAX_BYTES), *many, SIGNATURE)))
    parsed = dl.read(letter.headers)
    kept = parsed.originals
    assert sum(len(k) + len(v or b"") for k, v in kept) <= dl.HEADERS_MAX_BYTES
    assert kept[:16] == many[:16]
    assert kept[-1] == SIGNATURE, "a small header after the budget ran out still fits"
    assert parsed.dropped_headers == 1 + 40 + 1 - len(kept)


@pytest.mark.parametrize(
    "max_request_bytes", [160 * 1024, MAX_REQUEST_BYTES, 2 * MAX_REQUEST_BYTES]
)
def test_worst_case_fits_any_request_limit(max_request_bytes: int) -> None:
    """Everything at its bound at once (a 249-character topic, a long detail, full key,
    full header budget, cut value) still fits the request limit the letter was built for."""
    headers = tuple((f"dlq.{i:03d}" + "n" * 100, b"v" * 900) for i in range(40))
    invalid = _invalid(
        key=b"k" * BIG,
        value=b"v" * (3 * max_request_bytes),
        headers=headers,
        detail="€" * 10_000,
        topic="t" * 249,
    )
    assert _wire_size(_build(invalid, max_request_bytes)) <= max_request_bytes


def test_minimal_form_holds_our_headers_only() -> None:
    """No key, value or inbound header; what was left out and how big it was."""
    invalid = _invalid(key=b"K" * BIG, value=b"V" * BIG, headers=(("big", b"H" * BIG), SIGNATURE))
    letter = dl.minimal(invalid, failed_at_ms=1)
    assert (letter.key, letter.value) == (None, b"")
    assert _wire_size(letter) < 2048
    parsed = dl.read(letter.headers)
    assert parsed.reason == "not_json"
    assert parsed.source_offset == 455
    assert parsed.omitted == ("key", "value", "headers")
    assert (parsed.original_key_size, parsed.original_size, parsed.dropped_headers) == (BIG, BIG, 2)
    assert parsed.originals == ()
    assert not parsed.complete


def test_minimal_form_names_only_what_was_there() -> None:
    """A record without key or headers: only the value is said to be left out."""
    parsed = dl.read(dl.minimal(_invalid(key=None, headers=()), failed_at_ms=1).headers)
    assert parsed.omitted == ("value",)
    assert parsed.original_key_size is None
    assert parsed.dropped_headers == 0


# --- the previous format ----------------------------------------------------------------


def test_format1_with_forged_headers_after_ours() -> None:
    """A dead letter of the previous format (ours first, inbound headers raw after): ours
    are the leading run, so a forged dlq.reason after them is an inbound header."""
    headers = (
        ("dlq.reason", b"not_json"),
        ("dlq.detail", b"d"),
        ("dlq.source.topic", b"webhooks"),
        ("dlq.source.partition", b"2"),
        ("dlq.source.offset", b"7"),
        ("dlq.source.timestamp_ms", b"1"),
        ("dlq.failed_at_ms", b"2"),
        ("dlq.original_size", b"300000"),
        SIGNATURE,
        ("dlq.reason", b"empty"),
        ("dlq.source.offset", b"999"),
        ("dlq.replayed_from", b"dlq:0:3"),
    )
    parsed = dl.read(headers)
    assert parsed.version == 1
    assert (parsed.reason, parsed.source_offset, parsed.original_size) == ("not_json", 7, 300000)
    assert parsed.originals == headers[8:]
    assert parsed.replayed_from == "dlq:0:3"


def test_format1_forged_header_right_after_ours() -> None:
    """A forged dlq.reason directly after ours repeats a name: it ends our run."""
    headers = (("dlq.reason", b"not_json"), ("dlq.failed_at_ms", b"5"), ("dlq.reason", b"x"))
    parsed = dl.read(headers)
    assert parsed.reason == "not_json"
    assert parsed.originals == (("dlq.reason", b"x"),)


def test_hand_written_and_empty_dead_letters() -> None:
    """A record someone wrote with a few of our names, or none at all, still reads."""
    parsed = dl.read((("dlq.reason", b"not_json"), ("dlq.source.offset", b"21")))
    assert (parsed.reason, parsed.source_offset, parsed.originals) == ("not_json", 21, ())
    parsed = dl.read((("x", b"1"),))
    assert (parsed.reason, parsed.originals) == (None, (("x", b"1"),))
    assert dl.read(()).complete


def test_an_unreadable_cut_marker_still_counts_as_cut() -> None:
    """dlq.original_size that is not a number: the letter is not complete."""
    assert not dl.read((("dlq.format", b"2"), ("dlq.original_size", b"?"))).complete
    assert not dl.read((("dlq.format", b"2"), ("dlq.dropped_headers", b"?"))).complete


# --- Publisher.dead_letter ------------------------------------------------------------


class _Producer:
    """Stands in for AIOKafkaProducer: refuses records above `limit` the way aiokafka's
    send() does, or fails their delivery the way the broker does (`broker_error`); like
    aiokafka, refuses a record with neither key nor value."""

    def __init__(
        self,
        *,
        limit: int = MAX_REQUEST_BYTES,
        broker_error: type[Exception] | None = None,
        send_error: Exception | None = None,
        fail_all: Exception | None = None,
    ) -> None:
        self.limit = limit
        self.broker_error = broker_error
        self.send_error = send_error
        self.fail_all = fail_all
        self.sent: list[dict[str, Any]] = []

    async def send(self, topic: str, **record: Any) -> asyncio.Future[Any]:
        if self.send_error is not None:
            raise self.send_error
        # aiokafka's own check: a record without key and value is refused (AssertionError).
        assert record["key"] is not None or record["value"] is not None
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
            record["key"], record["value"], record["headers"]
        )
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if size > self.limit and self.broker_error is None:
            raise MessageSizeTooLargeError(f"The message is {size} bytes")
        if self.fail_all is not None:
            done.set_exception(self.fail_all)
        elif size > self.limit:
            assert self.broker_error is not None
            done.set_exception(self.broker_error())
        else:
            self.sent.append({"topic": topic, **record})
            done.set_result(None)
        return done


def _dead_letter(producer: _Producer, invalid: list[Invalid]) -> None:
    publisher = Publisher(producer, dlq_topic="dlq", max_request_bytes=MAX_REQUEST_BYTES)
    asyncio.run(publisher.dead_letter(invalid))


def test_a_letter_the_producer_refuses_goes_minimal() -> None:
    """send() raising MessageSizeTooLargeError: that letter is sent again in its minimal
    form; the others go as they are."""
    producer = _Producer(limit=64 * 1024)
    small = _invalid(value=b"small")
    big = _invalid(value=b"V" * 500_000)
    _dead_letter(producer, [small, big])
    assert [s["value"] for s in producer.sent] == [b"small", b""]
    parsed = dl.read(producer.sent[1]["headers"])
    assert parsed.omitted == ("key", "value", "headers")
    assert parsed.original_size == 500_000
    assert parsed.reason == "not_json"


@pytest.mark.parametrize("error", [MessageSizeTooLargeError, RecordListTooLargeError])
def test_a_letter_the_broker_refuses_goes_minimal(error: type[Exception]) -> None:
    """The broker answering MESSAGE_TOO_LARGE or RECORD_LIST_TOO_LARGE: minimal form."""
    producer = _Producer(limit=64 * 1024, broker_error=error)
    _dead_letter(producer, [_invalid(value=b"V" * 500_000)])
    (sent,) = producer.sent
    assert sent["value"] == b""
    assert dl.read(sent["headers"]).omitted == ("key", "value", "headers")


@pytest.mark.parametrize(
    "producer",
    [
        _Producer(fail_all=KafkaTimeoutError()),
        _Producer(send_error=KafkaConnectionError("down")),
        _Producer(limit=10, broker_error=MessageSizeTooLargeError),
    ],
    ids=["delivery-timeout", "send-fails", "minimal-refused-too"],
)
def test_other_failures_stay_broker_errors(producer: _Producer) -> None:
    """Anything but "too large", or a minimal form refused too: BrokerError (the caller
    keeps the records unacknowledged and retries)."""
    with pytest.raises(BrokerError):
        _dead_letter(producer, [_invalid()])
