"""The outbox relay: publish rows whose publish never happened.

The pipeline publishes right after its commit. When it could not (it crashed between
commit and publish, or the outbound topic refused the events and the record was never
redelivered to anyone), the outbox row stays unpublished. Every instance runs this relay;
rows are claimed so instances don't fight (see Store.claim_unpublished). A new row is
claimed by its inserter for LEASE_TTL_S, so the relay takes only rows whose inserter had
that long to publish and did not: the pipeline's own publish is not doubled. A re-publish
carries the row's bytes, hence the same event_id.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import structlog

from consumer.errors import DependencyError, PublishPendingError
from consumer.metrics import Metrics
from consumer.outbox import MarkQueue
from consumer.ports import EventSink, MessageStore

log = structlog.get_logger(__name__)


class Relay:
    def __init__(
        self,
        store: MessageStore,
        publisher: EventSink,
        *,
        worker_id: str,
        interval_s: float,
        claim_for: dt.timedelta,
        metrics: Metrics,
        marks: MarkQueue,
        batch: int = 8,
    ) -> None:
        self._store = store
        self._publisher = publisher
        # Its own claimer id: a pipeline of the same process must not take the relay's
        # claim for its own (and publish the row a second time).
        self._worker_id = f"{worker_id}/relay"
        self._interval_s = interval_s
        self._claim_for = claim_for
        self._batch = batch
        self.republished = 0
        self.metrics = metrics
        self._marks = marks

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set. Dependency failures are logged and retried;
        anything else propagates, so the supervisor stops the service loudly."""
        while not stop.is_set():
            try:
                while await self.relay_once() == self._batch:
                    pass  # a full batch: there may be more right away
            except DependencyError as exc:
                self.metrics.dependency_error(exc)
                log.warning("relay.failed", error=str(exc))
            await self._sample_outbox()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._interval_s)
            except TimeoutError:
                continue

    async def _sample_outbox(self) -> None:
        """The backlog gauges, read each round (the relay is the one that looks anyway)."""
        try:
            count, oldest_s = await self._store.outbox_stats()
        except DependencyError as exc:
            self.metrics.dependency_error(exc)
            log.warning("outbox.stats_failed", error=str(exc))
            return
        self.metrics.outbox_backlog.set(count)
        self.metrics.outbox_oldest_age.set(oldest_s)

    async def relay_once(self) -> int:
        """Claim, publish and mark up to `batch` stale outbox rows (each the events of
        one transaction). Returns how many rows."""
        await self._marks.flush()  # our own earlier publishes first: never announce twice
        claimed = await self._store.claim_unpublished(
            claimant=self._worker_id, claim_for=self._claim_for, limit=self._batch
        )
        if not claimed.outbox_ids:
            return 0
        try:
            await self._publisher.publish(claimed.events)
        except PublishPendingError:
            raise  # the sends may still land: the claims stand until they run out
        except DependencyError:
            await self._store.release_claims(claimed.outbox_ids, self._worker_id)
            raise
        self.republished += len(claimed.events)
        self.metrics.events_published.labels("relay").inc(len(claimed.events))
        await self._marks.mark(claimed.outbox_ids)
        log.info(
            "relay.republished",
            count=len(claimed.events),
            rows=len(claimed.outbox_ids),
            event_ids=[e.event_id for e in claimed.events[:10]],
        )
        return len(claimed.outbox_ids)
