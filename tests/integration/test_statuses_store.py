"""Status updates in the real Store, on PostgreSQL and SQLite: the fence on
(phone_number_id, id, status), the state moved only forward by the conditional upsert,
an event only for a forward move, and a message's status events announced in order even
when two members commit them at once (docs/design.md, "Statuses")."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import events, intake
from consumer import statuses as rules
from consumer.engine import create_engine
from consumer.ports import Claim, PendingMessage, PendingStatus, SaveResult
from consumer.records import Invalid, StatusKey
from consumer.schema import message_state
from consumer.schema import statuses as statuses_table
from consumer.store import Store
from consumer.testing import PNID, record, status, webhook
from consumer.testing import message as meta_message

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
CLAIM = dt.timedelta(seconds=60)
WORDS = ("sent", "delivered", "failed", "read", "played")


def _pending(*updates: tuple[str, str]) -> list[PendingStatus]:
    """(wamid, word) pairs as the pipeline hands them to the Store."""
    body = webhook(statuses=[status(wamid, word) for wamid, word in updates])
    decoded = intake.decode(record(body), max_bytes=1 << 20)
    assert not isinstance(decoded, Invalid)
    return [
        PendingStatus(u, events.build_status(u, topic="out", occurred_at=T0))
        for u in decoded.statuses
    ]


def _words(saved: SaveResult) -> list[str]:
    return [orjson.loads(e.payload)["status"]["status"] for e in saved.to_publish]


async def _state(store: Store, wamid: str) -> tuple[str, str | None] | None:
    async with store.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(message_state.c.status, message_state.c.previous_status).where(
                    message_state.c.phone_number_id == PNID, message_state.c.status_id == wamid
                )
            )
        ).one_or_none()
    return None if row is None else (row[0], row[1])


async def _outcomes(store: Store) -> dict[tuple[str, str], str]:
    async with store.engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(
                    statuses_table.c.status_id, statuses_table.c.status, statuses_table.c.outcome
                )
            )
        ).all()
    return {(r[0], r[1]): r[2] for r in rows}


async def test_forward_moves_are_announced_and_the_rest_stored_as_seen(store: Store) -> None:
    """Within a batch, a message's statuses are taken in the order's order; a later batch
    announces only what moves the state; a stale status is stored (its duplicate is then
    known) and announced never; a word Meta may add is announced and moves nothing."""
    first = await store.save(
        [], Claim("b1", CLAIM), _pending(("w.A", "delivered"), ("w.A", "sent"))
    )
    assert _words(first) == ["sent", "delivered"]
    await store.mark_published(first.outbox_ids)
    assert await _state(store, "w.A") == ("delivered", None)  # both in one upsert

    second = await store.save(
        [],
        Claim("b2", CLAIM),
        _pending(("w.A", "sent"), ("w.A", "read"), ("w.A", "failed"), ("w.A", "new_word")),
    )
    assert _words(second) == ["new_word", "failed", "read"]
    assert second.conflicts == {StatusKey(PNID, "w.A", "sent")}
    assert second.stale == frozenset()
    await store.mark_published(second.outbox_ids)
    assert await _state(store, "w.A") == ("read", "delivered")

    late = await store.save([], Claim("b3", CLAIM), _pending(("w.A", "played"), ("w.B", "sent")))
    assert _words(late) == ["played", "sent"]
    await store.mark_published(late.outbox_ids)
    stale = await store.save(
        [], Claim("b4", CLAIM), _pending(("w.B", "sent"), ("w.A", "delivered"))
    )
    assert stale.to_publish == ()
    assert stale.stale == frozenset()  # w.A delivered: a duplicate, not new
    backwards = await store.save(
        [],
        Claim("b5", CLAIM),
        _pending(
            ("w.B", "sent"),
        ),
    )
    assert backwards.conflicts == {StatusKey(PNID, "w.B", "sent")}

    outcomes = await _outcomes(store)
    assert outcomes[("w.A", "new_word")] == "announced"
    assert await store.announced([StatusKey(PNID, "w.A", k) for k in WORDS]) == {
        StatusKey(PNID, "w.A", k) for k in WORDS
    }


async def test_messages_and_statuses_in_one_save(store: Store) -> None:
    """A batch of both kinds (Meta's bodies mix them): every message and every status
    stored, in one outbox row, the messages' events first; a status of a wamid that is
    also an inbound message's is another thing (one row each)."""
    body = webhook(
        [meta_message("w.M1"), meta_message("w.A")],
        statuses=[status("w.A", "read"), status("w.A", "sent"), status("w.Z", "failed")],
    )
    decoded = intake.decode(record(body), max_bytes=1 << 20)
    assert not isinstance(decoded, Invalid)
    messages = [
        PendingMessage(m, events.build(m, topic="out", occurred_at=T0)) for m in decoded.messages
    ]
    statuses = [
        PendingStatus(u, events.build_status(u, topic="out", occurred_at=T0))
        for u in decoded.statuses
    ]
    saved = await store.save(messages, Claim("b1", CLAIM), statuses)
    kinds = [orjson.loads(e.payload)["event"] for e in saved.to_publish]
    assert kinds == ["message_created"] * 2 + ["message_status_changed"] * 3
    assert len(saved.outbox_ids) == 1
    assert saved.inserted == {m.message.key for m in messages} | {u.update.key for u in statuses}
    await store.mark_published(saved.outbox_ids)
    again = await store.save(messages, Claim("b2", CLAIM), statuses)
    assert again.to_publish == ()
    assert again.conflicts == saved.inserted


async def test_a_stale_status_is_stored_without_an_event(store: Store) -> None:
    saved = await store.save([], Claim("b1", CLAIM), _pending(("w.A", "read")))
    await store.mark_published(saved.outbox_ids)
    late = await store.save([], Claim("b2", CLAIM), _pending(("w.A", "delivered")))
    assert late.stale == {StatusKey(PNID, "w.A", "delivered")}
    assert late.to_publish == ()
    assert late.outbox_ids == ()
    assert (await _outcomes(store))[("w.A", "delivered")] == "stale"
    assert await store.announced([StatusKey(PNID, "w.A", "delivered")]) == {
        StatusKey(PNID, "w.A", "delivered")
    }
    again = await store.save([], Claim("b3", CLAIM), _pending(("w.A", "delivered")))
    assert again.conflicts == {StatusKey(PNID, "w.A", "delivered")}
    assert again.to_publish == ()


async def test_a_later_status_waits_for_the_earlier_ones_announcement(store: Store) -> None:
    """`delivered` is committed but not yet published (its batch is still publishing);
    `read`, committed after it by another batch, is held back: not handed out to
    publish, its row unclaimed, its key "in flight". Once `delivered`'s row is gone, the
    retry (a conflict on the fence) takes `read`'s row and announces it; the relay
    holds it back the same way."""
    delivered = await store.save([], Claim("b1", CLAIM), _pending(("w.A", "delivered")))
    read = await store.save([], Claim("b2", CLAIM), _pending(("w.A", "read")))
    assert read.to_publish == ()
    assert read.in_flight == {StatusKey(PNID, "w.A", "read")}
    assert read.inserted == {StatusKey(PNID, "w.A", "read")}

    claimed = await store.claim_unpublished(claimant="relay", claim_for=CLAIM, limit=10)
    assert claimed.events == ()  # delivered's row is still b1's; read's waits for it

    await store.mark_published(delivered.outbox_ids)
    retry = await store.save([], Claim("b3", CLAIM), _pending(("w.A", "read")))
    assert _words(retry) == ["read"]
    assert retry.in_flight == frozenset()


async def test_only_the_waiting_message_s_statuses_wait(store: Store) -> None:
    """One message's status waits for its earlier one; the batch's other messages and
    statuses are announced now (their row is not held up), the waiting one sits in an
    unclaimed row of its own and is announced by the retry once it may be."""
    delivered = await store.save([], Claim("b1", CLAIM), _pending(("w.A", "delivered")))
    body = webhook([meta_message("w.M")], statuses=[status("w.A", "read"), status("w.B", "sent")])
    decoded = intake.decode(record(body), max_bytes=1 << 20)
    assert not isinstance(decoded, Invalid)
    mixed = await store.save(
        [PendingMessage(m, events.build(m, topic="out", occurred_at=T0)) for m in decoded.messages],
        Claim("b2", CLAIM),
        [
            PendingStatus(u, events.build_status(u, topic="out", occurred_at=T0))
            for u in decoded.statuses
        ],
    )
    assert mixed.in_flight == {StatusKey(PNID, "w.A", "read")}
    assert [orjson.loads(e.payload)["event"] for e in mixed.to_publish] == [
        "message_created",
        "message_status_changed",
    ]
    assert orjson.loads(mixed.to_publish[1].payload)["status"]["id"] == "w.B"
    await store.mark_published(mixed.outbox_ids)
    await store.mark_published(delivered.outbox_ids)
    retry = await store.save([], Claim("b3", CLAIM), _pending(("w.A", "read")))
    assert _words(retry) == ["read"]


async def test_the_relay_announces_a_message_s_statuses_in_order(store: Store) -> None:
    """Two abandoned rows of one message (their inserters died): the relay announces
    the lower one first, the higher one in a later round, never the other way."""
    await store.save([], Claim("gone1", dt.timedelta(0)), _pending(("w.A", "delivered")))
    await store.save([], Claim("gone2", dt.timedelta(0)), _pending(("w.A", "played")))
    order: list[str] = []
    for _ in range(3):
        claimed = await store.claim_unpublished(claimant="relay", claim_for=CLAIM, limit=10)
        order += [orjson.loads(e.payload)["status"]["status"] for e in claimed.events]
        await store.mark_published(claimed.outbox_ids)
    assert order == ["delivered", "played"]


# -- two members at once -------------------------------------------------------------

UPDATES = st.lists(st.sampled_from(WORDS), min_size=1, max_size=8)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first=UPDATES,
    second=UPDATES,
    sizes=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    # How long each member takes between its commit and its publish (a slow broker).
    slow=st.tuples(st.sampled_from([0.0, 0.01, 0.03]), st.sampled_from([0.0, 0.01, 0.03])),
)
def test_two_members_end_at_the_highest_status_and_announce_in_order(
    database_url: str,
    first: list[str],
    second: list[str],
    sizes: tuple[int, int],
    slow: tuple[float, float],
) -> None:
    """Any interleaving and duplication of a message's statuses over two members (each
    its own engine, saving batches concurrently and publishing what it is handed, in
    order, and retrying what is held back): the state ends at the highest status sent,
    each status is announced at most once, and the announcements are strictly
    increasing in the order, as they reach the topic."""
    asyncio.run(_two_members(database_url, (first, second), sizes, slow))


