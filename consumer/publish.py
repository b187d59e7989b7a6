"""Kafka producing: ``message_created`` events and dead letters.

Every send of a batch is started at once and then awaited together, so a batch costs
one round of broker acks. Any failure raises :class:`BrokerError`: the caller keeps the
records unacknowledged (their offsets are not committed) and retries.

Dead letters are built by :mod:`consumer.deadletters` to fit one produce request. If the
producer (``max_request_size``) or the broker (``message.max.bytes``, a topic's
``max.message.bytes``) still refuses one as too large, it is sent again in its minimal
form (our headers only, saying what was left out), so a bad record always lands in the
DLQ instead of being retried for ever. The broker refuses whole batches, but a record
larger than aiokafka's batch size (16 KiB) is alone in its batch: small dead letters
sharing a refused batch go minimal only if the limit is below that size.

An event the outbound topic refuses as too large (its ``max.message.bytes`` lowered
after the member started, below an event already stored) is sent once more alone, in a
batch of its own; refused again, it is dead-lettered as ``unstorable`` (the letter holds
the event, with ``dlq.event_topic``) and its publish counts as done, so the outbox row
is not retried for ever. Events that only shared a refused batch are announced by that
second send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    IncompatibleBrokerVersion,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol.transaction import InitProducerIdRequest

from consumer import deadletters
from consumer.errors import BrokerError, ConfigError, PartlyPublishedError, PublishPendingError
from consumer.events import OutboundEvent
from consumer.limits import MAX_REQUEST_BYTES
from consumer.records import InboundRecord, Invalid, Reason

__all__ = [
    "MAX_REQUEST_BYTES",
    "Idempotence",
    "Publisher",
    "decide_idempotence",
    "probe_producer_id",
    "producer_config",
]

log = structlog.get_logger(__name__)

# "Too large", from the producer's own check in send() (MessageSizeTooLargeError) or from
# the broker (MESSAGE_TOO_LARGE, or RECORD_LIST_TOO_LARGE for a batch above the segment
# size). RecordTooLargeError is the consumer's (a fetch), not a produce error.
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)

# How long the sends of a publish that gave up waiting are kept for its retry: well past
# the pipeline's retry (RETRY_BACKOFF_MAX_S) and the relay's claim (LEASE_TTL_S +
# KAFKA_REQUEST_TIMEOUT_S) at their defaults.
KEEP_GIVEN_UP_S = 600.0

_Send = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes | None]]]


class Publisher:
    """The member's producing: events (pipeline and outbox relay) and dead letters.

    With an idempotent producer (``KAFKA_IDEMPOTENCE``), dead letters go through a second,
    plain producer (``dead_letters``): aiokafka does not reset an idempotent producer's
    sequence after a batch the broker refuses for good (a dead letter above the topic's
    ``max.message.bytes`` is one), and every later batch to that partition would fail
    with OutOfOrderSequenceNumber. For the same reason a failed event batch *renews* the
    events producer (``renew`` makes a new one, with a new producer id; the old one is
    stopped in the background), so the member recovers without a restart.

    An idempotent batch is retried until the broker takes it, never expired; so a publish
    waits at most ``wait_s`` for its acks and then fails (BrokerError, the batch is
    retried), while the producer keeps the sends. A later publish of the same events
    (same ``event_id``: the pipeline's retry, the relay) waits for those sends instead of
    making new ones, which would land a second time after the first.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        dlq_topic: str,
        max_request_bytes: int,
        debug: bool = False,
        dead_letters: AIOKafkaProducer | None = None,
        renew: Callable[[], Awaitable[AIOKafkaProducer]] | None = None,
        wait_s: float | None = None,
        on_renewed: Callable[[], None] | None = None,
        on_unpublishable: Callable[[int], None] | None = None,
    ) -> None:
        self._producer = producer
        self._on_renewed = on_renewed
        self._on_unpublishable = on_unpublishable
        self._dlq_producer = dead_letters
        self._renew = renew
        self._wait_s = wait_s
        self._dlq_topic = dlq_topic
        self._max_value = deadletters.max_value_bytes(max_request_bytes)
        # event_id -> the send of it a publish gave up waiting for, and when.
        self._given_up: dict[str, tuple[asyncio.Future[Any], float]] = {}
        self._renewing = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self.renewals = 0
        # At DEBUG, one line per acknowledged record with where the broker put it: the
        # fault suite checks that everything acknowledged can be read back.
        self._debug = debug

    async def publish(self, events: Sequence[OutboundEvent]) -> None:
        """Send events and wait until the broker has acknowledged all of them (at most
        ``wait_s``: then BrokerError, the sends going on inside the producer). An event
        the topic refuses as too large, even alone, is dead-lettered as unstorable
        instead (see the module doc)."""
        refused = await self._send_all(
            [_event_send(e) for e in events],
            what="message_created",
            producer=self._producer,
            ids=[e.event_id for e in events],
        )
        if not refused:
            return
        unpublishable: list[tuple[OutboundEvent, BaseException]] = []
        for n, _cause in refused:
            error = await self._send_alone(events[n])
            if error is not None:
                unpublishable.append((events[n], error))
        if unpublishable:
            await self._dead_letter_events(unpublishable)

    async def _send_alone(self, event: OutboundEvent) -> BaseException | None:
        """Send one event in a batch of its own, to the partition send() would pick:
        None once acknowledged, or the broker's "too large" (then the producer is
        renewed, as after any refused idempotent batch). Any other failure raises."""
        producer = self._producer
        topic, key, value, headers = _event_send(event)
        try:
            partitions = sorted(await producer.partitions_for(topic))
            batch = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                raise BrokerError(f"event {event.event_id} does not fit a batch of its own")
            batch.close()
            partition = DefaultPartitioner()(key, partitions, partitions)
            sent = await producer.send_batch(batch, topic, partition=partition)
            done, _late = await asyncio.wait({sent}, timeout=self._wait_s)
        except KafkaError as exc:
            raise BrokerError(f"producing 1 message_created record failed: {exc!r}") from exc
        if not done:
            self._remember([event.event_id], [sent])
            raise PublishPendingError(
                f"1 message_created record not acknowledged within {self._wait_s:g} s "
                "(KAFKA_REQUEST_TIMEOUT_S); the producer goes on sending it"
            ) from KafkaTimeoutError()
        outcome = _outcome(sent)
        if not isinstance(outcome, BaseException):
            self._log_acked([(topic, key, value, headers)], [outcome])
            return None
        if self._renew is not None:
            await self._renew_after(producer, outcome)
        if not _too_large(outcome):
            raise BrokerError(
                f"producing 1 message_created record failed: {outcome!r}"
            ) from outcome
        return outcome

    async def _dead_letter_events(
        self, refused: Sequence[tuple[OutboundEvent, BaseException]]
    ) -> None:
        """Events the outbound topic refuses even alone: their messages are stored, the
        events go to the dead-letter topic (``unstorable``, the event as the value, the
        topic in ``dlq.event_topic``), and their publish counts as done."""
        invalid = []
        for event, error in refused:
            size = len(event.payload) + len(event.key)
            detail = (
                f"OUTBOUND_TOPIC {event.topic} refused this message_created event of {size} "
                f"bytes as too large ({type(error).__name__}: its max.message.bytes is "
                "below it, lowered after the message was stored). The message is stored; "
                "this letter holds its event, which was not announced: raise the topic's "
                "max.message.bytes and produce this value, key and event_id header to it"
            )
            invalid.append(Invalid(_event_record(event), Reason.UNSTORABLE, detail))
            log.error(
                "event.unpublishable",
                event_id=event.event_id,
                topic=event.topic,
                bytes=size,
                error=type(error).__name__,
            )
        await self.dead_letter(invalid, event_topic=refused[0][0].topic)
        if self._on_unpublishable is not None:
            self._on_unpublishable(len(invalid))

    async def close(self) -> None:
        """Flush and stop the producers (and any renewed one still stopping). An
        idempotent producer's flush never gives up during an outage: each stop is given
        ``wait_s``, then the member exits anyway (what was not acknowledged stays in the
        outbox, for the relay of whichever member comes next)."""
        stops = [self._producer, *([self._dlq_producer] if self._dlq_producer else [])]
        tasks = [asyncio.create_task(_stop_quietly(p)) for p in stops]
        _done, late = await asyncio.wait({*tasks, *self._retiring}, timeout=self._wait_s)
        for task in late:
            task.cancel()
        if late:
            log.warning("producer.stop_abandoned", producers=len(late), wait_s=self._wait_s)

    async def dead_letter(
        self, invalid: Sequence[Invalid], *, event_topic: str | None = None
    ) -> None:
        """Send bad records to the dead-letter topic, with why and where from; one the
        producer or the broker refuses as too large goes again in its minimal form.
        `event_topic`: the records are events that topic refused."""
        if not invalid:
            return
        failed_at_ms = int(time.time() * 1000)
        full = [
            deadletters.build(
                i,
                max_value_bytes=self._max_value,
                failed_at_ms=failed_at_ms,
                event_topic=event_topic,
            )
            for i in invalid
        ]
        results = await self._send_each([self._dlq_send(letter) for letter in full])
        others = [r for r in results if isinstance(r, BaseException) and not _too_large(r)]
        if others:
            raise BrokerError(
                f"{len(others)} of {len(invalid)} dead-letter record(s) were not "
                f"acknowledged: {others[0]!r}"
            ) from others[0]
        refused = [(i, r) for i, r in zip(invalid, results, strict=True) if _too_large(r)]
        if not refused:
            return
        log.warning(
            "dlq.minimal",
            count=len(refused),
            records=[i.record.log_context() for i, _ in refused[:10]],
            error=repr(refused[0][1]),
        )
        minimal = [
            deadletters.minimal(i, failed_at_ms=failed_at_ms, event_topic=event_topic)
            for i, _ in refused
        ]
        await self._send_all(
            [self._dlq_send(letter) for letter in minimal],
            what="dead-letter",
            producer=self._dlq_producer or self._producer,
        )

    async def _renew_after(self, broken: AIOKafkaProducer, cause: BaseException) -> None:
        """Replace the events producer after a batch of it failed (once, whoever of
        the concurrent publishes gets here first)."""
        assert self._renew is not None  # noqa: S101 - publish() checked
        async with self._renewing:
            if self._producer is not broken:
                return
            self._producer = await self._renew()
            self.renewals += 1
            if self._on_renewed is not None:
                self._on_renewed()
        log.warning("producer.renewed", cause=repr(cause), renewals=self.renewals)
        task = asyncio.create_task(_stop_quietly(broken), name="producer-retire")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _dlq_send(self, letter: deadletters.Outgoing) -> _Send:
        return (self._dlq_topic, letter.key, letter.value, letter.headers)

    async def _send_each(self, sends: list[_Send]) -> list[Any]:
        """Each record's metadata or its error: a record the producer refuses at once
        (too large) does not stop the others. Any other error of send() raises."""
        producer = self._dlq_producer or self._producer
        pending: list[Any] = []
        try:
            for topic, key, value, headers in sends:
                try:
                    future = await producer.send(topic, value=value, key=key, headers=headers)
                except _TOO_LARGE as exc:
                    pending.append(exc)
                else:
                    pending.append(future)
        except KafkaError as exc:
            # As in _send_all: what was enqueued is waited for before we return.
            await asyncio.gather(
                *(p for p in pending if not isinstance(p, BaseException)), return_exceptions=True
            )
            raise BrokerError(
                f"producing {len(sends)} dead-letter record(s) failed: {exc!r}"
            ) from exc
        results = await asyncio.gather(
            *(p for p in pending if not isinstance(p, BaseException)), return_exceptions=True
        )
        acked = iter(results)
        outcomes = [p if isinstance(p, BaseException) else next(acked) for p in pending]
        self._log_acked(sends, outcomes)
        return outcomes

    async def _send_all(
        self,
        sends: Sequence[_Send],
        *,
        what: str,
        producer: AIOKafkaProducer,
        ids: Sequence[str] | None = None,
    ) -> list[tuple[int, BaseException]]:
        """Send and wait for every ack; with `ids` (events), a send of the same event
        still under way is waited for instead of sent again, and the wait is bounded by
        ``wait_s``. Events only: when every failure is the broker's "too large", they are
        returned (index, error) instead of raised, the others being acknowledged."""
        if not sends:
            return []
        futures: list[Any] = []
        try:
            for n, (topic, key, value, headers) in enumerate(sends):
                earlier = self._earlier_send(ids[n]) if ids is not None else None
                if earlier is not None:
                    futures.append(earlier)
                    continue
                futures.append(await producer.send(topic, value=value, key=key, headers=headers))
        except KafkaError as exc:
            # The sends already enqueued go on inside the producer: wait for them, so
            # none is still under way (and may land after the retry's) when we return.
            late = await self._settle(futures)
            self._keep_if_late(ids, futures, late)
            message = f"producing {len(sends)} {what} record(s) failed: {exc!r}"
            raise self._failure(message, ids, futures, late=late) from exc
        late = await self._settle(futures)
        self._keep_if_late(ids, futures, late)
        if late:
            raise PublishPendingError(
                f"{late} of {len(sends)} {what} record(s) not acknowledged within "
                f"{self._wait_s:g} s (KAFKA_REQUEST_TIMEOUT_S); the producer goes on "
                "sending them, and the retry waits for those sends"
            ) from KafkaTimeoutError()
        results = [_outcome(f) for f in futures]
        self._log_acked(sends, results)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            if ids is not None and self._renew is not None:
                # An idempotent batch fails only for good, leaving a gap in its sequence.
                await self._renew_after(producer, failures[0])
            if ids is not None and all(_too_large(f) for f in failures):
                return [(n, r) for n, r in enumerate(results) if isinstance(r, BaseException)]
            message = (
                f"{len(failures)} of {len(sends)} {what} record(s) were not acknowledged: "
                f"{failures[0]!r}"
            )
            raise self._failure(message, ids, futures, late=0) from failures[0]
        return []

    def _failure(
        self,
        message: str,
        ids: Sequence[str] | None,
        futures: Sequence[asyncio.Future[Any]],
        *,
        late: int,
    ) -> BrokerError:
        """The error of a failed publish of events (`ids`), or of dead letters. Sends
        still under way (`late`, kept for the retry): PublishPendingError. Every send
        ended: the acknowledged ones are remembered, so that the retry does not send them
        again (a copy on the topic), and if there are any, PartlyPublishedError. Either
        way the caller keeps its outbox claims; otherwise BrokerError."""
        if ids is None:
            return BrokerError(message)
        if late:
            return PublishPendingError(f"{message}; {late} send(s) still under way")
        acked = [
            (event_id, f)
            for event_id, f in zip(ids, futures, strict=False)
            if not isinstance(_outcome(f), BaseException)
        ]
        if not acked:
            return BrokerError(message)
        self._remember([i for i, _ in acked], [f for _, f in acked])
        return PartlyPublishedError(message)

    async def _settle(self, futures: Sequence[asyncio.Future[Any]]) -> int:
        """Wait for the sends (at most ``wait_s`` if set); how many are still under way."""
        if not futures:
            return 0
        _done, late = await asyncio.wait(set(futures), timeout=self._wait_s)
        return len(late)

    def _earlier_send(self, event_id: str) -> asyncio.Future[Any] | None:
        """The send of this event a publish gave up waiting for, if it is still under
        way or was acknowledged since (then it counts: sending again would land a copy);
        None if there is none, or it failed (then it is sent again)."""
        kept = self._given_up.get(event_id)
        if kept is None:
            return None
        future = kept[0]
        if future.done() and (future.cancelled() or future.exception() is not None):
            del self._given_up[event_id]
            return None
        return future

    def _keep_if_late(
        self, ids: Sequence[str] | None, futures: Sequence[asyncio.Future[Any]], late: int
    ) -> None:
        """Events only: keep the sends of a publish that gave up waiting, forget those
        of one that saw all its sends end (its outcome is final, the caller acts on it)."""
        if ids is None:
            return
        if late:
            self._remember(ids, futures)
        else:
            self._forget(ids, futures)

    def _remember(self, ids: Sequence[str], futures: Sequence[asyncio.Future[Any]]) -> None:
        """Keep a given-up publish's sends for its retry (the pipeline's, within
        RETRY_BACKOFF_MAX_S; the relay's, within the outbox claim), for KEEP_GIVEN_UP_S."""
        now = time.monotonic()
        for stale in [k for k, (_, at) in self._given_up.items() if now - at > KEEP_GIVEN_UP_S]:
            del self._given_up[stale]
        for event_id, future in zip(ids, futures, strict=False):
            self._given_up[event_id] = (future, now)

    def _forget(self, ids: Sequence[str], futures: Sequence[asyncio.Future[Any]]) -> None:
        for event_id, future in zip(ids, futures, strict=False):
            kept = self._given_up.get(event_id)
            if kept is not None and kept[0] is future:
                del self._given_up[event_id]

    def _log_acked(self, sends: Sequence[_Send], results: Sequence[Any]) -> None:
        if not self._debug:
            return
        for (topic, _key, _value, headers), r in zip(sends, results, strict=True):
            if not isinstance(r, BaseException):
                log.debug(
                    "record.acked",
                    topic=topic,
                    partition=r.partition,
                    offset=r.offset,
                    event_id=(dict(headers).get("event_id") or b"").decode(),
                )


