"""The ports of the flow: what the pipeline and the relay need of Redis, the database
and Kafka, as Protocols.

``Pipeline``, ``Relay`` and ``MarkQueue`` are written against these, never against an
adapter. The adapters (:class:`consumer.dedup.Leases`, :class:`consumer.store.Store`,
:class:`consumer.publish.Publisher`) satisfy them structurally, as do the in-memory
fakes of :mod:`consumer.testing`; mypy checks both.

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
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from consumer.dedup import LeaseKey, LeaseState
from consumer.events import OutboundEvent
from consumer.records import Invalid, MessageKey
from consumer.store import OutboxClaim, PendingMessage, SaveResult

__all__ = ["EventSink", "LeaseStore", "MessageStore"]


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
        *,
        claimant: str = "",
        reclaim: Collection[str] = (),
        claim_for: dt.timedelta = dt.timedelta(0),
        before_commit: Callable[[], None] | None = None,
    ) -> SaveResult:
        """Insert the messages and the outbox rows of their events in one transaction,
        behind the unique fence on (phone_number_id, wamid).

        New outbox rows are claimed by `claimant` (one batch) for `claim_for`. A
        conflict whose unpublished row is still claimed comes back in ``in_flight``; one
        whose claim ran out, or whose claimant is in `reclaim` (the caller's batches
        that ended without publishing), is claimed for `claimant`, and its row's events
        come back in ``to_publish`` after the new events. A running claimant must never
        be in anyone's `reclaim`: that is what keeps two batches off one row.
        ``outbox_ids`` names every row handed back: the caller publishes all of
        ``to_publish``, then marks those rows (or releases them if it could not).
        ``before_commit`` runs inside the transaction after the writes.

        Raises UnstorableError if the data was refused (nothing is committed),
        StoreError if the database failed otherwise (the commit may or may not have
        happened)."""

    async def mark_published(self, outbox_ids: Sequence[str]) -> None:
        """Record that all the events of these outbox rows reached the outbound topic:
        the rows are done. Raises StoreError."""

    async def announced(self, keys: Collection[MessageKey]) -> frozenset[MessageKey]:
        """Which of these messages are stored and announced: what a done marker claims,
        confirmed. Raises StoreError."""

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
