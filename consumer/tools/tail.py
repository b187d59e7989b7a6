"""`python -m consumer tail`: the outbound topic, one event a line, every value escaped."""

from __future__ import annotations

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
    async for record in read_topic(
        settings.kafka_bootstrap_servers,
        name,
        from_beginning=from_beginning,
        idle_s=idle_exit_s,
    ):
        event = inbound(record)
        print(format_event(event.partition, event.offset, event.value, as_json), flush=True)


def format_event(partition: int, offset: int, value: bytes | None, as_json: bool) -> str:
    """One line per event: its JSON (re-encoded on one line), or a readable summary
    without message content. Every value from the record is escaped (safetext): no raw
    control, bidi or invisible character, and the JSON stays valid."""
    size = len(value or b"")
    try:
        event = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
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
