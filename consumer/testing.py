"""In-memory stand-ins for Redis leases, the SQL store and the Kafka publisher, and
builders of inbound records and webhook bodies.

Shipped in the package (as a library ships its in-memory connector) so that whoever
builds on the pipeline can test it without any network. The fakes satisfy the ports of
:mod:`consumer.ports` and follow the semantics of the real adapters closely enough for
the pipeline's decisions to be checked:

* :class:`FakeLeases` (a :class:`~consumer.ports.LeaseStore`) - one value per key:
  ``<token>`` (a lease) or ``done:<token>``, or a key of someone else's (foreign);
  acquire is SET NX, release is compare-and-delete, finish is compare-and-set.
* :class:`FakeStore` (a :class:`~consumer.ports.MessageStore`) - a unique
  ``(phone_number_id, wamid)`` fence plus an outbox of one row per event (its id the
  event_id) with a published flag;
  can fail before or after "committing"; keeps no claims and no clock.
* :class:`FakePublisher` (an :class:`~consumer.ports.EventSink`) - records what was
  sent; can fail with ``BrokerError``.

Nothing here imports a test framework: this module is part of the wheel.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumer import statuses as status_rules
from consumer.dedup import DONE_PREFIX
from consumer.errors import (
    BrokerError,
    LeaseStoreError,
    PartlyPublishedError,
    PublishPendingError,
    StoreError,
    UnstorableError,
)
from consumer.events import OutboundEvent
from consumer.ports import (
    UNCLAIMED,
    Claim,
    LeaseKey,
    LeaseState,
    OutboxClaim,
    PendingMessage,
    PendingStatus,
    SaveResult,
)
from consumer.records import InboundRecord, Invalid, ItemKey, MessageKey, StatusKey

PNID = "106540352242922"
SENDER = "16505551234"
TOPIC = "whatsapp.webhooks"


class FakeLeases:
    """A :class:`~consumer.ports.LeaseStore` over a dict, like
    :class:`consumer.dedup.Leases`; a method named in `fail_on` raises LeaseStoreError."""

    def __init__(self) -> None:
        self.values: dict[LeaseKey, str] = {}
        # Keys this project did not write (no TTL): reported FOREIGN, never changed.
        self.foreign: set[LeaseKey] = set()
        self.fail_on: set[str] = set()  # "acquire", "release", "finish"
        self.calls: list[tuple[str, tuple[LeaseKey, ...], str]] = []

    # -- test setup / inspection ---------------------------------------------------

    def hold(self, key: LeaseKey, owner: str = "other-worker:1") -> None:
        """Another worker holds a processing lease on `key`."""
        self.values[key] = owner

    def mark_done(self, key: LeaseKey, owner: str = "other-worker:1") -> None:
        """`key` carries a done marker (stored and announced earlier)."""
        self.values[key] = DONE_PREFIX + owner

    def plant_foreign(self, key: LeaseKey, value: str = "someone-else") -> None:
        """`key` holds a value another program wrote, with no TTL."""
        self.values[key] = value
        self.foreign.add(key)

    def owned_by(self, token_prefix: str) -> set[LeaseKey]:
        """Keys whose *lease* (not done marker) has a token starting with the prefix."""
        return {k for k, v in self.values.items() if v.startswith(token_prefix)}

    def done_keys(self) -> set[LeaseKey]:
        return {k for k, v in self.values.items() if v.startswith(DONE_PREFIX)}

    # -- the LeaseStore port -------------------------------------------------------

    async def acquire(self, keys: Sequence[LeaseKey], token: str) -> dict[LeaseKey, LeaseState]:
        self._record("acquire", keys, token)
        out: dict[LeaseKey, LeaseState] = {}
        for key in keys:
            value = self.values.get(key)
            if value is None:
                self.values[key] = token
                out[key] = LeaseState.ACQUIRED
            elif key in self.foreign:
                out[key] = LeaseState.FOREIGN
            elif value.startswith(DONE_PREFIX):
                out[key] = LeaseState.DONE
            else:
                out[key] = LeaseState.HELD
        return out

    async def release(self, keys: Sequence[LeaseKey], token: str) -> int:
        self._record("release", keys, token)
        released = 0
        for key in keys:
            if self.values.get(key) == token and key not in self.foreign:
                del self.values[key]
                released += 1
        return released

    async def finish(self, keys: Sequence[LeaseKey], token: str) -> int:
        self._record("finish", keys, token)
        finished = 0
        for key in keys:
            value = self.values.get(key)
            if key not in self.foreign and (value is None or value == token):
                self.values[key] = DONE_PREFIX + token
                finished += 1
        return finished

    def _record(self, what: str, keys: Sequence[LeaseKey], token: str) -> None:
        self.calls.append((what, tuple(keys), token))
        if what in self.fail_on:
            raise LeaseStoreError(f"fake Redis {what} failed")


@dataclass
class OutboxRow:
    """An outbox row of :class:`FakeStore`: the event, and whether it was announced."""

    event: OutboundEvent
    published: bool = False


@dataclass
class FakeStore:
    """A :class:`~consumer.ports.MessageStore` over dicts, like
    :class:`consumer.store.Store` without its claims and its clock."""

    rows: dict[MessageKey, PendingMessage] = field(default_factory=dict)
    outbox: dict[str, OutboxRow] = field(default_factory=dict)
    fail_next_save: bool = False  # raise before anything is committed
    fail_next_save_after_commit: bool = False  # commit, then lose the answer
    fail_mark_published: bool = False
    fail_next_announced: bool = False
    # A save holding one of these wamids is refused like a CHECK constraint refuses it
    # (nothing of it is committed); one holding a wamid of `explode` raises a surprise.
    refuse: set[str] = field(default_factory=set)
    explode: set[str] = field(default_factory=set)
    saves: list[list[MessageKey]] = field(default_factory=list)
    # Per save: its claimant, and the claimants whose claims it was allowed to take back.
    claimants: list[tuple[str, frozenset[str]]] = field(default_factory=list)

    # Status updates stored (outbox key: their event_id, or None when stale), and each
    # message's state (its highest status).
    status_rows: dict[StatusKey, str | None] = field(default_factory=dict)
    states: dict[tuple[str, str], str] = field(default_factory=dict)

    async def save(
        self,
        pending: Sequence[PendingMessage],
        claim: Claim = UNCLAIMED,
        statuses: Sequence[PendingStatus] = (),
    ) -> SaveResult:
        if statuses:
            base = (
                await self.save(pending, claim)
                if pending
                else SaveResult(frozenset(), frozenset(), (), ())
            )
            return self._save_statuses(base, statuses)
        self.saves.append([p.message.key for p in pending])
        self.claimants.append((claim.claimant, claim.reclaim))
        if self.fail_next_save:
            self.fail_next_save = False
            raise StoreError("fake database: connection lost before commit")
        wamids = {p.message.key.wamid for p in pending}
        if wamids & self.refuse:
            raise UnstorableError("the database refused the data: fake CHECK constraint")
        if wamids & self.explode:
            raise RuntimeError("fake surprise in the database adapter")
        by_key = {p.message.key: p for p in pending}
        inserted = frozenset(k for k in by_key if k not in self.rows)
        conflicts = frozenset(by_key) - inserted
        stale = tuple(
            self.outbox[by_key[k].event.event_id].event
            for k in by_key
            if k in conflicts
            and by_key[k].event.event_id in self.outbox
            and not self.outbox[by_key[k].event.event_id].published
        )
        new = [by_key[k] for k in by_key if k in inserted]
        for p in new:  # commit
            self.rows[p.message.key] = p
            self.outbox[p.event.event_id] = OutboxRow(p.event)
        if self.fail_next_save_after_commit:
            self.fail_next_save_after_commit = False
            raise StoreError("fake database: commit answer lost")
        events = tuple(p.event for p in new) + stale
        return SaveResult(inserted, conflicts, events, tuple(e.event_id for e in events))

    def _save_statuses(self, base: SaveResult, pending: Sequence[PendingStatus]) -> SaveResult:
        """As the Store: the fence on the key, the state moved forward only, taken in
        the order's order within the save; an event per forward move (or unknown word)."""
        by_key: dict[StatusKey, PendingStatus] = {}
        for p in pending:
            by_key.setdefault(p.update.key, p)
        inserted = {k for k in by_key if k not in self.status_rows}
        conflicts = frozenset(by_key) - inserted
        stale: set[StatusKey] = set()
        new_events: list[OutboundEvent] = []
        for k in sorted(inserted, key=lambda k: (k.message, status_rules.rank(k.status) or 0)):
            outcome = status_rules.apply(self.states.get(k.message), k.status)
            if outcome.state is not None:
                self.states[k.message] = outcome.state
            if outcome.announce:
                event = by_key[k].event
                self.status_rows[k] = event.event_id
                self.outbox[event.event_id] = OutboxRow(event)
                new_events.append(event)
            else:
                self.status_rows[k] = None
                stale.add(k)
        again = tuple(
            self.outbox[eid].event
            for k in conflicts
            if (eid := self.status_rows.get(k)) is not None and not self.outbox[eid].published
        )
        events = base.to_publish + tuple(new_events) + again
        return SaveResult(
            base.inserted | inserted,
            base.conflicts | conflicts,
            events,
            tuple(e.event_id for e in events),
            base.in_flight,
            frozenset(stale),
        )

    async def release_claims(self, outbox_ids: Sequence[str], claimant: str) -> None:
        """The fake keeps no claims: every unpublished row is anyone's to publish."""

    async def mark_published(self, outbox_ids: Sequence[str]) -> None:
        if self.fail_mark_published:
            raise StoreError("fake database: update failed")
        for event_id in outbox_ids:
            if event_id in self.outbox:
                self.outbox[event_id].published = True

    async def announced(self, keys: Collection[ItemKey]) -> frozenset[ItemKey]:
        """The keys stored whose event is out (its outbox row published)."""
        if self.fail_next_announced:
            self.fail_next_announced = False
            raise StoreError("confirming done markers failed: fake database gone")
        unpublished = self.unpublished()
        out: set[ItemKey] = set()
        for k in keys:
            if isinstance(k, StatusKey):
                if k in self.status_rows and self.status_rows[k] not in unpublished:
                    out.add(k)
            elif k in self.rows and self.rows[k].event.event_id not in unpublished:
                out.add(k)
        return frozenset(out)

    async def claim_unpublished(
        self, *, claimant: str, claim_for: dt.timedelta, limit: int
    ) -> OutboxClaim:
        """The first `limit` unpublished rows, in insertion order: with no claims kept,
        every unpublished row is free."""
        rows = [row.event for row in self.outbox.values() if not row.published][:limit]
        return OutboxClaim(tuple(rows), tuple(e.event_id for e in rows))

    async def outbox_stats(self) -> tuple[int, float]:
        """The unpublished rows, and an age of 0: the fake keeps no clock."""
        return len(self.unpublished()), 0.0

    def unpublished(self) -> set[str]:
        return {eid for eid, row in self.outbox.items() if not row.published}


