"""X-Hub-Signature-256: with WHATSAPP_APP_SECRET set, intake.decode accepts a record only
when the header carries the HMAC-SHA256 of its raw value; the Pipeline passes the secret."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from consumer import intake
from consumer.metrics import Metrics
from consumer.outbox import MarkQueue
from consumer.pipeline import Pipeline
from consumer.records import InboundRecord, Invalid, Reason, Webhook
from consumer.settings import Settings
from consumer.testing import FakeLeases, FakePublisher, FakeStore, key, message, webhook
from consumer.wiring import pipeline_config

SECRET = "0123456789abcdef-app-secret"  # noqa: S105 - a made-up secret for the tests
KEY = SECRET.encode()
MAX = 256 * 1024
BODY = json.dumps(webhook([message("wamid.SIGNED")])).encode()


def _hex(value: bytes, secret: bytes = KEY) -> str:
    """The digest computed here, independently of intake.sign."""
    return hmac.new(secret, value, hashlib.sha256).hexdigest()


def _record(
    value: bytes | None = BODY, headers: tuple[tuple[str, bytes], ...] = (), offset: int = 0
) -> InboundRecord:
    return InboundRecord("whatsapp.webhooks", 0, offset, None, value, headers, 0)


def _signed(value: bytes = BODY, name: str = "x-hub-signature-256") -> InboundRecord:
    return _record(value, ((name, f"sha256={_hex(value)}".encode()),))


def _decode(record: InboundRecord, app_secret: bytes | None = KEY) -> Webhook | Invalid:
    return intake.decode(record, max_bytes=MAX, app_secret=app_secret)


def _invalid(record: InboundRecord) -> Invalid:
    decoded = _decode(record)
    assert isinstance(decoded, Invalid), decoded
    assert KEY.decode() not in decoded.detail
    assert _hex(record.value or b"") not in decoded.detail
    return decoded


# -- accepted ----------------------------------------------------------------------------


def test_valid_signature_is_accepted() -> None:
    """A record signed with the app secret over its exact bytes decodes to its webhook."""
    hook = _decode(_signed())
    assert isinstance(hook, Webhook)
    assert [m.key for m in hook.messages] == [key("wamid.SIGNED")]


@pytest.mark.parametrize("name", ["X-Hub-Signature-256", "X-HUB-SIGNATURE-256"])
def test_header_name_is_matched_case_insensitively(name: str) -> None:
    """The header is found whatever the case of its name (HTTP names are case-blind)."""
    assert isinstance(_decode(_signed(name=name)), Webhook)


def test_uppercase_hex_digest_is_accepted() -> None:
    """The digest's hex digits may be upper case: the bytes they spell are compared."""
    record = _record(BODY, (("x-hub-signature-256", f"sha256={_hex(BODY).upper()}".encode()),))
    assert isinstance(_decode(record), Webhook)


def test_other_headers_are_ignored() -> None:
    """Unrelated headers next to the signature change nothing."""
    record = _record(
        BODY,
        (
            ("x-hub-signature", b"sha1=0000"),
            ("X-Hub-Signature-256", f"sha256={_hex(BODY)}".encode()),
            ("traceparent", b"00-abc"),
        ),
    )
    assert isinstance(_decode(record), Webhook)


def test_sign_matches_hmac_sha256() -> None:
    """intake.sign (used by `produce`) gives Meta's `sha256=<hex>` value."""
    assert intake.sign(KEY, BODY) == f"sha256={_hex(BODY)}".encode()
    assert isinstance(
        _decode(_record(BODY, (("x-hub-signature-256", intake.sign(KEY, BODY)),))), Webhook
    )


def test_signature_checked_before_parsing() -> None:
    """A correctly signed record that is not JSON fails as not_json (the check passed on
    the raw bytes); an unsigned one fails as signature_missing before any parsing."""
    value = b"{not json"
    signed = _decode(_signed(value))
    assert isinstance(signed, Invalid)
    assert signed.reason is Reason.NOT_JSON
    assert _invalid(_record(value)).reason is Reason.SIGNATURE_MISSING


