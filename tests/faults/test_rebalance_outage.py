"""Fault suite: a PostgreSQL outage that spans a rebalance.

While the database is down every batch fails, and a member pauses its partitions until
a batch succeeds. A rebalance in the middle of that (a member joins or leaves) hands
partitions to members whose failure state was recorded under the old assignment. Two
things must still hold:

* once the database is back, every partition moves again: lag returns to zero and no
  member keeps a partition paused (a member whose only partitions were newly assigned
  during the outage had nothing left to retry, so nothing would ever clear its
  failure state);
* a partition that leaves a member and comes back to it during the outage is paused
  again like any other: its pending work stays bounded by MAX_PENDING_RECORDS (plus one
  batch) instead of growing with the traffic.

Each member serves /metrics on a port of its own; the test reads the gauges
``wamid_guard_pending_records{topic,partition}``, ``wamid_guard_paused_partitions``,
``wamid_guard_assigned_partitions`` and the counter ``wamid_guard_records_consumed`` from
there, and the rebalances and pauses from the members' log lines.
"""

from __future__ import annotations

import datetime as dt
import http.client
import signal
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from consumer.tools import embedded
from tests.faults.conftest import FaultEnv
from tests.faults.harness import FaultRun, make_traffic
from tests.support import kafka
from tests.support.procs import ConsumerProc, wait_until
from tests.support.proxy import ThreadedProxy

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.brokers]

PENDING = "wamid_guard_pending_records"
PAUSED = "wamid_guard_paused_partitions"
ASSIGNED = "wamid_guard_assigned_partitions"
CONSUMED = "wamid_guard_records_consumed_total"
LAG = "wamid_guard_consumer_lag"
LAST_POLL = "wamid_guard_last_poll_timestamp_seconds"

DRAIN_S = 30.0  # healing to lag zero; a few seconds when every partition moves

# -- /metrics ----------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples | None:
    """One scrape of a member's /metrics: value by (sample name, labels); None when the
    member does not answer (starting, stopped)."""
    url = f"http://{embedded.LOOPBACK}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    except (OSError, http.client.HTTPException):
        return None
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def last_poll(port: int) -> float:
    """When the member's poll loop last came round (0 when it does not answer)."""
    samples = scrape(port)
    return (value(samples, LAST_POLL) or 0.0) if samples is not None else 0.0


def value(samples: Samples, name: str) -> float | None:
    """The unlabelled sample `name`, if the scrape has it."""
    return samples.get((name, frozenset()))


def per_partition(samples: Samples, name: str) -> dict[int, float]:
    """The samples of `name` by their `partition` label."""
    return {
        int(dict(labels)["partition"]): v
        for (n, labels), v in samples.items()
        if n == name and "partition" in dict(labels)
    }


@dataclass(frozen=True)
class Reading:
    at: float  # time.time() when the scrape returned
    member: int  # ConsumerProc.index
    samples: Samples


