"""`python -m consumer migrate`: bring the database schema to the newest revision."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from consumer.engine import create_engine
from consumer.errors import StoreError
from consumer.settings import mask_url
from consumer.store import database_problem

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config that needs no alembic.ini: the scripts ship in the package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Run migrations up to `revision`. Blocking: call it outside a running event loop
    (or in a thread), since Alembic's env runs its own loop."""
    command.upgrade(alembic_config(database_url), revision)


def head() -> str:
    """The newest revision the package ships."""
    found = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert found is not None  # noqa: S101 - the package ships migrations
    return found


def current(database_url: str) -> str | None:
    """The revision the database is at (None: never migrated)."""

    def read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async def ask() -> str | None:
        engine = create_engine(database_url, pool_size=1, timeout_s=10)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(read)
        finally:
            await engine.dispose()

    return asyncio.run(ask())


def migrate(database_url: str) -> tuple[str | None, str]:
    """Upgrade to the newest revision; (the revision before, the revision after). A
    database that cannot be migrated is a StoreError saying why in one line."""
    try:
        before = current(database_url)
        upgrade(database_url)
        after = current(database_url)
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(
            f"cannot migrate DATABASE_URL={mask_url(database_url)}: {database_problem(exc)}"
        ) from exc
    if after is None:
        raise StoreError(f"DATABASE_URL={mask_url(database_url)}: no revision after migrating")
    return before, after
