"""A member without partitions says how long it has waited, every ten seconds."""

from __future__ import annotations

from consumer.rebalance import AssignmentWait


def test_waiting_is_said_every_interval_and_resets_on_assignment() -> None:
    now = [100.0]
    wait = AssignmentWait(every_s=10.0, clock=lambda: now[0])
    said = []
    for step in range(0, 46):  # a poll-loop turn every half second, 23 s unassigned
        now[0] = 100.0 + step * 0.5
        waited = wait.check(assigned=False)
        if waited is not None:
            said.append(waited)
    assert said == [10.0, 20.0]
    now[0] = 130.0
    assert wait.check(assigned=True) is None  # partitions came
    now[0] = 131.0
    assert wait.check(assigned=False) is None  # a rebalance starts a new wait
    now[0] = 141.0
    assert wait.check(assigned=False) == 10.0
