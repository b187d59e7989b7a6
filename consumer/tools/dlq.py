"""`python -m consumer dlq list | replay`: the dead-letter topic, for the operator on call.

``list`` prints one line per dead letter (where it sits, why it failed, where it came
from, how old it is, how big); ``replay`` re-sends chosen dead letters to INBOUND_TOPIC
exactly as they first arrived (key, value, headers), marked with ``dlq.replayed_from``.

Why it is built this way:

* The DLQ is read by partition assignment, without a consumer group (as ``tail`` does):
  looking at it must not commit or move anybody's offsets.
* Reading starts at offset 0 of every partition, asked for explicitly: Tansu can answer
  ListOffsets(EARLIEST) with a later offset when several producers wrote a partition's
  first batches at once. On Apache Kafka an offset below the log start is answered
  OffsetOutOfRange, and ``auto_offset_reset="earliest"`` then moves to the log start.
* Reading stops at what the topic held when the command started: a partition is done at
  its first record written after that (a busy DLQ would otherwise never look idle), and
  every partition is done after ``idle_s`` without a record (default 6 s: Tansu's end
  offsets are too low to be trusted, and it caches a partition's end for about 5 s, so
  a shorter silence does not prove that nothing more is there).
* The dead-letter format (header names, the inbound headers, what was cut) is
  :mod:`consumer.deadletters`'; a forged ``dlq.*`` header on an inbound record is never
  read as ours.
* Everything printed that came from a record goes through :mod:`consumer.safetext`: no
  raw control, bidi or invisible character reaches the terminal, and ``--json`` stays
  valid JSON.
* Bodies are personal data: they are never printed unless ``--show-body`` is given.
* Replay is safe to repeat: the pipeline dedups on (phone_number_id, wamid), so a
  message that was stored already is not stored or announced twice.
* A dead letter whose key, value or headers were cut or left out no longer holds the
  original record; replaying it would turn a good webhook into a broken one (or drop its
  signature), so it is refused, saying what is missing. So is an ``unreadable`` one,
  which stands for a batch no client could decode and holds no record, and one holding
  an event the outbound topic refused (``dlq.event_topic``): its message is stored, and
  its event belongs on the outbound topic, not the inbound one.

Pure parts (argument parsing, selection, rendering, replay planning) are separate from
the two adapters that talk to Kafka (:class:`DlqReader`, :func:`send_replays`), which
translate aiokafka errors into :class:`~consumer.errors.BrokerError` naming the setting.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from consumer import deadletters, lenient
from consumer.errors import BrokerError, ConfigError, MissingTopicError
from consumer.limits import MAX_REQUEST_BYTES
from consumer.publish import producer_config
from consumer.records import Reason
from consumer.safetext import ELLIPSIS, clip, escape, json_line, quote, token
from consumer.settings import Settings
from consumer.source import explain_unreachable, inbound
from consumer.tools.topics import COMPLETE_IDLE_S, partition_count

UNKNOWN_REASON = "unknown"
# How long `list` and `replay` read on after the last record, unless --idle says
# otherwise: longer than the 5 s for which the embedded broker caches a partition's end.
DEFAULT_IDLE_S = COMPLETE_IDLE_S

# Fetch more than the service's request limit per partition: a record someone else
# wrote, however large, is still listed (and its replay fails on its own, visibly,
# instead of stalling the read).
_MAX_FETCH_BYTES = 4 * MAX_REQUEST_BYTES
# Records up to this much newer than the start still count: the service's clock and
# ours may disagree a little; the bound only has to stop a busy DLQ from never ending.
_HORIZON_SLACK_MS = 5_000
# A line shows this much of the detail (a longer one keeps its start and, larger, its
# end: see _line_detail); --json all of it (at most what the publisher writes,
# deadletters.DETAIL_MAX_BYTES) and of every other text at most _JSON_TEXT_MAX.
_DETAIL_WIDTH = 200
_NAME_WIDTH = 100
_JSON_DETAIL_MAX = deadletters.DETAIL_MAX_BYTES
_JSON_TEXT_MAX = 16 * 1024

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def now_ms() -> int:
    return int(time.time() * 1000)


# --- one dead letter ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of the dead-letter topic, with its headers read out
    (:func:`consumer.deadletters.read`: ours, and the inbound record's)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    parsed: deadletters.Parsed = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parsed", deadletters.read(self.headers))

    @classmethod
    def from_record(cls, record: Any) -> DeadLetter:
        """From an aiokafka ConsumerRecord, converted as the service converts what it
        fetches (:func:`consumer.source.inbound`; a null header value stays None)."""
        r = inbound(record)
        return cls(
            topic=r.topic,
            partition=r.partition,
            offset=r.offset,
            timestamp_ms=r.timestamp_ms,
            key=r.key,
            value=r.value,
            headers=r.headers,
        )

    @property
    def coordinates(self) -> str:
        """``partition:offset``, the form ``--offset`` takes."""
        return f"{self.partition}:{self.offset}"

    @property
    def reason(self) -> str:
        return self.parsed.reason or UNKNOWN_REASON

    @property
    def detail(self) -> str:
        return self.parsed.detail

    @property
    def source_partition(self) -> int | None:
        return self.parsed.source_partition

    @property
    def source(self) -> str:
        """``topic:partition:offset`` of the inbound record that failed."""
        return ":".join(part or "?" for part in self.parsed.source_fields)

    @property
    def failed_at_ms(self) -> int:
        """When it was dead-lettered; the record's own timestamp if the header is missing."""
        return self.parsed.failed_at_ms or self.timestamp_ms

    @property
    def original_size(self) -> int | None:
        """Set only when the publisher cut (or left out) the body to fit the DLQ."""
        return self.parsed.original_size

    @property
    def replayed_from(self) -> str | None:
        """The replay this record came from, as the record says (see deadletters)."""
        return self.parsed.replayed_from

    @property
    def size(self) -> int:
        return len(self.value or b"")

    def original_headers(self) -> tuple[tuple[str, bytes | None], ...]:
        """The headers the inbound record had, in their order, as it had them."""
        return self.parsed.originals

    def missing(self) -> list[str]:
        """What of the inbound record this dead letter no longer holds, in words."""
        p = self.parsed
        omitted = set(p.omitted)
        out = []
        if "value" in omitted:
            out.append(f"value left out ({_size_of(p.original_size)})")
        elif self.original_size is not None:
            out.append(
                f"value truncated to {humanise_size(self.size)} of "
                f"{humanise_size(self.original_size)}"
            )
        if "key" in omitted:
            out.append(f"key left out ({_size_of(p.original_key_size)})")
        elif p.original_key_size is not None:
            out.append(
                f"key truncated to {humanise_size(len(self.key or b''))} of "
                f"{humanise_size(p.original_key_size)}"
            )
        if "headers" in omitted:
            out.append(f"headers left out ({p.dropped_headers} header(s))")
        elif p.dropped_headers:
            out.append(f"{p.dropped_headers} header(s) dropped (too large)")
        if not out and not p.complete:
            out.append("marked as cut (unreadable size headers)")
        return out


