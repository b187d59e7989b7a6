"""messages: the fence is the only unique index (no surrogate primary key)

``messages.id`` is derived from (phone_number_id, source_id) (it is the event's
``message.id``), so it is unique exactly when the fence's key is, and its primary-key
index was a second unique index written, and checked, on every insert: about 3 µs of
PostgreSQL's CPU per message (docs/benchmarks.md, round five). The column stays, and the
unique constraint ``uq_messages_phone_number_id_source_id`` (NOT NULL columns) identifies
a row: on PostgreSQL it becomes the table's replica identity, which logical replication
and change-data-capture tools need.

PostgreSQL drops the constraint and its index under a brief exclusive lock, without
rewriting the table; the downgrade builds the index again (a scan of the table). SQLite
copies the table (Alembic's batch mode).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_FENCE = "uq_messages_phone_number_id_source_id"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE messages REPLICA IDENTITY USING INDEX {_FENCE}")
        op.drop_constraint("pk_messages", "messages", type_="primary")
        return
    with op.batch_alter_table("messages", recreate="always") as batch:
        batch.drop_constraint("pk_messages", type_="primary")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_primary_key("pk_messages", "messages", ["id"])
        op.execute("ALTER TABLE messages REPLICA IDENTITY DEFAULT")
        return
    with op.batch_alter_table("messages", recreate="always") as batch:
        batch.create_primary_key("pk_messages", ["id"])
