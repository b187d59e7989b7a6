"""The consumer-group member's lifecycle: startup -> poll loop -> shutdown.

The loop reads top to bottom: fetch a batch (retries that are due, plus new records),
run it through the pipeline under the batch lock, let the bookkeeping settle it, commit,
apply the pauses the bookkeeping decides, sample the gauges. A rebalance waits for the
batch in flight (the same lock) and commits before giving partitions away. A stop request
(first SIGTERM/SIGINT) lets the current batch finish within SHUTDOWN_GRACE_S; a second
one, or the grace running out, cancels it (its leases are released).

What is decided lives elsewhere: ``tracking.py`` (offsets, retries, pauses), ``source.py``
(everything Kafka), ``wiring.py`` (the clients and the flow), ``health.py`` and
``lag.py`` (what the HTTP endpoint and the gauges show).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from consumer import dedup
from consumer.crashpoints import CrashPoints
from consumer.errors import BrokerError, WamidGuardError
from consumer.health import Health
from consumer.http import HttpServer
from consumer.lag import LagSampler
from consumer.metrics import Metrics
from consumer.pipeline import BatchProcessor
from consumer.publish import Publisher
from consumer.records import BatchReport, InboundRecord, Partition
from consumer.settings import Settings
from consumer.source import CommitOutcome, Source
from consumer.tracking import Tracker
from consumer.wiring import (
    PIPELINE,
    Backends,
    Flow,
    FlowFactory,
    check_topics,
    open_backends,
    start_publisher,
)

log = structlog.get_logger(__name__)


class Service:
    """One member of the consumer group."""

    def __init__(self, settings: Settings, *, flow_factory: FlowFactory = PIPELINE) -> None:
        """`flow_factory`: what the member runs each batch through (default: the
        pipeline, over Redis and the database)."""
        self.settings = settings
        self.flow_factory = flow_factory
        # At most 63 + 1 + 10 + 1 + 6 = 81 characters, so a batch's token
        # (`<worker_id>:<seq>`) always fits the outbox's claimed_by (128) whatever the
        # host's name (a name cut short stays unique by the pid and the random suffix).
        host = socket.gethostname()[:63]
        self.worker_id = f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.crash = CrashPoints(settings.crash_point)
        self.metrics = Metrics()
        self.tracker = Tracker(
            max_pending=settings.max_pending_records,
            retry_backoff_s=settings.retry_backoff_s,
            retry_backoff_max_s=settings.retry_backoff_max_s,
        )
        self.totals = BatchReport()
        self._inflight: dict[asyncio.Task[BatchReport], _InFlight] = {}
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._lock = asyncio.Lock()
        self.health = Health(settings, self.tracker, self._stop)
        self._started = False
        self._http: HttpServer | None = None
        self._backends: Backends | None = None
        self._publisher: Publisher | None = None
        self._source: Source | None = None
        self._flow: Flow | None = None
        self._lag: LagSampler | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def run(self, *, on_started: Callable[[], None] | None = None) -> None:
        """Start, consume until asked to stop, shut down. `on_started` runs once the
        member has started (the process entry point tunes the collector then).

        Raises on a startup failure, and when a supervised side task (the outbox relay)
        died: the service must not go on without it.
        """
        try:
            await self._start_http()
            await self.startup()
            if on_started is not None:
                on_started()
            loop_task = asyncio.create_task(self._main_loop(), name="poll-loop")
            relay = self._flow.relay if self._flow else None
            side_tasks = []
            if relay is not None:
                side_tasks.append(asyncio.create_task(relay.run(self._stop), name="outbox-relay"))
            await self._supervise(loop_task, side_tasks)
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        """Redis and the database first when the flow needs them (they answer, the
        schema is there), then Kafka: the producer, the flow, and the consumer joining
        the group."""
        s = self.settings
        log.info("service.starting", worker_id=self.worker_id, **s.public())
        client_id = f"{s.client_id}-{self.worker_id}"
        if self.flow_factory.needs_backends:
            self._backends = backends = await open_backends(s)
            self.health.probes = {
                "redis": lambda: dedup.ping(backends.redis),
                "database": backends.store.ping,
            }
        await check_topics(s)
        self._publisher = publisher = await start_publisher(
            s, client_id=client_id, on_renewed=self.metrics.producer_renewals.inc
        )
        self._flow = self.flow_factory.build(
            s,
            self._backends,
            publisher,
            worker_id=self.worker_id,
            crash=self.crash,
            metrics=self.metrics,
        )
        self._source = Source(s, client_id=client_id)
        await self._source.start(on_revoked=self.on_revoked, on_assigned=self.on_assigned)
        self.health.source = self._source
        self._lag = LagSampler(self._source, self.tracker, self.metrics)
        self._started = True
        log.info(
            "service.started",
            worker_id=self.worker_id,
            group=s.consumer_group,
            topic=s.inbound_topic,
            mode=self.flow_factory.name,
        )

    def request_stop(self, reason: str) -> None:
        """First call: graceful stop. Second call: cut the batch in flight short."""
        if self._stop.is_set():
            log.warning("service.force_stop", reason=reason)
            self._force.set()
        else:
            log.info("service.stopping", reason=reason, grace_s=self.settings.shutdown_grace_s)
            self._stop.set()

    async def shutdown(self) -> None:
        """Commit what is durable, leave the group, flush and close every client."""
        if self._source is not None:
            async with self._lock:
                await self._commit()
            await _quietly(self._source.stop(), "consumer.stop")
        if self._publisher is not None:
            await _quietly(self._publisher.close(), "producer.stop")
        if self._backends is not None:
            await _quietly(self._backends.close(), "backends.close")
        if self._lag is not None:
            self._lag.stop()
        if self._http is not None:
            await _quietly(self._http.stop(), "http.stop")
        relay = self._flow.relay if self._flow else None
        log.info(
            "service.stopped" if self._started else "service.start_failed",
            worker_id=self.worker_id,
            relay_republished=relay.republished if relay else 0,
            **self.totals.counts(),
        )

    # -- supervision -----------------------------------------------------------------

    async def _supervise(
        self, loop_task: asyncio.Task[None], side_tasks: list[asyncio.Task[None]]
    ) -> None:
        """Run the loop; if a side task dies first, stop gracefully and then fail loudly."""
        stop_wait = asyncio.create_task(self._stop.wait())
        await asyncio.wait({loop_task, stop_wait, *side_tasks}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        died = next((t for t in side_tasks if t.done() and not self._ended_cleanly(t)), None)
        if died is not None and not self._stop.is_set():
            exc = died.exception() if not died.cancelled() else None
            log.error("service.side_task_died", task=died.get_name(), error=repr(exc))
            self.request_stop(f"{died.get_name()} died")
        try:
            await self._wait_loop(loop_task)
        finally:
            for task in side_tasks:
                task.cancel()
            await asyncio.gather(*side_tasks, return_exceptions=True)
        if died is not None:
            raise WamidGuardError(f"side task {died.get_name()} stopped unexpectedly") from (
                died.exception() if not died.cancelled() else None
            )

    def _ended_cleanly(self, task: asyncio.Task[None]) -> bool:
        """A side task that returned because a stop was requested (the relay ends its
        round and returns) has not died; one that raised, or returned unasked, has."""
        return self._stop.is_set() and not task.cancelled() and task.exception() is None

    async def _wait_loop(self, loop_task: asyncio.Task[None]) -> None:
        """After a stop request: the batch in flight gets SHUTDOWN_GRACE_S, unless a
        second request forces the stop."""
        stop_wait = asyncio.create_task(self._stop.wait())
        await asyncio.wait({loop_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not loop_task.done():
            force_wait = asyncio.create_task(self._force.wait())
            await asyncio.wait(
                {loop_task, force_wait},
                timeout=self.settings.shutdown_grace_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            force_wait.cancel()
            if not loop_task.done():
                log.warning("service.grace_expired", grace_s=self.settings.shutdown_grace_s)
                loop_task.cancel()
        stop_wait.cancel()
        try:
            await loop_task
        except asyncio.CancelledError:
            log.warning("service.batch_cancelled")

    # -- the loop --------------------------------------------------------------------

    async def _main_loop(self) -> None:
        """Fetch for the partitions that have no batch in flight, start their batches
        (up to MAX_INFLIGHT_BATCHES at once), settle each batch as it ends. Records of
        one partition are in one batch at a time, so a partition is processed in order;
        batches of different partitions overlap (one waits on the database while the
        next takes its leases). Completion out of order is safe: a partition's offset
        is committed only up to its lowest unfinished record (rule 8)."""
        try:
            while not self._stop.is_set():
                await self._round()
            async with self._lock:
                await self._drain()  # a graceful stop lets the batches in flight end
        finally:
            await self._cancel_inflight()

    async def _round(self) -> None:
        """One turn: fetch for the free partitions (or wait for a batch) until something
        happens, then settle what ended, start what came in, commit, pause."""
        assert self._source is not None  # noqa: S101 - set in startup
        assert self._flow is not None  # noqa: S101 - set in startup
        assert self._lag is not None  # noqa: S101 - set in startup
        free = self._free_partitions()
        records: list[InboundRecord] = []
        if free and len(self._inflight) < self.settings.max_inflight_batches:
            records = await self._fetch(free)
        else:
            # Nothing to fetch (a standby with no partition, or every partition busy):
            # still poll, or aiokafka leaves the group after KAFKA_MAX_POLL_INTERVAL_S.
            await self._source.keep_in_group(self.settings.poll_timeout_s)
            if self._inflight:
                await asyncio.wait(
                    set(self._inflight),
                    timeout=self.settings.poll_timeout_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.settings.poll_timeout_s)
        async with self._lock:
            self._settle_finished()
            await self._flow.processor.housekeeping()
            self._start_batches(records)
            await self._commit()
        self._source.apply_pauses(self.tracker.pauses(), self.tracker.owned)
        self.metrics.outbox_unmarked.set(len(self._flow.marks or ()))
        self._lag.sample()
        oldest = min((b.started for b in self._inflight.values()), default=None)
        self.health.came_round(since=oldest)

    def _free_partitions(self) -> set[Partition]:
        """Owned partitions without a batch in flight (paused ones included: their
        retries still run; the consumer returns no new records of them)."""
        busy = {p for b in self._inflight.values() for p in b.partitions}
        return set(self.tracker.owned) - busy

    async def _fetch(self, partitions: set[Partition]) -> list[InboundRecord]:
        """Retries of these partitions that are due first, then new records to fill
        the batch. Waits up to POLL_TIMEOUT_S (or the next retry) for new records, but
        only until a batch in flight ends: its partition is then free for the next
        fetch. (aiokafka's getmany takes records out of its buffer only in a step that
        returns them, so cutting its wait short loses nothing.)"""
        assert self._source is not None  # noqa: S101 - set in startup
        now = time.monotonic()
        size = self.settings.batch_max_records
        due = self.tracker.due(now, size, partitions)
        if len(due) >= size:
            return due
        timeout_s = self.settings.poll_timeout_s
        next_retry = self.tracker.next_due_in(now, partitions)
        if next_retry is not None:
            timeout_s = min(timeout_s, next_retry)
        if due:
            timeout_s = 0
        fetch = self._source.fetch(
            timeout_s=timeout_s, max_records=size - len(due), partitions=partitions
        )
        getting = asyncio.create_task(fetch, name="fetch")
        if self._inflight and timeout_s > 0:
            try:
                await asyncio.wait({getting, *self._inflight}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getting.done():  # a batch ended first (or we are being cancelled)
                    getting.cancel()
        me = asyncio.current_task()
        try:
            new = await getting
        except asyncio.CancelledError:
            if me is not None and me.cancelling():
                raise
            new = []  # we cut the wait short
        except BrokerError as exc:
            await self._fetch_failed(exc)
            return due
        if me is not None and me.cancelling():
            # The loop was cancelled (a forced stop) while the fetch was in its top-up,
            # which takes a cancel as "return what you have": the cancel reached the
            # fetch and not us. Not swallowed: the records go untracked and are read
            # again by whoever owns their partition next.
            raise asyncio.CancelledError
        new = self.tracker.fetched(new)
        self.metrics.records_consumed.inc(len(new))
        return due + new

    def _start_batches(self, records: list[InboundRecord]) -> None:
        """Start batches of these records (all of partitions that were free). A partition
        with a worthwhile batch of its own (a quarter of BATCH_MAX_RECORDS or more: a
        backlog) gets one, so that they overlap; the small rest go together in one batch
        (under a light load, fewer and fuller batches cost less per record than
        overlapping). Never more batches than free slots. Records of a partition no
        longer ours (a rebalance came while we fetched) are dropped: their new owner
        reads them from the committed offset."""
        owned = self.tracker.owned
        by_partition: dict[Partition, list[InboundRecord]] = {}
        for r in records:
            p = (r.topic, r.partition)
            if p in owned:
                by_partition.setdefault(p, []).append(r)
        worthwhile = max(1, self.settings.batch_max_records // 4)
        plan = [[g] for g in by_partition.items() if len(g[1]) >= worthwhile]
        rest = [g for g in by_partition.items() if len(g[1]) < worthwhile]
        if rest:
            plan.append(rest)
        slots = max(1, self.settings.max_inflight_batches - len(self._inflight))
        while len(plan) > slots:
            plan[-2:] = [plan[-2] + plan[-1]]
        processor = self._flow_processor()
        for groups in plan:
            batch = [r for _, rs in groups for r in rs]
            task = asyncio.create_task(processor.process(batch), name="batch")
            self._inflight[task] = _InFlight(
                frozenset(p for p, _ in groups), batch, time.monotonic()
            )

    def _flow_processor(self) -> BatchProcessor:
        assert self._flow is not None  # noqa: S101 - set in startup
        return self._flow.processor

    def _settle_finished(self) -> None:
        """Let the bookkeeping settle every batch that ended (under the lock)."""
        for task in [t for t in self._inflight if t.done()]:
            self._settle(task)

    def _settle(self, task: asyncio.Task[BatchReport]) -> None:
        batch = self._inflight.pop(task)
        if task.cancelled():
            return  # cut short by a forced stop: its records stay unfinished (redelivered)
        exc = task.exception()
        if exc is not None:  # process() reports failures; this is a bug, not a record's
            log.error("batch.crashed", error=type(exc).__name__, exc_info=exc)
            report = BatchReport(
                records=len(batch.records), failure=type(exc).__name__, retry=list(batch.records)
            )
        else:
            report = task.result()
        self.tracker.settled(report, time.monotonic())
        self.totals.add(report)

    async def _drain(self) -> None:
        """Wait for every batch in flight and settle it (a rebalance, a stop)."""
        while self._inflight:
            await asyncio.wait(set(self._inflight))
            self._settle_finished()

    async def _cancel_inflight(self) -> None:
        """A forced stop (or a crash of the loop): cut the batches in flight short; each
        gives its leases back on the way out."""
        for task in self._inflight:
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        self._inflight.clear()

    async def _fetch_failed(self, exc: BrokerError) -> None:
        """A fetch raised (the broker answered an error, or a record could not be read):
        log it, put every partition back where our bookkeeping says it is (aiokafka,
        when unpacking a fetch fails half-way, moves on past the records it had read but
        not returned), and wait a little before the next try."""
        assert self._source is not None  # noqa: S101 - set in startup
        self.metrics.dependency_error(exc)
        if exc.from_broker:
            log.warning("fetch.failed", error=str(exc))
        else:
            log.error("fetch.internal_error", error=str(exc), exc_info=exc.__cause__)
        await self._source.rewind(self.tracker.positions())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self.settings.retry_backoff_max_s)

    async def _commit(self, partitions: Iterable[Partition] | None = None) -> None:
        """Commit `lowest not-yet-durable offset` of each owned partition that moved."""
        assert self._source is not None  # noqa: S101 - set in startup
        offsets = self.tracker.to_commit(partitions)
        if not offsets:
            return
        outcome = await self._source.commit(offsets)
        self.metrics.offset_commits.labels(outcome.value).inc()
        if outcome is not CommitOutcome.OK:
            return
        self.tracker.committed(offsets)
        log.debug("offsets.committed", offsets={f"{t}:{p}": o for (t, p), o in offsets.items()})
        self.crash.hit("after_offset_commit")

    # -- rebalance -------------------------------------------------------------------

    async def on_revoked(self, revoked: set[Partition]) -> None:
        async with self._lock:  # the batches in flight finish first
            await self._drain()
            await self._commit(revoked)
            self.tracker.revoked(revoked)
        log.info("partitions.revoked", partitions=sorted(f"{t}:{p}" for t, p in revoked))

    async def on_assigned(self, assigned: set[Partition]) -> None:
        assert self._source is not None  # noqa: S101 - set in startup
        async with self._lock:  # no batch may commit before the positions are set
            fresh = await self._source.start_at_committed(assigned)
            self.tracker.assigned(assigned, fresh=fresh)
        log.info("partitions.assigned", partitions=sorted(f"{t}:{p}" for t, p in assigned))

    # -- the endpoint ----------------------------------------------------------------

    async def _start_http(self) -> None:
        s = self.settings
        if s.metrics_port == 0:
            return
        self._http = HttpServer(s.metrics_host, s.metrics_port, self.health.routes(self.metrics))
        await self._http.start()


@dataclass(frozen=True, slots=True)
class _InFlight:
    """A batch being processed: its partitions (no other batch takes them meanwhile),
    its records, and when it started (for liveness)."""

    partitions: frozenset[Partition]
    records: list[InboundRecord]
    started: float


async def _quietly(awaitable: object, what: str) -> None:
    try:
        await awaitable  # type: ignore[misc]
    except Exception as exc:  # noqa: BLE001 - shutdown must close every client regardless
        log.warning("service.close_failed", step=what, error=repr(exc))
