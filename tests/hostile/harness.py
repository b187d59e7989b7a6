"""The hostile suite's driver: real members, good traffic with the cases interleaved,
and an audit of the promise per case.

A :class:`HostileRun` owns one run: its topics, group, database and key prefix (from the
settings it is given), the member processes (each with its own metrics port), the
traffic, and the audit. The audit never stops at the first problem: it collects every
case that did not end as promised, with what was expected and what was found, plus the
run-level problems (lag, outbox, members, health, logs), and reports them together.

It reads what came out where it lies: ``messages``, ``statuses`` and ``message_state`` in
the database, ``message_created`` and ``message_status_changed`` events on the outbound
topic, dead letters on the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import collections
import decimal
import functools
import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer import http
from consumer.dedup import DONE_PREFIX, lease_key, status_key
from consumer.engine import create_engine
from consumer.records import MessageKey, StatusKey
from consumer.settings import Settings
from consumer.tools import embedded, topics
from tests.hostile.cases import (
    ANNOUNCED_STATUS,
    CASES,
    MARKERS,
    NAME_MARK,
    PNID,
    PNID_B,
    REFUSAL,
    SENDER_MARK,
    STATUS,
    STORED,
    TEXT_MARK,
    Case,
    Expected,
    ExpectedStatus,
    Record,
    ignored_in,
    loads_exact,
    messages_in,
    status_rank,
    statuses_in,
)
from tests.support import kafka
from tests.support.bodies import text_webhook
from tests.support.procs import ConsumerGroup, ConsumerProc

if TYPE_CHECKING:
    from consumer.deadletters import Header, Parsed


def _product_reader() -> Callable[[Sequence[Header]], Parsed] | None:
    """The product's dead-letter reader, where it has one."""
    try:
        from consumer.deadletters import read
    except ImportError:  # pragma: no cover - before consumer/deadletters.py
        return None
    return read


read_dead_letter = _product_reader()

PARTITIONS = 4
# A producer and readers that handle the 2.2 MB record (value + the 1.9 MB header).
MAX_REQUEST = 8 * 1024 * 1024
MAX_FETCH = 32 * 1024 * 1024
# Reading a topic from offset 0 ends after this long without a record (Tansu answers a
# partition's end from a cache of about 5 s), or as soon as everything expected is in.
READ_IDLE_S = 6.0
# Once everything expected is in, how long to go on reading for anything more (a
# duplicate event or dead letter).
SETTLE_S = 1.0
# A topic that is still growing after this long is read no further (a member
# dead-lettering the same records again and again).
READ_MAX_S = 20.0
GOOD = "good traffic"
STATUS_EVENT = "message_status_changed"
# The outcomes that store what a case holds (its messages; its statuses, for the second).
KEEPS = (STORED, ANNOUNCED_STATUS)


# -- traffic -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One record to send: a copy of a case's record, or a good webhook."""

    partition: int
    record: Record
    case: Case | None = None  # None: good traffic
    index: int = 0  # which record of the case
    copy: int = 0


@dataclass(frozen=True)
class Sent:
    item: Item
    offset: int

    @property
    def coords(self) -> tuple[int, int]:
        return (self.item.partition, self.offset)


def good_webhooks(count: int, seed: int) -> list[bytes]:
    """Meta-shaped webhooks of 1-3 messages, as in the fault suite, with the personal-data
    markers in every contact name and text body and one sender in five."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test traffic, not crypto
    out = []
    for i in range(count):
        wamids = [f"wamid.good.{i:04d}.{j}" for j in range(rng.randint(1, 3))]
        sender = SENDER_MARK if i % 5 == 0 else f"1650555{rng.randrange(50):04d}"
        out.append(
            text_webhook(
                (PNID, PNID_B)[rng.randrange(2)],
                *wamids,
                sender=sender,
                name=f"{NAME_MARK} {i}",
                text=f"{TEXT_MARK} good {i}",
            )
        )
    return out


def plan(good: int, seed: int, cases: Sequence[Case] = CASES) -> tuple[list[Item], list[Item]]:
    """The two halves of the traffic: good webhooks (a third of them delivered again on
    another partition) with every case's first copies interleaved in the first half and
    its second copies, each on another partition, in the second."""
    rng = random.Random(seed)  # noqa: S311
    halves: list[list[Item]] = [[], []]
    bodies = good_webhooks(good, seed)
    for n, value in enumerate(bodies):
        home = rng.randrange(PARTITIONS)
        half = halves[0 if n < len(bodies) // 2 else 1]
        half.append(Item(home, Record(value)))
        if rng.random() < 0.35:
            half.append(Item((home + rng.randrange(1, PARTITIONS)) % PARTITIONS, Record(value)))
    for c, case in enumerate(cases):
        for i, record in enumerate(case.records):
            home = (c + i) % PARTITIONS
            step = (1, 3)[c % 2]  # odd: up to four copies land on four partitions
            for copy in range(case.copies):
                partition = (home + copy * step) % PARTITIONS
                halves[min(copy, 1)].append(Item(partition, record, case, i, copy))
    return _interleave(halves[0]), _interleave(halves[1])


def _interleave(items: list[Item]) -> list[Item]:
    """Spread the hostile items evenly between the good ones."""
    good = [i for i in items if i.case is None]
    hostile = [i for i in items if i.case is not None]
    out: list[Item] = []
    every = max(1, len(good) // max(1, len(hostile)))
    for n, g in enumerate(good):
        if n % every == 0 and hostile:
            out.append(hostile.pop(0))
        out.append(g)
    return out + hostile


async def produce(settings: Settings, items: Sequence[Item]) -> list[Sent]:
    """Send in order (a producer that allows the 2.2 MB record); where each one landed.
    A record with raw header names goes through a producer of its own, in its place."""
    sent: list[Sent] = []
    plain: list[Item] = []
    for item in items:
        if not item.record.raw_headers:
            plain.append(item)
            continue
        sent += await _produce_plain(settings, plain)
        plain = []
        sent.append(Sent(item, await _produce_raw_headers(settings, item)))
    return sent + await _produce_plain(settings, plain)


async def _produce_plain(settings: Settings, items: Sequence[Item]) -> list[Sent]:
    if not items:
        return []
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_idempotence=False,
        acks="all",
        max_request_size=MAX_REQUEST,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(
                settings.inbound_topic,
                i.record.value,
                partition=i.partition,
                headers=list(i.record.headers),
            )
            for i in items
        ]
        metas = [await f for f in futures]
    finally:
        await producer.stop()
    return [Sent(i, m.offset) for i, m in zip(items, metas, strict=True)]


# aiokafka's pure-Python record builder (AIOKAFKA_NO_EXTENSIONS=1) encodes a header name
# with str.encode, which this str subclass answers with the raw bytes wanted.
_RAW_PRODUCER = r"""
import asyncio, json, sys
from aiokafka import AIOKafkaProducer

