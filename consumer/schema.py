"""The tables: ``messages`` (the fence), ``statuses`` (the status updates' fence),
``message_state`` (each sent message's highest status) and ``outbox`` (a batch's events
until they are announced), as SQLAlchemy metadata (docs/design.md, rule 1 and
"Statuses").

The Store writes them and the migrations check against them; a change here needs a
migration under ``consumer/migrations``.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from consumer import limits

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)
# PostgreSQL's json, not jsonb: it keeps the text as Meta sent it, \u0000 included (jsonb
# refuses it, and a text body may hold one).
_JSON = sa.JSON().with_variant(postgresql.JSON(), "postgresql")
TS = sa.DateTime(timezone=True)  # every time column: timezone-aware
_SOURCE_ID = sa.String(limits.WAMID_MAX)

messages = sa.Table(
    "messages",
    metadata,
    # The event's message.id, derived from (phone_number_id, source_id): unique because
    # the fence is, so not indexed (a second unique index cost every insert; migration
    # 0005). The fence's key identifies a row.
    sa.Column("id", sa.String(36), nullable=False),
    sa.Column("phone_number_id", sa.String(limits.PHONE_NUMBER_ID_MAX), nullable=False),
    sa.Column("source_id", _SOURCE_ID, nullable=False),
    sa.Column("sender", sa.String(limits.SENDER_MAX), nullable=False),
    sa.Column("message_type", sa.String(limits.MESSAGE_TYPE_MAX), nullable=False),
    sa.Column("message_timestamp", sa.String(limits.TIMESTAMP_MAX), nullable=False),
    sa.Column("contact_wa_id", sa.String(limits.CONTACT_WA_ID_MAX)),
    # A copy for queries and display; NUL (which text columns refuse) is U+FFFD here, and
    # the name as sent is in contact_profile and raw.
    sa.Column("contact_name", sa.Text),
    sa.Column("contact_profile", _JSON),
    sa.Column("raw", _JSON, nullable=False),
    sa.Column("event_id", sa.String(36), nullable=False),
    sa.Column("source_topic", sa.String(255), nullable=False),
    sa.Column("source_partition", sa.Integer, nullable=False),
    sa.Column("source_offset", sa.BigInteger, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    # The outbox row that announces this message: while it exists, the event is not yet
    # announced (a redelivery finds it here, through the unique key). Not indexed.
    sa.Column("outbox_id", sa.String(36)),
    sa.UniqueConstraint("phone_number_id", "source_id"),
)

# One row per transaction (per few MiB of events), not per message: the insert, its index
# entries and the delete after the publish are paid once per batch.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("event_count", sa.Integer, nullable=False),
    # The events, each as event_id, topic, key and payload (consumer.outbox.pack_events).
    sa.Column("events", sa.LargeBinary, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    # The claim: who publishes this row, and until when (the database's clock).
    sa.Column("claimed_by", sa.String(128)),
    sa.Column("claimed_until", TS),
    sa.Index("ix_outbox_created_at", "created_at"),
)

# Every status update seen, once: the fence of (phone_number_id, message id, word). A
# duplicate is found here (or by its done marker, which this confirms).
statuses = sa.Table(
    "statuses",
    metadata,
    sa.Column("phone_number_id", sa.String(limits.PHONE_NUMBER_ID_MAX), nullable=False),
    sa.Column("status_id", _SOURCE_ID, nullable=False),  # the message's wamid
    sa.Column("status", sa.String(limits.STATUS_MAX), nullable=False),
    # The word's place in the order (consumer/statuses.py); null for a word Meta may add.
    sa.Column("rank", sa.SmallInteger),
    # "announced" (it moved the state forward, or is a word Meta may add) or "stale"
    # (at or below the state when it came: stored as seen, no event).
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("recipient_id", sa.String(limits.RECIPIENT_MAX), nullable=False),
    sa.Column("status_timestamp", sa.String(limits.TIMESTAMP_MAX), nullable=False),
    sa.Column("raw", _JSON, nullable=False),
    sa.Column("event_id", sa.String(36), nullable=False),
    sa.Column("source_topic", sa.String(255), nullable=False),
    sa.Column("source_partition", sa.Integer, nullable=False),
    sa.Column("source_offset", sa.BigInteger, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    # The outbox row of its event (announced only): while that row exists, the event is
    # not yet announced, and the message's later statuses wait for it. Not indexed.
    sa.Column("outbox_id", sa.String(36)),
    sa.PrimaryKeyConstraint("phone_number_id", "status_id", "status"),
)

# The state of each message a status was seen for: its highest status. Changed only
# forward, by one conditional upsert per batch (the row lock orders members).
message_state = sa.Table(
    "message_state",
    metadata,
    sa.Column("phone_number_id", sa.String(limits.PHONE_NUMBER_ID_MAX), nullable=False),
    sa.Column("status_id", _SOURCE_ID, nullable=False),
    sa.Column("status", sa.String(limits.STATUS_MAX), nullable=False),
    sa.Column("rank", sa.SmallInteger, nullable=False),
    # The state it moved from (null: none before): set by the same conditional upsert,
    # so the batch that moved it knows which of its statuses moved it.
    sa.Column("previous_status", sa.String(limits.STATUS_MAX)),
    sa.Column("updated_at", TS, nullable=False),
    sa.PrimaryKeyConstraint("phone_number_id", "status_id"),
)