class MetricsWatch:
    """Scrapes every watched member's /metrics about ten times a second, in a thread of
    its own (the test blocks in wait_until), and keeps every reading."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.ports: dict[int, int] = {}
        self._readings: list[Reading] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def watch(self, member: ConsumerProc, port: int) -> None:
        with self._lock:
            self.ports[member.index] = port

    def readings(self, start: float = 0.0, end: float = float("inf")) -> list[Reading]:
        """Readings taken between `start` and `end` (time.time())."""
        with self._lock:
            return [r for r in self._readings if start <= r.at <= end]

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                ports = dict(self.ports)
            for member, port in ports.items():
                samples = scrape(port)
                if samples is not None:
                    with self._lock:
                        self._readings.append(Reading(time.time(), member, samples))
            self._stop.wait(self.interval_s)


@pytest.fixture
def watch() -> Iterator[MetricsWatch]:
    w = MetricsWatch()
    w.start()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture
def side_pg(fault_env: FaultEnv) -> Iterator[ThreadedProxy]:
    """A second fault proxy to the scenario's PostgreSQL. A member checks the database
    before it joins the group and exits if it cannot reach it, so a member that joins
    during the outage comes through here: up for its startup check, refused right
    after."""
    upstream = fault_env.pg.proxy
    proxy = ThreadedProxy(upstream.upstream_host, upstream.upstream_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def start_member(
    run: FaultRun, watch: MetricsWatch, client_id: str, **overrides: Any
) -> ConsumerProc:
    """One more `consumer run` with a metrics port of its own, watched.

    The group's member ids start with the client id, and aiokafka's round-robin
    assignor deals partitions out in member-id order, so the client ids decide who gets
    what when the group changes (the scenarios below rely on it, and check it)."""
    port = embedded.free_port()
    (member,) = run.start(1, metrics_port=port, client_id=client_id, **overrides)
    watch.watch(member, port)
    return member


def join_during_outage(
    run: FaultRun, watch: MetricsWatch, side_pg: ThreadedProxy, client_id: str
) -> ConsumerProc:
    """Start a member that reaches PostgreSQL through `side_pg` and refuse that proxy as
    soon as the member has passed its startup check (before it has partitions)."""
    url = make_url(run.settings.database_url).set(port=side_pg.port)
    member = start_member(
        run, watch, client_id, database_url=url.render_as_string(hide_password=False)
    )
    wait_until(
        lambda: bool(member.named("service.started")),
        30,
        lambda: "the joining member never started:\n" + member.log_tail(),
        interval_s=0.02,
    )
    side_pg.refuse(True)
    return member


# -- the members' log lines ------------------------------------------------------------


def _at(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(str(event["timestamp"])).timestamp()


def _partitions(event: dict[str, Any]) -> set[int]:
    return {int(str(p).rsplit(":", 1)[1]) for p in event["partitions"]}


def assignments(member: ConsumerProc) -> list[tuple[float, set[int]]]:
    """Every `partitions.assigned` of the member: (when, which partitions)."""
    return [(_at(e), _partitions(e)) for e in member.named("partitions.assigned")]


def holding(member: ConsumerProc) -> set[int] | None:
    """The partitions of the member's latest assignment; None while it is between a
    revocation and the next assignment (or has not joined yet)."""
    marks = [
        e
        for e in member.events()
        if e.get("event") in ("partitions.assigned", "partitions.revoked")
    ]
    if not marks or marks[-1]["event"] != "partitions.assigned":
        return None
    return _partitions(marks[-1])


def failed_batches(member: ConsumerProc, since: float, until: float = float("inf")) -> int:
    """Batches of the member that failed on the database between `since` and `until`."""
    return sum(
        1
        for e in member.named("batch.done")
        if "StoreError" in str(e.get("failure") or "") and since <= _at(e) <= until
    )


def pauses(member: ConsumerProc, since: float) -> list[dict[str, Any]]:
    return [e for e in member.named("partition.paused") if _at(e) >= since]


def paused_by_log(member: ConsumerProc) -> set[int]:
    """Partitions whose latest pause/resume/revocation line is a pause."""
    state: dict[int, bool] = {}
    for e in member.events():
        event = e.get("event")
        if event == "partition.paused":
            state[int(e["partition"])] = True
        elif event == "partition.resumed":
            state[int(e["partition"])] = False
        elif event == "partitions.revoked":
            state.update(dict.fromkeys(_partitions(e), False))
    return {p for p, paused in state.items() if paused}


def wait_settled(
    run: FaultRun,
    members: list[ConsumerProc],
    after: dict[int, int],
    timeout_s: float = 45,
) -> dict[int, set[int]]:
    """Wait until `members` hold disjoint assignments that cover every partition, each
    member's newer than its first `after[index]` ones; returns them by member index."""
    everything = set(range(run.partitions))

    def now() -> dict[int, set[int]] | None:
        held: dict[int, set[int]] = {}
        for m in members:
            mine = holding(m)
            if mine is None or len(assignments(m)) <= after.get(m.index, 0):
                return None
            held[m.index] = mine
        union: set[int] = set().union(*held.values())
        if union != everything or sum(len(h) for h in held.values()) != len(everything):
            return None
        return held

    wait_until(
        lambda: now() is not None,
        timeout_s,
        lambda: "the group never settled on a new assignment:\n" + run.group.logs(),
        interval_s=0.2,
    )
    settled = now()
    assert settled is not None
    return settled


