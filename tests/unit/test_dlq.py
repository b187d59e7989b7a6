"""The dead-letter tools' pure parts: filters, selection, rendering, replay planning.

Dead letters are built by the real :class:`Publisher` (over a recording producer), so
these tests read exactly the headers the service writes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import orjson
import pytest

from consumer import deadletters, safetext
from consumer.errors import ConfigError
from consumer.publish import Publisher
from consumer.records import InboundRecord, Invalid, Reason
from consumer.tools import dlq

NOW_MS = int(dt.datetime(2026, 11, 29, 3, 0, tzinfo=dt.UTC).timestamp() * 1000)
SIGNATURE = ("x-hub-signature-256", b"sha256=0123abcd")
PERSONAL = b'{"object": "whatsapp_business_account", "name": "Jane Doe"'


class _RecordingProducer:
    """Stands in for AIOKafkaProducer: keeps what was sent, acknowledges at once."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, topic: str, **record: Any) -> asyncio.Future[None]:
        self.sent.append({"topic": topic, **record})
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _dead_letter(
    reason: Reason = Reason.NOT_JSON,
    *,
    value: bytes = PERSONAL,
    key: bytes | None = b"k1",
    headers: tuple[tuple[str, bytes], ...] = (SIGNATURE,),
    source_partition: int = 2,
    source_offset: int = 455,
    at: tuple[int, int] = (0, 17),
    max_request_bytes: int = 1 << 20,
    event_topic: str | None = None,
) -> dlq.DeadLetter:
    """A DeadLetter as the real Publisher would write it for one bad inbound record (an
    event `event_topic` refused, with it)."""
    record = InboundRecord(
        "webhooks", source_partition, source_offset, key, value, headers, NOW_MS - 60_000
    )
    producer = _RecordingProducer()
    publisher = Publisher(producer, dlq_topic="dlq", max_request_bytes=max_request_bytes)
    asyncio.run(
        publisher.dead_letter(
            [Invalid(record, reason, "Expecting value: line 1")], event_topic=event_topic
        )
    )
    (sent,) = producer.sent
    return dlq.DeadLetter(
        topic=sent["topic"],
        partition=at[0],
        offset=at[1],
        timestamp_ms=NOW_MS,
        key=sent["key"],
        value=sent["value"],
        headers=tuple(sent["headers"]),
    )


# --- parsing the filters ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("7d", 604800), ("1w", 604800), ("1h30m", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    """Relative times use s/m/h/d/w and may be summed."""
    assert dlq.parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["30", "m", "30x", "1h 30m", "h1", "-2h", ""])
def test_not_durations(text: str) -> None:
    """Anything else is not a duration (and is then tried as ISO-8601)."""
    assert dlq.parse_duration_s(text) is None


def test_when_relative_and_iso() -> None:
    """A duration counts back from now; ISO-8601 without a zone is UTC."""
    assert dlq.parse_when_ms("2h", now_ms=NOW_MS, option="--since") == NOW_MS - 7_200_000
    utc = int(dt.datetime(2026, 11, 28, 22, 15, tzinfo=dt.UTC).timestamp() * 1000)
    for text in ("2026-11-28T22:15:00Z", "2026-11-28T23:15:00+01:00", "2026-11-28 22:15"):
        assert dlq.parse_when_ms(text, now_ms=NOW_MS, option="--since") == utc
    midnight = int(dt.datetime(2026, 11, 28, tzinfo=dt.UTC).timestamp() * 1000)
    assert dlq.parse_when_ms("2026-11-28", now_ms=NOW_MS, option="--until") == midnight


def test_bad_when_names_the_option() -> None:
    """A time that is neither form fails with the option's name and both accepted forms."""
    with pytest.raises(ConfigError, match=r"--until: 'yesterday' is neither an ISO-8601"):
        dlq.parse_when_ms("yesterday", now_ms=NOW_MS, option="--until")


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"since": "1h", "until": "2h"}, "--since/--until"),
        ({"source_partitions": [-1]}, "--source-partition"),
        ({"limit": 0}, "--limit"),
        ({"offsets": ["17"]}, "--offset"),
        ({"offsets": ["0:x"]}, "--offset"),
        ({"since": "soon"}, "--since"),
    ],
)
def test_bad_filters_are_refused(kwargs: dict[str, Any], option: str) -> None:
    """Every malformed filter is a ConfigError naming the option (the CLI exits 2)."""
    with pytest.raises(ConfigError) as caught:
        dlq.build_selection(now_ms=NOW_MS, **kwargs)
    assert caught.value.setting == option


