"""The fault suite's driver: real consumer processes, real services, injected faults.

A :class:`FaultRun` owns one scenario: its topics, group, database and key prefix; the
consumer processes; the traffic (unique messages, duplicates on the same and on other
partitions, poison records, and the status updates of the business's sent messages, out
of order, batched and repeated as Meta sends them); and the final audit of the promise
(docs/design.md, P1-P6 and "Statuses"):

* per (phone_number_id, wamid): exactly one row; at least one event, every copy with one
  event_id; exactly one event when the scenario involves no crash; nothing missing, no
  event without a row;
* per sent message (phone_number_id, id) with statuses (:func:`audit_statuses`): its
  state is the highest status sent; every status sent is one row of `statuses`; every
  announced one has an event, all copies one event_id (exactly one without a crash); a
  stale one none; no status event without its row; the message's events on one
  partition, and in topic order each new event_id ranks above the last (never back);
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
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import sqlalchemy as sa

from consumer.engine import create_engine
from consumer.events import EVENT_TYPE, STATUS_EVENT_TYPE, conversation_key
from consumer.schema import message_state, statuses
from consumer.settings import Settings
from consumer.statuses import ORDER
from tests.support import kafka
from tests.support.bodies import (
    TIMESTAMP,
    combined_webhook,
    status_update,
    status_webhook,
    text_webhook,
)
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
    # The words sent for each of the business's messages (phone_number_id, id), and the
    # status updates sent, duplicates included.
    statuses: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    status_copies: int = 0

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
    status_share: float = 1 / 3,
) -> Traffic:
    """Meta-shaped webhooks of 1-3 messages; about `dup_ratio` of them delivered again,
    half of the copies on another partition (and some within the same wave), with a
    poison record every `poison_every` bodies. Among them, from start to end, the status
    updates of `status_share` x `messages` messages the business sent
    (:func:`_status_traffic`)."""
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
    status_rng = random.Random(f"{seed}/statuses")  # noqa: S311 - as above
    sent, status_records = _status_traffic(
        status_rng,
        run,
        round(messages * status_share),
        partitions=partitions,
        dup_ratio=dup_ratio,
    )
    # The statuses come while the messages do: each status record takes its place in
    # the messages' stream by its position, so they spread over every wave. Now and
    # then one POST carries both (Meta may batch several changes in one body): a status
    # body rides along with the message body just before it, as a change of its own.
    last = max((at for at, _ in status_records), default=0.0) or 1.0
    timeline = [(k / max(len(records), 1), False, k, r) for k, r in enumerate(records)]
    timeline += [(at / last, True, k, r) for k, (at, r) in enumerate(status_records)]
    merged: list[tuple[bool, tuple[int, bytes]]] = []
    for _, is_status, _, (partition, body) in sorted(timeline, key=lambda t: t[:3]):
        before = merged[-1] if merged else None
        if (
            is_status
            and before is not None
            and not before[0]
            and before[1][1] not in POISON
            and status_rng.random() < 0.15
        ):
            merged[-1] = (True, (before[1][0], combined_webhook(before[1][1], body)))
        else:
            merged.append((is_status, (partition, body)))
    records = [r for _, r in merged]
    status_copies = sum(len(_contents(body)[1]) for _, body in records)
    # Redeliveries arrive later too: move some copies into later waves.
    size = -(-len(records) // waves)
    split = [records[k : k + size] for k in range(0, len(records), size)]
    return Traffic(split, expected, poison, copies, sent, status_copies)


# The words each of the business's messages gets (whatever their order of arrival), as
# Meta's traffic mixes them: most are delivered and read; some stay delivered; a voice
# message is also played; some fail (a `delivered` may still come after the failure); a
# `read` may come without its `delivered`, and a `sent` may never come.
STATUS_MIX: tuple[tuple[tuple[str, ...], int], ...] = (
    (("sent", "delivered", "read"), 50),
    (("sent", "delivered"), 14),
    (("sent", "delivered", "read", "played"), 11),
    (("sent", "failed"), 9),
    (("sent", "delivered", "failed"), 5),
    (("sent", "read"), 5),
    (("delivered", "read"), 3),
    (("sent", "failed", "read"), 3),
)
# How many status updates one body holds: Meta batches a number's statuses (up to 1,000).
STATUS_BATCH: tuple[tuple[int, int], ...] = ((1, 25), (2, 20), (3, 15), (4, 15), (6, 15), (10, 10))


def _status_traffic(
    rng: random.Random, run: str, count: int, *, partitions: int, dup_ratio: float
) -> tuple[dict[tuple[str, str], frozenset[str]], list[tuple[float, tuple[int, bytes]]]]:
    """The status updates of `count` messages the business sent (ids unlike the inbound
    wamids), each with its words of STATUS_MIX, to one recipient of the inbound senders
    (so their events share partitions with that contact's messages' events). Out of
    order: half of the messages' statuses come in order with gaps between them, half
    shuffled over a fifth of the stream; a fifth of the updates come again later in
    another batch (half of those with a later timestamp: still the same status). Batched
    several to a body (STATUS_BATCH, several messages' and several words of one message
    in one body), and about 0.6 x `dup_ratio` of the bodies delivered twice, on the same
    or another partition, a little later. Returns the words sent per message and each
    record with its position in the stream (0 to about 1.7)."""
    words = [w for w, _ in STATUS_MIX]
    weights = [n for _, n in STATUS_MIX]
    sent: dict[tuple[str, str], frozenset[str]] = {}
    updates: dict[str, list[tuple[float, dict[str, Any]]]] = {pnid: [] for pnid in PNIDS}
    for j in range(count):
        pnid = PNIDS[rng.randrange(len(PNIDS))]
        wamid = f"wamid.out.{run}.{j:05d}"
        recipient = f"1650555{rng.randrange(50):04d}"
        chosen = rng.choices(words, weights)[0]
        sent[(pnid, wamid)] = frozenset(chosen)
        at = int(TIMESTAMP) + 60 * j
        start = rng.random()
        in_order = rng.random() < 0.5
        for k, word in enumerate(chosen):
            at += rng.randrange(1, 900)
            shift = k * rng.uniform(0.01, 0.1) if in_order else rng.uniform(0.0, 0.35)
            update = status_update(wamid, word, recipient=recipient, timestamp=str(at))
            updates[pnid].append((start + shift, update))
            if rng.random() < 0.2:
                retimed = dict(update, timestamp=str(at + rng.randrange(1, 3600)))
                again = retimed if rng.random() < 0.5 else update
                updates[pnid].append((start + shift + rng.uniform(0.0, 0.3), again))
    sizes = [n for n, _ in STATUS_BATCH]
    size_weights = [w for _, w in STATUS_BATCH]
    bodies: list[tuple[float, bytes]] = []
    for pnid, items in updates.items():
        items.sort(key=lambda t: t[0])
        k = 0
        while k < len(items):
            chunk = items[k : k + rng.choices(sizes, size_weights)[0]]
            bodies.append((chunk[0][0], status_webhook(pnid, *(u for _, u in chunk))))
            k += len(chunk)
    records: list[tuple[float, tuple[int, bytes]]] = []
    for position, body in bodies:
        home = rng.randrange(partitions)
        records.append((position, (home, body)))
        if rng.random() < 0.6 * dup_ratio:
            other = (home + rng.randrange(1, partitions)) % partitions
            later = position + rng.uniform(0.0, 0.1)
            records.append((later, (other if rng.random() < 0.5 else home, body)))
    return sent, records


def _contents(value: bytes) -> tuple[int, list[tuple[str, str, str, str]]]:
    """What one record of the traffic holds: its number of messages, and its status
    updates as (phone_number_id, id, word, recipient_id); nothing for a poison record."""
    if value in POISON:
        return 0, []
    messages = 0
    updates = []
    for entry in orjson.loads(value)["entry"]:
        for change in entry["changes"]:
            v = change["value"]
            messages += len(v.get("messages", ()))
            pnid = v["metadata"]["phone_number_id"]
            updates += [
                (pnid, u["id"], u["status"], u["recipient_id"]) for u in v.get("statuses", ())
            ]
    return messages, updates


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
    # The status updates (docs/design.md, "Statuses"): distinct ones sent, the copies
    # beyond those, how they were stored (announced or stale), their events, and what
    # went wrong (lost: no row, or announced without an event; phantom: an event with no
    # announced row; out of order: messages whose topic went back).
    statuses: int = 0
    status_duplicates_injected: int = 0
    statuses_announced: int = 0
    statuses_stale: int = 0
    status_events: int = 0
    duplicate_status_events: int = 0
    statuses_lost: int = 0
    phantom_status_events: int = 0
    statuses_out_of_order: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class StatusRow(NamedTuple):
    """A row of `statuses`: the update's identity, its outcome and its event id."""

    phone_number_id: str
    status_id: str
    status: str
    outcome: str
    event_id: str


