"""A stateful model of a consumer group: several workers over one Redis, DB and broker.

Hypothesis drives 2-3 :class:`~consumer.pipeline.Pipeline` workers that share ONE lease
store (with a clock, so leases run out), ONE store (with the outbox claims of the real
``Store``) and ONE publisher, consuming a modelled multi-partition inbound log. Each worker
keeps its bookkeeping in the REAL :class:`~consumer.tracking.Tracker` (as ``Service``
does): it fetches only the partitions the tracker does not pause, hands the tracker what
it fetched, settles each batch's report in it, and commits what it offers to the
modelled group offsets; rebalances and crashes go through its ``revoked`` / ``assigned``.
As ``Service`` does (MAX_INFLIGHT_BATCHES), a worker may have several batches in flight,
each of partitions no other of its batches holds; one lands and commits while the others
run on. The model owns only what Kafka would: a fetch position per owned partition.

Batches are coroutines driven by hand, one dependency call at a time (every call of the
fakes pauses before and after it), so batches of different workers interleave at any
await, a worker can stall past its lease, be killed at any await (SIGKILL: leases and
claims stay until they run out) or be evicted from the group while its batch runs on as
a zombie whose commits are rejected. No event loop, no real time: fully deterministic.

Rules: produce (new bodies from a small wamid pool under two phone_number_ids, poison,
statuses-only, or a redelivery of an earlier body to any partition); poll, retry,
overlap, interleave, race and overtake (workers fetch, run, defer and commit; a worker's
own batches and different workers' batches interleave await by await; a hung worker is
overtaken); crash (SIGKILL, or eviction leaving a
zombie); rebalance (a partition to another member, away and back to the same one, or
all of a member's partitions away, leaving it an empty assignment; on_revoked: finish,
commit, revoke); advance_clock (past a lease, a claim, a done marker); inject_faults
(one-shot failures of Redis, the database or Kafka, before or after the call took
effect); fetch_fails_half_way (aiokafka drains records and raises on a later call: in
the fetch's top-up, or at once with what it read lost; the worker's fetches go through the
real Source over a modelled consumer, and a failed one is followed by Source.rewind as in
Service); relay (one outbox relay pass). MAX_PENDING_RECORDS is 1, 2 or the default.

Invariants, after every step:

* P1  no key is ever inserted twice, and no row exists for a key nobody produced;
* P2  every published event is byte for byte the outbox row of a stored message (no
      phantom; every copy of a key's event is the same event);
* P4  (docs/design.md, rule 8) the group's committed offset of a partition never passes a record
      that is not durable (dead-lettered, or every message key stored AND published), and
      never goes backwards;
* a done marker only exists for a key that is stored and published; only poison records
  are dead-lettered;
* committed offsets only grow; a partition's pending work stays within the limit plus the
  last fetch of it; once nothing is pending, no partition is paused;
* no new record of a partition is fetched while records of it that failed on a
  dependency wait for their retry (batches overlap: another partition's batch that
  succeeds later must not lift the degraded pause).

At teardown the world heals (faults cleared, zombies and batches finished, leases and
claims run out, every worker drains its partitions and retries) and then: exactly one row
per valid key (P1), every row announced (P3), dead letters == the poison records, every
outbox row eventually marked published (after a relay pass) and, when nothing disturbed
the run (no crash, fault or lease running out under a live batch), exactly one event per
key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import os
import sys
from collections import Counter
from collections.abc import Callable, Coroutine, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import pytest
import structlog
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import CorruptRecordException
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from consumer.dedup import DONE_PREFIX
from consumer.errors import BrokerError, DependencyError, LeaseStoreError, StoreError
from consumer.events import OutboundEvent
from consumer.metrics import Metrics
from consumer.outbox import MarkQueue
from consumer.pipeline import Pipeline
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
from consumer.records import BatchReport, InboundRecord, MessageKey, Partition, RecordKey
from consumer.relay import Relay
from consumer.settings import Settings
from consumer.source import Source
from consumer.testing import (
    PNID,
    TOPIC,
    FakeLeases,
    FakePublisher,
    FakeStore,
    OutboxRow,
    message,
    record,
    status,
    webhook,
)
from consumer.tracking import Tracker
from consumer.wiring import pipeline_config, publish_claim

EPOCH = dt.datetime(2025, 6, 9, 12, 0, tzinfo=dt.UTC)
LEASE_TTL_S = 30.0
DONE_TTL_S = 8 * 24 * 3600.0
# Status events off: this machine models the flow of messages (a statuses-only body is
# a record with nothing to store); the statuses' flow is checked against the real Store
# in tests/integration/test_statuses_store.py and tests/unit/test_statuses.py.
SETTINGS = Settings(lease_ttl_s=LEASE_TTL_S, done_ttl_s=DONE_TTL_S, status_events=False)
CLAIM_S = publish_claim(SETTINGS).total_seconds()  # how long an outbox claim holds
PARTITIONS = 3
WAMIDS = ("wamid.A", "wamid.B", "wamid.C")
PNIDS = (PNID, "106540352242999")  # the same wamid under two numbers is two messages
FETCH_MAX = 500
# Batches one worker may have in flight at once (Service: MAX_INFLIGHT_BATCHES).
MAX_FLIGHTS = 2
HEAL_ROUNDS = 6


# -- a lease store with a clock, and a store with the real Store's outbox claims ----


class ClockedLeases(FakeLeases):
    """:class:`FakeLeases` whose values run out like ``SET ... PX``: a lease after the
    lease TTL, a done marker after the done TTL. Time moves only by :meth:`advance`."""

    def __init__(self, *, lease_ttl_s: float, done_ttl_s: float) -> None:
        super().__init__()
        self.now = 0.0
        self.expires_at: dict[LeaseKey, float] = {}
        self.lease_ttl_s = lease_ttl_s
        self.done_ttl_s = done_ttl_s
        self.expired_leases = 0  # processing leases (not done markers) that ran out

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for k, until in list(self.expires_at.items()):
            if until <= self.now:
                del self.expires_at[k]
                value = self.values.pop(k, None)
                if value is not None and not value.startswith(DONE_PREFIX):
                    self.expired_leases += 1

    def _stamp(self, before: dict[LeaseKey, str]) -> None:
        for k, v in self.values.items():
            if before.get(k) != v:
                ttl = self.done_ttl_s if v.startswith(DONE_PREFIX) else self.lease_ttl_s
                self.expires_at[k] = self.now + ttl
        for k in set(before) - set(self.values):
            self.expires_at.pop(k, None)

    async def acquire(self, keys: Sequence[LeaseKey], token: str) -> dict[LeaseKey, LeaseState]:
        before = dict(self.values)
        try:
            return await super().acquire(keys, token)
        finally:
            self._stamp(before)

    async def release(self, keys: Sequence[LeaseKey], token: str) -> int:
        before = dict(self.values)
        try:
            return await super().release(keys, token)
        finally:
            self._stamp(before)

    async def finish(self, keys: Sequence[LeaseKey], token: str) -> int:
        before = dict(self.values)
        try:
            return await super().finish(keys, token)
        finally:
            self._stamp(before)


@dataclass
class ClaimingStore(FakeStore):
    """:class:`FakeStore` with the outbox claims of :class:`consumer.store.Store`.

    A new outbox row is claimed by its inserter for ``claim_for``. A conflicting save
    claims the unpublished rows that are free (claim ran out) or whose claimant is in
    its ``reclaim`` (the caller's ended batches), and
    hands them back in ``to_publish``; rows another worker still claims come back in
    ``in_flight``. ``release_claims`` gives claims up; ``claim_unpublished`` is the
    relay's claim. ``inserts`` counts real inserts per key (the fence keeps it <= 1).
    """

    claims: dict[str, tuple[str | None, dt.datetime | None]] = field(default_factory=dict)
    created: dict[str, dt.datetime] = field(default_factory=dict)
    inserts: Counter[MessageKey] = field(default_factory=Counter)
    # The database's clock: claims are set and compared with it, never a worker's.
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))

    async def save(
        self,
        pending: Sequence[PendingMessage],
        claim: Claim = UNCLAIMED,
        statuses: Sequence[PendingStatus] = (),
    ) -> SaveResult:
        # Status events are off in this machine (SETTINGS): no status ever reaches a save.
        assert not statuses, "the machine runs with STATUS_EVENTS off"
        now = self.clock()
        self.saves.append([p.message.key for p in pending])
        if not pending:
            return SaveResult(frozenset(), frozenset(), (), ())
        by_key = {p.message.key: p for p in pending}
        inserted = frozenset(k for k in by_key if k not in self.rows)
        conflicts = frozenset(by_key) - inserted
        new = [by_key[k] for k in _ordered(inserted)]
        held = (claim.claimant or None, now + claim.claim_for if claim.claim_for else None)
        for p in new:  # commit
            self.rows[p.message.key] = p
            self.outbox[p.event.event_id] = OutboxRow(p.event)
            self.claims[p.event.event_id] = held
            self.created[p.event.event_id] = now
            self.inserts[p.message.key] += 1
        ours, busy = self._claim_conflicts(
            [by_key[k].event.event_id for k in _ordered(conflicts)],
            (claim.claimant, claim.reclaim),
            now,
            claim.claim_for,
        )
        in_flight = frozenset(k for k in conflicts if by_key[k].event.event_id in busy)
        events = tuple(p.event for p in new) + ours
        return SaveResult(inserted, conflicts, events, tuple(e.event_id for e in events), in_flight)

    def _claim_conflicts(
        self,
        event_ids: list[str],
        who: tuple[str, frozenset[str]],
        now: dt.datetime,
        claim_for: dt.timedelta,
    ) -> tuple[tuple[OutboundEvent, ...], set[str]]:
        claimant, reclaim = who
        ours: list[OutboundEvent] = []
        busy: set[str] = set()
        for event_id in event_ids:
            row = self.outbox.get(event_id)
            if row is None or row.published:
                continue
            by, until = self.claims.get(event_id, (None, None))
            if _free(until, now) or (by is not None and by in reclaim):
                self.claims[event_id] = (claimant or None, now + claim_for)
                ours.append(row.event)
            else:
                busy.add(event_id)
        return tuple(ours), busy

    async def release_claims(self, outbox_ids: Sequence[str], claimant: str) -> None:
        for event_id in outbox_ids:
            row = self.outbox.get(event_id)
            if row and not row.published and self.claims[event_id][0] == claimant:
                self.claims[event_id] = (None, None)

    async def claim_unpublished(
        self, *, claimant: str, claim_for: dt.timedelta, limit: int
    ) -> OutboxClaim:
        now = self.clock()
        free = [
            event_id
            for event_id, row in self.outbox.items()
            if not row.published and _free(self.claims[event_id][1], now)
        ]
        chosen = sorted(free, key=lambda e: (self.created[e], e))[:limit]
        for event_id in chosen:
            self.claims[event_id] = (claimant, now + claim_for)
        return OutboxClaim(tuple(self.outbox[e].event for e in chosen), tuple(chosen))


def _free(until: dt.datetime | None, now: dt.datetime) -> bool:
    # store._free: a claim holds while now < claimed_until.
    return until is None or until <= now


def _ordered(keys: frozenset[MessageKey]) -> list[MessageKey]:
    return sorted(keys, key=lambda k: (k.phone_number_id, k.wamid))


# -- driving coroutines by hand ------------------------------------------------------


class _Pause:
    """An await that hands control back to whoever drives the coroutine."""

    def __await__(self) -> Generator[None, None, None]:
        yield


Fault = tuple[str, str, str]  # (component, method, "before" | "after")
_ERRORS: dict[str, type[DependencyError]] = {
    "leases": LeaseStoreError,
    "store": StoreError,
    "publisher": BrokerError,
}


class Gated:
    """A dependency proxy: pauses before and after every async call, and fails a call
    when the machine has armed a one-shot fault for it (before it takes effect, or after
    it took effect with the answer lost)."""

    def __init__(self, inner: object, component: str, faults: list[Fault]) -> None:
        self._inner = inner
        self._component = component
        self._faults = faults

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            await _Pause()
            self._trip(name, "before")
            result = await attr(*args, **kwargs)
            self._trip(name, "after")
            await _Pause()
            return result

        return call

    def _trip(self, method: str, when: str) -> None:
        fault = (self._component, method, when)
        if fault in self._faults:
            self._faults.remove(fault)
            raise _ERRORS[self._component](f"injected: {method} fails {when} taking effect")


_D = TypeVar("_D")


def gated(inner: _D, component: str, faults: list[Fault]) -> _D:
    """`inner` behind a :class:`Gated` proxy, typed as `inner`: the proxy answers every
    attribute with inner's own (its coroutine methods gated), which mypy cannot see
    through ``__getattr__``."""
    return cast(_D, Gated(inner, component, faults))


class Flight:
    """One batch in flight: a coroutine advanced one pause at a time."""

    def __init__(self, coro: Coroutine[Any, Any, BatchReport], records: list[InboundRecord]):
        self.coro = coro
        self.records = records
        self.partitions = frozenset((r.topic, r.partition) for r in records)
        self.report: BatchReport | None = None

    def step(self) -> bool:
        """Run to the next pause; True once the batch has returned its report."""
        try:
            self.coro.send(None)
        except StopIteration as stop:
            self.report = stop.value
            return True
        return False

    def finish(self) -> BatchReport:
        while self.report is None:
            self.step()
        return self.report

    def kill(self) -> None:
        """SIGKILL at the current await: nothing after it runs, nothing is released."""
        self.coro.close()


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to its end, ignoring the pauses."""
    while True:
        try:
            coro.send(None)
        except StopIteration as stop:
            return stop.value


# -- the modelled world --------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """A record value and what it must become: its message keys, or None for poison."""

    value: bytes
    keys: frozenset[MessageKey] | None
    label: str

    def __repr__(self) -> str:
        return f"Body({self.label})"


def _valid_body(wamids: list[str], pnid_index: int) -> Body:
    pnid = PNIDS[pnid_index]
    value = record(webhook([message(w) for w in wamids], pnid=pnid)).value
    assert value is not None
    keys = frozenset(MessageKey(pnid, w) for w in wamids)
    return Body(value, keys, f"{','.join(wamids)}@pn{pnid_index}")


def _poison(kind: str) -> Body:
    values: dict[str, bytes] = {
        "empty": b"",
        "not_json": b"{not json",
        "not_utf8": b"\xff\xfe{}",
        "bad_shape": b"[]",
        "no_pnid": record(webhook([message("wamid.A")], pnid=None)).value or b"",
        "no_id": record(webhook([{"from": "1", "type": "text", "timestamp": "1"}])).value or b"",
    }
    return Body(values[kind], None, f"poison:{kind}")


STATUSES_ONLY = Body(
    record(webhook(statuses=[status("wamid.OUT", "read")])).value or b"",
    frozenset(),
    "statuses-only",
)

BODIES = st.one_of(
    st.builds(
        _valid_body,
        st.lists(st.sampled_from(WAMIDS), min_size=1, max_size=3),
        st.integers(0, len(PNIDS) - 1),
    ),
    st.sampled_from(["empty", "not_json", "not_utf8", "bad_shape", "no_pnid", "no_id"]).map(
        _poison
    ),
    st.just(STATUSES_ONLY),
)

# MAX_PENDING_BYTES (and MAX_RECORD_BYTES) at their smallest here: just above the
# largest body BODIES makes (three messages, under 1 KiB).
SMALL_BYTES = 2048

# A worker's turn: (who, awaits to advance, records to fetch per partition, run at once,
# seconds that pass first: now and then a stall longer than a lease).
MOVES = st.tuples(
    st.integers(0, 5),
    st.integers(1, 4),
    st.integers(1, 4),
    st.booleans(),
    st.sampled_from([0.0, 0.0, 0.0, LEASE_TTL_S + 1]),
)

FAULTS: list[Fault] = [
    ("leases", "acquire", "before"),
    ("leases", "acquire", "after"),
    ("leases", "release", "before"),
    ("leases", "finish", "before"),
    ("store", "save", "before"),
    ("store", "save", "after"),
    ("store", "mark_published", "before"),
    ("store", "release_claims", "before"),
    ("store", "claim_unpublished", "after"),
    ("publisher", "publish", "before"),
    ("publisher", "publish", "after"),
    ("publisher", "dead_letter", "before"),
    ("publisher", "dead_letter", "after"),
]


class ModelConsumer:
    """What the real :class:`~consumer.source.Source` asks of aiokafka, over the modelled
    log and the worker's fetch positions: getmany (at most `per_partition` records of
    each partition asked, per call), seek, assignment, committed. Like aiokafka, a call
    may drain records and leave an error for the next call (`fail_after`): the records
    it returned have moved the position, and so have those it read and then dropped."""

    def __init__(self, machine: PipelineMachine, worker: Worker) -> None:
        self._machine = machine
        self._worker = worker
        self.per_partition = 1
        self.fail_after: int | None = None  # calls that still answer before one raises
        self.dropped = 0  # records read then lost with a raise (the bug's raw material)

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(t, p) for t, p in self._worker.position}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._worker.position[(tp.topic, tp.partition)] = offset

    async def position(self, tp: TopicPartition) -> int:
        return self._worker.position[(tp.topic, tp.partition)]

    async def committed(self, tp: TopicPartition) -> int | None:
        return self._machine.committed[tp.partition] or None

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        out: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for tp in partitions:
            part = (tp.topic, tp.partition)
            pos = self._worker.position[part]
            got = self._machine.log[tp.partition][pos : pos + min(self.per_partition, max_records)]
            self._worker.position[part] = pos + len(got)
            max_records -= len(got)
            if got:
                out[tp] = [_consumer_record(r) for r in got]
        if self.fail_after is not None:
            if self.fail_after == 0:
                self.fail_after = None
                self.dropped += sum(len(rs) for rs in out.values())
                raise CorruptRecordException("modelled: an error stored for a partition")
            self.fail_after -= 1
        return out


