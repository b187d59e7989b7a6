"""A getmany that is cancelled or raises ends aiokafka's count of fetches under way, so
its poll clock (fetcher_idle_time) runs again: else aiokafka never leaves the group for
a member whose loop stalls past KAFKA_MAX_POLL_INTERVAL_S."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.consumer.subscription_state import SubscriptionState

from consumer.source import count_fetches_that_end_early


async def test_a_cancelled_fetch_is_no_longer_counted() -> None:
    count_fetches_that_end_early()
    state = SubscriptionState()
    entered = asyncio.Event()

    async def getmany() -> None:
        with state.fetch_context():
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(getmany())
    await entered.wait()
    assert state.fetcher_idle_time == 0, "under way"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.01)
    assert state.fetcher_idle_time > 0, "the poll clock runs again"


async def test_a_fetch_that_raises_is_no_longer_counted() -> None:
    count_fetches_that_end_early()
    count_fetches_that_end_early()  # idempotent
    state = SubscriptionState()
    with pytest.raises(RuntimeError), state.fetch_context():
        raise RuntimeError("the fetch failed")
    assert state._fetch_count == 0
