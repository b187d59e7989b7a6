"""The hostile suite's audit checks itself, no services: given what a perfect run would
leave behind it finds nothing, and each way a case can break the promise is reported
under that case's name, with what was expected and what was found.

(The end-to-end suite passing means something only if its audit bites.)
"""

from __future__ import annotations

import collections
import copy
import decimal
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from consumer.settings import Settings
from tests.hostile.cases import (
    ANNOUNCED_STATUS,
    BY_NAME,
    NAME_MARK,
    REFUSAL,
    SENDER_MARK,
    Case,
    ExpectedStatus,
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
    StatusEvent,
    StatusRow,
    _conversation,
    _messages,
    _statuses,
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
        "NUL in a status word, nested deep within the limit",
        "refused message beside a good one in one record",
        "out-of-order statuses across records and copies",
        "a status about an inbound message's wamid, beside it",
        "huge free content in a status's errors and pricing: 250 KB, NUL, numbers as written",
        "value-level errors only",
    )
)
NUMBERS, NAME_NUL, NOT_JSON, NUL_WORD, REFUSED, OOO, BOTH, HUGE, ERRORS = CASES
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
        detail = REFUSAL_TEXT if s.item.case.detail == REFUSAL else s.item.case.detail or "why"
        dead[s.coords] = [DeadLetter(s.coords, "in-audit", s.item.case.expect, detail, (0, n))]
    obs = Observed(rows, events, dead, dict(run.ends))
    _announce_in_order_sent(run, obs)
    return obs


def _announce_in_order_sent(run: HostileRun, obs: Observed) -> None:
    """The statuses of the ANNOUNCED_STATUS cases as the product leaves them when the
    records come in the order sent, each a batch of its own: a record's new statuses
    found its message's state where the records before it left it; those above it (and
    words not in the order) announced, in the order's order, the others stale."""
    state: dict[tuple[str, str], int] = {}
    offset = 0
    for s in run.sent:
        if s.item.case is None or s.item.case.expect != ANNOUNCED_STATUS:
            continue
        new = {st.key: st for st in _statuses(s.item.record.value) if st.key not in obs.status_rows}
        before = dict(state)
        for st in sorted(new.values(), key=lambda st: (st.message, st.rank or 0)):
            announce = st.rank is None or st.rank > before.get(st.message, 0)
            if st.rank is not None:
                state[st.message] = max(state.get(st.message, 0), st.rank)
            source = ("in-audit", *s.coords)
            event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, repr(st.key)))
            raw = copy.deepcopy(st.raw)  # as read back (an integer beyond 64 bits: no orjson)
            outcome = "announced" if announce else "stale"
            obs.status_rows[st.key] = [
                StatusRow(st.rank, outcome, st.recipient, str(st.timestamp), raw, event_id, source)
            ]
            if announce:
                obs.status_events[st.key] = [_status_event(st, event_id, source, offset)]
                offset += 1
    words = ("sent", "delivered", "failed", "read", "played")
    for mid, rank in state.items():
        obs.states[mid] = [words[rank - 1]]


def _status_event(
    st: ExpectedStatus, event_id: str, source: tuple[str, int, int], offset: int
) -> StatusEvent:
    body = {
        "event": "message_status_changed",
        "event_id": event_id,
        "phone_number_id": st.key[0],
        "display_phone_number": st.display,
        "status": copy.deepcopy(st.event_status),
        "source": {"topic": source[0], "partition": source[1], "offset": source[2]},
    }
    return StatusEvent(body, _conversation(st.key[0], st.recipient), (0, offset))


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
    s = _copies(run, OOO)[0]
    obs.dead[s.coords] = [DeadLetter(s.coords, "in-audit", "bad_shape", "x", (0, 96))]


def _errors_dead_lettered(run: HostileRun, obs: Observed) -> None:
    s = _copies(run, ERRORS)[1]
    obs.dead[s.coords] = [DeadLetter(s.coords, "in-audit", "bad_shape", "x", (0, 94))]


def _skey(case: Case, word: str) -> tuple[str, str, str]:
    return next(st.key for r in case.records for st in _statuses(r.value) if st.word == word)


def _status_event_missing(run: HostileRun, obs: Observed) -> None:
    del obs.status_events[_skey(OOO, "played")]


def _stale_announced(run: HostileRun, obs: Observed) -> None:
    key = _skey(OOO, "read")
    assert obs.status_rows[key][0].outcome == "stale"
    obs.status_events[key] = obs.status_events[_skey(OOO, "played")]


