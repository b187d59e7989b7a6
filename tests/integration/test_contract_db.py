"""The migrations build exactly the table definition (so the storage contract the
definition states is the one the database enforces), on PostgreSQL and SQLite; and the
largest identifiers the contract admits really fit, unique index included."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from consumer import events, intake, limits
from consumer.records import Webhook
from consumer.store import PendingMessage, Store, create_engine, metadata
from consumer.testing import message, record, webhook

pytestmark = pytest.mark.integration


def _diff(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_migrations_match_the_table_definition(database_url: str) -> None:
    """After `migrate`, Alembic finds no difference (types and lengths included) between
    the database and store.py's tables."""
    engine = create_engine(database_url, pool_size=1, timeout_s=10)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_the_largest_identifiers_fit(database_url: str) -> None:
    """Every identifier at its limit in four-byte characters is accepted by intake and
    stored, and its duplicate is fenced by the unique index (whose entry must fit)."""
    wide = "\U0001f600"
    msg = message(wide * limits.WAMID_MAX, sender=wide * limits.SENDER_MAX)
    msg["type"] = wide * limits.MESSAGE_TYPE_MAX
    msg["timestamp"] = wide * limits.TIMESTAMP_MAX
    contact = {"wa_id": wide * limits.CONTACT_WA_ID_MAX, "profile": {"name": wide * 1000}}
    body = webhook([msg], pnid=wide * limits.PHONE_NUMBER_ID_MAX, contacts=[contact])
    decoded = intake.decode(record(body), max_bytes=1 << 20)
    assert isinstance(decoded, Webhook), decoded
    now = dt.datetime.now(dt.UTC)
    pending = [
        PendingMessage(m, events.build(m, topic="out", occurred_at=now)) for m in decoded.messages
    ]
    store = Store(create_engine(database_url, pool_size=1, timeout_s=10))
    try:
        assert len((await store.save(pending)).inserted) == 1
        assert len((await store.save(pending)).conflicts) == 1
    finally:
        await store.close()
