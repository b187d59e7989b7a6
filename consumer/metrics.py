"""Prometheus metrics: what happened to the records, and how healthy the member is.

One :class:`Metrics` per service, on its own registry (tests and the bench run several
in one process). The pipeline and the relay report into it; the service samples the
gauges (assignment, lag, outbox) and serves it on ``/metrics`` (see :mod:`consumer.http`).
Every name starts with ``wamid_guard_``; docs/operations.md explains each one.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import (
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from consumer.errors import BrokerError, DependencyError, LeaseStoreError, StoreError
from consumer.intake import OTHER_FIELD, WEBHOOK_FIELDS
from consumer.records import STATUS_WORDS, Message, Reason

# A batch takes milliseconds when healthy and up to the dependency timeouts when not.
_BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Inbound-to-publish latency: tens of ms when caught up; minutes to hours under a backlog
# or after an outage (Meta's clock adds its own delivery delay and 1-second resolution).
_LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
    6 * 3600,
    24 * 3600,
)

_DEPENDENCY = {LeaseStoreError: "redis", StoreError: "database", BrokerError: "kafka"}


def dependency_of(exc: DependencyError) -> str:
    for kind, name in _DEPENDENCY.items():
        if isinstance(exc, kind):
            return name
    return "other"


class Metrics:
    """Every metric of one consumer-group member."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_* (CPU, memory, open files, start time) and python_info, as usual.
        ProcessCollector(registry=r)
        r.register(PLATFORM_COLLECTOR)
        self.records_consumed = Counter(
            "wamid_guard_records_consumed",
            "Inbound records fetched from Kafka (first delivery to this member; retries "
            "are counted in wamid_guard_records_retried_total).",
            registry=r,
        )
        self.messages_stored = Counter(
            "wamid_guard_messages_stored",
            "Messages inserted into the messages table (one per (phone_number_id, wamid)).",
            registry=r,
        )
        self.duplicates = Counter(
            "wamid_guard_duplicates",
            "Duplicate message copies, by the layer that caught them: in_batch (same key "
            "twice in one batch), lease_held (another worker holds the key: deferred), "
            "done_marker (a Redis marker the database confirmed), database (the unique "
            "constraint).",
            ["layer"],
            registry=r,
        )
        self.redis_overruled = Counter(
            "wamid_guard_redis_overruled",
            "Message keys Redis could not vouch for, sent through the database's fence "
            "without a lease: done_unconfirmed (a done marker whose message the database "
            "does not hold announced: a Redis that outlived its database, or another "
            "deployment under the same REDIS_KEY_PREFIX), foreign (a key under the prefix "
            "that is neither a lease nor a marker: no TTL, a TTL longer than LEASE_TTL_S, "
            "or not a string).",
            ["kind"],
            registry=r,
        )
        self.records_retried = Counter(
            "wamid_guard_records_retried",
            "Records sent back to this member's retry queue: deferred (a key held "
            "elsewhere) or failure (a dependency failed).",
            ["reason"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "wamid_guard_dead_lettered",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.dead_letters_repeated = Counter(
            "wamid_guard_dead_letters_repeated",
            "Bad records met again (redelivered after a rebalance) whose dead letter had "
            "been sent already: not sent twice.",
            registry=r,
        )
        self.events_published = Counter(
            "wamid_guard_events_published",
            "message_created events acknowledged by the broker, by path: pipeline (right "
            "after the commit) or relay (an outbox row whose publish never happened).",
            ["path"],
            registry=r,
        )
        self.producer_renewals = Counter(
            "wamid_guard_producer_renewals",
            "Idempotent events producers replaced after a batch the broker refused for "
            "good (its sequence would refuse every later batch to that partition).",
            registry=r,
        )
        self.statuses = Counter(
            "wamid_guard_statuses",
            "Status updates of sent messages, by status word (sent, delivered, read, played, "
            "failed, or other) and outcome: announced (moved its message's state forward, "
            "or a word Meta may add), stale (at or below the state: stored, no event), "
            "duplicate (seen before), ignored (STATUS_EVENTS=off).",
            ["status", "outcome"],
            registry=r,
        )
        self.changes_ignored = Counter(
            "wamid_guard_changes_ignored",
            "Changes of usable webhooks that create no message, carry no status and no "
            "error, by field: one of Meta's webhook field names (account_update, history, "
            "...), messages for a messages change holding none of them, or other (a field "
            "Meta does not document, null, or a name spelt otherwise, such as Messages). A "
            "change that is not field messages but holds messages is dead-lettered instead.",
            ["field"],
            registry=r,
        )
        self.leases_lost = Counter(
            "wamid_guard_leases_lost",
            "Leases that ran out while their batch was still working (LEASE_TTL_S too "
            "short); the database fence kept one row, an event may be announced twice.",
            registry=r,
        )
        self.batches = Counter(
            "wamid_guard_batches",
            "Batches processed, by outcome (ok, or failed: a dependency failed and the "
            "batch's unfinished records will be retried).",
            ["outcome"],
            registry=r,
        )
        self.dependency_errors = Counter(
            "wamid_guard_dependency_errors",
            "Errors talking to a dependency (redis, database, kafka), by the kind of the "
            "underlying exception.",
            ["dependency", "kind"],
            registry=r,
        )
        self.offset_commits = Counter(
            "wamid_guard_offset_commits",
            "Offset commits, by outcome: ok, rejected (a rebalance took the partitions), "
            "failed (the broker did not answer).",
            ["outcome"],
            registry=r,
        )
        self.batch_duration = Histogram(
            "wamid_guard_batch_duration_seconds",
            "Time to run one batch through the pipeline (decode, lease, store, publish).",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.event_latency = BatchHistogram(
            "wamid_guard_event_latency_seconds",
            "End-to-end latency of a message_created event, from the inbound record's "
            "Kafka timestamp (since=inbound_record) or Meta's message timestamp "
            "(since=meta_timestamp, 1-second resolution) to the broker's ack of the event.",
            "since",
            buckets=_LATENCY_BUCKETS,
        )
        r.register(self.event_latency)
        self.outbox_backlog = Gauge(
            "wamid_guard_outbox_backlog",
            "Events not yet published (stored messages whose event is not out yet), counted "
            "over the outbox rows that hold them.",
            registry=r,
        )
        self.outbox_oldest_age = Gauge(
            "wamid_guard_outbox_oldest_age_seconds",
            "Age of the oldest unpublished outbox row (0 when the outbox is empty).",
            registry=r,
        )
        self.outbox_unmarked = Gauge(
            "wamid_guard_outbox_unmarked",
            "Outbox rows whose events this member published but which it could not delete "
            "yet (the database failed right after the publish); retried every loop.",
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "wamid_guard_assigned_partitions",
            "Inbound partitions assigned to this member.",
            registry=r,
        )
        self.paused_partitions = Gauge(
            "wamid_guard_paused_partitions",
            "Assigned partitions paused for backpressure or a failing dependency.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "wamid_guard_consumer_lag",
            "Records of an assigned partition not yet durable: the partition's high "
            "watermark minus the offset this member would commit.",
            ["topic", "partition"],
            registry=r,
        )
        self.pending_records = Gauge(
            "wamid_guard_pending_records",
            "Records of an assigned partition fetched and not yet durable (stored, found "
            "done, or dead-lettered); a partition is paused at MAX_PENDING_RECORDS.",
            ["topic", "partition"],
            registry=r,
        )
        self.pending_bytes = Gauge(
            "wamid_guard_pending_bytes",
            "Bytes (keys, values, headers) of an assigned partition's records fetched and "
            "not yet durable; a partition is paused at its share of MAX_PENDING_BYTES.",
            ["topic", "partition"],
            registry=r,
        )
        self.last_poll = Gauge(
            "wamid_guard_last_poll_timestamp_seconds",
            "Unix time the poll loop last came round (liveness).",
            registry=r,
        )
        self._per_partition: dict[Gauge, set[tuple[str, str]]] = {}
        self._precreate()

    def _precreate(self) -> None:
        """Create the labelled series up front, so a dashboard shows 0 rather than
        nothing."""
        series: list[tuple[Counter, Iterable[tuple[str, ...]]]] = [
            (self.duplicates, _each("in_batch", "lease_held", "done_marker", "database")),
            (self.events_published, _each("pipeline", "relay")),
            (self.records_retried, _each("deferred", "failure")),
            (self.redis_overruled, _each("done_unconfirmed", "foreign")),
            (self.batches, _each("ok", "failed")),
            (self.offset_commits, _each("ok", "rejected", "failed")),
            (self.dead_lettered, _each(*map(str, Reason))),
            (self.changes_ignored, _each(*sorted(WEBHOOK_FIELDS), OTHER_FIELD)),
            (
                self.statuses,
                itertools.product(
                    (*sorted(STATUS_WORDS), "other"), ("announced", "stale", "duplicate", "ignored")
                ),
            ),
        ]
        for counter, labels in series:
            for values in labels:
                counter.labels(*values)

    def render(self) -> bytes:
        """The text exposition format, for /metrics."""
        return generate_latest(self.registry)

    def dependency_error(self, exc: DependencyError) -> None:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        self.dependency_errors.labels(dependency_of(exc), type(cause).__name__).inc()

    def published(self, messages: Sequence[Message], now_s: float | None = None) -> None:
        """Latencies of events the broker just acknowledged, one pair per message."""
        now = time.time() if now_s is None else now_s
        self.event_latency.observe_many(
            "inbound_record", [max(0.0, now - m.source.timestamp_ms / 1000) for m in messages]
        )
        self.event_latency.observe_many("meta_timestamp", _meta_latencies(messages, now))

    def set_lag(self, lags: Iterable[tuple[str, int, int]]) -> None:
        """Replace the lag series with the current assignment's."""
        self._set_per_partition(self.consumer_lag, lags)

    def set_pending(
        self,
        pending: Iterable[tuple[str, int, int]],
        pending_bytes: Iterable[tuple[str, int, int]] = (),
    ) -> None:
        """Replace the pending-records and pending-bytes series with the current
        assignment's."""
        self._set_per_partition(self.pending_records, pending)
        self._set_per_partition(self.pending_bytes, pending_bytes)

    def _set_per_partition(self, gauge: Gauge, values: Iterable[tuple[str, int, int]]) -> None:
        """One series per partition held now; those of partitions gone are removed."""
        seen = set()
        for topic, partition, value in values:
            labels = (topic, str(partition))
            seen.add(labels)
            gauge.labels(*labels).set(value)
        for labels in self._per_partition.get(gauge, set()) - seen:
            gauge.remove(*labels)
        self._per_partition[gauge] = seen


def _each(*values: str) -> list[tuple[str]]:
    return [(v,) for v in values]


def _meta_latencies(messages: Sequence[Message], now: float) -> list[float]:
    out = []
    for m in messages:
        try:
            out.append(max(0.0, now - int(m.timestamp)))
        except ValueError:
            continue  # intake keeps Meta's string; a non-integer one is not a clock
    return out


class BatchHistogram(Collector):
    """A histogram with one label that takes a batch of observations in one call.

    prometheus_client's Histogram takes a lock and walks its buckets in Python for every
    observation, a cost paid twice per message (docs/benchmarks.md). This one finds each
    bucket by bisection and is exposed exactly as a Histogram with the same
    name, label and buckets is (``_bucket`` per ``le``, cumulative, ``_count``, ``_sum``).
    Not thread-safe: the event loop's thread observes and collects.
    """

    def __init__(
        self, name: str, documentation: str, label: str, *, buckets: Sequence[float]
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._label = label
        self._bounds = [float(b) for b in buckets]
        # As prometheus_client writes a bound ("0.01", "1.0", "86400.0"); it is untyped.
        les = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._les: list[str] = [*les, "+Inf"]
        # Per label value: observations per bucket (the last: above every bound), sum.
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe_many(self, value: str, amounts: Iterable[float]) -> None:
        counts = self._counts.get(value)
        if counts is None:
            counts = self._counts[value] = [0] * (len(self._bounds) + 1)
            self._sums[value] = 0.0
        where = bisect.bisect_left
        bounds = self._bounds
        total = self._sums[value]  # summed one by one, as a Histogram sums them
        for amount in amounts:
            counts[where(bounds, amount)] += 1  # the first bound >= amount: le semantics
            total += amount
        self._sums[value] = total

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=[self._label])
        for value, counts in self._counts.items():
            cumulative, running = [], 0
            for le, count in zip(self._les, counts, strict=True):
                running += count
                cumulative.append((le, float(running)))
            family.add_metric([value], cumulative, self._sums[value])
        yield family
