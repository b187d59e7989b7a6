"""The consumer-group member's lifecycle: startup -> poll loop -> shutdown.

The loop reads top to bottom: fetch for the partitions with no batch in flight, then,
under the batch lock, settle the batches that ended, start the new ones and commit; then
apply the pauses the bookkeeping decides and sample the gauges. A rebalance takes the
same lock. A stop request (first SIGTERM/SIGINT) lets the batches in flight finish within
SHUTDOWN_GRACE_S; a second one, or the grace running out, cancels them, and each gives
its leases back.

What is decided lives elsewhere: ``inflight.py`` (the batches running), ``fetching.py``
(what the next batch holds), ``rebalance.py`` (partitions coming and going),
``tracking.py`` (offsets, retries, pauses), ``source.py`` (everything Kafka),
``wiring.py`` (the clients and the flow), ``health.py`` and ``lag.py`` (what the HTTP
endpoint and the gauges show).
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
from consumer.errors import WamidGuardError
from consumer.fetching import Fetcher
from consumer.health import Health, HealthConfig
from consumer.http import HttpServer
from consumer.inflight import InFlight
from consumer.lag import LagSampler
from consumer.metrics import Metrics
from consumer.publish import Publisher
from consumer.rebalance import AssignmentWait, Rebalance
from consumer.records import BatchReport, InboundRecord, Partition, Reason
from consumer.settings import Settings
from consumer.source import CommitOutcome, Source
from consumer.tracking import Tracker
from consumer.wiring import (
    PIPELINE,
    Backends,
    Flow,
    FlowContext,
    FlowFactory,
    check_topics,
    open_backends,
    recheck_outbound,
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
        # Short enough that a batch's token (`<worker_id>:<seq>`) fits the outbox's
        # claimed_by column whatever the host's name; the pid and suffix keep it unique.
        host = socket.gethostname()[:63]
        self.worker_id = f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.crash = CrashPoints(settings.crash_point)
        self.metrics = Metrics()
        self.tracker = Tracker(
            max_pending=settings.max_pending_records,
            max_pending_bytes=settings.max_pending_bytes,
            retry_backoff_s=settings.retry_backoff_s,
            retry_backoff_max_s=settings.retry_backoff_max_s,
        )
        self.totals = BatchReport()
        self._assignment_wait = AssignmentWait()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._lock = asyncio.Lock()  # the loop's settle-start-commit step, or a rebalance
        health = HealthConfig(
            liveness_timeout_s=settings.liveness_timeout_s, inbound_topic=settings.inbound_topic
        )
        self.health = Health(health, self.tracker, self._stop)
        self._http: HttpServer | None = None
        self._backends: Backends | None = None
        self._publisher: Publisher | None = None
        self._source: Source | None = None
        self._running: _Running | None = None
        # Reading OUTBOUND_TOPIC's limit again, after it refused an event.
        self._recheck: asyncio.Task[None] | None = None

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
            running = self._running
            assert running is not None  # noqa: S101 - set by startup
            if on_started is not None:
                on_started()
            loop_task = asyncio.create_task(self._main_loop(running), name="poll-loop")
            relay = running.flow.relay
            side_tasks = []
            if relay is not None:
                side_tasks.append(asyncio.create_task(relay.run(self._stop), name="outbox-relay"))
            await self.supervise(loop_task, side_tasks)
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        """Redis and the database first when the flow needs them (they answer, the
        schema is there), then Kafka: the producer, the flow, and the consumer joining
        the group. Shutdown closes whatever was opened, also after a failure here."""
        s = self.settings
        log.info("service.starting", worker_id=self.worker_id, **s.public())
        client_id = f"{s.client_id}-{self.worker_id}"
        if self.flow_factory.needs_backends:
            self._backends = backends = await open_backends(s)
            self.health.probes = {
                "redis": lambda: dedup.ping(backends.redis),
                "database": backends.store.ping,
            }
        event_limit = await check_topics(s)
        self._publisher = publisher = await start_publisher(
            s,
            client_id=client_id,
            on_renewed=self.metrics.producer_renewals.inc,
            on_unpublishable=self._unpublishable,
        )
        flow = self.flow_factory.build(
            FlowContext(
                s,
                self._backends,
                publisher,
                self.worker_id,
                self.crash,
                self.metrics,
                event_limit,
            )
        )
        batches = InFlight(
            flow.processor,
            self._settled,
            max_batches=s.max_inflight_batches,
            batch_max_records=s.batch_max_records,
        )
        self._source = source = Source(s, client_id=client_id)
        rebalance = Rebalance(source, self.tracker, batches, commit=self._commit, lock=self._lock)
        await source.start(on_revoked=rebalance.on_revoked, on_assigned=rebalance.on_assigned)
        self.health.source = source
        fetcher = Fetcher(
            source,
            self.tracker,
            batches,
            self.metrics,
            self._stop,
            batch_max_records=s.batch_max_records,
            poll_timeout_s=s.poll_timeout_s,
            backoff_s=s.retry_backoff_max_s,
            batch_max_bytes=s.sizes.fetch_max_bytes,
        )
        lag = LagSampler(source, self.tracker, self.metrics)
        self._running = _Running(source, flow, batches, fetcher, lag)
        log.info(
            "service.started",
            worker_id=self.worker_id,
            group=s.consumer_group,
            topic=s.inbound_topic,
            mode=self.flow_factory.name,
        )

    def request_stop(self, reason: str) -> None:
        """First call: graceful stop. Second call: cut the batches in flight short."""
        if self._stop.is_set():
            log.warning("service.force_stop", reason=reason)
            self._force.set()
        else:
            log.info("service.stopping", reason=reason, grace_s=self.settings.shutdown_grace_s)
            self._stop.set()

    async def wait_stopping(self) -> None:
        """Return once a stop is requested."""
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Commit what is durable, leave the group, flush and close every client."""
        if self._recheck is not None:
            self._recheck.cancel()
        if self._source is not None:
            async with self._lock:
                await self._commit()
            await _quietly(self._source.stop(), "consumer.stop")
        if self._publisher is not None:
            await _quietly(self._publisher.close(), "producer.stop")
        if self._backends is not None:
            await _quietly(self._backends.close(), "backends.close")
        if self._running is not None:
            self._running.lag.stop()
        if self._http is not None:
            await _quietly(self._http.stop(), "http.stop")
        if self._running is None:
            # Nothing ran, so nothing to count; the reason is the command's own line.
            log.info("service.start_failed", worker_id=self.worker_id)
            return
        relay = self._running.flow.relay
        log.info(
            "service.stopped",
            worker_id=self.worker_id,
            relay_republished=relay.republished if relay else 0,
            **self.totals.counts(),
        )

    # -- supervision -----------------------------------------------------------------

    async def supervise(
        self, loop_task: asyncio.Task[None], side_tasks: list[asyncio.Task[None]]
    ) -> None:
        """Wait for the loop, stopping it as requested; if a side task dies first, stop
        gracefully and then fail loudly. Cancels the side tasks at the end."""
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
        """A side task that returned because a stop was requested has not died (the
        relay ends its round and returns); one that raised, or returned unasked, has."""
        return self._stop.is_set() and not task.cancelled() and task.exception() is None

    async def _wait_loop(self, loop_task: asyncio.Task[None]) -> None:
        """After a stop request: the batches in flight get SHUTDOWN_GRACE_S, unless a
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
                # A forced stop said so already (service.force_stop): the grace did not
                # run out, and one cut is one line.
                if not self._force.is_set():
                    log.warning("service.grace_expired", grace_s=self.settings.shutdown_grace_s)
                loop_task.cancel()
        stop_wait.cancel()
        try:
            await loop_task
        except asyncio.CancelledError:
            log.warning("service.batch_cancelled")

    # -- the loop --------------------------------------------------------------------

    async def _main_loop(self, running: _Running) -> None:
        """Turn after turn until a stop is requested, then let the batches in flight end.
        Whatever way the loop ends, no batch outlives it.

        Batches of different partitions overlap, up to MAX_INFLIGHT_BATCHES. Completion
        out of order is safe: a partition's offset is committed only up to its lowest
        unfinished record (rule 8)."""
        try:
            while not self._stop.is_set():
                await self._round(running)
            async with self._lock:
                await running.batches.join()
        finally:
            await running.batches.terminate()

    async def _round(self, running: _Running) -> None:
        """One turn: fetch for the free partitions (or wait for a batch) until something
        happens, then settle what ended, start what came in, commit, pause."""
        s = self.settings
        batches = running.batches
        free = batches.free(self.tracker.owned)
        records: list[InboundRecord] = []
        if free and not batches.full:
            records = await running.fetcher.fetch(free)
        else:
            # Nothing to fetch (a standby with no partition, or every partition busy):
            # still poll, or aiokafka leaves the group after KAFKA_MAX_POLL_INTERVAL_S.
            await running.source.keep_in_group(s.poll_timeout_s)
            if batches:
                await batches.wait_any(timeout_s=s.poll_timeout_s)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), s.poll_timeout_s)
        async with self._lock:
            batches.poll()
            await running.flow.processor.housekeeping()
            batches.submit(records, self.tracker.owned)
            await self._commit()
        running.source.apply_pauses(self.tracker.pauses(), self.tracker.owned)
        self.metrics.outbox_unmarked.set(len(running.flow.marks or ()))
        running.lag.sample()
        self.health.came_round(since=batches.oldest_start)
        waited = self._assignment_wait.check(self.tracker.has_assignment)
        if waited is not None:
            log.info(
                "group.waiting_for_assignment",
                waited_s=round(waited),
                group=s.consumer_group,
                topic=s.inbound_topic,
                note="no partitions yet: the group is forming or rebalancing "
                "(docs/operations.md, 'A member waits for partitions')",
            )

    def _unpublishable(self, count: int) -> None:
        """The outbound topic refused `count` events even alone (they were
        dead-lettered): count them, and read its limit again, so that from now on a
        record with a larger event is dead-lettered whole before it is stored."""
        self.metrics.dead_lettered.labels(str(Reason.UNSTORABLE)).inc(count)
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.create_task(self._recheck_outbound(), name="outbound-limit")

    async def _recheck_outbound(self) -> None:
        limit = await recheck_outbound(self.settings)
        flow = self._running.flow if self._running else None
        if limit is not None and flow is not None and flow.limit_events is not None:
            flow.limit_events(limit)
            log.info("topics.outbound_limit_applied", max_event_bytes=limit.max_bytes)

    def _settled(self, report: BatchReport) -> None:
        """A batch ended: the bookkeeping takes its outcome."""
        self.tracker.settled(report, time.monotonic())
        self.totals.add(report)

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

    # -- the endpoint ----------------------------------------------------------------

    async def _start_http(self) -> None:
        s = self.settings
        if s.metrics_port == 0:
            return
        self._http = HttpServer(s.metrics_host, s.metrics_port, self.health.routes(self.metrics))
        await self._http.start()


@dataclass(frozen=True, slots=True)
class _Running:
    """What the poll loop works with, once the member has started."""

    source: Source
    flow: Flow
    batches: InFlight
    fetcher: Fetcher
    lag: LagSampler


async def _quietly(awaitable: object, what: str) -> None:
    try:
        await awaitable  # type: ignore[misc]
    except Exception as exc:  # noqa: BLE001 - shutdown must close every client regardless
        log.warning("service.close_failed", step=what, error=repr(exc))
