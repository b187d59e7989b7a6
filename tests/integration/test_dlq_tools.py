"""`python -m consumer dlq list | replay` against the real broker.

Dead letters are written by the real Publisher (as the service writes them) or by the
real pipeline over poison records; the commands run through ``consumer.cli.main`` with
the test's settings in the environment, and their stdout is what an operator would see.

Completeness without waiting: the embedded broker may show a partition's newest records
only up to about 5 s late, so a short silence proves nothing. Where nothing more is
written to the DLQ, a test writes a *fence* to every DLQ partition after its dead
letters: a record stamped 30 minutes ahead, which `dlq list` / `dlq replay` take as
"written after I started" and stop at (the same rule that ends a busy DLQ). The
commands then end as soon as they have seen every fence, and the default 6 s of
silence is only the fallback. The tests read topics the same way (until their own fence).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
import types
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from consumer import cli, deadletters, publish
from consumer.limits import MAX_REQUEST_BYTES
from consumer.publish import Publisher, producer_config
from consumer.records import InboundRecord, Invalid, Reason
from consumer.settings import Settings
from consumer.tools import embedded, topics
from consumer.tools.members import settings_env
from tests.support import kafka
from tests.support.bodies import text_webhook
from tests.support.procs import ConsumerGroup

pytestmark = [pytest.mark.integration, pytest.mark.brokers]

SIGNATURE = ("x-hub-signature-256", b"sha256=5eed")
PERSONAL = b"PERSONAL-DATA"
THREE_HOURS_MS = 3 * 3600 * 1000
FENCE = "test.fence"
# Ahead of every horizon a command takes during a test (its start + 5 s), and within
# the hour Apache Kafka accepts by default (log.message.timestamp.after.max.ms).
FENCE_AHEAD_MS = 30 * 60 * 1000
FENCE_WAIT_S = 30


@dataclass(frozen=True)
class Letter:
    """A dead letter written for a test: what went in, and where it landed in the DLQ."""

    reason: str
    source_partition: int
    source_offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    dlq_partition: int = -1
    dlq_offset: int = -1

    @property
    def at(self) -> str:
        return f"{self.dlq_partition}:{self.dlq_offset}"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


@pytest.fixture
async def dlq_settings(bootstrap: str) -> Settings:
    """Topics of its own (two DLQ partitions, so coordinates matter); no database."""
    run = uuid.uuid4().hex[:10]
    settings = Settings(
        kafka_bootstrap_servers=bootstrap,
        inbound_topic=f"in-{run}",
        outbound_topic=f"out-{run}",
        dlq_topic=f"dlq-{run}",
        consumer_group=f"g-{run}",
        log_format="json",
        metrics_port=0,
    )
    await topics.create_topics(bootstrap, {settings.inbound_topic: 2, settings.dlq_topic: 2})
    return settings


def _use_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """`main` reads the environment, as it does for an operator."""
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def cli_settings(dlq_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    _use_env(monkeypatch, dlq_settings)
    return dlq_settings


async def _dlq(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """Run `python -m consumer dlq ...` in-process (in a thread: it runs its own loop),
    with the default --idle."""
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["dlq", *argv])
    out, err = capsys.readouterr()
    return Run(code, out, err)


async def _fence(settings: Settings, topic: str) -> tuple[bytes, int]:
    """Write a fence to every partition of `topic` (see the module doc): its id and the
    partition count."""
    fence_id = uuid.uuid4().hex.encode()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_idempotence=False, acks="all"
    )
    await producer.start()
    try:
        count = len(await producer.partitions_for(topic))
        ahead = int(time.time() * 1000) + FENCE_AHEAD_MS
        sent = [
            await producer.send(
                topic, b"", partition=p, timestamp_ms=ahead, headers=[(FENCE, fence_id)]
            )
            for p in range(count)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return fence_id, count


async def _read_fenced(settings: Settings, topic: str) -> list[ConsumerRecord]:
    """Every record written to `topic` so far (fences left out): fence every partition,
    then read each from offset 0 up to its fence."""
    fence_id, count = await _fence(settings, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=16 << 20,
    )
    await consumer.start()
    found: list[ConsumerRecord] = []
    try:
        pending = {TopicPartition(topic, p) for p in range(count)}
        consumer.assign(list(pending))
        for tp in pending:
            consumer.seek(tp, 0)
        deadline = time.monotonic() + FENCE_WAIT_S
        while pending:
            assert time.monotonic() < deadline, f"no fence read back from {sorted(pending)}"
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                for record in records:
                    mark = dict(record.headers).get(FENCE)
                    if mark == fence_id:
                        pending.discard(tp)
                        consumer.pause(tp)
                        break
                    if mark is None:
                        found.append(record)
    finally:
        await consumer.stop()
    return found


def _invalid(settings: Settings, letter: Letter) -> Invalid:
    record = InboundRecord(
        settings.inbound_topic,
        letter.source_partition,
        letter.source_offset,
        letter.key,
        letter.value,
        letter.headers,
        1_700_000_000_000,
    )
    return Invalid(record, Reason(letter.reason), f"{letter.reason} detail")


async def _dead_letter(settings: Settings, letters: list[Letter]) -> None:
    """Write through the real Publisher; its 160 KiB request limit truncates big bodies."""
    producer = AIOKafkaProducer(
        **producer_config(
            settings.kafka_bootstrap_servers,
            client_id="test-dlq",
            request_timeout_s=10,
            max_request_bytes=1 << 20,
        )
    )
    await producer.start()
    try:
        publisher = Publisher(producer, dlq_topic=settings.dlq_topic, max_request_bytes=160 * 1024)
        await publisher.dead_letter([_invalid(settings, letter) for letter in letters])
    finally:
        await producer.stop()


async def _located(settings: Settings, letters: list[Letter]) -> list[Letter]:
    """Where each letter landed in the DLQ (found by its source offset). Fences the DLQ:
    write no more dead letters after this."""
    where = {
        deadletters.read(r.headers).source_offset: (r.partition, r.offset)
        for r in await _read_fenced(settings, settings.dlq_topic)
    }
    assert len(where) == len(letters), where
    return [
        dataclasses.replace(
            letter,
            dlq_partition=where[letter.source_offset][0],
            dlq_offset=where[letter.source_offset][1],
        )
        for letter in letters
    ]


@pytest.fixture
async def letters(cli_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, Letter]:
    """Six dead letters: three not_json (signed, keyed), a bad_shape, a truncated
    oversize, and a bad_shape dead-lettered three hours ago."""
    s = cli_settings
    fresh = [
        Letter("not_json", 0, 10, b"key-0", b"not json 0 " + PERSONAL, (SIGNATURE, ("t", b"0"))),
        Letter("not_json", 1, 11, b"key-1", b"not json 1 " + PERSONAL, (SIGNATURE, ("t", b"1"))),
        Letter("not_json", 0, 12, None, b"not json 2 " + PERSONAL, (SIGNATURE,)),
        Letter("bad_shape", 1, 13, b"key-3", b"[" + PERSONAL + b"]", ()),
        Letter("oversize", 0, 14, b"key-4", PERSONAL + b"x" * 200_000, (SIGNATURE,)),
    ]
    old = Letter("bad_shape", 1, 9, b"key-old", b"{" + PERSONAL + b"}", ())
    await _dead_letter(s, fresh)
    # The publisher stamps dlq.failed_at_ms from its module's clock: set it back 3 h.
    past = time.time() - THREE_HOURS_MS / 1000
    with monkeypatch.context() as patch:
        patch.setattr(publish, "time", types.SimpleNamespace(time=lambda: past))
        await _dead_letter(s, [old])
    located = await _located(s, [*fresh, old])
    names = ["nj0", "nj1", "nj2", "shape", "big", "old"]
    return dict(zip(names, located, strict=True))


def _prefix(settings: Settings, letter: Letter) -> str:
    return (
        f"{letter.at} {letter.reason} source={settings.inbound_topic}:"
        f"{letter.source_partition}:{letter.source_offset} age="
    )


def _listed(run: Run) -> list[str]:
    """The DLQ coordinates of the listed lines (the summary line excluded)."""
    return sorted(line.split(" ", 1)[0] for line in run.lines[:-1])


def _at(*letters: Letter) -> list[str]:
    return sorted(letter.at for letter in letters)


async def test_list_prints_one_line_per_dead_letter_and_a_summary(
    cli_settings: Settings, letters: dict[str, Letter], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every dead letter once: place, reason, source, age, size, detail; bodies never
    appear; the last line counts per reason and names the topic."""
    s = cli_settings
    run = await _dlq(capsys, "list")
    assert run.code == 0, run.err
    body = run.lines[:-1]
    assert len(body) == 6, run.out
    for name, letter in letters.items():
        (line,) = [x for x in body if x.startswith(f"{letter.at} ")]
        assert line.startswith(_prefix(s, letter)), (name, line)
        assert f'detail="{letter.reason} detail"' in line
    old = next(x for x in body if x.startswith(letters["old"].at + " "))
    assert " age=3h00m " in old or " age=2h59m " in old
    big = next(x for x in body if x.startswith(letters["big"].at + " "))
    assert "size=96.0KiB (truncated from 195.3KiB)" in big
    assert PERSONAL.decode() not in run.out + run.err
    assert run.lines[-1] == f"6 dead letter(s) in {s.dlq_topic}: not_json=3 bad_shape=2 oversize=1"


