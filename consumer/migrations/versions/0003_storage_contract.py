"""the storage contract: longer wamids, JSON columns that keep what Meta sent

source_id (messages and outbox) grows from 255 to 512 characters (consumer/limits.py:
room for a change of Meta's wamid format). On PostgreSQL, raw and contact_profile become
json instead of jsonb: json keeps the text as sent, \\u0000 included, which jsonb refuses
(a text body may hold one). Changing the JSON columns rewrites the messages table under
an exclusive lock: see docs/operations.md ("Upgrading") before running it on a large table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The numbers of consumer/limits.py at this revision (a migration never imports the
# code it migrates for: the code moves on, the migration must not).
_WAMID_MAX = 512
_WAMID_MAX_BEFORE = 255


def upgrade() -> None:
    _source_id(sa.String(_WAMID_MAX_BEFORE), sa.String(_WAMID_MAX))
    if op.get_bind().dialect.name == "postgresql":
        for column in ("raw", "contact_profile"):
            op.alter_column(
                "messages",
                column,
                type_=postgresql.JSON(),
                existing_type=postgresql.JSONB(),
                postgresql_using=f"{column}::json",
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Fails on a row holding \u0000, which jsonb cannot keep: such rows must be
        # changed by hand before going back.
        for column in ("raw", "contact_profile"):
            op.alter_column(
                "messages",
                column,
                type_=postgresql.JSONB(),
                existing_type=postgresql.JSON(),
                postgresql_using=f"{column}::jsonb",
            )
    _source_id(sa.String(_WAMID_MAX), sa.String(_WAMID_MAX_BEFORE))


def _source_id(before: sa.String, after: sa.String) -> None:
    # On PostgreSQL a longer varchar is a catalogue change, not a rewrite. SQLite does not
    # enforce the length, but batch mode copies the table so that its schema says it.
    for table in ("messages", "outbox"):
        with op.batch_alter_table(table) as batch:
            batch.alter_column("source_id", type_=after, existing_type=before, nullable=False)
