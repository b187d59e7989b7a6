"""The engine and its pool: PostgreSQL (asyncpg) or the embedded SQLite (aiosqlite),
their connection settings, the idle-connection ping, and the JSON codec of the JSON
columns.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import aiosqlite
import orjson
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def create_engine(url: str, *, pool_size: int, timeout_s: float) -> AsyncEngine:
    """An engine for PostgreSQL (asyncpg) or the embedded SQLite (aiosqlite)."""
    if url.startswith("sqlite"):
        engine = create_async_engine(
            url,
            async_creator=_sqlite_connector(url, timeout_s),
            json_serializer=json_dumps,
            json_deserializer=orjson.loads,
            hide_parameters=True,
        )
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        json_serializer=json_dumps,
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
    """Open aiosqlite connections as SQLAlchemy would, except when opening fails: then
    wait, bounded, for aiosqlite's worker thread to stop before the error goes on, so a
    command that exits on the error does not leave the thread posting to a closed loop
    (which aborts the interpreter)."""
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
# the ping fails); one in use more often is not: SQLAlchemy's pool_pre_ping would ping
# every checkout, and its asyncpg ping is three round trips.
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


def json_dumps(value: Any) -> str:
    """A JSON column's value as text (orjson: the raw message and profile of every row
    go through it)."""
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