@dataclass
class FakePublisher:
    """An :class:`~consumer.ports.EventSink` like :class:`consumer.publish.Publisher`;
    keeps what was acknowledged."""

    published: list[OutboundEvent] = field(default_factory=list)
    dead_letters: list[Invalid] = field(default_factory=list)
    fail_next_publish: bool = False
    # A publish that gives up with its sends under way (PublishPendingError) instead.
    pending_next_publish: bool = False
    # A publish whose first event is acknowledged and the rest fail (PartlyPublishedError);
    # like the real publisher, a later publish does not send the acknowledged one again.
    partly_next_publish: bool = False
    fail_next_dead_letter: bool = False
    publish_calls: int = 0
    _acked: set[str] = field(default_factory=set)
    dead_letter_calls: int = 0

    async def publish(self, events: Sequence[OutboundEvent]) -> None:
        self.publish_calls += 1
        if self.fail_next_publish:
            self.fail_next_publish = False
            raise BrokerError("fake Kafka: message_created not acknowledged")
        if self.pending_next_publish:
            self.pending_next_publish = False
            raise PublishPendingError("fake Kafka: message_created not acknowledged yet")
        events = [e for e in events if e.event_id not in self._acked]
        if self.partly_next_publish and events:
            self.partly_next_publish = False
            self.published.append(events[0])
            self._acked.add(events[0].event_id)
            raise PartlyPublishedError("fake Kafka: 1 message_created record acknowledged")
        self.published.extend(events)

    async def dead_letter(self, invalid: Sequence[Invalid]) -> None:
        self.dead_letter_calls += 1
        if self.fail_next_dead_letter:
            self.fail_next_dead_letter = False
            raise BrokerError("fake Kafka: dead letter not acknowledged")
        self.dead_letters.extend(invalid)


