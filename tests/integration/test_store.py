"""The SQL fence and the outbox (docs/design.md, rules 1 and 7) on real PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import random
from collections.abc import AsyncIterator, Sequence

import pytest
import sqlalchemy as sa
from _pytest.monkeypatch import MonkeyPatch
from alembic import command
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from consumer import engine as engine_module
from consumer import events, intake, migrate
from consumer import outbox as outbox_module
from consumer import store as store_module
from consumer.engine import create_engine
from consumer.errors import StoreError
from consumer.outbox import unpack_events
from consumer.ports import Claim, PendingMessage, SaveResult
from consumer.records import InboundRecord, MessageKey, Webhook
from consumer.schema import messages, outbox
from consumer.store import Store
from tests.support.dbclock import pass_time

pytestmark = pytest.mark.integration

OUT_TOPIC = "whatsapp.message_created"
FENCE = "uq_messages_phone_number_id_source_id"


def _body(pnid: str, *wamids: str, sender: str = "16505551234") -> bytes:
    """A webhook with one change holding the given text messages."""
    msgs = [
        {"from": sender, "id": w, "timestamp": "1749416383", "type": "text", "text": {"body": w}}
        for w in wamids
    ]
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": pnid},
        "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": sender}],
        "messages": msgs,
    }
    change = {"field": "messages", "value": value}
    body = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}
    return json.dumps(body).encode()


def _pending(
    pnid: str, *wamids: str, offset: int = 0, occurred_at: dt.datetime | None = None
) -> list[PendingMessage]:
    """Decode a webhook for `wamids` and build each message's event, as the pipeline does."""
    record = InboundRecord("whatsapp.webhooks", 0, offset, None, _body(pnid, *wamids), (), 0)
    hook = intake.decode(record, max_bytes=1 << 20)
    assert isinstance(hook, Webhook), hook
    at = occurred_at or dt.datetime.now(dt.UTC)
    return [
        PendingMessage(m, events.build(m, topic=OUT_TOPIC, occurred_at=at)) for m in hook.messages
    ]


def _keys(pending: Sequence[PendingMessage]) -> frozenset[MessageKey]:
    return frozenset(p.message.key for p in pending)


async def _row_counts(store: Store) -> collections.Counter[tuple[str, str]]:
    async with store.engine.connect() as conn:
        rows = (
            await conn.execute(sa.select(messages.c.phone_number_id, messages.c.source_id))
        ).all()
    return collections.Counter((r[0], r[1]) for r in rows)


async def _outbox(store: Store) -> dict[str, tuple[bytes, bool]]:
    """event_id -> (payload, published?) of every event in the outbox."""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(outbox.c.events))).all()
    return {e.event_id: (e.payload, False) for r in rows for e in unpack_events(bytes(r[0]))}


async def _outbox_rows(store: Store) -> dict[str, int]:
    """outbox id -> event_count"""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(outbox.c.id, outbox.c.event_count))).all()
    return {r[0]: r[1] for r in rows}


async def test_save_inserts_and_returns_new_events(store: Store) -> None:
    """save() inserts every new message, and one outbox row with all their events, and
    returns the events and the row; each message names its row."""
    pending = _pending("111", "wamid.A", "wamid.B", "wamid.C")
    result = await store.save(pending)
    assert result.inserted == _keys(pending)
    assert result.conflicts == frozenset()
    assert result.to_publish == tuple(p.event for p in pending)
    assert await _row_counts(store) == {("111", w): 1 for w in ("wamid.A", "wamid.B", "wamid.C")}
    assert await _outbox(store) == {p.event.event_id: (p.event.payload, False) for p in pending}
    assert await _outbox_rows(store) == {result.outbox_ids[0]: 3}
    assert len(result.outbox_ids) == 1
    async with store.engine.connect() as conn:
        named = (await conn.execute(sa.select(messages.c.outbox_id))).scalars().all()
    assert named == list(result.outbox_ids) * 3


async def test_a_save_of_new_and_stored_messages_boxes_only_the_new(store: Store) -> None:
    """The outbox row of a save holds the events of the messages it inserted, not those
    of its conflicts (their events are in their own rows: announcing them from this row
    too would announce them twice)."""
    first = await store.save(_pending("111", "wamid.A"))
    await store.mark_published(first.outbox_ids)
    mixed = _pending("111", "wamid.A", "wamid.B", offset=5)
    result = await store.save(mixed)
    assert result.inserted == {MessageKey("111", "wamid.B")}
    assert result.to_publish == (mixed[1].event,)
    assert await _outbox(store) == {mixed[1].event.event_id: (mixed[1].event.payload, False)}
    assert await _outbox_rows(store) == {result.outbox_ids[0]: 1}


