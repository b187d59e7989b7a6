"""One batch of inbound records through every stage of the flow, in a page.

    decode -> dead-letter the invalid
           -> lease every message key (one Redis round trip)
           -> one transaction: messages ON CONFLICT DO NOTHING + outbox rows
           -> publish message_created (new rows, and unpublished rows of conflicts)
           -> mark outbox rows published -> leases become done markers
           -> report which records are durable and which must be retried

A record is durable when it was dead-lettered, or when every message key in it is
stored and announced (by us now, or found done). A key another worker holds defers
its record (DESIGN rule 5); a failed step releases our leases (rule 4) and retries the
records. Nothing here commits offsets: the service does, from the report.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from consumer import events, intake
from consumer.crashpoints import CrashPoints
from consumer.dedup import Leases, LeaseState
from consumer.errors import DependencyError, LeaseStoreError, StoreError
from consumer.metrics import Metrics
from consumer.publish import Publisher
from consumer.records import InboundRecord, Invalid, Message, MessageKey, Webhook
from consumer.settings import Settings
from consumer.store import MarkQueue, PendingMessage, SaveResult, Store

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class BatchReport:
    """What happened to one batch: counts for logs and metrics, records for offsets."""

    records: int = 0
    messages: int = 0
    stored: int = 0
    dup_done_marker: int = 0
    dup_database: int = 0
    dup_in_batch: int = 0
    held: int = 0
    statuses: int = 0
    errors: int = 0
    dead_lettered: int = 0
    events: int = 0
    republished: int = 0
    leases_lost: int = 0
    failure: str | None = None
    durable: list[InboundRecord] = field(default_factory=list)
    retry: list[InboundRecord] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "records": self.records,
            "messages": self.messages,
            "stored": self.stored,
            "dup_done_marker": self.dup_done_marker,
            "dup_database": self.dup_database,
            "dup_in_batch": self.dup_in_batch,
            "held": self.held,
            "statuses": self.statuses,
            "errors": self.errors,
            "dead_lettered": self.dead_lettered,
            "events": self.events,
            "republished": self.republished,
            "leases_lost": self.leases_lost,
            "retry": len(self.retry),
        }


class BatchProcessor(Protocol):
    """What the service runs each batch through: the pipeline, or the bench's
    pass-through reference."""

    async def process(self, records: Sequence[InboundRecord]) -> BatchReport: ...

    async def housekeeping(self) -> None:
        """Work between batches (never raises for a failing dependency)."""


def publish_claim(settings: Settings) -> dt.timedelta:
    """How long whoever claims an outbox row may take to publish it before others may:
    a lease's worth plus one full produce timeout."""
    return dt.timedelta(seconds=settings.lease_ttl_s + settings.kafka_request_timeout_s)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Pipeline:
    """The per-batch flow. Stateless between batches except for the token counter."""

    def __init__(
        self,
        settings: Settings,
        leases: Leases,
        store: Store,
        publisher: Publisher,
        *,
        worker_id: str,
        crash: CrashPoints | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
        metrics: Metrics | None = None,
        marks: MarkQueue | None = None,
    ) -> None:
        self._settings = settings
        self._leases = leases
        self._store = store
        self._publisher = publisher
        self._worker_id = worker_id
        self._crash = crash or CrashPoints("")
        self._clock = clock
        self._seq = itertools.count(1)
        self._debug = settings.debug
        # Encoded once, not per record; None: no signature check (WHATSAPP_APP_SECRET unset).
        self._app_secret = settings.app_secret.encode() or None
        self.metrics = metrics or Metrics()
        self.marks = marks or MarkQueue(store)

    async def housekeeping(self) -> None:
        """Between batches: retry outbox deletes that failed after a publish."""
        if not self.marks:
            return
        try:
            done = await self.marks.flush(self._clock())
        except StoreError as exc:
            self.metrics.dependency_error(exc)
            log.debug("outbox.mark_retry_failed", pending=len(self.marks), error=str(exc))
            return
        log.info("outbox.marked_after_retry", count=done)

    async def process(self, records: Sequence[InboundRecord]) -> BatchReport:
        """Run one batch. Never raises for a failing dependency: it reports retries."""
        started = time.monotonic()
        report = BatchReport(records=len(records))
        decoded = [
            intake.decode(r, max_bytes=self._settings.max_record_bytes, app_secret=self._app_secret)
            for r in records
        ]
        invalid = [d for d in decoded if isinstance(d, Invalid)]
        webhooks = [d for d in decoded if isinstance(d, Webhook)]
        await self._dead_letter(invalid, report)
        resolved = await self._guard_and_store(webhooks, report)
        for hook in webhooks:
            report.statuses += hook.statuses
            report.errors += hook.errors
            if all(m.key in resolved for m in hook.messages):
                report.durable.append(hook.record)
            else:
                report.retry.append(hook.record)
        duration_s = time.monotonic() - started
        self._observe(report, duration_s)
        log.info(
            "batch.done",
            duration_ms=round(duration_s * 1000, 1),
            **report.counts(),
            **({"failure": report.failure} if report.failure else {}),
        )
        return report

    def _observe(self, report: BatchReport, duration_s: float) -> None:
        m = self.metrics
        m.batch_duration.observe(duration_s)
        m.batches.labels("failed" if report.failure else "ok").inc()
        m.messages_stored.inc(report.stored)
        m.duplicates.labels("in_batch").inc(report.dup_in_batch)
        m.duplicates.labels("lease_held").inc(report.held)
        m.duplicates.labels("done_marker").inc(report.dup_done_marker)
        m.duplicates.labels("database").inc(report.dup_database)
        m.events_published.labels("pipeline").inc(report.events)
        m.statuses.inc(report.statuses)
        m.leases_lost.inc(report.leases_lost)
        if report.retry:
            reason = "failure" if report.failure else "deferred"
            m.records_retried.labels(reason).inc(len(report.retry))

    async def _dead_letter(self, invalid: list[Invalid], report: BatchReport) -> None:
        if not invalid:
            return
        try:
            await self._publisher.dead_letter(invalid)
        except DependencyError as exc:
            self.metrics.dependency_error(exc)
            report.failure = f"dead-letter: {exc}"
            report.retry.extend(i.record for i in invalid)
            log.warning("dlq.failed", count=len(invalid), error=str(exc))
            return
        for i in invalid:
            log.warning("record.dead_lettered", **i.log_context(), detail=i.detail)
            self.metrics.dead_lettered.labels(str(i.reason)).inc()
        report.dead_lettered += len(invalid)
        report.durable.extend(i.record for i in invalid)

    async def _guard_and_store(
        self, webhooks: list[Webhook], report: BatchReport
    ) -> set[MessageKey]:
        """Lease, store, publish. Returns the keys that are stored and announced."""
        first: dict[MessageKey, Message] = {}
        for hook in webhooks:
            for m in hook.messages:
                first.setdefault(m.key, m)
        report.messages = sum(len(h.messages) for h in webhooks)
        report.dup_in_batch = report.messages - len(first)
        if not first:
            return set()
        token = f"{self._worker_id}:{next(self._seq)}"
        try:
            states = await self._leases.acquire(list(first), token)
        except LeaseStoreError as exc:
            self.metrics.dependency_error(exc)
            await self._release(list(first), token)  # whatever the failed pipeline did set
            if self._settings.redis_outage_policy == "pause":
                report.failure = f"lease: {exc}"
                return set()
            # "fence": go on with the database's unique constraint as the only guard.
            # Still exactly one row; concurrent duplicates may announce twice (same event_id).
            log.warning("lease.unavailable_fence_only", messages=len(first), error=str(exc))
            states = dict.fromkeys(first, LeaseState.ACQUIRED)
        done = {k for k, s in states.items() if s is LeaseState.DONE}
        mine = [k for k, s in states.items() if s is LeaseState.ACQUIRED]
        report.dup_done_marker = len(done)
        report.held = len(states) - len(done) - len(mine)
        if self._debug:
            for k in done:
                log.debug("message.duplicate", layer="done_marker", **first[k].log_context())
        self._crash.hit("after_lease")
        stored = await self._store_and_publish([first[k] for k in mine], token, report)
        return done | stored

    async def _store_and_publish(
        self, batch: list[Message], token: str, report: BatchReport
    ) -> set[MessageKey]:
        """Commit, then publish; on a failure give everything back for the retry."""
        if not batch:
            return set()
        keys = [m.key for m in batch]
        now = self._clock()
        pending = [
            PendingMessage(m, events.build(m, topic=self._settings.outbound_topic, occurred_at=now))
            for m in batch
        ]
        saved: SaveResult | None = None
        try:
            saved = await self._store.save(
                pending,
                now,
                worker_id=self._worker_id,
                claim_for=publish_claim(self._settings),
                before_commit=lambda: self._crash.hit("after_insert"),
            )
            self._crash.hit("after_commit")
            await self._publisher.publish(saved.to_publish)
            self._published(saved, batch)
            self._crash.hit("after_publish")
        except DependencyError as exc:
            return await self._failed(exc, keys, token, report, saved.to_publish if saved else ())
        except asyncio.CancelledError:
            await asyncio.shield(self._release(keys, token))
            raise
        self._account(saved, batch, report)
        if saved.in_flight:
            # Stored by another worker that is publishing it right now: not yet done, so
            # the record is deferred (rule 5) and our lease goes back for the retry.
            await self._release(list(saved.in_flight), token)
        finished = [k for k in keys if k not in saved.in_flight]
        await self._finish(saved.to_publish, finished, token, now, report)
        return set(finished)

    def _published(self, saved: SaveResult, batch: list[Message]) -> None:
        by_event = {m.key.event_id: m for m in batch}
        self.metrics.published(
            [by_event[e.event_id] for e in saved.to_publish if e.event_id in by_event]
        )

    def _account(self, saved: SaveResult, batch: list[Message], report: BatchReport) -> None:
        report.stored = len(saved.inserted)
        report.dup_database = len(saved.conflicts) - len(saved.in_flight)
        report.held += len(saved.in_flight)
        report.events = len(saved.to_publish)
        report.republished = len(saved.to_publish) - len(saved.inserted)
        if not self._debug:  # per-message lines cost a dict each; build them only if read
            return
        by_key = {m.key: m for m in batch}
        for k in saved.inserted:
            log.debug("message.stored", **by_key[k].log_context())
        for k in saved.conflicts - saved.in_flight:
            log.debug("message.duplicate", layer="database", **by_key[k].log_context())
        for k in saved.in_flight:
            log.debug("message.deferred", reason="publish_in_flight", **by_key[k].log_context())

    async def _finish(
        self,
        published: Sequence[events.OutboundEvent],
        keys: list[MessageKey],
        token: str,
        now: dt.datetime,
        report: BatchReport,
    ) -> None:
        """Bookkeeping after the events are out. Failures here cost no correctness: a
        row we could not mark is retried (MarkQueue) while our claim on it stands, and
        announced once more (same event_id) only if the database stays away longer; a
        lease that did not become a done marker expires, leaving the database fence."""
        try:
            await self.marks.mark([e.event_id for e in published], now)
        except StoreError as exc:
            self.metrics.dependency_error(exc)
            log.warning(
                "outbox.mark_failed", count=len(published), pending=len(self.marks), error=str(exc)
            )
        try:
            finished = await self._leases.finish(keys, token)
        except LeaseStoreError as exc:
            self.metrics.dependency_error(exc)
            log.warning("lease.finish_failed", count=len(keys), error=str(exc))
            return
        if finished < len(keys):
            # Leases ran out while we worked (and another worker may have taken the key):
            # the database fenced it, but LEASE_TTL_S is shorter than our batches take.
            report.leases_lost = len(keys) - finished
            log.warning(
                "lease.lost", count=report.leases_lost, lease_ttl_s=self._settings.lease_ttl_s
            )

    async def _failed(
        self,
        exc: DependencyError,
        keys: list[MessageKey],
        token: str,
        report: BatchReport,
        unpublished: Sequence[events.OutboundEvent],
    ) -> set[MessageKey]:
        """A step failed: give back our leases (rule 4) and our claims on outbox rows we
        could not publish, so the retry is neither swallowed nor kept waiting."""
        report.failure = f"{type(exc).__name__}: {exc}"
        self.metrics.dependency_error(exc)
        log.warning("batch.store_or_publish_failed", messages=len(keys), error=str(exc))
        await self._release(keys, token)
        if unpublished:
            try:
                await self._store.release_claims([e.event_id for e in unpublished], self._worker_id)
            except StoreError as claim_exc:
                self.metrics.dependency_error(claim_exc)
                log.warning("outbox.release_claims_failed", error=str(claim_exc))
        return set()

    async def _release(self, keys: list[MessageKey], token: str) -> None:
        try:
            released = await self._leases.release(keys, token)
        except LeaseStoreError as exc:
            self.metrics.dependency_error(exc)
            # The leases run out by themselves after LEASE_TTL_S.
            log.warning("lease.release_failed", count=len(keys), error=str(exc))
        else:
            log.debug("lease.released", count=released)