class Published(NamedTuple):
    """A record read back from the outbound topic, with where it sits."""

    partition: int
    offset: int
    key: bytes | None
    event: dict[str, Any]


@dataclass
class StatusAudit:
    """The status promise checked (:func:`audit_statuses`): the figures, and each
    problem found, by kind."""

    statuses: int
    announced: int
    stale: int
    events: int
    duplicate_events: int
    lost: int
    phantom_events: int
    out_of_order: int
    problems: dict[str, list[str]]

    def explain(self, limit: int = 5) -> str:
        """The problems, a few examples of each kind."""
        lines = []
        for kind, found in self.problems.items():
            lines.append(f"  {kind}: {len(found)}")
            lines += [f"    {p}" for p in found[:limit]]
            if len(found) > limit:
                lines.append(f"    ... and {len(found) - limit} more")
        return "\n".join(lines)


def audit_statuses(
    sent: Mapping[tuple[str, str], Collection[str]],
    recipients: Mapping[tuple[str, str], str],
    rows: Iterable[StatusRow],
    states: Mapping[tuple[str, str], str],
    published: Iterable[Published],
    *,
    exactly_once: bool,
) -> StatusAudit:
    """Check the status promise (docs/design.md, "Statuses") for every message
    (phone_number_id, id) the traffic sent statuses of: `sent` its words, `recipients`
    who it went to; `rows` the table `statuses`, `states` the table `message_state`
    (message -> status); `published` the outbound topic's `message_status_changed`
    records in topic order (by partition, then offset). `exactly_once`: the scenario
    had no crash, so every announced status has exactly one event."""
    check = _StatusCheck(sent, recipients, rows, states, published)
    check.state_and_rows()
    check.events(exactly_once=exactly_once)
    check.order()
    events = sum(len(v) for v in check.by_status.values())
    return StatusAudit(
        statuses=sum(len(w) for w in sent.values()),
        announced=sum(r.outcome == "announced" for r in check.row.values()),
        stale=sum(r.outcome == "stale" for r in check.row.values()),
        events=events,
        duplicate_events=events - len(check.by_status),
        lost=check.lost,
        phantom_events=check.phantom,
        out_of_order=check.out_of_order,
        problems=dict(check.problems),
    )


