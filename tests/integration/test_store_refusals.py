"""How the real databases fail, and how the store tells a data error from an outage
(docs/design.md, rule 10): a refusal of the data is UnstorableError (nothing of the
write is committed), anything else is StoreError; neither message carries the statement
or its parameters (they hold message bodies and phone numbers)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
import sqlalchemy as sa

from consumer import events, intake, limits
from consumer.engine import create_engine
from consumer.errors import StoreError, UnstorableError
from consumer.ports import Claim, PendingMessage
from consumer.records import Message, MessageKey, Webhook
from consumer.schema import messages, outbox
from consumer.store import Store
from consumer.testing import message, record, webhook

pytestmark = pytest.mark.integration

PII = "Sheena-Nelson-PII-4471"


def _messages(*wamids: str, text: str = PII) -> list[Message]:
    decoded = intake.decode(
        record(webhook([message(w, text=text) for w in wamids])), max_bytes=1 << 20
    )
    assert isinstance(decoded, Webhook), decoded
    return list(decoded.messages)


def _pending(msgs: list[Message]) -> list[PendingMessage]:
    at = dt.datetime.now(dt.UTC)
    return [PendingMessage(m, events.build(m, topic="out", occurred_at=at)) for m in msgs]


async def _counts(store: Store) -> tuple[int, int]:
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(sa.func.count()).select_from(messages))).scalar()
        out = (await conn.execute(sa.select(sa.func.count()).select_from(outbox))).scalar()
    return int(rows or 0), int(out or 0)


async def _refuse_wamids_containing(store: Store, marker: str) -> None:
    """The database refuses what intake accepts: a CHECK constraint (PostgreSQL) or a
    trigger (SQLite), as a stricter schema or a DBA's rule would."""
    async with store.engine.begin() as conn:
        if store.engine.dialect.name == "postgresql":
            await conn.execute(
                sa.text(
                    "ALTER TABLE messages ADD CONSTRAINT refuse_marked "
                    f"CHECK (source_id NOT LIKE '%{marker}%')"
                )
            )
        else:
            await conn.execute(
                sa.text(
                    "CREATE TRIGGER refuse_marked BEFORE INSERT ON messages "
                    f"WHEN NEW.source_id LIKE '%{marker}%' "
                    "BEGIN SELECT RAISE(ABORT, 'refused by refuse_marked'); END"
                )
            )


async def test_a_refused_value_is_unstorable_and_nothing_is_committed(store: Store) -> None:
    """One message of a batch breaks a constraint: the save raises UnstorableError with
    the database's message (naming the constraint), commits none of the batch, and says
    nothing of the statement or the values."""
    await _refuse_wamids_containing(store, "refuse-me")
    batch = _pending(_messages("wamid.ok1", "wamid.refuse-me", "wamid.ok2"))
    with pytest.raises(UnstorableError) as info:
        await store.save(batch, Claim("w1", dt.timedelta(seconds=30)))
    text = str(info.value)
    assert "refuse_marked" in text
    assert PII not in text
    assert "INSERT" not in text
    assert "[SQL" not in text
    assert await _counts(store) == (0, 0)
    # Without the culprit the same neighbours are stored.
    saved = await store.save(_pending(_messages("wamid.ok1", "wamid.ok2")))
    assert len(saved.inserted) == 2


async def test_postgresql_refuses_what_intake_keeps_out(postgres_url: str) -> None:
    """Why intake is the gate: PostgreSQL refuses a wamid longer than its column and a NUL
    in an id (SQLite would store both), as data errors, not outages; \\u0000 in a text
    body is stored faithfully (json, not jsonb) and reads back."""
    store = Store(create_engine(postgres_url, pool_size=2, timeout_s=10))
    try:
        (ok,) = _messages("wamid.fine")
        too_long = dataclasses.replace(
            ok, key=MessageKey(ok.key.phone_number_id, "w" * (limits.WAMID_MAX + 1))
        )
        with pytest.raises(UnstorableError, match="22001"):
            await store.save(_pending([too_long]))
        nul = dataclasses.replace(ok, key=MessageKey(ok.key.phone_number_id, "wamid.a\x00b"))
        with pytest.raises(UnstorableError, match="22021"):
            await store.save(_pending([nul]))
        (with_nul,) = _messages("wamid.nul", text="before\x00after")
        await store.save(_pending([with_nul]))
        async with store.engine.connect() as conn:
            raw = (await conn.execute(sa.select(messages.c.raw))).scalar_one()
        assert raw["text"]["body"] == "before\x00after"
    finally:
        await store.close()


async def test_a_name_with_nul_is_stored_with_a_stand_in_in_the_text_column(
    store: Store,
) -> None:
    """contact_name is a text column (no NUL on PostgreSQL): it gets U+FFFD there, while
    contact_profile keeps the name as sent, on both databases alike."""
    (m,) = _messages("wamid.name")
    m = dataclasses.replace(m, contact_name="Na\x00me", contact_profile={"name": "Na\x00me"})
    await store.save(_pending([m]))
    async with store.engine.connect() as conn:
        name, profile = (
            await conn.execute(sa.select(messages.c.contact_name, messages.c.contact_profile))
        ).one()
    assert name == "Na\ufffdme"
    assert profile == {"name": "Na\x00me"}


async def test_an_unreachable_database_is_an_outage_not_a_data_error(database_url: str) -> None:
    """A database that is not there (or not migrated) fails with StoreError, never
    UnstorableError: waiting or an operator fixes it, and no record may be dead-lettered
    for it."""
    if database_url.startswith("sqlite"):
        broken = database_url.replace("wamid-guard.db", "missing/dir/none.db")
    else:
        broken = "postgresql+asyncpg://postgres@127.0.0.1:1/none"
    store = Store(create_engine(broken, pool_size=1, timeout_s=2))
    try:
        with pytest.raises(StoreError) as info:
            await store.save(_pending(_messages("wamid.x")))
        assert not isinstance(info.value, UnstorableError)
        assert PII not in str(info.value)
    finally:
        await store.close()
    empty = Store(create_engine(database_url, pool_size=1, timeout_s=5))
    try:
        async with empty.engine.begin() as conn:
            await conn.execute(sa.text("DROP TABLE outbox"))
        with pytest.raises(StoreError) as info:
            await empty.save(_pending(_messages("wamid.y")))
        assert not isinstance(info.value, UnstorableError), "a missing table is no data error"
        assert "[SQL" not in str(info.value)
    finally:
        await empty.close()
