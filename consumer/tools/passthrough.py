"""The benchmark's ceiling: consume, decode, publish; no Redis, no database.

``python -m consumer.tools.passthrough`` runs a group member (configured like
``python -m consumer run``, from the environment) whose flow is this processor alone.
Used only by ``python -m consumer bench`` (its pass-through mode) to show what Kafka and
Python alone cost on a machine. It keeps none of the promise: every copy of a message is
announced. Never in production.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Sequence

import structlog

from consumer import cli, events, intake
from consumer.commands.run import serve
from consumer.errors import DependencyError
from consumer.publish import Publisher
from consumer.records import BatchReport, InboundRecord, Invalid, Webhook
from consumer.settings import Settings
from consumer.wiring import Flow, FlowContext, FlowFactory

log = structlog.get_logger(__name__)


class PassThrough:
    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        self._settings = settings
        self._publisher = publisher

    async def housekeeping(self) -> None:
        """Nothing kept between batches."""

    async def process(self, records: Sequence[InboundRecord]) -> BatchReport:
        started = time.monotonic()
        report = BatchReport(records=len(records))
        decoded = [intake.decode(r, max_bytes=self._settings.max_record_bytes) for r in records]
        now = dt.datetime.now(dt.UTC)
        topic = self._settings.outbound_topic
        hooks = [d for d in decoded if isinstance(d, Webhook)]
        out = [events.build(m, topic=topic, occurred_at=now) for d in hooks for m in d.messages]
        # Every status announced (no state to compare with): the ceiling publishes at
        # least what the pipeline does.
        out += [
            events.build_status(u, topic=topic, occurred_at=now) for d in hooks for u in d.statuses
        ]
        invalid = [d for d in decoded if isinstance(d, Invalid)]
        try:
            await self._publisher.publish(out)
            await self._publisher.dead_letter(invalid)
        except DependencyError as exc:
            report.failure = str(exc)
            report.retry = list(records)
        else:
            report.durable = list(records)
            report.messages = report.events = len(out)
            report.dead_lettered = len(invalid)
        log.info(
            "batch.done",
            duration_ms=round((time.monotonic() - started) * 1000, 1),
            **report.counts(),
        )
        return report


def passthrough_flow(context: FlowContext) -> Flow:
    """The pass-through processor alone: no outbox relay, nothing but Kafka."""
    return Flow(PassThrough(context.settings, context.publisher))


PASSTHROUGH = FlowFactory("passthrough", passthrough_flow, needs_backends=False)
"""A member that consumes and publishes, and opens neither Redis nor the database."""


def main(argv: Sequence[str] | None = None) -> int:
    """One pass-through member, until SIGTERM or SIGINT."""
    argparse.ArgumentParser(
        prog="python -m consumer.tools.passthrough", description=__doc__
    ).parse_args(argv)
    return cli.run_command("passthrough", lambda settings: serve(settings, PASSTHROUGH))


if __name__ == "__main__":
    raise SystemExit(main())