async def test_a_large_batch_is_boxed_in_several_rows(
    store: Store, monkeypatch: MonkeyPatch
) -> None:
    """Past ROW_BYTES of events, a save starts another outbox row: whoever is handed
    rows holds a bounded amount. Each message names the row that holds its event."""
    pending = _pending("111", *(f"wamid.{i}" for i in range(7)))
    per_event = len(pending[0].event.payload) + len(pending[0].event.key)
    monkeypatch.setattr(outbox_module, "ROW_BYTES", per_event * 3)
    result = await store.save(pending)
    assert len(result.outbox_ids) == 3
    assert sorted((await _outbox_rows(store)).values()) == [1, 3, 3]
    async with store.engine.connect() as conn:
        named = dict(
            (await conn.execute(sa.select(messages.c.event_id, messages.c.outbox_id))).all()
        )
    async with store.engine.connect() as conn:
        boxes = (await conn.execute(sa.select(outbox.c.id, outbox.c.events))).all()
    for row_id, blob in boxes:
        assert {e.event_id for e in unpack_events(bytes(blob))} == {
            eid for eid, rid in named.items() if rid == row_id
        }
    assert await _outbox(store) == {p.event.event_id: (p.event.payload, False) for p in pending}


async def test_resave_is_conflict_and_returns_unpublished_outbox_bytes(store: Store) -> None:
    """A duplicate save inserts nothing and hands back the stored unpublished events verbatim
    (its outbox row, claimed), until mark_published."""
    first_at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    first = _pending("111", "wamid.A", "wamid.B", occurred_at=first_at)
    await store.save(first)

    # The redelivery builds its events anew (another occurred_at, other bytes)...
    again = _pending("111", "wamid.A", "wamid.B", offset=9)
    assert [p.event.payload for p in again] != [p.event.payload for p in first]
    result = await store.save(again)
    assert result.inserted == frozenset()
    assert result.conflicts == _keys(first)
    # ... but what is re-published is the outbox's copy: same event_id, same bytes.
    by_id = {e.event_id: e for e in result.to_publish}
    assert by_id == {p.event.event_id: p.event for p in first}
    assert await _row_counts(store) == {("111", "wamid.A"): 1, ("111", "wamid.B"): 1}
    (row_id,) = result.outbox_ids

    # A redelivery of B alone is handed the whole row: its events go out together.
    result = await store.save(again[1:])
    assert {e.event_id for e in result.to_publish} == {p.event.event_id for p in first}
    assert result.outbox_ids == (row_id,)

    await store.mark_published([row_id])
    result = await store.save(again)
    assert result.conflicts == _keys(first)
    assert result.to_publish == ()
    assert await _outbox(store) == {}, "published rows leave the outbox"
    assert await _row_counts(store) == {("111", "wamid.A"): 1, ("111", "wamid.B"): 1}


async def test_a_claim_holds_until_its_end_for_the_relay_and_a_worker_alike(store: Store) -> None:
    """The inserter's claim on its outbox rows holds until claimed_until on the database's
    clock, and is free after it, by the same rule for the relay and for a conflicting
    worker."""
    ttl = dt.timedelta(seconds=30)
    first = _pending("111", "wamid.A", "wamid.B")
    for p in first:  # a row each
        await store.save([p], Claim("w1", ttl))
    event_a, event_b = (p.event for p in first)
    again_b = _pending("111", "wamid.B", offset=9)

    await pass_time(store, 25)  # 5 s of the claim left
    relay = await store.claim_unpublished(claimant="relay", claim_for=ttl, limit=10)
    assert relay.events == ()
    worker = await store.save(again_b, Claim("w2", ttl))
    assert worker.to_publish == ()
    assert worker.in_flight == {MessageKey("111", "wamid.B")}

    await pass_time(store, 5)  # the claim's end
    worker = await store.save(again_b, Claim("w2", ttl))
    assert worker.to_publish == (event_b,)
    assert worker.in_flight == frozenset()
    relay = await store.claim_unpublished(claimant="relay", claim_for=ttl, limit=10)
    assert relay.events == (event_a,), "B is w2's now; only A is free"


