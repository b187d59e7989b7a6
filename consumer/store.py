"""The database: the authority on "stored exactly once" (docs/design.md, rule 1).

One transaction per batch writes the messages with ``INSERT ... ON CONFLICT DO NOTHING
RETURNING`` (the fence: ``UNIQUE (phone_number_id, source_id)``) and, for the rows it
really inserted, one outbox row holding the exact ``message_created`` bytes of all their
events (a very large batch gets a few rows: :func:`consumer.outbox.assign_rows`). Each
message row names the outbox row that announces it (``messages.outbox_id``). A
conflicting key is a duplicate; if its outbox row was never published (a crash between
commit and publish, or a commit whose answer was lost), the row is handed back to be
published again, with the same event ids and bytes.

An outbox row is published, marked and claimed as a whole: whoever is handed a row
publishes all its events and then marks (deletes) or releases the row by its id.

Failures come out in two classes (rule 10): :class:`UnstorableError` when the database
refused the data (SQLSTATE classes 22 data exception, 23 integrity, 54 program limit; a
value the driver or a column encoder would not take), which retrying cannot help; and
:class:`StoreError` for everything else (connection, timeout, shutdown, lock), which
waiting can. Neither message carries the statement or its parameters: they hold message
bodies and phone numbers, and end up in logs.

Every time compared across workers (outbox claims, the age of the oldest unpublished
event) is the database's own (rule 12): a worker's clock never meets another's.

The tables are in :mod:`consumer.schema`, the engine in :mod:`consumer.engine`, the
outbox row's byte format in :mod:`consumer.outbox`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import sqlite3
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from consumer import statuses as status_rules
from consumer.engine import create_engine, json_dumps
from consumer.errors import StoreError, UnstorableError
from consumer.events import OutboundEvent, status_order
from consumer.outbox import assign_rows, pack_events, unpack_events
from consumer.ports import (
    UNCLAIMED,
    Claim,
    OutboxClaim,
    PendingMessage,
    PendingStatus,
    SaveResult,
)
from consumer.records import ItemKey, MessageKey, StatusKey
from consumer.schema import TS, message_state, messages, outbox
from consumer.schema import statuses as statuses_table

# Rows a conflicting save claims at most (each may hold a batch of other messages).
_CONFLICT_ROWS = 8


class Store:
    """Batch writes and outbox bookkeeping over one engine.

    `after_insert`, if given, runs inside a save's transaction after its writes, before
    the commit: the crash tests' ``after_insert`` point (:mod:`consumer.crashpoints`)."""

    def __init__(
        self, engine: AsyncEngine, *, after_insert: Callable[[], None] | None = None
    ) -> None:
        self._engine = engine
        self._after_insert = after_insert
        self._sqlite = engine.dialect.name == "sqlite"
        # The same pool, for one-statement writes that need no transaction around them:
        # a statement is atomic by itself, and BEGIN and COMMIT would be two more round
        # trips (on asyncpg the mode is a flag of the driver's connection, set and reset
        # at checkout and checkin without a round trip).
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._insert = sqlite.insert if self._sqlite else postgresql.insert

    @classmethod
    def open(
        cls,
        url: str,
        *,
        pool_size: int,
        timeout_s: float,
        after_insert: Callable[[], None] | None = None,
    ) -> Store:
        """A Store over a new engine for `url` (:func:`consumer.engine.create_engine`)."""
        engine = create_engine(url, pool_size=pool_size, timeout_s=timeout_s)
        return cls(engine, after_insert=after_insert)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def save(
        self,
        pending: Sequence[PendingMessage],
        claim: Claim = UNCLAIMED,
        statuses: Sequence[PendingStatus] = (),
    ) -> SaveResult:
        """Insert messages and the outbox row of their events in one transaction (the
        fence).

        The new outbox row is claimed by ``claim.claimant`` (the batch) for
        ``claim.claim_for``: the inserter is about to publish it, so neither the relay
        nor another batch's conflicting insert publishes it meanwhile. A conflict whose
        unpublished row is still claimed comes back in `in_flight` ("not yet", rule 5);
        one whose claim ran out (the inserter died), or whose claimant is in
        ``claim.reclaim`` (batches of the caller that ended without publishing, such as
        one whose COMMIT answer was lost), is claimed for the claimant, and all the
        events of its row come back in `to_publish`.

        Raises :class:`UnstorableError` if the database refused the data (nothing is
        committed), :class:`StoreError` if it failed otherwise.
        """
        if not pending and not statuses:
            return SaveResult(frozenset(), frozenset(), (), ())
        # One row per key, in key order: concurrent batches that overlap then take their
        # row locks in the same order and cannot deadlock each other on PostgreSQL.
        by_key = {p.message.key: p for p in pending}
        by_key = {k: by_key[k] for k in sorted(by_key)}  # (phone_number_id, wamid) order
        rows = list(by_key.values())
        by_status: dict[StatusKey, PendingStatus] = {}
        for s in statuses:
            by_status.setdefault(s.update.key, s)
        # A message's statuses in the order's order: its events are assigned rows (and
        # published) in that order, even across the rows of a large batch.
        updates = [by_status[k] for k in sorted(by_status, key=_in_order)]
        row_ids = assign_rows([*rows, *updates])
        message_rows, status_rows = row_ids[: len(rows)], row_ids[len(rows) :]
        try:
            async with self._engine.begin() as conn:
                inserted: frozenset[ItemKey] = await self._messages(conn, rows, message_rows)
                new: list[tuple[str, OutboundEvent, ItemKey]] = [
                    (row_ids[i], p.event, p.message.key)
                    for i, p in enumerate(rows)
                    if p.message.key in inserted
                ]
                saved = _SavedStatuses(frozenset(), frozenset(), [], "", [])
                if updates:
                    saved = await self._save_statuses(conn, updates, status_rows)
                    inserted |= saved.inserted
                    new += saved.announced
                await self._insert_outbox(conn, [(r, e) for r, e, _ in new], claim)
                if saved.waiting:  # its own row, unclaimed: published once it may be
                    held_row = [(saved.waiting_row, e) for _, e, _ in saved.waiting]
                    await self._insert_outbox(conn, held_row, UNCLAIMED)
                conflicts = (frozenset(by_key) | frozenset(by_status)) - inserted
                claimed, in_flight, row_of = await self._unpublished(conn, sorted(conflicts), claim)
                in_flight |= {k for _, _, k in saved.waiting}
                # A row of a conflict holding a status event whose message has a lower
                # one in another row still there waits too (unclaimed again).
                held = await self._held_back(conn, claimed)
                if held:
                    await self._unclaim(conn, sorted(held))
                    in_flight |= {k for k, r in row_of.items() if r in held}
                publish: dict[str, list[OutboundEvent]] = {}
                for r, e, _ in new:
                    publish.setdefault(r, []).append(e)
                publish.update((r, events) for r, events in claimed.items() if r not in held)
                if self._after_insert is not None:
                    self._after_insert()
        except (SQLAlchemyError, OSError) as exc:
            raise _translate(exc, f"storing {len(by_key) + len(by_status)} item(s)") from exc
        return SaveResult(
            inserted,
            conflicts,
            tuple(e for events in publish.values() for e in events),
            tuple(publish),
            frozenset(in_flight),
            saved.stale,
        )

    async def _messages(
        self, conn: AsyncConnection, rows: list[PendingMessage], row_ids: list[str]
    ) -> frozenset[ItemKey]:
        """Insert the messages (ON CONFLICT DO NOTHING); the keys inserted."""
        if not rows:
            return frozenset()
        if self._sqlite:
            return await self._insert_messages(conn, rows, row_ids)
        return await _insert_pg(conn, rows, row_ids)

    async def _save_statuses(
        self, conn: AsyncConnection, updates: list[PendingStatus], row_ids: list[str]
    ) -> _SavedStatuses:
        """The status updates of a save (one per key, in key order), in two statements:

        1. each message's state moves to the highest known status of the batch, only
           forward (``INSERT ... ON CONFLICT DO UPDATE ... WHERE rank < excluded.rank``,
           the row locked until the commit, so members and overlapping batches take
           turns), returning where it moved from;
        2. every status into the fence (``ON CONFLICT DO NOTHING RETURNING``), each
           marked ``announced`` (above where its message's state was: it moved it; or a
           word Meta may add) or ``stale``.

        Within one batch a message's statuses are taken in the order's order: ``read``
        and ``delivered`` together, from ``sent``, announce both. A status that is a
        duplicate can never be above the state (its first copy moved the state at least
        to it), so the fence's answer cannot contradict the state's."""
        highest: dict[tuple[str, str], PendingStatus] = {}
        for p in updates:
            rank = status_rules.rank(p.update.key.status)
            if rank is None:
                continue
            mine = highest.get(p.update.key.message)
            if mine is None or rank > (status_rules.rank(mine.update.key.status) or 0):
                highest[p.update.key.message] = p
        moved = await self._move_states(conn, [highest[m] for m in sorted(highest)])
        announce: list[bool] = []
        for p in updates:
            rank = status_rules.rank(p.update.key.status)
            if rank is None:
                announce.append(True)
            else:
                before = moved.get(p.update.key.message)
                announce.append(before is not None and rank > before)
        waiting = await self._waiting(
            conn, [p.update.key for i, p in enumerate(updates) if announce[i]]
        )
        waiting_row = str(uuid.uuid4()) if waiting else ""
        rows = [
            waiting_row if p.update.key.message in waiting else r
            for p, r in zip(updates, row_ids, strict=True)
        ]
        inserted = await self._insert_statuses(conn, updates, rows, announce)
        events = [
            (rows[i], p.event, p.update.key)
            for i, p in enumerate(updates)
            if announce[i] and p.update.key in inserted
        ]
        return _SavedStatuses(
            inserted,
            frozenset(p.update.key for i, p in enumerate(updates) if not announce[i]) & inserted,
            [e for e in events if e[0] != waiting_row],
            waiting_row,
            [e for e in events if e[0] == waiting_row],
        )

    async def _waiting(
        self, conn: AsyncConnection, announced: list[StatusKey]
    ) -> set[tuple[str, str]]:
        """The messages of these statuses (about to be announced) that have a lower
        status event in an outbox row still there (not yet acknowledged): announced now,
        theirs could reach the topic before it. Such a message's new events wait in a
        row of their own (docs/design.md, "Statuses"). The earlier event was committed
        before this transaction moved the state (the state row orders them), so it is
        visible; this save's own rows are not inserted yet, and its events of one
        message are published in order anyway."""
        ranked = [(k, rank) for k in announced if (rank := status_rules.rank(k.status))]
        if not ranked:
            return set()
        lowest: dict[tuple[str, str], int] = {}
        for k, rank in ranked:
            lowest[k.message] = min(rank, lowest.get(k.message, rank))
        found = await self._pending_ranks(conn, sorted(lowest))
        return {m for m, rank in lowest.items() if any(r < rank for r, _ in found.get(m, ()))}

    async def _pending_ranks(
        self, conn: AsyncConnection, messages_: list[tuple[str, str]]
    ) -> dict[tuple[str, str], list[tuple[int, str]]]:
        """For each of these messages, the (rank, outbox row) of its status events still
        in the outbox (not yet acknowledged); one row-value IN list per chunk, through
        the fence's key."""
        t = statuses_table
        found: dict[tuple[str, str], list[tuple[int, str]]] = {}
        if not self._sqlite:
            arrays = {
                "phone_number_id": [m[0] for m in messages_],
                "status_id": [m[1] for m in messages_],
            }
            for r in (await conn.execute(_PENDING_RANKS_PG, arrays)).all():
                found.setdefault((r[0], r[1]), []).append((r[2], r[3]))
            return found
        pair = sa.tuple_(t.c.phone_number_id, t.c.status_id)
        for chunk in _chunks(messages_, _CHUNK // 2):
            q = (
                sa.select(t.c.phone_number_id, t.c.status_id, t.c.rank, t.c.outbox_id)
                .select_from(t.join(outbox, outbox.c.id == t.c.outbox_id))
                .where(pair.in_(chunk), t.c.rank.is_not(None))
            )
            for r in (await conn.execute(q)).all():
                found.setdefault((r[0], r[1]), []).append((r[2], r[3]))
        return found

    async def _move_states(
        self, conn: AsyncConnection, highest: list[PendingStatus]
    ) -> dict[tuple[str, str], int]:
        """Move each message's state to its status in `highest`, where that is forward;
        return, for each message moved, the rank it moved from (0: no state before)."""
        if not highest:
            return {}
        if not self._sqlite:
            arrays: dict[str, list[Any]] = {
                "phone_number_id": [p.update.key.phone_number_id for p in highest],
                "status_id": [p.update.key.status_id for p in highest],
                "status": [p.update.key.status for p in highest],
                "rank": [status_rules.rank(p.update.key.status) for p in highest],
            }
            moved = (await conn.execute(_MOVE_STATES_PG, arrays)).all()
            return {(r[0], r[1]): status_rules.rank(r[2] or "") or 0 for r in moved}
        insert = self._insert(message_state).values(updated_at=self._now())
        stmt = insert.on_conflict_do_update(
            index_elements=[message_state.c.phone_number_id, message_state.c.status_id],
            set_={
                "status": insert.excluded.status,
                "rank": insert.excluded.rank,
                "previous_status": message_state.c.status,
                "updated_at": self._now(),
            },
            where=message_state.c.rank < insert.excluded.rank,
        ).returning(
            message_state.c.phone_number_id,
            message_state.c.status_id,
            message_state.c.previous_status,
        )
        params = [
            {
                "phone_number_id": p.update.key.phone_number_id,
                "status_id": p.update.key.status_id,
                "status": p.update.key.status,
                "rank": status_rules.rank(p.update.key.status),
                "previous_status": None,
            }
            for p in highest
        ]
        found = (await conn.execute(stmt, params)).all()
        return {(r[0], r[1]): status_rules.rank(r[2] or "") or 0 for r in found}

    async def _insert_statuses(
        self,
        conn: AsyncConnection,
        updates: list[PendingStatus],
        row_ids: list[str],
        announce: list[bool],
    ) -> frozenset[StatusKey]:
        params = [
            _status_row(p, row_id if announced else None, announced)
            for p, row_id, announced in zip(updates, row_ids, announce, strict=True)
        ]
        if not self._sqlite:  # one statement, each column one array parameter
            columns: dict[str, list[Any]] = {name: [] for name in _STATUS_COLUMNS}
            for row in params:
                row["raw"] = json_dumps(row["raw"])
                for name in _STATUS_COLUMNS:
                    columns[name].append(row[name])
            found = (await conn.execute(_INSERT_STATUSES_PG, columns)).all()
            return frozenset(StatusKey(r[0], r[1], r[2]) for r in found)
        stmt = (
            self._insert(statuses_table)
            .values(created_at=self._now())
            .on_conflict_do_nothing()
            .returning(
                statuses_table.c.phone_number_id,
                statuses_table.c.status_id,
                statuses_table.c.status,
            )
        )
        rows = (await conn.execute(stmt, params)).all()
        return frozenset(StatusKey(r[0], r[1], r[2]) for r in rows)

    async def _held_back(
        self, conn: AsyncConnection, rows: dict[str, list[OutboundEvent]]
    ) -> set[str]:
        """The outbox rows of `rows` (stored before: a conflict's, or the relay's) that
        must wait: one holding a status event of a message whose lower status event is
        in another outbox row still there (not yet announced). It is announced after
        (docs/design.md, "Statuses")."""
        wanted: list[tuple[str, str, int, str]] = []
        for row_id, row_events in rows.items():
            for e in row_events:
                order = status_order(e)
                if order is not None:
                    wanted.append((*order, row_id))
        if not wanted:
            return set()
        lower = await self._pending_ranks(conn, sorted({(w[0], w[1]) for w in wanted}))
        return {
            row_id
            for pnid, status_id, rank, row_id in wanted
            if any(r < rank and other != row_id for r, other in lower.get((pnid, status_id), ()))
        }

    async def _unclaim(self, conn: AsyncConnection, row_ids: list[str]) -> None:
        """Leave these rows unclaimed: held back, they are published by whoever meets
        them next (the retry of their records, or a relay)."""
        for chunk in _chunks(row_ids):
            await conn.execute(
                sa.update(outbox)
                .where(outbox.c.id.in_(chunk))
                .values(claimed_by=None, claimed_until=None)
            )

    async def mark_published(self, outbox_ids: Sequence[str]) -> None:
        """Record that all the events of these outbox rows reached the outbound topic:
        the rows are done, and leave the outbox (which so holds exactly the events not
        yet announced; a delete is also cheaper for the database than an update of an
        indexed row)."""
        if not outbox_ids:
            return
        try:
            if not self._sqlite:  # one statement, the ids as one array parameter
                async with self._autocommit.connect() as conn:
                    await conn.execute(_DELETE_PG, {"ids": list(outbox_ids)})
                return
            async with self._engine.begin() as conn:
                for chunk in _chunks(sorted(outbox_ids)):
                    await conn.execute(
                        sa.delete(outbox).where(outbox.c.id.in_(_locked_in_order(chunk)))
                    )
        except (SQLAlchemyError, OSError) as exc:
            raise _failed(exc, f"marking {len(outbox_ids)} outbox row(s) published") from exc

    async def announced(self, keys: Collection[ItemKey]) -> frozenset[ItemKey]:
        """Which of these messages and status updates are stored and announced (a row
        whose outbox row is gone: a published row is deleted; a stale status has none):
        what a done marker in Redis claims, confirmed by the authority. One statement
        per kind, no transaction (PostgreSQL: the message keys bound as two arrays;
        otherwise a row-value IN list per chunk)."""
        if not keys:
            return frozenset()
        ordered = sorted(k for k in keys if isinstance(k, MessageKey))
        status_keys = sorted(k for k in keys if isinstance(k, StatusKey))
        found: frozenset[ItemKey] = frozenset()
        try:
            async with self._autocommit.connect() as conn:
                if ordered and self._sqlite:
                    found = await _announced_sqlite(conn, ordered)
                elif ordered:
                    found = await _announced_pg(conn, ordered)
                if status_keys:
                    found |= await _statuses_announced(conn, status_keys, sqlite=self._sqlite)
        except (SQLAlchemyError, OSError) as exc:
            raise _failed(exc, f"confirming {len(keys)} done marker(s)") from exc
        return found

    async def claim_unpublished(
        self, *, claimant: str, claim_for: dt.timedelta, limit: int
    ) -> OutboxClaim:
        """Claim up to `limit` outbox rows that were committed but never marked
        published, and whose inserter's claim ran out (it had LEASE_TTL_S to publish
        them and did not).

        One atomic UPDATE ... RETURNING: a row is claimed by one relay at a time (on
        PostgreSQL the candidate rows are locked with FOR UPDATE SKIP LOCKED, and the
        outer WHERE is re-checked against concurrent claims; SQLite serialises writers).
        A claim that is not followed by `mark_published` runs out after `claim_for`.
        """
        stmt = self._claim(self._free(), outbox.c.created_at, limit, claimant, claim_for)
        try:
            async with self._engine.begin() as conn:
                rows = (await conn.execute(stmt)).all()
                claimed = {r[0]: unpack_events(bytes(r[1])) for r in rows}
                # A row whose status event must wait for an earlier one of its message
                # (in another row still there) is left for a later round.
                held = await self._held_back(conn, claimed)
                if held:
                    await self._unclaim(conn, sorted(held))
        except (SQLAlchemyError, OSError) as exc:
            raise _failed(exc, "claiming unpublished outbox rows") from exc
        kept = [r for r in claimed if r not in held]
        return OutboxClaim(tuple(e for r in kept for e in claimed[r]), tuple(kept))

    async def outbox_stats(self) -> tuple[int, float]:
        """How many events are not yet announced, and the age in seconds of the oldest
        (0 when none), both by the database's clock: the outbox holds exactly those
        events, and created_at is indexed."""
        oldest = sa.func.min(outbox.c.created_at)
        if self._sqlite:
            age = (sa.func.julianday("now") - sa.func.julianday(oldest)) * 86400.0
        else:
            age = sa.extract("epoch", sa.func.now() - oldest)
        count = sa.func.coalesce(sa.func.sum(outbox.c.event_count), 0)
        stmt = sa.select(count, age).select_from(outbox)
        try:
            async with self._engine.connect() as conn:
                count, age_s = (await conn.execute(stmt)).one()
        except (SQLAlchemyError, OSError) as exc:
            raise _failed(exc, "reading the outbox backlog") from exc
        return int(count), max(0.0, float(age_s or 0.0))

    async def check(self, *, warm: int, claim_for: dt.timedelta) -> None:
        """The database answers and is migrated (the columns the newest revision added
        are there: a database migrated by an older release is "not migrated" too), then
        :meth:`warm` with `warm` connections. Raises StoreError saying which of:
        unreachable, does not exist, not migrated, a file that cannot be opened."""
        try:
            async with self._engine.connect() as conn:
                await conn.execute(sa.text("SELECT outbox_id FROM messages WHERE 1 = 0"))
                await conn.execute(sa.text("SELECT id, events FROM outbox WHERE 1 = 0"))
                await conn.execute(sa.text("SELECT outcome FROM statuses WHERE 1 = 0"))
                await conn.execute(sa.text("SELECT previous_status FROM message_state WHERE 1 = 0"))
            await self.warm(warm, claim_for=claim_for)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(database_problem(exc)) from exc

    async def warm(self, connections: int, *, claim_for: dt.timedelta) -> None:
        """Open `connections` of the pool's connections at once and run a save's two
        statements (the messages insert and the outbox insert) on each, in a transaction
        that is rolled back: nothing is written. On PostgreSQL each connection prepares
        a statement the first time it runs it, so without this the first batches after
        a start are the slowest of the run. (The outbox delete is left to its first
        use.) SQLite (in-process) is skipped. Raises what the driver raises."""
        if self._sqlite:
            return
        await asyncio.gather(*(self._warm_one(claim_for) for _ in range(connections)))

    async def _warm_one(self, claim_for: dt.timedelta) -> None:
        async with self._engine.connect() as conn:
            await conn.begin()
            await conn.execute(_INSERT_PG, {name: [] for name in _PG_COLUMNS})
            row = {"id": str(uuid.uuid4()), "event_count": 0, "events": b"", "claimed_by": "warm"}
            await conn.execute(self._outbox_insert(claim_for), [row])
            await conn.rollback()

    async def ping(self) -> None:
        """One round trip, for readiness."""
        try:
            async with self._engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except (SQLAlchemyError, OSError) as exc:
            raise _failed(exc, "asking the database") from exc

    async def close(self) -> None:
        await self._engine.dispose()

    # -- the database's clock ------------------------------------------------------

    def _now(self) -> sa.ColumnElement[dt.datetime]:
        """The database's time now (PostgreSQL: the transaction's start)."""
        if self._sqlite:
            # The format SQLAlchemy reads back, at millisecond resolution; comparisons on
            # SQLite are between strings of this shape.
            return sa.type_coerce(sa.func.strftime(_SQLITE_TS, "now"), TS)
        return sa.type_coerce(sa.func.now(), TS)

    def _later(self, delta: dt.timedelta) -> sa.ColumnElement[dt.datetime]:
        """The database's time `delta` from now."""
        if self._sqlite:
            shift = f"{delta.total_seconds():+.3f} seconds"
            return sa.type_coerce(sa.func.strftime(_SQLITE_TS, "now", shift), TS)
        return sa.type_coerce(sa.func.now() + delta, TS)

    def _free(self) -> sa.ColumnElement[bool]:
        """An outbox row nobody holds: never claimed, or its claim ran out. A claim holds
        while `now < claimed_until`, for the relay and for a conflicting worker alike."""
        until = outbox.c.claimed_until
        return sa.or_(until.is_(None), until <= self._now())

    def _free_or_reclaimed(self, reclaim: Collection[str]) -> sa.ColumnElement[bool]:
        """Free, or claimed by one of `reclaim`: claimants that ended and will never
        publish what they hold. A claim always names a claimant that is still running
        when it is taken, and no running claimant is ever in `reclaim`, so of two
        running batches at most one takes a row (the other then sees it held)."""
        free = self._free()
        names = sorted({r for r in reclaim if r})
        return sa.or_(free, outbox.c.claimed_by.in_(names)) if names else free

    # -- the statements of a save --------------------------------------------------

    async def _insert_messages(
        self, conn: AsyncConnection, pending: list[PendingMessage], row_ids: list[str]
    ) -> frozenset[MessageKey]:
        stmt = (
            self._insert(messages)
            .values(created_at=self._now())
            # No conflict target: on a database before revision 0005 the primary key
            # `id`, derived from the same (phone_number_id, source_id), is a second
            # unique index a concurrent insert may trip first; both mean "this message
            # is stored already".
            .on_conflict_do_nothing()
            .returning(messages.c.phone_number_id, messages.c.source_id)
        )
        # executemany + RETURNING: SQLAlchemy sends it as multi-row INSERTs of one cached
        # statement ("insertmanyvalues"), instead of compiling a new statement per batch.
        params = [_message_row(p, row_id) for p, row_id in zip(pending, row_ids, strict=True)]
        rows = (await conn.execute(stmt, params)).all()
        return frozenset(MessageKey(r.phone_number_id, r.source_id) for r in rows)

    async def _insert_outbox(
        self,
        conn: AsyncConnection,
        new: list[tuple[str, OutboundEvent]],
        claim: Claim,
    ) -> tuple[str, ...]:
        """The outbox rows of the events inserted (`new`: row id and event, in the
        order the rows were assigned); returns their ids."""
        boxes: dict[str, list[OutboundEvent]] = {}
        for row_id, event in new:
            boxes.setdefault(row_id, []).append(event)
        if boxes:
            await conn.execute(
                self._outbox_insert(claim.claim_for),
                [
                    {
                        "id": row_id,
                        "event_count": len(events),
                        "events": pack_events(events),
                        "claimed_by": claim.claimant or None,
                    }
                    for row_id, events in boxes.items()
                ],
            )
        return tuple(boxes)

    def _outbox_insert(self, claim_for: dt.timedelta) -> sa.Insert:
        return sa.insert(outbox).values(
            created_at=self._now(), claimed_until=self._later(claim_for) if claim_for else None
        )

    async def _unpublished(
        self,
        conn: AsyncConnection,
        keys: list[ItemKey],
        claim: Claim,
    ) -> tuple[dict[str, list[OutboundEvent]], set[ItemKey], dict[ItemKey, str]]:
        """The unpublished outbox rows of conflicting keys (messages and statuses):
        (those claimed now by us, to publish, with their events; the keys whose row
        someone else holds, who is publishing it; each key's unpublished row). The claim
        is one UPDATE, so of two batches (or a batch and a relay) racing for a row
        exactly one gets it. At most _CONFLICT_ROWS rows are claimed per save (each may
        hold a batch of other messages' events); the keys of rows beyond that come back
        held too, and their retry (or the relay) takes them."""
        message_keys = [k for k in keys if isinstance(k, MessageKey)]
        status_keys = [k for k in keys if isinstance(k, StatusKey)]
        row_of: dict[ItemKey, str] = {}
        if message_keys:
            outbox_of = _outbox_of_sqlite if self._sqlite else _outbox_of_pg
            row_of.update(await outbox_of(conn, message_keys))
        if status_keys:
            row_of.update(await _status_outbox_of(conn, status_keys, sqlite=self._sqlite))
        row_ids = sorted(set(row_of.values()))
        if not row_ids:  # every conflict was announced already
            return {}, set(), row_of
        # A row another transaction has locked (a relay claiming it, a worker claiming or
        # deleting it) is skipped, not waited for: it comes back busy, "not yet". So a
        # save never waits on an outbox row while it holds others, and two batches that
        # conflict on the same rows cannot deadlock (each would lock them in its own
        # scan order). SQLite has no row locks; it serialises writers instead.
        claimed: dict[str, list[OutboundEvent]] = {}
        unpublished: set[str] = set()
        claimable = self._free_or_reclaimed(claim.reclaim)
        for ids in _chunks(row_ids):
            room = _CONFLICT_ROWS - len(claimed)
            if room > 0:
                where = sa.and_(outbox.c.id.in_(ids), claimable)
                update = self._claim(where, outbox.c.id, room, claim.claimant, claim.claim_for)
                for r in (await conn.execute(update)).all():
                    claimed[r[0]] = unpack_events(bytes(r[1]))
            exists = sa.select(outbox.c.id).where(outbox.c.id.in_(ids))
            unpublished.update(r[0] for r in (await conn.execute(exists)).all())
        busy = unpublished - set(claimed)
        return claimed, {k for k, row_id in row_of.items() if row_id in busy}, row_of

    def _claim(
        self,
        where: sa.ColumnElement[bool],
        order_by: sa.ColumnElement[Any],
        limit: int,
        claimant: str,
        claim_for: dt.timedelta,
    ) -> sa.Update:
        """Claim up to `limit` rows matching `where` (taken in `order_by` order) for
        `claimant` and `claim_for`, returning their ids and events. One atomic UPDATE:
        on PostgreSQL the candidates are locked with FOR UPDATE SKIP LOCKED (a row
        another transaction holds is skipped, not waited for) and `where` is checked
        again against concurrent claims; SQLite serialises writers."""
        candidates = (
            sa.select(outbox.c.id)
            .where(where)
            .order_by(order_by)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return (
            sa.update(outbox)
            .where(outbox.c.id.in_(candidates.scalar_subquery()), where)
            .values(claimed_by=claimant or None, claimed_until=self._later(claim_for))
            .returning(outbox.c.id, outbox.c.events)
        )

    async def release_claims(self, outbox_ids: Sequence[str], claimant: str) -> None:
        """Give up our claim on rows we could not publish, so the next try (ours, another
        worker's or the relay's) need not wait for the claim to run out."""
        if not outbox_ids:
            return
        try:
            async with self._engine.begin() as conn:
                for chunk in _chunks(sorted(outbox_ids)):
                    await conn.execute(
                        sa.update(outbox)
                        .where(
                            outbox.c.id.in_(_locked_in_order(chunk)),
                            outbox.c.claimed_by == claimant,
                        )
                        .values(claimed_by=None, claimed_until=None)
                    )
        except (SQLAlchemyError, OSError) as exc:
            raise _failed(exc, f"releasing {len(outbox_ids)} outbox claim(s)") from exc


# -- PostgreSQL: a batch in one statement, its columns bound as arrays ------------------

# The messages of a whole batch in one round trip: each column is one array parameter (so
# the statement text, and PostgreSQL's prepared plan, are the same for every batch, and the
# driver sends 15 values instead of 15 per message).
_INSERT_PG = sa.text(
    """
INSERT INTO messages (id, phone_number_id, source_id, sender, message_type,
    message_timestamp, contact_wa_id, contact_name, contact_profile, raw, event_id,
    source_topic, source_partition, source_offset, outbox_id, created_at)
SELECT id, phone_number_id, source_id, sender, message_type, message_timestamp,
    contact_wa_id, contact_name, CAST(contact_profile AS json), CAST(raw AS json),
    event_id, source_topic, source_partition, source_offset, outbox_id, now()
FROM unnest(
    CAST(:id AS text[]), CAST(:phone_number_id AS text[]), CAST(:source_id AS text[]),
    CAST(:sender AS text[]), CAST(:message_type AS text[]),
    CAST(:message_timestamp AS text[]), CAST(:contact_wa_id AS text[]),
    CAST(:contact_name AS text[]), CAST(:contact_profile AS text[]),
    CAST(:raw AS text[]), CAST(:event_id AS text[]), CAST(:source_topic AS text[]),
    CAST(:source_partition AS integer[]), CAST(:source_offset AS bigint[]),
    CAST(:outbox_id AS text[])
) AS b(id, phone_number_id, source_id, sender, message_type, message_timestamp,
       contact_wa_id, contact_name, contact_profile, raw, event_id, source_topic,
       source_partition, source_offset, outbox_id)
ON CONFLICT DO NOTHING
RETURNING phone_number_id, source_id
"""
)


# The outbox rows of a batch's conflicting keys, the keys bound as two arrays and joined
# on the fence's columns: PostgreSQL reads each row of the table at most once (an index
# lookup per key, or, if it believes the table small, one scan joined by hash), in one
# statement for any number of keys. A row-value IN list, as on SQLite below, can be
# planned as a scan of every row of one phone_number_id tested against the whole list.
_OUTBOX_OF_PG = sa.text(
    """
SELECT m.phone_number_id, m.source_id, m.outbox_id
FROM unnest(CAST(:phone_number_id AS text[]), CAST(:source_id AS text[]))
    AS k(phone_number_id, source_id)
JOIN messages m ON m.phone_number_id = k.phone_number_id AND m.source_id = k.source_id
WHERE m.outbox_id IS NOT NULL
"""
)


async def _outbox_of_pg(conn: AsyncConnection, keys: list[MessageKey]) -> dict[ItemKey, str]:
    """The outbox row of each of these keys that has one (an unannounced message)."""
    found = await conn.execute(_OUTBOX_OF_PG, _key_arrays(keys))
    return {MessageKey(r[0], r[1]): r[2] for r in found.all()}


def _key_arrays(keys: list[MessageKey]) -> dict[str, list[str]]:
    """Keys as the two array parameters the unnest() statements join on."""
    return {
        "phone_number_id": [k.phone_number_id for k in keys],
        "source_id": [k.wamid for k in keys],
    }


async def _outbox_of_sqlite(conn: AsyncConnection, keys: list[MessageKey]) -> dict[ItemKey, str]:
    """As _outbox_of_pg, in chunks of a row-value IN list (SQLite binds no arrays)."""
    row_of: dict[ItemKey, str] = {}
    pair = sa.tuple_(messages.c.phone_number_id, messages.c.source_id)
    for chunk in _chunks(keys, _CHUNK // 2):  # two values per key
        found = sa.select(
            messages.c.phone_number_id, messages.c.source_id, messages.c.outbox_id
        ).where(pair.in_(chunk), messages.c.outbox_id.is_not(None))
        for r in (await conn.execute(found)).all():
            row_of[MessageKey(r[0], r[1])] = r[2]
    return row_of


# Store.announced on PostgreSQL: the keys as two arrays, joined on the unique index.
_ANNOUNCED_PG = sa.text(
    """
SELECT m.phone_number_id, m.source_id
FROM unnest(CAST(:phone_number_id AS text[]), CAST(:source_id AS text[]))
    AS k(phone_number_id, source_id)
JOIN messages m ON m.phone_number_id = k.phone_number_id AND m.source_id = k.source_id
LEFT JOIN outbox o ON o.id = m.outbox_id
WHERE o.id IS NULL
"""
)


async def _announced_pg(conn: AsyncConnection, keys: list[MessageKey]) -> frozenset[ItemKey]:
    found = await conn.execute(_ANNOUNCED_PG, _key_arrays(keys))
    return frozenset(MessageKey(r[0], r[1]) for r in found.all())


async def _announced_sqlite(conn: AsyncConnection, keys: list[MessageKey]) -> frozenset[ItemKey]:
    pair = sa.tuple_(messages.c.phone_number_id, messages.c.source_id)
    out: set[ItemKey] = set()
    for chunk in _chunks(keys, _CHUNK // 2):  # two values per key
        found = (
            sa.select(messages.c.phone_number_id, messages.c.source_id)
            .select_from(messages.outerjoin(outbox, outbox.c.id == messages.c.outbox_id))
            .where(pair.in_(chunk), outbox.c.id.is_(None))
        )
        out.update(MessageKey(r[0], r[1]) for r in (await conn.execute(found)).all())
    return frozenset(out)


def _triple_arrays(keys: list[StatusKey]) -> dict[str, list[str]]:
    return {
        "phone_number_id": [k.phone_number_id for k in keys],
        "status_id": [k.status_id for k in keys],
        "status": [k.status for k in keys],
    }


async def _statuses_announced(
    conn: AsyncConnection, keys: list[StatusKey], *, sqlite: bool
) -> frozenset[ItemKey]:
    """Which of these status updates are stored, and announced or stale (no outbox row
    of theirs left)."""
    if not sqlite:
        found_pg = await conn.execute(_STATUSES_ANNOUNCED_PG, _triple_arrays(keys))
        return frozenset(StatusKey(r[0], r[1], r[2]) for r in found_pg.all())
    t = statuses_table
    triple = sa.tuple_(t.c.phone_number_id, t.c.status_id, t.c.status)
    out: set[ItemKey] = set()
    for chunk in _chunks(keys, _CHUNK // 3):  # three values per key
        found = (
            sa.select(t.c.phone_number_id, t.c.status_id, t.c.status)
            .select_from(t.outerjoin(outbox, outbox.c.id == t.c.outbox_id))
            .where(triple.in_(chunk), outbox.c.id.is_(None))
        )
        out.update(StatusKey(r[0], r[1], r[2]) for r in (await conn.execute(found)).all())
    return frozenset(out)


# -- PostgreSQL: the statuses of a batch, each statement's keys bound as arrays --------
# (as the messages' statements above: one plan for every batch, and joins PostgreSQL
# drives from the arrays through the primary keys; a row-value IN list may be planned as
# a scan of every status of one phone_number_id tested against the whole list)

# Store._move_states: each message's state to its batch's highest status, forward only;
# previous_status is read from the locked row in the same UPDATE.
_MOVE_STATES_PG = sa.text(
    """
INSERT INTO message_state AS m (phone_number_id, status_id, status, rank, previous_status,
    updated_at)
SELECT phone_number_id, status_id, status, rank, NULL, now()
FROM unnest(CAST(:phone_number_id AS text[]), CAST(:status_id AS text[]),
    CAST(:status AS text[]), CAST(:rank AS smallint[]))
    AS b(phone_number_id, status_id, status, rank)
ON CONFLICT (phone_number_id, status_id) DO UPDATE
SET status = excluded.status, rank = excluded.rank, previous_status = m.status,
    updated_at = excluded.updated_at
WHERE m.rank < excluded.rank
RETURNING phone_number_id, status_id, previous_status
"""
)

_INSERT_STATUSES_PG = sa.text(
    """
INSERT INTO statuses (phone_number_id, status_id, status, rank, outcome, recipient_id,
    status_timestamp, raw, event_id, source_topic, source_partition, source_offset,
    outbox_id, created_at)
SELECT phone_number_id, status_id, status, rank, outcome, recipient_id, status_timestamp,
    CAST(raw AS json), event_id, source_topic, source_partition, source_offset, outbox_id,
    now()
FROM unnest(
    CAST(:phone_number_id AS text[]), CAST(:status_id AS text[]), CAST(:status AS text[]),
    CAST(:rank AS smallint[]), CAST(:outcome AS text[]), CAST(:recipient_id AS text[]),
    CAST(:status_timestamp AS text[]), CAST(:raw AS text[]), CAST(:event_id AS text[]),
    CAST(:source_topic AS text[]), CAST(:source_partition AS integer[]),
    CAST(:source_offset AS bigint[]), CAST(:outbox_id AS text[])
) AS b(phone_number_id, status_id, status, rank, outcome, recipient_id, status_timestamp,
       raw, event_id, source_topic, source_partition, source_offset, outbox_id)
ON CONFLICT DO NOTHING
RETURNING phone_number_id, status_id, status
"""
)

_STATUS_COLUMNS = (
    "phone_number_id",
    "status_id",
    "status",
    "rank",
    "outcome",
    "recipient_id",
    "status_timestamp",
    "raw",
    "event_id",
    "source_topic",
    "source_partition",
    "source_offset",
    "outbox_id",
)

_PENDING_RANKS_PG = sa.text(
    """
SELECT s.phone_number_id, s.status_id, s.rank, s.outbox_id
FROM unnest(CAST(:phone_number_id AS text[]), CAST(:status_id AS text[]))
    AS k(phone_number_id, status_id)
JOIN statuses s ON s.phone_number_id = k.phone_number_id AND s.status_id = k.status_id
JOIN outbox o ON o.id = s.outbox_id
WHERE s.rank IS NOT NULL
"""
)

_STATUS_OUTBOX_OF_PG = sa.text(
    """
SELECT s.phone_number_id, s.status_id, s.status, s.outbox_id
FROM unnest(CAST(:phone_number_id AS text[]), CAST(:status_id AS text[]),
    CAST(:status AS text[])) AS k(phone_number_id, status_id, status)
JOIN statuses s ON s.phone_number_id = k.phone_number_id AND s.status_id = k.status_id
    AND s.status = k.status
WHERE s.outbox_id IS NOT NULL
"""
)

_STATUSES_ANNOUNCED_PG = sa.text(
    """
SELECT s.phone_number_id, s.status_id, s.status
FROM unnest(CAST(:phone_number_id AS text[]), CAST(:status_id AS text[]),
    CAST(:status AS text[])) AS k(phone_number_id, status_id, status)
JOIN statuses s ON s.phone_number_id = k.phone_number_id AND s.status_id = k.status_id
    AND s.status = k.status
LEFT JOIN outbox o ON o.id = s.outbox_id
WHERE o.id IS NULL
"""
)


# mark_published on PostgreSQL: the rows locked in id order first (see _locked_in_order),
# the ids bound as one array.
_DELETE_PG = sa.text(
    """
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox WHERE id = ANY(CAST(:ids AS text[]))
    ORDER BY id FOR UPDATE
)
"""
)


async def _insert_pg(
    conn: AsyncConnection, pending: list[PendingMessage], row_ids: list[str]
) -> frozenset[MessageKey]:
    """Insert the batch's messages (ON CONFLICT DO NOTHING), each naming its outbox row;
    return the keys inserted."""
    columns: dict[str, list[Any]] = {name: [] for name in _PG_COLUMNS}
    for p, row_id in zip(pending, row_ids, strict=True):
        # The columns as the portable insert writes them, the JSON ones as text (cast
        # in the statement).
        row = _message_row(p, row_id)
        row["contact_profile"] = (
            json_dumps(row["contact_profile"]) if row["contact_profile"] is not None else None
        )
        row["raw"] = json_dumps(row["raw"])
        for name in _PG_COLUMNS:
            columns[name].append(row[name])
    rows = (await conn.execute(_INSERT_PG, columns)).all()
    return frozenset(MessageKey(r[0], r[1]) for r in rows)


_PG_COLUMNS = (
    "id",
    "phone_number_id",
    "source_id",
    "sender",
    "message_type",
    "message_timestamp",
    "contact_wa_id",
    "contact_name",
    "contact_profile",
    "raw",
    "event_id",
    "source_topic",
    "source_partition",
    "source_offset",
    "outbox_id",
)


async def _status_outbox_of(
    conn: AsyncConnection, keys: list[StatusKey], *, sqlite: bool
) -> dict[ItemKey, str]:
    """The outbox row of each of these status updates that has one (announced, and
    perhaps not yet published), by the fence's key (PostgreSQL: the keys as three
    arrays; SQLite: a row-value IN list per chunk)."""
    t = statuses_table
    row_of: dict[ItemKey, str] = {}
    if not sqlite:
        for r in (await conn.execute(_STATUS_OUTBOX_OF_PG, _triple_arrays(keys))).all():
            row_of[StatusKey(r[0], r[1], r[2])] = r[3]
        return row_of
    triple = sa.tuple_(t.c.phone_number_id, t.c.status_id, t.c.status)
    for chunk in _chunks(keys, _CHUNK // 3):  # three values per key
        found = sa.select(t.c.phone_number_id, t.c.status_id, t.c.status, t.c.outbox_id).where(
            triple.in_(chunk), t.c.outbox_id.is_not(None)
        )
        for r in (await conn.execute(found)).all():
            row_of[StatusKey(r[0], r[1], r[2])] = r[3]
    return row_of


def _status_row(p: PendingStatus, outbox_id: str | None, announced: bool) -> dict[str, Any]:
    u = p.update
    return {
        "phone_number_id": u.key.phone_number_id,
        "status_id": u.key.status_id,
        "status": u.key.status,
        "rank": status_rules.rank(u.key.status),
        "outcome": "announced" if announced else "stale",
        "recipient_id": u.recipient,
        "status_timestamp": u.timestamp,
        "raw": u.raw,
        "event_id": u.key.event_id,
        "source_topic": u.source.topic,
        "source_partition": u.source.partition,
        "source_offset": u.source.offset,
        "outbox_id": outbox_id,
    }


@dataclass(frozen=True, slots=True)
class _SavedStatuses:
    inserted: frozenset[StatusKey]
    stale: frozenset[StatusKey]  # inserted, not announced
    # (outbox row, event, key) of each announced status inserted, in the order to publish.
    announced: list[tuple[str, OutboundEvent, ItemKey]]
    # The row of the announced statuses that must wait for earlier events of their
    # messages (see Store._waiting), and those statuses, as `announced`.
    waiting_row: str
    waiting: list[tuple[str, OutboundEvent, ItemKey]]


def _in_order(key: StatusKey) -> tuple[str, str, int, str]:
    """A status's place in a save: by message, then the order's order (a word Meta may
    add first: it orders nothing), then the word."""
    return (*key.message, status_rules.rank(key.status) or 0, key.status)


# Ids per statement: asyncpg takes at most 32,767 query arguments, older SQLite 999; a
# batch may hold far more messages than either.
_CHUNK = 900


def _chunks(items: list[_T], size: int = _CHUNK) -> list[list[_T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


_T = TypeVar("_T")


# strftime's %f is SS.SSS: with it, SQLite writes what SQLAlchemy's DateTime reads.
_SQLITE_TS = "%Y-%m-%d %H:%M:%f"


# -- failures: data or dependency (rule 10) --------------------------------------------

# SQLSTATE classes that mean "this data": 22 data exception (a value too long, a character
# the encoding refuses, bad JSON), 23 integrity constraint violation (a CHECK, a NOT NULL),
# 54 program limit exceeded (an index entry too large). Everything else (08 connection,
# 40 rollback, 53 resources, 57 shutdown or timeout, 42 a schema that is not migrated...)
# is the database's state, which waiting or an operator can change.
_DATA_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})


def _translate(exc: BaseException, what: str) -> StoreError | UnstorableError:
    """The project's error for a failed write: the data, or the database."""
    if _refused_data(exc):
        return UnstorableError(f"the database refused the data: {_describe(exc)}")
    return _failed(exc, what)


def database_problem(exc: BaseException) -> str:
    """What is wrong with a database the member or `migrate` could not use, in words an
    operator acts on: unreachable, does not exist, not migrated, a file that cannot be
    opened; else the driver's own line."""
    orig = getattr(exc, "orig", None)
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    text = str(orig if orig is not None else exc)
    if state == "3D000":
        return f"{_describe(exc)}; create the database, then run `python -m consumer migrate`"
    if state in ("42P01", "42703") or "no such table" in text or "no such column" in text:
        return "not migrated: run `python -m consumer migrate`"
    if state in ("28P01", "28000"):
        return f"authentication failed: {_describe(exc)}"
    if "unable to open database file" in text:
        return "cannot open the SQLite file: does its folder exist, and may it be written?"
    cause = exc.__cause__ or getattr(orig, "__cause__", None)
    if isinstance(exc, OSError) or isinstance(cause, OSError):
        return f"unreachable: {_describe(exc)}"
    return _describe(exc)


def _failed(exc: BaseException, what: str) -> StoreError:
    return StoreError(f"{what} failed: {_describe(exc)}")


def _refused_data(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DataError | sa_exc.IntegrityError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if isinstance(state, str):
            return state[:2] in _DATA_SQLSTATE_CLASSES
        cause = getattr(exc.orig, "__cause__", None)
        # The driver refused a value before sending it (asyncpg's DataError is a
        # ValueError; sqlite3 says InterfaceError when it cannot bind one).
        return isinstance(cause, ValueError) or isinstance(exc.orig, sqlite3.InterfaceError)
    # Not from the driver at all: encoding a parameter (a JSON column) failed.
    return isinstance(exc, sa_exc.StatementError)


def _describe(exc: BaseException) -> str:
    """The failure in one line: the driver's own message and its SQLSTATE, never
    SQLAlchemy's rendering (the statement, its parameters, a link)."""
    orig = getattr(exc, "orig", None) if isinstance(exc, sa_exc.StatementError) else None
    inner: BaseException = orig if isinstance(orig, BaseException) else exc
    cause = inner.__cause__ if inner.__cause__ is not None else inner
    text = (str(inner).strip().splitlines() or [""])[0]
    if isinstance(inner, sa_exc.SQLAlchemyError):
        text = _SQLA_TAIL.split(text, maxsplit=1)[0].strip()
    state = getattr(inner, "sqlstate", None)
    prefix = f"{type(cause).__name__}" + (f" [{state}]" if isinstance(state, str) else "")
    return f"{prefix}: {text[:300]}" if text else prefix


# Where SQLAlchemy's own message starts its appendix ("[SQL: ...]", "(Background on...").
_SQLA_TAIL = re.compile(r"\s(?:\[SQL:|\(Background on this error)")


def _locked_in_order(outbox_ids: Sequence[str]) -> sa.ScalarSelect[str]:
    """These outbox rows, locked in id order before a statement changes them.

    A plain ``WHERE id IN (...)`` locks rows in whatever order its plan scans them,
    which differs between two transactions (seq scan, index scan, a row version moved by
    an update in between); two deletes or releases of overlapping rows could so deadlock.
    Locking in one global order cannot. (PostgreSQL locks the rows in the sorted order
    the subquery returns them; on SQLite this is a plain subquery.)
    """
    return (
        sa.select(outbox.c.id)
        .where(outbox.c.id.in_(list(outbox_ids)))
        .order_by(outbox.c.id)
        .with_for_update()
        .scalar_subquery()
    )


def _message_row(p: PendingMessage, outbox_id: str) -> dict[str, Any]:
    m = p.message
    return {
        "id": m.key.message_id,
        "phone_number_id": m.key.phone_number_id,
        "source_id": m.key.wamid,
        "sender": m.sender,
        "message_type": m.type,
        "message_timestamp": m.timestamp,
        "contact_wa_id": m.contact_wa_id,
        "contact_name": _text_column(m.contact_name),
        "contact_profile": m.contact_profile,
        "raw": m.raw,
        "event_id": m.key.event_id,
        "source_topic": m.source.topic,
        "source_partition": m.source.partition,
        "source_offset": m.source.offset,
        "outbox_id": outbox_id,
    }


def _text_column(value: str | None) -> str | None:
    """Free text for a text column, which cannot hold NUL: U+FFFD stands in for it (the
    value as sent stays in the JSON columns)."""
    return value.replace("\x00", "\ufffd") if value and "\x00" in value else value
