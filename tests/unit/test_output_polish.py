"""What the commands print, from the "Output polish" issue: `dlq list` keeps the end of a
long detail (where the setting to change is named), `dlq list`/`dlq replay` explain an
unreachable broker as `run` does and print their count however they end, a second stop
request is one line, a member that fails to start says so once and without a page of
zero counters, and `tail` parses each event once.

Commands are called through their own `run()` (not `cli.main`, which configures the
process's logging at INFO and would hide the debug lines later tests capture); where the
CLI's error path is the subject, `cli.run_command` runs with `logs.configure` stubbed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace, TracebackType
from typing import Any, ClassVar

import orjson
import pytest
import structlog
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from consumer import cli, events, intake, logs
from consumer.commands import dlq as dlq_command
from consumer.commands import run as run_command
from consumer.commands import tail as tail_command
from consumer.errors import BrokerError, WamidGuardError
from consumer.publish import Publisher
from consumer.records import Invalid, Webhook
from consumer.service import Service
from consumer.settings import Settings
from consumer.testing import message, record, webhook
from consumer.tools import dlq
from consumer.tools import tail as tail_tool

NOW = dt.datetime(2026, 11, 29, 3, 0, tzinfo=dt.UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _args(*argv: str) -> argparse.Namespace:
    """The parsed arguments of `python -m consumer ARGV` (nothing run, nothing configured)."""
    return cli._parser().parse_args(list(argv))


# --- dead letters, as the code writes them ----------------------------------------------


class _RecordingProducer:
    """Stands in for AIOKafkaProducer: keeps what was sent, acknowledges at once."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, topic: str, **sent: Any) -> asyncio.Future[None]:
        self.sent.append({"topic": topic, **sent})
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _letter(sent: dict[str, Any], offset: int) -> dlq.DeadLetter:
    return dlq.DeadLetter(
        topic=sent["topic"],
        partition=0,
        offset=offset,
        timestamp_ms=NOW_MS,
        key=sent["key"],
        value=sent["value"],
        headers=tuple(sent["headers"]),
    )


def _dead_letters_of(*values: bytes) -> list[dlq.DeadLetter]:
    """The dead letters the real Publisher writes for records intake refuses."""
    producer = _RecordingProducer()
    publisher = Publisher(producer, dlq_topic="dlq", max_request_bytes=1 << 20)
    for value in values:
        refused = intake.decode(record(value), max_bytes=1 << 20)
        assert isinstance(refused, Invalid)
        asyncio.run(publisher.dead_letter([refused]))
    return [_letter(sent, i) for i, sent in enumerate(producer.sent)]


def _refused_event_letter() -> dlq.DeadLetter:
    """The dead letter the real Publisher writes for a message_created event the
    outbound topic refused as too large: its detail (about 370 characters) ends with what
    to do, naming max.message.bytes."""
    hook = intake.decode(record(webhook([message("wamid.big", text="x" * 800)])), max_bytes=1 << 20)
    assert isinstance(hook, Webhook)
    (event,) = [events.build(m, topic="out", occurred_at=NOW) for m in hook.messages]
    producer = _RecordingProducer()
    publisher = Publisher(producer, dlq_topic="dlq", max_request_bytes=1 << 20)
    with structlog.testing.capture_logs():  # event.unpublishable: not this test's
        asyncio.run(publisher._dead_letter_events([(event, MessageSizeTooLargeError())]))
    (sent,) = producer.sent
    return _letter(sent, 7)


class _FakeReader:
    """Stands in for DlqReader: hands out `letters`, then does what `then` says ("end",
    "fail": the broker goes away, "interrupt": SIGINT, as Ctrl-C sends it)."""

    letters_given: ClassVar[list[dlq.DeadLetter]] = []
    then: ClassVar[str] = "end"

    def __init__(self, _settings: Settings, *, idle_s: float) -> None:
        self.idle_s = idle_s

    async def __aenter__(self) -> _FakeReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def require_topic(self, _setting: str, _topic: str) -> None:
        return None

    async def letters(self) -> AsyncIterator[dlq.DeadLetter]:
        for letter in self.letters_given:
            yield letter
        if self.then == "fail":
            raise BrokerError("reading DLQ_TOPIC=dlq failed: KafkaConnectionError: gone")
        if self.then == "interrupt":
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.Event().wait()


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> type[_FakeReader]:
    monkeypatch.setattr(dlq, "DlqReader", _FakeReader)
    monkeypatch.setattr(_FakeReader, "letters_given", [])
    monkeypatch.setattr(_FakeReader, "then", "end")
    return _FakeReader