def _event_send(event: OutboundEvent) -> _Send:
    return (event.topic, event.key, event.payload, [("event_id", event.event_id.encode())])


def _event_record(event: OutboundEvent) -> InboundRecord:
    """An event as the record its dead letter holds: the event's key, bytes and
    event_id header, from the inbound record its message came from (the event's
    ``source``; its write time is not kept, so 0)."""
    try:
        source = orjson.loads(event.payload).get("source") or {}
        topic, partition, offset = (
            str(source["topic"]),
            int(source["partition"]),
            int(source["offset"]),
        )
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        topic, partition, offset = event.topic, -1, -1
    return InboundRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        key=event.key,
        value=event.payload,
        headers=(("event_id", event.event_id.encode()),),
        timestamp_ms=0,
    )


def _outcome(future: asyncio.Future[Any]) -> Any:
    """A finished send's metadata, or its error."""
    if future.cancelled():
        return asyncio.CancelledError()
    return future.exception() or future.result()


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    """Stop a producer (flushing what it holds); a failure is logged, not raised."""
    try:
        await producer.stop()
    except Exception as exc:  # noqa: BLE001 - stopping: nothing left to do but say so
        log.warning("producer.stop_failed", error=repr(exc))


def _too_large(result: object) -> bool:
    """A refusal that a smaller record would not get."""
    return isinstance(result, _TOO_LARGE)