def test_build_selection() -> None:
    """The CLI's strings become a Selection of sets and epoch milliseconds."""
    selection = dlq.build_selection(
        reasons=["not_json", "bad_shape", "not_json"],
        since="7d",
        until="30m",
        source_partitions=[1, 3],
        offsets=["0:17", " 2:5 "],
        limit=10,
        now_ms=NOW_MS,
    )
    assert selection == dlq.Selection(
        reasons=frozenset({"not_json", "bad_shape"}),
        since_ms=NOW_MS - 7 * 86_400_000,
        until_ms=NOW_MS - 1_800_000,
        source_partitions=frozenset({1, 3}),
        offsets=frozenset({(0, 17), (2, 5)}),
        limit=10,
    )


def test_replay_needs_a_filter_or_all() -> None:
    """Replaying everything must be asked for by name; --limit alone is not a filter."""
    with pytest.raises(ConfigError, match="--all"):
        dlq.require_filter(dlq.Selection(), replay_all=False)
    with pytest.raises(ConfigError, match="--all"):
        dlq.require_filter(dlq.Selection(limit=5), replay_all=False)
    dlq.require_filter(dlq.Selection(), replay_all=True)
    dlq.require_filter(dlq.Selection(reasons=frozenset({"not_json"})), replay_all=False)
    dlq.require_filter(dlq.Selection(since_ms=0), replay_all=False)
    dlq.require_filter(dlq.Selection(offsets=frozenset({(0, 1)})), replay_all=False)


# --- reading a dead letter and choosing ---------------------------------------------


def test_dead_letter_reads_the_publishers_headers() -> None:
    """Everything the publisher writes is read back: reason, detail, source, failure time."""
    letter = _dead_letter()
    assert letter.reason == "not_json"
    assert letter.detail == "Expecting value: line 1"
    assert letter.source == "webhooks:2:455"
    assert letter.source_partition == 2
    assert abs(letter.failed_at_ms - time.time() * 1000) < 60_000, "stamped now"
    assert letter.original_size is None
    assert letter.coordinates == "0:17"
    assert letter.size == len(PERSONAL)


def test_missing_headers_fall_back() -> None:
    """A record someone wrote by hand: unknown reason, record timestamp as failure time."""
    letter = dlq.DeadLetter("dlq", 0, 3, NOW_MS - 5000, None, b"x", (("dlq.failed_at_ms", b"?"),))
    assert letter.reason == dlq.UNKNOWN_REASON
    assert letter.failed_at_ms == NOW_MS - 5000
    assert letter.source == "?:?:?"
    assert letter.source_partition is None


def test_selection_combines_kinds_with_and_repeats_with_or() -> None:
    """Each filter kind narrows; several values of one kind widen."""
    json2 = _dead_letter(Reason.NOT_JSON, source_partition=2, at=(0, 1))
    shape0 = _dead_letter(Reason.BAD_SHAPE, source_partition=0, at=(1, 4))
    both = dlq.Selection(reasons=frozenset({"not_json", "bad_shape"}))
    assert both.matches(json2)
    assert both.matches(shape0)
    narrow = dlq.Selection(reasons=frozenset({"not_json"}), source_partitions=frozenset({0}))
    assert not narrow.matches(json2)
    assert not narrow.matches(shape0)
    assert dlq.Selection(offsets=frozenset({(1, 4)})).matches(shape0)
    assert not dlq.Selection(offsets=frozenset({(1, 4)})).matches(json2)


