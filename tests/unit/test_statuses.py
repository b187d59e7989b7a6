"""The order of a message's statuses (consumer/statuses.py): whatever the interleaving
and duplication of its status updates across members, the state ends at the highest
status sent, the announced transitions only ever move forward, and no status is
announced twice. Here against a model of the database's fence (a status seen once) and
its conditional update (the state changes only forward, atomically)."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from consumer import statuses
from consumer.statuses import ORDER, StatusKey, apply

KNOWN = list(ORDER)
WORDS = st.sampled_from([*KNOWN, "deleted", "warning"])  # two words Meta could add


def test_the_order_is_the_documented_one() -> None:
    """sent < delivered < failed < read < played (docs/design.md, "Statuses")."""
    assert sorted(ORDER, key=ORDER.__getitem__) == [
        "sent",
        "delivered",
        "failed",
        "read",
        "played",
    ]


def test_read_without_delivered_moves_forward_and_a_late_delivered_is_stale() -> None:
    assert apply("sent", "read").moved
    assert not apply("read", "delivered").announce
    assert apply("read", "delivered").state == "read"


def test_a_late_delivered_never_hides_a_failure_but_read_moves_past_it() -> None:
    """Chatwoot's bug: a failed overwritten by a late delivered."""
    late = apply("failed", "delivered")
    assert (late.announce, late.state) == (False, "failed")
    assert apply("failed", "read").state == "read"
    assert apply("delivered", "failed").state == "failed"


def test_an_unknown_word_is_announced_and_moves_nothing() -> None:
    outcome = apply("delivered", "deleted")
    assert (outcome.announce, outcome.moved, outcome.state) == (True, False, "delivered")
    assert apply(None, "deleted").state is None


def test_event_ids_are_deterministic_and_distinct() -> None:
    """One event id per (number, message id, word); the same three give the same id, and
    a separator inside a part cannot make two keys collide (intake admits none)."""
    a = StatusKey("106540352242922", "wamid.A", "read")
    assert a.event_id == StatusKey("106540352242922", "wamid.A", "read").event_id
    assert uuid.UUID(a.event_id).version == 5
    others = [
        StatusKey("106540352242922", "wamid.A", "delivered"),
        StatusKey("106540352242922", "wamid.B", "read"),
        StatusKey("106540352242923", "wamid.A", "read"),
    ]
    assert len({a.event_id, *(k.event_id for k in others)}) == 4
    assert statuses.STATUS_EVENT_NAMESPACE.version == 4


class _Database:
    """The fence (each status key seen once) and the state table (changed only forward),
    each update atomic, as the store will run them in one transaction."""

    def __init__(self) -> None:
        self.seen: set[StatusKey] = set()
        self.state: str | None = None
        self.announced: list[str] = []

    def save(self, key: StatusKey) -> None:
        if key in self.seen:  # a duplicate: found by the fence, announced at most once
            return
        self.seen.add(key)
        outcome = apply(self.state, key.status)
        self.state = outcome.state
        if outcome.announce:
            self.announced.append(key.status)


@given(
    sent=st.lists(WORDS, min_size=1, max_size=12),
    copies=st.lists(st.integers(1, 3), min_size=12, max_size=12),
    order=st.randoms(use_true_random=False),
    members=st.lists(st.integers(0, 1), min_size=36, max_size=36),
)
def test_any_interleaving_and_duplication_ends_at_the_highest_status(
    sent: list[str], copies: list[int], order: object, members: list[int]
) -> None:
    """A message's statuses, each delivered one to three times, shuffled, and split
    between two members that save them one at a time in any interleaving: the state
    ends at the highest known status sent; the known statuses announced are strictly
    increasing in ORDER; no status is announced twice; every unknown word sent is
    announced once."""
    import random

    assert isinstance(order, random.Random)
    pnid, wamid = "106540352242922", "wamid.OUT"
    updates = [
        StatusKey(pnid, wamid, word)
        for word, n in zip(sent, copies, strict=False)
        for _ in range(n)
    ]
    order.shuffle(updates)
    queues: list[list[StatusKey]] = [[], []]
    for update, member in zip(updates, members, strict=False):
        queues[member].append(update)
    db = _Database()
    turn = 0
    while queues[0] or queues[1]:
        queue = queues[members[turn % len(members)]] or queues[0] or queues[1]
        db.save(queue.pop(0))
        turn += 1
    known = [w for w in sent if w in ORDER]
    assert db.state == (max(known, key=ORDER.__getitem__) if known else None)
    ranks = [ORDER[w] for w in db.announced if w in ORDER]
    assert ranks == sorted(set(ranks)), f"announced out of order or twice: {db.announced}"
    unknown = [w for w in db.announced if w not in ORDER]
    assert sorted(unknown) == sorted({w for w in sent if w not in ORDER})
