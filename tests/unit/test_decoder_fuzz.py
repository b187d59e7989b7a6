"""intake.decode under the fuzz generators of tests/fuzz, a CI-sized run of
``python -m tests.fuzz.decoder``: no exception escapes, every refusal is an Invalid with a
dead-letter Reason (never internal_error), every accepted webhook satisfies the limits and
its messages can be encoded for the store and announced. Time per case is reported by the
script only (a timed test would flake on a shared machine)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings

from consumer import intake
from consumer.records import InboundRecord, Invalid, Reason, Webhook
from tests.fuzz import contract, decoder, generators, strategies
from tests.fuzz.generators import Case

MAX = decoder.DEFAULT_MAX_BYTES
# Cases per family, about 3,000 in all: the cheap byte-level families most.
CI_CASES = {
    "bytes": 400,
    "tokens": 400,
    "sample-bytes": 400,
    "sample-tree": 250,
    "limits": 100,
    "limits-tree": 100,
    "boundary": 300,
    "deep": 300,
    "huge": 100,
    "bad-utf8": 200,
    "dup-keys": 200,
    "signed": 250,
}
FAMILIES = generators.families(MAX)


def _check(case: Case) -> str:
    result = decoder.examine(case, MAX)
    assert not result.problems, (result.describe(), result.problems, case)
    return result.label


def test_every_family_is_run_in_ci() -> None:
    """The CI run covers each family the script runs."""
    assert set(CI_CASES) == set(FAMILIES) == set(generators.SHARES)


@pytest.mark.parametrize("family", sorted(CI_CASES))
def test_decode_keeps_the_contract_for_every_generated_case(family: str) -> None:
    """For every case the family generates, decode returns without raising: an Invalid
    with a Reason other than internal_error, or a Webhook whose messages meet every limit
    and whose events build."""

    @hsettings(
        max_examples=CI_CASES[family],
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(FAMILIES[family])
    def check(case: Case) -> None:
        event(_check(case))

    check()


@pytest.mark.parametrize("case", generators.FIXED_CASES, ids=repr)
def test_decode_keeps_the_contract_for_the_fixed_cases(case: Case) -> None:
    """The fixed odd values (no value, empty, whitespace, null, empty lists, a BOM) each
    decode to an outcome that keeps the contract."""
    _check(case)


# -- the checker itself ----------------------------------------------------------------


def test_an_escaped_exception_fails_the_fuzz_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """If decode raises, the script counts it, shows the record and exits 1."""

    def boom(record: InboundRecord, **_: object) -> Webhook | Invalid:
        raise ValueError("boom")

    monkeypatch.setattr(intake, "decode", boom)
    assert decoder.main(["--cases", "30", "--seed", "1"]) == 1
    out = capsys.readouterr().out
    assert "intake.decode raised ValueError: boom" in out
    assert "result: FAIL" in out


def test_an_accepted_message_breaking_a_limit_is_a_contract_violation() -> None:
    """A Webhook whose message has a control character in its wamid, or an over-long
    sender, or an internal_error refusal, is reported as a problem."""
    case = Case("test", strategies.SAMPLE_BYTES["text.json"])
    record = InboundRecord("fuzz", 0, 0, None, case.value, (), 0)
    hook = intake.decode(record, max_bytes=MAX)
    assert isinstance(hook, Webhook)
    assert contract.problems(record, hook) == []
    (message,) = hook.messages
    bad_key = message.key._replace(wamid="wamid.\x00")
    broken = dataclasses.replace(message, key=bad_key, sender="1" * 65)
    found = contract.problems(record, dataclasses.replace(hook, messages=(broken,)))
    assert any("wamid holds control character U+0000" in p for p in found)
    assert any("from has 65 characters" in p for p in found)
    internal = Invalid(record, Reason.INTERNAL_ERROR, "intake raised KeyError")
    assert contract.problems(record, internal) == [
        "intake raised inside its own code (intake raised KeyError)"
    ]