StatusId = tuple[str, str, str]  # (phone_number_id, id, word)


def _where(pubs: Iterable[Published]) -> str:
    return ", ".join(f"p{p.partition}@{p.offset}" for p in pubs)


class _StatusCheck:
    """audit_statuses's parts: what was sent against the tables, the events against
    the rows, the order of each message's events on the topic."""

    def __init__(
        self,
        sent: Mapping[tuple[str, str], Collection[str]],
        recipients: Mapping[tuple[str, str], str],
        rows: Iterable[StatusRow],
        states: Mapping[tuple[str, str], str],
        published: Iterable[Published],
    ) -> None:
        self.sent = sent
        self.recipients = recipients
        self.states = states
        self.stored: dict[StatusId, list[StatusRow]] = collections.defaultdict(list)
        for r in rows:
            self.stored[(r.phone_number_id, r.status_id, r.status)].append(r)
        self.row = {k: v[0] for k, v in self.stored.items()}
        self.by_status: dict[StatusId, list[Published]] = collections.defaultdict(list)
        self.by_message: dict[tuple[str, str], list[Published]] = collections.defaultdict(list)
        for pub in published:
            s = pub.event["status"]
            k = (pub.event["phone_number_id"], s["id"], s["status"])
            self.by_status[k].append(pub)
            self.by_message[k[:2]].append(pub)
        self.problems: dict[str, list[str]] = collections.defaultdict(list)
        self.lost = self.phantom = self.out_of_order = 0

    def state_and_rows(self) -> None:
        """Each message's state is the highest status sent (announced); every status
        sent is one row; nothing stored that was not sent."""
        for m, words in sorted(self.sent.items()):
            known = [w for w in words if w in ORDER]
            highest = max(known, key=ORDER.__getitem__) if known else None
            sent_as = sorted(words, key=lambda w: ORDER.get(w, 0))
            if self.states.get(m) != highest:
                self.problems["state is not the highest status sent"].append(
                    f"{m}: state {self.states.get(m)!r}, sent {sent_as}"
                )
            for w in words:
                n = len(self.stored.get((*m, w), ()))
                if n != 1:
                    self.lost += n == 0
                    self.problems["status not stored exactly once"].append(f"{(*m, w)}: {n} row(s)")
            top = self.row.get((*m, highest)) if highest else None
            if top is not None and top.outcome != "announced":
                self.problems["highest status sent not announced"].append(
                    f"{m}: {highest!r} is {top.outcome!r}, sent {sent_as}"
                )
        sent = {(*m, w) for m, words in self.sent.items() for w in words}
        for k in sorted(set(self.stored) - sent):
            self.problems["row of a status never sent"].append(f"{k}: {self.row[k].outcome}")
        for m in sorted(set(self.states) - set(self.sent)):
            self.problems["state of a message no status was sent for"].append(
                f"{m}: {self.states[m]!r}"
            )

    def events(self, *, exactly_once: bool) -> None:
        """Every announced status has an event, all copies its row's event_id (one copy
        when `exactly_once`); a stale status has none; no event without its row."""
        for k, r in sorted(self.row.items()):
            pubs = self.by_status.get(k, [])
            ids = sorted({p.event["event_id"] for p in pubs})
            if r.outcome == "stale":
                if pubs:
                    self.phantom += 1
                    self.problems["event of a stale status"].append(f"{k}: at {_where(pubs)}")
            elif r.outcome != "announced":
                self.problems["outcome neither announced nor stale"].append(f"{k}: {r.outcome!r}")
            elif not pubs:
                self.lost += 1
                self.problems["announced status without an event"].append(str(k))
            elif ids != [r.event_id]:
                self.problems["event_id not the row's (or copies with two)"].append(
                    f"{k}: row {r.event_id}, events {ids}"
                )
            elif exactly_once and len(pubs) > 1:
                self.problems["announced more than once without a crash"].append(
                    f"{k}: {len(pubs)} events at {_where(pubs)}"
                )
        for k in sorted(set(self.by_status) - set(self.row)):
            self.phantom += 1
            self.problems["status event without a row"].append(
                f"{k}: at {_where(self.by_status[k])}"
            )

    def order(self) -> None:
        """A message's events share one partition, keyed by its recipient's
        conversation; in topic order each event_id met for the first time ranks above
        the last (a later copy of one met before is P3's crash class, not a step back)."""
        for m, pubs in sorted(self.by_message.items()):
            if len({p.partition for p in pubs}) > 1:
                self.problems["a message's events on several partitions"].append(
                    f"{m}: {_where(pubs)}"
                )
            want = conversation_key(m[0], self.recipients[m]) if m in self.recipients else None
            keys = sorted({p.key or b"" for p in pubs})
            if want is not None and keys != [want]:
                self.problems["event key not the recipient's conversation"].append(
                    f"{m}: keys {keys}, want {want!r}"
                )
            first: dict[str, Published] = {}
            for p in pubs:
                first.setdefault(p.event["event_id"], p)
            ranks = [ORDER.get(p.event["status"]["status"], 0) for p in first.values()]
            if any(b <= a for a, b in itertools.pairwise(ranks)):
                self.out_of_order += 1
                order = ", ".join(
                    f"{p.event['status']['status']} p{p.partition}@{p.offset}"
                    for p in first.values()
                )
                self.problems["a message's events went back on the topic"].append(
                    f"{m}: first copies in topic order: {order} (every copy: {_where(pubs)})"
                )


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
        # The status updates sent: the words per message, its recipient, and the copies.
        self.statuses_sent: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
        self.recipients: dict[tuple[str, str], str] = {}
        self.status_copies_sent = 0
        self.dlq_coords: set[tuple[int, int]] = set()
        self.outbound_offsets: list[tuple[int, int]] = []
        self.status_audit: StatusAudit | None = None
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
        for (partition, value), offset in zip(wave, sent, strict=True):
            messages, updates = _contents(value)
            self.copies_sent += messages
            self.status_copies_sent += len(updates)
            for pnid, status_id, word, recipient in updates:
                self.statuses_sent[(pnid, status_id)].add(word)
                self.recipients[(pnid, status_id)] = recipient
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
        status_rows, states = await self._status_tables()
        published = await self._read_events()
        dead = await kafka.read_all(
            self.settings, self.settings.dlq_topic, want=self.acked(self.settings.dlq_topic)
        )
        kinds = collections.Counter(str(p.event.get("event")) for p in published)
        assert set(kinds) <= {EVENT_TYPE, STATUS_EVENT_TYPE}, f"unknown events: {kinds}"
        events = [p.event for p in published if p.event["event"] == EVENT_TYPE]
        self.status_audit = st = audit_statuses(
            self.statuses_sent,
            self.recipients,
            status_rows,
            states,
            [p for p in published if p.event["event"] == STATUS_EVENT_TYPE],
            exactly_once=not self.crash,
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
            statuses=st.statuses,
            status_duplicates_injected=self.status_copies_sent - st.statuses,
            statuses_announced=st.announced,
            statuses_stale=st.stale,
            status_events=st.events,
            duplicate_status_events=st.duplicate_events,
            statuses_lost=st.lost,
            phantom_status_events=st.phantom_events,
            statuses_out_of_order=st.out_of_order,
            extra=extra,
        )
        _report(figures)
        self._check(figures, row_counts, ids, per_key)
        self._check_statuses(figures, st)
        return figures

    async def _status_tables(
        self,
    ) -> tuple[list[StatusRow], dict[tuple[str, str], str]]:
        """The rows of `statuses`, and each message's state in `message_state`."""
        engine = create_engine(self.settings.database_url, pool_size=1, timeout_s=10)
        try:
            async with engine.connect() as conn:
                found = await conn.execute(
                    sa.select(
                        statuses.c.phone_number_id,
                        statuses.c.status_id,
                        statuses.c.status,
                        statuses.c.outcome,
                        statuses.c.event_id,
                    )
                )
                rows = [StatusRow(*r) for r in found]
                found = await conn.execute(
                    sa.select(
                        message_state.c.phone_number_id,
                        message_state.c.status_id,
                        message_state.c.status,
                    )
                )
                states = {(r[0], r[1]): r[2] for r in found}
        finally:
            await engine.dispose()
        return rows, states

    def _check_statuses(self, f: Figures, audit: StatusAudit) -> None:
        """The status promise (audit_statuses), every problem listed by kind."""
        assert not audit.problems, (
            f"Statuses: the promise does not hold ({sum(map(len, audit.problems.values()))} "
            f"problem(s)):\n{audit.explain()}\n({f})"
        )

    async def _read_events(self) -> list[Published]:
        """Every record of the outbound topic, each partition from offset 0, read until
        every event the members logged as acknowledged has arrived (then a short settle),
        or 6 s of silence: the embedded broker's "earliest" can point past records it
        holds, and its partition ends lag about 5 s (docs/reliability.md)."""
        topic = self.settings.outbound_topic
        self.read_started = dt.datetime.now(dt.UTC)
        records = await kafka.read_all(self.settings, topic, want=self.acked(topic))
        seen = {(r.partition, r.offset): r for r in records}
        self.outbound_offsets = sorted(seen)
        return [Published(p, o, r.key, orjson.loads(r.value)) for (p, o), r in sorted(seen.items())]

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