async def test_claims_and_ages_are_the_databases_time(store: Store) -> None:
    """An outbox row's created_at and claimed_until come from the database's clock
    (claimed_until is exactly created_at + the claim on PostgreSQL, where both are the
    transaction's now()); the backlog's age is measured by that clock too (rule 12)."""
    ttl = dt.timedelta(seconds=45)
    await store.save(_pending("111", "wamid.A"), Claim("w1", ttl))
    async with store.engine.connect() as conn:
        created, until = (
            await conn.execute(sa.select(outbox.c.created_at, outbox.c.claimed_until))
        ).one()
        db_now = (await conn.execute(sa.select(store._now()))).scalar_one()
    if store.engine.dialect.name == "postgresql":
        assert until - created == ttl
    else:  # SQLite: two strftime('now') calls, milliseconds apart at most
        assert abs((until - created) - ttl) < dt.timedelta(seconds=1)
    assert abs(_naive(db_now) - _naive(created)) < dt.timedelta(seconds=5)
    count, age_s = await store.outbox_stats()
    assert count == 1
    assert 0 <= age_s < 5


def _naive(moment: dt.datetime) -> dt.datetime:
    """SQLite hands back naive UTC; PostgreSQL aware UTC."""
    return moment.replace(tzinfo=None) if moment.tzinfo else moment


async def test_announced_names_the_stored_messages_whose_events_are_out(store: Store) -> None:
    """announced() confirms a done marker: a key is announced when its row is stored and
    its outbox row is gone; a key without a row, or whose event is still in the outbox,
    is not. Same answer on both databases, for many keys at once (chunked on SQLite)."""
    out = _pending("111", *(f"wamid.out.{n}" for n in range(700)))
    boxed = _pending("111", "wamid.boxed")
    saved = await store.save(out)
    await store.mark_published(saved.outbox_ids)
    await store.save(boxed)
    missing = MessageKey("111", "wamid.never")
    other_tenant = MessageKey("222", "wamid.out.1")
    asked = [*_keys(out), *_keys(boxed), missing, other_tenant]

    assert await store.announced(asked) == _keys(out)
    assert await store.announced([]) == frozenset()


async def test_mixed_batch_inserts_new_and_reports_conflicts(store: Store) -> None:
    """A batch with one stored and one new key inserts only the new one; same wamid under
    another number is a new message."""
    await store.save(_pending("111", "wamid.A"))
    batch = _pending("111", "wamid.A", "wamid.N") + _pending("222", "wamid.A")
    result = await store.save(batch)
    assert result.inserted == {MessageKey("111", "wamid.N"), MessageKey("222", "wamid.A")}
    assert result.conflicts == {MessageKey("111", "wamid.A")}
    assert await _row_counts(store) == {
        ("111", "wamid.A"): 1,
        ("111", "wamid.N"): 1,
        ("222", "wamid.A"): 1,
    }


async def test_fence_constraint_exists_and_rejects_a_plain_duplicate(store: Store) -> None:
    """Migration creates the named unique constraint, and it rejects a second row for a key."""
    async with store.engine.connect() as conn:
        uniques = await conn.run_sync(lambda c: sa.inspect(c).get_unique_constraints("messages"))
    assert {u["name"]: sorted(u["column_names"]) for u in uniques}[FENCE] == [
        "phone_number_id",
        "source_id",
    ]

    (p,) = _pending("111", "wamid.A")
    await store.save([p])
    async with store.engine.connect() as conn:
        (row,) = (await conn.execute(sa.select(messages))).mappings().all()
        twin = {**row, "id": "00000000-0000-0000-0000-000000000000"}
        with pytest.raises(IntegrityError):
            await conn.execute(sa.insert(messages).values(twin))
        await conn.rollback()
    assert await _row_counts(store) == {("111", "wamid.A"): 1}


async def _table_names(url: str) -> set[str]:
    engine = create_engine(url, pool_size=1, timeout_s=10)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_alembic_upgrade_downgrade_upgrade(database_url: str) -> None:
    """Alembic: downgrade to base drops the schema, upgrade to head recreates it with the fence."""
    assert {"messages", "outbox"} <= await _table_names(database_url)
    await asyncio.to_thread(command.downgrade, migrate.alembic_config(database_url), "base")
    assert not {"messages", "outbox"} & await _table_names(database_url)
    await asyncio.to_thread(migrate.upgrade, database_url)
    assert {"messages", "outbox"} <= await _table_names(database_url)

    s = Store(create_engine(database_url, pool_size=1, timeout_s=10))
    try:
        async with s.engine.connect() as conn:
            uniques = await conn.run_sync(
                lambda c: sa.inspect(c).get_unique_constraints("messages")
            )
        assert FENCE in {u["name"] for u in uniques}
        pending = _pending("111", "wamid.A")
        assert (await s.save(pending)).inserted == _keys(pending)
        assert (await s.save(pending)).conflicts == _keys(pending)
    finally:
        await s.close()