def _consumer_record(r: InboundRecord) -> ConsumerRecord[bytes, bytes]:
    """The modelled log's record as aiokafka hands it out."""
    return ConsumerRecord(
        r.topic, r.partition, r.offset, r.timestamp_ms, 0, r.key, r.value, None, 0, 0,
        list(r.headers),
    )  # fmt: skip


@dataclass
class Worker:
    """One consumer-group member: its pipeline and relay, its real bookkeeping unit, and
    what the Kafka consumer would know (a fetch position per owned partition)."""

    worker_id: str
    pipeline: Pipeline
    relay: Relay
    tracker: Tracker
    position: dict[Partition, int] = field(default_factory=dict)  # owned -> next fetch
    last_fetch: dict[Partition, int] = field(default_factory=dict)  # records, last fetch
    last_fetch_bytes: dict[Partition, int] = field(default_factory=dict)  # their bytes
    # Batches in flight (at most MAX_FLIGHTS), each of partitions no other one holds:
    # Service overlaps batches of different partitions (MAX_INFLIGHT_BATCHES).
    flights: list[Flight] = field(default_factory=list)
    # The real Source over a ModelConsumer (set by the machine when it spawns the worker).
    source: Source | None = None
    consumer: ModelConsumer | None = None
    # Records of a batch that failed on a dependency, not yet durable: no newer record of
    # their partition may be fetched before them (the degraded pause).
    failed: set[tuple[str, int, int]] = field(default_factory=set)

    def __repr__(self) -> str:
        return f"Worker({self.worker_id}, owns={sorted(p for _, p in self.position)})"

    def busy(self) -> set[Partition]:
        """Partitions with a batch in flight."""
        return {p for f in self.flights for p in f.partitions}

    def free(self) -> list[Partition]:
        """Owned partitions without a batch in flight."""
        busy = self.busy()
        return sorted(p for p in self.position if p not in busy)

    def can_start(self) -> bool:
        return len(self.flights) < MAX_FLIGHTS and bool(self.free())