async def test_list_filters(
    cli_settings: Settings, letters: dict[str, Letter], capsys: pytest.CaptureFixture[str]
) -> None:
    """--reason (repeatable), --source-partition, --since/--until (relative and ISO),
    --offset and --limit each narrow the list; the summary counts what matched."""
    nj0, nj1, nj2, shape, big, old = letters.values()
    run = await _dlq(capsys, "list", "--reason", "bad_shape", "--reason", "oversize")
    assert _listed(run) == _at(shape, big, old)
    assert run.lines[-1].endswith(": bad_shape=2 oversize=1")

    run = await _dlq(capsys, "list", "--source-partition", "1")
    assert _listed(run) == _at(nj1, shape, old)

    run = await _dlq(capsys, "list", "--since", "1h")
    assert _listed(run) == _at(nj0, nj1, nj2, shape, big)
    run = await _dlq(capsys, "list", "--until", "1h")
    assert _listed(run) == _at(old)
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    run = await _dlq(capsys, "list", "--until", iso, "--reason", "bad_shape")
    assert _listed(run) == _at(old)

    run = await _dlq(capsys, "list", "--offset", nj1.at, "--offset", big.at)
    assert _listed(run) == _at(nj1, big)

    run = await _dlq(capsys, "list", "--reason", "not_json", "--limit", "2")
    assert len(run.lines) == 3
    assert run.lines[-1].endswith(", showing 2 (--limit): not_json=3")

    run = await _dlq(capsys, "list", "--reason", "empty")
    assert run.lines == [f"no dead letters matched in {cli_settings.dlq_topic}"]
    assert run.code == 0


