"""`migrate`: create or upgrade the database schema."""

from __future__ import annotations

import argparse

from consumer.commands import describe
from consumer.settings import Settings


def add_arguments(parser: argparse.ArgumentParser, summary: str) -> None:
    describe(
        parser,
        summary,
        reads="DATABASE_URL",
        details="Alembic's upgrade to the newest revision; safe to run again. Run it once "
        "per deploy, before the members start.",
        examples="  python -m consumer migrate\n"
        "  DATABASE_URL=sqlite+aiosqlite:///./wamid-guard.db python -m consumer migrate",
    )


def run(settings: Settings, _args: argparse.Namespace) -> int:
    from consumer import migrate
    from consumer.settings import mask_url

    before, after = migrate.migrate(settings.database_url)
    where = f"DATABASE_URL={mask_url(settings.database_url)}"
    newest = " (the newest)" if after == migrate.head() else ""
    if before == after:
        print(f"{where}: already at revision {after}{newest}")
    else:
        print(f"{where}: migrated from revision {before or 'none'} to {after}{newest}")
    return 0
