"""outbox: one row per transaction instead of one per message

An outbox row now holds the events of all the messages one transaction inserted
(``events``, with ``event_count``), and each message names its row in
``messages.outbox_id``: the insert, the index entries and the delete after the publish are
paid once per batch instead of once per message (docs/benchmarks.md, round four). Rows
not yet published when the upgrade runs become rows of one event each, keyed by their
event_id as before, and their messages point at them, so nothing unannounced is lost.

The downgrade turns every row back into rows of one event each (it needs the messages
the rows point at, which the fence keeps).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import struct

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The layout of consumer/store.py at this revision (a migration never imports the code
# it migrates for): per event, the lengths of event_id, topic, key and payload, then
# those bytes.
_HEADER = struct.Struct(">IIII")
_WAMID_MAX = 512
_PNID_MAX = 64
_CHUNK = 500

_old = sa.table(
    "outbox",
    sa.column("event_id", sa.String),
    sa.column("id", sa.String),
    sa.column("message_id", sa.String),
    sa.column("phone_number_id", sa.String),
    sa.column("source_id", sa.String),
    sa.column("topic", sa.String),
    sa.column("key", sa.LargeBinary),
    sa.column("payload", sa.LargeBinary),
    sa.column("events", sa.LargeBinary),
    sa.column("event_count", sa.Integer),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("claimed_by", sa.String),
    sa.column("claimed_until", sa.DateTime(timezone=True)),
)
_messages = sa.table(
    "messages",
    sa.column("id", sa.String),
    sa.column("phone_number_id", sa.String),
    sa.column("source_id", sa.String),
    sa.column("event_id", sa.String),
    sa.column("outbox_id", sa.String),
)


def upgrade() -> None:
    op.add_column("messages", sa.Column("outbox_id", sa.String(36), nullable=True))
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("event_id", new_column_name="id", existing_type=sa.String(36))
        batch.add_column(sa.Column("event_count", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("events", sa.LargeBinary(), nullable=True))
    bind = op.get_bind()
    # Each unpublished row becomes a row of one event, and its message points at it.
    done: str | None = None
    while True:
        page = sa.select(_old.c.id, _old.c.topic, _old.c.key, _old.c.payload).order_by(_old.c.id)
        if done is not None:
            page = page.where(_old.c.id > done)
        rows = bind.execute(page.limit(_CHUNK)).all()
        if not rows:
            break
        for r in rows:
            bind.execute(
                sa.update(_old)
                .where(_old.c.id == r.id)
                .values(event_count=1, events=_pack(r.id, r.topic, bytes(r.key), bytes(r.payload)))
            )
        done = rows[-1].id
    owner = sa.select(_old.c.id).where(_old.c.message_id == _messages.c.id).scalar_subquery()
    bind.execute(
        sa.update(_messages)
        .where(_messages.c.id.in_(sa.select(_old.c.message_id)))
        .values(outbox_id=owner)
    )
    with op.batch_alter_table("outbox") as batch:
        for column in ("message_id", "phone_number_id", "source_id", "topic", "key", "payload"):
            batch.drop_column(column)
        batch.alter_column("event_count", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("events", existing_type=sa.LargeBinary(), nullable=False)
    if bind.dialect.name == "postgresql":
        # A batch's events are one large value: kept out of line without compression
        # (compressing costs the database CPU on every insert, for bytes deleted soon).
        op.execute("ALTER TABLE outbox ALTER COLUMN events SET STORAGE EXTERNAL")


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("message_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("phone_number_id", sa.String(_PNID_MAX), nullable=True))
        batch.add_column(sa.Column("source_id", sa.String(_WAMID_MAX), nullable=True))
        batch.add_column(sa.Column("topic", sa.String(255), nullable=True))
        batch.add_column(sa.Column("key", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("payload", sa.LargeBinary(), nullable=True))
    bind = op.get_bind()
    # Every row becomes rows of one event each, keyed by the event_id.
    boxes = bind.execute(
        sa.select(
            _old.c.id, _old.c.events, _old.c.created_at, _old.c.claimed_by, _old.c.claimed_until
        )
    ).all()
    singles: list[dict[str, object]] = []
    for box in boxes:
        owners = {
            m.event_id: m
            for m in bind.execute(
                sa.select(
                    _messages.c.id,
                    _messages.c.phone_number_id,
                    _messages.c.source_id,
                    _messages.c.event_id,
                ).where(_messages.c.outbox_id == box.id)
            )
        }
        for event_id, topic, key, payload in _unpack(bytes(box.events)):
            message = owners[event_id]
            singles.append(
                {
                    "id": event_id,
                    "message_id": message.id,
                    "phone_number_id": message.phone_number_id,
                    "source_id": message.source_id,
                    "topic": topic,
                    "key": key,
                    "payload": payload,
                    "events": b"",
                    "event_count": 1,
                    "created_at": box.created_at,
                    "claimed_by": box.claimed_by,
                    "claimed_until": box.claimed_until,
                }
            )
    bind.execute(sa.delete(_old))
    for chunk in range(0, len(singles), _CHUNK):
        bind.execute(sa.insert(_old), singles[chunk : chunk + _CHUNK])
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("events")
        batch.drop_column("event_count")
        batch.alter_column("id", new_column_name="event_id", existing_type=sa.String(36))
        for column, type_ in (
            ("message_id", sa.String(36)),
            ("phone_number_id", sa.String(_PNID_MAX)),
            ("source_id", sa.String(_WAMID_MAX)),
            ("topic", sa.String(255)),
            ("key", sa.LargeBinary()),
            ("payload", sa.LargeBinary()),
        ):
            batch.alter_column(column, existing_type=type_, nullable=False)
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("outbox_id")


def _pack(event_id: str, topic: str, key: bytes, payload: bytes) -> bytes:
    eid, top = event_id.encode(), topic.encode()
    return _HEADER.pack(len(eid), len(top), len(key), len(payload)) + eid + top + key + payload


def _unpack(blob: bytes) -> list[tuple[str, str, bytes, bytes]]:
    out: list[tuple[str, str, bytes, bytes]] = []
    pos = 0
    while pos < len(blob):
        sizes = _HEADER.unpack_from(blob, pos)
        pos += _HEADER.size
        fields = []
        for size in sizes:
            fields.append(blob[pos : pos + size])
            pos += size
        out.append((fields[0].decode(), fields[1].decode(), fields[2], fields[3]))
    return out