def _size_of(size: int | None) -> str:
    return "size unknown" if size is None else humanise_size(size)


# --- choosing dead letters ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a command acts on. Kinds combine with AND, repeats with OR."""

    reasons: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None
    source_partitions: frozenset[int] = frozenset()
    offsets: frozenset[tuple[int, int]] = frozenset()
    limit: int | None = None

    @property
    def filtered(self) -> bool:
        """True if anything narrows the choice (``--limit`` alone does not count)."""
        return bool(self.reasons or self.source_partitions or self.offsets) or (
            self.since_ms is not None or self.until_ms is not None
        )

    def matches(self, letter: DeadLetter) -> bool:
        failed = letter.failed_at_ms
        return (
            (not self.reasons or letter.reason in self.reasons)
            and (self.since_ms is None or failed >= self.since_ms)
            and (self.until_ms is None or failed < self.until_ms)
            and (not self.source_partitions or letter.source_partition in self.source_partitions)
            and (not self.offsets or (letter.partition, letter.offset) in self.offsets)
        )


def parse_duration_s(text: str) -> float | None:
    """``90s``, ``30m``, ``2h``, ``7d``, ``1w`` or a sum like ``1h30m``; None otherwise."""
    text = text.strip().lower()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def parse_when_ms(text: str, *, now_ms: int, option: str) -> int:
    """A point in time: a duration ago, or ISO-8601 (UTC when it names no zone, as
    servers and Kafka timestamps are)."""
    ago = parse_duration_s(text)
    if ago is not None:
        return now_ms - int(ago * 1000)
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            option,
            f"{text!r} is neither an ISO-8601 time (2026-05-09T03:00:00Z) "
            "nor a duration ago (30m, 2h, 7d)",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def parse_offset(text: str) -> tuple[int, int]:
    """``P:O`` as ``dlq list`` prints it in its first column."""
    partition, sep, offset = text.strip().partition(":")
    if sep and partition.isdigit() and offset.isdigit():
        return int(partition), int(offset)
    raise ConfigError("--offset", f"{text!r} is not PARTITION:OFFSET (e.g. 0:17)")