def test_selection_by_time_uses_the_failure_time() -> None:
    """--since is inclusive, --until exclusive, both against dlq.failed_at_ms."""
    letter = dlq.DeadLetter(
        "dlq", 0, 0, NOW_MS, None, b"x", (("dlq.failed_at_ms", str(NOW_MS - 3_600_000).encode()),)
    )
    assert dlq.Selection(since_ms=NOW_MS - 3_600_000).matches(letter)
    assert not dlq.Selection(since_ms=NOW_MS - 3_599_999).matches(letter)
    assert dlq.Selection(until_ms=NOW_MS - 3_599_999).matches(letter)
    assert not dlq.Selection(until_ms=NOW_MS - 3_600_000).matches(letter)


def test_tally_counts_every_match_but_selects_up_to_the_limit() -> None:
    """--limit caps what is acted on; the summary still counts every match per reason."""
    tally = dlq.Tally(dlq.Selection(reasons=frozenset({"not_json", "oversize"}), limit=2))
    letters = [
        _dead_letter(Reason.NOT_JSON, at=(0, 0)),
        _dead_letter(Reason.BAD_SHAPE, at=(0, 1)),
        _dead_letter(Reason.NOT_JSON, at=(0, 2)),
        _dead_letter(Reason.OVERSIZE, at=(0, 3)),
    ]
    assert [tally.take(letter) for letter in letters] == [True, False, True, False]
    assert tally.matched == 3
    assert tally.selected == 2
    assert dict(tally.by_reason) == {"not_json": 2, "oversize": 1}
    assert dlq.format_summary("dlq", tally) == (
        "3 dead letter(s) in dlq, showing 2 (--limit): not_json=2 oversize=1"
    )


def test_summary_when_nothing_matched() -> None:
    """An empty result says so and names the topic (a wrong DLQ_TOPIC shows here)."""
    assert dlq.format_summary("dlq", dlq.Tally(dlq.Selection())) == "no dead letters matched in dlq"


def test_requested_offsets_that_were_not_chosen_are_explained() -> None:
    """An --offset that is not in the topic, or was filtered out, is reported, not ignored."""
    selection = dlq.Selection(reasons=frozenset({"not_json"}), offsets=frozenset({(0, 1), (0, 2)}))
    tally = dlq.Tally(selection)
    shape = _dead_letter(Reason.BAD_SHAPE, at=(0, 1))
    assert not tally.take(shape)
    skips = dlq.missing_offsets("dlq", tally, [])
    assert [(s.coordinates, s.kind) for s in skips] == [("0:1", "excluded"), ("0:2", "not found")]


# --- rendering --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-3, "0s"), (42, "42s"), (192, "3m12s"), (7500, "2h05m"), (4 * 86400 + 3 * 3600, "4d03h")],
)
def test_humanised_age(seconds: float, text: str) -> None:
    """Ages read at a glance, two units at most."""
    assert dlq.humanise_age(seconds) == text


def test_humanised_size() -> None:
    """Sizes in B, KiB or MiB with one decimal."""
    assert [dlq.humanise_size(n) for n in (812, 1536, 3 * 1024 * 1024)] == [
        "812B",
        "1.5KiB",
        "3.0MiB",
    ]


def test_line_has_the_facts_and_no_body() -> None:
    """The line names place, reason, source, age, size and detail; the body (personal
    data) appears only with show_body."""
    letter = _dead_letter()
    line = dlq.format_line(letter, now_ms=letter.failed_at_ms + 192_000)
    assert line == (
        '0:17 not_json source=webhooks:2:455 age=3m12s size=58B detail="Expecting value: line 1"'
    )
    assert "Jane" not in line
    shown = dlq.format_line(letter, now_ms=NOW_MS, show_body=True)
    assert "Jane Doe" in shown.splitlines()[1]


def test_line_shows_truncation_replays_and_clips_detail() -> None:
    """Truncated bodies show both sizes; a re-dead-lettered replay shows its origin;
    long details are cut (to 200 characters, the middle left out) to keep one line a
    record."""
    big = _dead_letter(Reason.OVERSIZE, value=b"x" * 200_000, max_request_bytes=160 * 1024)
    assert "size=96.0KiB (truncated from 195.3KiB)" in dlq.format_line(big, now_ms=NOW_MS)
    replayed = _dead_letter(headers=(SIGNATURE, (deadletters.REPLAYED_FROM, b"dlq:0:3")))
    assert dlq.format_line(replayed, now_ms=NOW_MS).endswith(" replayed_from=dlq:0:3")
    long = dlq.DeadLetter("dlq", 0, 0, NOW_MS, None, b"", (("dlq.detail", b"y" * 500),))
    detail = dlq.format_line(long, now_ms=NOW_MS).split("detail=")[1]
    assert len(orjson.loads(detail)) == 200


