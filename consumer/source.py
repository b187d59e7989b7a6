"""The Kafka side of a member: the group consumer, behind a small API of its own.

Everything aiokafka is here (configuration, record conversion, fetches, commits, pauses,
positions, end offsets, the group coordinator's health), and nothing aiokafka raises
leaves: a failure comes out as :class:`~consumer.errors.BrokerError` (the cause chained)
or, for commits, as a :class:`CommitOutcome`. The decisions (what to commit, what to
pause) are the bookkeeping unit's (``tracking.py``); this module applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import CommitFailedError, KafkaError

from consumer import lenient
from consumer.errors import BrokerError, MissingTopicError, UnreadableFetchError
from consumer.records import InboundRecord, Partition
from consumer.settings import Settings

log = structlog.get_logger(__name__)

RebalanceHook = Callable[[set[Partition]], Awaitable[None]]

# How long a fetch that found records waits for the partitions' next chunk (see
# Source.fetch): a round trip to the broker, a few milliseconds; longer only delays a
# batch of a quiet partition (that chunk waits up to KAFKA_FETCH_MAX_WAIT_S for data).
TOP_UP_S = 0.005
# A partition no topic has: what Source.keep_in_group asks for.
_NO_PARTITION = TopicPartition("", -1)


def inbound(record: Any) -> InboundRecord:
    """An aiokafka ConsumerRecord as the project's record (service, dlq and tail). A
    record standing for a batch the client could not read (consumer/lenient.py) comes
    with its problem, to be dead-lettered."""
    value = record.value
    problem = None
    if isinstance(value, lenient.Problem):
        problem, value = (value.reason, value.detail), b""
    return InboundRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=value,
        headers=tuple(record.headers or ()),
        timestamp_ms=int(record.timestamp or 0),
        problem=problem,
    )


def consumer_config(settings: Settings, *, client_id: str) -> dict[str, Any]:
    """The group member's consumer: manual commits only (rule 8), from the start of a
    partition the group never committed (the member seeks offset 0 itself, see
    Source.start_at_committed)."""
    s = settings
    return {
        "bootstrap_servers": s.kafka_bootstrap_servers,
        "client_id": client_id,
        "group_id": s.consumer_group,
        # Static membership when set (docs/operations.md, "Static group membership"):
        # aiokafka sends it with JoinGroup and SyncGroup and sends no LeaveGroup on close.
        "group_instance_id": s.kafka_group_instance_id or None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": s.batch_max_records,
        "session_timeout_ms": int(s.kafka_session_timeout_s * 1000),
        "heartbeat_interval_ms": int(s.kafka_heartbeat_interval_s * 1000),
        "max_poll_interval_ms": int(s.kafka_max_poll_interval_s * 1000),
        "request_timeout_ms": int(s.kafka_request_timeout_s * 1000),
        # A fetch returns after at most this long even with little data: bounds the
        # latency a quiet partition adds.
        "fetch_max_wait_ms": int(s.kafka_fetch_max_wait_s * 1000),
        # New partitions of INBOUND_TOPIC are seen (and the group rebalances onto them)
        # within this age of the group leader's metadata.
        "metadata_max_age_ms": int(s.kafka_metadata_max_age_s * 1000),
        # A partition's fetch takes a whole record of MAX_RECORD_BYTES, a response a few
        # (limits.sizes): what aiokafka holds, and a batch, stays bounded in bytes.
        "max_partition_fetch_bytes": s.sizes.partition_fetch_bytes,
        "fetch_max_bytes": s.sizes.fetch_max_bytes,
    }


# -- reaching the broker --------------------------------------------------------------


async def start_client(client: Any, bootstrap: str, timeout_s: float) -> None:
    """Start an aiokafka client within `timeout_s`; if it cannot, a BrokerError that says
    why (nothing listens there, no answer, something that is not Kafka), naming
    KAFKA_BOOTSTRAP_SERVERS. aiokafka alone would wait on and end with a bare
    "Unable connect to ...: "."""
    try:
        await asyncio.wait_for(client.start(), timeout_s)
    except (KafkaError, TimeoutError) as exc:
        with contextlib.suppress(Exception):
            await (getattr(client, "close", None) or client.stop)()
        why = await explain_unreachable(bootstrap, min(timeout_s, 5.0))
        raise BrokerError(
            f"cannot reach Kafka at KAFKA_BOOTSTRAP_SERVERS={bootstrap}: {why}"
        ) from exc


async def explain_unreachable(bootstrap: str, timeout_s: float) -> str:
    """Why the bootstrap servers do not work as Kafka, from a plain TCP connection to
    each: refused, no answer, a name that does not resolve, or a port that answers but
    is not a Kafka broker."""
    reasons = []
    for server in (s.strip() for s in bootstrap.split(",")):
        host, _, port = server.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout_s)
        except TimeoutError:
            reasons.append(f"{server}: no answer within {timeout_s:g}s (wrong host, or a firewall)")
            continue
        except ConnectionRefusedError:
            reasons.append(f"{server}: connection refused (nothing listens on that port)")
            continue
        except OSError as exc:
            reasons.append(f"{server}: {exc.strerror or exc}")
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        reasons.append(
            f"{server}: something listens there, but it does not answer as a Kafka broker"
        )
    return "; ".join(reasons)


async def require_topics(bootstrap: str, topics: Mapping[str, str], timeout_s: float) -> None:
    """Fail unless every topic exists: MissingTopicError naming the setting or option
    (the keys of `topics`) and how to create it. Asks for the list of all topics, which
    never creates one (asking for a named topic's metadata can: a broker that
    auto-creates topics would make any typo a new topic)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    await start_client(admin, bootstrap, timeout_s)
    try:
        existing = set(await asyncio.wait_for(admin.list_topics(), timeout_s))
    except (KafkaError, TimeoutError) as exc:
        raise BrokerError(f"listing the topics of {bootstrap} failed: {exc!r}") from exc
    finally:
        await admin.close()
    missing = [f"{name}={topic}" for name, topic in topics.items() if topic not in existing]
    if missing:
        raise MissingTopicError(
            f"{', '.join(missing)}: no such topic on KAFKA_BOOTSTRAP_SERVERS={bootstrap} "
            "(check the name, or create it: python -m consumer topics create)"
        )