def describe(run: FaultRun, watch: MetricsWatch, members: Iterable[ConsumerProc]) -> str:
    """Each member's state, for a failure message: exit code, assignment, what its logs
    and its gauges say is paused, its lag by partition."""
    lines = []
    for m in members:
        port = watch.ports.get(m.index)
        samples = scrape(port) if port is not None and m.proc.poll() is None else None
        gauges = (
            "no /metrics"
            if samples is None
            else f"{PAUSED}={value(samples, PAUSED)} {ASSIGNED}={value(samples, ASSIGNED)} "
            f"lag={per_partition(samples, LAG)} pending={per_partition(samples, PENDING)}"
        )
        lines.append(
            f"member {m.index} (exit {m.proc.poll()}): holds {holding(m)}, "
            f"paused by its log lines {sorted(paused_by_log(m))}; {gauges}"
        )
    return "\n".join(lines)


async def drain(run: FaultRun, watch: MetricsWatch, members: list[ConsumerProc]) -> float:
    """run.drain within DRAIN_S, failing with every member's state."""
    try:
        return await run.drain(timeout_s=DRAIN_S)
    except AssertionError as exc:
        raise AssertionError(
            f"lag did not return to zero within {DRAIN_S:g}s of healing:\n"
            + describe(run, watch, members)
        ) from exc


def check_nothing_paused(run: FaultRun, watch: MetricsWatch, members: list[ConsumerProc]) -> None:
    """Every member answers /metrics with no paused partition, and together they hold
    every partition."""

    def paused_and_assigned() -> tuple[list[float | None], float]:
        paused: list[float | None] = []
        assigned = 0.0
        for m in members:
            samples = scrape(watch.ports[m.index])
            paused.append(None if samples is None else value(samples, PAUSED))
            assigned += (value(samples, ASSIGNED) or 0.0) if samples is not None else 0.0
        return paused, assigned

    wait_until(
        lambda: paused_and_assigned() == ([0.0] * len(members), float(run.partitions)),
        10,
        lambda: (
            f"({PAUSED} per member, {ASSIGNED} summed) = {paused_and_assigned()}, "
            f"want zero paused and {run.partitions} assigned:\n" + describe(run, watch, members)
        ),
    )


# -- the scenarios ---------------------------------------------------------------------


