"""`python -m consumer tail` against the real broker: from offset 0 of every partition,
and nothing from a record reaches the terminal raw.

The events are written by several producers at once (the case where the embedded broker
can answer ListOffsets(EARLIEST) with a later offset than 0); `tail` runs as the operator
runs it, a process of its own, once plain and once with --json, side by side.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from consumer import safetext
from consumer.tools import topics

pytestmark = [pytest.mark.integration, pytest.mark.brokers]

# Longer than the ~5 s for which the embedded broker may not yet show a partition's end.
IDLE_EXIT_S = "6"
ANSI = "\x1b]0;pwned\x07\x1b[2J"
RLO = "\u202e"


def _event(i: int) -> dict[str, Any]:
    """A message_created event whose fields carry escape sequences and bidi controls,
    encoded as the service's orjson encodes it (C0 as \\u escapes, U+202E and DEL raw)."""
    return {
        "event": "message_created",
        "event_id": f"e-{i}",
        "phone_number_id": "15550001111",
        "message": {
            "source_id": f"wamid.{RLO}{i}\x7f",
            "from": f"{RLO}1555{i}",
            "type": f"text{ANSI}",
            "text": {"body": f"hi {ANSI} {RLO}\u2066 \x00 \x9b"},
        },
    }


async def _write_at_once(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Three producers write a share each, concurrently, to both partitions."""
    producers = [
        AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False) for _ in range(3)
    ]
    await asyncio.gather(*(p.start() for p in producers))
    try:
        sends = [
            await producers[i % 3].send(topic, value, partition=i % 2)
            for i, value in enumerate(values)
        ]
        await asyncio.gather(*sends)
    finally:
        await asyncio.gather(*(p.stop() for p in producers))


def _tail(bootstrap: str, topic: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "LOG_FORMAT": "json"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "consumer",
            "tail",
            "--topic",
            topic,
            "--idle-exit",
            IDLE_EXIT_S,
            *extra,
        ],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )


async def test_tail_reads_everything_and_escapes_it(bootstrap: str) -> None:
    """Every record of both partitions is printed once (from offset 0); the plain lines
    show hostile fields quoted and escaped, --json lines are valid JSON carrying the same
    values; neither output holds a raw control, bidi or invisible character."""
    topic = f"out-{uuid.uuid4().hex[:10]}"
    await topics.create_topics(bootstrap, {topic: 2})
    events = [_event(i) for i in range(10)]
    values = [orjson.dumps(e) for e in events] + [f"{ANSI}not json".encode()]
    await _write_at_once(bootstrap, topic, values)

    plain, as_json = await asyncio.gather(
        asyncio.to_thread(_tail, bootstrap, topic),
        asyncio.to_thread(_tail, bootstrap, topic, "--json"),
    )
    for run in (plain, as_json):
        assert run.returncode == 0, run.stderr
        text = run.stdout.decode("utf-8")
        assert text.endswith("\n")
        assert [c for c in text[:-1] if safetext.is_unsafe(c) and c != "\n"] == []
        assert len(text.splitlines()) == len(values)

    lines = plain.stdout.decode().splitlines()
    line = next(x for x in lines if "event_id=e-3 " in x)
    assert line.split(" ", 1)[1] == (
        'message_created event_id=e-3 phone_number_id=15550001111 from="\\u202e15553" '
        'type="text\\u001b]0;pwned\\u0007\\u001b[2J" wamid="wamid.\\u202e3\\u007f"'
    )
    assert sum("<not an event of ours: " in x for x in lines) == 1

    parsed = [orjson.loads(x) for x in as_json.stdout.decode().splitlines()]
    got = sorted((p for p in parsed if "event_id" in p), key=lambda p: int(p["event_id"][2:]))
    assert got == events
    (other,) = [p for p in parsed if "not_json_bytes" in p]
    assert other["not_json_bytes"] == len(values[-1])
