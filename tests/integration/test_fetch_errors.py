"""A fetch that fails half-way on a real broker, inside a real member (Service.run over
Redis, PostgreSQL and the broker): nothing is skipped, and no offset is committed past
a record that was not processed (docs/design.md, "Fetching").

The failure is injected into aiokafka's getmany: the call that follows a call that
returned records raises once, as aiokafka does with an error it stored for a partition
while it drained another (it returns what it drained, and raises on the next call). That
next call is the fetch's top-up, 5 ms later, on a partition freshly assigned (no
bookkeeping of its own yet), where aiokafka's position already stands past the records
the first call returned.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CorruptRecordException

from consumer.service import Service
from consumer.settings import Settings
from tests.support import kafka
from tests.support.bodies import text_webhook

pytestmark = [pytest.mark.integration, pytest.mark.brokers]


async def test_a_top_up_that_fails_skips_nothing(
    topic_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = topic_settings.replace(retry_backoff_max_s=0.2, metrics_port=0)
    expected = {("111", f"wamid.F{i}") for i in range(10)}
    ends = await kafka.send(settings, [(0, text_webhook("111", w)) for _, w in sorted(expected)])
    assert ends == {0: 10}

    real = AIOKafkaConsumer.getmany
    state = {"armed": False, "raised": 0}

    async def getmany(self: AIOKafkaConsumer, *args: Any, **kwargs: Any) -> Any:
        if state["armed"] and not state["raised"]:
            state["raised"] = 1
            raise CorruptRecordException("injected: stored for another partition")
        fetched = await real(self, *args, **kwargs)
        if any(fetched.values()):
            state["armed"] = True
        return fetched

    monkeypatch.setattr(AIOKafkaConsumer, "getmany", getmany)
    service = Service(settings)
    running = asyncio.create_task(service.run())
    try:
        await kafka.wait_committed(settings, ends, timeout_s=60)
    finally:
        service.request_stop("test over")
        await asyncio.wait_for(running, 60)
    assert state["raised"] == 1, "the injected error was met"
    rows = await kafka.rows(settings)
    assert sorted(rows) == sorted(expected), "every record below the committed offset stored"
    assert await kafka.committed(settings, [0]) == {0: 10}
