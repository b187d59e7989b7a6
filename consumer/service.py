"""The consumer-group member's lifecycle: startup -> poll loop -> shutdown.

The loop reads top to bottom: fetch a batch (plus records whose retry is due), run it
through the pipeline under the batch lock, settle offsets, commit. A rebalance waits for
the batch in flight (the same lock) and commits before giving partitions away. A stop
request (first SIGTERM/SIGINT) lets the current batch finish within SHUTDOWN_GRACE_S;
a second one, or the grace running out, cancels it (its leases are released).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from consumer import dedup, lenient
from consumer.crashpoints import CrashPoints
from consumer.errors import (
    BrokerError,
    DependencyError,
    LeaseStoreError,
    StoreError,
    WamidGuardError,
)
from consumer.http import HttpServer, Response
from consumer.metrics import Metrics
from consumer.offsets import OffsetLedger, Partition
from consumer.passthrough import PassThrough
from consumer.pipeline import BatchProcessor, BatchReport, Pipeline, publish_claim
from consumer.publish import MAX_REQUEST_BYTES, Publisher, producer_config
from consumer.records import InboundRecord
from consumer.relay import Relay
from consumer.settings import Settings, mask_url
from consumer.store import MarkQueue, Store, create_engine

log = structlog.get_logger(__name__)

_ENDS_EVERY_S = 5.0


@dataclass(order=True, slots=True)
class _Retry:
    due: float
    attempt: int = field(compare=False)
    record: InboundRecord = field(compare=False)


class RetryQueue:
    """Records to run again later, with exponential backoff per record."""

    def __init__(self, base_s: float, max_s: float) -> None:
        self._heap: list[_Retry] = []
        self._attempts: dict[tuple[str, int, int], int] = {}
        self._base_s = base_s
        self._max_s = max_s

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, record: InboundRecord, now: float) -> None:
        attempt = self._attempts.get(record.coordinates, 0) + 1
        self._attempts[record.coordinates] = attempt
        # Cap the exponent too: a long outage must not overflow the float.
        delay = min(self._base_s * 2 ** min(attempt - 1, 32), self._max_s)
        heapq.heappush(self._heap, _Retry(now + delay, attempt, record))

    def settled(self, record: InboundRecord) -> None:
        self._attempts.pop(record.coordinates, None)

    def pop_due(self, now: float, limit: int) -> list[InboundRecord]:
        out: list[InboundRecord] = []
        while self._heap and self._heap[0].due <= now and len(out) < limit:
            out.append(heapq.heappop(self._heap).record)
        return out

    def next_due_in(self, now: float) -> float | None:
        return max(0.0, self._heap[0].due - now) if self._heap else None

    def drop(self, partitions: set[Partition]) -> None:
        self._heap = [
            r for r in self._heap if (r.record.topic, r.record.partition) not in partitions
        ]
        heapq.heapify(self._heap)
        for coords in [c for c in self._attempts if (c[0], c[1]) in partitions]:
            del self._attempts[coords]


class Service:
    """One member of the consumer group."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.crash = CrashPoints(settings.crash_point)
        self.ledger = OffsetLedger()
        self.retries = RetryQueue(settings.retry_backoff_s, settings.retry_backoff_max_s)
        self.totals = BatchReport()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._batch_lock = asyncio.Lock()
        self._paused_for_backpressure: set[TopicPartition] = set()
        self._degraded = False
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._redis: Redis | None = None
        self._store: Store | None = None
        self._pipeline: BatchProcessor | None = None
        self._relay: Relay | None = None
        self._marks: MarkQueue | None = None
        self.metrics = Metrics()
        self._http: HttpServer | None = None
        self._last_loop = time.monotonic()
        self._assigned = False  # an assignment arrived (possibly empty) and stands
        # Log-end offsets of paused partitions (a paused partition is not fetched, so its
        # high watermark would stand still while its lag grows), refreshed in the background.
        self._ends: dict[TopicPartition, int] = {}
        self._ends_task: asyncio.Task[None] | None = None
        self._ends_at = 0.0

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
            side_tasks = []
            if self._relay is not None:
                side_tasks.append(
                    asyncio.create_task(self._relay.run(self._stop), name="outbox-relay")
                )
            await self._supervise(loop_task, side_tasks)
        finally:
            await self.shutdown()

    async def _supervise(
        self, loop_task: asyncio.Task[None], side_tasks: list[asyncio.Task[None]]
    ) -> None:
        """Run the loop; if a side task dies first, stop gracefully and then fail loudly."""
        stop_wait = asyncio.create_task(self._stop.wait())
        await asyncio.wait({loop_task, stop_wait, *side_tasks}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        died = next((t for t in side_tasks if t.done()), None)
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

    def request_stop(self, reason: str) -> None:
        """First call: graceful stop. Second call: cut the batch in flight short."""
        if self._stop.is_set():
            log.warning("service.force_stop", reason=reason)
            self._force.set()
        else:
            log.info("service.stopping", reason=reason, grace_s=self.settings.shutdown_grace_s)
            self._stop.set()

    async def startup(self) -> None:
        s = self.settings
        log.info("service.starting", worker_id=self.worker_id, **s.public())
        if s.mode == "pipeline":
            await self._start_backends()
        await self._start_kafka()
        assert self._producer is not None  # noqa: S101 - set just above
        publisher = Publisher(
            self._producer,
            dlq_topic=s.dlq_topic,
            max_request_bytes=MAX_REQUEST_BYTES,
            debug=s.debug,
        )
        self._pipeline = self._build_flow(publisher)
        log.info(
            "service.started",
            worker_id=self.worker_id,
            group=s.consumer_group,
            topic=s.inbound_topic,
            mode=s.mode,
        )

    async def _start_backends(self) -> None:
        s = self.settings
        self._redis = dedup.connect(s.redis_url, timeout_s=s.redis_timeout_s)
        await self._check_redis(self._redis)
        self._store = Store(
            create_engine(s.database_url, pool_size=s.db_pool_size, timeout_s=s.db_timeout_s)
        )
        await self._check_database(self._store)

    async def _start_kafka(self) -> None:
        s = self.settings
        lenient.install()  # a record aiokafka cannot decode must not stop a partition
        self._producer = AIOKafkaProducer(
            **producer_config(
                s.kafka_bootstrap_servers,
                client_id=f"{s.client_id}-{self.worker_id}",
                request_timeout_s=s.kafka_request_timeout_s,
                max_request_bytes=MAX_REQUEST_BYTES,
            )
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            client_id=f"{s.client_id}-{self.worker_id}",
            group_id=s.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.batch_max_records,
            session_timeout_ms=int(s.kafka_session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.kafka_heartbeat_interval_s * 1000),
            max_poll_interval_ms=int(s.kafka_max_poll_interval_s * 1000),
            request_timeout_ms=int(s.kafka_request_timeout_s * 1000),
            # A fetch returns after at most this long even with little data: bounds the
            # latency a quiet partition adds (the default 500 ms dominated p99 at low rates).
            fetch_max_wait_ms=int(s.kafka_fetch_max_wait_s * 1000),
        )
        try:
            await self._producer.start()
            await self._consumer.start()
        except KafkaError as exc:
            raise BrokerError(
                f"cannot reach Kafka at KAFKA_BOOTSTRAP_SERVERS={s.kafka_bootstrap_servers}: "
                f"{exc!r}"
            ) from exc
        self._consumer.subscribe([s.inbound_topic], listener=_Rebalance(self))

    def _build_flow(self, publisher: Publisher) -> BatchProcessor:
        """The batch processor, and the relay beside it (none in pass-through)."""
        s = self.settings
        if s.mode == "passthrough":
            return PassThrough(s, publisher)
        assert self._redis is not None  # noqa: S101 - set in _start_backends
        assert self._store is not None  # noqa: S101 - set in _start_backends
        leases = dedup.Leases(
            self._redis,
            prefix=s.redis_key_prefix,
            lease_ttl_s=s.lease_ttl_s,
            done_ttl_s=s.done_ttl_s,
        )
        marks = self._marks = MarkQueue(self._store)
        self._relay = Relay(
            self._store,
            publisher,
            worker_id=self.worker_id,
            interval_s=s.relay_interval_s,
            claim_for=publish_claim(s),
            metrics=self.metrics,
            marks=marks,
        )
        return Pipeline(
            s,
            leases,
            self._store,
            publisher,
            worker_id=self.worker_id,
            crash=self.crash,
            metrics=self.metrics,
            marks=marks,
        )

    async def shutdown(self) -> None:
        """Commit what is durable, leave the group, flush and close every client."""
        if self._consumer is not None:
            async with self._batch_lock:
                await self._commit()
            await _quietly(self._consumer.stop(), "consumer.stop")
        if self._producer is not None:
            await _quietly(self._producer.stop(), "producer.stop")
        if self._redis is not None:
            await _quietly(self._redis.aclose(), "redis.close")
        if self._store is not None:
            await _quietly(self._store.close(), "store.close")
        if self._ends_task is not None:
            self._ends_task.cancel()
        if self._http is not None:
            await _quietly(self._http.stop(), "http.stop")
        republished = self._relay.republished if self._relay else 0
        log.info(
            "service.stopped",
            worker_id=self.worker_id,
            relay_republished=republished,
            **self.totals.counts(),
        )

    async def _wait_loop(self, loop_task: asyncio.Task[None]) -> None:
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
        while not self._stop.is_set():
            records = await self._fetch()
            async with self._batch_lock:
                assert self._pipeline is not None  # noqa: S101 - set in startup
                await self._pipeline.housekeeping()
                records = self._owned(records)
                if records:
                    report = await self._pipeline.process(records)
                    self._settle(report)
                await self._commit()
            self._apply_backpressure()
            self._sample()

    async def _fetch(self) -> list[InboundRecord]:
        assert self._consumer is not None  # noqa: S101 - set in startup
        now = time.monotonic()
        due = self.retries.pop_due(now, self.settings.batch_max_records)
        room = self.settings.batch_max_records - len(due)
        next_retry = self.retries.next_due_in(now)
        timeout_s = (
            self.settings.poll_timeout_s
            if next_retry is None
            else min(self.settings.poll_timeout_s, next_retry)
        )
        if due or room <= 0:
            timeout_s = 0
        try:
            fetched = await self._consumer.getmany(
                timeout_ms=int(timeout_s * 1000), max_records=max(room, 1) if room > 0 else 1
            )
        except Exception as exc:  # noqa: BLE001 - a fetch that fails must not end the member
            await self._fetch_failed(exc)
            return due
        new = [_inbound(m) for batch in fetched.values() for m in batch]
        self.metrics.records_consumed.inc(len(new))
        for r in new:
            self.ledger.track((r.topic, r.partition), r.offset)
        return due + new

    async def _fetch_failed(self, exc: Exception) -> None:
        """A fetch raised (the broker answered an error, or a record could not be read):
        log it, put every partition back where our bookkeeping says it is, and wait a
        little before the next try. aiokafka, when unpacking a fetch fails half-way,
        moves on past the records it had read but not returned; the seek makes it read
        them again instead of losing them."""
        assert self._consumer is not None  # noqa: S101 - set in startup
        if isinstance(exc, KafkaError):
            self.metrics.dependency_errors.labels("kafka", type(exc).__name__).inc()
            log.warning("fetch.failed", error=repr(exc))
        else:
            log.error("fetch.internal_error", error=type(exc).__name__, exc_info=exc)
        for tp in self._consumer.assignment():
            position = self.ledger.next_offset((tp.topic, tp.partition))
            try:
                if position is None:
                    position = await asyncio.wait_for(
                        self._consumer.position(tp), self.settings.kafka_request_timeout_s
                    )
                self._consumer.seek(tp, position)
            except (KafkaError, TimeoutError) as seek_exc:
                log.warning("fetch.rewind_failed", partition=tp.partition, error=repr(seek_exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self.settings.retry_backoff_max_s)

    def _owned(self, records: list[InboundRecord]) -> list[InboundRecord]:
        """Drop records of partitions revoked while we were fetching."""
        assert self._consumer is not None  # noqa: S101 - set in startup
        owned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        return [r for r in records if (r.topic, r.partition) in owned]

    def _settle(self, report: BatchReport) -> None:
        now = time.monotonic()
        for r in report.durable:
            self.ledger.done((r.topic, r.partition), r.offset)
            self.retries.settled(r)
        for r in report.retry:
            self.retries.add(r, now)
        self._degraded = report.failure is not None
        self.totals.add(report)

    async def _commit(self, partitions: Iterable[Partition] | None = None) -> None:
        """Commit `lowest not-yet-durable offset` of each owned partition that moved."""
        assert self._consumer is not None  # noqa: S101 - set in startup
        owned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        chosen = owned if partitions is None else owned & set(partitions)
        offsets = self.ledger.to_commit(chosen)
        if not offsets:
            return
        try:
            await self._consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})
        except CommitFailedError as exc:
            self.metrics.offset_commits.labels("rejected").inc()
            log.warning("offsets.commit_rejected", error=str(exc), partitions=len(offsets))
            return
        except KafkaError as exc:
            self.metrics.offset_commits.labels("failed").inc()
            self.metrics.dependency_errors.labels("kafka", type(exc).__name__).inc()
            log.warning("offsets.commit_failed", error=repr(exc), partitions=len(offsets))
            return
        self.metrics.offset_commits.labels("ok").inc()
        self.ledger.committed(offsets)
        log.debug("offsets.committed", offsets={f"{t}:{p}": o for (t, p), o in offsets.items()})
        self.crash.hit("after_offset_commit")

    def _apply_backpressure(self) -> None:
        """Pause partitions with too much unfinished work, or all while a dependency fails."""
        assert self._consumer is not None  # noqa: S101 - set in startup
        limit = self.settings.max_pending_records
        for tp in self._consumer.assignment():
            pending = self.ledger.pending_count((tp.topic, tp.partition))
            should_pause = self._degraded or pending >= limit
            if should_pause and tp not in self._paused_for_backpressure:
                self._consumer.pause(tp)
                self._paused_for_backpressure.add(tp)
                log.info(
                    "partition.paused",
                    topic=tp.topic,
                    partition=tp.partition,
                    pending=pending,
                    degraded=self._degraded,
                )
            elif not should_pause and tp in self._paused_for_backpressure and pending < limit // 2:
                self._consumer.resume(tp)
                self._paused_for_backpressure.discard(tp)
                log.info("partition.resumed", topic=tp.topic, partition=tp.partition)

    def _sample(self) -> None:
        """Liveness, and the gauges only the loop can see (assignment, pauses, lag)."""
        assert self._consumer is not None  # noqa: S101 - set in startup
        self._last_loop = time.monotonic()
        m = self.metrics
        m.last_poll.set(time.time())
        assignment = self._consumer.assignment()
        m.assigned_partitions.set(len(assignment))
        m.paused_partitions.set(len(self._paused_for_backpressure))
        m.outbox_unmarked.set(len(self._marks) if self._marks is not None else 0)
        lags = []
        for tp in assignment:
            fetched = self._consumer.highwater(tp)
            high = max(fetched or 0, self._ends.get(tp, 0))
            durable = self.ledger.committable((tp.topic, tp.partition))
            if fetched is not None or tp in self._ends:
                lags.append(
                    (tp.topic, tp.partition, max(0, high - (high if durable is None else durable)))
                )
        m.set_lag(lags)
        self._refresh_paused_ends()

    def _refresh_paused_ends(self) -> None:
        """Ask the broker, now and then, how far the paused partitions have grown."""
        now = time.monotonic()
        paused = set(self._paused_for_backpressure)
        self._ends = {tp: o for tp, o in self._ends.items() if tp in paused}
        if not paused or now - self._ends_at < _ENDS_EVERY_S:
            return
        if self._ends_task is not None and not self._ends_task.done():
            return
        self._ends_at = now
        self._ends_task = asyncio.create_task(self._fetch_ends(paused), name="lag-ends")

    async def _fetch_ends(self, partitions: set[TopicPartition]) -> None:
        assert self._consumer is not None  # noqa: S101 - set in startup
        try:
            ends = await asyncio.wait_for(
                self._consumer.end_offsets(list(partitions)), self.settings.kafka_request_timeout_s
            )
        except (KafkaError, TimeoutError) as exc:  # the broker may be the reason we paused
            log.debug("lag.end_offsets_failed", error=repr(exc))
            return
        self._ends.update(
            {tp: int(o) for tp, o in ends.items() if tp in self._paused_for_backpressure}
        )

    # -- health ----------------------------------------------------------------------

    async def _start_http(self) -> None:
        s = self.settings
        if s.metrics_port == 0:
            return
        self._http = HttpServer(
            s.metrics_host,
            s.metrics_port,
            {"/metrics": self._metrics_page, "/healthz": self._healthz, "/readyz": self._readyz},
        )
        await self._http.start()

    async def _metrics_page(self) -> Response:
        return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render()

    def liveness(self) -> dict[str, object]:
        """Alive while the poll loop keeps coming round (startup counts as coming round)."""
        since = time.monotonic() - self._last_loop
        return {
            "ok": since < self.settings.liveness_timeout_s,
            "seconds_since_poll": round(since, 3),
            "liveness_timeout_s": self.settings.liveness_timeout_s,
        }

    async def _healthz(self) -> Response:
        return _json_response(self.liveness())

    async def readiness(self) -> dict[str, object]:
        """Ready when the member holds its assignment (possibly empty: more members than
        partitions), knows its group coordinator, and Redis and the database answer."""
        checks: dict[str, dict[str, object]] = {"kafka": self._kafka_check()}
        timeout_s = min(2.0, self.settings.liveness_timeout_s)
        if self._redis is not None:
            checks["redis"] = await _probe(dedup.ping(self._redis), timeout_s)
        if self._store is not None:
            checks["database"] = await _probe(self._store.ping(), timeout_s)
        ok = all(c["ok"] for c in checks.values()) and not self._stop.is_set()
        return {"ok": ok, "stopping": self._stop.is_set(), "checks": checks}

    def _kafka_check(self) -> dict[str, object]:
        consumer = self._consumer
        if consumer is None:
            return {"ok": False, "error": "not started"}
        # aiokafka has no public "connected" flag: its group coordinator forgets the
        # coordinator node when heartbeats or commits cannot reach it.
        coordinator = getattr(getattr(consumer, "_coordinator", None), "coordinator_id", None)
        assigned = len(consumer.assignment())
        out: dict[str, object] = {
            "ok": self._assigned and coordinator is not None,
            "assigned_partitions": assigned,
            "coordinator": coordinator,
        }
        if not self._assigned:
            out["error"] = "no partition assignment yet (joining the group)"
        elif coordinator is None:
            out["error"] = "group coordinator unreachable"
        return out

    async def _readyz(self) -> Response:
        return _json_response(await self.readiness())

    # -- rebalance -------------------------------------------------------------------

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        parts = {(tp.topic, tp.partition) for tp in revoked}
        async with self._batch_lock:  # the batch in flight finishes first
            await self._commit(parts)
            self.retries.drop(parts)
            self.ledger.forget(parts)
            self._paused_for_backpressure -= set(revoked)
            self._assigned = False
        log.info("partitions.revoked", partitions=sorted(f"{t}:{p}" for t, p in parts))

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self._batch_lock:  # no batch may commit before the positions are set
            await self._start_uncommitted_at_zero(assigned)
        self._assigned = True
        log.info(
            "partitions.assigned",
            partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
        )

    async def _start_uncommitted_at_zero(self, assigned: set[TopicPartition]) -> None:
        """Position each assigned partition the group committed nothing for at offset 0.

        That is what the reset policy (auto_offset_reset="earliest", see _start_kafka)
        means, but aiokafka applies it by asking the broker where the log starts, and the
        embedded broker can name an offset past records it holds (docs/reliability.md).
        Where offset 0 is below the log start (Apache Kafka after retention), the broker
        answers OffsetOutOfRange and the reset policy applies. If the committed offsets
        cannot be read, the reset policy decides alone (with a warning).
        """
        consumer = self._consumer
        if consumer is None or not assigned:
            return
        try:
            committed = await self._committed(assigned)
        except BrokerError as exc:
            log.warning(
                "partitions.committed_unknown",
                error=str(exc),
                fallback="auto_offset_reset=earliest",
                partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
            )
            return
        fresh = []
        for tp in sorted(tp for tp, offset in committed.items() if offset is None):
            try:
                consumer.seek(tp, 0)
            except KafkaError as exc:  # IllegalStateError: no longer ours (rebalancing)
                log.warning(
                    "partition.seek_failed", partition=f"{tp.topic}:{tp.partition}", error=repr(exc)
                )
                continue
            fresh.append(tp)
        if not fresh:
            return
        # Records fetched from where the broker's "earliest" pointed, before the seek, are
        # fetched again from 0: their offsets must not count towards a commit.
        self.ledger.forget({(tp.topic, tp.partition) for tp in fresh})
        log.info(
            "partitions.start_at_zero",
            partitions=[f"{tp.topic}:{tp.partition}" for tp in fresh],
        )

    async def _committed(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offset of each partition (None: nothing committed)."""
        assert self._consumer is not None  # noqa: S101 - set in startup
        consumer = self._consumer

        async def one(tp: TopicPartition) -> tuple[TopicPartition, int | None]:
            offset = await consumer.committed(tp)
            return tp, None if offset is None else int(offset)

        try:
            # aiokafka retries a retriable failure without end: bound it.
            found = await asyncio.wait_for(
                asyncio.gather(*(one(tp) for tp in partitions)),
                self.settings.kafka_request_timeout_s,
            )
        except TimeoutError as exc:
            raise BrokerError(
                f"reading committed offsets took over {self.settings.kafka_request_timeout_s:g}s"
            ) from exc
        except KafkaError as exc:
            raise BrokerError(f"reading committed offsets failed: {exc!r}") from exc
        return dict(found)

    # -- startup checks --------------------------------------------------------------

    async def _check_redis(self, client: Redis) -> None:
        try:
            await dedup.ping(client)
        except LeaseStoreError as exc:
            cause = exc.__cause__
            raise LeaseStoreError(
                f"cannot reach Redis at REDIS_URL={mask_url(self.settings.redis_url)}: {cause}"
            ) from cause

    async def _check_database(self, store: Store) -> None:
        url = mask_url(self.settings.database_url)
        try:
            async with store.engine.connect() as conn:
                await conn.execute(text("SELECT 1 FROM messages WHERE 1 = 0"))
                await conn.execute(text("SELECT 1 FROM outbox WHERE 1 = 0"))
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(
                f"database at DATABASE_URL={url} is unreachable or not migrated "
                f"(run `python -m consumer migrate`): {exc}"
            ) from exc


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc] # aiokafka is untyped
    def __init__(self, service: Service) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._service.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._service.on_assigned(assigned)


def _inbound(m: object) -> InboundRecord:
    return InboundRecord(
        topic=m.topic,  # type: ignore[attr-defined]
        partition=m.partition,  # type: ignore[attr-defined]
        offset=m.offset,  # type: ignore[attr-defined]
        key=m.key,  # type: ignore[attr-defined]
        value=m.value,  # type: ignore[attr-defined]
        headers=tuple(m.headers or ()),  # type: ignore[attr-defined]
        timestamp_ms=m.timestamp,  # type: ignore[attr-defined]
    )


def _json_response(state: dict[str, object]) -> Response:
    body = (json.dumps(state, default=str) + "\n").encode()
    return (200 if state["ok"] else 503), "application/json", body


async def _probe(check: Awaitable[object], timeout_s: float) -> dict[str, object]:
    """Run one dependency check for readiness: ok, or why not (never raises)."""
    try:
        await asyncio.wait_for(check, timeout_s)
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {timeout_s:g}s"}
    except DependencyError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True}


async def _quietly(awaitable: object, what: str) -> None:
    try:
        await awaitable  # type: ignore[misc]
    except Exception as exc:  # noqa: BLE001 - shutdown must close every client regardless
        log.warning("service.close_failed", step=what, error=repr(exc))