CALLERS = 8
ROUNDS = 10
KEYS_PER_ROUND = 40
BATCH = 19  # caller i saves keys [3i, 3i + BATCH): neighbours overlap, together they cover all


@contextlib.asynccontextmanager
async def _racers(url: str) -> AsyncIterator[list[Store]]:
    """CALLERS stores of one connection each, every connection open before a race starts."""
    stores = [Store(create_engine(url, pool_size=1, timeout_s=30)) for _ in range(CALLERS)]
    try:
        for s in stores:
            async with s.engine.connect():
                pass
        yield stores
    finally:
        for s in stores:
            await s.close()


async def _race(
    stores: list[Store],
    rnd: int,
    wamids: list[str],
    now: dt.datetime,
    *,
    claim: bool = False,
    sibling_of: str = "",
) -> list[tuple[list[PendingMessage], SaveResult]]:
    """Caller i saves keys [3i, 3i + BATCH) of `wamids`, in an order of its own, all at once
    behind a barrier (with `claim`, as worker w<i> claiming for 60 s; with `sibling_of`,
    as running batches `<sibling_of>:<i + 1>` of one worker that may take back the claims
    of its ended batch `<sibling_of>:0`); none may fail."""
    barrier = asyncio.Barrier(len(stores))

    async def caller(i: int) -> tuple[list[PendingMessage], SaveResult | StoreError]:
        mine = wamids[3 * i : 3 * i + BATCH]
        random.Random(rnd * 100 + i).shuffle(mine)  # noqa: S311 - each caller its own order
        pending = _pending("111", *mine, offset=i, occurred_at=now)
        claimant = f"{sibling_of}:{i + 1}" if sibling_of else f"w{i}" if claim else ""
        reclaim = {f"{sibling_of}:0"} if sibling_of else set()
        claim_for = dt.timedelta(seconds=60 if claim or sibling_of else 0)
        await barrier.wait()
        try:
            saved = await stores[i].save(pending, Claim(claimant, claim_for, frozenset(reclaim)))
        except StoreError as exc:
            return pending, exc
        return pending, saved

    async with asyncio.timeout(60):
        outcomes = await asyncio.gather(*(caller(i) for i in range(len(stores))))
    failed = [
        f"caller {i}: {str(r).splitlines()[0]}"
        for i, (_, r) in enumerate(outcomes)
        if isinstance(r, StoreError)
    ]
    assert not failed, f"round {rnd}: a concurrent save failed: {failed}"
    return [(pending, r) for pending, r in outcomes if isinstance(r, SaveResult)]


async def test_concurrent_overlapping_saves_one_row_per_key(postgres_url: str) -> None:
    """8 engines saving overlapping batches (in different orders) at once on PostgreSQL all
    succeed, and each key is inserted exactly once: the fence holds without Redis."""
    async with _racers(postgres_url) as stores:
        expected: set[tuple[str, str]] = set()
        for rnd in range(ROUNDS):
            wamids = [f"wamid.r{rnd}.{k}" for k in range(KEYS_PER_ROUND)]
            expected |= {("111", w) for w in wamids}
            results = await _race(stores, rnd, wamids, dt.datetime.now(dt.UTC))
            for pending, r in results:
                assert r.inserted | r.conflicts == _keys(pending)
                assert not r.inserted & r.conflicts
            inserted = [k for _, r in results for k in r.inserted]
            assert len(inserted) == len(set(inserted)), "a key was inserted by two callers"
            assert set(inserted) == {MessageKey("111", w) for w in wamids}
        counts = await _row_counts(stores[0])
        assert counts == dict.fromkeys(expected, 1)
        assert len(await _outbox(stores[0])) == len(expected)


async def test_a_batch_of_conflicts_is_looked_up_in_one_statement(postgres_url: str) -> None:
    """On PostgreSQL the conflicting keys of a save are looked up with one array-bound
    statement, whatever their number, and all are found. (A row-value IN list in chunks
    of 450 keys took 300 ms a chunk on a table that had just grown under one phone
    number: the planner read every row of the number and tested it against the list.)"""
    store = Store(create_engine(postgres_url, pool_size=2, timeout_s=30))
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement)

    try:
        pending = [
            p for i in range(3) for p in _pending("111", *(f"w.{i}.{n}" for n in range(700)))
        ]
        first = await store.save(pending)
        sa.event.listen(store.engine.sync_engine, "before_cursor_execute", seen)
        again = await store.save(pending)
        assert again.conflicts == _keys(pending)
        assert again.outbox_ids == first.outbox_ids, "the unannounced row is handed back"
        lookups = [s for s in statements if "messages" in s and "outbox_id IS NOT NULL" in s]
        assert len(lookups) == 1, statements
    finally:
        await store.close()


