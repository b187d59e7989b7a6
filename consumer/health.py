"""Is the member alive, is it ready: the answers behind ``/healthz`` and ``/readyz``.

Liveness: the poll loop came round, and no batch in flight started, more than
LIVENESS_TIMEOUT_S ago (a batch stuck for longer is a member to restart). Readiness: the
member holds an assignment (possibly empty: more members than partitions), its group
coordinator answers, Redis and the database answer, and it is not stopping. Each check is
bounded in time and never raises.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from consumer.errors import DependencyError
from consumer.http import Response, Route
from consumer.metrics import Metrics
from consumer.source import Source
from consumer.tracking import Tracker

Probe = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """The settings the health checks read."""

    liveness_timeout_s: float
    inbound_topic: str


class Health:
    def __init__(self, config: HealthConfig, tracker: Tracker, stopping: asyncio.Event) -> None:
        self._config = config
        self._tracker = tracker
        self._stopping = stopping
        self._last_loop = time.monotonic()
        self.source: Source | None = None
        # Named dependency checks besides Kafka ("redis", "database"), set at startup.
        self.probes: dict[str, Probe] = {}

    def came_round(self, *, since: float | None = None) -> None:
        """The poll loop finished a turn; `since`: when the oldest batch still in flight
        started (a batch stuck for longer than LIVENESS_TIMEOUT_S fails liveness even
        while batches of other partitions go on)."""
        now = time.monotonic()
        self._last_loop = now if since is None else min(now, since)

    def liveness(self) -> dict[str, object]:
        """Alive while the poll loop keeps coming round (startup counts as coming round)."""
        since = time.monotonic() - self._last_loop
        return {
            "ok": since < self._config.liveness_timeout_s,
            "seconds_since_poll": round(since, 3),
            "liveness_timeout_s": self._config.liveness_timeout_s,
        }

    async def readiness(self) -> dict[str, object]:
        timeout_s = min(2.0, self._config.liveness_timeout_s)
        checks: dict[str, dict[str, object]] = {"kafka": await self._kafka(timeout_s)}
        for name, probe in self.probes.items():
            checks[name] = await _probe(probe(), timeout_s)
        stopping = self._stopping.is_set()
        ok = all(c["ok"] for c in checks.values()) and not stopping
        return {"ok": ok, "stopping": stopping, "checks": checks}

    async def _kafka(self, timeout_s: float) -> dict[str, object]:
        if self.source is None:
            return {"ok": False, "error": "not started"}
        out: dict[str, object] = {"assigned_partitions": len(self._tracker.owned)}
        if not self._tracker.has_assignment:
            return {**out, "ok": False, "error": "no partition assignment yet (joining the group)"}
        coordinator = await _probe(
            self.source.coordinator_answers(self._config.inbound_topic, timeout_s), timeout_s
        )
        if not coordinator["ok"]:
            return {**out, "ok": False, "error": f"group coordinator: {coordinator['error']}"}
        return {**out, "ok": True}

    def routes(self, metrics: Metrics) -> dict[str, Route]:
        async def metrics_page() -> Response:
            return 200, "text/plain; version=0.0.4; charset=utf-8", metrics.render()

        async def healthz() -> Response:
            return _json_response(self.liveness())

        async def readyz() -> Response:
            return _json_response(await self.readiness())

        return {"/metrics": metrics_page, "/healthz": healthz, "/readyz": readyz}


def _json_response(state: dict[str, object]) -> Response:
    body = (json.dumps(state, default=str) + "\n").encode()
    return (200 if state["ok"] else 503), "application/json", body


async def _probe(check: Awaitable[object], timeout_s: float) -> dict[str, object]:
    """Run one dependency check: ok, or why not (never raises)."""
    try:
        await asyncio.wait_for(check, timeout_s)
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {timeout_s:g}s"}
    except DependencyError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True}