async def test_list_json_and_show_body(
    cli_settings: Settings, letters: dict[str, Letter], capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints one object a line with every header and no body (the summary goes to
    stderr so the stream stays parseable); --show-body is the only way to see a body."""
    run = await _dlq(capsys, "list", "--json")
    assert run.code == 0
    objects = [orjson.loads(line) for line in run.lines]
    assert len(objects) == 6
    assert PERSONAL.decode() not in run.out
    by_at = {o["dlq"]: o for o in objects}
    nj0 = by_at[letters["nj0"].at]
    assert nj0["reason"] == "not_json"
    assert nj0["source"] == f"{cli_settings.inbound_topic}:0:10"
    assert nj0["key"] == "key-0"
    assert ["x-hub-signature-256", "sha256=5eed"] in nj0["headers"]
    assert {"dlq.reason", "dlq.failed_at_ms", "t"} <= {h for h, _ in nj0["headers"]}
    assert "body" not in nj0
    big = by_at[letters["big"].at]
    assert big["truncated"] is True
    assert big["original_size"] == len(letters["big"].value)
    assert "6 dead letter(s)" in run.err

    run = await _dlq(capsys, "list", "--show-body", "--offset", letters["nj2"].at)
    assert run.lines[1] == '    body="not json 2 PERSONAL-DATA"'


async def test_replay_sends_the_originals_with_their_origin(
    cli_settings: Settings, letters: dict[str, Letter], capsys: pytest.CaptureFixture[str]
) -> None:
    """`replay --reason not_json` puts exactly those records on the inbound topic with
    their original key, value and headers (signature kept, no dlq.* but
    dlq.replayed_from); the DLQ itself is left as it was."""
    s = cli_settings
    run = await _dlq(capsys, "replay", "--reason", "not_json")
    assert run.code == 0, run.err
    assert run.lines[-1].startswith(f"replay to {s.inbound_topic}: sent 3, failed 0, skipped 0")
    assert "Safe to repeat" in run.lines[-1]
    inbound = await _read_fenced(s, s.inbound_topic)
    got = sorted((r.key or b"", r.value, tuple(r.headers)) for r in inbound)
    want = sorted(
        (
            letter.key or b"",
            letter.value,
            (*letter.headers, ("dlq.replayed_from", f"{s.dlq_topic}:{letter.at}".encode())),
        )
        for letter in (letters["nj0"], letters["nj1"], letters["nj2"])
    )
    assert got == want
    assert len(await _read_fenced(s, s.dlq_topic)) == 6, "the DLQ is only read"


async def test_dry_run_sends_nothing(
    cli_settings: Settings, letters: dict[str, Letter], capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run prints what would go (and what would be skipped) and sends nothing."""
    s = cli_settings
    run = await _dlq(capsys, "replay", "--all", "--dry-run")
    assert run.code == 0, run.err
    would = sorted(line.split()[2] for line in run.lines if line.startswith("would send "))
    assert would == _at(*(v for k, v in letters.items() if k != "big"))
    assert f"skip {letters['big'].at}: value truncated" in run.out
    assert run.lines[-1] == "dry run, nothing sent: would send 5, skipped 1 (truncated: 1)"
    assert await _read_fenced(s, s.inbound_topic) == []


async def test_replay_refusals(
    cli_settings: Settings, letters: dict[str, Letter], capsys: pytest.CaptureFixture[str]
) -> None:
    """No filter and no --all: exit 2 and nothing sent. A truncated record is skipped with
    the reason; an unknown --offset is reported; bad arguments exit 2."""
    s = cli_settings
    run = await _dlq(capsys, "replay")
    assert run.code == 2
    assert "--all" in run.err
    run = await _dlq(capsys, "replay", "--limit", "1")
    assert run.code == 2
    run = await _dlq(capsys, "replay", "--since", "tuesday")
    assert run.code == 2
    assert "--since" in run.err

    run = await _dlq(capsys, "replay", "--offset", letters["big"].at, "--offset", "1:999")
    assert run.code == 1, "an --offset that names no dead letter is a failure"
    assert f"skip {letters['big'].at}: value truncated to 96.0KiB of 195.3KiB" in run.out
    assert "skip 1:999: no such record" in run.out
    assert "sent 0, failed 0, skipped 2 (" in run.lines[-1]
    assert await _read_fenced(s, s.inbound_topic) == []


async def test_errors_name_the_setting(
    cli_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreachable broker, a missing DLQ topic or inbound topic: exit 1 with a message
    naming the setting and its value."""
    port = embedded.free_port()
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    run = await _dlq(capsys, "list")
    assert run.code == 1
    assert f"cannot reach KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}" in run.err

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", cli_settings.kafka_bootstrap_servers)
    monkeypatch.setenv("DLQ_TOPIC", "no-such-dlq")
    run = await _dlq(capsys, "list")
    assert run.code == 1
    assert "DLQ_TOPIC=no-such-dlq: no such topic" in run.err

    monkeypatch.setenv("DLQ_TOPIC", cli_settings.dlq_topic)
    monkeypatch.setenv("INBOUND_TOPIC", "no-such-inbound")
    run = await _dlq(capsys, "replay", "--all")
    assert run.code == 1
    assert "INBOUND_TOPIC=no-such-inbound: no such topic" in run.err


async def test_a_failed_send_is_reported_and_exits_1(
    cli_settings: Settings, capsys: pytest.CaptureFixture[str], broker: str
) -> None:
    """A record the producer refuses (5 MiB: larger than any request the service makes at
    the default MAX_RECORD_BYTES, 3 MiB + 64 KiB; written by some other tool) fails on its
    own: the others are still sent, the failure is named, the exit code is 1."""
    s = cli_settings
    if broker == "apache":  # a DLQ topic that takes what that other tool writes
        await kafka.alter_topic(
            s.kafka_bootstrap_servers, s.dlq_topic, {"max.message.bytes": str(8 << 20)}
        )
    good = Letter("not_json", 0, 20, b"k", b"not json", (SIGNATURE,))
    await _dead_letter(s, [good])
    producer = AIOKafkaProducer(
        bootstrap_servers=s.kafka_bootstrap_servers,
        enable_idempotence=False,
        max_request_size=8 << 20,
    )
    await producer.start()
    try:
        huge = [("dlq.reason", b"not_json"), ("dlq.source.offset", b"21")]
        meta = await producer.send_and_wait(s.dlq_topic, b"{" * (5 << 20), headers=huge)
    finally:
        await producer.stop()
    await _fence(s, s.dlq_topic)
    run = await _dlq(capsys, "replay", "--reason", "not_json")
    assert run.code == 1, run.out + run.err
    assert f"FAILED {meta.partition}:{meta.offset} (not_json): MessageSizeTooLargeError" in run.out
    assert " sent 1, failed 1, skipped 0." in run.lines[-1]
    inbound = await _read_fenced(s, s.inbound_topic)
    assert [r.value for r in inbound] == [b"not json"]


async def test_a_busy_dlq_does_not_keep_list_running(
    cli_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """While poison keeps arriving (the DLQ never goes idle), `list` still ends: it reads
    what the topic held when it started, and stops at newer records."""
    s = cli_settings
    before = [Letter("bad_shape", 0, 30 + i, None, b"[]", ()) for i in range(3)]
    await _dead_letter(s, before)
    stop = asyncio.Event()

    async def keep_dead_lettering() -> int:
        offset = 1000
        while not stop.is_set():
            await _dead_letter(s, [Letter("not_json", 1, offset, None, b"x", ())])
            offset += 1
            await asyncio.sleep(0.1)
        return offset - 1000

    writer = asyncio.create_task(keep_dead_lettering())
    try:
        started = time.monotonic()
        run = await asyncio.wait_for(_dlq(capsys, "list", "--reason", "bad_shape"), 30)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        written = await writer
    assert run.code == 0
    assert run.lines[-1] == f"3 dead letter(s) in {s.dlq_topic}: bad_shape=3"
    assert elapsed < 15, f"list ran {elapsed:.1f}s while {written} records kept arriving"
    assert written > elapsed * 3, "the DLQ was really busy the whole time"


def _replayed_to(runs: list[Run], ends: dict[int, int]) -> dict[int, int]:
    """`ends` grown by where the replays' `sent P:O -> topic:p:o` lines put records."""
    grown: dict[int, int] = collections.defaultdict(int, ends)
    for run in runs:
        for line in run.lines:
            if line.startswith("sent "):
                _, partition, offset = line.split(" -> ")[1].split(" ")[0].rsplit(":", 2)
                grown[int(partition)] = max(grown[int(partition)], int(offset) + 1)
    return dict(grown)


@pytest.mark.slow
async def test_round_trip_through_the_pipeline(
    group: ConsumerGroup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With real consumers: poison is listed with its true source; a valid webhook that
    an earlier release dead-lettered is stored once and announced once after being
    replayed twice (safe to repeat); a replayed poison record is dead-lettered again and
    still carries its signature and its origin."""
    s = group.settings
    _use_env(monkeypatch, s)
    good = Letter("bad_shape", 3, 70, None, text_webhook("111", "wamid.REPLAYED"), (SIGNATURE,))
    await _dead_letter(s, [good])
    group.start(1)
    group.wait_all_assigned()
    ends = await kafka.send(s, [(2, b"not json " + PERSONAL)], headers=[SIGNATURE])
    await kafka.wait_committed(s, ends, explain=group.logs)

    run = await _dlq(capsys, "list", "--reason", "not_json")
    (line, summary) = run.lines
    assert f" not_json source={s.inbound_topic}:2:0 " in line
    poison_at = line.split(" ", 1)[0]
    assert summary == f"1 dead letter(s) in {s.dlq_topic}: not_json=1"

    replays = []
    for _ in range(2):
        run = await _dlq(capsys, "replay", "--reason", "bad_shape")
        assert run.code == 0, run.err
        assert " sent 1, failed 0" in run.lines[-1]
        replays.append(run)
    run = await _dlq(capsys, "replay", "--offset", poison_at)
    assert run.code == 0, run.err
    replays.append(run)
    await kafka.wait_committed(s, _replayed_to(replays, ends), explain=group.logs)

    assert await kafka.rows(s) == [("111", "wamid.REPLAYED")]
    events: list[dict[str, Any]] = await kafka.events(s)
    assert [e["message"]["source_id"] for e in events] == ["wamid.REPLAYED"]

    run = await _dlq(capsys, "list", "--json", "--reason", "not_json")
    again = [o for o in map(orjson.loads, run.lines) if o["dlq"] != poison_at]
    assert len(again) == 1, run.out
    headers = again[0]["headers"]
    assert ["x-hub-signature-256", "sha256=5eed"] in headers
    assert ["dlq.replayed_from", f"{s.dlq_topic}:{poison_at}"] in headers


async def _publish_dead_letters(
    settings: Settings, invalid: list[Invalid], *, producer_max_request: int = MAX_REQUEST_BYTES
) -> None:
    """Dead-letter through the real Publisher as the service builds it (request limit
    MAX_REQUEST_BYTES), over a producer refusing requests above `producer_max_request`."""
    producer = AIOKafkaProducer(
        **producer_config(
            settings.kafka_bootstrap_servers,
            client_id="test-dlq",
            request_timeout_s=10,
            max_request_bytes=producer_max_request,
        )
    )
    await producer.start()
    try:
        publisher = Publisher(
            producer, dlq_topic=settings.dlq_topic, max_request_bytes=MAX_REQUEST_BYTES
        )
        await publisher.dead_letter(invalid)
    finally:
        await producer.stop()


def _inbound(
    settings: Settings,
    offset: int,
    *,
    key: bytes | None = b"k",
    value: bytes = b"not json",
    headers: tuple[tuple[str, bytes], ...] = (SIGNATURE,),
) -> Invalid:
    record = InboundRecord(
        settings.inbound_topic, 1, offset, key, value, headers, 1_700_000_000_000
    )
    return Invalid(record, Reason.NOT_JSON, "Expecting value: line 1 column 1 (char 0)")


async def test_a_huge_key_and_header_still_make_a_dead_letter(
    cli_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """An inbound record with a 1.9 MB key and a 1.9 MB header: its dead letter fits the
    1 MiB request limit and is produced whole (not the minimal form) on the real broker;
    `list` says what was cut, and `replay` refuses it, saying why."""
    s = cli_settings
    big = 1_900_000
    invalid = _inbound(s, 50, key=b"K" * big, headers=(("x-big", b"H" * big), SIGNATURE))
    await _publish_dead_letters(s, [invalid])
    (record,) = await _read_fenced(s, s.dlq_topic)
    parsed = deadletters.read(record.headers)
    assert parsed.omitted == ()
    assert (parsed.reason, parsed.source_offset) == ("not_json", 50)
    assert (parsed.original_key_size, parsed.dropped_headers) == (big, 1)
    assert parsed.originals == (SIGNATURE,)
    assert (record.key, record.value) == (b"K" * deadletters.KEY_MAX_BYTES, b"not json")

    run = await _dlq(capsys, "list")
    (line, _summary) = run.lines
    assert f" not_json source={s.inbound_topic}:1:50 " in line
    assert ' incomplete="key truncated to 1.0KiB of 1.8MiB; 1 header(s) dropped (too large)"' in (
        line
    )
    at = line.split(" ", 1)[0]
    run = await _dlq(capsys, "replay", "--offset", at)
    assert run.code == 0, run.err
    assert f"skip {at}: key truncated to 1.0KiB of 1.8MiB; 1 header(s) dropped" in run.out
    assert run.lines[-1].startswith(f"replay to {s.inbound_topic}: sent 0, failed 0, skipped 1")


async def test_a_dead_letter_refused_as_too_large_lands_minimal(
    cli_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A producer whose max_request_size is below what the dead letter needs: the
    publisher sends it again as our headers only, and it lands on the real broker; a
    small one in the same call goes whole. `list` shows what was left out, `replay`
    refuses it."""
    s = cli_settings
    small = _inbound(s, 60)
    big = _inbound(s, 61, value=b"V" * 200_000, headers=(SIGNATURE, ("t", b"1")))
    await _publish_dead_letters(s, [small, big], producer_max_request=64 * 1024)
    records = {
        deadletters.read(r.headers).source_offset: r for r in await _read_fenced(s, s.dlq_topic)
    }
    assert set(records) == {60, 61}
    assert records[60].value == b"not json"
    assert deadletters.read(records[60].headers).originals == (SIGNATURE,)
    minimal = records[61]
    assert (minimal.key, minimal.value) == (None, b"")
    parsed = deadletters.read(minimal.headers)
    assert parsed.omitted == ("key", "value", "headers")
    assert (parsed.original_size, parsed.dropped_headers) == (200_000, 2)
    assert parsed.detail == "Expecting value: line 1 column 1 (char 0)"

    run = await _dlq(capsys, "list", "--reason", "not_json")
    line = next(x for x in run.lines if ":1:61 " in x)
    assert " size=0B (left out, was 195.3KiB) " in line
    at = line.split(" ", 1)[0]
    run = await _dlq(capsys, "replay", "--offset", at)
    assert f"skip {at}: value left out (195.3KiB); key left out (1B); headers left out" in run.out


async def test_forged_dlq_headers_do_not_fool_the_tools(
    cli_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record carrying forged dlq.reason, dlq.source.offset and dlq.replayed_from, next
    to a dead letter of the previous format with a forged header after ours: `list` and
    `list --json` show the real reasons and coordinates; `replay` re-sends exactly the
    record's headers (the signature among them) plus the real origin."""
    s = cli_settings
    forged = (
        ("dlq.reason", b"empty"),
        ("dlq.source.offset", b"999999"),
        ("dlq.replayed_from", b"forged:0:1"),
        SIGNATURE,
    )
    await _publish_dead_letters(s, [_inbound(s, 70, headers=forged)])
    producer = AIOKafkaProducer(
        bootstrap_servers=s.kafka_bootstrap_servers, enable_idempotence=False
    )
    await producer.start()
    try:
        old_format = [
            ("dlq.reason", b"bad_shape"),
            ("dlq.detail", b"old"),
            ("dlq.source.topic", s.inbound_topic.encode()),
            ("dlq.source.partition", b"0"),
            ("dlq.source.offset", b"71"),
            ("dlq.source.timestamp_ms", b"1"),
            ("dlq.failed_at_ms", str(int(time.time() * 1000)).encode()),
            SIGNATURE,
            ("dlq.reason", b"empty"),
        ]
        await producer.send_and_wait(s.dlq_topic, b"[]", key=b"old", headers=old_format)
    finally:
        await producer.stop()
    await _fence(s, s.dlq_topic)

    run = await _dlq(capsys, "list")
    assert run.code == 0, run.err
    lines = sorted(run.lines[:-1], key=lambda x: "bad_shape" in x)
    assert f" not_json source={s.inbound_topic}:1:70 " in lines[0]
    assert lines[0].endswith(" replayed_from=forged:0:1"), "what the record carried"
    assert f" bad_shape source={s.inbound_topic}:0:71 " in lines[1]
    assert "999999" not in run.out
    assert run.lines[-1] == f"2 dead letter(s) in {s.dlq_topic}: bad_shape=1 not_json=1"
    run = await _dlq(capsys, "list", "--json")
    by_reason = {o["reason"]: o for o in map(orjson.loads, run.lines)}
    assert by_reason["not_json"]["source"] == f"{s.inbound_topic}:1:70"
    assert by_reason["bad_shape"]["source"] == f"{s.inbound_topic}:0:71"

    run = await _dlq(capsys, "replay", "--all")
    assert run.code == 0, run.err
    assert " sent 2, failed 0, skipped 0" in run.lines[-1]
    sent = {r.key: tuple(r.headers) for r in await _read_fenced(s, s.inbound_topic)}
    new_at, old_at = (line.split(" ", 1)[0] for line in lines)
    assert sent[b"k"] == (*forged, ("dlq.replayed_from", f"{s.dlq_topic}:{new_at}".encode()))
    assert sent[b"old"] == (
        SIGNATURE,
        ("dlq.reason", b"empty"),
        ("dlq.replayed_from", f"{s.dlq_topic}:{old_at}".encode()),
    )