async def _hold_row_lock(store: Store, row_id: str) -> AsyncConnection:
    """Another transaction holding the row lock of one outbox row, until rolled back."""
    conn = await store.engine.connect()
    await conn.begin()
    stmt = sa.select(outbox.c.id).where(outbox.c.id == row_id).with_for_update()
    assert (await conn.execute(stmt)).scalar_one() == row_id
    return conn


async def test_a_save_skips_an_outbox_row_locked_elsewhere_instead_of_waiting(
    postgres_url: str,
) -> None:
    """A conflicting save does not wait on an unpublished row that another transaction has
    locked (a relay or worker claiming it): it hands that key back in flight, "not yet", and
    claims the rest. A save that waited while holding its other claims could deadlock with
    another save doing the same in a different order."""
    store = Store(create_engine(postgres_url, pool_size=2, timeout_s=10))
    try:
        now = dt.datetime.now(dt.UTC)
        pending = _pending("111", "wamid.A", "wamid.B", occurred_at=now)
        locked, free = pending
        # Stored in a row each, never published, claimed by nobody.
        (locked_row,) = (await store.save([locked])).outbox_ids
        await store.save([free])
        holder = await _hold_row_lock(store, locked_row)
        try:
            async with asyncio.timeout(5):
                saved = await store.save(pending, Claim("w1:1", dt.timedelta(seconds=60)))
        finally:
            await holder.rollback()
            await holder.close()
        assert saved.conflicts == _keys(pending)
        assert saved.to_publish == (free.event,)
        assert saved.in_flight == {locked.message.key}
        # Once the lock is gone the row is free again, and the other row is the ended
        # batch w1:1's, ours to take back.
        again = await store.save(
            pending, Claim("w1:2", dt.timedelta(seconds=60), frozenset({"w1:1"}))
        )
        assert {e.event_id for e in again.to_publish} == {p.event.event_id for p in pending}
        assert again.in_flight == frozenset()
    finally:
        await store.close()


async def _lock_waiters(store: Store) -> int:
    stmt = sa.text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with store.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


@pytest.mark.parametrize("operation", ["mark_published", "release_claims"])
async def test_outbox_rows_are_locked_in_id_order(postgres_url: str, operation: str) -> None:
    """Deleting or releasing a set of outbox rows locks them in id order, whatever order
    the rows lie in on disk: two such statements over overlapping rows then cannot
    deadlock. The rows are written in descending id order, so a statement that locks in
    scan order takes the last id first; with the smallest id held elsewhere it must
    instead block before it locks anything else."""
    store = Store(create_engine(postgres_url, pool_size=4, timeout_s=10))
    try:
        now = dt.datetime.now(dt.UTC)
        pending = _pending("111", *(f"wamid.L{k}" for k in range(6)), occurred_at=now)
        for p in pending:  # a row each
            await store.save([p], Claim("w1", dt.timedelta(seconds=60)))
        async with store.engine.begin() as conn:  # rewritten in descending id order
            rows = (await conn.execute(sa.select(outbox))).mappings().all()
            await conn.execute(sa.delete(outbox))
        for row in sorted(rows, key=lambda r: r["id"], reverse=True):
            async with store.engine.begin() as conn:  # one transaction each
                await conn.execute(sa.insert(outbox).values(dict(row)))
        ids = [r["id"] for r in rows]
        smallest, largest = min(ids), max(ids)
        holder = await _hold_row_lock(store, smallest)
        if operation == "mark_published":
            blocked = asyncio.create_task(store.mark_published(ids))
        else:
            blocked = asyncio.create_task(store.release_claims(ids, "w1"))
        try:
            async with asyncio.timeout(10):
                while await _lock_waiters(store) == 0:
                    assert not blocked.done(), "the statement did not wait for the held row"
                    await asyncio.sleep(0.02)
            async with store.engine.connect() as conn:  # NOWAIT: fails if it is locked
                probe = sa.select(outbox.c.id).where(outbox.c.id == largest)
                await conn.execute(probe.with_for_update(nowait=True))
                await conn.rollback()
        finally:
            await holder.rollback()
            await holder.close()
            async with asyncio.timeout(10):
                await blocked
        async with store.engine.connect() as conn:
            left = (await conn.execute(sa.select(outbox.c.id, outbox.c.claimed_by))).all()
        if operation == "mark_published":
            assert left == []
        else:
            assert sorted(left) == [(i, None) for i in sorted(ids)]
    finally:
        await store.close()


