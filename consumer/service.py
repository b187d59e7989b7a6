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
from collections.abc import Iterable

import structlog
from aiokafka import AIOKafkaProducer

from consumer import dedup
from consumer.crashpoints import CrashPoints
from consumer.errors import BrokerError, WamidGuardError
from consumer.health import Health
from consumer.http import HttpServer
from consumer.lag import LagSampler
from consumer.metrics import Metrics
from consumer.offsets import Partition
from consumer.pipeline import BatchReport
from consumer.publish import MAX_REQUEST_BYTES, Publisher
from consumer.records import InboundRecord
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
    start_producer,
)

log = structlog.get_logger(__name__)


class Service:
    """One member of the consumer group."""

    def __init__(self, settings: Settings, *, flow_factory: FlowFactory = PIPELINE) -> None:
        """`flow_factory`: what the member runs each batch through (default: the
        pipeline, over Redis and the database)."""
        self.settings = settings
        self.flow_factory = flow_factory
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.crash = CrashPoints(settings.crash_point)
        self.metrics = Metrics()
        self.tracker = Tracker(
            max_pending=settings.max_pending_records,
            retry_backoff_s=settings.retry_backoff_s,
            retry_backoff_max_s=settings.retry_backoff_max_s,
        )
        self.totals = BatchReport()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._batch_lock = asyncio.Lock()
        self.health = Health(settings, self.tracker, self._stop)
        self._started = False
        self._http: HttpServer | None = None
        self._backends: Backends | None = None
        self._producer: AIOKafkaProducer | None = None
        self._source: Source | None = None
        self._flow: Flow | None = None
        self._lag: LagSampler | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        """Start, consume until asked to stop, shut down.

        Raises on a startup failure, and when a supervised side task (the outbox relay)
        died: the service must not go on without it.
        """
        try:
            await self._start_http()
            await self.startup()
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
        self._producer = await start_producer(s, client_id=client_id)
        publisher = Publisher(
            self._producer,
            dlq_topic=s.dlq_topic,
            max_request_bytes=MAX_REQUEST_BYTES,
            debug=s.debug,
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
            async with self._batch_lock:
                await self._commit()
            await _quietly(self._source.stop(), "consumer.stop")
        if self._producer is not None:
            await _quietly(self._producer.stop(), "producer.stop")
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
        assert self._source is not None  # noqa: S101 - set in startup
        assert self._flow is not None  # noqa: S101 - set in startup
        assert self._lag is not None  # noqa: S101 - set in startup
        processor = self._flow.processor
        while not self._stop.is_set():
            records = await self._fetch()
            async with self._batch_lock:
                await processor.housekeeping()
                owned = self.tracker.owned  # a rebalance may have come while we fetched
                records = [r for r in records if (r.topic, r.partition) in owned]
                if records:
                    report = await processor.process(records)
                    self.tracker.settled(report, time.monotonic())
                    self.totals.add(report)
                await self._commit()
            self._source.apply_pauses(self.tracker.pauses(), self.tracker.owned)
            self.metrics.outbox_unmarked.set(len(self._flow.marks or ()))
            self._lag.sample()
            self.health.came_round()

    async def _fetch(self) -> list[InboundRecord]:
        """Retries that are due first, then new records to fill the batch."""
        assert self._source is not None  # noqa: S101 - set in startup
        now = time.monotonic()
        size = self.settings.batch_max_records
        due = self.tracker.due(now, size)
        next_retry = self.tracker.next_due_in(now)
        timeout_s = self.settings.poll_timeout_s
        if next_retry is not None:
            timeout_s = min(timeout_s, next_retry)
        if due:
            timeout_s = 0
        try:
            new = await self._source.fetch(timeout_s=timeout_s, max_records=size - len(due))
        except BrokerError as exc:
            await self._fetch_failed(exc)
            return due
        new = self.tracker.fetched(new)
        self.metrics.records_consumed.inc(len(new))
        return due + new

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
        async with self._batch_lock:  # the batch in flight finishes first
            await self._commit(revoked)
            self.tracker.revoked(revoked)
        log.info("partitions.revoked", partitions=sorted(f"{t}:{p}" for t, p in revoked))

    async def on_assigned(self, assigned: set[Partition]) -> None:
        assert self._source is not None  # noqa: S101 - set in startup
        async with self._batch_lock:  # no batch may commit before the positions are set
            fresh = await self._source.start_uncommitted_at_zero(assigned)
            self.tracker.assigned(assigned, fresh=fresh)
        log.info("partitions.assigned", partitions=sorted(f"{t}:{p}" for t, p in assigned))

    # -- the endpoint ----------------------------------------------------------------

    async def _start_http(self) -> None:
        s = self.settings
        if s.metrics_port == 0:
            return
        self._http = HttpServer(s.metrics_host, s.metrics_port, self.health.routes(self.metrics))
        await self._http.start()


async def _quietly(awaitable: object, what: str) -> None:
    try:
        await awaitable  # type: ignore[misc]
    except Exception as exc:  # noqa: BLE001 - shutdown must close every client regardless
        log.warning("service.close_failed", step=what, error=repr(exc))