# -- builders --------------------------------------------------------------------


def record(
    value: bytes | dict[str, Any] | None, *, partition: int = 0, offset: int = 0
) -> InboundRecord:
    """An inbound record; a dict value is JSON-encoded."""
    body = json.dumps(value).encode() if isinstance(value, dict) else value
    return InboundRecord(
        topic=TOPIC,
        partition=partition,
        offset=offset,
        key=None,
        value=body,
        headers=(("x-hub-signature-256", b"sha256=abc"),),
        timestamp_ms=1_749_416_383_000,
    )


def message(wamid: str, sender: str = SENDER, text: str = "hello") -> dict[str, Any]:
    """A Meta text message object."""
    return {
        "from": sender,
        "id": wamid,
        "timestamp": "1749416383",
        "type": "text",
        "text": {"body": text},
    }


def status(
    wamid: str, word: str = "delivered", recipient: str = SENDER, timestamp: str = "1749416390"
) -> dict[str, Any]:
    """A Meta status object: `word` for the business's message `wamid`."""
    return {"id": wamid, "status": word, "timestamp": timestamp, "recipient_id": recipient}


def webhook(
    messages: list[Any] | None = None,
    *,
    pnid: str | None = PNID,
    contacts: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A one-entry, one-change webhook body. `messages` may hold anything (a message
    object, or what a malformed body holds instead)."""
    value: dict[str, Any] = {"messaging_product": "whatsapp"}
    if pnid is not None:
        value["metadata"] = {"display_phone_number": "15550783881", "phone_number_id": pnid}
    if contacts is not None:
        value["contacts"] = contacts
    if messages is not None:
        value["messages"] = messages
    if statuses is not None:
        value["statuses"] = statuses
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
    }


def key(wamid: str, pnid: str = PNID) -> MessageKey:
    """A message's key under `pnid`."""
    return MessageKey(pnid, wamid)
