"""A member's parts built alone, for unit tests of one part: a fetcher over a given
source and bookkeeping, with no batch running."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from consumer.fetching import Fetcher
from consumer.inflight import InFlight
from consumer.metrics import Metrics
from consumer.records import BatchReport, InboundRecord
from consumer.settings import Settings
from consumer.source import Source
from consumer.tracking import Tracker


class NoBatch:
    """A processor for tests that start no batch."""

    async def process(self, records: Sequence[InboundRecord]) -> BatchReport:
        raise AssertionError("no batch is started")

    async def housekeeping(self) -> None:
        """Nothing between batches."""


def tracker(settings: Settings) -> Tracker:
    """The bookkeeping a member builds from these settings."""
    return Tracker(
        max_pending=settings.max_pending_records,
        max_pending_bytes=settings.max_pending_bytes,
        retry_backoff_s=settings.retry_backoff_s,
        retry_backoff_max_s=settings.retry_backoff_max_s,
    )


def fetcher(
    settings: Settings, source: Source, tracker: Tracker, metrics: Metrics | None = None
) -> Fetcher:
    """A fetcher as the member builds it, with no batch in flight."""
    batches = InFlight(
        NoBatch(),
        lambda _report: None,
        max_batches=settings.max_inflight_batches,
        batch_max_records=settings.batch_max_records,
    )
    return Fetcher(
        source,
        tracker,
        batches,
        metrics or Metrics(),
        asyncio.Event(),
        batch_max_records=settings.batch_max_records,
        poll_timeout_s=settings.poll_timeout_s,
        backoff_s=settings.retry_backoff_max_s,
        batch_max_bytes=settings.sizes.fetch_max_bytes,
    )