def producer_config(
    bootstrap: str,
    *,
    client_id: str,
    request_timeout_s: float,
    max_request_bytes: int,
    idempotence: bool = False,
    metadata_max_age_s: float = 30.0,
) -> dict[str, Any]:
    """Producer settings: every replica acks, no linger, idempotence as decided at start
    (:func:`decide_idempotence`, ``KAFKA_IDEMPOTENCE``), metadata at most
    `metadata_max_age_s` old (``KAFKA_METADATA_MAX_AGE_S``, whose default this is):
    partitions added to a topic get records, and keys their new partition, within that.

    A batch's events need no linger to share requests: send() appends to the partition's
    pending batch and does not yield unless that batch is full, so all of a pipeline
    batch's events are in the accumulator before the sender task runs. A linger would
    only make the last, partial batch of each publish wait it out (docs/benchmarks.md,
    round six).

    Order per partition (aiokafka 0.14's sender, with or without idempotence): at most one
    batch per partition is in flight (the partition is muted until its request ends), and
    a batch to retry goes back to the *front* of its partition's queue, so batches reach
    the log in the order send() made them. Without idempotence a retry can write a batch
    twice (the broker wrote it, the answer was lost: a timeout, a leader that died before
    it answered); the copy lands right after the first, before any later batch, and
    carries the same ``event_id``. A batch that fails for good (a timeout past
    ``KAFKA_REQUEST_TIMEOUT_S``) fails its publish, and the pipeline sends its events again
    later, after what was sent meanwhile. With idempotence the broker drops a retried
    batch it already has (producer id and sequence), and a retriable error is retried
    until it succeeds, never expired. docs/design.md, "Broker facts", says what that
    costs.
    """
    return {
        "bootstrap_servers": bootstrap,
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": idempotence,
        "linger_ms": 0,
        "request_timeout_ms": int(request_timeout_s * 1000),
        "max_request_size": max_request_bytes,
        "retry_backoff_ms": 200,
        "metadata_max_age_ms": int(metadata_max_age_s * 1000),
    }


