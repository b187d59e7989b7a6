"""`run`: be one member of the consumer group until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import TYPE_CHECKING

from consumer.commands import KAFKA, describe
from consumer.settings import Settings

if TYPE_CHECKING:
    from consumer.wiring import FlowFactory


def add_arguments(parser: argparse.ArgumentParser, summary: str) -> None:
    describe(
        parser,
        summary,
        reads=f"{KAFKA}, CONSUMER_GROUP, INBOUND_TOPIC, OUTBOUND_TOPIC, DLQ_TOPIC, "
        "REDIS_URL, DATABASE_URL, METRICS_HOST, METRICS_PORT, WHATSAPP_APP_SECRET, "
        "LOG_LEVEL, LOG_FORMAT, and the tuning settings in README.md",
        details="Checks at start that Redis and the database answer, that the database is "
        "migrated and that the three topics exist, then consumes until SIGTERM or SIGINT "
        "(the batch in flight finishes, offsets are committed; a second signal cuts it "
        "short). Serves /metrics, /healthz and /readyz on METRICS_HOST:METRICS_PORT: give "
        "each member on one host its own port.",
        examples="  python -m consumer run\n"
        "  METRICS_PORT=9109 DATABASE_URL=postgresql+asyncpg://wg@db/wg python -m consumer run",
    )


def run(settings: Settings, _args: argparse.Namespace) -> int:
    return serve(settings)


def serve(settings: Settings, flow_factory: FlowFactory | None = None) -> int:
    """Run one member until SIGTERM or SIGINT (a second one cuts the batch in flight
    short). `flow_factory`: what it runs (default: the pipeline)."""
    from consumer.gctune import tune_collector
    from consumer.service import Service
    from consumer.wiring import PIPELINE

    async def _run() -> None:
        service = Service(settings, flow_factory=flow_factory or PIPELINE)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.request_stop, sig.name)
        await service.run(on_started=tune_collector)

    asyncio.run(_run())
    return 0
