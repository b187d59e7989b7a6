"""OffsetLedger: commit the lowest not-yet-durable offset, per partition."""

from __future__ import annotations

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from consumer.offsets import OffsetLedger

P0 = ("in", 0)
P1 = ("in", 1)


def _ledger(partition: tuple[str, int], offsets: range | list[int]) -> OffsetLedger:
    ledger = OffsetLedger()
    for o in offsets:
        ledger.track(partition, o)
    return ledger


def test_nothing_tracked_nothing_to_commit() -> None:
    """A fresh ledger has nothing to commit."""
    assert OffsetLedger().to_commit() == {}


def test_all_pending_commits_lowest() -> None:
    """With every fetched record in flight the commit point is the first one."""
    ledger = _ledger(P0, range(10, 15))
    assert ledger.to_commit() == {P0: 10}
    assert ledger.pending_count(P0) == 5


def test_out_of_order_done_commits_lowest_pending() -> None:
    """Finishing later records first does not move the commit past an unfinished one."""
    ledger = _ledger(P0, range(10, 15))
    for o in (11, 12, 14):
        ledger.done(P0, o)
    assert ledger.to_commit() == {P0: 10}
    ledger.done(P0, 10)
    assert ledger.to_commit() == {P0: 13}


def test_nothing_pending_commits_highest_plus_one() -> None:
    """When every record is durable the commit point is the highest offset + 1."""
    ledger = _ledger(P0, [10, 11, 12])
    for o in (12, 10, 11):
        ledger.done(P0, o)
    assert ledger.to_commit() == {P0: 13}
    assert ledger.pending_count(P0) == 0


def test_gap_in_offsets_commits_after_highest() -> None:
    """Offsets with gaps (compaction, transactions) still commit highest + 1."""
    ledger = _ledger(P0, [3, 7, 20])
    for o in (3, 7, 20):
        ledger.done(P0, o)
    assert ledger.to_commit() == {P0: 21}


def test_to_commit_only_returns_partitions_that_moved() -> None:
    """After committing, a partition reappears only once its commit point advances."""
    ledger = OffsetLedger()
    for p in (P0, P1):
        for o in range(3):
            ledger.track(p, o)
    ledger.done(P0, 0)
    ledger.done(P1, 0)
    first = ledger.to_commit()
    assert first == {P0: 1, P1: 1}
    ledger.committed(first)
    assert ledger.to_commit() == {}
    ledger.done(P1, 2)  # not contiguous: P1 still at 1
    assert ledger.to_commit() == {}
    ledger.done(P1, 1)
    assert ledger.to_commit() == {P1: 3}


def test_to_commit_never_goes_backwards() -> None:
    """A re-tracked offset below the committed point is not committed (no rewind)."""
    ledger = _ledger(P0, [5])
    ledger.done(P0, 5)
    ledger.committed(ledger.to_commit())
    ledger.track(P0, 2)
    assert ledger.to_commit() == {}


def test_to_commit_restricted_to_given_partitions() -> None:
    """to_commit(partitions) considers only those partitions, ignoring unknown ones."""
    ledger = OffsetLedger()
    ledger.track(P0, 4)
    ledger.track(P1, 9)
    assert ledger.to_commit([P1, ("other", 0)]) == {P1: 9}


def test_done_for_unknown_partition_is_ignored() -> None:
    """Marking an offset done in a partition never tracked changes nothing."""
    ledger = _ledger(P0, [1])
    ledger.done(P1, 1)
    assert ledger.partitions() == [P0]
    assert ledger.to_commit() == {P0: 1}


def test_forget_drops_partition() -> None:
    """forget removes a revoked partition's state; a later track starts afresh."""
    ledger = OffsetLedger()
    ledger.track(P0, 1)
    ledger.track(P1, 1)
    ledger.committed({P0: 1})
    ledger.forget([P0])
    assert ledger.partitions() == [P1]
    assert ledger.pending_count(P0) == 0
    assert P0 not in ledger.to_commit()
    ledger.track(P0, 0)  # reassigned and re-fetched from an older committed point
    assert ledger.to_commit([P0]) == {P0: 0}


@hsettings(max_examples=300, database=None, deadline=None)
@given(st.data())
def test_commit_point_property(data: st.DataObject) -> None:
    """to_commit is min(not-done) or max+1, and never passes a not-done offset."""
    tracked = data.draw(st.sets(st.integers(0, 10_000), min_size=1, max_size=50), label="tracked")
    done = data.draw(st.sets(st.sampled_from(sorted(tracked))), label="done")
    order = data.draw(st.permutations(sorted(tracked)), label="order")
    ledger = OffsetLedger()
    for o in order:
        ledger.track(P0, o)
    for o in data.draw(st.permutations(sorted(done)), label="done order"):
        ledger.done(P0, o)
    not_done = tracked - done
    commit = ledger.to_commit()[P0]
    assert commit == (min(not_done) if not_done else max(tracked) + 1)
    assert all(commit <= o for o in not_done)
    assert ledger.pending_count(P0) == len(not_done)
