"""One batch of inbound records through every stage of the flow, in a page.

    decode -> lease every message key (one Redis round trip)
           -> one transaction: messages ON CONFLICT DO NOTHING + outbox rows
           -> publish message_created (new rows, and unpublished rows of conflicts)
           -> mark outbox rows published -> leases become done markers
           -> dead-letter what is not a usable webhook, or what was refused
           -> report which records are durable and which must be retried

A record is durable when it was dead-lettered, or when every message key in it is
stored and announced (by us now, or found done). A key another worker holds defers
its record (docs/design.md, rule 5); a failed step releases our leases (rule 4) and
retries the records. Nothing here commits offsets: the service does, from the report.

Failures come in two kinds (rule 10). A dependency that fails (Redis, the database, the
broker) fails the batch: every record is retried, nothing is dead-lettered. A record
whose data is refused (the database will not take a value, the event cannot be encoded)
or that raises something unexpected is isolated: the batch is split in halves until the
record is alone, then it is dead-lettered (``unstorable`` / ``internal_error``) and its
neighbours are stored as usual. So no record, however crafted, stops a partition.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog

from consumer import events, intake, safetext
from consumer.crashpoints import CrashPoints
from consumer.errors import (
    DependencyError,
    LeaseStoreError,
    PartlyPublishedError,
    PublishPendingError,
    StoreError,
    UnstorableError,
)
from consumer.metrics import Metrics
from consumer.outbox import MarkQueue
from consumer.ports import (
    Claim,
    EventSink,
    LeaseKey,
    LeaseState,
    LeaseStore,
    MessageStore,
    PendingMessage,
    PendingStatus,
    SaveResult,
)
from consumer.records import (
    BatchReport,
    InboundRecord,
    Invalid,
    Item,
    ItemKey,
    Message,
    MessageKey,
    Reason,
    RecordKey,
    StatusKey,
    StatusUpdate,
    Webhook,
)

log = structlog.get_logger(__name__)

_K = TypeVar("_K", ItemKey, RecordKey)

# The ended batches whose outbox claims a member takes back at once (older ones wait
# for their claims to run out, as another member's would).
_ENDED_KEPT = 64

# A dead letter's detail in a log line: enough to tell what was wrong, bounded.
_LOG_DETAIL_CHARS = 200


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """The settings the pipeline reads (from :class:`consumer.settings.Settings`)."""

    outbound_topic: str
    max_record_bytes: int
    lease_ttl_s: float
    # How long a batch's outbox claims hold: a lease's worth plus one produce timeout.
    claim_for: dt.timedelta
    redis_outage_policy: str = "pause"  # "pause" or "fence"
    app_secret: str = ""  # WHATSAPP_APP_SECRET; empty: no signature check
    debug: bool = False
    # The largest event: a larger one's record is dead-lettered as unstorable, before
    # anything is stored (its produce request, or OUTBOUND_TOPIC's limit read at start).
    event_limit: events.EventLimit = events.REQUEST_LIMIT
    # STATUS_EVENTS: store status updates and announce each forward move; off, they are
    # counted (outcome "ignored") and nothing else.
    status_events: bool = True


@dataclass(frozen=True, slots=True)
class _Refused:
    """A sub-batch that holds a record whose data was refused, or that raised."""

    reason: Reason
    detail: str


class BatchProcessor(Protocol):
    """What the service runs each batch through: the pipeline, or the bench's
    pass-through reference."""

    async def process(self, records: Sequence[InboundRecord]) -> BatchReport: ...

    async def housekeeping(self) -> None:
        """Work between batches (never raises for a failing dependency)."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Pipeline:
    """The per-batch flow. Between batches it keeps only the token counter and the
    tokens of recent batches that ended without publishing (`_ended`)."""

    def __init__(
        self,
        config: PipelineConfig,
        leases: LeaseStore,
        store: MessageStore,
        publisher: EventSink,
        *,
        worker_id: str,
        metrics: Metrics,
        marks: MarkQueue,
        crash: CrashPoints | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        """`metrics` and `marks` are the member's, shared with its relay: one registry,
        and one queue of outbox deletes to retry before the relay could announce again."""
        self._config = config
        self._leases = leases
        self._store = store
        self._publisher = publisher
        self._worker_id = worker_id
        self._crash = crash or CrashPoints("")
        self._clock = clock
        self._seq = itertools.count(1)
        # Batches of this member that failed after their save was sent, by token, with
        # when they ended (monotonic): outbox rows they may hold (a commit whose answer
        # was lost, a release that failed) are ours to take again at once, instead of
        # after their claim runs out. Only ended batches: a running batch's rows are
        # never taken by another batch of ours (docs/design.md, rule 7).
        self._ended: dict[str, float] = {}
        self._debug = config.debug
        # Encoded once, not per record; None: no signature check (WHATSAPP_APP_SECRET unset).
        self._app_secret = config.app_secret.encode() or None
        self.metrics = metrics
        self.marks = marks

    def limit_events(self, limit: events.EventLimit) -> None:
        """From now on, a record with an event larger than `limit` is dead-lettered as
        unstorable before anything is stored (the outbound topic's limit, read again
        after it refused an event: docs/design.md, "Events the outbound topic cannot
        take")."""
        self._config = dataclasses.replace(self._config, event_limit=limit)

    async def housekeeping(self) -> None:
        """Between batches: retry outbox deletes that failed after a publish."""
        if not self.marks:
            return
        try:
            done = await self.marks.flush()
        except StoreError as exc:
            self.metrics.dependency_error(exc)
            log.debug("outbox.mark_retry_failed", pending=len(self.marks), error=str(exc))
            return
        log.info("outbox.marked_after_retry", count=done)

    async def process(self, records: Sequence[InboundRecord]) -> BatchReport:
        """Run one batch. Never raises for a failing dependency or a record's data: it
        reports retries and dead letters."""
        started = time.monotonic()
        report = BatchReport(records=len(records))
        try:
            await self._process(records, report)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug must not kill the member
            self._unexpected(exc, records, report)
        duration_s = time.monotonic() - started
        self._observe(report, duration_s)
        log.info(
            "batch.done",
            duration_ms=round(duration_s * 1000, 1),
            **report.counts(),
            **({"failure": report.failure} if report.failure else {}),
        )
        return report

    async def _process(self, records: Sequence[InboundRecord], report: BatchReport) -> None:
        decoded = [self._decode(r) for r in records]
        invalid = [d for d in decoded if isinstance(d, Invalid)]
        webhooks = [d for d in decoded if isinstance(d, Webhook)]
        report.messages = sum(len(h.messages) for h in webhooks)
        for hook in webhooks:
            report.statuses += len(hook.statuses)
            if hook.statuses and not self._config.status_events:
                for u in hook.statuses:
                    report.count_status(u.key.status, "ignored")
            report.errors += hook.errors
            if hook.ignored:
                self._ignored(hook, report)
        await self._store_isolating(webhooks, report, invalid)
        await self._dead_letter(invalid, report)

    def _ignored(self, hook: Webhook, report: BatchReport) -> None:
        """Count each change that created nothing by its field, and say where it was (at
        debug): no change vanishes without a trace."""
        for where, name in hook.ignored:
            report.ignored_changes += 1
            report.ignored_fields[name] = report.ignored_fields.get(name, 0) + 1
            if self._debug:
                log.debug("change.ignored", **hook.log_context(), change=where, field=name)

    def _decode(self, record: InboundRecord) -> Webhook | Invalid:
        return intake.decode(
            record, max_bytes=self._config.max_record_bytes, app_secret=self._app_secret
        )

    def _unexpected(
        self, exc: Exception, records: Sequence[InboundRecord], report: BatchReport
    ) -> None:
        """A bug outside any one record's processing: retry what is not yet durable."""
        log.error("batch.internal_error", error=type(exc).__name__, exc_info=exc)
        report.failure = f"internal error: {type(exc).__name__}"
        done = {r.coordinates for r in report.durable}
        report.retry = [r for r in records if r.coordinates not in done]

    def _observe(self, report: BatchReport, duration_s: float) -> None:
        m = self.metrics
        m.batch_duration.observe(duration_s)
        m.batches.labels("failed" if report.failure else "ok").inc()
        m.messages_stored.inc(report.stored)
        m.duplicates.labels("in_batch").inc(report.dup_in_batch)
        m.duplicates.labels("lease_held").inc(report.held)
        m.duplicates.labels("done_marker").inc(report.dup_done_marker)
        m.duplicates.labels("database").inc(report.dup_database)
        m.redis_overruled.labels("done_unconfirmed").inc(report.markers_unconfirmed)
        m.redis_overruled.labels("foreign").inc(report.foreign_keys)
        m.events_published.labels("pipeline").inc(report.events)
        for (word, outcome), count in report.status_outcomes.items():
            m.statuses.labels(word, outcome).inc(count)
        for name, count in report.ignored_fields.items():
            m.changes_ignored.labels(name).inc(count)
        m.leases_lost.inc(report.leases_lost)
        m.dead_letters_repeated.inc(report.dead_letters_repeated)
        if report.retry:
            reason = "failure" if report.failure else "deferred"
            m.records_retried.labels(reason).inc(len(report.retry))

    async def _dead_letter(self, invalid: list[Invalid], report: BatchReport) -> None:
        """Send each bad record to the dead-letter topic once. A record carries a
        marker like a message's (lease while sending, done after): a redelivery (the
        partition moved before its offset was committed) finds it done and does not
        send it again; one another member is sending is retried, not sent twice."""
        if not invalid:
            return
        by_key: dict[RecordKey, list[Invalid]] = {}
        for i in invalid:
            by_key.setdefault(i.record.dead_letter_key, []).append(i)
        token = self._token()
        states = await self._acquire(list(by_key), token, report)
        if states is None:
            report.retry.extend(i.record for i in invalid)
            return
        # A foreign key (not ours, no end in sight) cannot say the letter was sent: it
        # is sent, without a lease (at worst twice, as after a crash).
        foreign = [k for k, s in states.items() if s is LeaseState.FOREIGN]
        report.foreign_keys += len(foreign)
        mine = [k for k, s in states.items() if s is LeaseState.ACQUIRED]
        for k, state in states.items():
            if state is LeaseState.DONE:
                report.dead_letters_repeated += len(by_key[k])
                report.durable.extend(i.record for i in by_key[k])
            elif state is LeaseState.HELD:
                report.retry.extend(i.record for i in by_key[k])
        letters = [by_key[k][0] for k in mine + foreign]
        try:
            await self._publisher.dead_letter(letters)
        except DependencyError as exc:
            self.metrics.dependency_error(exc)
            await self._release(mine, token)
            report.failure = report.failure or f"dead-letter: {exc}"
            report.retry.extend(i.record for k in mine + foreign for i in by_key[k])
            log.warning("dlq.failed", count=len(letters), error=str(exc))
            return
        for i in letters:
            log.warning("record.dead_lettered", **i.log_context(), detail=_loggable(i.detail))
            self.metrics.dead_lettered.labels(str(i.reason)).inc()
        report.dead_lettered += len(letters)
        report.durable.extend(i.record for k in mine + foreign for i in by_key[k])
        try:
            await self._leases.finish(mine, token)
        except LeaseStoreError as exc:  # a redelivery would dead-letter it once more
            self.metrics.dependency_error(exc)
            log.warning("dlq.marker_failed", count=len(mine), error=str(exc))

    # -- isolation: a refused record must not hold up its neighbours --------------------

    async def _store_isolating(
        self, webhooks: list[Webhook], report: BatchReport, refused: list[Invalid]
    ) -> None:
        """Store these webhooks; if the write is refused, split them in halves and try
        each, until the record that causes it is alone and goes to `refused`. A
        dependency failure stops the search: what is left is retried as a whole."""
        part = BatchReport()
        outcome = await self._guard_and_store(webhooks, part)
        if isinstance(outcome, _Refused):
            if len(webhooks) == 1:
                self._isolated(webhooks[0], outcome, report, refused)
                return
            middle = len(webhooks) // 2
            for half in (webhooks[:middle], webhooks[middle:]):
                if report.failure is not None:
                    report.retry.extend(h.record for h in half)
                else:
                    await self._store_isolating(half, report, refused)
            return
        report.add(part)
        if outcome is None:  # a dependency failed: only records without messages are done
            report.failure = part.failure
            outcome = set()
        for hook in webhooks:
            if all(i.key in outcome for i in self._items(hook)):
                report.durable.append(hook.record)
            else:
                report.retry.append(hook.record)

    def _isolated(
        self, hook: Webhook, refused: _Refused, report: BatchReport, out: list[Invalid]
    ) -> None:
        report.isolated += 1
        log.warning(
            "record.isolated",
            **hook.log_context(),
            reason=str(refused.reason),
            detail=_loggable(refused.detail),
        )
        out.append(Invalid(hook.record, refused.reason, refused.detail))

    # -- lease, store, publish -------------------------------------------------------

    def _items(self, hook: Webhook) -> tuple[Item, ...]:
        """What of a webhook is stored and announced: its messages, and its status
        updates unless STATUS_EVENTS is off."""
        return hook.items if self._config.status_events else hook.messages

    async def _guard_and_store(
        self, webhooks: list[Webhook], report: BatchReport
    ) -> set[ItemKey] | _Refused | None:
        """Lease, store, publish. Returns the keys that are stored and announced (a
        stale status: stored); a refusal of the data; or None when a dependency failed
        (`report.failure`)."""
        first: dict[ItemKey, Item] = {}
        copies = 0
        for hook in webhooks:
            for i in self._items(hook):
                copies += 1
                if i.key in first:
                    if isinstance(i, StatusUpdate):
                        report.count_status(i.key.status, "duplicate")
                else:
                    first[i.key] = i
        report.dup_in_batch = copies - len(first) - report.status_count("duplicate")
        if not first:
            return set()
        token = self._token()
        try:
            states = await self._acquire(list(first), token, report)
        except Exception as exc:  # noqa: BLE001 - a surprise from one record's keys: isolate it
            await self._release(list(first), token)
            return _internal(exc)
        if states is None:
            return None
        mine = [k for k, s in states.items() if s is LeaseState.ACQUIRED]
        marked = [k for k, s in states.items() if s is LeaseState.DONE]
        done = await self._confirm(marked, report)
        if done is None:
            await self._release(mine, token)
            return None
        fenced = self._unvouched(states, marked, done, first, report)
        self._crash.hit("after_lease")
        stored = await self._store_and_publish(
            [first[k] for k in mine + fenced], token, report, unleased=frozenset(fenced)
        )
        if stored is None or isinstance(stored, _Refused):
            return stored
        return stored | done

    async def _confirm(
        self, marked: list[ItemKey], report: BatchReport
    ) -> frozenset[ItemKey] | None:
        """The keys of `marked` (done markers in Redis) that the database holds stored
        and announced; None when it cannot be asked (the batch fails, as for any
        dependency). A marker is a hint: believed alone, a Redis that outlived its
        database would skip messages the database lost."""
        if not marked:
            return frozenset()
        try:
            return await self._store.announced(marked)
        except StoreError as exc:
            self.metrics.dependency_error(exc)
            # As every database failure reads in batch.done: "StoreError: ..." (the
            # message says it was the confirmation).
            report.failure = f"{type(exc).__name__}: {exc}"
            log.warning("lease.confirm_failed", messages=len(marked), error=str(exc))
            return None

    def _unvouched(
        self,
        states: dict[ItemKey, LeaseState],
        marked: list[ItemKey],
        done: frozenset[ItemKey],
        first: dict[ItemKey, Item],
        report: BatchReport,
    ) -> list[ItemKey]:
        """Count the lease states, and return what Redis cannot vouch for: a marker
        (`marked`) the database does not confirm (`done`), a key that is not ours. Those
        go to the database's fence without a lease (rule 1)."""
        foreign = [k for k, s in states.items() if s is LeaseState.FOREIGN]
        fenced = [k for k in marked if k not in done] + foreign
        for k in done:
            if isinstance(k, StatusKey):
                report.count_status(k.status, "duplicate")
        report.dup_done_marker = sum(1 for k in done if isinstance(k, MessageKey))
        report.markers_unconfirmed = len(marked) - len(done)
        report.foreign_keys = len(foreign)
        held = [k for k, s in states.items() if s is LeaseState.HELD]
        report.held = sum(1 for k in held if isinstance(k, MessageKey))
        report.statuses_held = len(held) - report.held
        if self._debug:
            for k in done:
                log.debug("message.duplicate", layer="done_marker", **first[k].log_context())
        if fenced:
            self._overruled(fenced, foreign, first, report)
        return fenced

    def _overruled(
        self,
        fenced: list[ItemKey],
        foreign: list[ItemKey],
        first: dict[ItemKey, Item],
        report: BatchReport,
    ) -> None:
        """Say that Redis was overruled: an operator should know that its done markers
        do not match the database (restored from a backup, failed over to a lagging
        replica, or a REDIS_KEY_PREFIX shared with another deployment), or that someone
        else writes keys under the prefix."""
        log.warning(
            "lease.redis_overruled",
            markers_unconfirmed=report.markers_unconfirmed,
            foreign_keys=report.foreign_keys,
            first=first[fenced[0]].log_context(),
            note="stored through the database's fence without a lease",
        )
        if self._debug:
            for k in fenced:
                kind = "foreign" if k in foreign else "done_unconfirmed"
                log.debug("message.redis_overruled", kind=kind, **first[k].log_context())

    def _token(self) -> str:
        return f"{self._worker_id}:{next(self._seq)}"

    async def _acquire(
        self, keys: list[_K], token: str, report: BatchReport
    ) -> dict[_K, LeaseState] | None:
        """Take the leases; None when Redis failed and the policy is to pause."""
        try:
            states = await self._leases.acquire(keys, token)
        except LeaseStoreError as exc:
            self.metrics.dependency_error(exc)
            await self._release(keys, token)  # whatever the failed pipeline did set
            if self._config.redis_outage_policy == "pause":
                report.failure = f"lease: {exc}"
                return None
            # "fence": go on with the database's unique constraint as the only guard.
            # Still exactly one row; concurrent duplicates may announce twice (same event_id).
            log.warning("lease.unavailable_fence_only", messages=len(keys), error=str(exc))
            return dict.fromkeys(keys, LeaseState.ACQUIRED)
        return {k: states[k] for k in keys}

    async def _store_and_publish(
        self,
        batch: list[Item],
        token: str,
        report: BatchReport,
        *,
        unleased: frozenset[ItemKey] = frozenset(),
    ) -> set[ItemKey] | _Refused | None:
        """Commit, then publish; on a failure give everything back for the retry.
        `unleased`: keys of `batch` stored without our lease (the fence alone guards
        them): their Redis key is someone else's, so it is not made a done marker."""
        if not batch:
            return set()
        keys = [m.key for m in batch]
        saved: SaveResult | None = None
        try:
            claim = Claim(token, self._config.claim_for, frozenset(self._reclaimable()))
            messages, statuses = self._pending(batch)
            saved = await self._store.save(messages, claim, statuses)
            self._crash.hit("after_commit")
            await self._publisher.publish(saved.to_publish)
            self._published(saved, batch)
            self._crash.hit("after_publish")
        except DependencyError as exc:
            await self._failed(exc, keys, token, report, saved.outbox_ids if saved else ())
            return None
        except UnstorableError as exc:  # from building or saving: nothing was committed
            await self._release(keys, token)
            return _Refused(Reason.UNSTORABLE, str(exc))
        except asyncio.CancelledError:
            await self._cancelled(keys, token)
            raise
        except Exception as exc:  # one record's surprise must not stop the partition
            if saved is None:  # nothing committed: find the record and dead-letter it
                await self._release(keys, token)
                return _internal(exc)
            # Committed: the rows stand, so the records are retried, never dead-lettered
            # (the retry finds them stored and announces what is unannounced).
            log.exception("batch.publish_internal_error", error=type(exc).__name__)
            await self._failed(exc, keys, token, report, saved.outbox_ids)
            return None
        self._account(saved, batch, report)
        finished = [k for k in keys if k not in saved.in_flight]
        try:
            if saved.in_flight:
                # Stored by another worker that is publishing it right now: not yet done,
                # so the record is deferred (rule 5) and our lease goes back for the retry.
                await self._release(list(saved.in_flight), token)
            leased = [k for k in finished if k not in unleased] if unleased else finished
            await self._finish(saved.outbox_ids, leased, token, report)
        except asyncio.CancelledError:
            # Cut short after the publish: the rows stand and their events are out; a
            # row not yet deleted is published again (same event_id) by whoever meets
            # it. The leases still processing go back, as for any cancelled batch.
            await self._cancelled(keys, token)
            raise
        return set(finished)

    async def _cancelled(self, keys: list[ItemKey], token: str) -> None:
        """The batch `token` was cancelled (a forced stop): its leases go back (rule 4;
        the redelivery is not kept waiting for LEASE_TTL_S), and its token ends, so the
        member's next batches may take back the outbox rows it had claimed."""
        try:
            await asyncio.shield(self._release(keys, token))
        finally:
            self._end(token)

    def _pending(self, batch: list[Item]) -> tuple[list[PendingMessage], list[PendingStatus]]:
        """Each message and status with the event that announces it (built before the
        commit, so the outbox holds the exact bytes; a status's is used only if it moves
        its message's state)."""
        now = self._clock()
        topic = self._config.outbound_topic
        limit = self._config.event_limit
        messages: list[PendingMessage] = []
        statuses: list[PendingStatus] = []
        for i in batch:
            if isinstance(i, Message):
                event = events.build(i, topic=topic, occurred_at=now, limit=limit)
                messages.append(PendingMessage(i, event))
            else:
                event = events.build_status(i, topic=topic, occurred_at=now, limit=limit)
                statuses.append(PendingStatus(i, event))
        return messages, statuses

    def _published(self, saved: SaveResult, batch: list[Item]) -> None:
        by_event = {m.key.event_id: m for m in batch if isinstance(m, Message)}
        self.metrics.published(
            [by_event[e.event_id] for e in saved.to_publish if e.event_id in by_event]
        )

    def _account(self, saved: SaveResult, batch: list[Item], report: BatchReport) -> None:
        new_statuses = 0
        for k in saved.inserted:
            if isinstance(k, StatusKey):
                new_statuses += 1
                report.count_status(k.status, "stale" if k in saved.stale else "announced")
        for k in saved.conflicts - saved.in_flight:
            if isinstance(k, StatusKey):
                report.count_status(k.status, "duplicate")
        messages_in_flight = sum(1 for k in saved.in_flight if isinstance(k, MessageKey))
        report.stored = len(saved.inserted) - new_statuses
        report.dup_database = (
            sum(1 for k in saved.conflicts if isinstance(k, MessageKey)) - messages_in_flight
        )
        report.held += messages_in_flight
        report.statuses_held += len(saved.in_flight) - messages_in_flight
        report.events = len(saved.to_publish)
        report.republished = len(saved.to_publish) - (len(saved.inserted) - len(saved.stale))
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
        published: Sequence[str],
        keys: list[ItemKey],
        token: str,
        report: BatchReport,
    ) -> None:
        """Bookkeeping after the events of the outbox rows `published` are out.
        Failures here cost no correctness: a row we could not mark is retried
        (MarkQueue) while our claim on it stands, and announced once more (same
        event_ids) only if the database stays away longer; a lease that did not become a
        done marker expires, leaving the database fence."""
        try:
            retried = await self.marks.mark(published)
        except StoreError as exc:
            self.metrics.dependency_error(exc)
            log.warning(
                "outbox.mark_failed", count=len(published), pending=len(self.marks), error=str(exc)
            )
        else:
            if retried:
                log.info("outbox.marked_after_retry", count=retried)
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
                "lease.lost", count=report.leases_lost, lease_ttl_s=self._config.lease_ttl_s
            )

    async def _failed(
        self,
        exc: Exception,
        keys: list[ItemKey],
        token: str,
        report: BatchReport,
        unpublished: Sequence[str],
    ) -> None:
        """A step failed: give back our leases (rule 4) and our claims on outbox rows we
        could not publish, so the retry is neither swallowed nor kept waiting."""
        report.failure = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, DependencyError):
            self.metrics.dependency_error(exc)
        log.warning("batch.store_or_publish_failed", messages=len(keys), error=str(exc))
        try:
            await self._release(keys, token)
            if unpublished and isinstance(exc, PublishPendingError):
                # The sends may still land (or some did): the claims stand until they run
                # out (LEASE_TTL_S + KAFKA_REQUEST_TIMEOUT_S), so another member's relay
                # does not send the events again meanwhile. This member's retry takes them
                # back at once (the batch has ended), waits for the same sends and sends
                # only the events that failed.
                partly = isinstance(exc, PartlyPublishedError)
                log.info(
                    "outbox.claims_kept",
                    rows=len(unpublished),
                    reason="partly published" if partly else "publish pending",
                )
            elif unpublished:
                try:
                    await self._store.release_claims(unpublished, token)
                except StoreError as claim_exc:
                    self.metrics.dependency_error(claim_exc)
                    log.warning("outbox.release_claims_failed", error=str(claim_exc))
        finally:
            # Ended once it runs no more (design rule 7): only then may the member's
            # other batches take back what it still claims (a release that failed).
            self._end(token)

    def _end(self, token: str) -> None:
        """The batch `token` failed after its save was sent and runs no more."""
        self._ended[token] = time.monotonic()
        while len(self._ended) > _ENDED_KEPT:
            del self._ended[next(iter(self._ended))]

    def _reclaimable(self) -> tuple[str, ...]:
        """The tokens of our ended batches whose claims may still stand."""
        horizon = time.monotonic() - self._config.claim_for.total_seconds()
        for token in [t for t, ended in self._ended.items() if ended < horizon]:
            del self._ended[token]
        return tuple(self._ended)

    async def _release(self, keys: Sequence[LeaseKey], token: str) -> None:
        try:
            released = await self._leases.release(keys, token)
        except LeaseStoreError as exc:
            self.metrics.dependency_error(exc)
            # The leases run out by themselves after LEASE_TTL_S.
            log.warning("lease.release_failed", count=len(keys), error=str(exc))
        else:
            log.debug("lease.released", count=released)


def _internal(exc: Exception) -> _Refused:
    """An unexpected exception, as a dead-letter reason: its type only. Its message may
    quote a value of the record (personal data), and the detail is logged; the traceback
    goes to the ERROR line for whoever fixes the bug."""
    log.error("record.internal_error", error=type(exc).__name__, exc_info=exc)
    return _Refused(Reason.INTERNAL_ERROR, f"{type(exc).__name__} while storing the record")


def _loggable(detail: str) -> str:
    """A dead letter's detail for a log line: bounded, and with no character that could
    rewrite a terminal (details are ours, but quote the database's or a parser's words)."""
    return safetext.escape(safetext.clip(detail, _LOG_DETAIL_CHARS))
