"""What a member runs is the flow factory's choice, not a setting: the pipeline opens
Redis and the database before Kafka; the bench's pass-through member opens neither."""

from __future__ import annotations

import asyncio
import socket

import pytest
import sqlalchemy as sa

from consumer import service as service_module
from consumer.crashpoints import CrashPoints
from consumer.metrics import Metrics
from consumer.publish import Publisher
from consumer.schema import outbox
from consumer.service import Service
from consumer.settings import Settings
from consumer.tools.passthrough import PASSTHROUGH, PassThrough
from consumer.wiring import PIPELINE, FlowContext


class Stop(Exception):
    pass


def _record_startup(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stub the clients startup opens; returns the order they were asked for. The
    producer is the last step: it stops the startup there."""
    steps: list[str] = []

    async def open_backends(*_args: object, **_kwargs: object) -> None:
        steps.append("backends")
        raise Stop

    async def check_topics(*_args: object, **_kwargs: object) -> None:
        steps.append("topics")

    async def start_publisher(*_args: object, **_kwargs: object) -> None:
        steps.append("producer")
        raise Stop

    monkeypatch.setattr(service_module, "open_backends", open_backends)
    monkeypatch.setattr(service_module, "check_topics", check_topics)
    monkeypatch.setattr(service_module, "start_publisher", start_publisher)
    return steps


def test_the_default_flow_is_the_pipeline_and_opens_the_backends_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = _record_startup(monkeypatch)
    service = Service(Settings())
    assert service.flow_factory is PIPELINE
    with pytest.raises(Stop):
        asyncio.run(service.startup())
    assert steps == ["backends"]


def test_the_passthrough_flow_opens_neither_redis_nor_the_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = _record_startup(monkeypatch)
    service = Service(Settings(), flow_factory=PASSTHROUGH)
    with pytest.raises(Stop):
        asyncio.run(service.startup())
    assert steps == ["topics", "producer"]
    assert service.health.probes == {}


def test_the_passthrough_factory_builds_the_processor_alone() -> None:
    unused: Publisher = object()  # type: ignore[assignment] # never used while building
    flow = PASSTHROUGH.build(FlowContext(Settings(), None, unused, "w", CrashPoints(""), Metrics()))
    assert isinstance(flow.processor, PassThrough)
    assert flow.relay is None
    assert flow.marks is None


def test_the_mode_is_no_setting() -> None:
    """WAMID_GUARD_MODE is gone: the environment cannot turn a `run` member into the
    bench's pass-through one."""
    settings = Settings.from_env({"WAMID_GUARD_MODE": "passthrough"})
    assert not hasattr(settings, "mode")
    assert "mode" not in settings.public()


def test_a_batch_token_fits_the_outbox_claim_whatever_the_hosts_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A member's id is cut to fit: with the longest host name a system may give, a batch's
    token (`<worker_id>:<seq>`, the outbox's claimed_by) stays within the column's 128
    characters, and two members on that host still differ."""
    monkeypatch.setattr(socket, "gethostname", lambda: "h" * 255)
    ids = {Service(Settings()).worker_id for _ in range(2)}
    assert len(ids) == 2
    column = outbox.c.claimed_by.type
    assert isinstance(column, sa.String)
    width = column.length
    assert width == 128
    for worker_id in ids:
        assert len(f"{worker_id}:{2**64}") <= width
        assert len(f"{worker_id}/relay") <= width