# -- rejected ----------------------------------------------------------------------------


def test_missing_header_is_signature_missing() -> None:
    """No X-Hub-Signature-256 header: dead-lettered as signature_missing."""
    invalid = _invalid(_record(BODY, (("x-hub-signature", b"sha1=abc"),)))
    assert invalid.reason is Reason.SIGNATURE_MISSING
    assert "X-Hub-Signature-256" in invalid.detail


def _with_header(value: bytes) -> InboundRecord:
    return _record(BODY, (("x-hub-signature-256", value),))


@pytest.mark.parametrize(
    ("header", "says"),
    [
        (f"sha256={_hex(BODY, b'another-secret')}".encode(), "does not match"),
        (f"sha256={'0' * 64}".encode(), "does not match"),
        (f"sha1={_hex(BODY)}".encode(), "sha256="),
        (f"SHA256={_hex(BODY)}".encode(), "sha256="),
        (_hex(BODY).encode(), "sha256="),
        (b"", "sha256="),
        (f"sha256={_hex(BODY)[:-2]}zz".encode(), "not hexadecimal"),
        (f"sha256={_hex(BODY)[:-2]}".encode() + b"\xe9\xe9", "not hexadecimal"),
        (f"sha256={_hex(BODY)[:62]} \t".encode(), "62 characters"),
        (f"sha256={_hex(BODY)[:-1]}".encode(), "63 characters"),
        (f"sha256={_hex(BODY)}00".encode(), "66 characters"),
        (b"sha256=", "0 characters"),
        (f"sha256={hmac.new(KEY, BODY, hashlib.sha1).hexdigest()}".encode(), "40 characters"),
    ],
    ids=[
        "other-secret",
        "zeros",
        "sha1-prefix",
        "uppercase-prefix",
        "no-prefix",
        "empty",
        "non-hex",
        "non-ascii",
        "short-padded",
        "short",
        "long",
        "no-digest",
        "sha1-digest",
    ],
)
def test_malformed_or_wrong_signature_is_signature_invalid(header: bytes, says: str) -> None:
    """A wrong digest, a wrong prefix, non-hex digits or a wrong length: signature_invalid,
    with a detail saying which."""
    invalid = _invalid(_with_header(header))
    assert invalid.reason is Reason.SIGNATURE_INVALID
    assert says in invalid.detail


def test_signature_over_different_bytes_is_rejected() -> None:
    """A signature Meta made for another body (or before a byte changed) does not pass."""
    other = json.dumps(webhook([message("wamid.OTHER")])).encode()
    record = _record(BODY, (("x-hub-signature-256", f"sha256={_hex(other)}".encode()),))
    assert _invalid(record).reason is Reason.SIGNATURE_INVALID
    reformatted = json.dumps(json.loads(BODY), indent=1).encode()  # same JSON, other bytes
    record = _record(reformatted, (("x-hub-signature-256", f"sha256={_hex(BODY)}".encode()),))
    assert _invalid(record).reason is Reason.SIGNATURE_INVALID


def test_several_signature_headers_are_rejected() -> None:
    """Two signature headers (one of them right) are ambiguous: signature_invalid."""
    good = ("x-hub-signature-256", f"sha256={_hex(BODY)}".encode())
    bad = ("X-Hub-Signature-256", f"sha256={'0' * 64}".encode())
    invalid = _invalid(_record(BODY, (bad, good)))
    assert invalid.reason is Reason.SIGNATURE_INVALID
    assert "2 X-Hub-Signature-256 headers" in invalid.detail


