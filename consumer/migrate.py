"""`python -m consumer migrate`: bring the database schema to the newest revision."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

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
