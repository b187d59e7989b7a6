"""The service supervises its side tasks: if the relay dies, the service stops loudly."""

from __future__ import annotations

import asyncio

import pytest

from consumer.errors import WamidGuardError
from consumer.service import Service
from consumer.settings import Settings


async def test_dead_side_task_stops_the_service_loudly() -> None:
    """A side task that crashes makes the poll loop stop and `supervise` raise, with
    the crash chained as the cause."""
    service = Service(Settings(shutdown_grace_s=2.0))

    async def loop() -> None:
        await service.wait_stopping()

    async def relay() -> None:
        raise RuntimeError("relay bug")

    loop_task = asyncio.create_task(loop())
    relay_task = asyncio.create_task(relay(), name="outbox-relay")
    with pytest.raises(WamidGuardError, match="outbox-relay") as info:
        await service.supervise(loop_task, [relay_task])
    assert isinstance(info.value.__cause__, RuntimeError)
    assert loop_task.done()
    assert not loop_task.cancelled(), "the loop ended gracefully, not cut short"


async def test_stop_request_ends_loop_and_side_tasks() -> None:
    """A stop request ends the loop and cancels the side tasks without an error."""
    service = Service(Settings(shutdown_grace_s=2.0))

    async def loop() -> None:
        await service.wait_stopping()

    async def relay() -> None:
        await asyncio.Event().wait()

    loop_task = asyncio.create_task(loop())
    relay_task = asyncio.create_task(relay(), name="outbox-relay")
    asyncio.get_running_loop().call_later(0.05, service.request_stop, "test")
    await service.supervise(loop_task, [relay_task])
    assert relay_task.cancelled()


async def test_a_side_task_that_returns_because_of_the_stop_has_not_died() -> None:
    """The relay returns by itself once a stop is requested (it finishes its round); if
    it is done before the loop when the supervisor looks, that is a clean stop, not a
    death: no error (a member stopped with SIGTERM must exit 0)."""
    service = Service(Settings(shutdown_grace_s=2.0))
    loop_may_end = asyncio.Event()

    async def loop() -> None:
        await loop_may_end.wait()

    async def relay() -> None:
        await service.wait_stopping()

    loop_task = asyncio.create_task(loop())
    relay_task = asyncio.create_task(relay(), name="outbox-relay")
    service.request_stop("test")
    await asyncio.sleep(0)  # the relay sees the stop and returns first
    asyncio.get_running_loop().call_later(0.05, loop_may_end.set)
    await service.supervise(loop_task, [relay_task])
    assert relay_task.done()
    assert not relay_task.cancelled()
