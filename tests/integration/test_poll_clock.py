"""A member that waited for its assignment still lets aiokafka's poll clock run: no
getmany of it stays counted as under way (a cancelled one does, for good, and then
aiokafka never leaves the group for a member whose loop stalls past
KAFKA_MAX_POLL_INTERVAL_S; design.md, "A member always polls")."""

from __future__ import annotations

import asyncio

import pytest

from consumer.service import Service
from consumer.settings import Settings
from tests.support import kafka
from tests.support.bodies import text_webhook

pytestmark = [pytest.mark.integration, pytest.mark.brokers]


async def test_no_poll_stays_under_way_after_the_join(topic_settings: Settings) -> None:
    settings = topic_settings.replace(metrics_port=0)
    ends = await kafka.send(settings, [(0, text_webhook("111", "wamid.CLOCK"))])
    service = Service(settings)
    running = asyncio.create_task(service.run())
    try:
        await kafka.wait_committed(settings, ends, timeout_s=60)
        source = service._source
        assert source is not None
        subscription = source._consumer._subscription  # aiokafka's own count
        # The loop polls on; a count that never comes back below 2 is a leaked one.
        counts = []
        for _ in range(20):
            counts.append(subscription._fetch_count)
            await asyncio.sleep(0.05)
        assert min(counts) <= 1, f"getmany calls counted as under way for good: {counts}"
    finally:
        service.request_stop("test over")
        await asyncio.wait_for(running, 60)