async def test_the_outbox_delete_is_one_statement_without_a_transaction(
    postgres_url: str,
) -> None:
    """On PostgreSQL marking rows published is one DELETE sent on its own (atomic by
    itself): no BEGIN and COMMIT around it, two round trips fewer after every batch. The
    pool's connection goes back as it was: the next save on it is a transaction again."""
    store = Store(create_engine(postgres_url, pool_size=1, timeout_s=10))
    seen: list[tuple[str, bool]] = []

    def after(conn: sa.Connection, _cursor: object, statement: str, *_rest: object) -> None:
        driver = conn.connection.driver_connection
        assert driver is not None
        seen.append((statement.split()[0], driver.is_in_transaction()))

    try:
        first = await store.save(_pending("111", "wamid.A", "wamid.B"))
        sa.event.listen(store.engine.sync_engine, "after_cursor_execute", after)
        await store.mark_published(first.outbox_ids)
        await store.save(_pending("111", "wamid.C"))
        assert seen[0] == ("DELETE", False), seen
        assert [s for s in seen[1:] if s[0] == "INSERT"], seen
        assert all(in_transaction for _, in_transaction in seen[1:]), seen
        assert await _outbox_rows(store) != {}, "the second save's row is there"
        assert not set(first.outbox_ids) & set(await _outbox_rows(store))
    finally:
        await store.close()


CLAIM_ROUNDS = 12


async def test_concurrent_conflicting_saves_hand_each_unpublished_event_to_one(
    postgres_url: str,
) -> None:
    """8 workers re-saving overlapping sets of stored keys whose events were never published
    (a crash after COMMIT, or Redis down so only the fence is left) race to claim the same
    outbox rows (the events were stored five to a row). None may fail (a deadlock is a
    failed batch) and each row, with all its events, goes to exactly one of them to
    publish; the others are told it is in flight."""
    async with _racers(postgres_url) as stores:
        for rnd in range(CLAIM_ROUNDS):
            wamids = [f"wamid.c{rnd}.{k}" for k in range(KEYS_PER_ROUND)]
            now = dt.datetime.now(dt.UTC)
            stored = _pending("111", *wamids, occurred_at=now)
            # Unclaimed: free for anyone.
            firsts = [await stores[0].save(stored[i : i + 5]) for i in range(0, len(stored), 5)]
            assert sum(len(f.inserted) for f in firsts) == KEYS_PER_ROUND
            handed: collections.Counter[str] = collections.Counter()
            for pending, r in await _race(stores, rnd, wamids, now, claim=True):
                assert r.conflicts == _keys(pending)
                assert not r.inserted
                ids = {e.event_id for e in r.to_publish}
                handed.update(ids)
                for p in pending:  # each key: ours to publish, or in flight elsewhere
                    assert (p.event.event_id in ids) != (p.message.key in r.in_flight)
            assert set(handed) == {e.event_id for f in firsts for e in f.to_publish}
            assert set(handed.values()) == {1}, "an event was handed to two workers"


async def test_overlapping_batches_of_one_worker_take_an_ended_batchs_row_once(
    postgres_url: str,
) -> None:
    """A batch whose COMMIT answer was lost (it ended, its rows stay claimed by it) is
    redelivered in several overlapping batches of the same worker, running at once. Each
    may take the ended batch's rows back at once, but each row, with all its events, goes
    to exactly one of them; the others are told it is in flight. (Were "ours" the worker
    rather than the ended batch, every one of them would publish the rows it meets.)"""
    async with _racers(postgres_url) as stores:
        for rnd in range(CLAIM_ROUNDS):
            wamids = [f"wamid.s{rnd}.{k}" for k in range(KEYS_PER_ROUND)]
            now = dt.datetime.now(dt.UTC)
            stored = _pending("111", *wamids, occurred_at=now)
            claim = dt.timedelta(seconds=60)
            firsts = [
                await stores[0].save(stored[i : i + 10], Claim("w:0", claim))
                for i in range(0, len(stored), 10)
            ]
            assert sum(len(f.inserted) for f in firsts) == KEYS_PER_ROUND
            handed: collections.Counter[str] = collections.Counter()
            for pending, r in await _race(stores, rnd, wamids, now, sibling_of="w"):
                assert r.conflicts == _keys(pending)
                ids = {e.event_id for e in r.to_publish}
                handed.update(ids)
                for p in pending:
                    assert (p.event.event_id in ids) != (p.message.key in r.in_flight)
            assert set(handed) == {e.event_id for f in firsts for e in f.to_publish}
            assert set(handed.values()) == {1}, "two batches of one worker took one row"


