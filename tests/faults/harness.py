"""The fault suite's driver: real consumer processes, real services, injected faults.

A :class:`FaultRun` owns one scenario: its topics, group, database and key prefix; the
consumer processes; the traffic (unique messages, duplicates on the same and on other
partitions, poison records); and the final audit of the promise (docs/design.md, P1-P6):

* per (phone_number_id, wamid): exactly one row; at least one event, every copy with one
  event_id; exactly one event when the scenario involves no crash; nothing missing, no
  event without a row;
* the dead-letter topic holds exactly the poison records;
* lag back to zero after healing (every produced offset committed);
* and the scenario's own proof that the fault really bit.

Each audit appends its figures to the JSON-lines file named by ``FAULT_REPORT`` (if set),
from which docs/reliability.md's table is made (``python -m tests.faults.report``).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import itertools
import json
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from consumer.settings import Settings
from tests.support import kafka
from tests.support.bodies import text_webhook
from tests.support.procs import ConsumerGroup, ConsumerProc, wait_until

PNIDS = ("106540352242922", "106540352249999")


@dataclass(frozen=True)
class Profile:
    """How big a run is: `fast` for CI, `long` for a soak here (FAULT_PROFILE=long)."""

    name: str
    messages: int
    waves: int
    kills: int

    @classmethod
    def current(cls) -> Profile:
        if os.environ.get("FAULT_PROFILE", "fast") == "long":
            return cls("long", messages=3000, waves=6, kills=6)
        return cls("fast", messages=240, waves=3, kills=2)


@dataclass
class Traffic:
    """What the scenario sends: records per wave, and what must come out."""

    waves: list[list[tuple[int, bytes]]]
    expected: set[tuple[str, str]]
    poison: int
    copies: int  # message copies sent, duplicates included

    @property
    def records(self) -> int:
        return sum(len(w) for w in self.waves)


def make_traffic(
    messages: int,
    *,
    partitions: int,
    waves: int,
    seed: int,
    dup_ratio: float = 0.5,
    poison_every: int = 40,
) -> Traffic:
    """Meta-shaped webhooks of 1-3 messages; about `dup_ratio` of them delivered again,
    half of the copies on another partition (and some within the same wave), with a
    poison record every `poison_every` bodies."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test traffic, not crypto
    run = uuid.uuid4().hex[:6]
    bodies: list[tuple[bytes, int]] = []
    expected: set[tuple[str, str]] = set()
    i = 0
    while i < messages:
        count = min(rng.randint(1, 3), messages - i)
        pnid = PNIDS[rng.randrange(len(PNIDS))]
        wamids = [f"wamid.{run}.{j:06d}" for j in range(i, i + count)]
        expected |= {(pnid, w) for w in wamids}
        sender = f"1650555{rng.randrange(50):04d}"
        bodies.append((text_webhook(pnid, *wamids, sender=sender, text="fault suite"), count))
        i += count
    records: list[tuple[int, bytes]] = []
    copies = 0
    poison = 0
    for n, (body, count) in enumerate(bodies):
        home = rng.randrange(partitions)
        records.append((home, body))
        copies += count
        if rng.random() < dup_ratio:
            other = (home + rng.randrange(1, partitions)) % partitions
            records.append((other if rng.random() < 0.5 else home, body))
            copies += count
        if n % poison_every == poison_every - 1:
            records.append((home, POISON[poison % len(POISON)]))
            poison += 1
    # Redeliveries arrive later too: move some copies into later waves.
    size = -(-len(records) // waves)
    split = [records[k : k + size] for k in range(0, len(records), size)]
    return Traffic(split, expected, poison, copies)


POISON = (
    b"not json",
    b"\xff\xfe\xfd",
    b'{"object": "whatsapp_business_account", "entry": 7}',
    b'{"entry": [{"changes": [{"field": "messages", "value": {"messages": [{"from": "1"}]}}]}]}',
)


@dataclass
class Figures:
    """One scenario's audit, as reported in docs/reliability.md."""

    fault: str
    profile: str
    crash: bool
    broker: str
    messages: int
    records: int
    duplicates_injected: int
    poison: int
    rows: int
    events: int
    duplicate_events: int
    lost: int
    phantom_events: int
    dead_lettered: int
    lock_conflicts: int
    insert_conflicts: int
    rebalances: int
    relay_republished: int
    drain_s: float
    extra: dict[str, Any] = field(default_factory=dict)


class FaultRun:
    """One scenario: start consumers, send waves, inject, heal, drain, audit."""

    def __init__(
        self,
        name: str,
        group: ConsumerGroup,
        *,
        partitions: int = 4,
        crash: bool = False,
        profile: Profile | None = None,
        seed: int = 7,
        broker: str = "tansu",
    ) -> None:
        self.name = name
        self.broker = broker
        self.group = group
        self.profile = profile or Profile.current()
        self.crash = crash
        self.partitions = partitions
        self.traffic = make_traffic(
            self.profile.messages, partitions=partitions, waves=self.profile.waves, seed=seed
        )
        self.ends: dict[int, int] = {}
        self.poison_coords: set[tuple[int, int]] = set()
        self.records_sent = 0
        self.copies_sent = 0
        self.dlq_coords: set[tuple[int, int]] = set()
        self.outbound_offsets: list[tuple[int, int]] = []
        self.read_started = dt.datetime.max.replace(tzinfo=dt.UTC)  # set by the audit's read
        self.healed_at: float | None = None

    @property
    def settings(self) -> Settings:
        return self.group.settings

    def start(self, count: int = 1, **overrides: Any) -> list[ConsumerProc]:
        return self.group.start(count, **overrides)

    async def send_wave(self, index: int) -> None:
        wave = self.traffic.waves[index]
        sent = await kafka.send_each(self.settings, wave)
        self.records_sent += len(wave)
        self.copies_sent += sum(value.count(b'"id":"wamid.') for _, value in wave)
        for (partition, value), offset in zip(wave, sent, strict=True):
            self.ends[partition] = max(self.ends.get(partition, 0), offset + 1)
            if value in POISON:
                self.poison_coords.add((partition, offset))

    async def send_all(self) -> None:
        for i in range(len(self.traffic.waves)):
            await self.send_wave(i)

    def batches_done(self) -> int:
        """Batches the group has finished so far (failed ones included)."""
        return sum(len(p.named("batch.done")) for p in self.group.procs)

    def batch_failures(self) -> list[str]:
        """The `failure` of every failed batch so far, across the group."""
        return [
            str(e["failure"])
            for p in self.group.procs
            for e in p.named("batch.done")
            if e.get("failure")
        ]

    def wait_batches(self, count: int, timeout_s: float = 60) -> None:
        """Wait until the group finished `count` batches in all (the stream is flowing)."""
        wait_until(lambda: self.batches_done() >= count, timeout_s, self.group.logs)

    def wait_failed_batch(self, matches: Callable[[str], bool], timeout_s: float = 60) -> None:
        """Wait until some member reports a batch whose failure `matches` (the fault bit)."""
        wait_until(
            lambda: any(matches(f) for f in self.batch_failures()), timeout_s, self.group.logs
        )

    def healed(self) -> None:
        self.healed_at = time.monotonic()

    async def drain(self, timeout_s: float = 120) -> float:
        """Wait for lag zero and an empty outbox (no re-announcement still to come, so
        nothing is written while the audit reads); returns seconds from healing (or
        now) to drained."""
        start = self.healed_at or time.monotonic()
        deadline = time.monotonic() + timeout_s
        await kafka.wait_committed(
            self.settings, self.ends, timeout_s=timeout_s, explain=self.group.logs
        )
        while (left := await kafka.unpublished(self.settings)) > 0:
            assert time.monotonic() < deadline, (
                f"{left} outbox row(s) still unpublished after {timeout_s:g}s:\n"
                + self.group.logs()
            )
            await asyncio.sleep(0.25)
        return time.monotonic() - start

    async def audit(self, drain_s: float, **extra: Any) -> Figures:
        """Check the promise and return (and report) the figures."""
        expected = self.traffic.expected
        rows = await kafka.rows(self.settings)
        events = await self._read_events()
        dead = await kafka.read_all(
            self.settings, self.settings.dlq_topic, want=self.acked(self.settings.dlq_topic)
        )
        row_counts = collections.Counter(rows)
        ids: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
        per_key = collections.Counter[tuple[str, str]]()
        for e in events:
            k = (e["phone_number_id"], e["message"]["source_id"])
            ids[k].add(e["event_id"])
            per_key[k] += 1
        dlq_coords = {
            (
                int(dict(r.headers)["dlq.source.partition"]),
                int(dict(r.headers)["dlq.source.offset"]),
            )
            for r in dead
        }
        self.dlq_coords = dlq_coords
        figures = Figures(
            fault=self.name,
            profile=self.profile.name,
            crash=self.crash,
            broker=self.broker,
            messages=len(expected),
            records=self.records_sent,
            duplicates_injected=self.copies_sent - len(expected),
            poison=len(self.poison_coords),
            rows=len(rows),
            events=len(events),
            duplicate_events=len(events) - len(per_key),
            lost=len({k for k in expected if k not in row_counts or k not in per_key}),
            phantom_events=len(set(per_key) - set(row_counts)),
            dead_lettered=len(dlq_coords),
            lock_conflicts=self.group.totals("held"),
            insert_conflicts=self.group.totals("dup_database"),
            rebalances=sum(len(p.named("partitions.revoked")) for p in self.group.procs),
            relay_republished=sum(
                int(e.get("count", 0))
                for p in self.group.procs
                for e in p.named("relay.republished")
            ),
            drain_s=round(drain_s, 2),
            extra=extra,
        )
        _report(figures)
        self._check(figures, row_counts, ids, per_key)
        return figures

    async def _read_events(self) -> list[dict[str, Any]]:
        """Every record of the outbound topic, each partition from offset 0, read until
        every event the members logged as acknowledged has arrived (then a short settle),
        or 6 s of silence: the embedded broker's "earliest" can point past records it
        holds, and its partition ends lag about 5 s (docs/reliability.md)."""
        topic = self.settings.outbound_topic
        self.read_started = dt.datetime.now(dt.UTC)
        records = await kafka.read_all(self.settings, topic, want=self.acked(topic))
        seen = {(r.partition, r.offset): r.value for r in records}
        self.outbound_offsets = sorted(seen)
        return [orjson.loads(v) for _, v in sorted(seen.items())]

    def acked(
        self, topic: str, before: dt.datetime | None = None
    ) -> dict[tuple[int, int], str | None]:
        """Where the broker put each record of `topic` it acknowledged to a member
        (partition, offset -> event_id), from the members' `record.acked` DEBUG lines;
        with `before`, only those acknowledged before then."""
        return {
            (int(e["partition"]), int(e["offset"])): e.get("event_id")
            for p in self.group.procs
            for e in p.named("record.acked")
            if e.get("topic") == topic
            and (before is None or dt.datetime.fromisoformat(e["timestamp"]) < before)
        }

    def _check(
        self,
        f: Figures,
        row_counts: collections.Counter[tuple[str, str]],
        ids: dict[tuple[str, str], set[str]],
        per_key: collections.Counter[tuple[str, str]],
    ) -> None:
        expected = self.traffic.expected
        assert set(row_counts) == expected, f"P1: rows differ from input ({f})"
        assert max(row_counts.values()) == 1, f"P1: a message stored twice ({f})"
        missing = sorted(expected - set(per_key))[:5]
        by_partition = collections.Counter(p for p, _ in self.outbound_offsets)
        assert set(per_key) == expected, (
            f"P3/P2: events differ from rows ({f}); missing e.g. {missing}; outbound records "
            f"per partition {dict(by_partition)}; logs:\n{self.group.logs()}"
        )
        assert all(len(v) == 1 for v in ids.values()), f"P3: copies with two event_ids ({f})"
        self._check_broker_kept_what_it_acked()
        if not self.crash:
            assert f.duplicate_events == 0, f"P3: duplicate events without a crash ({f})"
        assert self.dlq_coords == self.poison_coords, f"P4: dead letters != poison ({f})"

    def _check_broker_kept_what_it_acked(self) -> None:
        """Every event the broker acknowledged (the members log where it put each one at
        DEBUG) is readable where it was put, and each outbound partition reads back
        without holes: a loss that a duplicate happens to hide still fails here, and a
        failure says whether the broker or wamid-guard lost the event."""
        # Only what was acknowledged before the audit began to read must be there.
        acked = self.acked(self.settings.outbound_topic, before=self.read_started)
        assert acked, "no record.acked lines: the members must log at DEBUG for this check"
        read = set(self.outbound_offsets)
        lost = sorted(set(acked) - read)
        assert not lost, (
            f"the broker acknowledged {len(lost)} event(s) it does not return: "
            f"{[(p, o, acked[(p, o)]) for p, o in lost[:10]]}"
        )
        by_partition: dict[int, list[int]] = collections.defaultdict(list)
        for p, o in sorted(read):
            by_partition[p].append(o)
        holes = [
            (p, a, b)
            for p, offsets in by_partition.items()
            for a, b in itertools.pairwise(offsets)
            if b != a + 1
        ]
        assert not holes, (
            f"outbound partitions read back with holes (partition, before, after): {holes[:10]}"
        )


def _report(figures: Figures) -> None:
    path = os.environ.get("FAULT_REPORT")
    if path:
        with Path(path).open("a") as out:
            out.write(json.dumps(asdict(figures)) + "\n")