def test_json_has_all_headers_and_no_body() -> None:
    """--json is machine-readable: every header, the coordinates, no body unless asked."""
    letter = _dead_letter()
    out = dlq.as_dict(letter, now_ms=letter.failed_at_ms + 5000)
    assert "body" not in out
    assert orjson.dumps(out).find(b"Jane") == -1
    assert out["dlq"] == "0:17"
    assert out["reason"] == "not_json"
    assert out["source"] == "webhooks:2:455"
    assert out["age_s"] == 5
    assert out["key"] == "k1"
    assert out["truncated"] is False
    names = [name for name, _ in out["headers"]]
    assert names[:8] == [
        "dlq.format",
        "dlq.reason",
        "dlq.detail",
        "dlq.source.topic",
        "dlq.source.partition",
        "dlq.source.offset",
        "dlq.source.timestamp_ms",
        "dlq.failed_at_ms",
    ]
    assert ["x-hub-signature-256", "sha256=0123abcd"] in out["headers"]
    assert out["original_headers"] == [["x-hub-signature-256", "sha256=0123abcd"]]
    assert (out["format"], out["missing"], out["replayed_from"]) == (2, [], None)
    assert dlq.as_dict(letter, now_ms=NOW_MS, show_body=True)["body"] == PERSONAL.decode()


# --- replay planning ------------------------------------------------------------------


def test_replay_restores_the_original_record() -> None:
    """Original key, value and headers (dlq.* removed, the signature kept), plus where
    it was replayed from."""
    letter = _dead_letter()
    plan = dlq.plan_replay(letter, "webhooks")
    assert isinstance(plan, dlq.Replay)
    assert (plan.topic, plan.key, plan.value) == ("webhooks", b"k1", PERSONAL)
    assert plan.headers == (SIGNATURE, ("dlq.replayed_from", b"dlq:0:17"))


def test_a_replay_dead_lettered_again_carries_its_history() -> None:
    """Replaying a dead letter that was itself a replay re-sends the record's headers
    exactly (its earlier mark included) and adds the current origin last, which is the
    one `list` shows."""
    again = _dead_letter(headers=(SIGNATURE, (deadletters.REPLAYED_FROM, b"dlq:0:3")), at=(0, 9))
    plan = dlq.plan_replay(again, "webhooks")
    assert isinstance(plan, dlq.Replay)
    assert plan.headers == (
        SIGNATURE,
        ("dlq.replayed_from", b"dlq:0:3"),
        ("dlq.replayed_from", b"dlq:0:9"),
    )
    assert again.replayed_from == "dlq:0:3"


def test_truncated_dead_letters_are_not_replayed() -> None:
    """A truncated body is not the webhook Meta sent: refused, with both sizes."""
    big = _dead_letter(Reason.OVERSIZE, value=b"x" * 200_000, max_request_bytes=160 * 1024)
    plan = dlq.plan_replay(big, "webhooks")
    assert isinstance(plan, dlq.Skip)
    assert plan.kind == "truncated"
    assert "195.3KiB" in plan.why


def test_an_unreadable_dead_letter_is_not_replayed() -> None:
    """An `unreadable` dead letter stands for a batch no client could decode and holds no
    record: replaying it would send an empty value. Refused, saying why."""
    letter = _dead_letter(Reason.UNREADABLE, value=b"", key=None, headers=())
    plan = dlq.plan_replay(letter, "webhooks")
    assert isinstance(plan, dlq.Skip)
    assert plan.kind == "unreadable"
    assert "holds no record" in plan.why