def build_selection(
    *,
    reasons: Sequence[str] = (),
    since: str | None = None,
    until: str | None = None,
    source_partitions: Sequence[int] = (),
    offsets: Sequence[str] = (),
    limit: int | None = None,
    now_ms: int,
) -> Selection:
    """The command-line filters as a Selection; a bad one raises ConfigError naming it."""
    since_ms = parse_when_ms(since, now_ms=now_ms, option="--since") if since else None
    until_ms = parse_when_ms(until, now_ms=now_ms, option="--until") if until else None
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise ConfigError("--since/--until", "--since must be earlier than --until")
    if any(p < 0 for p in source_partitions):
        raise ConfigError("--source-partition", "partitions are 0 or more")
    if limit is not None and limit < 1:
        raise ConfigError("--limit", "must be 1 or more")
    return Selection(
        reasons=frozenset(reasons),
        since_ms=since_ms,
        until_ms=until_ms,
        source_partitions=frozenset(source_partitions),
        offsets=frozenset(parse_offset(o) for o in offsets),
        limit=limit,
    )


def check_idle(idle_s: float) -> None:
    """--idle must be positive (0 would stop before the first fetch and list nothing)."""
    if not idle_s > 0:
        raise ConfigError("--idle", "must be more than 0 seconds")


def require_filter(selection: Selection, *, replay_all: bool) -> None:
    """Replaying the whole DLQ must be asked for by name, never happen by omission."""
    if not (selection.filtered or replay_all):
        raise ConfigError(
            "filter",
            "none given; name what to replay (--reason, --since, --until, --source-partition, "
            "--offset) or pass --all to replay every dead letter",
        )


@dataclass(slots=True)
class Tally:
    """What a pass over the DLQ matched, and which requested offsets it saw at all."""

    selection: Selection
    matched: int = 0
    by_reason: collections.Counter[str] = field(default_factory=collections.Counter)
    seen_offsets: set[tuple[int, int]] = field(default_factory=set)

    def take(self, letter: DeadLetter) -> bool:
        """Count `letter`; True if it is selected (matches and is within ``--limit``)."""
        where = (letter.partition, letter.offset)
        if where in self.selection.offsets:
            self.seen_offsets.add(where)
        if not self.selection.matches(letter):
            return False
        self.matched += 1
        self.by_reason[letter.reason] += 1
        return self.selection.limit is None or self.matched <= self.selection.limit

    @property
    def selected(self) -> int:
        limit = self.selection.limit
        return self.matched if limit is None else min(limit, self.matched)


# --- rendering ------------------------------------------------------------------------


def humanise_age(seconds: float) -> str:
    """``42s``, ``3m12s``, ``2h05m``, ``4d03h``: two units are enough at a glance."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def humanise_size(size: int) -> str:
    if size < 1024:
        return f"{size}B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f}KiB"
    return f"{size / (1024 * 1024):.1f}MiB"


def _line_detail(text: str, width: int = _DETAIL_WIDTH) -> str:
    """The detail on one line (whitespace runs as one space), at most `width`
    characters. A longer one keeps its start (what failed) and its end, which is where a
    detail says what to do and names the setting (``... raise the topic's
    max.message.bytes ...``, ``(MAX_OUTPUT_BYTES; ...)``): a third of the width for the
    start, the rest for the end, each cut between words when a word boundary is near,
    and `` … `` for what is left out."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    joint = f" {ELLIPSIS} "
    head_room = width // 3
    tail_room = width - head_room - len(joint)
    head = text[:head_room]
    if text[head_room] != " ":  # the cut falls inside a word: end at the space before it
        space = head.rfind(" ")
        head = head[:space] if space > head_room // 2 else head
    tail = text[len(text) - tail_room :]
    if text[len(text) - tail_room - 1] != " ":  # likewise: start after the next space
        space = tail.find(" ")
        tail = tail[space + 1 :] if 0 <= space < tail_room // 2 else tail
    return f"{head.rstrip()}{joint}{tail.lstrip()}"


