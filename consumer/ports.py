"""The ports of the flow: what the pipeline and the relay need of Redis, the database
and Kafka, as Protocols, and the values that cross them.

``Pipeline``, ``Relay`` and ``MarkQueue`` are written against these, never against an
adapter. The adapters (:class:`consumer.dedup.Leases`, :class:`consumer.store.Store`,
:class:`consumer.publish.Publisher`) satisfy them structurally, as do the in-memory
fakes of :mod:`consumer.testing`; mypy checks both. This module imports no adapter and
no client library.

What a method promises is part of the port: an outage raises a
:class:`~consumer.errors.DependencyError` subclass (a lease store failure is a
:class:`~consumer.errors.LeaseStoreError`, a database failure a
:class:`~consumer.errors.StoreError`, a broker failure a
:class:`~consumer.errors.BrokerError`), which the caller retries; data the database
refuses raises :class:`~consumer.errors.UnstorableError`, which the caller isolates and
dead-letters (docs/design.md, rule 10).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from consumer.events import OutboundEvent
from consumer.records import (
    Invalid,
    ItemKey,
    Message,
    MessageKey,
    RecordKey,
    StatusKey,
    StatusUpdate,
)

__all__ = [
    "UNCLAIMED",
    "Claim",
    "EventSink",
    "LeaseKey",
    "LeaseState",
    "LeaseStore",
    "MessageStore",
    "OutboxClaim",
    "PendingMessage",
    "PendingStatus",
    "SaveResult",
]

# -- the lease store's values ----------------------------------------------------------

# What a lease guards: a message or a status update (stored and announced once), or an
# inbound record that is not usable (dead-lettered once).
LeaseKey = MessageKey | StatusKey | RecordKey


class LeaseState(enum.Enum):
    """A key's state as :meth:`LeaseStore.acquire` found it."""

    ACQUIRED = "acquired"
    HELD = "held"  # another worker is on it: not yet, not skip (docs/design.md, rule 5)
    # Stored and announced already, says the marker: a hint the database confirms before
    # anything is skipped (docs/design.md, rule 1).
    DONE = "done"
    # A key under the prefix that is neither a lease nor a marker of ours (nothing says
    # when it ends): left alone, and the message goes to the database's fence without a
    # lease, so it never waits on the key (docs/design.md, "Keys we did not write").
    FOREIGN = "foreign"


# -- the message store's values --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """A message and the event that announces it, ready for the transaction."""

    message: Message
    event: OutboundEvent


@dataclass(frozen=True, slots=True)
class PendingStatus:
    """A status update and the event that announces it, should it move its message's
    state forward (the transaction decides)."""

    update: StatusUpdate
    event: OutboundEvent


@dataclass(frozen=True, slots=True)
class Claim:
    """Who a save claims outbox rows for, and for how long (docs/design.md, rule 7).

    `claimant` names one batch; `claim_for` is how long its claim holds; `reclaim` names
    the caller's batches that ended without publishing, whose claims this save may take
    back at once. A running claimant is never in anyone's `reclaim`."""

    claimant: str = ""
    claim_for: dt.timedelta = dt.timedelta(0)
    reclaim: frozenset[str] = frozenset()


UNCLAIMED = Claim()
"""A save that claims nothing: its rows are free for the relay at once."""


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What one batch's transaction did, to messages and status updates alike."""

    inserted: frozenset[ItemKey]
    conflicts: frozenset[ItemKey]
    to_publish: tuple[OutboundEvent, ...]  # new events, then unpublished ones of conflicts
    # The outbox rows that hold `to_publish`, claimed by the caller: to mark once all of
    # `to_publish` is out, or to release if it is not.
    outbox_ids: tuple[str, ...]
    # Conflicts whose unpublished row another worker is publishing right now, and keys
    # whose event waits for an earlier status of the same message to be announced first
    # (docs/design.md, "Statuses"): not yet done, retried.
    in_flight: frozenset[ItemKey] = frozenset()
    # Status updates inserted that did not move their message's state: stored, no event.
    stale: frozenset[StatusKey] = frozenset()


@dataclass(frozen=True, slots=True)
class OutboxClaim:
    """Outbox rows claimed for publishing: their events, and their ids (to mark once
    all the events are out, or to release)."""

    events: tuple[OutboundEvent, ...]
    outbox_ids: tuple[str, ...]


# -- the ports ---------------------------------------------------------------------------