async def test_database_outage_across_a_member_joining(
    fault_env: FaultEnv, watch: MetricsWatch, side_pg: ThreadedProxy
) -> None:
    """Two members consume; PostgreSQL goes away (connections reset, new ones refused)
    and traffic to two partitions makes both members' batches fail and their partitions
    pause; a third member joins during the outage, and each of the first two is given
    only a partition it did not hold, one with nothing to fetch at that moment (more
    traffic comes after). After healing: lag returns to zero within DRAIN_S, every
    message is stored once and announced once (the harness audit), no member exited,
    and every member reports wamid_guard_paused_partitions 0."""
    run = await fault_env.run("PostgreSQL outage across a rebalance (a member joins)")
    # Member ids sort as their client ids. Round robin deals b {0, 2}, c {1, 3}; once
    # a has joined (it sorts first), a {0, 3}, b {1}, c {2}.
    members = [start_member(run, watch, "wg-b"), start_member(run, watch, "wg-c")]
    held_before = wait_settled(run, members, after={})
    await run.send_wave(0)
    await kafka.wait_committed(run.settings, run.ends, timeout_s=30, explain=run.group.logs)

    fault_env.pg.refuse(True)
    down_at = time.time()
    # The outage's first traffic goes to partitions 0 and 3 only (b's and c's, and the
    # joiner's after the rebalance): 1 and 2 stay fully committed until the rebalance.
    run.traffic.waves[1] = [(0 if p < 2 else 3, body) for p, body in run.traffic.waves[1]]
    await run.send_wave(1)
    for m in members:  # the outage bit: both failed a batch and paused

        def failed_and_paused(m: ConsumerProc = m) -> bool:
            return failed_batches(m, down_at) > 0 and bool(pauses(m, down_at))

        wait_until(
            failed_and_paused,
            30,
            lambda: "no failed batch and pause on every member:\n" + run.group.logs(),
        )
    before = {m.index: len(assignments(m)) for m in members}
    joiner = join_during_outage(run, watch, side_pg, "wg-a")
    held_after = wait_settled(run, [joiner, *members], after=before)
    for m in members:  # their loops came round on the new assignment before more traffic
        assigned_at = assignments(m)[-1][0]
        port = watch.ports[m.index]

        def polled_after(port: int = port, after: float = assigned_at + 0.5) -> bool:
            return last_poll(port) > after

        wait_until(
            polled_after,
            30,
            lambda: "a member's poll loop stopped:\n" + run.group.logs(),
        )
    await run.send_wave(2)
    wait_until(
        lambda: failed_batches(joiner, down_at) > 0,
        30,
        lambda: "the joining member never failed a batch:\n" + run.group.logs(),
    )
    fault_env.pg.refuse(False)
    side_pg.refuse(False)
    healed_at = time.time()
    run.healed()

    newly = {i: sorted(held_after[i] - held_before[i]) for i in held_before}
    assert any(newly.values()), (
        f"the rebalance gave no member a partition it did not hold before the outage "
        f"(before {held_before}, after {held_after}): the scenario did not happen"
    )
    for m in members:
        assert any(down_at < at < healed_at for at, _ in assignments(m)), (
            f"member {m.index} was not reassigned during the outage"
        )

    members.append(joiner)
    drain_s = await drain(run, watch, members)
    figures = await run.audit(
        drain_s,
        held_before={str(k): sorted(v) for k, v in held_before.items()},
        held_after={str(k): sorted(v) for k, v in held_after.items()},
    )
    assert figures.rebalances >= 2
    check_nothing_paused(run, watch, members)
    dead = [(m.index, m.proc.poll()) for m in members if m.proc.poll() is not None]
    assert not dead, f"members exited: {dead}\n{run.group.logs()}"