def _body_text(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", "replace")


def _text(value: bytes | None, limit: int) -> str | None:
    return None if value is None else clip(value.decode("utf-8", "backslashreplace"), limit)


def format_line(letter: DeadLetter, *, now_ms: int, show_body: bool = False) -> str:
    """One readable line; no body unless asked (bodies are personal data). Every field
    that came from a record is a plain word or a quoted, escaped string (safetext)."""
    size = humanise_size(letter.size)
    if "value" in letter.parsed.omitted:
        size += f" (left out, was {_size_of(letter.original_size)})"
    elif letter.original_size is not None:
        size += f" (truncated from {humanise_size(letter.original_size)})"
    line = (
        f"{letter.coordinates} {token(letter.reason)} source={token(letter.source)} "
        f"age={humanise_age((now_ms - letter.failed_at_ms) / 1000)} size={size} "
        f"detail={quote(_line_detail(letter.detail))}"
    )
    missing = letter.missing()
    if missing:
        line += f" incomplete={quote('; '.join(missing))}"
    replayed = letter.replayed_from
    if replayed:
        line += f" replayed_from={token(replayed)}"
    if show_body:
        line += f"\n    body={quote(_body_text(letter.value))}"
    return line


def as_dict(letter: DeadLetter, *, now_ms: int, show_body: bool = False) -> dict[str, Any]:
    """Everything about a dead letter except its body (unless asked), for ``--json``.
    ``headers`` is every header as the record has it; ``original_headers`` the inbound
    record's, as it had them. Texts are bounded (the body, when asked, is not)."""
    p = letter.parsed
    out: dict[str, Any] = {
        "dlq": letter.coordinates,
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "timestamp_ms": letter.timestamp_ms,
        "format": p.version,
        "reason": letter.reason,
        "detail": clip(letter.detail, _JSON_DETAIL_MAX),
        "source": letter.source,
        "source_partition": letter.source_partition,
        "failed_at_ms": letter.failed_at_ms,
        "age_s": max(0, (now_ms - letter.failed_at_ms) // 1000),
        "size": letter.size,
        "original_size": letter.original_size,
        "original_key_size": p.original_key_size,
        "dropped_headers": p.dropped_headers,
        "omitted": list(p.omitted),
        "truncated": not p.complete,
        "missing": letter.missing(),
        "replayed_from": letter.replayed_from,
        "key": _text(letter.key, _JSON_TEXT_MAX),
        "headers": [[clip(k, _JSON_TEXT_MAX), _text(v, _JSON_TEXT_MAX)] for k, v in letter.headers],
        "original_headers": [
            [clip(k, _JSON_TEXT_MAX), _text(v, _JSON_TEXT_MAX)] for k, v in p.originals
        ],
    }
    if show_body:
        out["body"] = _body_text(letter.value)
    return out


def _counts(counter: Mapping[str, int]) -> str:
    ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    return " ".join(f"{token(k)}={n}" for k, n in ranked)


def format_summary(topic: str, tally: Tally) -> str:
    """The closing line: how many, and how many of each reason."""
    if not tally.matched:
        return f"no dead letters matched in {topic}"
    shown = "" if tally.selected == tally.matched else f", showing {tally.selected} (--limit)"
    return f"{tally.matched} dead letter(s) in {topic}{shown}: {_counts(tally.by_reason)}"


# --- replay planning ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replay:
    """One record to send to the inbound topic, as it first arrived plus its origin."""

    letter: DeadLetter
    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class Skip:
    """A selected (or requested) dead letter that will not be sent, and why."""

    coordinates: str
    kind: str
    why: str


def plan_replay(letter: DeadLetter, inbound_topic: str) -> Replay | Skip:
    """The inbound record again: its key, value and headers exactly as it had them
    (x-hub-signature-256 included), plus ``dlq.replayed_from`` naming this dead letter.
    Refused when the dead letter no longer holds the whole record, and for an
    ``unreadable`` one, which never held a record (it stands for a batch no client
    could decode: there is nothing to send)."""
    event_topic = letter.parsed.get(deadletters.EVENT_TOPIC)
    if event_topic is not None:
        return Skip(
            letter.coordinates,
            "event",
            f"holds a message_created event {event_topic} refused as too large; its message "
            "is stored, and replaying it to the inbound topic would announce nothing: raise "
            f"{event_topic}'s max.message.bytes and produce this value, key and event_id "
            'header to it (docs/operations.md, "An event the outbound topic refused")',
        )
    if letter.reason == str(Reason.UNREADABLE):
        return Skip(
            letter.coordinates,
            "unreadable",
            "stands for a batch no client could decode: it holds no record to send "
            "(read the batch with the broker's tools; docs/operations.md)",
        )
    missing = letter.missing()
    if missing:
        return Skip(
            letter.coordinates,
            "truncated",
            f"{'; '.join(missing)}: the DLQ no longer holds the original record",
        )
    origin = f"{letter.topic}:{letter.partition}:{letter.offset}"
    return Replay(
        letter=letter,
        topic=inbound_topic,
        key=letter.key,
        value=letter.value,
        headers=(*letter.original_headers(), (deadletters.REPLAYED_FROM, origin.encode())),
    )


def missing_offsets(topic: str, tally: Tally, chosen: Iterable[DeadLetter]) -> list[Skip]:
    """``--offset`` values that did not end up chosen, so the operator learns why."""
    chosen_at = {(c.partition, c.offset) for c in chosen}
    skips = []
    for where in sorted(tally.selection.offsets - chosen_at):
        coordinates = f"{where[0]}:{where[1]}"
        if where in tally.seen_offsets:
            skips.append(Skip(coordinates, "excluded", "excluded by the other filters or --limit"))
        else:
            skips.append(Skip(coordinates, "not found", f"no such record in {topic}"))
    return skips


# --- Kafka: reading the DLQ -----------------------------------------------------------


class DlqReader:
    """Reads the dead-letter topic from the beginning, without joining a group."""

    def __init__(self, settings: Settings, *, idle_s: float) -> None:
        self._settings = settings
        self._idle_s = idle_s
        self._topics: set[str] = set()
        self._tps: list[TopicPartition] = []
        self._horizon_ms = now_ms() + _HORIZON_SLACK_MS
        lenient.install()  # dead letters copy inbound headers, whatever their names
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=f"{settings.client_id}-dlq",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=int(settings.kafka_request_timeout_s * 1000),
            max_partition_fetch_bytes=max(_MAX_FETCH_BYTES, 2 * settings.sizes.request_bytes),
        )

    async def __aenter__(self) -> DlqReader:
        s = self._settings
        try:
            await asyncio.wait_for(self._consumer.start(), s.kafka_request_timeout_s)
        except (KafkaError, TimeoutError) as exc:
            await self._consumer.stop()
            raise BrokerError(await _unreachable(s)) from exc
        try:
            self._topics = set(await self._consumer.topics())
        except KafkaError as exc:
            await self._consumer.stop()
            raise BrokerError(
                f"listing the topics of KAFKA_BOOTSTRAP_SERVERS={s.kafka_bootstrap_servers} "
                f"failed: {_said(exc)}"
            ) from exc
        try:
            self.require_topic("DLQ_TOPIC", self._settings.dlq_topic)
            # Not the consumer's partitions_for_topic(): it answers from the metadata the
            # client already holds, which on Apache Kafka has no topic yet (topics() does
            # not store what it fetched), so the DLQ read as empty there.
            count = await partition_count(
                self._settings.kafka_bootstrap_servers, self._settings.dlq_topic
            )
            self._tps = [TopicPartition(self._settings.dlq_topic, p) for p in range(count)]
            self._consumer.assign(self._tps)
            for tp in self._tps:
                # Offset 0, not seek_to_beginning: see the module doc.
                self._consumer.seek(tp, 0)
        except BaseException:
            await self._consumer.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._consumer.stop()

    def require_topic(self, setting: str, topic: str) -> None:
        """Fail early, naming the setting, rather than wait on a topic that is not there."""
        if topic not in self._topics:
            raise MissingTopicError(
                f"{setting}={topic}: no such topic on KAFKA_BOOTSTRAP_SERVERS="
                f"{self._settings.kafka_bootstrap_servers} (check the name, or create it: "
                "python -m consumer topics create)"
            )

    async def letters(self) -> AsyncIterator[DeadLetter]:
        """Every dead letter the topic held when the command started, per partition in
        offset order. A partition is done at its first newer record; all are done after
        `idle_s` without any record."""
        pending = set(self._tps)
        last = time.monotonic()
        while pending and time.monotonic() - last < self._idle_s:
            batch = await self._fetch()
            for tp, records in batch.items():
                for record in records:
                    last = time.monotonic()
                    if (record.timestamp or 0) > self._horizon_ms:
                        pending.discard(tp)
                        self._consumer.pause(tp)
                        break
                    yield DeadLetter.from_record(record)

    async def _fetch(self) -> dict[Any, list[Any]]:
        try:
            return dict(await self._consumer.getmany(timeout_ms=200))
        except KafkaError as exc:
            raise BrokerError(
                f"reading DLQ_TOPIC={self._settings.dlq_topic} failed: {_said(exc)}"
            ) from exc


async def _unreachable(settings: Settings) -> str:
    """Why the broker cannot be reached, as `run` says it
    (:func:`consumer.source.explain_unreachable`: refused, no answer, a name that does
    not resolve, not a Kafka broker), naming the setting; the client's error is the
    chained cause."""
    bootstrap = settings.kafka_bootstrap_servers
    why = await explain_unreachable(bootstrap, min(settings.kafka_request_timeout_s, 5.0))
    return f"cannot reach KAFKA_BOOTSTRAP_SERVERS={bootstrap}: {why}"


def _said(exc: BaseException) -> str:
    """A client error in words (``KafkaConnectionError: ...``), not its repr."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- Kafka: sending replays -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sent:
    """The outcome of one replay: where it landed, or the error."""

    replay: Replay
    partition: int | None = None
    offset: int | None = None
    error: str | None = None


async def send_replays(settings: Settings, replays: Sequence[Replay]) -> list[Sent]:
    """Send every replay (acks=all) and report each outcome; one failure does not stop
    the others, so the summary can say exactly what went through.

    The producer is never idempotent, whatever KAFKA_IDEMPOTENCE says: a replay the
    broker refuses (too large for the inbound topic) would leave a gap in an idempotent
    producer's sequence and fail every later replay to that partition (aiokafka does not
    reset it), and an idempotent send is never expired, so an outage would hold the
    command. A replay written twice by a retry is harmless: the members deduplicate it."""
    producer = AIOKafkaProducer(
        **producer_config(
            settings.kafka_bootstrap_servers,
            client_id=f"{settings.client_id}-dlq-replay",
            request_timeout_s=settings.kafka_request_timeout_s,
            # A replayed record is up to MAX_RECORD_BYTES with its key and headers.
            max_request_bytes=settings.sizes.request_bytes,
            metadata_max_age_s=settings.kafka_metadata_max_age_s,
        )
    )
    try:
        await asyncio.wait_for(producer.start(), settings.kafka_request_timeout_s)
    except (KafkaError, TimeoutError) as exc:
        await producer.stop()
        raise BrokerError(await _unreachable(settings)) from exc
    try:
        pending = [(r, await _start_send(producer, r)) for r in replays]
        return [await _settle(r, future) for r, future in pending]
    finally:
        await producer.stop()


async def _start_send(producer: AIOKafkaProducer, replay: Replay) -> Any:
    """The delivery future, or the error if the send could not even be queued."""
    try:
        return await producer.send(
            replay.topic, value=replay.value, key=replay.key, headers=list(replay.headers)
        )
    except KafkaError as exc:
        return exc


async def _settle(replay: Replay, future: Any) -> Sent:
    if isinstance(future, KafkaError):
        return Sent(replay, error=repr(future))
    try:
        meta = await future
    except KafkaError as exc:
        return Sent(replay, error=repr(exc))
    return Sent(replay, partition=meta.partition, offset=meta.offset)


# --- the two commands -----------------------------------------------------------------


async def list_letters(
    settings: Settings,
    selection: Selection,
    *,
    out: TextIO,
    err: TextIO,
    as_json: bool = False,
    show_body: bool = False,
    idle_s: float = DEFAULT_IDLE_S,
) -> int:
    """Print the selected dead letters and a per-reason summary (to stderr with
    ``--json``, so stdout stays one JSON object a line)."""
    tally = Tally(selection)
    now = now_ms()
    async with DlqReader(settings, idle_s=idle_s) as reader:
        read_to_end = False
        try:
            async for letter in reader.letters():
                if not tally.take(letter):
                    continue
                if as_json:
                    line = json_line(as_dict(letter, now_ms=now, show_body=show_body))
                else:
                    line = format_line(letter, now_ms=now, show_body=show_body)
                print(line, file=out, flush=True)
            read_to_end = True
        finally:
            # The count also when interrupted (Ctrl-C) or failed half way, as tail does.
            summary = format_summary(settings.dlq_topic, tally)
            if not read_to_end:
                summary += f" (stopped before the end of {settings.dlq_topic})"
            print(summary, file=err if as_json else out, flush=True)
    return 0


async def choose(
    settings: Settings, selection: Selection, *, idle_s: float
) -> tuple[list[DeadLetter], Tally]:
    """Read the DLQ to the end and keep the selected letters, before anything is sent:
    a replay that fails again must not be read back and replayed in the same run."""
    tally = Tally(selection)
    async with DlqReader(settings, idle_s=idle_s) as reader:
        reader.require_topic("INBOUND_TOPIC", settings.inbound_topic)
        chosen = [letter async for letter in reader.letters() if tally.take(letter)]
    return chosen, tally


async def replay(
    settings: Settings,
    selection: Selection,
    *,
    out: TextIO,
    dry_run: bool = False,
    idle_s: float = DEFAULT_IDLE_S,
) -> int:
    """Re-send the selected dead letters to INBOUND_TOPIC; 1 if any send failed."""
    try:
        chosen, tally = await choose(settings, selection, idle_s=idle_s)
    except BaseException:
        print(f"replay to {settings.inbound_topic}: nothing sent", file=out, flush=True)
        raise
    plans = [plan_replay(letter, settings.inbound_topic) for letter in chosen]
    replays = [p for p in plans if isinstance(p, Replay)]
    skips = [p for p in plans if isinstance(p, Skip)]
    skips += missing_offsets(settings.dlq_topic, tally, chosen)
    for skip in skips:
        print(f"skip {skip.coordinates}: {escape(skip.why)}", file=out)
    # An --offset that named no dead letter is a failure: the operator asked for it.
    not_found = 1 if any(s.kind == "not found" for s in skips) else 0
    if dry_run:
        for r in replays:
            print(_would_send(r), file=out)
        print(f"dry run, nothing sent: would send {len(replays)}{_skipped(skips)}", file=out)
        return not_found
    try:
        results = await send_replays(settings, replays)
    except BrokerError:  # the producer did not start: nothing was sent
        print(f"replay to {settings.inbound_topic}: nothing sent{_skipped(skips)}", file=out)
        raise
    except BaseException:  # interrupted while sending: which ones landed is not known
        print(
            f"replay to {settings.inbound_topic}: stopped while sending {len(replays)}, some "
            "may have been sent. Safe to repeat: the pipeline drops messages it already stored.",
            file=out,
            flush=True,
        )
        raise
    for result in results:
        print(_sent_line(result), file=out)
    failed = sum(1 for r in results if r.error)
    print(
        f"replay to {settings.inbound_topic}: sent {len(results) - failed}, failed {failed}"
        f"{_skipped(skips)}. Safe to repeat: the pipeline drops messages it already stored.",
        file=out,
    )
    return 1 if failed or not_found else 0


def _would_send(r: Replay) -> str:
    names = ",".join(token(clip(k, _NAME_WIDTH)) for k, _ in r.headers) or "-"
    return (
        f"would send {r.letter.coordinates} -> {r.topic} ({token(r.letter.reason)}, source="
        f"{token(r.letter.source)}, size={humanise_size(r.letter.size)}, headers={names})"
    )


def _sent_line(result: Sent) -> str:
    letter = result.replay.letter
    if result.error:
        return f"FAILED {letter.coordinates} ({token(letter.reason)}): {escape(result.error)}"
    return (
        f"sent {letter.coordinates} -> {result.replay.topic}:{result.partition}:"
        f"{result.offset} ({token(letter.reason)}, source={token(letter.source)})"
    )


def _skipped(skips: Sequence[Skip]) -> str:
    if not skips:
        return ", skipped 0"
    kinds = collections.Counter(s.kind for s in skips)
    return f", skipped {len(skips)} ({', '.join(f'{k}: {n}' for k, n in kinds.most_common())})"