# --- a: a long detail keeps the setting it names ------------------------------------------


def test_dlq_list_keeps_the_end_of_a_long_detail(
    reader: type[_FakeReader], capsys: pytest.CaptureFixture[str]
) -> None:
    """The refused event's detail is longer than a line holds: the line keeps its start
    (what failed) and its end (what to do, with the setting), cut between words."""
    letter = _refused_event_letter()
    assert len(letter.detail) > 300
    assert letter.detail.endswith(
        "raise the topic's max.message.bytes and produce this value, key and event_id header to it"
    )
    reader.letters_given = [letter]
    settings = Settings(dlq_topic="dlq")
    assert dlq_command.run(settings, _args("dlq", "list")) == 0
    line = capsys.readouterr().out.splitlines()[0]
    detail = orjson.loads(line.split(" detail=", 1)[1])
    assert detail.startswith("OUTBOUND_TOPIC out refused this")
    assert detail.endswith(
        "raise the topic's max.message.bytes and produce this value, key and event_id header to it"
    )
    assert " … " in detail, "the middle is left out, and says so"
    assert len(detail) <= 200
    head, tail = detail.split(" … ")
    assert letter.detail.startswith(head), "cut between words"
    assert letter.detail.endswith(" " + tail), "cut between words"


def test_a_detail_that_fits_is_shown_whole() -> None:
    """intake's MAX_OUTPUT_BYTES detail (about 150 characters) fits: nothing is cut (80
    characters cut it before the setting's name)."""
    detail = (
        "its 3 messages would make about 1100000 bytes of rows and events, more than the "
        "1048576 any record may make (MAX_OUTPUT_BYTES; the record has 300000 bytes)"
    )
    letter = dlq.DeadLetter("dlq", 0, 1, NOW_MS, None, b"", (("dlq.detail", detail.encode()),))
    line = dlq.format_line(letter, now_ms=NOW_MS)
    assert orjson.loads(line.split(" detail=", 1)[1]) == detail


# --- d: an unreachable broker, in words ---------------------------------------------------


@pytest.mark.parametrize("argv", [["dlq", "list"], ["dlq", "replay", "--all"]])
def test_dlq_with_the_broker_down_says_what_to_check(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """No raw KafkaConnectionError(...): the bootstrap servers and why they do not
    answer, as `run` says it (the client's error chained as the cause)."""
    port = _free_port()
    settings = Settings(kafka_bootstrap_servers=f"127.0.0.1:{port}", kafka_request_timeout_s=5.0)
    with pytest.raises(BrokerError) as caught:
        dlq_command.run(settings, _args(*argv, "--idle", "1"))
    said = str(caught.value)
    assert said == (
        f"cannot reach KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}: 127.0.0.1:{port}: "
        "connection refused (nothing listens on that port)"
    )
    assert "KafkaConnectionError" not in said
    assert isinstance(caught.value.__cause__, KafkaError | TimeoutError)
    capsys.readouterr()


def test_dlq_replay_whose_producer_cannot_start_says_so(
    reader: type[_FakeReader], capsys: pytest.CaptureFixture[str]
) -> None:
    """The DLQ read, the broker gone before the replays are sent: the same explanation,
    and the count says nothing was sent."""
    reader.letters_given = _dead_letters_of(b"not json")
    port = _free_port()
    settings = Settings(kafka_bootstrap_servers=f"127.0.0.1:{port}", kafka_request_timeout_s=5.0)
    with pytest.raises(
        BrokerError, match=f"cannot reach KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}: "
    ):
        dlq_command.run(settings, _args("dlq", "replay", "--all"))
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"replay to {settings.inbound_topic}: nothing sent, skipped 0"
    )