async def _two_members(
    database_url: str,
    words: tuple[list[str], list[str]],
    sizes: tuple[int, int],
    slow: tuple[float, float],
) -> None:
    wamid = f"w.{uuid.uuid4().hex}"  # examples share the database
    topic: list[str] = []  # what reached the "topic", in order
    lock = asyncio.Lock()
    stores = [Store(create_engine(database_url, pool_size=2, timeout_s=20)) for _ in range(2)]

    async def member(n: int, mine: list[str], size: int) -> None:
        store = stores[n]
        batches = [mine[i : i + size] for i in range(0, len(mine), size)]
        for b, batch in enumerate(batches):
            todo = [(wamid, w) for w in batch]
            for attempt in range(200):
                saved = await store.save([], Claim(f"m{n}:{b}:{attempt}", CLAIM), _pending(*todo))
                await asyncio.sleep(slow[n])
                async with lock:  # a publish: acknowledged in the order sent
                    topic.extend(_words(saved))
                await store.mark_published(saved.outbox_ids)
                todo = [(wamid, k.status) for k in saved.in_flight if isinstance(k, StatusKey)]
                if not todo:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError(f"member {n} kept being held back: {todo}")

    try:
        await asyncio.gather(member(0, words[0], sizes[0]), member(1, words[1], sizes[1]))
        state = await _state(stores[0], wamid)
    finally:
        for s in stores:
            await s.close()
    sent = set(words[0]) | set(words[1])
    highest = max(sent, key=lambda w: rules.ORDER[w])
    assert state is not None
    assert state[0] == highest
    assert len(topic) == len(set(topic)), f"announced twice: {topic}"
    ranks = [rules.ORDER[w] for w in topic]
    assert ranks == sorted(ranks), f"out of order on the topic: {topic}"
    assert topic[-1] == highest
