"""The database: the authority on "stored exactly once" (docs/design.md, rule 1).

One transaction per batch writes the messages with ``INSERT ... ON CONFLICT DO NOTHING
RETURNING`` (the fence: ``UNIQUE (phone_number_id, source_id)``) and, for the rows it
really inserted, one outbox row holding the exact ``message_created`` bytes of all their
events (a very large batch gets a few rows; see :func:`_assign_rows`). Each message row
names the outbox row that announces it (``messages.outbox_id``). A conflicting key is a
duplicate; if its outbox row was never published (a crash between commit and publish, or
a commit whose answer was lost), the row is handed back to be published again, with the
same event ids and bytes.

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
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import sqlite3
import struct
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aiosqlite
import orjson
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from consumer import limits
from consumer.errors import StoreError, UnstorableError
from consumer.events import OutboundEvent
from consumer.records import Message, MessageKey

if TYPE_CHECKING:  # ports imports this module's SaveResult and PendingMessage
    from consumer.ports import MessageStore

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)
# PostgreSQL's json, not jsonb: it keeps the text as Meta sent it, \u0000 included (jsonb
# refuses it, and a text body may hold one).
_JSON = sa.JSON().with_variant(postgresql.JSON(), "postgresql")
_TS = sa.DateTime(timezone=True)
_SOURCE_ID = sa.String(limits.WAMID_MAX)

messages = sa.Table(
    "messages",
    metadata,
    # The event's message.id, derived from (phone_number_id, source_id): unique because
    # the fence is, so not indexed (a second unique index cost every insert; migration
    # 0005). The fence's key identifies a row.
    sa.Column("id", sa.String(36), nullable=False),
    sa.Column("phone_number_id", sa.String(limits.PHONE_NUMBER_ID_MAX), nullable=False),
    sa.Column("source_id", _SOURCE_ID, nullable=False),
    sa.Column("sender", sa.String(limits.SENDER_MAX), nullable=False),
    sa.Column("message_type", sa.String(limits.MESSAGE_TYPE_MAX), nullable=False),
    sa.Column("message_timestamp", sa.String(limits.TIMESTAMP_MAX), nullable=False),
    sa.Column("contact_wa_id", sa.String(limits.CONTACT_WA_ID_MAX)),
    # A copy for queries and display; NUL (which text columns refuse) is U+FFFD here, and
    # the name as sent is in contact_profile and raw.
    sa.Column("contact_name", sa.Text),
    sa.Column("contact_profile", _JSON),
    sa.Column("raw", _JSON, nullable=False),
    sa.Column("event_id", sa.String(36), nullable=False),
    sa.Column("source_topic", sa.String(255), nullable=False),
    sa.Column("source_partition", sa.Integer, nullable=False),
    sa.Column("source_offset", sa.BigInteger, nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    # The outbox row that announces this message: while it exists, the event is not yet
    # announced (a redelivery finds it here, through the unique key). Not indexed.
    sa.Column("outbox_id", sa.String(36)),
    sa.UniqueConstraint("phone_number_id", "source_id"),
)

# One row per transaction (per few MiB of events), not per message: the insert, its index
# entries and the delete after the publish are paid once per batch (docs/benchmarks.md).
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("event_count", sa.Integer, nullable=False),
    # The events, each as event_id, topic, key and payload (see _pack_events).
    sa.Column("events", sa.LargeBinary, nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    # The claim: who publishes this row, and until when (the database's clock).
    sa.Column("claimed_by", sa.String(128)),
    sa.Column("claimed_until", _TS),
    sa.Index("ix_outbox_created_at", "created_at"),
)


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What one batch's transaction did."""

    inserted: frozenset[MessageKey]
    conflicts: frozenset[MessageKey]
    to_publish: tuple[OutboundEvent, ...]  # new events, then unpublished ones of conflicts
    # The outbox rows that hold `to_publish`, claimed by the caller: to mark once all of
    # `to_publish` is out, or to release if it is not.
    outbox_ids: tuple[str, ...]
    # Conflicts whose unpublished row another worker is publishing right now.
    in_flight: frozenset[MessageKey] = frozenset()


@dataclass(frozen=True, slots=True)
class OutboxClaim:
    """Outbox rows claimed for publishing: their events, and their ids (to mark once
    all the events are out, or to release)."""

    events: tuple[OutboundEvent, ...]
    outbox_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """A message and the event that announces it, ready for the transaction."""

    message: Message
    event: OutboundEvent


