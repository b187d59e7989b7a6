"""Consumer processes starting at once on one embedded SQLite file (the demo's shape):
none may fail with "database is locked" while the file's journal mode is set."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from consumer import migrate
from consumer.engine import create_engine

pytestmark = pytest.mark.integration


def _journal_mode(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()


def test_migrate_leaves_the_file_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "wg.db"
    migrate.upgrade(f"sqlite+aiosqlite:///{path}")
    assert _journal_mode(path) == "wal"


def test_a_switch_blocked_by_another_writer_waits_for_it(tmp_path: Path) -> None:
    # A file in the default rollback mode (made by an older `migrate`, or copied in) while
    # another process holds its write lock (as a second consumer switching the same file
    # does): SQLite answers the switch to WAL "database is locked" at once, without
    # waiting out busy_timeout, because the switching connection already holds a read
    # lock it would have to upgrade. The engine must wait for the writer, not fail.
    path = tmp_path / "wg.db"
    url = f"sqlite+aiosqlite:///{path}"
    migrate.upgrade(url)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    assert _journal_mode(path) == "delete"

    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")  # holds RESERVED until ROLLBACK
    writer.execute("DELETE FROM messages")
    release = threading.Timer(0.5, writer.rollback)
    release.start()

    async def main() -> None:
        engine = create_engine(url, pool_size=1, timeout_s=30.0)
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1 FROM outbox WHERE 1 = 0"))
        finally:
            await engine.dispose()

    try:
        asyncio.run(main())
    finally:
        release.join()
        writer.close()
    assert _journal_mode(path) == "wal"


def test_a_wal_file_needs_no_switch(tmp_path: Path) -> None:
    # The engine reads the mode first: on a WAL file its connect hook takes no lock, so
    # a writer holding the file does not stall a consumer starting beside it.
    path = tmp_path / "wg.db"
    url = f"sqlite+aiosqlite:///{path}"
    migrate.upgrade(url)

    async def main() -> None:
        writer = sqlite3.connect(path, timeout=0.1)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM messages")
        engine = create_engine(url, pool_size=1, timeout_s=30.0)
        try:
            t0 = time.monotonic()
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1 FROM messages WHERE 1 = 0"))
            assert time.monotonic() - t0 < 5.0
        finally:
            writer.rollback()
            writer.close()
            await engine.dispose()

    asyncio.run(main())


def _sqlite_workers() -> list[threading.Thread]:
    return [
        t for t in threading.enumerate() if "_connection_worker_thread" in t.name and t.is_alive()
    ]


def test_a_failed_open_leaves_no_worker_thread_behind(tmp_path: Path) -> None:
    # aiosqlite queues its worker thread's stop only after the failed open has raised; a
    # command that exits on that error (migrate of a missing folder) used to leave the
    # thread to meet a closed event loop during interpreter shutdown, and CPython aborted
    # the process (exit -6 instead of 1). The error must come only once the thread is gone.
    url = f"sqlite+aiosqlite:///{tmp_path}/no/such/folder/wg.db"

    async def main() -> None:
        before = set(_sqlite_workers())  # another test's engine may still hold one
        for _ in range(20):
            engine = create_engine(url, pool_size=1, timeout_s=5.0)
            try:
                with pytest.raises(sa.exc.OperationalError, match="unable to open"):
                    async with engine.connect():
                        pass
                assert set(_sqlite_workers()) - before == set()
            finally:
                await engine.dispose()

    asyncio.run(main())


def test_the_url_options_still_reach_sqlite(tmp_path: Path) -> None:
    # The engine opens connections itself (above); a URI with mode=ro must still be read-only.
    path = tmp_path / "wg.db"
    migrate.upgrade(f"sqlite+aiosqlite:///{path}")
    url = f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true"

    async def main() -> None:
        engine = create_engine(url, pool_size=1, timeout_s=5.0)
        try:
            async with engine.connect() as conn:
                assert (await conn.execute(sa.text("SELECT count(*) FROM messages"))).scalar() == 0
                with pytest.raises(sa.exc.OperationalError, match="readonly"):
                    await conn.execute(sa.text("DELETE FROM messages"))
        finally:
            await engine.dispose()

    asyncio.run(main())
