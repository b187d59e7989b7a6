"""Fixtures of the hostile suite: settings for real members at INFO (so the check that no
log line holds personal data means something), and the database refusal the
`unstorable` cases need."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from consumer.settings import Settings
from tests.hostile.cases import REFUSE_MARK
from tests.support.config import run_settings

# The refusal each database gives a message whose wamid holds cases.REFUSE_MARK, and
# the text of it a dead letter's dlq.detail must carry.
PG_CONSTRAINT = "hostile_refuse"
SQLITE_MESSAGE = "refused by the hostile suite"


@pytest.fixture
def hostile_settings(bootstrap: str, redis_url: str, key_prefix: str) -> Callable[[str], Settings]:
    """Settings for one run on `database_url`: its own topics, group and key prefix;
    members log JSON at INFO; short timings so a stuck record shows within seconds."""

    def make(database_url: str) -> Settings:
        return run_settings(
            bootstrap,
            redis_url,
            key_prefix,
            database_url,
            lease_ttl_s=5.0,
            relay_interval_s=1.0,
            log_level="INFO",
        )

    return make


async def refuse_on_postgres(url: str) -> str:
    """A CHECK constraint refusing the marked wamids; returns what its refusal names."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(
            f"ALTER TABLE messages ADD CONSTRAINT {PG_CONSTRAINT} "
            f"CHECK (source_id NOT LIKE '%{REFUSE_MARK}%')"
        )
    finally:
        await conn.close()
    return PG_CONSTRAINT


def refuse_on_sqlite(url: str) -> str:
    """A BEFORE INSERT trigger refusing the marked wamids; returns its message."""
    path = make_url(url).database
    assert path, url
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TRIGGER hostile_refuse BEFORE INSERT ON messages "
            f"WHEN NEW.source_id LIKE '%{REFUSE_MARK}%' "
            f"BEGIN SELECT RAISE(ABORT, '{SQLITE_MESSAGE}'); END"
        )
    conn.close()
    return SQLITE_MESSAGE
