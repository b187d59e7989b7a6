"""statuses and message_state: status updates stored once, each message's state forward

``statuses`` is the fence of status updates, keyed by (phone_number_id, status_id,
status); ``message_state`` holds each message's highest status, changed only forward
(docs/design.md, "Statuses"). Two new tables: nothing existing is rewritten.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSON(), "postgresql")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "statuses",
        sa.Column("phone_number_id", sa.String(64), nullable=False),
        sa.Column("status_id", sa.String(512), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("rank", sa.SmallInteger),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("recipient_id", sa.String(64), nullable=False),
        sa.Column("status_timestamp", sa.String(20), nullable=False),
        sa.Column("raw", _JSON, nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("source_topic", sa.String(255), nullable=False),
        sa.Column("source_partition", sa.Integer, nullable=False),
        sa.Column("source_offset", sa.BigInteger, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("outbox_id", sa.String(36)),
        sa.PrimaryKeyConstraint("phone_number_id", "status_id", "status", name="pk_statuses"),
    )
    op.create_table(
        "message_state",
        sa.Column("phone_number_id", sa.String(64), nullable=False),
        sa.Column("status_id", sa.String(512), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("rank", sa.SmallInteger, nullable=False),
        sa.Column("previous_status", sa.String(32)),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("phone_number_id", "status_id", name="pk_message_state"),
    )


def downgrade() -> None:
    op.drop_table("message_state")
    op.drop_table("statuses")
