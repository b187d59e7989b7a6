"""The migrations build exactly the table definition (so the storage contract the
definition states is the one the database enforces), on PostgreSQL and SQLite; and the
largest identifiers the contract admits really fit, unique index included."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from consumer import events, intake, limits
from consumer.engine import create_engine
from consumer.outbox import unpack_events
from consumer.ports import PendingMessage
from consumer.records import Webhook
from consumer.schema import metadata, outbox
from consumer.store import Store
from consumer.testing import message, record, webhook

pytestmark = pytest.mark.integration


def _diff(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _pending(body: dict[str, Any] | bytes) -> list[PendingMessage]:
    """The body decoded by intake, each message with its event, as the pipeline builds
    them for a save."""
    decoded = intake.decode(record(body), max_bytes=1 << 20)
    assert isinstance(decoded, Webhook), decoded
    now = dt.datetime.now(dt.UTC)
    return [
        PendingMessage(m, events.build(m, topic="out", occurred_at=now)) for m in decoded.messages
    ]


async def test_migrations_match_the_table_definition(database_url: str) -> None:
    """After `migrate`, Alembic finds no difference (types and lengths included) between
    the database and schema.py's tables."""
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
    pending = _pending(body)
    store = Store(create_engine(database_url, pool_size=1, timeout_s=10))
    try:
        assert len((await store.save(pending)).inserted) == 1
        assert len((await store.save(pending)).conflicts) == 1
    finally:
        await store.close()


async def test_numbers_orjson_would_change_are_stored_and_announced_as_sent(
    database_url: str,
) -> None:
    """An integer beyond 64 bits, 1e-400 and 1e400 in a message's content and in its
    contact's profile reach the JSON columns (PostgreSQL json, SQLite text) and the event
    in the outbox digit for digit: read back as text, each is the number as sent."""
    sent = ["123456789012345678901234567890", "1e-400", "-1E+400", "0.1000000000000000000001"]
    contact = {"wa_id": "16505551234", "profile": {"name": "N", "n": "@@"}}
    body = json.dumps(webhook([message("wamid.BIG")], contacts=[contact]))
    body = body.replace('"text": {', '"n": [' + ", ".join(sent) + '], "text": {', 1)
    body = body.replace('"n": "@@"', '"n": [' + ", ".join(sent) + "]", 1)
    pending = _pending(body.encode())
    store = Store(create_engine(database_url, pool_size=1, timeout_s=10))
    try:
        assert len((await store.save(pending)).inserted) == 1
        async with store.engine.connect() as conn:
            raw, profile = (
                await conn.execute(
                    sa.text("SELECT CAST(raw AS TEXT), CAST(contact_profile AS TEXT) FROM messages")
                )
            ).one()
            (packed,) = (await conn.execute(sa.select(outbox.c.events))).one()
    finally:
        await store.close()
    (event,) = unpack_events(bytes(packed))
    for text in (raw, profile, event.payload.decode()):
        numbers = text[text.index('"n":') :]
        numbers = numbers[numbers.index("[") + 1 : numbers.index("]")]
        assert [n.strip() for n in numbers.split(",")] == sent, text