@pytest.mark.parametrize("value", [None, b""])
def test_empty_value_needs_a_signature_too(value: bytes | None) -> None:
    """A record without a value is checked like any other: unsigned is signature_missing;
    signed (over no bytes) it goes on to be dead-lettered as empty."""
    assert _invalid(_record(value)).reason is Reason.SIGNATURE_MISSING
    signed = _record(value, (("x-hub-signature-256", f"sha256={_hex(b'')}".encode()),))
    decoded = _decode(signed)
    assert isinstance(decoded, Invalid)
    assert decoded.reason is Reason.EMPTY


def test_detail_never_holds_the_secret_or_expected_digest() -> None:
    """No rejection's detail (or its Invalid's repr) carries the secret or the digest that
    would have passed."""
    cases = [
        _record(BODY),
        _with_header(b"sha256=" + b"0" * 64),
        _with_header(b"sha256=xyz"),
        _with_header(b"md5=" + KEY),
    ]
    for record in cases:
        invalid = _invalid(record)
        for leaked in (SECRET, _hex(BODY), _hex(BODY)[:16]):
            assert leaked not in invalid.detail
            assert leaked not in repr(invalid.log_context())


# -- no secret configured ----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        (),
        (("x-hub-signature-256", b"sha256=abc"),),
        (("X-Hub-Signature-256", b"garbage"),),
    ],
    ids=["none", "malformed", "garbage"],
)
@pytest.mark.parametrize("app_secret", [None, b""])
def test_without_secret_the_header_is_ignored(
    headers: tuple[tuple[str, bytes], ...], app_secret: bytes | None
) -> None:
    """With no app secret configured nothing is checked: any header, or none, decodes."""
    decoded = _decode(_record(BODY, headers), app_secret=app_secret)
    assert isinstance(decoded, Webhook)
    assert isinstance(intake.decode(_record(BODY, headers), max_bytes=MAX), Webhook)


# -- the pipeline passes the secret ------------------------------------------------------


def _pipeline(settings: Settings, publisher: FakePublisher, store: FakeStore) -> Pipeline:
    return Pipeline(
        pipeline_config(settings),
        FakeLeases(),
        store,
        publisher,
        worker_id="w1",
        metrics=Metrics(),
        marks=MarkQueue(store),
    )


def _body(wamid: str) -> bytes:
    return json.dumps(webhook([message(wamid)])).encode()


async def test_pipeline_with_secret_dead_letters_unsigned_and_wrongly_signed() -> None:
    """Pipeline with WHATSAPP_APP_SECRET: the signed record is stored and announced, the
    unsigned and the wrongly signed ones are dead-lettered with their reasons."""
    publisher, store = FakePublisher(), FakeStore()
    pipeline = _pipeline(Settings(app_secret=SECRET), publisher, store)
    good, unsigned, wrong = _body("wamid.GOOD"), _body("wamid.UNSIGNED"), _body("wamid.WRONG")
    records = [
        _record(good, (("X-Hub-Signature-256", f"sha256={_hex(good)}".encode()),), offset=0),
        _record(unsigned, offset=1),
        _record(wrong, (("x-hub-signature-256", f"sha256={_hex(good)}".encode()),), offset=2),
    ]
    report = await pipeline.process(records)

    assert set(store.rows) == {key("wamid.GOOD")}
    assert [e.event_id for e in publisher.published] == [key("wamid.GOOD").event_id]
    assert [(i.record.offset, i.reason) for i in publisher.dead_letters] == [
        (1, Reason.SIGNATURE_MISSING),
        (2, Reason.SIGNATURE_INVALID),
    ]
    assert sorted(r.offset for r in report.durable) == [0, 1, 2]
    assert report.dead_lettered == 2


async def test_pipeline_without_secret_checks_nothing() -> None:
    """Pipeline without a secret (the default): unsigned records are stored as before."""
    publisher, store = FakePublisher(), FakeStore()
    pipeline = _pipeline(Settings(), publisher, store)
    report = await pipeline.process([_record(_body("wamid.A")), _record(_body("wamid.B"))])
    assert set(store.rows) == {key("wamid.A"), key("wamid.B")}
    assert publisher.dead_letters == []
    assert report.dead_lettered == 0