def create_engine(url: str, *, pool_size: int, timeout_s: float) -> AsyncEngine:
    """An engine for PostgreSQL (asyncpg) or the embedded SQLite (aiosqlite)."""
    if url.startswith("sqlite"):
        engine = create_async_engine(
            url,
            async_creator=_sqlite_connector(url, timeout_s),
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
            hide_parameters=True,
        )
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        pool_timeout=timeout_s,
        connect_args={"timeout": timeout_s, "command_timeout": timeout_s},
        # Error texts must not carry message bodies and phone numbers into the logs.
        hide_parameters=True,
    )
    sa.event.listen(engine.sync_engine, "checkin", _checked_in)
    sa.event.listen(engine.sync_engine, "checkout", _ping_if_idle)
    return engine


def _sqlite_connector(url: str, timeout_s: float) -> Callable[[], Any]:
    """Open aiosqlite connections as SQLAlchemy would, except when opening fails.

    aiosqlite runs each connection on a worker thread. When the file cannot be opened it
    raises at once and only then queues the thread's stop, whose result the thread posts
    back to this event loop. A command that fails on that error (`migrate` of a missing
    folder) leaves its loop and exits before the thread has run: the thread meets a
    closed loop, prints a traceback from inside interpreter shutdown, and CPython aborts
    the process (exit -6 instead of 1, seen once in CI). So a failed open waits, bounded,
    for the thread to finish before the error goes on."""
    args, kwargs = SQLiteDialect_aiosqlite().create_connect_args(make_url(url))
    kwargs["timeout"] = timeout_s

    async def connect() -> aiosqlite.Connection:
        connection = aiosqlite.connect(*args, **kwargs)
        # As SQLAlchemy's own connect does: a connection nobody closed must not keep
        # the process from exiting.
        worker = connection._thread
        worker.daemon = True
        try:
            return await connection
        except BaseException:
            await asyncio.to_thread(worker.join, _SQLITE_STOP_WAIT_S)
            raise

    return connect


_SQLITE_STOP_WAIT_S = 5.0


# A connection idle longer than this is pinged when taken from the pool (and replaced if
# the ping fails); one in use more often is not. SQLAlchemy's pool_pre_ping pings every
# checkout, and its asyncpg ping is three round trips (BEGIN, a query, ROLLBACK): under
# load that was six round trips a batch (the save and the outbox delete each take a
# connection) for connections used milliseconds before.
PING_AFTER_IDLE_S = 2.0