_OUTBOX_0003 = sa.table(
    "outbox",
    *(sa.column(c) for c in ("event_id", "message_id", "phone_number_id", "source_id", "topic")),
    sa.column("key", sa.LargeBinary),
    sa.column("payload", sa.LargeBinary),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
_MESSAGES_0003 = sa.table(
    "messages",
    *(sa.column(c.name, c.type) for c in messages.c if c.name != "outbox_id"),
)


async def test_the_upgrade_to_rows_per_batch_keeps_what_is_unannounced(database_url: str) -> None:
    """Revision 0004 on a database of 0003 with announced and unannounced messages: each
    unpublished per-message row becomes a row of one event, its message points at it, and
    a redelivery and the relay announce those events with the bytes stored, once; an
    announced message stays announced. The downgrade turns rows of several events back
    into rows of one, with their messages."""
    cfg = migrate.alembic_config(database_url)
    await asyncio.to_thread(command.downgrade, cfg, "0003")
    before = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    announced, redelivered, abandoned = _pending("111", "wamid.A", "wamid.B", "wamid.C")
    engine = create_engine(database_url, pool_size=1, timeout_s=10)
    try:
        async with engine.begin() as conn:  # as 0003's code wrote them
            for p in (announced, redelivered, abandoned):
                row = store_module._message_row(p, "")
                del row["outbox_id"]
                await conn.execute(sa.insert(_MESSAGES_0003).values(**row, created_at=before))
            for p in (redelivered, abandoned):  # A's row was deleted when it was announced
                await conn.execute(
                    sa.insert(_OUTBOX_0003).values(
                        event_id=p.event.event_id,
                        message_id=p.message.key.message_id,
                        phone_number_id=p.message.key.phone_number_id,
                        source_id=p.message.key.wamid,
                        topic=p.event.topic,
                        key=p.event.key,
                        payload=p.event.payload,
                        created_at=before,
                    )
                )
    finally:
        await engine.dispose()
    await asyncio.to_thread(migrate.upgrade, database_url)

    s = Store(create_engine(database_url, pool_size=1, timeout_s=10))
    try:
        count, _age = await s.outbox_stats()
        assert count == 2
        again = _pending("111", "wamid.A", "wamid.B", offset=7)
        saved = await s.save(again, Claim("w1", dt.timedelta(seconds=60)))
        assert saved.conflicts == _keys(again)
        assert saved.to_publish == (redelivered.event,), "B's stored bytes; A is announced"
        assert saved.outbox_ids == (redelivered.event.event_id,)
        relay = await s.claim_unpublished(
            claimant="relay", claim_for=dt.timedelta(seconds=60), limit=10
        )
        assert relay.events == (abandoned.event,)
        # A batch of two after the upgrade, then back to 0003: rows of one event each.
        later = _pending("111", "wamid.D", "wamid.E")
        await s.save(later)
    finally:
        await s.close()
    await asyncio.to_thread(command.downgrade, cfg, "0003")
    engine = create_engine(database_url, pool_size=1, timeout_s=10)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(_OUTBOX_0003))).all()
    finally:
        await engine.dispose()
    expected = {p.event.event_id: p for p in (redelivered, abandoned, *later)}
    assert {r.event_id for r in rows} == set(expected)
    for r in rows:
        p = expected[r.event_id]
        assert (r.message_id, r.phone_number_id, r.source_id) == (
            p.message.key.message_id,
            p.message.key.phone_number_id,
            p.message.key.wamid,
        )
        assert (r.topic, bytes(r.key), bytes(r.payload)) == (
            p.event.topic,
            p.event.key,
            p.event.payload,
        )
    await asyncio.to_thread(migrate.upgrade, database_url)


async def _identity(engine: AsyncEngine) -> tuple[list[str], str | None]:
    """The primary key's columns of messages, and (PostgreSQL) its replica identity."""
    async with engine.connect() as conn:
        pk = await conn.run_sync(lambda c: sa.inspect(c).get_pk_constraint("messages"))
        replica = None
        if engine.dialect.name == "postgresql":
            stmt = sa.text("SELECT relreplident::text FROM pg_class WHERE relname = 'messages'")
            replica = (await conn.execute(stmt)).scalar_one()
    return list(pk["constrained_columns"]), replica