async def test_partition_back_during_outage_stays_bounded(
    fault_env: FaultEnv, watch: MetricsWatch, side_pg: ThreadedProxy
) -> None:
    """MAX_PENDING_RECORDS=10, BATCH_MAX_RECORDS=10. One member holds every partition;
    PostgreSQL goes away and traffic keeps coming; a second member joins (half of the
    partitions leave the first; see join_during_outage) and leaves again with SIGTERM
    (they come back), all during the outage. While the database is down, no member's
    wamid_guard_pending_records of any partition exceeds MAX_PENDING_RECORDS +
    BATCH_MAX_RECORDS, and the first member fetches no more after the partitions came
    back than that bound per partition allows. After healing the audit passes, the
    first member is alive and the second exited 0."""
    limit, batch = 10, 10
    fault_env.settings = fault_env.settings.replace(
        max_pending_records=limit, batch_max_records=batch
    )
    run = await fault_env.run("partition moved away and back during a PostgreSQL outage")
    # Lots of traffic: about 140 records a wave (90 of messages, 50 of statuses), 4 waves
    # over 4 partitions.
    run.traffic = make_traffic(480, partitions=run.partitions, waves=4, seed=23)
    bound = limit + batch

    owner = start_member(run, watch, "wg-a")
    wait_settled(run, [owner], after={})
    held_before = holding(owner) or set()
    await run.send_wave(0)
    await kafka.wait_committed(run.settings, run.ends, timeout_s=30, explain=run.group.logs)

    fault_env.pg.refuse(True)
    down_at = time.time()
    await run.send_wave(1)
    wait_until(
        lambda: failed_batches(owner, down_at) > 0 and bool(pauses(owner, down_at)),
        30,
        lambda: "the owner never failed a batch and paused:\n" + run.group.logs(),
    )

    guest = join_during_outage(run, watch, side_pg, "wg-b")
    split = wait_settled(run, [owner, guest], after={owner.index: len(assignments(owner))})
    await run.send_wave(2)
    wait_until(
        lambda: failed_batches(guest, down_at) > 0,
        30,
        lambda: "the joining member never failed a batch:\n" + run.group.logs(),
    )
    guest.signal(signal.SIGTERM)
    assert guest.wait(30) == 0, guest.log_tail()

    wait_settled(run, [owner], after={owner.index: len(assignments(owner))})
    back_at = assignments(owner)[-1][0]
    await run.send_wave(3)
    # The outage goes on after the partitions came back, until the owner has retried
    # what it holds at the longest backoff (and, were its pauses lost, fetched more).
    retried_at = back_at + 2 * run.settings.retry_backoff_max_s
    wait_until(
        lambda: failed_batches(owner, retried_at) > 0,
        30,
        lambda: (
            "the owner made no failed batch after its partitions came back "
            "(paused with nothing to retry?):\n" + describe(run, watch, [owner, guest])
        ),
    )
    fault_env.pg.refuse(False)
    side_pg.refuse(False)
    healed_at = time.time()
    run.healed()

    # The scenario: partitions left the owner and came back to it, during the outage.
    during = [(at, held) for at, held in assignments(owner) if down_at < at < healed_at]
    returned = sorted(
        p
        for p in held_before
        if any(
            p not in held and any(p in later for _, later in during[k + 1 :])
            for k, (_, held) in enumerate(during)
        )
    )
    assert returned, (
        f"no partition left the owner and came back during the outage: {during}, split {split}"
    )
    assert failed_batches(owner, down_at, healed_at) > 0
    assert failed_batches(guest, down_at, healed_at) > 0

    # Pending work while the database was down, from every member's /metrics.
    readings = watch.readings(down_at, healed_at)
    peaks: dict[tuple[int, int], float] = {}
    for r in readings:
        for p, pending in per_partition(r.samples, PENDING).items():
            peaks[(r.member, p)] = max(peaks.get((r.member, p), 0.0), pending)
    # What the owner fetched from just before its partitions came back to healing.
    owners = [r for r in readings if r.member == owner.index]
    after_back = [r for r in owners if r.at >= back_at]
    baseline = [r for r in owners if r.at < back_at][-1:] + after_back[:1]
    consumed = [value(r.samples, CONSUMED) or 0.0 for r in baseline[:1] + owners[-1:]]
    fetched_after_back = consumed[-1] - consumed[0] if consumed else 0.0
    allowed = run.partitions * bound + run.traffic.poison
    figures = (
        f"peak {PENDING} by (member, partition): {dict(sorted(peaks.items()))}; the owner "
        f"fetched {fetched_after_back:g} records between its partitions coming back and "
        f"healing (at most {allowed} with every partition paused at the limit); partitions "
        f"that came back: {returned}; {len(readings)} scrapes during the outage\n"
        + describe(run, watch, [owner, guest])
    )
    seen_back = {p for r in after_back for p in per_partition(r.samples, PENDING)}
    assert fetched_after_back <= allowed, "the owner kept fetching during the outage: " + figures
    assert set(returned) <= seen_back, (
        f"{PENDING} of the partitions that came back never scraped from the owner: " + figures
    )
    over = {k: v for k, v in peaks.items() if v > bound}
    assert not over, f"pending work above MAX_PENDING_RECORDS + one batch ({bound}): " + figures

    drain_s = await drain(run, watch, [owner, guest])
    await run.audit(
        drain_s,
        returned=returned,
        pending_peaks={f"{m}:{p}": v for (m, p), v in sorted(peaks.items())},
        fetched_after_back=fetched_after_back,
    )
    assert owner.proc.poll() is None, owner.log_tail()