def test_the_cli_prints_one_line_and_exits_1_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the one error path: exit 1, one plain line on stderr, no traceback."""
    port = _free_port()
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    monkeypatch.setenv("LOG_LEVEL", "INFO")
    monkeypatch.setattr(logs, "configure", lambda *_args, **_kwargs: None)
    root = logging.getLogger()
    level = root.level
    try:
        args = _args("dlq", "list", "--idle", "1")
        code = cli.run_command("dlq", lambda s: dlq_command.run(s, args))
    finally:
        root.setLevel(level)
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"wamid-guard dlq: cannot reach KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}: "
        f"127.0.0.1:{port}: connection refused (nothing listens on that port)"
    ]


# --- e: the count, however the command ends -----------------------------------------------


def _two_letters() -> list[dlq.DeadLetter]:
    return _dead_letters_of(b"not json", b"[1]")


def test_dlq_list_counts_when_it_reads_to_the_end(
    reader: type[_FakeReader], capsys: pytest.CaptureFixture[str]
) -> None:
    """The closing count (on stdout with the lines; on stderr with --json, so that stdout
    stays one JSON object a line)."""
    reader.letters_given = _two_letters()
    assert dlq_command.run(Settings(dlq_topic="dlq"), _args("dlq", "list")) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "2 dead letter(s) in dlq: bad_shape=1 not_json=1"
    assert err == ""
    assert dlq_command.run(Settings(dlq_topic="dlq"), _args("dlq", "list", "--json")) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2
    assert err.splitlines() == ["2 dead letter(s) in dlq: bad_shape=1 not_json=1"]


@pytest.mark.parametrize("then", ["interrupt", "fail"])
def test_dlq_list_counts_what_it_read_when_cut_short(
    then: str, reader: type[_FakeReader], capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C, or the broker going away half way: the count of what was read, saying the
    topic was not read to its end (tail does the same)."""
    reader.letters_given = _two_letters()
    reader.then = then
    expected = KeyboardInterrupt if then == "interrupt" else BrokerError
    with pytest.raises(expected):
        dlq_command.run(Settings(dlq_topic="dlq"), _args("dlq", "list"))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert out[-1] == (
        "2 dead letter(s) in dlq: bad_shape=1 not_json=1 (stopped before the end of dlq)"
    )


def test_dlq_replay_interrupted_while_reading_says_nothing_was_sent(
    reader: type[_FakeReader], capsys: pytest.CaptureFixture[str]
) -> None:
    reader.letters_given = _two_letters()
    reader.then = "interrupt"
    settings = Settings(dlq_topic="dlq")
    with pytest.raises(KeyboardInterrupt):
        dlq_command.run(settings, _args("dlq", "replay", "--all"))
    assert capsys.readouterr().out.splitlines() == [
        f"replay to {settings.inbound_topic}: nothing sent"
    ]


# --- b: a second stop request is one line -------------------------------------------------


async def _stop_a_stuck_loop(service: Service, *, force_after_s: float | None) -> list[str]:
    """A loop that ignores the stop (a batch that will not end): the stop request, a
    second one after `force_after_s` if given, and the log lines of the stop."""

    async def stuck() -> None:
        await asyncio.Event().wait()

    loop_task = asyncio.create_task(stuck())
    with structlog.testing.capture_logs() as logs:
        service.request_stop("SIGTERM")
        if force_after_s is not None:
            asyncio.get_running_loop().call_later(force_after_s, service.request_stop, "SIGTERM")
        await service.supervise(loop_task, [])
    assert loop_task.cancelled()
    return [str(line["event"]) for line in logs]


async def test_a_forced_stop_does_not_also_say_the_grace_expired() -> None:
    service = Service(Settings(shutdown_grace_s=5.0))
    said = await _stop_a_stuck_loop(service, force_after_s=0.05)
    assert said == ["service.stopping", "service.force_stop", "service.batch_cancelled"]


