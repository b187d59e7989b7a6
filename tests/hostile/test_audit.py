"""The hostile suite's audit checks itself, no services: given what a perfect run would
leave behind it finds nothing, and each way a case can break the promise is reported
under that case's name, with what was expected and what was found.

(The end-to-end suite passing means something only if its audit bites.)
"""

from __future__ import annotations

import collections
import decimal
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from consumer.settings import Settings
from tests.hostile.cases import (
    BY_NAME,
    NAME_MARK,
    REFUSAL,
    SENDER_MARK,
    Case,
    dumps_exact,
    loads_exact,
)
from tests.hostile.harness import (
    GOOD,
    DeadLetter,
    HostileRun,
    Observed,
    Row,
    Sent,
    _messages,
    difference,
)
from tests.support.procs import ConsumerProc

pytestmark = pytest.mark.hostile

D = decimal.Decimal
CASES = tuple(
    BY_NAME[n]
    for n in (
        "large numbers and floats",
        "NUL in a contact's name",
        "not JSON",
        "statuses only: NUL in a field, nested deep within the limit",
        "refused message beside a good one in one record",
    )
)
NUMBERS, NAME_NUL, NOT_JSON, STATUSES, REFUSED = CASES
REFUSAL_TEXT = "violates check constraint hostile_refuse"


def _run(tmp_path: Path) -> HostileRun:
    """A run of a few cases and good webhooks, "sent": each record given an offset."""
    run = HostileRun(
        Settings(inbound_topic="in-audit"),
        tmp_path,
        database="test",
        refusal="hostile_refuse",
        good=6,
        cases=CASES,
    )
    next_offset: collections.Counter[int] = collections.Counter()
    for item in [*run.halves[0], *run.halves[1]]:
        run.sent.append(Sent(item, next_offset[item.partition]))
        next_offset[item.partition] += 1
    return run


def _perfect(run: HostileRun) -> Observed:
    """What a run that keeps the promise leaves behind."""
    rows: dict[tuple[str, str], list[Row]] = {}
    events: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for m in run.expected_stored():
        raw = loads_exact(dumps_exact(m.raw))
        rows[m.key] = [Row(m.sender, m.type, m.timestamp, m.contact_name, m.contact_wa_id, raw)]
        message = {**m.content, "id": "x", "source_id": m.key[1], "from": m.sender}
        message |= {"type": m.type, "timestamp": m.timestamp}
        events[m.key] = [
            {
                "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, repr(m.key))),
                "phone_number_id": m.key[0],
                "message": loads_exact(dumps_exact(message)),
                "contact": {"wa_id": m.contact_wa_id, "name": m.contact_name},
            }
        ]
    dead: dict[tuple[int, int], list[DeadLetter]] = {}
    for n, s in enumerate(x for x in run.sent if x.item.case and x.item.case.dead):
        assert s.item.case is not None
        detail = REFUSAL_TEXT if s.item.case.detail == REFUSAL else "why"
        dead[s.coords] = [DeadLetter(s.coords, "in-audit", s.item.case.expect, detail, (0, n))]
    return Observed(rows, events, dead, dict(run.ends))


def _copies(run: HostileRun, case: Case) -> list[Sent]:
    return [s for s in run.sent if s.item.case is case]


def _key(case: Case, n: int = 0) -> tuple[str, str]:
    return _messages(case.records[0].value)[n].key


def test_a_perfect_run_passes(tmp_path: Path) -> None:
    """Nothing is reported for a run that kept every promise, and each case's outcome is
    its promised one."""
    run = _run(tmp_path)
    verdict = run.audit(_perfect(run))
    assert verdict.ok, verdict.report()
    assert verdict.outcomes == {c.name: f"as promised ({c.expect})" for c in CASES}


def _drop_row(run: HostileRun, obs: Observed) -> None:
    del obs.rows[_key(NUMBERS)]


def _negative_zero_lost(run: HostileRun, obs: Observed) -> None:
    obs.rows[_key(NUMBERS)][0].raw["numbers"]["negzero"] = decimal.Decimal("0.0")


def _event_twice(run: HostileRun, obs: Observed) -> None:
    obs.events[_key(NUMBERS)].append(obs.events[_key(NUMBERS)][0])


def _name_changed(run: HostileRun, obs: Observed) -> None:
    obs.events[_key(NAME_NUL)][0]["contact"]["name"] = f"{NAME_MARK}\ufffdnul"


def _stored_one_dead_lettered(run: HostileRun, obs: Observed) -> None:
    s = _copies(run, NUMBERS)[1]
    obs.dead[s.coords] = [DeadLetter(s.coords, "in-audit", "too_deep", "x", (0, 99))]


def _dead_letter_twice(run: HostileRun, obs: Observed) -> None:
    s = _copies(run, NOT_JSON)[0]
    obs.dead[s.coords].append(obs.dead[s.coords][0])


def _wrong_reason(run: HostileRun, obs: Observed) -> None:
    s = _copies(run, NOT_JSON)[1]
    obs.dead[s.coords] = [DeadLetter(s.coords, "in-audit", "bad_shape", "x", (0, 98))]


def _no_refusal_in_detail(run: HostileRun, obs: Observed) -> None:
    s = _copies(run, REFUSED)[0]
    obs.dead[s.coords] = [DeadLetter(s.coords, "in-audit", "unstorable", "boom", (0, 97))]