def test_a_dead_lettered_event_is_not_replayed_to_the_inbound_topic() -> None:
    """A letter holding a message_created event the outbound topic refused
    (``dlq.event_topic``): its message is stored, so sending it to the inbound topic
    would do nothing useful. Refused, saying where the event belongs."""
    letter = _dead_letter(
        Reason.UNSTORABLE, value=b'{"event":"message_created"}', event_topic="out"
    )
    assert letter.parsed.get("dlq.event_topic") == "out"
    plan = dlq.plan_replay(letter, "webhooks")
    assert isinstance(plan, dlq.Skip)
    assert plan.kind == "event"
    assert "raise out's max.message.bytes" in plan.why
    assert isinstance(dlq.plan_replay(_dead_letter(Reason.UNSTORABLE), "webhooks"), dlq.Replay)


def test_idle_must_be_positive() -> None:
    """--idle 0 would stop before the first fetch and list nothing: refused."""
    with pytest.raises(ConfigError, match="--idle"):
        dlq.check_idle(0)
    dlq.check_idle(0.5)


def test_replay_refuses_what_was_cut_and_says_what() -> None:
    """A dead letter whose key was cut, whose headers were dropped, or that was sent in
    its minimal form is not replayed; the reason names each missing part."""
    key_cut = _dead_letter(key=b"K" * 5000)
    plan = dlq.plan_replay(key_cut, "webhooks")
    assert isinstance(plan, dlq.Skip)
    assert (plan.kind, plan.why) == (
        "truncated",
        "key truncated to 1.0KiB of 4.9KiB: the DLQ no longer holds the original record",
    )
    dropped = _dead_letter(headers=(("big", b"x" * 20_000), SIGNATURE))
    plan = dlq.plan_replay(dropped, "webhooks")
    assert isinstance(plan, dlq.Skip)
    assert plan.why.startswith("1 header(s) dropped (too large)")
    record = InboundRecord("webhooks", 2, 455, b"k", PERSONAL, (SIGNATURE,), NOW_MS)
    minimal = deadletters.minimal(Invalid(record, Reason.NOT_JSON, "d"), failed_at_ms=NOW_MS)
    letter = dlq.DeadLetter("dlq", 0, 5, NOW_MS, None, None, tuple(minimal.headers))
    plan = dlq.plan_replay(letter, "webhooks")
    assert isinstance(plan, dlq.Skip)
    assert plan.why == (
        "value left out (58B); key left out (1B); headers left out (1 header(s)): "
        "the DLQ no longer holds the original record"
    )
    line = dlq.format_line(letter, now_ms=NOW_MS)
    assert " size=0B (left out, was 58B) " in line
    assert ' incomplete="value left out (58B); key left out (1B);' in line


FORGED = (
    ("dlq.reason", b"empty"),
    ("dlq.source.offset", b"999999"),
    ("dlq.replayed_from", b"forged:0:1"),
)


def test_forged_headers_are_not_taken_for_ours() -> None:
    """A record carrying forged dlq.reason, dlq.source.offset and dlq.replayed_from: the
    line and the JSON show the real reason and source; replay re-sends exactly the
    record's headers, plus this dead letter as the origin."""
    letter = _dead_letter(headers=(*FORGED, SIGNATURE))
    assert (letter.reason, letter.source) == ("not_json", "webhooks:2:455")
    line = dlq.format_line(letter, now_ms=NOW_MS)
    assert line.startswith("0:17 not_json source=webhooks:2:455 ")
    assert "999999" not in line
    out = dlq.as_dict(letter, now_ms=NOW_MS)
    assert (out["reason"], out["source"]) == ("not_json", "webhooks:2:455")
    assert out["original_headers"] == [[k, v.decode()] for k, v in (*FORGED, SIGNATURE)]
    plan = dlq.plan_replay(letter, "webhooks")
    assert isinstance(plan, dlq.Replay)
    assert plan.headers == (*FORGED, SIGNATURE, ("dlq.replayed_from", b"dlq:0:17"))