class LeaseStore(Protocol):
    """Leases on messages and on bad records' dead letters (docs/design.md, rules 2-5).

    A key holds nothing, a processing lease (an owner token) or a done marker. Every
    method takes a batch of keys at once and raises
    :class:`~consumer.errors.LeaseStoreError` when the store fails; a failed call may
    have taken effect on some keys.
    """

    async def acquire(self, keys: Sequence[LeaseKey], token: str) -> dict[LeaseKey, LeaseState]:
        """Try to take a lease on every key at once (``SET NX``): each key's state is
        ACQUIRED (ours now, under `token`), HELD (another owner's lease) or DONE (a done
        marker). Raises LeaseStoreError."""

    async def release(self, keys: Sequence[LeaseKey], token: str) -> int:
        """Give back the leases `token` owns (compare-and-delete: never another owner's
        lease), so a retry is not swallowed. Returns how many were released. Raises
        LeaseStoreError."""

    async def finish(self, keys: Sequence[LeaseKey], token: str) -> int:
        """Turn the leases `token` owns into long-lived done markers; a key whose lease
        ran out gets the marker too, a key another owner holds now is left alone.
        Returns how many of the leases were still ours: fewer than `keys` means some ran
        out while we worked. Raises LeaseStoreError."""


class MessageStore(Protocol):
    """Messages and their outbox, the authority on "stored exactly once" (docs/design.md,
    rules 1, 7 and 12).

    Every method raises :class:`~consumer.errors.StoreError` when the database fails;
    :meth:`save` raises :class:`~consumer.errors.UnstorableError` when it refuses the
    data.
    """

    async def save(
        self,
        pending: Sequence[PendingMessage],
        claim: Claim = UNCLAIMED,
        statuses: Sequence[PendingStatus] = (),
    ) -> SaveResult:
        """Insert the messages and the outbox rows of their events in one transaction,
        behind the unique fence on (phone_number_id, wamid); and the status updates,
        behind theirs on (phone_number_id, id, status), each message's state moved only
        forward, an event only for a status that moved it (or a word Meta may add).

        New outbox rows are claimed for `claim`. A conflict whose unpublished row is
        still claimed comes back in ``in_flight``; one whose claim ran out, or whose
        claimant is in ``claim.reclaim``, is claimed for ``claim.claimant``, and its
        row's events come back in ``to_publish`` after the new events. ``outbox_ids``
        names every row handed back: the caller publishes all of ``to_publish``, then
        marks those rows (or releases them if it could not).

        Raises UnstorableError if the data was refused (nothing is committed),
        StoreError if the database failed otherwise (the commit may or may not have
        happened)."""

    async def mark_published(self, outbox_ids: Sequence[str]) -> None:
        """Record that all the events of these outbox rows reached the outbound topic:
        the rows are done. Raises StoreError."""

    async def announced(self, keys: Collection[ItemKey]) -> frozenset[ItemKey]:
        """Which of these messages and status updates are stored and announced (a stale
        status: stored): what a done marker claims, confirmed. Raises StoreError."""

    async def release_claims(self, outbox_ids: Sequence[str], claimant: str) -> None:
        """Give up `claimant`'s claims on these rows (others' claims stay), so the next
        try need not wait for the claims to run out. Raises StoreError."""

    async def claim_unpublished(
        self, *, claimant: str, claim_for: dt.timedelta, limit: int
    ) -> OutboxClaim:
        """Claim, for `claimant` and `claim_for`, up to `limit` outbox rows that are not
        published and that nobody claims (their claim ran out), oldest first; a row is
        claimed by one caller at a time. Returns their events and ids. Raises StoreError."""

    async def outbox_stats(self) -> tuple[int, float]:
        """How many events are not yet announced, and the age in seconds of the oldest
        (0 when none), by the database's clock. Raises StoreError."""


class EventSink(Protocol):
    """The outbound and dead-letter topics."""

    async def publish(self, events: Sequence[OutboundEvent]) -> None:
        """Send the events and return once the broker has acknowledged all of them.
        Raises :class:`~consumer.errors.BrokerError` otherwise (some may have been
        written: a retry sends them again, with the same event_id)."""

    async def dead_letter(self, invalid: Sequence[Invalid]) -> None:
        """Send bad records to the dead-letter topic, with why and where from, and return
        once the broker has acknowledged all of them; a dead letter always fits (one
        refused as too large goes again in its minimal form). Raises
        :class:`~consumer.errors.BrokerError` otherwise."""