class PipelineMachine(RuleBasedStateMachine):
    """Workers sharing Redis, DB and broker, consuming a partitioned log."""

    def __init__(self) -> None:
        super().__init__()
        self.settings = SETTINGS
        self.leases = ClockedLeases(lease_ttl_s=LEASE_TTL_S, done_ttl_s=DONE_TTL_S)
        self.store = ClaimingStore(clock=self.now)
        self.publisher = FakePublisher()
        self.faults: list[Fault] = []
        self.log: dict[int, list[InboundRecord]] = {p: [] for p in range(PARTITIONS)}
        self.expect: dict[tuple[str, int, int], frozenset[MessageKey] | None] = {}
        self.committed: dict[int, int] = dict.fromkeys(range(PARTITIONS), 0)
        self.workers: list[Worker] = []
        self.incarnations: Counter[int] = Counter()
        self.zombies: list[Flight] = []
        self.sent: list[Body] = []
        self.sent_as: dict[tuple[str, int, int], Body] = {}
        self.disturbed = False  # a crash, a fault, or a live lease that ran out

    # -- wiring ----------------------------------------------------------------------

    def now(self) -> dt.datetime:
        return EPOCH + dt.timedelta(seconds=self.leases.now)

    def _spawn(self, slot: int) -> Worker:
        self.incarnations[slot] += 1
        worker_id = f"w{slot}.{self.incarnations[slot]}"
        leases = gated(self.leases, "leases", self.faults)
        store = gated(self.store, "store", self.faults)
        publisher = gated(self.publisher, "publisher", self.faults)
        metrics = Metrics()
        marks = MarkQueue(store)
        pipeline = Pipeline(
            pipeline_config(self.settings),
            leases,
            store,
            publisher,
            worker_id=worker_id,
            metrics=metrics,
            marks=marks,
            clock=self.now,
        )
        relay = Relay(
            store,
            publisher,
            worker_id=worker_id,
            interval_s=self.settings.relay_interval_s,
            claim_for=publish_claim(self.settings),
            metrics=metrics,
            marks=marks,
        )
        tracker = Tracker(
            max_pending=self.settings.max_pending_records,
            max_pending_bytes=self.settings.max_pending_bytes,
            retry_backoff_s=self.settings.retry_backoff_s,
            retry_backoff_max_s=self.settings.retry_backoff_max_s,
        )
        worker = Worker(worker_id, pipeline, relay, tracker)
        worker.consumer = ModelConsumer(self, worker)
        worker.source = Source(self.settings, client_id=worker_id, consumer=worker.consumer)
        return worker

    def _owner(self, partition: int) -> Worker:
        return next(w for w in self.workers if (TOPIC, partition) in w.position)

    def _assign(self, worker: Worker, part: Partition) -> None:
        """The new owner resumes from the group's committed offset (re-delivery)."""
        worker.position[part] = self.committed[part[1]]
        assert worker.source is not None
        worker.source.forget({part})
        worker.tracker.assigned({part})

    def _advance(self, seconds: float) -> None:
        before = self.leases.expired_leases
        self.leases.advance(seconds)
        if self.leases.expired_leases != before:
            self.disturbed = True  # a holder was slower than LEASE_TTL_S (or dead)

    # -- what a worker does (Fetcher.fetch, Service's loop and commit, on_revoked) -------

    def _unfetched(self, worker: Worker) -> int:
        """New records of the partitions that have no batch in flight."""
        free = set(worker.free())
        return sum(len(self.log[p[1]]) - pos for p, pos in worker.position.items() if p in free)

    def _due_free(self, worker: Worker) -> bool:
        """Retries pending on a partition without a batch in flight."""
        return worker.tracker.next_due_in(self.leases.now, worker.free()) is not None

    def _fetch(self, worker: Worker, k: int, only: int | None = None) -> list[InboundRecord]:
        """Due retries first, then new records of each owned partition the tracker does
        not pause (or of the `only`-th one), through the real Source (its first step
        and its top-up: up to k records a partition each), handed to the tracker. A
        fetch that raises is followed by the rewind Service does (to the tracker's
        positions, through Source.rewind)."""
        assert worker.source is not None
        assert worker.consumer is not None
        owned = worker.free()
        if only is not None and owned:
            owned = [owned[only % len(owned)]]
        due = worker.tracker.due(self.leases.now, FETCH_MAX, owned)
        paused = worker.tracker.pauses()
        asked = [part for part in owned if part not in paused]
        worker.consumer.per_partition = k
        try:
            new = drive(worker.source.fetch(timeout_s=1.0, max_records=FETCH_MAX, partitions=asked))
        except BrokerError:
            # In an event loop of its own: reading committed offsets is bounded in time.
            asyncio.run(worker.source.rewind(worker.tracker.positions()))
            new = []
        for part in asked:
            worker.last_fetch[part] = sum(1 for r in new if (r.topic, r.partition) == part)
            worker.last_fetch_bytes[part] = sum(
                r.size for r in new if (r.topic, r.partition) == part
            )
        waiting = worker.failed - {r.coordinates for r in due}
        for r in new:
            overtaken = sorted(c for c in waiting if (c[0], c[1]) == (r.topic, r.partition))
            assert not overtaken, (
                f"{worker}: new record {r.coordinates} fetched while {overtaken} of its "
                "partition, which failed on a dependency, wait for their retry"
            )
        return due + worker.tracker.fetched(new)

    def _start(self, worker: Worker, records: list[InboundRecord], run: bool) -> None:
        if not records:
            return
        flight = Flight(worker.pipeline.process(records), records)
        assert not flight.partitions & worker.busy(), "a partition in two batches of one worker"
        worker.flights.append(flight)
        if run or flight.step():
            self._land(worker, flight)

    def _land(self, worker: Worker, flight: Flight) -> None:
        """The batch returned: settle its report, then commit (the poll loop's tail; the
        worker's other batches may still be in flight)."""
        report = flight.finish()
        batch = flight.records
        worker.flights.remove(flight)
        reported = Counter(r.coordinates for r in [*report.durable, *report.retry])
        assert reported == Counter(r.coordinates for r in batch), "each record reported once"
        if report.failure is not None:
            worker.failed |= {r.coordinates for r in report.retry}
        else:
            worker.failed -= {r.coordinates for r in batch}
        worker.failed -= {r.coordinates for r in report.durable}
        worker.tracker.settled(report, self.leases.now)
        self._commit(worker)

    def _commit(self, worker: Worker, parts: set[Partition] | None = None) -> None:
        offsets = worker.tracker.to_commit(parts)
        assert set(offsets) <= set(worker.position), "offers a partition it does not own"
        for (_, p), offset in offsets.items():
            assert offset >= self.committed[p], (
                f"commit of partition {p} goes back from {self.committed[p]} to {offset}"
            )
            self.committed[p] = offset
        worker.tracker.committed(offsets)
        self._check_committed()

    def _land_all(self, worker: Worker) -> None:
        """Run every batch of the worker in flight to its end, and settle each."""
        for flight in list(worker.flights):
            self._land(worker, flight)

    def _step(self, worker: Worker, i: int) -> None:
        """The worker's i-th batch in flight (cyclically) one await further."""
        flight = worker.flights[i % len(worker.flights)]
        if flight.step():
            self._land(worker, flight)

    def _has_work(self, worker: Worker) -> bool:
        """Room for another batch, and records or due retries of a free partition."""
        return worker.can_start() and bool(self._unfetched(worker) or self._due_free(worker))

    def _revoke(self, worker: Worker, parts: set[Partition]) -> None:
        """on_revoked: every batch in flight finishes first, then commit, then revoke."""
        self._land_all(worker)
        self._commit(worker, parts)
        worker.tracker.revoked(parts)
        for part in parts:
            del worker.position[part]
            worker.last_fetch.pop(part, None)
            worker.last_fetch_bytes.pop(part, None)
        worker.failed = {c for c in worker.failed if (c[0], c[1]) not in parts}
        assert worker.source is not None
        worker.source.forget(parts)

    # -- setup -----------------------------------------------------------------------

    @initialize(
        n_workers=st.integers(2, 3),
        policy=st.sampled_from(["pause", "fence"]),
        max_pending=st.sampled_from([1, 2, Settings().max_pending_records]),
        max_bytes=st.sampled_from([SMALL_BYTES, Settings().max_pending_bytes]),
        backlog=st.lists(st.tuples(st.integers(0, PARTITIONS - 1), BODIES), min_size=2, max_size=9),
    )
    def start_group(
        self,
        n_workers: int,
        policy: str,
        max_pending: int,
        max_bytes: int,
        backlog: list[tuple[int, Body]],
    ) -> None:
        """A group of workers (partitions assigned round-robin) and a backlog to consume;
        REDIS_OUTAGE_POLICY is "pause" or "fence"; MAX_PENDING_RECORDS at its smallest,
        small, or the default; MAX_PENDING_BYTES at its smallest legal value for a
        MAX_RECORD_BYTES just above the largest body (a partition's share is then below
        one record), or the default."""
        self.settings = self.settings.replace(
            redis_outage_policy=policy,
            max_pending_records=max_pending,
            batch_max_records=min(max_pending, self.settings.batch_max_records),
            max_pending_bytes=max_bytes,
            max_record_bytes=min(max_bytes, self.settings.max_record_bytes),
        )
        self.workers = [self._spawn(slot) for slot in range(n_workers)]
        for p in range(PARTITIONS):
            self._assign(self.workers[p % n_workers], (TOPIC, p))
        for partition, body in backlog:
            self._append(partition, body)

    # -- the inbound log -------------------------------------------------------------

    def _append(self, partition: int, body: Body) -> None:
        offset = len(self.log[partition])
        r = record(body.value, partition=partition, offset=offset)
        self.log[partition].append(r)
        self.expect[r.coordinates] = body.keys
        self.sent.append(body)
        self.sent_as[r.coordinates] = body

    @rule(partition=st.integers(0, PARTITIONS - 1), body=st.one_of(BODIES, st.integers(0, 99)))
    def produce(self, partition: int, body: Body | int) -> None:
        """Meta sends a webhook (or a poison record lands) on a partition; an integer
        re-delivers an earlier body (``sent[i % len(sent)]``), maybe to another partition."""
        if isinstance(body, int):
            body = self.sent[body % len(self.sent)]
        self._append(partition, body)

    # -- workers -----------------------------------------------------------------------

    def _tick(self, worker: Worker, n: int, k: int, run: bool) -> None:
        """One turn of a worker's poll loop: start a batch of the partitions without one
        in flight if it may (up to k new records per free partition plus their due
        retries, waiting for the next retry when there is nothing new; `run` runs it to
        the end at once), else advance one of its batches in flight (the n-th) by n
        awaits."""
        if self._has_work(worker):
            if not self._unfetched(worker):
                self._advance(worker.tracker.next_due_in(self.leases.now, worker.free()) or 0.0)
            self._start(worker, self._fetch(worker, k), run)
            return
        if worker.flights:
            flight = worker.flights[n % len(worker.flights)]
            for _ in range(n):
                if flight.step():
                    self._land(worker, flight)
                    return

    def _tick_zombie(self, zombie: Flight, n: int) -> None:
        """An evicted worker's batch goes on; its report is lost (commits are rejected)."""
        for _ in range(n):
            if zombie.step():
                self.zombies.remove(zombie)
                return

    def _turn(self, who: int, n: int, k: int, run: bool) -> None:
        actors: list[Worker | Flight] = [*self.workers, *self.zombies]
        actor = actors[who % len(actors)]
        if isinstance(actor, Flight):
            self._tick_zombie(actor, n)
        else:
            self._tick(actor, n, k, run)

    # Five rules drive the workers: Hypothesis' swarm testing switches some rules off
    # in each run, and with several ways to make progress few runs are left without.

    @rule(
        who=st.integers(0, 2),
        k=st.integers(1, 4),
        only=st.none() | st.integers(0, 2),
        run=st.booleans(),
    )
    def poll(self, who: int, k: int, only: int | None, run: bool) -> None:
        """A worker with room fetches up to k records of one of its free partitions (or
        of each) plus their due retries and runs them as one batch: to the end and
        commits, or leaves it in flight beside the others. A worker without room moves
        one batch one await further instead."""
        worker = self.workers[who % len(self.workers)]
        if worker.can_start():
            self._start(worker, self._fetch(worker, k, only), run)
        elif worker.flights:
            self._tick(worker, 1, k, run)

    @rule(
        who=st.integers(0, 2),
        k=st.integers(1, 3),
        schedule=st.lists(st.integers(0, 1), min_size=1, max_size=24),
    )
    def overlap(self, who: int, k: int, schedule: list[int]) -> None:
        """A worker starts a batch for each of its free partitions, up to MAX_FLIGHTS
        (Service, under a backlog: each partition a batch of its own), and runs them
        one await at a time in the order of `schedule`: one lands and commits while the
        other is still in flight. Unfinished batches stay in flight."""
        worker = self.workers[who % len(self.workers)]
        while self._has_work(worker):
            before = len(worker.flights)
            self._start(worker, self._fetch(worker, k, only=0), run=False)
            if len(worker.flights) == before:
                break  # nothing fetched (paused), or the batch landed at its first await
        for i in schedule:
            if not worker.flights:
                return
            self._step(worker, i)

    @rule(
        who=st.integers(0, 2),
        held=st.sampled_from(WAMIDS),
        pnid_index=st.integers(0, len(PNIDS) - 1),
        fresh=st.sampled_from(WAMIDS),
    )
    def retry_while_its_partition_is_busy(
        self, who: int, held: str, pnid_index: int, fresh: str
    ) -> None:
        """A record is deferred on one partition of a worker (another worker holds its
        lease); that partition has a batch in flight when the retry falls due, and the
        worker starts a batch of its other partition: the retry waits for a batch of its
        own partition and must not ride in the other one (the tracker hands out due
        retries of the free partitions only)."""
        worker = self.workers[who % len(self.workers)]
        body = _valid_body([held], pnid_index)
        (key,) = body.keys or frozenset()
        if worker.flights or len(worker.position) < 2 or key in self.leases.values:
            return
        busy = sorted(worker.position)[0]
        self.leases.values[key] = "ghost:1"  # another worker's lease
        self.leases.expires_at[key] = self.leases.now + LEASE_TTL_S
        self._append(busy[1], body)
        self._start(worker, self._fetch(worker, FETCH_MAX, only=0), run=True)
        self.leases.values.pop(key, None)  # the other worker is done with it
        self.leases.expires_at.pop(key, None)
        self._append(busy[1], _valid_body([fresh], 1 - pnid_index))
        self._start(worker, self._fetch(worker, FETCH_MAX, only=0), run=False)
        if not worker.flights or busy not in worker.flights[0].partitions:
            return  # paused (the limit), or the batch ended at its first await
        self._advance(self.settings.retry_backoff_max_s + 1)  # the retry is due now
        self._start(worker, self._fetch(worker, FETCH_MAX), run=True)  # the other partition
        self._land_all(worker)

    @rule(who=st.integers(0, 2), k=st.integers(1, 3), after=st.integers(0, 1), run=st.booleans())
    def fetch_fails_half_way(self, who: int, k: int, after: int, run: bool) -> None:
        """aiokafka drains records and raises on a later call, with its position past
        what it read: with `after` 1 the fetch's top-up raises after its first step
        returned records; with 0 the first step raises, the records it read lost with
        it. The fetch (or the next one) raises, the worker rewinds as Service does, and
        nothing may be skipped: a record the group commits past is durable (P4), and at
        the end every key is stored (P1)."""
        worker = self.workers[who % len(self.workers)]
        assert worker.consumer is not None
        if not worker.can_start():
            return
        worker.consumer.fail_after = after
        self._start(worker, self._fetch(worker, k), run)
        worker.consumer.fail_after = None  # not reached: nothing was there to read

    @rule(
        who=st.integers(0, 2),
        failing_lands_first=st.booleans(),
        wamids=st.lists(st.sampled_from(WAMIDS), min_size=3, max_size=3),
        pnid_index=st.integers(0, len(PNIDS) - 1),
    )
    def fail_and_succeed_overlapping(
        self, who: int, failing_lands_first: bool, wamids: list[str], pnid_index: int
    ) -> None:
        """Two batches of one worker in flight, of two partitions: the one of the first
        partition fails on the database, the other succeeds, in either order; then a new
        record comes to the failed batch's partition and the worker fetches. It must not
        take the new record before the failed ones (the invariant in _fetch): a success
        of another partition's batch does not end the degraded pause."""
        worker = self.workers[who % len(self.workers)]
        if worker.flights or len(worker.position) < 2:
            return
        first, second = sorted(worker.position)[:2]
        self._append(first[1], _valid_body([wamids[0]], pnid_index))
        self._append(second[1], _valid_body([wamids[1]], pnid_index))
        self._start(worker, self._fetch(worker, FETCH_MAX, only=0), run=False)
        self._start(worker, self._fetch(worker, FETCH_MAX, only=0), run=False)
        failing = [f for f in worker.flights if first in f.partitions]
        other = [f for f in worker.flights if first not in f.partitions]
        if len(failing) != 1 or len(other) != 1:
            self._land_all(worker)  # paused (the limit, a failure), or a batch already ended
            return
        self.faults.append(("store", "save", "before"))
        self.disturbed = True
        order = [failing[0], other[0]] if failing_lands_first else [other[0], failing[0]]
        for flight in order:
            self._land(worker, flight)
        self.faults[:] = [f for f in self.faults if f != ("store", "save", "before")]
        self._append(first[1], _valid_body([wamids[2]], 1 - pnid_index))
        self._start(worker, self._fetch(worker, FETCH_MAX, only=0), run=True)

    @rule(who=st.integers(0, 2), run=st.booleans())
    def retry(self, who: int, run: bool) -> None:
        """A worker with room and deferred records of its free partitions waits for the
        first to be due (the clock moves), then runs the due ones as a batch."""
        worker = self.workers[who % len(self.workers)]
        if not worker.can_start() or not self._due_free(worker):
            return
        free = worker.free()
        self._advance(worker.tracker.next_due_in(self.leases.now, free) or 0.0)
        self._start(worker, worker.tracker.due(self.leases.now, FETCH_MAX, free), run)

    @rule(moves=st.lists(MOVES, min_size=1, max_size=6))
    def interleave(self, moves: list[tuple[int, int, int, bool, float]]) -> None:
        """Workers and zombies take turns: each move is (who, awaits, fetch size, run,
        seconds to wait first), so batches can stall past their leases mid-flight."""
        for who, n, k, run, wait in moves:
            self._advance(wait)
            self._turn(who, n, k, run)

    @rule(
        pair=st.tuples(st.integers(0, 2), st.integers(1, 2)),
        k=st.integers(1, 3),
        schedule=st.lists(st.integers(0, 1), min_size=1, max_size=24),
        stall=st.none() | st.tuples(st.integers(0, 23), st.sampled_from([LEASE_TTL_S, CLAIM_S])),
    )
    def race(
        self,
        pair: tuple[int, int],
        k: int,
        schedule: list[int],
        stall: tuple[int, float] | None,
    ) -> None:
        """Two workers run batches concurrently (idle ones start one), one await at a
        time in the order of `schedule`; `stall` lets a lease's (or a claim's) worth of
        time pass at one point, as if the one in front had hung. Unfinished batches stay
        in flight."""
        first = self.workers[pair[0] % len(self.workers)]
        second = self.workers[(pair[0] + pair[1]) % len(self.workers)]
        for worker in {id(first): first, id(second): second}.values():
            if self._has_work(worker):
                self._start(worker, self._fetch(worker, k), run=False)
        for i, who in enumerate(schedule):
            if stall is not None and stall[0] == i:
                self._advance(stall[1] + 1)
            worker = (first, second)[who]
            if worker.flights:
                self._step(worker, i)

    @rule(
        pair=st.tuples(st.integers(0, 2), st.integers(1, 2)),
        k=st.integers(1, 3),
        at=st.integers(1, 8),
        hang=st.sampled_from([LEASE_TTL_S, CLAIM_S]),
        redeliver=st.none() | st.integers(0, 9),
        resume=st.booleans(),
    )
    def overtake(
        self,
        pair: tuple[int, int],
        k: int,
        at: int,
        hang: float,
        redeliver: int | None,
        resume: bool,
    ) -> None:
        """A worker hangs `at` awaits into a batch for longer than its lease (or its
        outbox claim); Meta, seeing no answer, may redeliver one of that batch's bodies to
        a partition of another worker, which runs a batch meanwhile; then the hung worker
        resumes (or stays hung)."""
        slow = self.workers[pair[0] % len(self.workers)]
        fast = self.workers[(pair[0] + pair[1]) % len(self.workers)]
        if slow is fast:
            return
        self._tick(slow, 1, k, False)  # an idle one starts a batch
        self._tick(slow, at, k, False)
        self._advance(hang + 1)
        if slow.flights and redeliver is not None and fast.position:
            hung = slow.flights[redeliver % len(slow.flights)]
            again = hung.records[redeliver % len(hung.records)]
            self._append(min(fast.position)[1], self.sent_as[again.coordinates])
        self._land_all(fast)
        self._start(fast, self._fetch(fast, FETCH_MAX), run=True)
        if resume:
            self._land_all(slow)

    @rule(who=st.integers(0, 2), keep_running=st.booleans(), shift=st.integers(0, 2))
    def crash(self, who: int, keep_running: bool, shift: int) -> None:
        """A worker dies (SIGKILL at its current await) or is evicted from the group
        while its batch runs on as a zombie. It loses ledger and retries; a new incarnation
        joins; its partitions go to members and resume at the committed offset."""
        slot = who % len(self.workers)
        dead = self.workers[slot]
        for flight in dead.flights:
            if keep_running:
                self.zombies.append(flight)
            else:
                flight.kill()
        self.workers[slot] = self._spawn(slot)
        for i, part in enumerate(sorted(dead.position)):
            self._assign(self.workers[(slot + shift + i) % len(self.workers)], part)
        self.disturbed = True

    @rule(partition=st.integers(0, PARTITIONS - 1), to=st.integers(0, 2))
    def rebalance(self, partition: int, to: int) -> None:
        """A partition moves to another member after its owner committed (on_revoked), or
        (`to` 0) is revoked and assigned back to the same member."""
        part = (TOPIC, partition)
        src = self._owner(partition)
        dst = self.workers[(self.workers.index(src) + to) % len(self.workers)]
        self._revoke(src, {part})
        self._assign(dst, part)

    @rule(who=st.integers(0, 2), to=st.integers(1, 2))
    def rebalance_all_away(self, who: int, to: int) -> None:
        """Every partition of a member goes to another: it is left with an empty
        assignment (more members than partitions), and keeps polling."""
        src = self.workers[who % len(self.workers)]
        dst = self.workers[(self.workers.index(src) + to) % len(self.workers)]
        if dst is src or not src.position:
            return
        parts = set(src.position)
        self._revoke(src, parts)
        src.tracker.assigned(set())
        for part in sorted(parts):
            self._assign(dst, part)

    @rule(seconds=st.sampled_from([1.0, 10.0, LEASE_TTL_S + 1, CLAIM_S + 1, DONE_TTL_S + 1]))
    def advance_clock(self, seconds: float) -> None:
        """Time passes: leases run out after LEASE_TTL_S, outbox claims after CLAIM_S,
        and after DONE_TTL_S every done marker too (only the database fence is left)."""
        self._advance(seconds)

    @rule(faults=st.lists(st.sampled_from(FAULTS), min_size=1, max_size=3))
    def inject_faults(self, faults: list[Fault]) -> None:
        """The next call of each named dependency method (by anyone) fails, before or
        after it took effect: one-shot faults."""
        self.faults.extend(faults)
        self.disturbed = True

    @rule(who=st.integers(0, 2))
    def relay(self, who: int) -> None:
        """One outbox relay pass of a worker: re-publish unpublished rows whose claim ran
        out."""
        worker = self.workers[who % len(self.workers)]
        try:
            drive(worker.relay.relay_once())
        except DependencyError:
            self.disturbed = True  # Relay.run logs and retries later

    # -- invariants ------------------------------------------------------------------

    def _published_ids(self) -> set[str]:
        return {e.event_id for e in self.publisher.published}

    def _durable(self, r: InboundRecord, published: set[str], dead: set[Any]) -> bool:
        keys = self.expect[r.coordinates]
        if keys is None:
            return r.coordinates in dead
        return all(k in self.store.rows and k.event_id in published for k in keys)

    def _check_committed(self) -> None:
        published = self._published_ids()
        dead = {i.record.coordinates for i in self.publisher.dead_letters}
        for p, committed in self.committed.items():
            for r in self.log[p][:committed]:
                assert self._durable(r, published, dead), (
                    f"offset {committed} of partition {p} committed past {r.coordinates} "
                    f"(expects {self.expect[r.coordinates]}) which is not durable"
                )

    @invariant()
    def p1_one_row_per_key(self) -> None:
        """P1: no key is ever inserted twice; rows only for keys somebody produced."""
        assert all(n == 1 for n in self.store.inserts.values()), self.store.inserts
        produced = {k for keys in self.expect.values() if keys for k in keys}
        assert set(self.store.rows) <= produced
        for k, p in self.store.rows.items():
            assert p.message.key == k
            assert p.event.event_id == k.event_id

    @invariant()
    def p2_no_phantom_events(self) -> None:
        """P2: every published event is exactly the outbox row of a stored message."""
        stored = {p.event.event_id for p in self.store.rows.values()}
        for event in self.publisher.published:
            assert event.event_id in stored, f"phantom event {event.event_id}"
            assert event == self.store.outbox[event.event_id].event, "bytes differ"

    @invariant()
    def p4_committed_offsets_only_cover_durable_records(self) -> None:
        """P4 / rule 8: below every committed offset each record is durable."""
        self._check_committed()

    @invariant()
    def pending_work_stays_within_the_limit_plus_one_fetch(self) -> None:
        """Backpressure: a partition's unfinished records never exceed MAX_PENDING_RECORDS
        plus what its last fetch brought (a fetch may come when it was just under)."""
        limit = self.settings.max_pending_records
        for w in self.workers:
            for part in w.position:
                assert w.tracker.pending(part) <= limit + w.last_fetch.get(part, 0), (
                    f"{w}: {w.tracker.pending(part)} pending on {part}, limit {limit}"
                )

    @invariant()
    def pending_bytes_stay_within_the_share_plus_one_fetch(self) -> None:
        """Backpressure in bytes: a partition's unfinished records never hold more than
        its share of MAX_PENDING_BYTES plus what its last fetch brought, and the count
        the tracker keeps is the bytes of the records it has not finished."""
        for w in self.workers:
            share = w.tracker.byte_share()
            assert share is not None
            for part in w.position:
                held = w.tracker.pending_bytes(part)
                assert held <= share + w.last_fetch_bytes.get(part, 0), (
                    f"{w}: {held} bytes pending on {part}, share {share}"
                )
                if w.tracker.pending(part) == 0:
                    assert held == 0, f"{w}: nothing pending on {part} but {held} bytes held"

    @invariant()
    def nothing_pending_means_nothing_paused(self) -> None:
        """Once nothing is pending (no failed records waiting either), no partition is
        paused: a failure, a rebalance or backpressure never leaves one paused for good."""
        for w in self.workers:
            if all(w.tracker.pending(p) == 0 for p in w.position):
                assert w.tracker.pauses() == {}, f"{w} pauses {w.tracker.pauses()}"
            assert set(w.tracker.owned) == set(w.position), "the tracker owns what Kafka gave"

    @invariant()
    def done_markers_and_dead_letters_are_sound(self) -> None:
        """A done marker means stored and published; only poison is dead-lettered;
        an outbox row marked published was published."""
        published = self._published_ids()
        dead = {i.record.dead_letter_key for i in self.publisher.dead_letters}
        for k in self.leases.done_keys():
            if isinstance(k, RecordKey):
                assert k in dead, f"dead-letter marker for a record never dead-lettered {k}"
                continue
            assert k in self.store.rows, f"done marker for unstored {k}"
            assert k.event_id in published, f"done marker for unannounced {k}"
        for i in self.publisher.dead_letters:
            assert self.expect[i.record.coordinates] is None, f"valid {i.record} dead-lettered"
        for event_id, row in self.store.outbox.items():
            assert not row.published or event_id in published

    # -- the end: heal, drain, check -------------------------------------------------

    def teardown(self) -> None:
        """Heal the world, drain every partition and check the end state (not when a
        step already failed: that error is the report)."""
        if sys.exc_info()[0] is not None or not self.workers:
            return
        clean = not self.disturbed
        self._heal()
        self._drain()
        self._check_end(clean)
        self._relay_everything()

    def _heal(self) -> None:
        self.faults.clear()
        for zombie in self.zombies:
            zombie.finish()
        self.zombies.clear()
        for worker in self.workers:
            self._land_all(worker)

    def _drained(self) -> bool:
        return all(self.committed[p] == len(self.log[p]) for p in self.log) and not any(
            len(w.tracker.retries) for w in self.workers
        )

    def _drain(self) -> None:
        for _ in range(HEAL_ROUNDS):
            if self._drained():
                return
            self._advance(CLAIM_S + 1)  # dead workers' leases and claims run out
            for worker in self.workers:
                self._start(worker, self._fetch(worker, FETCH_MAX), run=True)
        assert self._drained(), (
            f"not drained after {HEAL_ROUNDS} rounds: committed={self.committed}, "
            f"log={ {p: len(rs) for p, rs in self.log.items()} }, "
            f"retries={[len(w.tracker.retries) for w in self.workers]}, "
            f"leases={self.leases.values}"
        )

    def _check_end(self, clean: bool) -> None:
        valid = {k for keys in self.expect.values() if keys for k in keys}
        assert set(self.store.rows) == valid, "P1: exactly one row per valid key"
        published = Counter(e.event_id for e in self.publisher.published)
        missing = {k for k in valid if published[k.event_id] == 0}
        assert not missing, f"P3: rows never announced: {missing}"
        poison = {c for c, keys in self.expect.items() if keys is None}
        assert {i.record.coordinates for i in self.publisher.dead_letters} == poison
        if clean:
            assert all(n == 1 for n in published.values()), f"duplicates: {published}"
            assert len(published) == len(valid)
            assert self.store.unpublished() == set()

    def _relay_everything(self) -> None:
        """Whatever is still unmarked (a mark that failed after a good publish) is
        re-published by the relay once the claims ran out; then every row is marked."""
        self._advance(CLAIM_S + 1)
        while drive(self.workers[0].relay.relay_once()):
            pass
        assert self.store.unpublished() == set()


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    """Every batch logs; keep thousands of lines out of a failure report."""
    with structlog.testing.capture_logs():
        yield


TestPipelineMachine = PipelineMachine.TestCase
TestPipelineMachine.__doc__ = "Run the group model: random steps, invariants, healed end."
TestPipelineMachine.settings = settings(
    # ~2 s by default; a deeper hunt: STATE_MACHINE_EXAMPLES=2000 pytest this file.
    max_examples=int(os.environ.get("STATE_MACHINE_EXAMPLES", "60")),
    stateful_step_count=40,
    deadline=None,
    database=None,  # no example database: a failure is reported, not saved for replay
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