def test_previous_format_is_read_and_replayed_exactly() -> None:
    """A dead letter written before dlq.format (inbound headers raw after ours, here with
    a forged dlq.reason among them) lists with our reason and replays its inbound headers
    exactly."""
    ours = (
        ("dlq.reason", b"bad_shape"),
        ("dlq.detail", b"not an object"),
        ("dlq.source.topic", b"webhooks"),
        ("dlq.source.partition", b"1"),
        ("dlq.source.offset", b"40"),
        ("dlq.source.timestamp_ms", b"1"),
        ("dlq.failed_at_ms", str(NOW_MS).encode()),
    )
    inbound = (SIGNATURE, ("dlq.reason", b"empty"), ("t", b"1"))
    letter = dlq.DeadLetter("dlq", 0, 4, NOW_MS, b"k", b"[]", (*ours, *inbound))
    assert (letter.reason, letter.source, letter.detail) == (
        "bad_shape",
        "webhooks:1:40",
        "not an object",
    )
    plan = dlq.plan_replay(letter, "webhooks")
    assert isinstance(plan, dlq.Replay)
    assert plan.headers == (*inbound, ("dlq.replayed_from", b"dlq:0:4"))


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_renders(reason: Reason) -> None:
    """Every dead-letter reason (too_deep, invalid_field, unstorable, internal_error
    included) shows as its plain name in the line, the JSON and the summary."""
    letter = _dead_letter(reason)
    assert dlq.format_line(letter, now_ms=NOW_MS).startswith(f"0:17 {reason} source=")
    assert orjson.loads(_json(letter))["reason"] == str(reason)
    tally = dlq.Tally(dlq.Selection(reasons=frozenset({str(reason)})))
    assert tally.take(letter)
    assert dlq.format_summary("dlq", tally) == f"1 dead letter(s) in dlq: {reason}=1"


ANSI = "\x1b[2J\x1b[31m"
RLO = "\u202e"


def _json(letter: dlq.DeadLetter, **kwargs: Any) -> str:
    """The line `dlq list --json` prints for a letter."""
    return safetext.json_line(dlq.as_dict(letter, now_ms=NOW_MS, **kwargs))


def _hostile_letter() -> dlq.DeadLetter:
    """A hand-written dead letter with control and bidi characters in every text field."""
    headers = (
        ("dlq.reason", f"not_json{ANSI}".encode()),
        ("dlq.detail", f"bad {ANSI} byte \x00 {RLO}gpj.exe\x7f\x9b".encode()),
        ("dlq.source.topic", f"web{RLO}hooks".encode()),
        ("dlq.source.partition", b"0"),
        ("dlq.source.offset", b"1"),
        ("dlq.failed_at_ms", str(NOW_MS).encode()),
        (f"x-{ANSI}", f"v{RLO}\u2066".encode()),
        ("dlq.replayed_from", f"dlq:0:1 {ANSI}".encode()),
    )
    key = f"k{ANSI}".encode()
    return dlq.DeadLetter("dlq", 0, 9, NOW_MS, key, f"body {ANSI}{RLO}".encode(), headers)


def _raw_unsafe(text: str) -> list[str]:
    return [c for c in text if safetext.is_unsafe(c)]


def test_line_escapes_what_came_from_the_record() -> None:
    """No raw ESC, NUL, DEL, C1 or bidi control in a line, with or without the body: the
    reason, source and replay mark are quoted when not plain words, the detail and body
    quoted and escaped. The only newline is ours, before the body."""
    letter = _hostile_letter()
    line = dlq.format_line(letter, now_ms=NOW_MS)
    assert _raw_unsafe(line) == []
    assert line.startswith('0:9 "not_json\\u001b[2J\\u001b[31m" source="web\\u202ehooks:0:1" ')
    assert 'detail="bad \\u001b[2J\\u001b[31m byte \\u0000 \\u202egpj.exe\\u007f\\u009b"' in line
    assert line.endswith(' replayed_from="dlq:0:1 \\u001b[2J\\u001b[31m"')
    shown = dlq.format_line(letter, now_ms=NOW_MS, show_body=True)
    first, body = shown.split("\n")
    assert first == line
    assert body == '    body="body \\u001b[2J\\u001b[31m\\u202e"'


