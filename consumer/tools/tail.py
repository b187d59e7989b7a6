"""`python -m consumer tail`: the outbound topic, one event a line, every value escaped."""

from __future__ import annotations

import collections
import sys
from typing import Any

import orjson

from consumer.safetext import json_line, token
from consumer.settings import Settings
from consumer.source import inbound, require_topics
from consumer.tools.topics import read_topic


async def tail(
    settings: Settings,
    *,
    topic: str | None,
    from_beginning: bool,
    idle_exit_s: float | None,
    as_json: bool,
) -> None:
    """Print the events of OUTBOUND_TOPIC (or `topic`) until interrupted, or until
    `idle_exit_s` without one. Reading starts at offset 0 of every partition (not the
    broker's "earliest", which the embedded broker can answer too high); an idle exit
    shorter than 6 s can miss records a broker has not shown yet."""
    name = topic or settings.outbound_topic
    label = "--topic" if topic else "OUTBOUND_TOPIC"
    await require_topics(
        settings.kafka_bootstrap_servers, {label: name}, settings.kafka_request_timeout_s
    )
    kinds: collections.Counter[str] = collections.Counter()
    try:
        async for record in read_topic(
            settings.kafka_bootstrap_servers,
            name,
            from_beginning=from_beginning,
            idle_s=idle_exit_s,
        ):
            event = inbound(record)
            kind, line = read_event(event.partition, event.offset, event.value, as_json)
            kinds[kind] += 1
            print(line, flush=True)
    finally:
        # On stderr: stdout stays one event a line (JSON lines with --json).
        print(f"tail: {summary(name, kinds)}", file=sys.stderr, flush=True)


# What _parse returns for a value that is not JSON (None is JSON's null).
_NOT_JSON = object()


def read_event(partition: int, offset: int, value: bytes | None, as_json: bool) -> tuple[str, str]:
    """An event's kind (for the exit count) and its line, from one parse of its JSON."""
    event = _parse(value)
    return _kind(event), _render(partition, offset, len(value or b""), event, as_json)


def kind_of(value: bytes | None) -> str:
    """An event's kind for the exit count: its `event` if it is one of ours."""
    return _kind(_parse(value))


def _parse(value: bytes | None) -> object:
    try:
        return orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return _NOT_JSON


def _kind(event: object) -> str:
    kind = event.get("event") if isinstance(event, dict) else None
    return kind if kind in ("message_created", "message_status_changed") else "other"


def summary(topic: str, kinds: collections.Counter[str]) -> str:
    """`5 event(s) read from TOPIC: message_created 3, message_status_changed 2`."""
    total = sum(kinds.values())
    parts = ", ".join(
        f"{k} {kinds[k]}"
        for k in ("message_created", "message_status_changed", "other")
        if kinds[k]
    )
    return f"{total} event(s) read from {token(topic)}" + (f": {parts}" if parts else "")


def format_event(partition: int, offset: int, value: bytes | None, as_json: bool) -> str:
    """One line per event: its JSON (re-encoded on one line), or a readable summary
    without message content. Every value from the record is escaped (safetext): no raw
    control, bidi or invisible character, and the JSON stays valid."""
    return _render(partition, offset, len(value or b""), _parse(value), as_json)


def _render(partition: int, offset: int, size: int, event: Any, as_json: bool) -> str:
    if event is _NOT_JSON:
        if as_json:
            return json_line({"partition": partition, "offset": offset, "not_json_bytes": size})
        return f"{partition}:{offset} <not an event of ours: {size} bytes>"
    if as_json:
        return json_line(event)
    try:
        fields = _summary(event)
    except (KeyError, TypeError):
        fields = None
    if fields is None:
        return f"{partition}:{offset} <not an event of ours: {size} bytes>"
    shown = " ".join(f"{name}={token(str(v))}" for name, v in fields.items())
    return f"{partition}:{offset} {token(str(event['event']))} {shown}"


def _summary(event: dict[str, object]) -> dict[str, object] | None:
    """The fields a line shows of each kind of event (no content: no personal data
    beyond the ids)."""
    kind = event["event"]
    if kind == "message_created":
        message = event["message"]
        if not isinstance(message, dict):
            return None
        return {
            "event_id": event["event_id"],
            "phone_number_id": event["phone_number_id"],
            "from": message["from"],
            "type": message["type"],
            "wamid": message["source_id"],
        }
    if kind == "message_status_changed":
        status = event["status"]
        if not isinstance(status, dict):
            return None
        return {
            "event_id": event["event_id"],
            "phone_number_id": event["phone_number_id"],
            "status": status["status"],
            "wamid": status["id"],
            "timestamp": status["timestamp"],
        }
    return None
