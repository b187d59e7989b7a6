"""Kafka producing: ``message_created`` events and dead letters.

Every send of a batch is started at once and then awaited together, so a batch costs
one round of broker acks. Any failure raises :class:`BrokerError`: the caller keeps the
records unacknowledged (their offsets are not committed) and retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumer.errors import BrokerError
from consumer.events import OutboundEvent
from consumer.records import Invalid

log = structlog.get_logger(__name__)

# The largest produce request any of our producers sends (service, relay, DLQ replay):
# a dead letter is cut to fit it, so a replay of one that is not truncated fits too.
MAX_REQUEST_BYTES = 2 * 1024 * 1024
# Room left for headers and framing when a dead letter carries a large value.
_DLQ_HEADROOM = 64 * 1024


class Publisher:
    """Wraps one producer shared by the pipeline (and later the outbox relay)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        dlq_topic: str,
        max_request_bytes: int,
        debug: bool = False,
    ) -> None:
        self._producer = producer
        self._dlq_topic = dlq_topic
        self._max_value = max_request_bytes - _DLQ_HEADROOM
        # At DEBUG, one line per acknowledged record with where the broker put it: the
        # fault suite checks that everything acknowledged can be read back.
        self._debug = debug

    async def publish(self, events: Sequence[OutboundEvent]) -> None:
        """Send events and wait until the broker has acknowledged all of them."""
        await self._send_all(
            [(e.topic, e.key, e.payload, [("event_id", e.event_id.encode())]) for e in events],
            what="message_created",
        )

    async def dead_letter(self, invalid: Sequence[Invalid]) -> None:
        """Send bad records to the dead-letter topic, with why and where from."""
        await self._send_all(
            [(self._dlq_topic, i.record.key, *self._dead_letter(i)) for i in invalid],
            what="dead-letter",
        )

    def _dead_letter(self, invalid: Invalid) -> tuple[bytes | None, list[tuple[str, bytes]]]:
        record = invalid.record
        value = record.value
        headers = [
            ("dlq.reason", str(invalid.reason).encode()),
            ("dlq.detail", invalid.detail.encode()[:1024]),
            ("dlq.source.topic", record.topic.encode()),
            ("dlq.source.partition", str(record.partition).encode()),
            ("dlq.source.offset", str(record.offset).encode()),
            ("dlq.source.timestamp_ms", str(record.timestamp_ms).encode()),
            ("dlq.failed_at_ms", str(int(time.time() * 1000)).encode()),
        ]
        if value is not None and len(value) > self._max_value:
            headers.append(("dlq.original_size", str(len(value)).encode()))
            value = value[: self._max_value]
        # The original headers ride along (a replay may need x-hub-signature-256).
        headers.extend(record.headers)
        return value, headers

    async def _send_all(
        self,
        sends: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]],
        *,
        what: str,
    ) -> None:
        if not sends:
            return
        try:
            futures = [
                await self._producer.send(topic, value=value, key=key, headers=headers)
                for topic, key, value, headers in sends
            ]
            results = await asyncio.gather(*futures, return_exceptions=True)
        except KafkaError as exc:
            raise BrokerError(f"producing {len(sends)} {what} record(s) failed: {exc!r}") from exc
        if self._debug:
            for (topic, _key, _value, headers), r in zip(sends, results, strict=True):
                if not isinstance(r, BaseException):
                    log.debug(
                        "record.acked",
                        topic=topic,
                        partition=r.partition,
                        offset=r.offset,
                        event_id=dict(headers).get("event_id", b"").decode(),
                    )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise BrokerError(
                f"{len(failures)} of {len(sends)} {what} record(s) were not acknowledged: "
                f"{failures[0]!r}"
            ) from failures[0]


def producer_config(
    bootstrap: str, *, client_id: str, request_timeout_s: float, max_request_bytes: int
) -> dict[str, Any]:
    """Producer settings: every replica acks, small linger to batch a pipeline batch.

    Idempotence stays off: the dedup is ours (event_id), and Tansu refuses InitProducerId.
    """
    return {
        "bootstrap_servers": bootstrap,
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": False,
        "linger_ms": 5,
        "request_timeout_ms": int(request_timeout_s * 1000),
        "max_request_size": max_request_bytes,
        "retry_backoff_ms": 200,
    }