def _refused_record_half_stored(run: HostileRun, obs: Observed) -> None:
    key = _key(REFUSED, 0)  # the good message beside the refused one
    obs.rows[key] = obs.rows[_key(NUMBERS)]


def _status_dead_lettered(run: HostileRun, obs: Observed) -> None:
    s = _copies(run, STATUSES)[0]
    obs.dead[s.coords] = [DeadLetter(s.coords, "in-audit", "bad_shape", "x", (0, 96))]


def _partition_stuck(run: HostileRun, obs: Observed) -> None:
    s = _copies(run, NOT_JSON)[0]
    obs.committed[s.item.partition] = s.offset
    del obs.dead[s.coords]


def _good_dead_lettered(run: HostileRun, obs: Observed) -> None:
    s = next(x for x in run.sent if x.item.case is None)
    obs.dead[s.coords] = [DeadLetter(s.coords, "in-audit", "not_json", "x", (0, 95))]


BREAKAGES: list[tuple[Callable[[HostileRun, Observed], None], str, str]] = [
    (_drop_row, NUMBERS.name, "0 rows: one expected"),
    (_negative_zero_lost, NUMBERS.name, "raw.numbers.negzero: expected -0.0, got 0.0"),
    (_event_twice, NUMBERS.name, "2 events: one expected"),
    (_name_changed, NAME_NUL.name, "contact.name: expected"),
    (_stored_one_dead_lettered, NUMBERS.name, "dead-lettered as 'too_deep'"),
    (_dead_letter_twice, NOT_JSON.name, "dead-lettered 2 times"),
    (_wrong_reason, NOT_JSON.name, "dlq.reason 'bad_shape'"),
    (_no_refusal_in_detail, REFUSED.name, "does not name 'hostile_refuse'"),
    (_refused_record_half_stored, REFUSED.name, "it must not be stored"),
    (_status_dead_lettered, STATUSES.name, "dead-lettered as 'bad_shape'"),
    (_partition_stuck, NOT_JSON.name, "not committed"),
    (_good_dead_lettered, GOOD, "a good record dead-lettered"),
]


@pytest.mark.parametrize(
    ("breakage", "case", "says"), BREAKAGES, ids=[b[0].__name__.strip("_") for b in BREAKAGES]
)
def test_each_breakage_is_reported_under_its_case(
    tmp_path: Path, breakage: Callable[[HostileRun, Observed], None], case: str, says: str
) -> None:
    """A run that broke the promise one way fails, and the report names the case, what
    was expected, and what was found."""
    run = _run(tmp_path)
    obs = _perfect(run)
    breakage(run, obs)
    verdict = run.audit(obs)
    assert not verdict.ok
    report = verdict.report()
    lines = [line for line in report.splitlines() if line.startswith(f"  case {case!r}: ")]
    assert any(says in line and "expected" in line for line in lines), report
    if case != GOOD:
        assert not verdict.outcomes[case].startswith("as promised"), verdict.outcomes


def test_personal_data_in_a_log_is_reported(tmp_path: Path) -> None:
    """A member log line holding a marker is a run-level problem naming the member, the
    line and the marker."""
    run = _run(tmp_path)
    log = tmp_path / "member.log"
    log.write_text(
        '{"event": "service.started"}\n'
        f'{{"event": "record.dead_lettered", "detail": "from is {SENDER_MARK}"}}\n'
    )
    run.group.procs.append(ConsumerProc(0, None, log))  # type: ignore[arg-type] # no process: only its log is read
    run._check_logs()
    assert len(run.verdict.run) == 1, run.verdict.run
    assert "line 2 (record.dead_lettered)" in run.verdict.run[0]
    assert SENDER_MARK in run.verdict.run[0]


@pytest.mark.parametrize(
    ("expected", "got", "says"),
    [
        (-0.0, 0.0, "expected -0.0, got 0.0"),
        (1e308, 10**308, "expected 1e+308, got 1000"),
        (18446744073709551615, 1.8446744073709552e19, "expected 18446744073709551615"),
        ({"t": {"body": "a\x00b"}}, {"t": {"body": "a\ufffdb"}}, "t.body: expected 'a\\x00b'"),
        ({"a": [1, [2]]}, {"a": [1, [2, 3]]}, "a[1]: 1 items expected, got 2"),
        ({"a": 1}, {"a": 1, "b": 2}, "keys ['a'] expected"),
        (D("-0.0"), D("0.0"), "expected -0.0, got 0.0"),
        (D("1E-400"), D("0.0"), "expected 1E-400, got 0.0"),
        (D("1E-400"), 0.0, "expected Decimal('1E-400'), got 0.0"),
        (10**29, D("1.2345678901234568E+29"), "expected 100000000000000000000000000000"),
    ],
)
def test_difference_is_exact(expected: Any, got: Any, says: str) -> None:
    """Values compare exactly: a number's type and a float's sign count, a number read
    as written (a Decimal) compares by value and sign, and the first difference is named
    by its path."""
    found = difference(expected, got)
    assert found is not None
    assert says in found, found
    if isinstance(expected, D):
        assert difference(expected, loads_exact(dumps_exact(expected))) is None
    else:
        assert difference(expected, json.loads(json.dumps(expected))) is None