@dataclass(frozen=True, slots=True)
class Idempotence:
    """Whether the producer runs idempotent, and why (logged at start)."""

    enabled: bool
    reason: str


# InitProducerId answers that mean "not yet" (a coordinator loading, moving), not "no".
_PID_NOT_YET = (
    kafka_errors.CoordinatorLoadInProgressError,
    kafka_errors.CoordinatorNotAvailableError,
    kafka_errors.NotCoordinatorError,
)


async def probe_producer_id(bootstrap: str, *, timeout_s: float) -> tuple[bool, str]:
    """Ask the broker for a producer id, as an idempotent producer's start does: (True,
    why) when it grants one, (False, why) when it refuses. ApiVersions cannot tell: Tansu
    0.6 advertises InitProducerId (api key 22, versions 0-5) and answers it with
    UNKNOWN_SERVER_ERROR. Raises KafkaError or TimeoutError when no broker answers."""
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap,
        client_id="wamid-guard-idempotence-probe",
        request_timeout_ms=int(timeout_s * 1000),
    )
    deadline = time.monotonic() + timeout_s
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        while True:
            node = client.get_random_node()
            request = InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60_000)
            try:
                response = await asyncio.wait_for(
                    client.send(node, request), max(deadline - time.monotonic(), 0.1)
                )
            except IncompatibleBrokerVersion:
                return False, "the broker does not offer InitProducerId (ApiVersions)"
            error = kafka_errors.for_code(response.error_code)
            if error is kafka_errors.NoError:
                return True, "the broker granted a producer id (InitProducerId)"
            if error not in _PID_NOT_YET or time.monotonic() > deadline:
                return False, f"the broker answered InitProducerId with {error.__name__}"
            await asyncio.sleep(0.2)
    finally:
        await client.close()


async def decide_idempotence(
    mode: str, bootstrap: str, *, timeout_s: float, setting: str = "KAFKA_IDEMPOTENCE"
) -> Idempotence:
    """`off`: no. `on`: yes, or a ConfigError naming the setting if the broker refuses a
    producer id. `auto`: whether the broker grants one (:func:`probe_producer_id`).
    A broker that does not answer at all is a BrokerError, as for any client's start."""
    if mode == "off":
        return Idempotence(enabled=False, reason=f"{setting}=off")
    try:
        granted, why = await probe_producer_id(bootstrap, timeout_s=timeout_s)
    except (KafkaError, TimeoutError) as exc:
        raise BrokerError(
            f"cannot reach Kafka at KAFKA_BOOTSTRAP_SERVERS={bootstrap} to ask for a "
            f"producer id ({setting}={mode}): {exc!r}"
        ) from exc
    if mode == "on" and not granted:
        raise ConfigError(
            setting,
            f"is on, but the broker at KAFKA_BOOTSTRAP_SERVERS={bootstrap} refuses idempotent "
            f"producers ({why}); set {setting}=auto or off",
        )
    return Idempotence(enabled=granted, reason=f"{setting}={mode}: {why}")