def test_json_escapes_and_stays_valid() -> None:
    """--json: one valid JSON line, no raw control or bidi character (orjson alone would
    write U+202E and DEL raw), and the values read back as the record had them."""
    letter = _hostile_letter()
    line = _json(letter, show_body=True)
    assert _raw_unsafe(line) == []
    assert "\\u202e" in line
    out = orjson.loads(line)
    assert out["reason"] == f"not_json{ANSI}"
    assert out["detail"] == f"bad {ANSI} byte \x00 {RLO}gpj.exe\x7f\x9b"
    assert out["key"] == f"k{ANSI}"
    assert [f"x-{ANSI}", f"v{RLO}\u2066"] in out["headers"]
    assert out["body"] == f"body {ANSI}{RLO}"


def test_long_values_are_bounded() -> None:
    """A hand-written dead letter with a 1 MB detail and a 1 MB header: the line shows 200
    characters of the detail (its start and end); --json at most 1024 characters of it and
    16 KiB of a header."""
    letter = dlq.DeadLetter(
        "dlq",
        0,
        0,
        NOW_MS,
        None,
        b"",
        (("dlq.detail", RLO.encode() * 400_000), ("big", b"x" * 1_000_000)),
    )
    line = dlq.format_line(letter, now_ms=NOW_MS)
    assert len(line) < 6 * 200 + 100  # six characters an escaped one
    detail = orjson.loads(line.split("detail=")[1])
    assert detail == RLO * 66 + " … " + RLO * 131
    line = _json(letter)
    out = orjson.loads(line)
    assert len(out["detail"]) == 1024
    named = dlq.DeadLetter("dlq", 0, 0, NOW_MS, None, b"", (("n" * 100_000, b"v"),))
    assert len(orjson.loads(_json(named))["headers"][0][0]) == 16 * 1024
    assert [len(v) for _, v in out["headers"]] == [16 * 1024, 16 * 1024]
    # The detail as a field and as a header (six characters an escape), the big header
    # in `headers` and in `original_headers`: bounded, whatever the record held.
    assert len(line) < 6 * (1024 + 16 * 1024) + 2 * 16 * 1024 + 2000


def test_replay_output_escapes_header_names_and_errors() -> None:
    """The dry run's header names and a failure's error text are escaped too."""
    letter = _dead_letter(headers=((f"x-{ANSI}", b"1"), SIGNATURE))
    plan = dlq.plan_replay(letter, "webhooks")
    assert isinstance(plan, dlq.Replay)
    would = dlq._would_send(plan)
    assert _raw_unsafe(would) == []
    assert 'headers="x-\\u001b[2J\\u001b[31m",x-hub-signature-256,dlq.replayed_from)' in would
    failed = dlq._sent_line(dlq.Sent(plan, error=f"KafkaError('{ANSI}{RLO}')"))
    assert _raw_unsafe(failed) == []
    assert failed.endswith("KafkaError('\\x1b[2J\\x1b[31m\\u202e')")


def test_summary_escapes_reasons() -> None:
    """A hand-written reason with an escape sequence is quoted in the closing count."""
    tally = dlq.Tally(dlq.Selection())
    tally.take(_hostile_letter())
    summary = dlq.format_summary("dlq", tally)
    assert _raw_unsafe(summary) == []
    assert summary.endswith(': "not_json\\u001b[2J\\u001b[31m"=1')


def test_a_dead_letter_is_read_from_a_fetched_record_as_the_service_reads_one() -> None:
    """DeadLetter.from_record goes through the service's converter (source.inbound): the
    same coordinates, timestamp, key, value and headers (a null header value stays None,
    a missing timestamp is 0)."""
    from aiokafka import ConsumerRecord

    from consumer.source import inbound

    headers = ((deadletters.REASON, b"not_json"), ("x-null", None))
    fetched = ConsumerRecord("dlq", 1, 42, None, 0, b"k", b"v", None, 1, 1, headers)
    letter = dlq.DeadLetter.from_record(fetched)
    record = inbound(fetched)
    assert (letter.topic, letter.partition, letter.offset) == record.coordinates
    assert (letter.timestamp_ms, letter.key, letter.value) == (0, b"k", b"v")
    assert letter.headers == record.headers == headers
    assert letter.reason == "not_json"