async def test_a_grace_that_runs_out_still_says_so() -> None:
    service = Service(Settings(shutdown_grace_s=0.1))
    said = await _stop_a_stuck_loop(service, force_after_s=None)
    assert said == ["service.stopping", "service.grace_expired", "service.batch_cancelled"]


# --- c: a member that fails to start ------------------------------------------------------


def _unreachable_redis(tmp_path: Path) -> dict[str, str]:
    return {
        "REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'w.db'}",
        "METRICS_PORT": "0",
    }


def test_a_failed_start_logs_no_page_of_zero_counters(tmp_path: Path) -> None:
    """`run` with Redis unreachable: the error says which dependency and setting; the
    member's last line is a short service.start_failed, without the counters of a
    member that never ran (a member that ran ends with service.stopped and them)."""
    settings = Settings.from_env(_unreachable_redis(tmp_path))
    with structlog.testing.capture_logs() as logs, pytest.raises(WamidGuardError) as caught:
        run_command.run(settings, argparse.Namespace())
    assert str(caught.value).startswith(f"cannot reach Redis at REDIS_URL={settings.redis_url}")
    (failed,) = [line for line in logs if line["event"] == "service.start_failed"]
    assert set(failed) == {"event", "log_level", "worker_id"}
    assert not [line for line in logs if line["event"] == "service.stopped"]


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_a_failed_start_says_its_error_once(
    fmt: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The plain line says what failed. A console log (read on the terminal, above that
    line) does not say it again: command.failed carries the chained cause only; JSON
    lines (a log pipeline) keep the error as a field."""
    for name, value in {**_unreachable_redis(tmp_path), "LOG_FORMAT": fmt}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(logs, "configure", lambda *_args, **_kwargs: None)
    with structlog.testing.capture_logs() as said:
        code = cli.run_command(
            "run", lambda s: run_command.run(s, argparse.Namespace()), service=True
        )
    assert code == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith("wamid-guard run: cannot reach Redis at REDIS_URL=redis://127.0.0.1:")
    (failed,) = [line for line in said if line["event"] == "command.failed"]
    assert failed["cause"]
    if fmt == "console":
        assert "error" not in failed
    else:
        assert failed["error"] == err[0].removeprefix("wamid-guard run: ")


# --- f: tail parses each event once -------------------------------------------------------


def test_tail_parses_each_event_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One JSON parse an event gives both its line and its kind for the exit count."""
    hook = intake.decode(
        record(webhook([message("wamid.1"), message("wamid.2")])), max_bytes=1 << 20
    )
    assert isinstance(hook, Webhook)
    values = [events.build(m, topic="out", occurred_at=NOW).payload for m in hook.messages]
    values.append(b"not json")
    fetched = [
        SimpleNamespace(
            topic="out", partition=0, offset=i, key=None, value=v, headers=(), timestamp=NOW_MS
        )
        for i, v in enumerate(values)
    ]

    async def no_check(*_args: Any) -> None:
        return None

    async def read_topic(*_args: Any, **_kwargs: Any) -> AsyncIterator[Any]:
        for one in fetched:
            yield one

    parsed: list[bytes] = []

    def loads(data: bytes) -> Any:
        parsed.append(data)
        return orjson.loads(data)

    monkeypatch.setattr(tail_tool, "require_topics", no_check)
    monkeypatch.setattr(tail_tool, "read_topic", read_topic)
    monkeypatch.setattr(
        tail_tool, "orjson", SimpleNamespace(loads=loads, JSONDecodeError=orjson.JSONDecodeError)
    )
    assert tail_command.run(Settings(outbound_topic="out"), _args("tail", "--idle-exit", "1")) == 0
    out, err = capsys.readouterr()
    assert parsed == values, "each event parsed once"
    lines = out.splitlines()
    assert [line.split()[1] for line in lines[:2]] == ["message_created"] * 2
    assert lines[2] == "0:2 <not an event of ours: 8 bytes>"
    assert err.splitlines() == ["tail: 3 event(s) read from out: message_created 2, other 1"]