MAX_MESSAGE_BYTES = "max.message.bytes"


async def topic_limits(bootstrap: str, topics: Sequence[str], timeout_s: float) -> dict[str, int]:
    """Each topic's max.message.bytes (DescribeConfigs), or BrokerError if the broker
    does not say (Tansu 0.6 closes the connection; an older or restricted broker may
    refuse), the cause chained."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    await start_client(admin, bootstrap, timeout_s)
    try:
        answers = await asyncio.wait_for(
            admin.describe_configs(
                [
                    ConfigResource(ConfigResourceType.TOPIC, t, {MAX_MESSAGE_BYTES: None})
                    for t in topics
                ]
            ),
            timeout_s,
        )
        found: dict[str, int] = {}
        for answer in answers:
            for resource in answer.to_object()["resources"]:
                if resource["error_code"]:
                    raise BrokerError(
                        f"describing {resource['resource_name']!r}: error "
                        f"{resource['error_code']} {resource.get('error_message') or ''}".strip()
                    )
                for entry in resource["config_entries"]:
                    if entry["config_names"] == MAX_MESSAGE_BYTES:
                        found[resource["resource_name"]] = int(entry["config_value"])
    except (KafkaError, TimeoutError, ValueError, KeyError, TypeError) as exc:
        raise BrokerError(f"describing the configs of {list(topics)} failed: {exc!r}") from exc
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    missing = [t for t in topics if t not in found]
    if missing:
        raise BrokerError(f"the broker did not say the max.message.bytes of {missing}")
    return found


def _value_bytes(records: Iterable[InboundRecord]) -> int:
    return sum(len(r.value or b"") for r in records)


class CommitOutcome(enum.Enum):
    OK = "ok"
    REJECTED = "rejected"  # the group moved on (a rebalance): the new owner re-reads
    FAILED = "failed"  # the broker did not answer: the next commit tries again


def _tp(p: Partition) -> TopicPartition:
    return TopicPartition(p[0], p[1])


def _p(tp: TopicPartition) -> Partition:
    return (tp.topic, tp.partition)


class Source:
    """One member's group consumer of INBOUND_TOPIC."""

    def __init__(self, settings: Settings, *, client_id: str, consumer: Any = None) -> None:
        """`consumer`: an AIOKafkaConsumer-like object to use instead (tests)."""
        self._settings = settings
        self._timeout_s = settings.kafka_request_timeout_s
        # A batch aiokafka cannot decode, or that decompresses beyond the bound
        # MAX_RECORD_BYTES sets, must not stop a partition (it is dead-lettered).
        lenient.install(settings.max_record_bytes)
        count_fetches_that_end_early()
        # Whether this member assigned the group's partitions in the current generation
        # (the group's leader), and whether a leader must stay in the group when it
        # stops (see stop()): found out at start.
        self.leading = False
        self.leader_stays = False
        self._own_consumer = consumer is None
        self._consumer = consumer or AIOKafkaConsumer(
            **consumer_config(settings, client_id=client_id),
            partition_assignment_strategy=(_noting_leadership(self),),
        )
        # Per partition, the offset after the last record a fetch returned since the
        # partition was assigned: where a rewind puts it when the bookkeeping has no
        # position of its own (never where aiokafka's position happens to be).
        self._returned: dict[Partition, int] = {}
        # A fetch error met after records were already taken (the top-up): raised by
        # the next fetch, so the caller rewinds after it has those records.
        self._deferred: BrokerError | None = None
        # Partitions a rewind could not place (their committed offset was unreadable):
        # no fetch happens before they are placed.
        self._unplaced: set[Partition] = set()
        # Placements (start_at_committed) so far, and the one that last placed each
        # partition: records a fetch took before a placement of their partition come
        # from before its seek, and are not returned (see start_at_committed).
        self._placements = 0
        self._placed_by: dict[Partition, int] = {}
        # A first step that took a fetch response's worth of bytes (records near
        # MAX_RECORD_BYTES) is a batch: no top-up, so a batch holds at most two responses.
        self._top_up_below = settings.sizes.fetch_max_bytes

    async def start(self, *, on_revoked: RebalanceHook, on_assigned: RebalanceHook) -> None:
        s = self._settings
        await start_client(self._consumer, s.kafka_bootstrap_servers, self._timeout_s)
        if self._own_consumer:
            self.leader_stays = await leader_must_stay(s.kafka_bootstrap_servers, self._timeout_s)

        async def revoked(partitions: set[Partition]) -> None:
            self.leading = False  # a (re)join begins: who leads is decided again
            await on_revoked(partitions)
            self.forget(partitions)

        async def assigned(partitions: set[Partition]) -> None:
            self.forget(partitions)
            await on_assigned(partitions)

        self._consumer.subscribe([s.inbound_topic], listener=_Listener(revoked, assigned))

    def forget(self, partitions: Iterable[Partition]) -> None:
        """A rebalance: what fetches returned of these partitions no longer says where
        they stand (the group's committed offset does)."""
        for p in partitions:
            self._returned.pop(p, None)
            self._unplaced.discard(p)

    async def stop(self) -> None:
        """Leave the group and close. On a broker whose coordinator mishandles its
        leader's LeaveGroup (:func:`leader_must_stay`), the leader sends none: the
        coordinator drops it when its session times out, and elects a new leader then."""
        if self.leading and self.leader_stays:
            _send_no_leave_group(self._consumer)
            log.info(
                "group.leader_stays",
                note="this broker keeps a departed leader (Tansu): no LeaveGroup; the "
                "group rebalances once KAFKA_SESSION_TIMEOUT_S has passed",
                session_timeout_s=self._settings.kafka_session_timeout_s,
            )
        await self._consumer.stop()

    # -- records -------------------------------------------------------------------

    async def fetch(
        self,
        *,
        timeout_s: float,
        max_records: int,
        partitions: Iterable[Partition] | None = None,
    ) -> list[InboundRecord]:
        """Records of unpaused owned partitions (of `partitions` only, if given), as many
        as `max_records`; BrokerError if the fetch failed (the broker answered an error,
        or a record could not be read: aiokafka then moves past what it had read but not
        returned, so the caller should :meth:`rewind`). Cancelling it loses nothing:
        records leave aiokafka's buffer only in the step that returns them, and a cancel
        during the top-up returns what the first step took; so does an error in the
        top-up, which the next fetch raises (docs/design.md, "Fetching").

        The top-up: aiokafka keeps one fetched chunk per partition and asks the broker
        for the next only once that chunk is taken. So under a steady load the chunk a
        partition's batch takes holds the records that had come one batch earlier, and
        those that came while the batch before ran are still on the broker: they would
        wait for the batch after, about one batch more of latency. When the first step
        returned records but fewer than `max_records`, a second step waits up to
        TOP_UP_S (a round trip to the broker), never longer than `timeout_s`, for the
        chunk asked for when the first was taken, and adds it. A full batch (a
        backlog), a first step holding a fetch response's worth of bytes (records of
        Meta's 3 MB: a batch holds at most two responses), an empty fetch (nothing to
        top up) and a fetch asked not to wait (`timeout_s` 0: retries are due) skip it."""
        if self._deferred is not None:
            deferred, self._deferred = self._deferred, None
            raise deferred
        if self._unplaced:
            await self._place_at_committed()
        only = [_tp(p) for p in sorted(partitions)] if partitions is not None else []
        if partitions is not None and not only:
            return []  # getmany() of no partition would mean every partition
        records = await self._getmany(only, timeout_s, max_records)
        took_at = self._placements  # what the first step took precedes later placements
        top_up_s = min(TOP_UP_S, timeout_s)
        if (
            records
            and len(records) < max_records
            and top_up_s > 0
            and _value_bytes(records) < self._top_up_below
        ):
            try:
                more = await self._getmany(only, top_up_s, max_records - len(records))
            except asyncio.CancelledError:
                # Cut short (a batch ended, or the member stops): the first step's
                # records left aiokafka's buffer, so they are returned, never dropped.
                # Our caller runs this as a task of its own; cancelling that task is
                # all the cancel means.
                return self._took(records, took_at)
            except BrokerError as exc:
                # The first step's records left aiokafka's buffer too: they are
                # returned, and the error comes with the next fetch (whose caller then
                # rewinds, knowing these records).
                self._deferred = exc
            else:
                return self._took(records, took_at) + self._took(more, self._placements)
        return self._took(records, took_at)

    async def keep_in_group(self, timeout_s: float) -> None:
        """A poll that takes no record, for a turn that fetches nothing (no partition
        assigned: a standby; or every partition busy with a batch). aiokafka counts the
        time since getmany was last called, leaves the group once it passes
        KAFKA_MAX_POLL_INTERVAL_S, and will not rejoin while that lasts: a standby would
        be out of the group for good, and nobody would take over from a member that goes
        away. getmany of a partition that is never assigned (-1) returns nothing and
        resets that clock. Errors are the next fetch's to report."""
        try:
            await asyncio.wait_for(self._consumer.getmany(_NO_PARTITION, timeout_ms=0), timeout_s)
        except (KafkaError, TimeoutError) as exc:
            log.debug("fetch.keep_in_group_failed", error=repr(exc))

    def _took(self, records: list[InboundRecord], took_at: int) -> list[InboundRecord]:
        """Note where the returned records leave each partition. Records taken out of
        aiokafka's buffer before a placement of their partition (the first step of a
        fetch, when the placement came during its top-up; `took_at`: the placements
        then) came from before its seek: they are dropped, and read again from there."""
        if self._placements != took_at:
            placed = {p for p, n in self._placed_by.items() if n > took_at}
            kept = [r for r in records if (r.topic, r.partition) not in placed]
            if len(kept) != len(records):
                log.info(
                    "fetch.dropped_before_placement",
                    records=len(records) - len(kept),
                    partitions=sorted(f"{t}:{n}" for t, n in placed),
                )
            records = kept
        for r in records:
            p = (r.topic, r.partition)
            self._returned[p] = max(self._returned.get(p, 0), r.offset + 1)
        return records

    async def _getmany(
        self, only: list[TopicPartition], timeout_s: float, max_records: int
    ) -> list[InboundRecord]:
        try:
            fetched = await self._consumer.getmany(
                *only, timeout_ms=int(timeout_s * 1000), max_records=max(max_records, 1)
            )
        except KafkaError as exc:
            raise BrokerError(f"fetching failed: {exc!r}") from exc
        except Exception as exc:  # translated: nothing aiokafka raises leaves this module
            raise UnreadableFetchError(f"unpacking a fetch failed: {exc!r}") from exc
        return [inbound(m) for batch in fetched.values() for m in batch]

    async def rewind(self, positions: Mapping[Partition, int]) -> None:
        """Put every assigned partition back where our bookkeeping says it is; else after
        the last record a fetch returned of it since it was assigned; else (nothing
        returned yet) at the group's committed offset, or 0 when nothing is committed
        (as the assignment placed it). Never where aiokafka's position stands: a fetch
        that failed half-way has moved it past records it read but did not return.
        Discards what aiokafka has buffered. A partition whose committed offset cannot
        be read now is placed before the next fetch (which fails until it is)."""
        for tp in self._consumer.assignment():
            p = _p(tp)
            position = positions.get(p, self._returned.get(p))
            if position is None:
                self._unplaced.add(p)
                continue
            try:
                self._consumer.seek(tp, position)
            except KafkaError as exc:  # IllegalStateError: no longer ours (rebalancing)
                log.warning("fetch.rewind_failed", partition=tp.partition, error=repr(exc))
        try:
            await self._place_at_committed()
        except BrokerError as exc:
            log.warning("fetch.rewind_deferred", error=str(exc), partitions=len(self._unplaced))

    async def _place_at_committed(self) -> None:
        """Seek each unplaced partition still ours to the group's committed offset (0 if
        none); BrokerError if those cannot be read."""
        mine = {_p(tp) for tp in self._consumer.assignment()}
        self._unplaced &= mine
        if not self._unplaced:
            return
        for p, offset in (await self.committed(self._unplaced)).items():
            try:
                self._consumer.seek(_tp(p), offset or 0)
            except KafkaError as exc:
                log.warning("fetch.rewind_failed", partition=p[1], error=repr(exc))
            self._unplaced.discard(p)

    # -- offsets -------------------------------------------------------------------

    async def commit(self, offsets: Mapping[Partition, int]) -> CommitOutcome:
        try:
            await self._consumer.commit({_tp(p): o for p, o in offsets.items()})
        except CommitFailedError as exc:
            log.warning("offsets.commit_rejected", error=str(exc), partitions=len(offsets))
            return CommitOutcome.REJECTED
        except KafkaError as exc:
            log.warning("offsets.commit_failed", error=repr(exc), partitions=len(offsets))
            return CommitOutcome.FAILED
        return CommitOutcome.OK

    async def committed(self, partitions: Iterable[Partition]) -> dict[Partition, int | None]:
        """The group's committed offset of each partition (None: nothing committed)."""
        consumer = self._consumer

        async def one(p: Partition) -> tuple[Partition, int | None]:
            offset = await consumer.committed(_tp(p))
            return p, None if offset is None else int(offset)

        try:
            # aiokafka retries a retriable failure without end: bound it.
            found = await asyncio.wait_for(
                asyncio.gather(*(one(p) for p in partitions)), self._timeout_s
            )
        except TimeoutError as exc:
            raise BrokerError(f"reading committed offsets took over {self._timeout_s:g}s") from exc
        except KafkaError as exc:
            raise BrokerError(f"reading committed offsets failed: {exc!r}") from exc
        return dict(found)

    async def start_at_committed(self, partitions: set[Partition]) -> set[Partition]:
        """Position each of `partitions` (just assigned) at the group's committed offset,
        or at offset 0 when nothing is committed; return the latter.

        Every partition is placed, not only the uncommitted ones: aiokafka installs an
        assignment and fetches for it before our assignment hook has run (this reads the
        committed offsets, a round trip), so a fetch under way can return records of a
        partition the bookkeeping does not own yet. Those are dropped (tracking.Tracker
        .fetched), and aiokafka's position has moved past them: without this seek the
        next fetch would start after them, and the first commit would skip them (seen on
        a three-node cluster: 990 records of one partition never stored). A seek also
        discards what aiokafka buffered of the partition, and a fetch that had taken
        records of it before the seek and was waiting in its top-up drops them.

        Offset 0, not the reset policy, for the uncommitted: aiokafka applies
        auto_offset_reset="earliest" by asking the broker where the log starts, and the
        embedded broker can name an offset past records it holds (docs/design.md,
        "Broker facts"); where 0 is below the log start (Apache Kafka after retention),
        the broker answers OffsetOutOfRange and the reset policy applies. If the
        committed offsets cannot be read, the partitions are placed before the next fetch
        (which fails until they can be)."""
        if not partitions:
            return set()
        try:
            committed = await self.committed(partitions)
        except BrokerError as exc:
            log.warning(
                "partitions.committed_unknown",
                error=str(exc),
                fallback="placed before the next fetch",
                partitions=sorted(f"{t}:{n}" for t, n in partitions),
            )
            self._unplaced |= partitions
            return set()
        fresh = set()
        for p in sorted(committed):
            self._returned.pop(p, None)
            try:
                self._consumer.seek(_tp(p), committed[p] or 0)
            except KafkaError as exc:  # IllegalStateError: no longer ours (rebalancing)
                log.warning("partition.seek_failed", partition=f"{p[0]}:{p[1]}", error=repr(exc))
                continue
            self._placements += 1
            self._placed_by[p] = self._placements
            if committed[p] is None:
                fresh.add(p)
        if fresh:
            log.info("partitions.start_at_zero", partitions=[f"{t}:{n}" for t, n in sorted(fresh)])
        return fresh

    # -- pauses, lag, health -------------------------------------------------------

    def assignment(self) -> set[Partition]:
        return {_p(tp) for tp in self._consumer.assignment()}

    def paused(self) -> set[Partition]:
        return {_p(tp) for tp in self._consumer.paused()}

    def apply_pauses(self, wanted: Mapping[Partition, str], owned: Iterable[Partition]) -> None:
        """Make the consumer's pauses what the bookkeeping decided, for the partitions it
        owns (between a revocation and the next assignment aiokafka still lists the old
        ones: they are left alone), logging each change with its reason."""
        mine = set(owned)
        assigned = [tp for tp in self._consumer.assignment() if _p(tp) in mine]
        paused = set(self._consumer.paused())
        for tp in sorted(assigned, key=_p):
            reason = wanted.get(_p(tp))
            if reason is not None and tp not in paused:
                self._consumer.pause(tp)
                log.info("partition.paused", topic=tp.topic, partition=tp.partition, why=reason)
            elif reason is None and tp in paused:
                self._consumer.resume(tp)
                log.info("partition.resumed", topic=tp.topic, partition=tp.partition)

    def highwater(self, p: Partition) -> int | None:
        """The partition's end as the last fetch saw it (None before any fetch)."""
        found = self._consumer.highwater(_tp(p))
        return None if found is None else int(found)

    async def end_offsets(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        """The broker's end offset of each partition (for partitions not fetched)."""
        try:
            ends = await asyncio.wait_for(
                self._consumer.end_offsets([_tp(p) for p in partitions]), self._timeout_s
            )
        except (KafkaError, TimeoutError) as exc:
            raise BrokerError(f"reading end offsets failed: {exc!r}") from exc
        return {_p(tp): int(o) for tp, o in ends.items()}

    async def coordinator_answers(self, topic: str, timeout_s: float) -> None:
        """One round trip to the group coordinator (a committed-offset read, which only it
        answers); BrokerError if it does not answer in time. aiokafka has no public
        "connected" flag, and this asks the coordinator itself."""
        try:
            await asyncio.wait_for(self._consumer.committed(TopicPartition(topic, 0)), timeout_s)
        except TimeoutError as exc:
            raise BrokerError(
                f"the group coordinator did not answer within {timeout_s:g}s"
            ) from exc
        except KafkaError as exc:
            raise BrokerError(f"the group coordinator failed: {exc!r}") from exc


def count_fetches_that_end_early() -> None:
    """aiokafka (0.14) counts a getmany as under way in SubscriptionState.fetch_context,
    a context manager whose exit is not in a ``finally``: a getmany that is cancelled (the
    loop cuts a fetch short when a batch ends, and keep_in_group bounds its wait during a
    rebalance) or that raises stays counted for good. Its fetcher_idle_time is then 0
    from there on, and aiokafka never leaves the group for a member whose loop stalls past
    KAFKA_MAX_POLL_INTERVAL_S. This installs the same count, ended in a ``finally``.
    Idempotent; for every consumer of the process."""
    if getattr(SubscriptionState.fetch_context, "wamid_guard", False):
        return

    @contextlib.contextmanager
    def fetch_context(self: Any) -> Iterator[None]:
        self._fetch_count += 1
        try:
            yield
        finally:
            self._fetch_count -= 1
            if self._fetch_count == 0:
                self._last_fetch_ended = time.monotonic()

    fetch_context.wamid_guard = True  # type: ignore[attr-defined]
    SubscriptionState.fetch_context = fetch_context


# Tansu's coordinator (its default cluster id) keeps a leader that leaves while the group
# is forming (after another member left first, as when every member stops at once) as the
# group's leader: every member that joins after is told to wait for that leader's
# SyncGroup, which never comes, until a conflicting update happens to reload the group
# (a restart waited 12 s to minutes; docs/operations.md, "A member waits for partitions").
_LEADER_KEPT_BY = ("tansu",)


async def leader_must_stay(bootstrap: str, timeout_s: float) -> bool:
    """Whether this broker's group coordinator mishandles its leader's LeaveGroup (its
    cluster id says Tansu): then a leader that stops sends none, and is dropped when its
    session times out, which elects a new leader properly. A broker that cannot be asked
    is taken to be well-behaved (logged)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        await start_client(admin, bootstrap, timeout_s)
        described = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
    except (BrokerError, KafkaError, TimeoutError) as exc:
        log.info("broker.not_described", error=repr(exc), consequence="the leader leaves")
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    cluster_id = str(described.get("cluster_id") or "").lower()
    return any(name in cluster_id for name in _LEADER_KEPT_BY)


def _noting_leadership(source: Source) -> type[RoundRobinPartitionAssignor]:
    """aiokafka's default assignor (same name and protocol: members of one group agree),
    which marks `source` as the leader when the coordinator has it assign."""

    class Noting(RoundRobinPartitionAssignor):  # type: ignore[misc] # aiokafka is untyped
        @classmethod
        def assign(cls, cluster: Any, member_metadata: Any) -> Any:
            source.leading = True
            return super().assign(cluster, member_metadata)

    return Noting


def _send_no_leave_group(consumer: Any) -> None:
    """Make the consumer's close skip its LeaveGroup (aiokafka has no option for it but
    static membership; its coordinator's _maybe_leave_group otherwise only resets the
    generation, which is all this does)."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not hasattr(coordinator, "_maybe_leave_group"):
        log.warning("group.leave_not_skipped", reason="aiokafka's coordinator changed")
        return

    async def reset_only() -> None:
        coordinator.reset_generation()

    coordinator._maybe_leave_group = reset_only


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc] # aiokafka is untyped
    def __init__(self, on_revoked: RebalanceHook, on_assigned: RebalanceHook) -> None:
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._on_revoked({_p(tp) for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._on_assigned({_p(tp) for tp in assigned})