def _stale_announced_out_of_order(run: HostileRun, obs: Observed) -> None:
    """read announced after played: its row says announced, so only the order shows."""
    key, top = _skey(OOO, "read"), obs.status_events[_skey(OOO, "played")][0]
    obs.status_rows[key][0].outcome = "announced"
    body = {**top.body, "status": {**top.body["status"], "status": "read"}}
    row = obs.status_rows[key][0]
    body["event_id"] = row.event_id
    body["source"] = dict(zip(("topic", "partition", "offset"), row.source, strict=True))
    obs.status_events[key] = [StatusEvent(body, top.key, (top.at[0], top.at[1] + 100))]


def _highest_stale(run: HostileRun, obs: Observed) -> None:
    key = _skey(OOO, "played")
    obs.status_rows[key][0].outcome = "stale"
    del obs.status_events[key]


def _status_row_missing(run: HostileRun, obs: Observed) -> None:
    del obs.status_rows[_skey(OOO, "delivered")]


def _status_row_twice(run: HostileRun, obs: Observed) -> None:
    key = _skey(OOO, "failed")
    obs.status_rows[key].append(obs.status_rows[key][0])


def _state_behind(run: HostileRun, obs: Observed) -> None:
    obs.states[_skey(OOO, "played")[:2]] = ["read"]


def _state_missing(run: HostileRun, obs: Observed) -> None:
    del obs.states[_skey(BOTH, "read")[:2]]


def _status_event_twice_two_ids(run: HostileRun, obs: Observed) -> None:
    events = obs.status_events[_skey(OOO, "played")]
    again = StatusEvent({**events[0].body, "event_id": str(uuid.uuid4())}, events[0].key, (3, 9))
    events.append(again)


def _status_event_wrong_key(run: HostileRun, obs: Observed) -> None:
    event = obs.status_events[_skey(BOTH, "read")][0]
    event.key = b"106540352242922:somebody-else"


def _status_timestamp_an_integer(run: HostileRun, obs: Observed) -> None:
    event = obs.status_events[_skey(OOO, "played")][0]
    event.body["status"]["timestamp"] = int(event.body["status"]["timestamp"])


def _status_negative_zero_lost(run: HostileRun, obs: Observed) -> None:
    obs.status_rows[_skey(HUGE, "failed")][0].raw["pricing"]["negzero"] = D("0.0")


def _status_nul_lost_in_event(run: HostileRun, obs: Observed) -> None:
    error = obs.status_events[_skey(HUGE, "failed")][0].body["status"]["errors"][0]
    error["message"] = error["message"].replace("\x00", "\ufffd")


def _dead_status_stored(run: HostileRun, obs: Observed) -> None:
    (st,) = _statuses(NUL_WORD.records[0].value)
    obs.status_rows[st.key] = obs.status_rows[_skey(OOO, "played")]


def _message_beside_status_missing(run: HostileRun, obs: Observed) -> None:
    del obs.rows[_key(BOTH)]


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
    (_status_dead_lettered, OOO.name, "dead-lettered as 'bad_shape'"),
    (_errors_dead_lettered, ERRORS.name, "dead-lettered as 'bad_shape'"),
    (_status_event_missing, OOO.name, "0 status events: one expected"),
    (_stale_announced, OOO.name, "1 status event(s) of a stale status: none expected"),
    (_stale_announced_out_of_order, OOO.name, "topic order: expected increasing"),
    (_highest_stale, OOO.name, "stale: announced expected (the highest of its message)"),
    (_status_row_missing, OOO.name, "0 status rows: one expected"),
    (_status_row_twice, OOO.name, "2 status rows: one expected"),
    (_state_behind, OOO.name, "message_state: expected ['played'], got ['read']"),
    (_state_missing, BOTH.name, "message_state: expected ['read'], got []"),
    (_status_event_twice_two_ids, OOO.name, "status event copies with 2 event_ids"),
    (_status_event_wrong_key, BOTH.name, "status event key: expected"),
    (_status_timestamp_an_integer, OOO.name, "status.timestamp: expected '1749416383'"),
    (_status_negative_zero_lost, HUGE.name, "raw.pricing.negzero: expected -0.0, got 0.0"),
    (_status_nul_lost_in_event, HUGE.name, "status.errors[0].message: expected"),
    (_dead_status_stored, NUL_WORD.name, "it must not be stored"),
    (_message_beside_status_missing, BOTH.name, "0 rows: one expected"),
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