async def test_the_fence_is_the_only_unique_index_and_the_downgrade_restores_the_key(
    database_url: str,
) -> None:
    """Revision 0005 drops the surrogate primary key of messages (its uniqueness follows
    from the fence's) and, on PostgreSQL, makes the fence's index the replica identity;
    the stored rows stay and stay fenced. Its downgrade builds the key again; code of
    either revision stores and fences on a database of the other."""
    cfg = migrate.alembic_config(database_url)
    pg = database_url.startswith("postgresql")
    s = Store(create_engine(database_url, pool_size=1, timeout_s=10))
    try:
        assert await _identity(s.engine) == ([], "i" if pg else None)
        first = _pending("111", "wamid.A", "wamid.B")
        assert (await s.save(first)).inserted == _keys(first)
        await asyncio.to_thread(command.downgrade, cfg, "0004")
        assert await _identity(s.engine) == (["id"], "d" if pg else None)
        assert (await s.save(first)).conflicts == _keys(first)
        second = _pending("111", "wamid.B", "wamid.C", offset=3)
        saved = await s.save(second)
        assert (saved.inserted, saved.conflicts) == (
            _keys(second[1:]),
            _keys(second[:1]),
        )
        await asyncio.to_thread(migrate.upgrade, database_url)
        assert await _identity(s.engine) == ([], "i" if pg else None)
        assert (await s.save(first + second)).conflicts == _keys(first + second)
        assert await _row_counts(s) == dict.fromkeys(
            [("111", "wamid.A"), ("111", "wamid.B"), ("111", "wamid.C")], 1
        )
        async with s.engine.connect() as conn:
            ids = (await conn.execute(sa.select(messages.c.id, messages.c.source_id))).all()
        assert {i for i, _ in ids} == {MessageKey("111", w).message_id for _, w in ids}
    finally:
        await s.close()


async def test_warm_prepares_the_save_on_every_pool_connection_and_writes_nothing(
    postgres_url: str,
) -> None:
    """A member warms its pool at start (docs/operations.md): each of the pool's
    connections is open and has the messages insert and the outbox insert prepared, so
    a first batch does not pay for them; nothing is left behind."""
    size = 3
    store = Store(create_engine(postgres_url, pool_size=size, timeout_s=10))
    try:
        await store.warm(size, claim_for=dt.timedelta(seconds=30))
        assert store.engine.pool.checkedin() == size  # type: ignore[attr-defined]
        conns = [await store.engine.connect() for _ in range(size)]
        try:
            for conn in conns:
                prepared = (
                    await conn.execute(sa.text("SELECT statement FROM pg_prepared_statements"))
                ).scalars()
                text = " ".join(prepared).lower()
                assert "insert into messages" in text
                assert "insert into outbox" in text
        finally:
            for conn in conns:
                await conn.close()
        assert store.engine.pool.checkedin() == size  # type: ignore[attr-defined]
        assert not await _row_counts(store)
        assert not await _outbox_rows(store)
    finally:
        await store.close()


async def test_warm_skips_sqlite(sqlite_url: str) -> None:
    store = Store(create_engine(sqlite_url, pool_size=1, timeout_s=10))
    try:
        await store.warm(3, claim_for=dt.timedelta(seconds=30))
        assert not await _outbox_rows(store)
    finally:
        await store.close()


async def _backend_pid(store: Store) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one())


async def _terminate(url: str, pid: int) -> None:
    """End the backend `pid` and wait until it has exited (PostgreSQL 14+), so that the
    pooled connection is closed before the caller uses it, not after a guessed sleep."""
    other = create_engine(url, pool_size=1, timeout_s=10)
    try:
        async with other.connect() as conn:
            ended = await conn.execute(
                sa.text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid}
            )
            assert ended.scalar_one() is True
    finally:
        await other.dispose()


async def test_a_connection_idle_past_the_ping_threshold_is_pinged_and_replaced(
    postgres_url: str, monkeypatch: MonkeyPatch
) -> None:
    """The database closed a pooled connection while it sat idle (a restart, a proxy's
    idle timeout): the next checkout pings it, and hands out a new one instead."""
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_S", 0.0)
    store = Store(create_engine(postgres_url, pool_size=1, timeout_s=10))
    try:
        first = await _backend_pid(store)
        await _terminate(postgres_url, first)
        assert await _backend_pid(store) != first  # no error: replaced at checkout
    finally:
        await store.close()


async def test_a_connection_used_moments_ago_is_not_pinged(
    postgres_url: str, monkeypatch: MonkeyPatch
) -> None:
    """Under load no checkout pays a ping (three round trips on asyncpg): a connection
    that broke within PING_AFTER_IDLE_S fails its statement once (the batch is retried),
    and the pool replaces it for the next."""
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_S", 3600.0)
    store = Store(create_engine(postgres_url, pool_size=1, timeout_s=10))
    try:
        first = await _backend_pid(store)
        await _terminate(postgres_url, first)
        with pytest.raises(sa.exc.DBAPIError):
            await _backend_pid(store)
        assert await _backend_pid(store) != first
    finally:
        await store.close()
