"""`python -m consumer produce`: send webhook bodies to the inbound topic, the way Meta
would: each body once, or with duplicates, optionally spread over partitions (a
redelivery lands wherever the producer's partitioner puts it)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumer.errors import BrokerError
from consumer.topics import partition_count


@dataclass(frozen=True, slots=True)
class Sent:
    partition: int
    offset: int


def sample_bodies() -> list[tuple[str, bytes]]:
    """The webhook samples shipped with the package (Meta's documented shapes)."""
    folder = resources.files("consumer") / "samples"
    return sorted((p.name, p.read_bytes()) for p in folder.iterdir() if p.name.endswith(".json"))


def read_bodies(paths: Sequence[str]) -> list[tuple[str, bytes]]:
    if not paths:
        return sample_bodies()
    return [(Path(p).name, Path(p).read_bytes()) for p in paths]


async def produce(
    bootstrap: str,
    topic: str,
    bodies: Sequence[tuple[str, bytes]],
    *,
    duplicates: int = 0,
    spread: bool = False,
    headers: Sequence[tuple[str, bytes]] = (),
) -> list[Sent]:
    """Send each body 1 + `duplicates` times. Copies go to different partitions when
    `spread`, else all copies of a body go to one partition (chosen by its checksum)."""
    partitions = await partition_count(bootstrap, topic)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5
    )
    try:
        await producer.start()
        futures = []
        for _name, body in bodies:
            home = zlib.crc32(body) % partitions
            for copy in range(1 + duplicates):
                partition = (home + copy) % partitions if spread else home
                futures.append(
                    await producer.send(topic, body, partition=partition, headers=list(headers))
                )
        sent = [await f for f in futures]
    except KafkaError as exc:
        raise BrokerError(f"producing to {topic!r} failed: {exc!r}") from exc
    finally:
        await producer.stop()
    return [Sent(m.partition, m.offset) for m in sent]