class Raw(str):
    def encode(self, *args, **kwargs):
        return bytes.fromhex(self.hex_name)

async def main(bootstrap, topic, partition, value_hex, headers_json):
    headers = []
    for name_hex, value_hex_h in json.loads(headers_json):
        name = Raw("raw")
        name.hex_name = name_hex
        headers.append((name, bytes.fromhex(value_hex_h)))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        sent = await producer.send(
            topic, bytes.fromhex(value_hex), partition=int(partition), headers=headers
        )
        print((await sent).offset)
    finally:
        await producer.stop()

asyncio.run(main(*sys.argv[1:]))
"""


async def _produce_raw_headers(settings: Settings, item: Item) -> int:
    headers = [(n.hex(), v.hex()) for n, v in item.record.raw_headers]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _RAW_PRODUCER,
        settings.kafka_bootstrap_servers,
        settings.inbound_topic,
        str(item.partition),
        (item.record.value or b"").hex(),
        json.dumps(headers),
        env={**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, f"the raw-header producer failed ({proc.returncode})"
    return int(out.decode().strip())


# -- reading what came out ---------------------------------------------------------------


async def read_from_zero(
    settings: Settings,
    topic: str,
    key_of: Callable[[ConsumerRecord], Hashable],
    expected: Collection[Hashable],
    idle_s: float = READ_IDLE_S,
    max_s: float = READ_MAX_S,
) -> tuple[list[ConsumerRecord], bool]:
    """Every record of `topic`, each partition read from offset 0 (sought explicitly:
    the embedded broker may answer EARLIEST with a later offset), until a record of every
    `expected` key (by `key_of`) is in and then SETTLE_S passes without another, or
    nothing came for `idle_s` (the broker caches a partition's end for about 5 s).
    Returns the records and whether they were still coming after `max_s`."""
    count = await topics.partition_count(settings.kafka_bootstrap_servers, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        max_partition_fetch_bytes=MAX_FETCH,
        fetch_max_bytes=MAX_FETCH,
    )
    await consumer.start()
    out: list[ConsumerRecord] = []
    missing = set(expected)
    try:
        tps = [TopicPartition(topic, p) for p in range(count)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        start = last = time.monotonic()
        while time.monotonic() - last < (SETTLE_S if not missing else idle_s):
            if time.monotonic() - start > max_s:
                return out, True
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(records)
                missing.difference_update(key_of(r) for r in records)
                last = time.monotonic()
    finally:
        await consumer.stop()
    return out, False


def first_header(record: ConsumerRecord, name: str) -> str | None:
    """The first header of that name (the publisher writes its dlq.* headers before the
    record's own, which may be forged)."""
    for key, value in record.headers or ():
        if key == name:
            return bytes(value or b"").decode("utf-8", "replace")
    return None


@dataclass(frozen=True)
class DeadLetter:
    source: tuple[int, int]
    topic: str | None
    reason: str | None
    detail: str
    at: tuple[int, int]  # where it sits on the DLQ


def dead_letter(record: ConsumerRecord) -> DeadLetter:
    """A DLQ record's own fields: through consumer.deadletters' reader where the product
    has it (it tells the publisher's dlq.* headers from forged inbound ones), else the
    first header of each name."""
    if read_dead_letter is None:
        fields = {
            n: first_header(record, f"dlq.{n}")
            for n in ("reason", "detail", "source.topic", "source.partition", "source.offset")
        }
    else:
        parsed = read_dead_letter(tuple(record.headers or ()))
        fields = {
            n: parsed.get(f"dlq.{n}")
            for n in ("reason", "detail", "source.topic", "source.partition", "source.offset")
        }
    return DeadLetter(
        source=(_int(fields["source.partition"]), _int(fields["source.offset"])),
        topic=fields["source.topic"],
        reason=fields["reason"],
        detail=fields["detail"] or "",
        at=(record.partition, record.offset),
    )


def _int(text: str | None) -> int:
    return int(text) if text and text.isdigit() else -1


@dataclass
class Row:
    sender: str
    message_type: str
    message_timestamp: str
    contact_name: str | None
    contact_wa_id: str | None
    raw: Any


async def read_rows(database_url: str) -> dict[tuple[str, str], list[Row]]:
    """Every stored message, by (phone_number_id, source_id); raw JSON read as text and
    parsed here, so the test sees what the column really holds."""
    engine = create_engine(database_url, pool_size=1, timeout_s=10)
    query = sa.text(
        "SELECT phone_number_id, source_id, sender, message_type, message_timestamp, "
        "contact_name, contact_wa_id, CAST(raw AS TEXT) FROM messages"
    )
    out: dict[tuple[str, str], list[Row]] = collections.defaultdict(list)
    try:
        async with engine.connect() as conn:
            for r in await conn.execute(query):
                try:
                    raw = loads_exact(r[7])
                except (TypeError, ValueError, RecursionError):
                    raw = r[7]
                out[(r[0], r[1])].append(Row(r[2], r[3], r[4], r[5], r[6], raw))
    finally:
        await engine.dispose()
    return dict(out)


StatusKeyT = tuple[str, str, str]  # (phone_number_id, id, word)
MessageId = tuple[str, str]  # (phone_number_id, id): the message a status is about


@dataclass
class StatusRow:
    """A row of ``statuses`` (its key is where it is filed)."""

    rank: int | None
    outcome: str
    recipient_id: str
    status_timestamp: str
    raw: Any
    event_id: str
    source: tuple[str, int, int]  # (topic, partition, offset)


@dataclass
class StatusEvent:
    """A message_status_changed event as read from the outbound topic."""

    body: dict[str, Any]
    key: bytes | None
    at: tuple[int, int]  # (partition, offset) on the outbound topic


async def read_status_rows(
    database_url: str,
) -> tuple[dict[StatusKeyT, list[StatusRow]], dict[MessageId, list[str]]]:
    """Every stored status update, by (phone_number_id, status_id, status), raw JSON read
    as text; and every message's state (its status word), by (phone_number_id,
    status_id)."""
    engine = create_engine(database_url, pool_size=1, timeout_s=10)
    rows_query = sa.text(
        "SELECT phone_number_id, status_id, status, rank, outcome, recipient_id, "
        "status_timestamp, CAST(raw AS TEXT), event_id, source_topic, source_partition, "
        "source_offset FROM statuses"
    )
    state_query = sa.text("SELECT phone_number_id, status_id, status FROM message_state")
    rows: dict[StatusKeyT, list[StatusRow]] = collections.defaultdict(list)
    states: dict[MessageId, list[str]] = collections.defaultdict(list)
    try:
        async with engine.connect() as conn:
            for r in await conn.execute(rows_query):
                try:
                    raw = loads_exact(r[7])
                except (TypeError, ValueError, RecursionError):
                    raw = r[7]
                rows[(r[0], r[1], r[2])].append(
                    StatusRow(r[3], r[4], r[5], r[6], raw, r[8], (r[9], int(r[10]), int(r[11])))
                )
            for r in await conn.execute(state_query):
                states[(r[0], r[1])].append(r[2])
    finally:
        await engine.dispose()
    return dict(rows), dict(states)


async def db_counts(database_url: str) -> tuple[int, int]:
    """(rows in messages, rows in the outbox)."""
    engine = create_engine(database_url, pool_size=1, timeout_s=10)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT count(*) FROM messages"))).scalar_one()
            box = (await conn.execute(sa.text("SELECT count(*) FROM outbox"))).scalar_one()
            return int(rows), int(box)
    finally:
        await engine.dispose()


# -- comparing values exactly ------------------------------------------------------------


def difference(expected: Any, got: Any, path: str = "") -> str | None:
    """Where `got` differs from `expected`, or None: types must match (an int is not a
    float), floats by their repr (-0.0 is not 0.0), dicts by keys and values."""
    where = path or "value"
    if type(expected) is not type(got):
        return f"{where}: expected {_short(expected)}, got {_short(got)}"
    if isinstance(expected, dict):
        if set(expected) != set(got):
            return f"{where}: keys {sorted(expected)} expected, got {sorted(got)}"
        pairs = [(expected[k], got[k], f"{path}.{k}" if path else k) for k in expected]
        return next((d for a, b, p in pairs if (d := difference(a, b, p))), None)
    if isinstance(expected, list):
        if len(expected) != len(got):
            return f"{where}: {len(expected)} items expected, got {len(got)}"
        pairs = [(a, b, f"{path}[{n}]") for n, (a, b) in enumerate(zip(expected, got, strict=True))]
        return next((d for a, b, p in pairs if (d := difference(a, b, p))), None)
    if isinstance(expected, float):
        same = repr(expected) == repr(got) or (math.isnan(expected) and math.isnan(got))
        return None if same else f"{where}: expected {expected!r}, got {got!r}"
    if isinstance(expected, decimal.Decimal):  # a number as written (cases.loads_exact)
        same = expected == got and expected.is_signed() == got.is_signed()
        return None if same else f"{where}: expected {expected}, got {got}"
    return None if expected == got else f"{where}: expected {_short(expected)}, got {_short(got)}"


def _short(v: Any, width: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= width else f"{text[:width]}... ({len(text)} chars)"


# -- the run -----------------------------------------------------------------------------


@dataclass
class Observed:
    rows: dict[tuple[str, str], list[Row]]
    events: dict[tuple[str, str], list[dict[str, Any]]]
    dead: dict[tuple[int, int], list[DeadLetter]]
    committed: dict[int, int]
    unreadable_events: int = 0
    status_rows: dict[StatusKeyT, list[StatusRow]] = field(default_factory=dict)
    states: dict[MessageId, list[str]] = field(default_factory=dict)
    status_events: dict[StatusKeyT, list[StatusEvent]] = field(default_factory=dict)


@dataclass
class Verdict:
    """The audit's result: problems per case (and for the good traffic), run-level ones,
    and a one-word outcome per case (to compare two databases' runs)."""

    database: str
    cases: Sequence[Case]
    problems: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    run: list[str] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def report(self) -> str:
        failed = [n for n, p in self.problems.items() if p and n != GOOD]
        lines = [
            f"hostile suite on {self.database}: {len(failed)} of {len(self.cases)} case(s) broke "
            f"the promise, {len(self.problems.get(GOOD, []))} good-traffic problem(s), "
            f"{len(self.run)} run-level problem(s)"
        ]
        lines += [f"  run: {p}" for p in self.run]
        lines.append(f"  timings (s from the start): {self.timings}")
        for name, problems in self.problems.items():
            case = next((c for c in self.cases if c.name == name), None)
            want = _promise(case) if case else "every message stored once, announced once"
            for p in problems:
                lines.append(f"  case {name!r}: expected {want}; got {p}")
        kept = [c.name for c in self.cases if c.name not in failed]
        lines.append(f"  {len(kept)} case(s) as promised: {kept}")
        return "\n".join(lines)

    @property
    def ok(self) -> bool:
        return not self.run and not any(self.problems.values())


def _promise(case: Case) -> str:
    if case.expect == STORED:
        return "stored once and announced once, values as sent"
    if case.expect == ANNOUNCED_STATUS:
        return (
            "each status stored once as sent, its message's state the highest sent, "
            "announced once if it moved the state forward (or is not in the order), "
            "never if stale, in order on the topic; its messages stored and announced once"
        )
    if case.expect == STATUS:
        return "no row, no event, no dead letter"
    extra = f" with dlq.detail holding {case.detail!r}" if case.detail else ""
    return f"each copy dead-lettered once as {case.expect!r}{extra}, nothing stored"


class HostileRun:
    """One run of the suite against one database."""

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        *,
        database: str,
        refusal: str,
        good: int,
        cases: Sequence[Case] = CASES,
        seed: int = 11,
        inbound_config: dict[str, str] | None = None,
    ) -> None:
        """`inbound_config`: topic settings for the inbound topic (Apache Kafka refuses
        a record above max.message.bytes, 1 MiB by default, and the suite sends one of
        1.9 MB to see it dead-lettered as oversize; Tansu has no such limit)."""
        self.inbound_config = inbound_config or {}
        self.cases = cases
        self.settings = settings
        self.database = database
        self.refusal = refusal
        self.group = ConsumerGroup(settings, workdir)
        self.ports: dict[int, int] = {}
        self.halves = plan(good, seed, cases)
        self.sent: list[Sent] = []
        self.verdict = Verdict(database, cases)
        self._t0 = time.monotonic()

    def _mark(self, what: str) -> None:
        self.verdict.timings[what] = round(time.monotonic() - self._t0, 1)

    # -- driving --------------------------------------------------------------------

    def start_members(self, count: int) -> list[ConsumerProc]:
        started = []
        for _ in range(count):
            port = embedded.free_port()
            (proc,) = self.group.start(1, metrics_port=port)
            self.ports[proc.index] = port
            started.append(proc)
        return started

    async def drive(self, first: int, late: int) -> None:
        """`first` members and the first half; then `late` more members join while the
        second half flows (a rebalance in the middle of the traffic)."""
        if self.inbound_config:  # created first, with its settings; kept as it is below
            await _create_topic(
                self.settings, self.settings.inbound_topic, PARTITIONS, self.inbound_config
            )
        await topics.create_topics(
            self.settings.kafka_bootstrap_servers,
            {
                self.settings.inbound_topic: PARTITIONS,
                self.settings.outbound_topic: PARTITIONS,
                self.settings.dlq_topic: 1,
            },
        )
        self.start_members(first)
        await asyncio.to_thread(self.group.wait_all_assigned)
        self._mark("members assigned")
        self.sent += await produce(self.settings, self.halves[0])
        joining = self.start_members(late)
        await self._send_across_rebalance(self.halves[1], joining)
        self._mark("traffic sent")

    async def _send_across_rebalance(self, items: list[Item], joining: list[ConsumerProc]) -> None:
        """Send in small chunks, each once the group has committed the one before (or
        after a few seconds), until the joining members hold partitions; the last quarter
        is held back until they do. So records are in flight while the group rebalances,
        and some arrive after it."""
        chunk = 8
        held_back = len(items) // 4 if joining else 0
        n = 0
        while n < len(items) - held_back and not all(p.assigned() for p in joining):
            sent = await produce(self.settings, items[n : min(n + chunk, len(items) - held_back)])
            self.sent += sent
            n += len(sent)
            await self._committed_or_timeout(sent, timeout_s=4.0)
        deadline = time.monotonic() + 30
        while not all(p.assigned() for p in joining):
            if time.monotonic() > deadline or any(p.proc.poll() is not None for p in joining):
                self.verdict.run.append("the joining member(s) never held partitions")
                break
            await asyncio.sleep(0.1)
        else:
            if joining:
                self._mark(f"joined after {n} of {len(items)} second-half records")
        self.sent += await produce(self.settings, items[n:])

    async def _committed_or_timeout(self, sent: list[Sent], timeout_s: float) -> None:
        ends: dict[int, int] = {}
        for s in sent:
            ends[s.item.partition] = max(ends.get(s.item.partition, 0), s.offset + 1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen = await kafka.committed(self.settings, list(ends))
            if all(seen[p] >= end for p, end in ends.items()):
                return
            await asyncio.sleep(0.1)

    @property
    def ends(self) -> dict[int, int]:
        ends: dict[int, int] = {}
        for s in self.sent:
            ends[s.item.partition] = max(ends.get(s.item.partition, 0), s.offset + 1)
        return ends

    async def settle(self, *, deadline_s: float = 60.0, stall_s: float = 12.0) -> dict[int, int]:
        """Wait for lag zero, then an empty outbox; give up when nothing moves (committed
        offsets, rows, outbox) for `stall_s`, or at `deadline_s`. Returns the committed
        offsets; a shortfall is a run-level problem."""
        ends = self.ends
        start = last_move = time.monotonic()
        state: Any = None
        seen: dict[int, int] = {}
        while True:
            seen = await kafka.committed(self.settings, list(ends))
            counts = await db_counts(self.settings.database_url)
            lagging = {p: (seen[p], end) for p, end in ends.items() if seen[p] < end}
            if not lagging and counts[1] == 0:
                self._mark("drained")
                return seen
            now = time.monotonic()
            if (seen, counts) != state:
                state, last_move = (seen, counts), now
            if now - last_move > stall_s or now - start > deadline_s:
                break
            await asyncio.sleep(0.3)
        self._mark("gave up draining")
        if lagging:
            self.verdict.run.append(
                "offsets not committed (lag not zero): partition: (committed, produced) "
                f"{lagging}; nothing moved for {time.monotonic() - last_move:.0f}s"
            )
        if counts[1]:
            self.verdict.run.append(f"the outbox still holds {counts[1]} row(s)")
        return seen

    async def observe(self, committed: dict[int, int]) -> Observed:
        want_keys: set[Hashable] = {m.key for m in self.expected_stored()}
        want_keys |= self.must_announce()
        want_dead = {s.coords for s in self.sent if s.item.case and s.item.case.dead}

        (out_records, out_capped), (dlq_records, dlq_capped) = await asyncio.gather(
            read_from_zero(self.settings, self.settings.outbound_topic, _event_key, want_keys),
            read_from_zero(
                self.settings, self.settings.dlq_topic, lambda r: dead_letter(r).source, want_dead
            ),
        )
        self._mark("topics read")
        for topic, capped in (("outbound", out_capped), ("dead-letter", dlq_capped)):
            if capped:
                self.verdict.run.append(
                    f"the {topic} topic was still growing after {READ_MAX_S:g}s of reading"
                )
        events: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
        status_events: dict[StatusKeyT, list[StatusEvent]] = collections.defaultdict(list)
        unreadable = 0
        for r in out_records:
            try:
                e = loads_exact(r.value)
                if e["event"] == STATUS_EVENT:
                    s = e["status"]
                    key = (e["phone_number_id"], s["id"], s["status"])
                    status_events[key].append(StatusEvent(e, r.key, (r.partition, r.offset)))
                else:
                    events[(e["phone_number_id"], e["message"]["source_id"])].append(e)
            except (ValueError, KeyError, TypeError, RecursionError):
                unreadable += 1
        dead: dict[tuple[int, int], list[DeadLetter]] = collections.defaultdict(list)
        for r in dlq_records:
            letter = dead_letter(r)
            dead[letter.source].append(letter)
        rows = await read_rows(self.settings.database_url)
        status_rows, states = await read_status_rows(self.settings.database_url)
        return Observed(
            rows,
            dict(events),
            dict(dead),
            committed,
            unreadable,
            status_rows,
            states,
            dict(status_events),
        )

    # -- what must come out ---------------------------------------------------------

    def expected_stored(self) -> list[Expected]:
        """Every message that must be stored: good traffic, the STORED cases and the
        messages beside statuses in ANNOUNCED_STATUS ones."""
        out: dict[tuple[str, str], Expected] = {}
        for s in self.sent:
            if s.item.case is None or s.item.case.expect in KEEPS:
                for m in _messages(s.item.record.value):
                    out.setdefault(m.key, m)
        return list(out.values())

    def expected_statuses(self) -> list[ExpectedStatus]:
        """Every status update that must be stored (the ANNOUNCED_STATUS cases'), one
        per key (the first sent)."""
        out: dict[StatusKeyT, ExpectedStatus] = {}
        for s in self.sent:
            if s.item.case is not None and s.item.case.expect == ANNOUNCED_STATUS:
                for st in _statuses(s.item.record.value):
                    out.setdefault(st.key, st)
        return list(out.values())

    def must_announce(self) -> set[StatusKeyT]:
        """The status updates that are announced whatever the order they come in: each
        message's highest, and every word not in the order."""
        return {s.key for s in _must_announce(self.expected_statuses())}

    # -- the audit ------------------------------------------------------------------

    def audit(self, obs: Observed) -> Verdict:
        v = self.verdict
        owner: dict[tuple[str, str], str] = {}  # key -> the case (or good traffic) it is in
        for s in self.sent:
            for m in _messages(s.item.record.value):
                owner.setdefault(m.key, s.item.case.name if s.item.case else GOOD)
        by_coords = {s.coords: s for s in self.sent}
        if obs.unreadable_events:
            v.run.append(f"{obs.unreadable_events} outbound record(s) are not readable events")
        self._audit_good(obs)
        for case in self.cases:
            self._audit_case(case, obs)
            v.outcomes[case.name] = self._outcome(case, obs)
        for key in set(obs.rows) | set(obs.events):
            if key not in owner:
                v.run.append(f"a row or event for a key nobody sent: {_short(key)}")
        self._check_status_owners(obs)
        self._check_ignored()
        self._check_statuses_counted()
        for coords, letters in obs.dead.items():
            sent = by_coords.get(coords)
            if sent is None:
                v.run.append(
                    f"{len(letters)} dead letter(s) whose source {coords} is no record we sent "
                    f"(reason {letters[0].reason!r})"
                )
            elif sent.item.case is None:
                v.problems[GOOD].append(
                    f"a good record dead-lettered at {coords}: {letters[0].reason!r} "
                    f"({letters[0].detail[:120]!r})"
                )
        return v

    def _check_ignored(self) -> None:
        """No change vanishes: the members counted (batch.done's ignored_changes, what
        feeds wamid_guard_changes_ignored_total) at least the changes that create nothing
        in the records that are not dead-lettered (a redelivered record counts again)."""
        if not self.group.procs:
            return
        kept = [s for s in self.sent if not (s.item.case and s.item.case.dead)]
        want = sum(ignored_in(s.item.record.value) for s in kept)
        counted = self.group.totals("ignored_changes")
        if counted < want:
            self.verdict.run.append(
                f"{counted} ignored change(s) counted in batch.done, {want} sent"
            )

    def _check_status_owners(self, obs: Observed) -> None:
        """No status row, event or state of something nobody sent."""
        v = self.verdict
        sent_statuses = {st.key for s in self.sent for st in _statuses(s.item.record.value)}
        for skey in sorted(set(obs.status_rows) | set(obs.status_events)):
            if skey not in sent_statuses:
                v.run.append(f"a status row or event for a status nobody sent: {_short(skey)}")
        for mid in sorted(set(obs.states) - {k[:2] for k in sent_statuses}):
            v.run.append(f"a message_state row for a message no status was sent for: {_short(mid)}")

    def _check_statuses_counted(self) -> None:
        """No status vanishes: the members decoded (batch.done's statuses) at least the
        status updates of the records that are not dead-lettered."""
        if not self.group.procs:
            return
        kept = [s for s in self.sent if not (s.item.case and s.item.case.dead)]
        want = sum(
            1
            for s in kept
            for st in _statuses(s.item.record.value)
            if st.change_field == "messages"
        )
        counted = self.group.totals("statuses")
        if counted < want:
            self.verdict.run.append(f"{counted} status(es) counted in batch.done, {want} sent")

    def _audit_good(self, obs: Observed) -> None:
        good = [m for s in self.sent if s.item.case is None for m in _messages(s.item.record.value)]
        unique = {m.key: m for m in good}
        tally: dict[str, list[str]] = collections.defaultdict(list)
        for key, m in unique.items():
            for p in self._message_problems(m, obs):
                tally[p.split(":")[0]].append(f"{key[1]}: {p}")
        for kind, examples in tally.items():
            self.verdict.problems[GOOD].append(
                f"{len(examples)} of {len(unique)} good message(s): {kind}; e.g. {examples[:2]}"
            )
        self._check_consumed([s for s in self.sent if s.item.case is None], obs, GOOD)

    def _check_consumed(self, sent: Iterable[Sent], obs: Observed, name: str) -> None:
        behind = [s.coords for s in sent if obs.committed.get(s.item.partition, 0) <= s.offset]
        if behind:
            self.verdict.problems[name].append(
                f"{len(behind)} record(s) never committed, e.g. at (partition, offset) "
                f"{behind[:3]} (committed: {obs.committed})"
            )

    def _audit_case(self, case: Case, obs: Observed) -> None:
        copies = [s for s in self.sent if s.item.case is case]
        if case.dead:
            self._audit_dead(case, copies, obs)
        else:
            self._audit_kept(case, copies, obs)

    def _audit_dead(self, case: Case, copies: list[Sent], obs: Observed) -> None:
        """Each copy on the DLQ once, with the reason; none of its messages stored."""
        problems = self.verdict.problems[case.name]
        for s in copies:
            problems.extend(self._dead_problems(case, s, obs))
        for key in {m.key for s in copies for m in _messages(s.item.record.value)}:
            rows, events = len(obs.rows.get(key, [])), len(obs.events.get(key, []))
            if rows or events:
                problems.append(
                    f"{rows} row(s) and {events} event(s) for {_short(key)} (it must not be stored)"
                )
        problems.extend(_statuses_not_stored(copies, obs))

    def _audit_kept(self, case: Case, copies: list[Sent], obs: Observed) -> None:
        """No copy on the DLQ; every message stored and announced once, exactly; the
        statuses of an ANNOUNCED_STATUS case as it promises, any other case's none."""
        problems = self.verdict.problems[case.name]
        self._check_consumed(copies, obs, case.name)
        for s in copies:
            if letters := obs.dead.get(s.coords, []):
                problems.append(
                    f"copy {s.item.copy} at {s.coords} dead-lettered as {letters[0].reason!r} "
                    f"({letters[0].detail[:160]!r})"
                )
        keys = {m.key: m for s in reversed(copies) for m in _messages(s.item.record.value)}
        tally: dict[str, list[str]] = collections.defaultdict(list)
        for key, m in keys.items():
            for p in self._message_problems(m, obs):
                tally[p.split(":")[0]].append(f"{_short(key[1], 40)}: {p}")
        for examples in tally.values():
            many = f"{len(examples)} of {len(keys)} message(s): " if len(keys) > 1 else ""
            more = f" (and {len(examples) - 1} more)" if len(examples) > 1 else ""
            problems.append(f"{many}{examples[0]}{more}")
        ids = [e[0]["event_id"] for k in keys if (e := obs.events.get(k))]
        if len(set(ids)) != len(ids):
            problems.append(f"two keys share an event_id: {ids}")
        if case.expect == ANNOUNCED_STATUS:
            problems.extend(self._status_problems(copies, obs, ids))
        else:
            problems.extend(_statuses_not_stored(copies, obs))

    def _status_problems(self, copies: list[Sent], obs: Observed, taken: list[str]) -> list[str]:
        """Every status of the case stored once as sent; each message's state the
        highest it was sent; announced once if it must be (the highest, a word not in the
        order) or if its row says it moved the state, never if stale; a message's
        announced statuses in increasing order on each partition; no two statuses (or a
        status and a message of the case: `taken`) share an event_id."""
        sent: dict[StatusKeyT, list[ExpectedStatus]] = collections.defaultdict(list)
        holders: dict[StatusKeyT, set[tuple[int, int]]] = collections.defaultdict(set)
        for s in copies:
            for st in _statuses(s.item.record.value):
                if st not in sent[st.key]:
                    sent[st.key].append(st)
                holders[st.key].add(s.coords)
        must = {s.key for s in _must_announce([v[0] for v in sent.values()])}
        tally: dict[str, list[str]] = collections.defaultdict(list)
        messages: dict[MessageId, list[StatusKeyT]] = collections.defaultdict(list)
        for key, variants in sent.items():
            messages[key[:2]].append(key)
            where = f"{_short(key[1], 40)} {_short(key[2], 20)}"
            for p in self._one_status_problems(variants, holders[key], key in must, obs):
                tally[p.split(":")[0]].append(f"{where}: {p}")
        for mid, keys in messages.items():
            for p in _message_state_problems(mid, keys, obs):
                tally[p.split(":")[0]].append(f"{_short(mid[1], 40)}: {p}")
        out = []
        for examples in tally.values():
            many = f"{len(examples)} of {len(sent)} status(es): " if len(sent) > 1 else ""
            more = f" (and {len(examples) - 1} more)" if len(examples) > 1 else ""
            out.append(f"{many}{examples[0]}{more}")
        ids = [str(e[0].body.get("event_id")) for k in sent if (e := obs.status_events.get(k))]
        if len(set(ids + taken)) != len(ids) + len(taken):
            out.append(f"two statuses (or a status and a message) share an event_id: {ids}")
        return out

    def _one_status_problems(
        self,
        variants: list[ExpectedStatus],
        holders: set[tuple[int, int]],
        must: bool,
        obs: Observed,
    ) -> list[str]:
        """One row with the values of one of the variants sent under its key (the first
        copy to reach the fence wins); one event if announced, saying the same as the
        row, none if stale."""
        key = variants[0].key
        rows = obs.status_rows.get(key, [])
        events = obs.status_events.get(key, [])
        out = []
        row = rows[0] if len(rows) == 1 else None
        if row is None:
            out.append(f"{len(rows)} status rows: one expected")
        else:
            out += _closest(variants, lambda v: _status_row_differences(v, row), "status row")
            topic, *at = row.source
            if topic != self.settings.inbound_topic or tuple(at) not in holders:
                out.append(
                    f"status row source: expected one of {sorted(holders)} on "
                    f"{self.settings.inbound_topic!r}, got {row.source}"
                )
            if row.outcome not in ("announced", "stale"):
                out.append(
                    f"status row outcome: 'announced' or 'stale' expected, got {row.outcome!r}"
                )
            elif must and row.outcome == "stale":
                why = "a word not in the order" if variants[0].rank is None else "the highest"
                out.append(f"stale: announced expected ({why} of its message)")
        announced = must or (row is not None and row.outcome == "announced")
        if announced and len(events) != 1:
            out.append(f"{len(events)} status events: one expected")
        if not announced and events:
            out.append(f"{len(events)} status event(s) of a stale status: none expected")
        if events:
            chosen = [v for v in variants if row is None or not _status_row_differences(v, row)]
            out += _closest(
                chosen or variants,
                lambda v: _status_event_differences(v, events[0], row),
                "status event",
            )
        ids = {e.body.get("event_id") for e in events}
        if len(ids) > 1:
            out.append(f"status event copies with {len(ids)} event_ids: one expected")
        return out

    def _dead_problems(self, case: Case, s: Sent, obs: Observed) -> list[str]:
        letters = obs.dead.get(s.coords, [])
        where = f"copy {s.item.copy} at (partition, offset) {s.coords}"
        if not letters:
            stored = [m.key for m in _messages(s.item.record.value) if m.key in obs.rows]
            fate = "stored" if stored else "not dead-lettered"
            at = obs.committed.get(s.item.partition, 0)
            if at <= s.offset:
                fate += f", not committed (partition {s.item.partition} committed up to {at})"
            return [f"{where}: {fate}"]
        out = []
        at = obs.committed.get(s.item.partition, 0)
        if at <= s.offset:
            out.append(f"{where}: dead-lettered but not committed (partition at {at})")
        if len(letters) > 1:
            out.append(
                f"{where}: dead-lettered {len(letters)} times (DLQ partition:offset "
                f"{[f'{p}:{o}' for p, o in (d.at for d in letters)]}, reasons "
                f"{[d.reason for d in letters]})"
            )
        letter = letters[0]
        if letter.reason != case.expect:
            out.append(f"{where}: dlq.reason {letter.reason!r} ({letter.detail[:160]!r})")
        if letter.topic != self.settings.inbound_topic:
            out.append(f"{where}: dlq.source.topic {letter.topic!r}")
        want = self.refusal if case.detail == REFUSAL else case.detail
        if want and want not in letter.detail:
            out.append(f"{where}: dlq.detail {letter.detail[:200]!r} does not name {want!r}")
        return out

    def _message_problems(self, m: Expected, obs: Observed) -> list[str]:
        """Exactly one row and one event for the key, with the values as sent."""
        out = []
        rows = obs.rows.get(m.key, [])
        events = obs.events.get(m.key, [])
        if len(rows) != 1:
            out.append(f"{len(rows)} rows: one expected")
        else:
            out += [f"row {d}" for d in _row_differences(m, rows[0])]
        if len(events) != 1:
            out.append(f"{len(events)} events: one expected")
        if events:
            out += [f"event {d}" for d in _event_differences(m, events[0])]
        return out

    def _outcome(self, case: Case, obs: Observed) -> str:
        """What became of the case, coarsely (to compare two databases' runs): 'as
        promised' if it was kept, else what was found."""
        if not self.verdict.problems.get(case.name):
            return f"as promised ({case.expect})"
        copies = [s for s in self.sent if s.item.case is case]
        letters = [obs.dead.get(s.coords, []) for s in copies]
        reasons = sorted({d.reason or "?" for found in letters for d in found})
        twice = sum(1 for found in letters if len(found) > 1)
        keys = {m.key for s in copies for m in _messages(s.item.record.value)}
        stored = sum(1 for k in keys if k in obs.rows)
        skeys = {st.key for s in copies for st in _statuses(s.item.record.value)}
        stored_statuses = sum(1 for k in skeys if k in obs.status_rows)
        behind = any(obs.committed.get(s.item.partition, 0) <= s.offset for s in copies)
        found = [f"dead-lettered as {'/'.join(reasons)}"] if reasons else []
        found += [f"{twice} copy(ies) dead-lettered more than once"] if twice else []
        found += [f"{stored} of {len(keys)} message(s) stored"] if stored else []
        if stored_statuses:
            found += [f"{stored_statuses} of {len(skeys)} status(es) stored"]
        found += ["not all committed"] if behind else []
        return ", ".join(found) or "not as promised"

    async def execute(self, *, first: int, late: int) -> Verdict:
        """The whole run: Redis poisoned, drive, drain, read, audit, check the members."""
        planted = await self.poison_redis()
        await self.drive(first, late)
        committed = await self.settle()
        observed = await self.observe(committed)
        self.audit(observed)
        await self.check_members()
        self._check_overruled(planted)
        return self.verdict

    async def poison_redis(self) -> collections.Counter[str]:
        """Before any member starts, Redis says what the database does not: of the
        messages to be stored (good traffic, STORED cases, the messages beside statuses)
        and of the status updates (ANNOUNCED_STATUS cases), every third carries a done
        marker of another deployment (as a Redis that outlived its database, or a shared
        prefix, would), every third a key another program wrote without a TTL, and a few
        a hash. Each must be stored (and announced, as its outcome says) all the same,
        and no partition may wait on a key (docs/design.md, "Keys we did not write")."""
        client = aioredis.Redis.from_url(self.settings.redis_url)
        planted: collections.Counter[str] = collections.Counter()
        prefix = self.settings.redis_key_prefix
        planned = [i for items in self.halves for i in items]
        messages = sorted({m.key for i in planned for m in _planned(i)})
        statuses = sorted({st.key for i in planned for st in _planned_statuses(i)})
        names = [lease_key(prefix, MessageKey(pnid, wamid)) for pnid, wamid in messages]
        names += [status_key(prefix, StatusKey(*key)) for key in statuses]
        try:
            pipe = client.pipeline(transaction=False)
            for n, name in enumerate(names):
                if n % 3 == 0:
                    pipe.set(name, f"{DONE_PREFIX}other-deployment:1", ex=3600)
                    planted["done_unconfirmed"] += 1
                elif n % 9 == 1:
                    pipe.hset(name, "not", "ours")
                    planted["foreign"] += 1
                elif n % 3 == 1:
                    pipe.set(name, b"not-ours")
                    planted["foreign"] += 1
            await pipe.execute()
        finally:
            await client.aclose()
        self._mark(f"redis poisoned: {dict(planted)}")
        return planted

    def _check_overruled(self, planted: collections.Counter[str]) -> None:
        """Every planted key was met, and overruled (each at least once)."""
        seen = {
            "done_unconfirmed": self.group.totals("markers_unconfirmed"),
            "foreign": self.group.totals("foreign_keys"),
        }
        for kind, count in planted.items():
            if seen[kind] < count:
                self.verdict.run.append(
                    f"{count} {kind} key(s) planted in Redis, only {seen[kind]} overruled"
                )

    # -- the members at the end -----------------------------------------------------

    async def check_members(self) -> None:
        """All still running, healthy and ready; then SIGTERM exits 0; no marker in a log."""
        run = self.verdict.run
        for p in self.group.procs:
            if p.proc.poll() is not None:
                run.append(f"member {p.index} exited with {p.proc.returncode}:\n{p.log_tail(12)}")
        await asyncio.to_thread(self._check_health)
        self._mark("health asked")
        running = [p for p in self.group.procs if p.proc.poll() is None]
        for p in running:
            p.signal(signal.SIGTERM)
        for p in running:
            try:
                code = await asyncio.to_thread(p.wait, 30)
            except subprocess.TimeoutExpired:  # killed at teardown
                run.append(f"member {p.index} did not exit within 30s of SIGTERM")
                continue
            if code != 0:
                run.append(f"member {p.index} exited with {code} after SIGTERM:\n{p.log_tail(8)}")
        self._mark("members stopped")
        self._check_logs()

    def _check_health(self) -> None:
        for p in self.group.procs:
            if p.proc.poll() is not None:
                continue
            port = self.ports[p.index]
            for path in ("/healthz", "/readyz"):
                deadline = time.monotonic() + 10
                ok, said = False, ""
                while time.monotonic() < deadline:
                    ok, said = http.probe(f"http://127.0.0.1:{port}{path}", 2.0)
                    if ok:
                        break
                    time.sleep(0.3)
                if not ok:
                    self.verdict.run.append(
                        f"member {p.index} {path} did not answer 200: {said[:300]}"
                    )

    def _check_logs(self) -> None:
        for p in self.group.procs:
            for n, line in enumerate(p.log_path.read_bytes().splitlines(), 1):
                found = [m for m in MARKERS if m.encode() in line]
                if found:
                    event = _event_name(line)
                    self.verdict.run.append(
                        f"member {p.index}'s log line {n} ({event}) holds personal data "
                        f"{found}: {line[:240]!r}"
                    )
                    break


async def _create_topic(
    settings: Settings, topic: str, partitions: int, config: dict[str, str]
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=config)])
    finally:
        await admin.close()


def _planned(item: Item) -> tuple[Expected, ...]:
    """The messages of a record to send that must be stored."""
    if item.case is not None and item.case.expect not in KEEPS:
        return ()
    return _messages(item.record.value)


def _planned_statuses(item: Item) -> tuple[ExpectedStatus, ...]:
    """The status updates of a record to send that must be stored."""
    if item.case is None or item.case.expect != ANNOUNCED_STATUS:
        return ()
    return _statuses(item.record.value)


@functools.lru_cache(maxsize=1024)
def _messages(value: bytes | None) -> tuple[Expected, ...]:
    """messages_in, once per distinct body (the audit asks often; one body is 250 KB)."""
    return tuple(messages_in(value))


@functools.lru_cache(maxsize=1024)
def _statuses(value: bytes | None) -> tuple[ExpectedStatus, ...]:
    """statuses_in, once per distinct body."""
    return tuple(statuses_in(value))


def _must_announce(statuses: Iterable[ExpectedStatus]) -> list[ExpectedStatus]:
    """Of these (one per key), those announced in any order of arrival: each message's
    highest status of the order (it finds the state below it, whenever it comes), and
    every word not in the order."""
    top: dict[MessageId, ExpectedStatus] = {}
    out = []
    for s in statuses:
        if s.rank is None:
            out.append(s)
        elif s.message not in top or s.rank > (top[s.message].rank or 0):
            top[s.message] = s
    return out + list(top.values())


def _statuses_not_stored(copies: Iterable[Sent], obs: Observed) -> list[str]:
    """Problems if any status of these records (under a change of any field) has a row,
    an event or its message a state."""
    out = []
    keys = {st.key for s in copies for st in _statuses(s.item.record.value)}
    for key in sorted(keys):
        rows, events = len(obs.status_rows.get(key, [])), len(obs.status_events.get(key, []))
        if rows or events:
            out.append(
                f"{rows} status row(s) and {events} status event(s) for {_short(key)} "
                "(it must not be stored)"
            )
    out.extend(
        f"a message_state row for {_short(mid)} (nothing of it must be stored)"
        for mid in sorted({k[:2] for k in keys} & set(obs.states))
    )
    return out


def _message_state_problems(mid: MessageId, keys: list[StatusKeyT], obs: Observed) -> list[str]:
    """The message's state is its highest status of the order (none if it was sent only
    words Meta may add); its announced statuses of the order reach each partition in
    increasing order."""
    out = []
    ranked = [k for k in keys if status_rank(k[2]) is not None]
    want = [max(ranked, key=lambda k: status_rank(k[2]) or 0)[2]] if ranked else []
    got = obs.states.get(mid, [])
    if got != want:
        out.append(f"message_state: expected {want}, got {got}")
    seen: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
    for k in ranked:
        for e in obs.status_events.get(k, [])[:1]:
            seen[e.at[0]].append((e.at[1], k[2]))
    for partition, found in sorted(seen.items()):
        words = [w for _, w in sorted(found)]
        ranks = [status_rank(w) or 0 for w in words]
        if any(a >= b for a, b in itertools.pairwise(ranks)):
            out.append(
                f"topic order: expected increasing, got {words} on outbound partition {partition}"
            )
    return out


def _closest(
    variants: list[ExpectedStatus], differences: Callable[[ExpectedStatus], list[str]], what: str
) -> list[str]:
    """Nothing if one of the variants sent under a key matches; else what differs from
    the first."""
    found = [differences(v) for v in variants]
    return [] if any(not d for d in found) else [f"{what} {d}" for d in found[0]]


def _conversation(pnid: str, recipient: Any) -> bytes:
    """The Kafka key of a contact's events (schemas/message_status_changed.v1.json)."""
    if ":" in pnid:
        return f":{len(pnid)}:{pnid}:{recipient}".encode()
    return f"{pnid}:{recipient}".encode()


def _status_row_differences(s: ExpectedStatus, row: StatusRow) -> list[str]:
    out = []
    for name, want, got in (
        ("recipient_id", s.recipient, row.recipient_id),
        ("status_timestamp", str(s.timestamp), row.status_timestamp),
        ("rank", s.rank, row.rank),
    ):
        if want != got:
            out.append(f"{name}: expected {_short(want)}, got {_short(got)}")
    d = difference(s.raw, row.raw, "raw")
    if d:
        out.append(d)
    return out


def _status_event_differences(
    s: ExpectedStatus, e: StatusEvent, row: StatusRow | None
) -> list[str]:
    body = e.body
    out = []
    checks: list[tuple[str, Any, Any]] = [
        ("event", STATUS_EVENT, body.get("event")),
        ("phone_number_id", s.key[0], body.get("phone_number_id")),
        ("display_phone_number", s.display, body.get("display_phone_number")),
        ("key", _conversation(s.key[0], s.recipient), e.key),
    ]
    if row is not None:
        source = body.get("source") or {}
        found = (source.get("topic"), source.get("partition"), source.get("offset"))
        checks += [("event_id", row.event_id, body.get("event_id")), ("source", row.source, found)]
    for name, want, got in checks:
        if want != got:
            out.append(f"{name}: expected {_short(want)}, got {_short(got)}")
    d = difference(s.event_status, body.get("status"), "status")
    if d:
        out.append(d)
    return out


def _runs(counts: list[int]) -> str:
    """[1, 1, 1, 0] as '3x1 1x0' (the big record has 1,800 keys)."""
    tally = collections.Counter(counts)
    return " ".join(f"{n}x{c}" for c, n in sorted(tally.items())) or "none"


def _event_name(line: bytes) -> str:
    try:
        return str(json.loads(line).get("event"))
    except (ValueError, AttributeError):
        return "not a JSON line"


def _event_key(record: ConsumerRecord) -> tuple[str, ...] | None:
    """A message event's (phone_number_id, source_id), a status event's
    (phone_number_id, id, status)."""
    try:
        e = json.loads(record.value)
        if e["event"] == STATUS_EVENT:
            return (e["phone_number_id"], e["status"]["id"], e["status"]["status"])
        return (e["phone_number_id"], e["message"]["source_id"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return None


def _row_differences(m: Expected, row: Row) -> list[str]:
    out = []
    for name, want, got in (
        ("sender", m.sender, row.sender),
        ("message_type", m.type, row.message_type),
        ("message_timestamp", m.timestamp, row.message_timestamp),
        ("contact_wa_id", m.contact_wa_id, row.contact_wa_id),
    ):
        if want != got:
            out.append(f"{name}: expected {_short(want)}, got {_short(got)}")
    # A text column cannot hold NUL: U+FFFD standing in for it there is fine, the JSON
    # columns keep the name as sent.
    names = {m.contact_name, m.contact_name.replace("\x00", "\ufffd")} if m.contact_name else {None}
    if row.contact_name not in names:
        out.append(
            f"contact_name: expected {_short(m.contact_name)}, got {_short(row.contact_name)}"
        )
    d = difference(m.raw, row.raw, "raw")
    if d:
        out.append(d)
    return out


def _event_differences(m: Expected, e: dict[str, Any]) -> list[str]:
    msg = e.get("message", {})
    contact = e.get("contact") or {}
    out = []
    for name, want, got in (
        ("phone_number_id", m.key[0], e.get("phone_number_id")),
        ("message.source_id", m.key[1], msg.get("source_id")),
        ("message.from", m.sender, msg.get("from")),
        ("message.type", m.type, msg.get("type")),
        ("message.timestamp", m.timestamp, msg.get("timestamp")),
        ("contact.name", m.contact_name, contact.get("name")),
        ("contact.wa_id", m.contact_wa_id, contact.get("wa_id")),
    ):
        if want != got:
            out.append(f"{name}: expected {_short(want)}, got {_short(got)}")
    content = {
        k: v for k, v in msg.items() if k not in ("id", "source_id", "from", "type", "timestamp")
    }
    d = difference(m.content, content, "message")
    if d:
        out.append(d)
    return out