def _checked_in(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Ping a connection that sat idle: a database restart, a proxy's idle timeout or a
    failover may have closed it meanwhile. A failed ping makes the pool drop it and take
    another (DisconnectionError), so the batch never sees it. A connection that broke in
    the last PING_AFTER_IDLE_S fails its batch once, which is retried on a new one."""
    idle_since = record.info.get("checked_in")
    if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
        return
    try:
        dbapi_connection.ping()
    except Exception as exc:  # any failure: the connection is not usable
        raise sa_exc.DisconnectionError(f"idle connection failed its ping: {exc}") from exc


def _json_dumps(value: Any) -> str:
    # orjson instead of the stdlib: the raw message and profile of every row go through it.
    return orjson.dumps(value).decode()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; busy_timeout makes several consumer
    # processes on one file queue for the write lock instead of failing at once.
    # `migrate` leaves the file in WAL mode (the mode is stored in the file), so a
    # consumer only reads it here. Switching a file that is not yet in WAL mode needs an
    # exclusive lock, and two processes switching at once deadlock: SQLite answers one of
    # them "database is locked" at once, without waiting out busy_timeout. Hence the
    # read first, and a few tries with a pause for a file someone else is switching.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=30000")
        for attempt in range(_WAL_SWITCH_TRIES):
            try:
                cursor.execute("PRAGMA journal_mode")
                if str(cursor.fetchone()[0]).lower() in ("wal", "memory"):
                    break
                cursor.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt + 1 == _WAL_SWITCH_TRIES:
                    raise
                time.sleep(0.05 * (attempt + 1))
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


_WAL_SWITCH_TRIES = 20


class Store:
    """Batch writes and outbox bookkeeping over one engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        # The same pool, for one-statement writes that need no transaction around them:
        # a statement is atomic by itself, and BEGIN and COMMIT would be two more round
        # trips (on asyncpg the mode is a flag of the driver's connection, set and reset
        # at checkout and checkin without a round trip).
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._insert = sqlite.insert if self._sqlite else postgresql.insert

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def save(
        self,
        pending: Sequence[PendingMessage],
        *,
        claimant: str = "",
        reclaim: Collection[str] = (),
        claim_for: dt.timedelta = dt.timedelta(0),
        before_commit: Callable[[], None] | None = None,
    ) -> SaveResult:
        """Insert messages and the outbox row of their events in one transaction (the
        fence).

        The new outbox row is claimed by `claimant` (the batch) for `claim_for`: the
        inserter is about to publish it, so neither the relay nor another batch's
        conflicting insert publishes it meanwhile. A conflict whose unpublished row is
        still claimed comes back in `in_flight` ("not yet", rule 5); one whose claim ran
        out (the inserter died), or whose claimant is in `reclaim` (batches of the caller
        that ended without publishing, such as one whose COMMIT answer was lost), is
        claimed for `claimant`, and all the events of its row come back in `to_publish`.
        ``before_commit`` runs inside the transaction after the writes (crash tests).

        Raises :class:`UnstorableError` if the database refused the data (nothing is
        committed), :class:`StoreError` if it failed otherwise.
        """
        if not pending:
            return SaveResult(frozenset(), frozenset(), (), ())
        # One row per key, in key order: concurrent batches that overlap then take their
        # row locks in the same order and cannot deadlock each other on PostgreSQL.
        by_key = {p.message.key: p for p in pending}
        by_key = {k: by_key[k] for k in sorted(by_key)}  # (phone_number_id, wamid) order
        rows = list(by_key.values())
        row_ids = _assign_rows(rows)
        try:
            async with self._engine.begin() as conn:
                if self._sqlite:
                    inserted = await self._insert_messages(conn, rows, row_ids)
                else:
                    inserted = await _insert_pg(conn, rows, row_ids)
                new = [i for i, p in enumerate(rows) if p.message.key in inserted]
                boxes = await self._insert_outbox(
                    conn, [(row_ids[i], rows[i].event) for i in new], claimant, claim_for
                )
                conflicts = frozenset(by_key) - inserted
                claimed, in_flight = await self._unpublished(
                    conn, [k for k in by_key if k in conflicts], claimant, reclaim, claim_for
                )
                if before_commit is not None:
                    before_commit()
        except (SQLAlchemyError, OSError) as exc:
            raise _translate(exc, f"storing {len(by_key)} message(s)") from exc
        return SaveResult(
            frozenset(inserted),
            conflicts,
            tuple(rows[i].event for i in new) + claimed.events,
            boxes + claimed.outbox_ids,
            in_flight,
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

    async def announced(self, keys: Collection[MessageKey]) -> frozenset[MessageKey]:
        """Which of these messages are stored and announced (a row whose outbox row is
        gone: a published row is deleted): what a done marker in Redis claims, confirmed
        by the authority. One statement, no transaction (PostgreSQL: the keys bound as
        two arrays; SQLite: a row-value IN list per chunk)."""
        if not keys:
            return frozenset()
        ordered = sorted(keys)
        try:
            async with self._autocommit.connect() as conn:
                if self._sqlite:
                    found = await _announced_sqlite(conn, ordered)
                else:
                    found = await _announced_pg(conn, ordered)
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
        except (SQLAlchemyError, OSError) as exc:
            raise _failed(exc, "claiming unpublished outbox rows") from exc
        return _claimed(rows)

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

    async def warm(self, connections: int, *, claim_for: dt.timedelta) -> None:
        """Open `connections` of the pool's connections at once and run a save's two
        statements (the messages insert and the outbox insert) on each, in a transaction
        that is rolled back: nothing is written. On PostgreSQL each connection prepares
        a statement the first time it runs it (and the driver looks up its types): three
        concurrent first saves of 100 messages took 35 ms, 10 ms once warm, so without
        this the first batches after a start are the slowest of the run. (The outbox
        delete is left to its first use: it runs after a batch's events are out.)
        SQLite (in-process) is skipped. Raises what the driver raises."""
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
            return sa.type_coerce(sa.func.strftime(_SQLITE_TS, "now"), _TS)
        return sa.type_coerce(sa.func.now(), _TS)

    def _later(self, delta: dt.timedelta) -> sa.ColumnElement[dt.datetime]:
        """The database's time `delta` from now."""
        if self._sqlite:
            shift = f"{delta.total_seconds():+.3f} seconds"
            return sa.type_coerce(sa.func.strftime(_SQLITE_TS, "now", shift), _TS)
        return sa.type_coerce(sa.func.now() + delta, _TS)

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
        claimant: str,
        claim_for: dt.timedelta,
    ) -> tuple[str, ...]:
        """The outbox rows of the events inserted (`new`: row id and event, in the
        order the rows were assigned); returns their ids."""
        boxes: dict[str, list[OutboundEvent]] = {}
        for row_id, event in new:
            boxes.setdefault(row_id, []).append(event)
        if boxes:
            await conn.execute(
                self._outbox_insert(claim_for),
                [
                    {
                        "id": row_id,
                        "event_count": len(events),
                        "events": _pack_events(events),
                        "claimed_by": claimant or None,
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
        keys: list[MessageKey],
        claimant: str,
        reclaim: Collection[str],
        claim_for: dt.timedelta,
    ) -> tuple[OutboxClaim, frozenset[MessageKey]]:
        """The unpublished outbox rows of conflicting keys: (those claimed now by us, to
        publish; the keys whose row someone else holds, who is publishing it). The claim
        is one UPDATE, so of two batches (or a batch and a relay) racing for a row
        exactly one gets it. At most _CONFLICT_ROWS rows are claimed per save (each may
        hold a batch of other messages' events); the keys of rows beyond that come back
        held too, and their retry (or the relay) takes them."""
        if not keys:
            return OutboxClaim((), ()), frozenset()
        row_of = await (_outbox_of_sqlite if self._sqlite else _outbox_of_pg)(conn, keys)
        row_ids = sorted(set(row_of.values()))
        if not row_ids:  # every conflict was announced already
            return OutboxClaim((), ()), frozenset()
        # A row another transaction has locked (a relay claiming it, a worker claiming or
        # deleting it) is skipped, not waited for: it comes back busy, "not yet". So a
        # save never waits on an outbox row while it holds others, and two batches that
        # conflict on the same rows cannot deadlock (each would lock them in its own
        # scan order). SQLite has no row locks; it serialises writers instead.
        claimed: list[Any] = []
        unpublished: set[str] = set()
        claimable = self._free_or_reclaimed(reclaim)
        for ids in _chunks(row_ids):
            room = _CONFLICT_ROWS - len(claimed)
            if room > 0:
                where = sa.and_(outbox.c.id.in_(ids), claimable)
                claim = self._claim(where, outbox.c.id, room, claimant, claim_for)
                claimed.extend((await conn.execute(claim)).all())
            exists = sa.select(outbox.c.id).where(outbox.c.id.in_(ids))
            unpublished.update(r[0] for r in (await conn.execute(exists)).all())
        ours = _claimed(claimed)
        busy = unpublished - set(ours.outbox_ids)
        return ours, frozenset(k for k, row_id in row_of.items() if row_id in busy)

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
# statement for any number of keys. A row-value IN list, as on SQLite below, was planned
# from the table's statistics too, but on a table that had just grown under one
# phone_number_id (the usual shape: a business has a few numbers) PostgreSQL read every
# row of that number and tested each against the whole list: 286 ms per 450 keys on
# 36,000 rows, where this takes 1.7 ms.
_OUTBOX_OF_PG = sa.text(
    """
SELECT m.phone_number_id, m.source_id, m.outbox_id
FROM unnest(CAST(:phone_number_id AS text[]), CAST(:source_id AS text[]))
    AS k(phone_number_id, source_id)
JOIN messages m ON m.phone_number_id = k.phone_number_id AND m.source_id = k.source_id
WHERE m.outbox_id IS NOT NULL
"""
)


async def _outbox_of_pg(conn: AsyncConnection, keys: list[MessageKey]) -> dict[MessageKey, str]:
    """The outbox row of each of these keys that has one (an unannounced message)."""
    found = await conn.execute(_OUTBOX_OF_PG, _key_arrays(keys))
    return {MessageKey(r[0], r[1]): r[2] for r in found.all()}


def _key_arrays(keys: list[MessageKey]) -> dict[str, list[str]]:
    """Keys as the two array parameters the unnest() statements join on."""
    return {
        "phone_number_id": [k.phone_number_id for k in keys],
        "source_id": [k.wamid for k in keys],
    }


async def _outbox_of_sqlite(conn: AsyncConnection, keys: list[MessageKey]) -> dict[MessageKey, str]:
    """As _outbox_of_pg, in chunks of a row-value IN list (SQLite binds no arrays)."""
    row_of: dict[MessageKey, str] = {}
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


async def _announced_pg(conn: AsyncConnection, keys: list[MessageKey]) -> frozenset[MessageKey]:
    found = await conn.execute(_ANNOUNCED_PG, _key_arrays(keys))
    return frozenset(MessageKey(r[0], r[1]) for r in found.all())


async def _announced_sqlite(conn: AsyncConnection, keys: list[MessageKey]) -> frozenset[MessageKey]:
    pair = sa.tuple_(messages.c.phone_number_id, messages.c.source_id)
    out: set[MessageKey] = set()
    for chunk in _chunks(keys, _CHUNK // 2):  # two values per key
        found = (
            sa.select(messages.c.phone_number_id, messages.c.source_id)
            .select_from(messages.outerjoin(outbox, outbox.c.id == messages.c.outbox_id))
            .where(pair.in_(chunk), outbox.c.id.is_(None))
        )
        out.update(MessageKey(r[0], r[1]) for r in (await conn.execute(found)).all())
    return frozenset(out)


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
            _json_dumps(row["contact_profile"]) if row["contact_profile"] is not None else None
        )
        row["raw"] = _json_dumps(row["raw"])
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


# -- outbox rows: a batch's events in one value ---------------------------------------

# Bytes of events per outbox row: a batch of large messages gets a few rows, so that no
# value comes near PostgreSQL's 1 GB and whoever is handed rows (a conflicting save, the
# relay) holds a bounded amount.
_ROW_BYTES = 4 * 1024 * 1024
# Rows a conflicting save claims at most (each may hold a batch of other messages).
_CONFLICT_ROWS = 8
# Per event: the lengths of event_id, topic, key and payload, then those bytes.
_EVENT_HEADER = struct.Struct(">IIII")


def _assign_rows(pending: list[PendingMessage]) -> list[str]:
    """The outbox row of each message, should it be inserted: one new id for the batch,
    a next one whenever the events so far would pass _ROW_BYTES."""
    row_id, size, ids = str(uuid.uuid4()), 0, []
    for p in pending:
        weight = len(p.event.payload) + len(p.event.key)
        if size and size + weight > _ROW_BYTES:
            row_id, size = str(uuid.uuid4()), 0
        size += weight
        ids.append(row_id)
    return ids


def _pack_events(events: Sequence[OutboundEvent]) -> bytes:
    parts: list[bytes] = []
    for e in events:
        event_id, topic = e.event_id.encode(), e.topic.encode()
        parts += (
            _EVENT_HEADER.pack(len(event_id), len(topic), len(e.key), len(e.payload)),
            event_id,
            topic,
            e.key,
            e.payload,
        )
    return b"".join(parts)


def unpack_events(blob: bytes) -> list[OutboundEvent]:
    """The events of an outbox row's ``events`` value, in order."""
    events: list[OutboundEvent] = []
    pos, end = 0, len(blob)
    while pos < end:
        sizes = _EVENT_HEADER.unpack_from(blob, pos)
        pos += _EVENT_HEADER.size
        fields = []
        for size in sizes:
            fields.append(blob[pos : pos + size])
            pos += size
        if pos > end:
            raise ValueError("an outbox row's events end short")
        events.append(OutboundEvent(fields[0].decode(), fields[1].decode(), fields[2], fields[3]))
    return events


def _claimed(rows: Sequence[Any]) -> OutboxClaim:
    """Claimed outbox rows (id, events) as their events and ids."""
    return OutboxClaim(
        tuple(e for r in rows for e in unpack_events(bytes(r[1]))), tuple(r[0] for r in rows)
    )


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


class MarkQueue:
    """Outbox rows whose events this process published but which it could not delete
    yet (the database failed right after the publish), retried until the delete works.

    Our claim on those rows stands for LEASE_TTL_S + KAFKA_REQUEST_TIMEOUT_S, and nobody
    else republishes a claimed row; retrying as soon as the database answers again keeps
    such an event announced once instead of leaving it to the relay to announce again.
    Shared by the pipeline and the relay of one process.
    """

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        # Published rows whose delete failed: carried by the next delete, or retried
        # by flush(). Not the deletes under way: a row is deleted by one statement at a
        # time, and a row being deleted now is not "unmarked".
        self._failed: set[str] = set()

    def __len__(self) -> int:
        return len(self._failed)

    async def mark(self, outbox_ids: Sequence[str]) -> int:
        """Delete these rows, and those whose delete failed before; on failure keep
        them all for the retry and raise. Returns how many of the rows deleted had
        failed before (retried now: with batches overlapping, the next batch's delete
        often carries them before the loop's housekeeping does)."""
        retrying = set(self._failed)
        await self._delete(set(outbox_ids) | retrying)
        return len(retrying)

    async def flush(self) -> int:
        """Retry the deletes that failed; returns how many went through. Raises StoreError."""
        retrying = set(self._failed)
        await self._delete(retrying)
        return len(retrying)

    async def _delete(self, ids: set[str]) -> None:
        if not ids:
            return
        try:
            await self._store.mark_published(sorted(ids))
        except StoreError:
            self._failed.update(ids)
            raise
        self._failed.difference_update(ids)
